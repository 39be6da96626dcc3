"""GuestMemfd: a guest_memfd file (KVM_CREATE_GUEST_MEMFD) with its own lifetime."""

from __future__ import annotations

import errno
import mmap
import os

from . import _libc
from ._fd import FdOwner
from .errors import KvmError
from .memory import GuestMemfdMapping, HostMemory, RawMapping
from .uapi import GuestMemfdFlag

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class GuestMemfd(FdOwner):
    """A guest_memfd. The kernel lets it outlive the VM that created it (it pins the VM).

    Create with :meth:`kvmffi.Vm.create_guest_memfd`.
    """

    def __init__(self, fd: int, size: int, flags: int) -> None:
        super().__init__(fd)
        self.size = size
        self.flags = GuestMemfdFlag(flags)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<GuestMemfd {state} size={self.size:#x} flags={self.flags}>"

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on the fd; raises KvmError naming the call and its arguments.

        EINTR is retried: guest_memfd stops allocating when a signal is pending (e.g. a
        watchdog's kick to a vCPU thread that is handling an exit), and both allocating
        and punching are idempotent.
        """
        while True:
            err = _libc.fallocate(self.fileno(), mode, offset, length)
            if err != errno.EINTR:
                break
        if err:
            raise KvmError("fallocate", err, {"gmem": self, "mode": mode, "offset": offset, "len": length})

    def allocate(self, offset: int, length: int) -> None:
        """Allocate backing for [offset, offset+length) (FALLOC_FL_KEEP_SIZE; guest_memfd refuses mode 0)."""
        self.fallocate(FALLOC_FL_KEEP_SIZE, offset, length)

    def punch_hole(self, offset: int, length: int) -> None:
        """Free the backing of [offset, offset+length) (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE)."""
        self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fileno())

    def fs_magic(self) -> int:
        """fstatfs(2)'s f_type for this file: the magic of the filesystem its inode lives on
        (GUEST_MEMFD_MAGIC 0x474d454d from 6.19, the anonymous-inode filesystem's before). Raises
        OSError if fstatfs fails."""
        from ._libc import fstatfs_type
        magic, err = fstatfs_type(self.fileno())
        if err:
            raise OSError(err, f"fstatfs on guest_memfd {self.fileno()}: {os.strerror(err)}")
        return magic

    def mmap(self, length: int | None = None, offset: int = 0, *, shared: bool = True,
             prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> HostMemory | RawMapping:
        """Map the file (needs GUEST_MEMFD_FLAG_MMAP). Returns a writable buffer with ``.addr``.

        ``shared=False`` asks for MAP_PRIVATE, which guest_memfd refuses (no copy-on-write).
        A mapping that reaches past the end of the file is a :class:`RawMapping` (accesses
        past EOF raise SIGBUS: do them in a child process).
        """
        length = self.size - offset if length is None else length
        flags = mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE
        try:
            if offset + length > self.size:
                return RawMapping(self.fileno(), length, flags, prot, offset)
            return GuestMemfdMapping(self.fileno(), length, flags=flags, prot=prot, offset=offset)
        except OSError as e:
            hint = ""
            if not (self.flags & GuestMemfdFlag.MMAP):
                hint = "this guest_memfd was created without GUEST_MEMFD_FLAG_MMAP"
            raise KvmError("mmap", e.errno or 0, {"gmem": self, "length": length, "offset": offset,
                                                   "flags": "MAP_SHARED" if shared else "MAP_PRIVATE"},
                           hint) from None
