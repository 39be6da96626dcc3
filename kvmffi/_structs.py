"""The hot struct ioctls of a VM's bring-up: struct.Struct layouts and fcntl.ioctl, no cffi work per call.

Each layout mirrors a struct of ``_cdef.CDEF`` field by field (padding as ``x``); the sizes are
checked here at import, and tests/unit/test_layout.py checks the bytes of every field. Each call
returns 0 or the errno, never raising: the object layer turns failures into KvmError.
"""

from __future__ import annotations

import fcntl as _fcntl
import struct as _struct
from typing import Any

from ._cdef import ffi
from ._ioctls import (KVM_GET_REGS, KVM_GET_SREGS, KVM_SET_MEMORY_ATTRIBUTES, KVM_SET_REGS, KVM_SET_SREGS,
                      KVM_SET_USER_MEMORY_REGION, KVM_SET_USER_MEMORY_REGION2)

REGS = _struct.Struct("<18Q")                                   # struct kvm_regs, field by field
SREGS = _struct.Struct("<" + "QIH9Bx" * 8 + "QH6x" * 2 + "7Q" + "4Q")  # kvm_sregs, flattened
REGION = _struct.Struct("<IIQQQ")                               # kvm_userspace_memory_region
REGION2 = _struct.Struct("<IIQQQQI4x112x")                      # kvm_userspace_memory_region2
ATTRS = _struct.Struct("<4Q")                                   # kvm_memory_attributes
LAYOUTS = {
    "struct kvm_regs": REGS,
    "struct kvm_sregs": SREGS,
    "struct kvm_userspace_memory_region": REGION,
    "struct kvm_userspace_memory_region2": REGION2,
    "struct kvm_memory_attributes": ATTRS,
}
for _name, _layout in LAYOUTS.items():
    assert _layout.size == ffi.sizeof(_name), _name

REG_OFFSETS = {name: f.offset for name, f in ffi.typeof("struct kvm_regs").fields}  # within struct kvm_regs
_u64 = _struct.Struct("<Q")
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1


def _ioctl_buf(fd: int, request: int, buf: bytearray) -> int:
    try:
        _fcntl.ioctl(fd, request, buf, True)
        return 0
    except OSError as e:
        return e.errno or 0


def get_regs(fd: int) -> tuple[int, tuple[int, ...]]:
    """KVM_GET_REGS: (errno, the 18 registers in struct kvm_regs order)."""
    buf = bytearray(REGS.size)
    err = _ioctl_buf(fd, KVM_GET_REGS, buf)
    return err, REGS.unpack(buf)


def set_regs(fd: int, values: tuple[int, ...]) -> int:
    """KVM_SET_REGS from the 18 registers in struct kvm_regs order; returns 0 or the errno."""
    return _ioctl_buf(fd, KVM_SET_REGS, bytearray(REGS.pack(*(v & _M64 for v in values))))


def get_sregs(fd: int) -> tuple[int, tuple[int, ...]]:
    """KVM_GET_SREGS: (errno, kvm_sregs flattened: 8 segments of 12 fields, gdt and idt (base, limit),
    cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap[4])."""
    buf = bytearray(SREGS.size)
    err = _ioctl_buf(fd, KVM_GET_SREGS, buf)
    return err, SREGS.unpack(buf)


def set_sregs(fd: int, flat: tuple[int, ...]) -> int:
    """KVM_SET_SREGS from :func:`get_sregs`' flattened form; returns 0 or the errno."""
    return _ioctl_buf(fd, KVM_SET_SREGS, bytearray(SREGS.pack(*flat)))


def set_user_memory_region(fd: int, slot: int, flags: int, gpa: int, size: int, uaddr: int) -> int:
    """KVM_SET_USER_MEMORY_REGION; any bit pattern is passed truncated to the field's width."""
    arg = REGION.pack(slot & _M32, flags & _M32, gpa & _M64, size & _M64, uaddr & _M64)
    return _ioctl_buf(fd, KVM_SET_USER_MEMORY_REGION, bytearray(arg))


def set_user_memory_region2(fd: int, slot: int, flags: int, gpa: int, size: int, uaddr: int, offset: int,
                            guest_memfd: int) -> int:
    """KVM_SET_USER_MEMORY_REGION2; any bit pattern is passed truncated to the field's width."""
    arg = REGION2.pack(slot & _M32, flags & _M32, gpa & _M64, size & _M64, uaddr & _M64, offset & _M64,
                       guest_memfd & _M32)
    return _ioctl_buf(fd, KVM_SET_USER_MEMORY_REGION2, bytearray(arg))


def set_memory_attributes(fd: int, address: int, size: int, attributes: int, flags: int) -> int:
    """KVM_SET_MEMORY_ATTRIBUTES; any bit pattern is passed truncated to 64 bits. Returns 0 or the errno."""
    arg = ATTRS.pack(address & _M64, size & _M64, attributes & _M64, flags & _M64)
    return _ioctl_buf(fd, KVM_SET_MEMORY_ATTRIBUTES, bytearray(arg))


def reg_reader(fd: int) -> Any:
    """A function name -> register value doing one KVM_GET_REGS into a reused buffer.
    Raises OSError on failure."""
    buf = bytearray(REGS.size)
    ioctl, unpack, req = _fcntl.ioctl, _u64.unpack_from, KVM_GET_REGS

    def read(name: str) -> int:
        ioctl(fd, req, buf, True)
        return int(unpack(buf, REG_OFFSETS[name])[0])

    return read
