"""Host memory to back memslots: anonymous, memfd, hugetlb; each knows its address."""

from __future__ import annotations

import mmap
import os

from . import _ffi

MFD_HUGETLB = 0x0004
MAP_HUGETLB = 0x40000
MAP_HUGE_2MB = 21 << 26


class HostMemory(mmap.mmap):
    """An ``mmap.mmap`` that also knows its address (``.addr``), for ``userspace_addr``.

    Closing it while a memslot still points at it is the caller's bug; the Vm keeps
    a reference so the usual order (VM closed first) holds.
    """

    _addr: int | None = None

    @property
    def addr(self) -> int:
        if self._addr is None:
            self._addr = _ffi.buffer_address(self)
        return self._addr


class RawMapping:
    """A mapping made with mmap(2) directly, for lengths past the end of a file.

    Python's ``mmap.mmap`` refuses those; tests of SIGBUS past EOF need them.
    Indexing and slicing work as on ``mmap.mmap``; ``close()`` unmaps.
    """

    def __init__(self, fd: int, length: int, flags: int, prot: int, offset: int = 0) -> None:
        self.addr, self._buf = _ffi.raw_mmap(length, prot, flags, fd, offset)
        self._len = length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self._check()
        v = self._buf[i]
        return v[0] if isinstance(i, int) else v

    def __setitem__(self, i, v) -> None:  # type: ignore[no-untyped-def]
        self._check()
        self._buf[i] = bytes([v]) if isinstance(i, int) else v

    def _check(self) -> None:
        if self._buf is None:
            raise ValueError("mapping closed")

    def madvise(self, advice: int, start: int = 0, length: int | None = None) -> None:
        raise NotImplementedError("madvise on a RawMapping")

    @property
    def closed(self) -> bool:
        return self._buf is None

    def close(self) -> None:
        if self._buf is not None:
            self._buf = None
            _ffi.raw_munmap(self.addr, self._len)

    def __enter__(self) -> "RawMapping":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def anonymous(size: int, *, shared: bool = False, hugetlb: bool = False, thp: bool = False) -> HostMemory:
    """Anonymous memory (private unless ``shared``); ``hugetlb`` uses 2 MiB hugetlb pages."""
    flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
    if hugetlb:
        flags |= MAP_HUGETLB | MAP_HUGE_2MB
    try:
        m = HostMemory(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        if hugetlb:
            raise OSError(e.errno, f"mmap of {size:#x} bytes of 2 MiB hugetlb memory failed: {e.strerror}; "
                          "reserve pages with `echo N > /proc/sys/vm/nr_hugepages`") from None
        raise
    if thp:
        m.madvise(mmap.MADV_HUGEPAGE)
    return m


def memfd(size: int, name: str = "kvmffi", *, hugetlb: bool = False) -> HostMemory:
    """Shared memory from memfd_create (shmem, or hugetlbfs with ``hugetlb``)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | (MFD_HUGETLB if hugetlb else 0))
    try:
        os.ftruncate(fd, size)
        return HostMemory(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
