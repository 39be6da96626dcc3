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
    """A guest_memfd file (KVM_CREATE_GUEST_MEMFD, api.rst 4.142): guest memory the host need not
    map, bound to the VM that created it. The kernel lets it outlive that Vm (it pins the VM).

    Create with :meth:`kvmffi.Vm.create_guest_memfd`; bind it to a memslot with
    :meth:`kvmffi.Vm.set_user_memory_region2`. ``size`` (bytes) and ``flags`` are as created.
    Failing calls raise :class:`~kvmffi.KvmError` naming the call (``fallocate``, ``mmap``).

    >>> from kvmffi import PAGE_SIZE, Cap, Kvm
    >>> with Kvm() as kvm, kvm.create_vm() as vm:
    ...     if vm.has_cap(Cap.GUEST_MEMFD):           # else there is nothing to show
    ...         with vm.create_guest_memfd(4 * PAGE_SIZE) as gmem:
    ...             gmem.allocate(0, 2 * PAGE_SIZE)
    ...             gmem.punch_hole(0, PAGE_SIZE)
    ...             gmem.stat().st_size == 4 * PAGE_SIZE
    True
    """

    def __init__(self, fd: int, size: int, flags: int) -> None:
        super().__init__(fd)
        self.size = size
        self.flags = GuestMemfdFlag(flags)

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<GuestMemfd {state} size={self.size:#x} flags={self.flags}>"

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on the fd with any ``mode``; ``offset`` and ``length`` are bytes, page
        aligned, within the file. Raises KvmError naming the call and its arguments: EOPNOTSUPP
        without FALLOC_FL_KEEP_SIZE or for modes other than allocate and punch, EINVAL unaligned
        or past the end, EFBIG, ENOMEM/ENOSPC (``kvmffi.contract.ALLOWED["fallocate"]``).

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
        """Allocate backing for [offset, offset+length), bytes, page aligned: fallocate with
        FALLOC_FL_KEEP_SIZE (guest_memfd refuses mode 0). Raises what :meth:`fallocate` raises."""
        self.fallocate(FALLOC_FL_KEEP_SIZE, offset, length)

    def punch_hole(self, offset: int, length: int) -> None:
        """Free the backing of [offset, offset+length), bytes, page aligned: fallocate with
        FALLOC_FL_PUNCH_HOLE|KEEP_SIZE; the guest sees zeroes there next. Raises what
        :meth:`fallocate` raises."""
        self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def stat(self) -> os.stat_result:
        """fstat(2) of the file (``st_size`` is the size it was created with). Raises OSError."""
        return os.fstat(self.fileno())

    def fs_magic(self) -> int:
        """fstatfs(2)'s f_type for this file: the magic of the filesystem its inode lives on
        (GUEST_MEMFD_MAGIC 0x474d454d from 6.19, the anonymous-inode filesystem's before). Raises
        OSError if fstatfs fails."""
        magic, err = _libc.fstatfs_type(self.fileno())
        if err:
            raise OSError(err, f"fstatfs on guest_memfd {self.fileno()}: {os.strerror(err)}")
        return magic

    def mmap(self, length: int | None = None, offset: int = 0, *, shared: bool = True,
             prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> HostMemory | RawMapping:
        """mmap(2) the file: ``length`` bytes (default: to the end) from ``offset`` (page aligned).
        Needs GUEST_MEMFD_FLAG_MMAP at creation (KVM_CAP_GUEST_MEMFD_FLAGS, api.rst 4.142); only
        shared pages (INIT_SHARED, or made shared) can be touched. Returns a writable buffer with
        ``.addr`` whose accesses to pages the host may not touch raise HostMemoryFault. Raises
        KvmError: ENODEV without GUEST_MEMFD_FLAG_MMAP, EINVAL for MAP_PRIVATE, EACCES
        (``kvmffi.contract.ALLOWED["mmap"]``).

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
