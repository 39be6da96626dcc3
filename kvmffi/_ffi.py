"""The raw layer: the only module that touches cffi.

Struct declarations are written from the KVM uAPI facts (include/uapi/linux/kvm.h),
not from the distro's headers, so the bindings work on a userspace whose headers are
older than the running kernel. ioctl numbers are computed with the ``_IOC`` encoding
from the declared struct sizes. Nothing outside this module sees cdata: the helpers
below return ints, bytes and addresses.
"""

from __future__ import annotations

import errno
import fcntl as _fcntl
import mmap as _mmap
import struct as _struct
import os
from typing import Any

import cffi

ffi = cffi.FFI()

ffi.cdef(
    r"""
    /* --- memory regions ------------------------------------------------ */
    struct kvm_userspace_memory_region {          /* 32 bytes */
        uint32_t slot;
        uint32_t flags;
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
    };

    struct kvm_userspace_memory_region2 {         /* 160 bytes */
        uint32_t slot;
        uint32_t flags;
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
        uint64_t guest_memfd_offset;
        uint32_t guest_memfd;
        uint32_t pad1;
        uint64_t pad2[14];
    };

    struct kvm_create_guest_memfd {               /* 64 bytes */
        uint64_t size;
        uint64_t flags;
        uint64_t reserved[6];
    };

    struct kvm_memory_attributes {                /* 32 bytes */
        uint64_t address;
        uint64_t size;
        uint64_t attributes;
        uint64_t flags;
    };

    struct kvm_pre_fault_memory {                 /* 64 bytes */
        uint64_t gpa;
        uint64_t size;
        uint64_t flags;
        uint64_t padding[5];
    };

    struct kvm_enable_cap {                       /* 104 bytes */
        uint32_t cap;
        uint32_t flags;
        uint64_t args[4];
        uint8_t  pad[64];
    };

    /* --- registers (x86) ----------------------------------------------- */
    struct kvm_regs {                             /* 144 bytes */
        uint64_t rax, rbx, rcx, rdx;
        uint64_t rsi, rdi, rsp, rbp;
        uint64_t r8,  r9,  r10, r11;
        uint64_t r12, r13, r14, r15;
        uint64_t rip, rflags;
    };

    struct kvm_segment {                          /* 24 bytes */
        uint64_t base;
        uint32_t limit;
        uint16_t selector;
        uint8_t  type;
        uint8_t  present, dpl, db, s, l, g, avl;
        uint8_t  unusable;
        uint8_t  padding;
    };

    struct kvm_dtable {                           /* 16 bytes */
        uint64_t base;
        uint16_t limit;
        uint16_t padding[3];
    };

    struct kvm_sregs {                            /* 312 bytes */
        struct kvm_segment cs, ds, es, fs, gs, ss;
        struct kvm_segment tr, ldt;
        struct kvm_dtable gdt, idt;
        uint64_t cr0, cr2, cr3, cr4, cr8;
        uint64_t efer;
        uint64_t apic_base;
        uint64_t interrupt_bitmap[4];
    };

    /* --- CPUID ------------------------------------------------------------ */
    struct kvm_cpuid_entry2 {                     /* 40 bytes */
        uint32_t function;
        uint32_t index;
        uint32_t flags;
        uint32_t eax, ebx, ecx, edx;
        uint32_t padding[3];
    };

    struct kvm_cpuid2 {                           /* 8 bytes + nent entries */
        uint32_t nent;
        uint32_t padding;
        struct kvm_cpuid_entry2 entries[];
    };

    /* --- struct kvm_run: the exits this project decodes ------------------ */
    struct kvm_run_io {
        uint8_t  direction;
        uint8_t  size;
        uint16_t port;
        uint32_t count;
        uint64_t data_offset;
    };

    struct kvm_run_mmio {
        uint64_t phys_addr;
        uint8_t  data[8];
        uint32_t len;
        uint8_t  is_write;
    };

    struct kvm_run_hypercall {
        uint64_t nr;
        uint64_t args[6];
        uint64_t ret;
        uint64_t flags;         /* union with the older u32 longmode */
    };

    struct kvm_run_internal {
        uint32_t suberror;
        uint32_t ndata;
        uint64_t data[16];
    };

    struct kvm_run_fail_entry {
        uint64_t hardware_entry_failure_reason;
        uint32_t cpu;
    };

    struct kvm_run_system_event {
        uint32_t type;
        uint32_t ndata;
        uint64_t data[16];      /* data[0] is the older 'flags' */
    };

    struct kvm_run_memory_fault {
        uint64_t flags;
        uint64_t gpa;
        uint64_t size;
    };

    struct kvm_run_ex {
        uint32_t exception;
        uint32_t error_code;
    };

    struct kvm_run {
        uint8_t  request_interrupt_window;
        uint8_t  immediate_exit;
        uint8_t  padding1[6];
        uint32_t exit_reason;
        uint8_t  ready_for_interrupt_injection;
        uint8_t  if_flag;
        uint16_t flags;
        uint64_t cr8;
        uint64_t apic_base;
        union {
            uint64_t hardware_exit_reason;
            struct kvm_run_fail_entry fail_entry;
            struct kvm_run_ex ex;
            struct kvm_run_io io;
            struct kvm_run_mmio mmio;
            struct kvm_run_hypercall hypercall;
            struct kvm_run_internal internal;
            struct kvm_run_system_event system_event;
            struct kvm_run_memory_fault memory_fault;
            char padding[256];
        };
        uint64_t kvm_valid_regs;
        uint64_t kvm_dirty_regs;
        char s[2048];
    };

    /* --- libc ------------------------------------------------------------ */
    int ioctl(int fd, unsigned long request, ...);
    int fallocate(int fd, int mode, int64_t offset, int64_t len);
    long syscall(long number, ...);
    int prctl(int option, ...);
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset);
    int munmap(void *addr, size_t length);
    struct iovec { void *iov_base; size_t iov_len; };
    ssize_t process_vm_readv(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                             const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
    ssize_t process_vm_writev(int pid, const struct iovec *local_iov, unsigned long liovcnt,
                              const struct iovec *remote_iov, unsigned long riovcnt, unsigned long flags);
    """
)

_libc = ffi.dlopen(None)

# ---------------------------------------------------------------------------
# ioctl encoding (asm-generic/ioctl.h): dir:2 size:14 type:8 nr:8
# ---------------------------------------------------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << 14), size
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def _IO(nr: int) -> int:
    return _IOC(_IOC_NONE, KVMIO, nr, 0)


def _IOR(nr: int, struct: str) -> int:
    return _IOC(_IOC_READ, KVMIO, nr, ffi.sizeof(struct))


def _IOW(nr: int, struct: str) -> int:
    return _IOC(_IOC_WRITE, KVMIO, nr, ffi.sizeof(struct))


def _IOWR(nr: int, struct: str) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, KVMIO, nr, ffi.sizeof(struct))


# Every ioctl this project issues, grouped by the fd it applies to.
# system (/dev/kvm) ioctls
KVM_GET_API_VERSION = _IO(0x00)
KVM_CREATE_VM = _IO(0x01)  # arg: VM type
KVM_CHECK_EXTENSION = _IO(0x03)  # also a VM ioctl with KVM_CAP_CHECK_EXTENSION_VM
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, "struct kvm_cpuid2")
# VM ioctls
KVM_CREATE_VCPU = _IO(0x41)
KVM_SET_NR_MMU_PAGES = _IO(0x44)  # arg: pages for the shadow MMU (x86)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, "struct kvm_userspace_memory_region")
KVM_SET_USER_MEMORY_REGION2 = _IOW(0x49, "struct kvm_userspace_memory_region2")  # KVM_CAP_USER_MEMORY2
KVM_ENABLE_CAP = _IOW(0xA3, "struct kvm_enable_cap")
KVM_SET_MEMORY_ATTRIBUTES = _IOW(0xD2, "struct kvm_memory_attributes")  # KVM_CAP_MEMORY_ATTRIBUTES
KVM_CREATE_GUEST_MEMFD = _IOWR(0xD4, "struct kvm_create_guest_memfd")  # KVM_CAP_GUEST_MEMFD
# vCPU ioctls
KVM_RUN = _IO(0x80)
KVM_GET_REGS = _IOR(0x81, "struct kvm_regs")
KVM_SET_REGS = _IOW(0x82, "struct kvm_regs")
KVM_GET_SREGS = _IOR(0x83, "struct kvm_sregs")
KVM_SET_SREGS = _IOW(0x84, "struct kvm_sregs")
KVM_SET_CPUID2 = _IOW(0x90, "struct kvm_cpuid2")
KVM_PRE_FAULT_MEMORY = _IOWR(0xD5, "struct kvm_pre_fault_memory")  # KVM_CAP_PRE_FAULT_MEMORY

IOCTL_NAMES = {v: k for k, v in dict(globals()).items() if k.startswith("KVM_") and isinstance(v, int) and k != "KVMIO"}

_ulong = ffi.typeof("unsigned long")
_ioctl = _libc.ioctl
_cast = ffi.cast


# ---------------------------------------------------------------------------
# Calls. Each returns (result, errno) and never raises: the object layer turns
# failures into KvmError with the ioctl's name and arguments.
# ---------------------------------------------------------------------------
def ioctl_int(fd: int, request: int, arg: int = 0) -> tuple[int, int]:
    ret = _ioctl(fd, request, _cast(_ulong, arg))
    return ret, (ffi.errno if ret < 0 else 0)


def ioctl_run(fd: int) -> int:
    """KVM_RUN on the hot path: returns 0 or the errno. fcntl.ioctl is a thinner call
    than a variadic cffi one; the GIL is released either way."""
    try:
        _fcntl.ioctl(fd, KVM_RUN, 0)
        return 0
    except OSError as e:
        return e.errno or 0


_REG_OFFSETS = {name: f.offset for name, f in ffi.typeof("struct kvm_regs").fields}
_u64 = _struct.Struct("<Q")


def reg_reader(fd: int) -> Any:
    """A function name -> register value doing one KVM_GET_REGS into a reused buffer.
    Raises OSError on failure."""
    buf = bytearray(ffi.sizeof("struct kvm_regs"))
    ioctl, unpack, req = _fcntl.ioctl, _u64.unpack_from, KVM_GET_REGS

    def read(name: str) -> int:
        ioctl(fd, req, buf, True)
        return int(unpack(buf, _REG_OFFSETS[name])[0])

    return read


def ioctl_ptr(fd: int, request: int, ptr: Any) -> tuple[int, int]:
    ret = _ioctl(fd, request, ptr)
    return ret, (ffi.errno if ret < 0 else 0)


def _s64(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _s32(v: int) -> int:
    v &= (1 << 32) - 1
    return v - (1 << 32) if v >= 1 << 31 else v


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2); returns 0 or the errno. offset and length are loff_t: any value is passed as its
    64-bit pattern (2**64 - 4096 arrives as -4096), so negative tests reach the kernel's checks."""
    ret = _libc.fallocate(fd, _s32(mode), _s64(offset), _s64(length))
    return ffi.errno if ret < 0 else 0


CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")


def get_supported_cpuid(fd: int) -> tuple[list[tuple[int, ...]], int]:
    """KVM_GET_SUPPORTED_CPUID: (entries as tuples of CPUID_FIELDS, errno)."""
    n = 128
    while True:
        buf = ffi.new("char[]", 8 + 40 * n)
        c = ffi.cast("struct kvm_cpuid2 *", buf)
        c.nent = n
        ret = _ioctl(fd, KVM_GET_SUPPORTED_CPUID, c)
        if ret < 0:
            err = ffi.errno
            if err == errno.E2BIG and n < 4096:  # more entries than asked for
                n *= 2
                continue
            return [], err
        return [tuple(getattr(c.entries[i], f) for f in CPUID_FIELDS) for i in range(c.nent)], 0


_cpuid_bufs: dict[tuple[tuple[int, ...], ...], tuple[Any, Any]] = {}


def set_cpuid2(fd: int, entries: list[tuple[int, ...]]) -> int:
    """KVM_SET_CPUID2; returns 0 or the errno. The struct for a given entry list is built once."""
    key = tuple(entries)
    cached = _cpuid_bufs.get(key)
    if cached is None:
        buf = ffi.new("char[]", 8 + 40 * len(entries))
        c = ffi.cast("struct kvm_cpuid2 *", buf)
        c.nent = len(entries)
        for i, e in enumerate(entries):
            for f, v in zip(CPUID_FIELDS, e):
                setattr(c.entries[i], f, v)
        if len(_cpuid_bufs) > 16:
            _cpuid_bufs.clear()
        cached = _cpuid_bufs[key] = (buf, c)
    ret = _ioctl(fd, KVM_SET_CPUID2, cached[1])
    return ffi.errno if ret < 0 else 0


def die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): for child processes that must not outlive us."""
    _libc.prctl(1, ffi.cast("unsigned long", 9))


def syscall_nodemask(nr: int, addr: int, length: int, mode: int, nodemask: int, flags: int) -> int:
    """mbind(2) through syscall(2); returns 0 or the errno."""
    mask = ffi.new("unsigned long[16]")
    for i in range(16):
        mask[i] = (nodemask >> (64 * i)) & 0xFFFFFFFFFFFFFFFF
    ul = ffi.typeof("unsigned long")
    ret = _libc.syscall(ffi.cast("long", nr), ffi.cast(ul, addr), ffi.cast(ul, length), ffi.cast(ul, mode),
                        mask, ffi.cast(ul, 1024), ffi.cast(ul, flags))
    return ffi.errno if ret < 0 else 0


def get_mempolicy(nr: int, addr: int, flags: int) -> tuple[int, int]:
    mode = ffi.new("int *")
    mask = ffi.new("unsigned long[16]")
    ul = ffi.typeof("unsigned long")
    ret = _libc.syscall(ffi.cast("long", nr), mode, mask, ffi.cast(ul, 1024), ffi.cast(ul, addr), ffi.cast(ul, flags))
    if ret < 0:
        raise OSError(ffi.errno, "get_mempolicy failed")
    return mode[0], sum(mask[i] << (64 * i) for i in range(16))


def move_pages_query(nr: int, addr: int, npages: int) -> list[int]:
    pages = ffi.new("void *[]", [ffi.cast("void *", addr + i * 4096) for i in range(npages)])
    status = ffi.new("int[]", npages)
    ret = _libc.syscall(ffi.cast("long", nr), ffi.cast("int", 0), ffi.cast("unsigned long", npages), pages,
                        ffi.NULL, status, ffi.cast("int", 0))
    if ret < 0:
        raise OSError(ffi.errno, "move_pages failed")
    return list(status)


def raw_mmap(length: int, prot: int, flags: int, fd: int, offset: int) -> tuple[int, Any]:
    """mmap(2) without Python's file-size check; returns (address, writable buffer)."""
    p = _libc.mmap(ffi.NULL, length, prot, flags, fd, offset)
    addr = int(ffi.cast("uintptr_t", p))
    if addr == (1 << 64) - 1:
        raise OSError(ffi.errno, os.strerror(ffi.errno))
    return addr, ffi.buffer(ffi.cast("char *", p), length)


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
    done, err = _process_vm_copy(_libc.process_vm_readv, out, addr, n)
    return ffi.buffer(out, done)[:], err


def guarded_write(addr: int, data: bytes) -> tuple[int, int]:
    """Write ``data`` at ``addr`` of this process through the kernel (process_vm_writev); returns
    (bytes written, 0 or the errno where a page refused it)."""
    src = ffi.from_buffer(data)
    return _process_vm_copy(_libc.process_vm_writev, src, addr, len(data))


def raw_munmap(addr: int, length: int) -> None:
    if _libc.munmap(ffi.cast("void *", addr), length) < 0:
        raise OSError(ffi.errno, os.strerror(ffi.errno))


def new(struct: str, **fields: Any) -> Any:
    """Allocate a zeroed struct and fill the given fields (private to the package)."""
    p = ffi.new(struct + " *")
    for k, v in fields.items():
        try:
            setattr(p, k, v)
        except OverflowError:
            # Negative tests pass any bit pattern: store it truncated to the field's width.
            width = ffi.sizeof(dict(ffi.typeof(struct).fields)[k].type) * 8
            setattr(p, k, v & ((1 << width) - 1))
    return p


def sizeof(struct: str) -> int:
    return ffi.sizeof(struct)


def offsetof(struct: str, *fields: str) -> int:
    return ffi.offsetof(struct, *fields)


def buffer_address(buf: Any) -> int:
    """Address of a writable Python buffer (e.g. an mmap.mmap) as an int."""
    p = ffi.from_buffer(buf)
    try:
        return int(ffi.cast("uintptr_t", p))
    finally:
        ffi.release(p)


def struct_to_dict(p: Any, fields: tuple[str, ...]) -> dict[str, int]:
    return {f: getattr(p, f) for f in fields}


def struct_bytes(p: Any) -> bytes:
    return bytes(ffi.buffer(p))


class RunView:
    """A live view of a vCPU's mmap'ed struct kvm_run (private to the package)."""

    __slots__ = ("mm", "run", "_keep")

    def __init__(self, mm: _mmap.mmap) -> None:
        self.mm = mm
        self.run = ffi.from_buffer("struct kvm_run *", mm)

    def close(self) -> None:
        if self.run is not None:
            ffi.release(self.run)
            self.run = None
            self.mm.close()

    def read(self, offset: int, length: int) -> bytes:
        return self.mm[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self.mm[offset : offset + len(data)] = data
