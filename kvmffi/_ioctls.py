"""Every ioctl kvmffi issues: its number, the fd it applies to, the capability that offers it, its struct.

Numbers are computed with the ``_IOC`` encoding (asm-generic/ioctl.h) from the declared struct
sizes, as include/uapi/linux/kvm.h defines them. The capability is what api.rst section 4 says
("basic", or a KVM_CAP_* name); None where it documents none.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from ._cdef import ffi

FdKind = Literal["system", "vm", "vcpu"]


class Ioctl(NamedTuple):
    """One row of the table: ``KVM_RUN = Ioctl("KVM_RUN", 0xAE80, "vcpu", "basic", None)``."""

    name: str
    number: int
    fd: FdKind
    cap: str | None
    struct: str | None  # the argument's struct; None for an integer argument or none


# ---------------------------------------------------------------------------
# ioctl encoding (asm-generic/ioctl.h): dir:2 size:14 type:8 nr:8
# ---------------------------------------------------------------------------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE

_rows: dict[int, tuple[FdKind, str | None, str | None]] = {}  # number -> the rest of its row, named below


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << 14), size
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def _row(direction: int, nr: int, struct: str | None, fd: FdKind, cap: str | None) -> int:
    number = _IOC(direction, KVMIO, nr, ffi.sizeof(struct) if struct else 0)
    _rows[number] = (fd, cap, struct)
    return number


def _IO(nr: int, fd: FdKind, cap: str | None) -> int:
    return _row(_IOC_NONE, nr, None, fd, cap)


def _IOR(nr: int, struct: str, fd: FdKind, cap: str | None) -> int:
    return _row(_IOC_READ, nr, struct, fd, cap)


def _IOW(nr: int, struct: str, fd: FdKind, cap: str | None) -> int:
    return _row(_IOC_WRITE, nr, struct, fd, cap)


def _IOWR(nr: int, struct: str, fd: FdKind, cap: str | None) -> int:
    return _row(_IOC_READ | _IOC_WRITE, nr, struct, fd, cap)


# system (/dev/kvm) ioctls
KVM_GET_API_VERSION = _IO(0x00, "system", "basic")
KVM_CREATE_VM = _IO(0x01, "system", "basic")  # arg: VM type
KVM_CHECK_EXTENSION = _IO(0x03, "system", "basic")  # also a VM ioctl with KVM_CAP_CHECK_EXTENSION_VM
KVM_GET_VCPU_MMAP_SIZE = _IO(0x04, "system", "basic")
KVM_GET_SUPPORTED_CPUID = _IOWR(0x05, "struct kvm_cpuid2", "system", "KVM_CAP_EXT_CPUID")
# VM ioctls
KVM_CREATE_VCPU = _IO(0x41, "vm", "basic")
KVM_SET_NR_MMU_PAGES = _IO(0x44, "vm", None)  # arg: pages for the shadow MMU (x86)
KVM_SET_USER_MEMORY_REGION = _IOW(0x46, "struct kvm_userspace_memory_region", "vm", "KVM_CAP_USER_MEMORY")
KVM_SET_USER_MEMORY_REGION2 = _IOW(0x49, "struct kvm_userspace_memory_region2", "vm", "KVM_CAP_USER_MEMORY2")
KVM_ENABLE_CAP = _IOW(0xA3, "struct kvm_enable_cap", "vm", "KVM_CAP_ENABLE_CAP_VM")  # a vCPU's: KVM_CAP_ENABLE_CAP
KVM_SET_MEMORY_ATTRIBUTES = _IOW(0xD2, "struct kvm_memory_attributes", "vm", "KVM_CAP_MEMORY_ATTRIBUTES")
KVM_CREATE_GUEST_MEMFD = _IOWR(0xD4, "struct kvm_create_guest_memfd", "vm", "KVM_CAP_GUEST_MEMFD")
# vCPU ioctls
KVM_RUN = _IO(0x80, "vcpu", "basic")
KVM_GET_REGS = _IOR(0x81, "struct kvm_regs", "vcpu", "basic")
KVM_SET_REGS = _IOW(0x82, "struct kvm_regs", "vcpu", "basic")
KVM_GET_SREGS = _IOR(0x83, "struct kvm_sregs", "vcpu", "basic")
KVM_SET_SREGS = _IOW(0x84, "struct kvm_sregs", "vcpu", "basic")
KVM_SET_CPUID2 = _IOW(0x90, "struct kvm_cpuid2", "vcpu", None)
KVM_PRE_FAULT_MEMORY = _IOWR(0xD5, "struct kvm_pre_fault_memory", "vcpu", "KVM_CAP_PRE_FAULT_MEMORY")

IOCTLS: dict[str, Ioctl] = {
    name: Ioctl(name, v, *_rows[v]) for name, v in dict(globals()).items() if name.startswith("KVM_") and isinstance(v, int)
}
IOCTL_NAMES = {row.number: name for name, row in IOCTLS.items()}
assert len(IOCTLS) == len(_rows), "two ioctls share a number"
