"""Memory backings for test memory: what each is made of and what it needs from the VM."""

from __future__ import annotations

from enum import StrEnum

from .. import memory as _memory
from ..memory import HostMemory
from ..uapi import GuestMemfdFlag


class Backing(StrEnum):
    """A test memory backing; the plain strings ("anon", "gmem-mmap", ...) name them too.

    anon, memfd, thp, hugetlb: host memory only. gmem: a guest_memfd for the private half and
    host memory for the shared half. gmem-mmap: a guest_memfd with MMAP|INIT_SHARED whose own
    mapping is the shared half (in place). gmem-only: the same file, with userspace_addr 0 in the
    memslot: KVM serves shared faults from the file itself.
    """

    ANON = "anon"
    MEMFD = "memfd"
    THP = "thp"
    HUGETLB = "hugetlb"
    GMEM = "gmem"
    GMEM_MMAP = "gmem-mmap"
    GMEM_ONLY = "gmem-only"

    @classmethod
    def of(cls, name: str | Backing) -> Backing:
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"backing {name!r}: choose one of {', '.join(b.value for b in cls)}") from None

    @property
    def guest_memfd(self) -> bool:
        """Is the memslot backed by a guest_memfd?"""
        return self in (Backing.GMEM, Backing.GMEM_MMAP, Backing.GMEM_ONLY)

    @property
    def in_place(self) -> bool:
        """Is the shared half the guest_memfd's own mapping?"""
        return self in (Backing.GMEM_MMAP, Backing.GMEM_ONLY)

    @property
    def gmem_flags(self) -> GuestMemfdFlag:
        """The guest_memfd flags the backing needs (the VM must offer them)."""
        return GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED if self.in_place else GuestMemfdFlag(0)

    @property
    def maps_userspace(self) -> bool:
        """Does the memslot carry a userspace address (all but gmem-only)?"""
        return self is not Backing.GMEM_ONLY

    def host_memory(self, size: int) -> HostMemory:
        """Host memory of this (host) backing."""
        if self is Backing.ANON:
            return _memory.anonymous(size)
        if self is Backing.THP:
            return _memory.anonymous(size, thp=True)
        if self is Backing.HUGETLB:
            return _memory.anonymous(size, hugetlb=True)
        if self is Backing.MEMFD:
            return _memory.memfd(size)
        raise ValueError(f"{self.value} is not a host backing: choose anon, thp, hugetlb or memfd")


BACKINGS = tuple(b.value for b in Backing)
