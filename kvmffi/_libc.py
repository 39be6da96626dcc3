"""The raw layer's libc half: the system calls kvmffi needs beside KVM's ioctls (fallocate with any
64-bit pattern, mmap without Python's size check, process_vm_readv/writev for guarded access,
the NUMA calls, prctl). Like the KVM half (``_cdef``, ``_ioctls``, ``_structs``, ``_run``, ``_ffi``),
it is the only place these touch cffi: every function takes and returns ints, bytes and memoryviews."""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

from . import _cffi

CDEF = r"""
    int fallocate(int fd, int mode, int64_t offset, int64_t len);
    long syscall(long number, ...);
    int prctl(int option, ...);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset);
    int munmap(void *addr, size_t length);
    int fstatfs(int fd, void *buf);
    int mlock(const void *addr, size_t len);
    int munlock(const void *addr, size_t len);
    struct iovec { void *iov_base; size_t iov_len; };
    ssize_t process_vm_readv(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                             const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
    ssize_t process_vm_writev(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                              const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
"""
ffi = _cffi.load("libc", CDEF)
_c = ffi.dlopen(None)

PR_SET_PDEATHSIG = 1
SYS_mbind, SYS_get_mempolicy, SYS_move_pages = 237, 239, 279   # x86-64
MAX_NUMNODES_BITS = 1024


def _s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _s32(v: int) -> int:
    v &= (1 << 32) - 1
    return v - (1 << 32) if v >= 1 << 31 else v


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2); returns 0 or the errno. offset and length are loff_t: any value is passed as its
    64-bit pattern (2**64 - 4096 arrives as -4096), so negative tests reach the kernel's checks."""
    ret = _c.fallocate(fd, _s32(mode), _s64(offset), _s64(length))
    return ffi.errno if ret < 0 else 0


def fstatfs_type(fd: int) -> tuple[int, int]:
    """fstatfs(2)'s f_type (the filesystem's magic number), and the errno (0 on success). x86-64's
    struct statfs is 120 bytes with f_type, a long, first."""
    buf = ffi.new("char[]", 120)
    if _c.fstatfs(fd, buf) < 0:
        return 0, ffi.errno
    return int.from_bytes(ffi.buffer(buf, 8)[:], "little"), 0


def mlock(addr: int, length: int, lock: bool = True) -> int:
    """mlock(2) (or munlock(2)) of [addr, addr + length); returns 0 or the errno."""
    p = ffi.cast("void *", addr)
    ret = _c.mlock(p, length) if lock else _c.munlock(p, length)
    return ffi.errno if ret < 0 else 0


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): for child processes that must not outlive us."""
    _c.prctl(PR_SET_PDEATHSIG, ffi.cast("unsigned long", int(signal.SIGKILL)))


_ul = ffi.typeof("unsigned long")


def mbind(addr: int, length: int, mode: int, nodemask: int, flags: int) -> int:
    """mbind(2); returns 0 or the errno."""
    mask = ffi.new("unsigned long[]", [(nodemask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF
                                       for i in range(MAX_NUMNODES_BITS // 64)])
    ret = _c.syscall(ffi.cast("long", SYS_mbind), ffi.cast(_ul, addr), ffi.cast(_ul, length), ffi.cast(_ul, mode),
                     mask, ffi.cast(_ul, MAX_NUMNODES_BITS), ffi.cast(_ul, flags))
    return ffi.errno if ret < 0 else 0


def get_mempolicy(addr: int, flags: int) -> tuple[int, int]:
    """get_mempolicy(2) for an address: (mode, nodemask). Raises OSError."""
    mode = ffi.new("int *")
    mask = ffi.new("unsigned long[]", MAX_NUMNODES_BITS // 64)
    ret = _c.syscall(ffi.cast("long", SYS_get_mempolicy), mode, mask, ffi.cast(_ul, MAX_NUMNODES_BITS),
                     ffi.cast(_ul, addr), ffi.cast(_ul, flags))
    if ret < 0:
        raise OSError(ffi.errno, f"get_mempolicy failed: {os.strerror(ffi.errno)}")
    return mode[0], sum(mask[i] << (64 * i) for i in range(MAX_NUMNODES_BITS // 64))


def move_pages_query(addr: int, npages: int) -> list[int]:
    """move_pages(2) with no target nodes: the node of each page (or -errno). Raises OSError."""
    pages = ffi.new("void *[]", [ffi.cast("void *", addr + i * 4096) for i in range(npages)])
    status = ffi.new("int[]", npages)
    ret = _c.syscall(ffi.cast("long", SYS_move_pages), ffi.cast("int", 0), ffi.cast(_ul, npages), pages,
                     ffi.NULL, status, ffi.cast("int", 0))
    if ret < 0:
        raise OSError(ffi.errno, f"move_pages failed: {os.strerror(ffi.errno)}")
    return list(status)


def mmap(length: int, prot: int, flags: int, fd: int, offset: int) -> tuple[int, memoryview]:
    """mmap(2) without Python's file-size check: (address, a writable memoryview of the mapping)."""
    p = _c.mmap(ffi.NULL, length, prot, flags, fd, offset)
    addr = int(ffi.cast("uintptr_t", p))
    if addr == (1 << 64) - 1:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return addr, memoryview(ffi.buffer(ffi.cast("char *", p), length))


def munmap(addr: int, length: int) -> None:
    if _c.munmap(ffi.cast("void *", addr), length) < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))


def buffer_address(buf: Any) -> int:
    """Address of a writable Python buffer (e.g. an mmap.mmap) as an int."""
    p = ffi.from_buffer(buf)
    try:
        return int(ffi.cast("uintptr_t", p))
    finally:
        ffi.release(p)


def _process_vm_copy(fn: Any, local: Any, addr: int, n: int) -> tuple[int, int]:
    """Copy ``n`` bytes between ``local`` and this process's ``addr`` with process_vm_readv/writev
    (``fn``); returns (bytes copied, 0 or the errno at the first page that refused)."""
    liov = ffi.new("struct iovec *")
    riov = ffi.new("struct iovec *")
    done = 0
    while done < n:
        liov.iov_base, liov.iov_len = ffi.cast("char *", local) + done, n - done
        riov.iov_base, riov.iov_len = ffi.cast("void *", addr + done), n - done
        r = fn(os.getpid(), liov, 1, riov, 1, 0)
        if r <= 0:
            return done, (ffi.errno if r < 0 else errno.EFAULT)
        done += r
    return done, 0


def guarded_read(addr: int, n: int) -> tuple[bytes, int]:
    """Read ``n`` bytes of this process's memory at ``addr`` through the kernel (process_vm_readv):
    a page that would SIGBUS or SIGSEGV on a direct access stops the copy instead. Returns the
    bytes copied and 0, or the bytes before the bad page and the errno (EFAULT)."""
    out = ffi.new("char[]", n)
    done, err = _process_vm_copy(_c.process_vm_readv, out, addr, n)
    return ffi.buffer(out, done)[:], err


def guarded_write(addr: int, data: bytes) -> tuple[int, int]:
    """Write ``data`` at ``addr`` of this process through the kernel (process_vm_writev); returns
    (bytes written, 0 or the errno where a page refused it)."""
    src = ffi.from_buffer(data)
    return _process_vm_copy(_c.process_vm_writev, src, addr, len(data))
