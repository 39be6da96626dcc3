"""mbind / get_mempolicy / move_pages for NUMA tests on guest_memfd mappings."""

from __future__ import annotations

import os

from . import _libc

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_F_ADDR = 1 << 1


def mbind(addr: int, length: int, mode: int, nodemask: int, flags: int = 0) -> int:
    """mbind(2); returns 0 or the errno."""
    return _libc.mbind(addr, length, mode, nodemask, flags)


def get_mempolicy_addr(addr: int) -> tuple[int, int]:
    """get_mempolicy(MPOL_F_ADDR) for the page at ``addr``: (mode, nodemask)."""
    return _libc.get_mempolicy(addr, MPOL_F_ADDR)


def page_nodes(addr: int, npages: int) -> list[int]:
    """Which node each page is on (move_pages with nodes=NULL)."""
    return _libc.move_pages_query(addr, npages)


def online_nodes() -> list[int]:
    """The NUMA nodes this machine has (/sys/devices/system/node/nodeN); [0] without that directory."""
    try:
        names = os.listdir("/sys/devices/system/node")
    except OSError:
        return [0]
    return sorted(int(n[4:]) for n in names if n.startswith("node") and n[4:].isdigit()) or [0]
