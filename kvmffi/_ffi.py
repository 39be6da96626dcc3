"""The raw layer's KVM half (``_libc`` is the other): with it, the only modules that touch cffi.

Struct declarations are written from the KVM uAPI facts (include/uapi/linux/kvm.h),
not from the distro's headers, so the bindings work on a userspace whose headers are
older than the running kernel. ioctl numbers are computed with the ``_IOC`` encoding
from the declared struct sizes. Nothing outside the raw layer sees cdata: the helpers
below take and return ints, bytes, tuples and dicts.
"""

from __future__ import annotations

import errno
import fcntl as _fcntl
import mmap as _mmap
import struct as _struct
from typing import Any

from . import _cffi
from .uapi import ExitReason

CDEF = r"""
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
"""
ffi = _cffi.load("kvm", CDEF)

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


_REG_OFFSETS = {name: f.offset for name, f in ffi.typeof("struct kvm_regs").fields}
_ioctl_run = _fcntl.ioctl
_u64 = _struct.Struct("<Q")


# The hot struct ioctls of a VM's bring-up go through struct.Struct and fcntl.ioctl: no cffi work.
_REGS = _struct.Struct("<18Q")                                   # struct kvm_regs, field by field
_SREGS = _struct.Struct("<" + "QIH9Bx" * 8 + "QH6x" * 2 + "7Q" + "4Q")  # kvm_sregs, flattened
_REGION = _struct.Struct("<IIQQQ")                               # kvm_userspace_memory_region
_REGION2 = _struct.Struct("<IIQQQQI4x112x")                      # kvm_userspace_memory_region2
_ATTRS = _struct.Struct("<4Q")                                   # kvm_memory_attributes
assert _REGS.size == ffi.sizeof("struct kvm_regs") and _SREGS.size == ffi.sizeof("struct kvm_sregs")
assert _REGION.size == ffi.sizeof("struct kvm_userspace_memory_region")
assert _REGION2.size == ffi.sizeof("struct kvm_userspace_memory_region2")
assert _ATTRS.size == ffi.sizeof("struct kvm_memory_attributes")
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1


def _ioctl_buf(fd: int, request: int, buf: bytearray) -> int:
    try:
        _fcntl.ioctl(fd, request, buf, True)
        return 0
    except OSError as e:
        return e.errno or 0


def get_regs(fd: int) -> tuple[int, tuple[int, ...]]:
    """KVM_GET_REGS: (errno, the 18 registers in struct kvm_regs order)."""
    buf = bytearray(_REGS.size)
    err = _ioctl_buf(fd, KVM_GET_REGS, buf)
    return err, _REGS.unpack(buf)


def set_regs(fd: int, values: tuple[int, ...]) -> int:
    """KVM_SET_REGS from the 18 registers in struct kvm_regs order; returns 0 or the errno."""
    return _ioctl_buf(fd, KVM_SET_REGS, bytearray(_REGS.pack(*(v & _M64 for v in values))))


def get_sregs(fd: int) -> tuple[int, tuple[int, ...]]:
    """KVM_GET_SREGS: (errno, kvm_sregs flattened: 8 segments of 12 fields, gdt and idt (base, limit),
    cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4])."""
    buf = bytearray(_SREGS.size)
    err = _ioctl_buf(fd, KVM_GET_SREGS, buf)
    return err, _SREGS.unpack(buf)


def set_sregs(fd: int, flat: tuple[int, ...]) -> int:
    """KVM_SET_SREGS from :func:`get_sregs`' flattened form; returns 0 or the errno."""
    return _ioctl_buf(fd, KVM_SET_SREGS, bytearray(_SREGS.pack(*flat)))


def set_user_memory_region(fd: int, slot: int, flags: int, gpa: int, size: int, uaddr: int) -> int:
    """KVM_SET_USER_MEMORY_REGION; any bit pattern is passed truncated to the field's width."""
    arg = _REGION.pack(slot & _M32, flags & _M32, gpa & _M64, size & _M64, uaddr & _M64)
    return _ioctl_buf(fd, KVM_SET_USER_MEMORY_REGION, bytearray(arg))


def set_user_memory_region2(fd: int, slot: int, flags: int, gpa: int, size: int, uaddr: int, offset: int,
                            guest_memfd: int) -> int:
    """KVM_SET_USER_MEMORY_REGION2; any bit pattern is passed truncated to the field's width."""
    arg = _REGION2.pack(slot & _M32, flags & _M32, gpa & _M64, size & _M64, uaddr & _M64, offset & _M64,
                        guest_memfd & _M32)
    return _ioctl_buf(fd, KVM_SET_USER_MEMORY_REGION2, bytearray(arg))


def set_memory_attributes(fd: int, address: int, size: int, attributes: int, flags: int) -> int:
    """KVM_SET_MEMORY_ATTRIBUTES; any bit pattern is passed truncated to 64 bits. Returns 0 or the errno."""
    arg = _ATTRS.pack(address & _M64, size & _M64, attributes & _M64, flags & _M64)
    return _ioctl_buf(fd, KVM_SET_MEMORY_ATTRIBUTES, bytearray(arg))


def reg_reader(fd: int) -> Any:
    """A function name -> register value doing one KVM_GET_REGS into a reused buffer.
    Raises OSError on failure."""
    buf = bytearray(ffi.sizeof("struct kvm_regs"))
    ioctl, unpack, req = _fcntl.ioctl, _u64.unpack_from, KVM_GET_REGS

    def read(name: str) -> int:
        ioctl(fd, req, buf, True)
        return int(unpack(buf, _REG_OFFSETS[name])[0])

    return read


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
            for f, v in zip(CPUID_FIELDS, e, strict=True):
                setattr(c.entries[i], f, v)
        if len(_cpuid_bufs) > 16:
            _cpuid_bufs.clear()
        cached = _cpuid_bufs[key] = (buf, c)
    ret = _ioctl(fd, KVM_SET_CPUID2, cached[1])
    return ffi.errno if ret < 0 else 0


# ---------------------------------------------------------------------------
# Struct ioctls: plain values in, plain values out
# ---------------------------------------------------------------------------
_INT_WIDTH: dict[Any, tuple[int, bool]] = {}


def _fit(ctype: Any, v: Any) -> Any:
    """``v`` as ``ctype`` holds it: negative tests pass any bit pattern, stored truncated to the
    field's width (and as the signed value of that pattern for signed fields)."""
    kind = ctype.kind
    if kind == "primitive":
        info = _INT_WIDTH.get(ctype)
        if info is None:
            info = _INT_WIDTH[ctype] = (ffi.sizeof(ctype) * 8, int(ffi.cast(ctype, -1)) < 0)
        bits, signed = info
        v = int(v) & ((1 << bits) - 1)
        return v - (1 << bits) if signed and v >= 1 << (bits - 1) else v
    if kind == "array":
        return [_fit(ctype.item, x) for x in v]
    if kind == "struct":
        fields = dict(ctype.fields)
        unknown = set(v) - set(fields)
        if unknown:
            raise TypeError(f"{ctype.cname} has no field {', '.join(sorted(unknown))}")
        return {k: _fit(fields[k].type, x) for k, x in v.items()}
    return v


def _plain(c: Any) -> Any:
    """A cdata struct or array as dicts, tuples and ints."""
    if not isinstance(c, ffi.CData):
        return c
    t = ffi.typeof(c)
    if t.kind == "struct":
        return {name: _plain(getattr(c, name)) for name, _ in t.fields}
    if t.kind == "array":
        return tuple(_plain(x) for x in c)
    return c


def ioctl_struct(fd: int, request: int, struct: str, fields: dict[str, Any] | None = None) -> tuple[int, int, dict[str, Any]]:
    """An ioctl whose argument is a pointer to ``struct`` (zeroed, then ``fields``, nested dicts and
    lists for nested structs and arrays). Returns (result, errno, the struct as the kernel left it)."""
    t = ffi.typeof(struct)
    p = ffi.new(struct + " *", _fit(t, fields or {}))
    ret = _ioctl(fd, request, p)
    return ret, (ffi.errno if ret < 0 else 0), _plain(p[0])


def ioctl_bytes(fd: int, request: int, struct: str) -> tuple[int, int, bytes]:
    """An ioctl that fills ``struct``: (result, errno, its bytes), e.g. for a C program to load."""
    p = ffi.new(struct + " *")
    ret = _ioctl(fd, request, p)
    return ret, (ffi.errno if ret < 0 else 0), bytes(ffi.buffer(p))


def sizeof(struct: str) -> int:
    return ffi.sizeof(struct)


def offsetof(struct: str, *fields: str) -> int:
    return ffi.offsetof(struct, *fields)


# ---------------------------------------------------------------------------
# struct kvm_run
# ---------------------------------------------------------------------------
KVM_SYNC_X86_REGS = 1 << 0   # kvm_run.kvm_valid_regs: KVM stores struct kvm_regs in kvm_run.s at every exit
_EXIT_IO = int(ExitReason.IO)  # a plain int: compared on every exit
_RUN_S = ffi.offsetof("struct kvm_run", "s")
SYNC_REG_OFFSETS = {name: _RUN_S + off for name, off in _REG_OFFSETS.items()}  # in the kvm_run mapping


class RunView:
    """A vCPU's mmap'ed struct kvm_run: the exit's fields as plain values, and what userspace writes
    back (immediate_exit, an IN's data, a hypercall's return, an MMIO read's data)."""

    __slots__ = ("mm", "_run", "_io")

    def __init__(self, mm: _mmap.mmap) -> None:
        self.mm = mm
        self._run: Any = ffi.from_buffer("struct kvm_run *", mm)
        self._io: Any = self._run.io   # read on every exit: one level of lookup less

    def close(self) -> None:
        if self._run is not None:
            self._io = None
            ffi.release(self._run)
            self._run = None
            self.mm.close()

    def enter(self, fd: int, port: int) -> int:
        """KVM_RUN once: -1 if the exit is port I/O on ``port`` (nothing else read), else 0 or the errno.

        After a failed KVM_RUN exit_reason is stale unless KVM set it (KVM_EXIT_MEMORY_FAULT);
        :meth:`forget_exit` clears it once such an exit is consumed, so a stale one is never
        taken for a new one."""
        try:
            _ioctl_run(fd, KVM_RUN, 0)
        except OSError as e:
            return e.errno or 0
        if self._run.exit_reason == _EXIT_IO and self._io.port == port:
            return -1
        return 0

    def forget_exit(self) -> None:
        self._run.exit_reason = 0

    @property
    def exit_reason(self) -> int:
        return int(self._run.exit_reason)

    def io(self) -> tuple[int, int, int, int, int]:
        """(direction, size, port, count, data_offset)"""
        io = self._run.io
        return io.direction, io.size, io.port, io.count, io.data_offset

    def mmio(self) -> tuple[int, bytes, int, bool]:
        """(phys_addr, data, len, is_write)"""
        m = self._run.mmio
        return m.phys_addr, bytes(m.data)[:m.len], m.len, bool(m.is_write)

    def hypercall(self) -> tuple[int, tuple[int, ...], int, int]:
        """(nr, args, flags, ret): ret as KVM left it at the exit"""
        h = self._run.hypercall
        return h.nr, tuple(h.args), h.flags, h.ret

    def internal(self) -> tuple[int, tuple[int, ...]]:
        """(suberror, data[:ndata])"""
        i = self._run.internal
        return i.suberror, tuple(i.data[0:min(i.ndata, 16)])

    def system_event(self) -> tuple[int, tuple[int, ...]]:
        """(type, data[:ndata], at least data[0]: the older 'flags')"""
        e = self._run.system_event
        return e.type, tuple(e.data[0:max(1, min(e.ndata, 16))])

    def fail_entry(self) -> tuple[int, int]:
        """(hardware_entry_failure_reason, cpu)"""
        f = self._run.fail_entry
        return f.hardware_entry_failure_reason, f.cpu

    def memory_fault(self) -> tuple[int, int, int]:
        """(flags, gpa, size)"""
        m = self._run.memory_fault
        return m.flags, m.gpa, m.size

    def padding(self) -> bytes:
        """The exit's union, raw (for exits this project does not decode)."""
        return bytes(ffi.buffer(self._run.padding))

    @property
    def immediate_exit(self) -> bool:
        return bool(self._run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._run.immediate_exit = int(bool(value))

    def set_hypercall_ret(self, value: int) -> None:
        self._run.hypercall.ret = value & 0xFFFFFFFFFFFFFFFF

    def set_mmio_data(self, data: bytes) -> None:
        n = self._run.mmio.len
        if len(data) != n:
            raise ValueError(f"MMIO read of {n} bytes needs {n} bytes of data, got {len(data)}")
        ffi.memmove(self._run.mmio.data, data, n)

    def sync_regs(self, on: bool) -> None:
        """Ask KVM to store the general-purpose registers in kvm_run at every exit (KVM_CAP_SYNC_REGS)."""
        self._run.kvm_valid_regs = KVM_SYNC_X86_REGS if on else 0

    def read(self, offset: int, length: int) -> bytes:
        return self.mm[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self.mm[offset : offset + len(data)] = data
