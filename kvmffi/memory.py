"""Host memory to back memslots: anonymous, memfd, hugetlb; each knows its address."""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

from . import _libc
from .errors import HostMemoryFault

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
            self._addr = _libc.buffer_address(self)
        return self._addr

    def mlock(self, lock: bool = True) -> None:
        """mlock(2) the whole mapping (``lock=False``: munlock); raises OSError with the errno."""
        err = _libc.mlock(self.addr, len(self), lock)
        if err:
            raise OSError(err, f"{'mlock' if lock else 'munlock'} of {len(self):#x} bytes at {self.addr:#x}: "
                               f"{os.strerror(err)}")


class _Guarded:
    """Slicing and indexing through the kernel (process_vm_readv/writev): a page the host may not
    touch raises HostMemoryFault instead of killing the process with SIGBUS."""

    addr: int

    def __len__(self) -> int:
        raise NotImplementedError

    def _span(self, i: int | slice) -> tuple[int, int]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("guest memory slices take no step")
            return start, max(stop - start, 0)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("mapping index out of range")
        return i, 1

    def _direct(self) -> Any:
        raise NotImplementedError

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        start, n = self._span(i)
        if _guard_works():
            data, err = _libc.guarded_read(self.addr + start, n)
            if not err:
                return data[0] if isinstance(i, int) else data
            if err != errno.ENOSYS:
                raise HostMemoryFault(err, self.addr + start + len(data), start + len(data), False)
            _GUARD["works"] = False
        data = bytes(self._direct()[start:start + n])
        return data[0] if isinstance(i, int) else data

    def __setitem__(self, i, v) -> None:  # type: ignore[no-untyped-def]
        start, n = self._span(i)
        data = bytes([v]) if isinstance(i, int) else bytes(v)
        if len(data) != n:
            raise IndexError(f"mapping slice assignment is wrong size ({len(data)} bytes for {n})")
        if _guard_works():
            done, err = _libc.guarded_write(self.addr + start, data)
            if not err:
                return
            if err != errno.ENOSYS:
                raise HostMemoryFault(err, self.addr + start + done, start + done, True)
            _GUARD["works"] = False
        self._direct()[start:start + n] = data


# process_vm_readv/writev need CONFIG_CROSS_MEMORY_ATTACH; without it (ENOSYS) accesses are direct
_GUARD: dict[str, bool] = {"works": True}


def _guard_works() -> bool:
    return _GUARD["works"]


def guard_available() -> bool:
    """Whether guarded access works here (process_vm_readv exists: CONFIG_CROSS_MEMORY_ATTACH)."""
    if "probed" not in _GUARD:
        probe = bytearray(8)
        _GUARD["probed"] = True
        _, err = _libc.guarded_read(_libc.buffer_address(probe), 8)
        if err == errno.ENOSYS:
            _GUARD["works"] = False
    return _GUARD["works"]


class GuestMemfdMapping(_Guarded, HostMemory):
    """A mapping of a guest_memfd: an ``mmap.mmap`` with ``.addr`` whose indexing and slicing never
    SIGBUS (private pages raise HostMemoryFault). ``memoryview(m)`` is the direct, unguarded access."""

    def __len__(self) -> int:
        return HostMemory.__len__(self)

    def _direct(self) -> Any:
        return memoryview(self)


class RawMapping(_Guarded):
    """A mapping made with mmap(2) directly, for lengths past the end of a file.

    Python's ``mmap.mmap`` refuses those; tests of SIGBUS past EOF need them. Indexing and
    slicing are guarded (HostMemoryFault past EOF); ``unguarded()`` is the direct view;
    ``close()`` unmaps.
    """

    def __init__(self, fd: int, length: int, flags: int, prot: int, offset: int = 0) -> None:
        self._buf: memoryview | None = None
        self.addr, self._buf = _libc.mmap(length, prot, flags, fd, offset)
        self._len = length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        self._check()
        return super().__getitem__(i)

    def __setitem__(self, i, v) -> None:  # type: ignore[no-untyped-def]
        self._check()
        super().__setitem__(i, v)

    def unguarded(self) -> Any:
        """The direct view (an access to a bad page is SIGBUS)."""
        self._check()
        return self._buf

    _direct = unguarded

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
            buf, self._buf = self._buf, None
            try:
                buf.release()
            except BufferError:  # a view of it is still exported: unmap anyway, as before
                pass
            _libc.munmap(self.addr, self._len)

    def __enter__(self) -> RawMapping:
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


def unguarded(buf: Any) -> Any:
    """The direct view of a mapping, without the guard: an access to a page the host may not
    touch raises SIGBUS (for tests of exactly that, run in a child process)."""
    if isinstance(buf, RawMapping):
        return buf.unguarded()
    return memoryview(buf)
