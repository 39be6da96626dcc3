"""The space the fuzzer explores: the GPA window and size limits, a hypothesis strategy for each
argument the rules draw, how long a blocking call may run, and what the machine records of a
memslot it set."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from .. import contract
from ..guest_memfd import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, GuestMemfd
from ..testvm import KICK_SIGNAL, install_kick_handler
from ..uapi import GuestMemfdFlag, MemslotFlag

PAGE = 4096
MiB = 1 << 20
GPA_BASE = 1 << 32           # test memory lives at 4 GiB and up, as in TestVm
GPA_SPAN = 64 * MiB          # fuzzed GPAs stay in [4 GiB, 4 GiB + 64 MiB) ...
MAX_GMEM = 8 * MiB           # ... and guest_memfds are small: the machine has 2 cores, not 2 TB
RESOURCE_ERRNOS = contract.RESOURCES
KICK_AFTER = 2.0             # a blocking call (pre-fault, KVM_RUN) is kicked out after this long

page_counts = st.integers(min_value=0, max_value=MAX_GMEM // PAGE)
sizes = st.one_of(page_counts.map(lambda n: n * PAGE), st.integers(min_value=0, max_value=MAX_GMEM),
                  st.sampled_from([0, 1, PAGE - 1, -PAGE, 1 << 62, (1 << 63) - PAGE, (1 << 64) - PAGE]))
# every combination of the flags kvmffi knows (uapi.GuestMemfdFlag), and any 64-bit value
known = [int(f) for f in GuestMemfdFlag]
combos = sorted({sum(f for i, f in enumerate(known) if n >> i & 1) for n in range(1 << len(known))})
gmem_flags = st.one_of(st.sampled_from(combos), st.integers(min_value=0, max_value=(1 << 64) - 1))
offsets = st.one_of(page_counts.map(lambda n: n * PAGE), st.integers(min_value=0, max_value=MAX_GMEM),
                    st.sampled_from([(1 << 63) - PAGE, (1 << 64) - PAGE, 1 << 40]))
modes = st.one_of(st.sampled_from([FALLOC_FL_KEEP_SIZE, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0,
                                   FALLOC_FL_PUNCH_HOLE]), st.integers(min_value=0, max_value=0x7F))
gpas = st.one_of(st.integers(min_value=0, max_value=GPA_SPAN // PAGE).map(lambda n: GPA_BASE + n * PAGE),
                 st.integers(min_value=GPA_BASE, max_value=GPA_BASE + GPA_SPAN),
                 st.sampled_from([0, (1 << 52) - PAGE, (1 << 64) - PAGE]))
slot_sizes = st.one_of(st.integers(min_value=0, max_value=512).map(lambda n: n * PAGE),
                       st.integers(min_value=0, max_value=2 * MiB))
memslot_flags = st.one_of(st.sampled_from([0, int(MemslotFlag.GUEST_MEMFD),
                                           int(MemslotFlag.GUEST_MEMFD | MemslotFlag.READONLY),
                                           int(MemslotFlag.LOG_DIRTY_PAGES)]),
                          st.integers(min_value=0, max_value=(1 << 32) - 1))


@dataclass
class Slot:
    gpa: int
    size: int
    gmem: GuestMemfd | None
    offset: int
    keep: Any                 # the host memory its userspace_addr points into
    in_place: bool            # a guest_memfd slot whose userspace_addr is that file's own mapping
    flags: int = 0
    hva: int = 0


def kick_later(seconds: float) -> threading.Timer:
    """Signal this thread after ``seconds`` so a blocking ioctl returns EINTR (the watchdog's signal)."""
    install_kick_handler()
    target = threading.get_ident()
    t = threading.Timer(seconds, lambda: signal.pthread_kill(target, KICK_SIGNAL))
    t.daemon = True
    t.start()
    return t
