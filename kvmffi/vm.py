"""Vm: a VM fd. Memslots, guest_memfd, memory attributes, capabilities, vCPUs."""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _ffi, _ioctls, _run, _structs
from ._fd import FdOwner
from .errors import KvmError, VmDeadError
from .guest_memfd import GuestMemfd
from .uapi import Cap, GuestMemfdFlag, MemoryAttribute, MemslotFlag, VmType
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .system import Kvm


@dataclass(frozen=True)
class Memslot:
    """One memslot as last set through this Vm (for diagnostics)."""

    slot: int
    gpa: int
    size: int
    userspace_addr: int
    flags: MemslotFlag
    guest_memfd: int | None
    guest_memfd_offset: int

    def __str__(self) -> str:
        s = f"slot {self.slot}: gpa {self.gpa:#x}-{self.gpa + self.size:#x} hva {self.userspace_addr:#x} flags {self.flags}"
        if self.guest_memfd is not None:
            s += f" gmem fd {self.guest_memfd} +{self.guest_memfd_offset:#x}"
        return s


def _fd_of(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, int):
        return x
    return int(x.fileno())


class Vm(FdOwner):
    """A VM. Create with :meth:`kvmffi.Kvm.create_vm`; closing it closes its vCPUs.

    Memory passed to memslots (``userspace_addr`` or a ``keep=`` object) must outlive
    the slot; the Vm keeps references to objects handed to it.
    """

    def __init__(self, fd: int, vm_type: int, kvm: Kvm) -> None:
        super().__init__(fd)
        self.kvm = kvm
        try:
            self.type: VmType | int = VmType(vm_type)
        except ValueError:
            self.type = vm_type
        self.vcpus: dict[int, Vcpu] = {}
        self.memslots: dict[int, Memslot] = {}
        self._keep: dict[int, Any] = {}
        self._sync: bool | None = None

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, VmType) else self.type
        return f"<Vm {t} {'closed' if self.closed else f'fd={self._fd}'}>"

    @property
    def _sync_regs(self) -> bool:
        """Can this VM's vCPUs have KVM store their registers in kvm_run (KVM_CAP_SYNC_REGS)?"""
        if self._sync is None:  # asked on the first VM of each type, the answer kept by the Kvm
            known = self.kvm._sync_regs_by_type
            if self.type not in known:
                known[self.type] = bool(self.check_extension(Cap.SYNC_REGS) & _run.KVM_SYNC_X86_REGS)
            self._sync = known[self.type]
        return self._sync

    def _close_children(self) -> None:
        for v in list(self.vcpus.values()):
            v.close()
        self.vcpus.clear()
        self._keep.clear()

    def _error(self, name: str, err: int, args: dict[str, Any], hint: str = "") -> KvmError:
        if err == _errno.EIO and not self.closed:
            ret, _ = _ffi.ioctl_int(self._fd, _ioctls.KVM_CHECK_EXTENSION, int(Cap.USER_MEMORY))
            if ret < 0:
                return VmDeadError(name, err, args, "KVM killed the VM, check the kernel log (dmesg)")
        return KvmError(name, err, args, hint)

    # -- capabilities -------------------------------------------------------
    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (per-VM answer, e.g. GUEST_MEMFD_FLAGS)."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CHECK_EXTENSION, int(cap))
        if ret < 0:
            raise self._error("KVM_CHECK_EXTENSION", err, {"cap": cap})
        return ret

    def has_cap(self, cap: Cap | int) -> bool:
        return self.check_extension(cap) > 0

    def guest_memfd_flags(self) -> GuestMemfdFlag:
        """Flags this VM accepts for KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD_FLAGS, 0 if absent)."""
        return GuestMemfdFlag(self.check_extension(Cap.GUEST_MEMFD_FLAGS))

    def enable_cap(self, cap: Cap | int, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM, e.g. ``vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << 12)``."""
        if len(args) > 4:
            raise ValueError(f"KVM_ENABLE_CAP takes at most 4 args, got {len(args)}")
        ret, err, _ = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_ENABLE_CAP, "struct kvm_enable_cap",
                                        {"cap": int(cap), "flags": flags, "args": list(args)})
        if ret < 0:
            raise self._error("KVM_ENABLE_CAP", err,
                              {"cap": cap, "args": "[" + ", ".join(hex(a) for a in args) + "]", "flags": flags})

    def set_nr_mmu_pages(self, pages: int) -> None:
        """KVM_SET_NR_MMU_PAGES: the shadow MMU's page budget (x86), as the selftests set it before
        running a VM with no memslots."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_SET_NR_MMU_PAGES, pages)
        if ret < 0:
            raise self._error("KVM_SET_NR_MMU_PAGES", err, {"pages": pages})

    # -- guest_memfd ---------------------------------------------------------
    def create_guest_memfd(self, size: int, flags: GuestMemfdFlag | int = 0,
                           reserved: tuple[int, ...] | None = None) -> GuestMemfd:
        """KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD). ``reserved`` is for negative tests."""
        ret, err, _ = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_CREATE_GUEST_MEMFD, "struct kvm_create_guest_memfd",
                                        {"size": size, "flags": int(flags), "reserved": list(reserved or ())})
        if ret < 0:
            args: dict[str, Any] = {"size": size, "flags": GuestMemfdFlag(int(flags))}
            if reserved:
                args["reserved"] = list(reserved)
            hint = ""
            if err == _errno.ENOTTY:
                hint = "this kernel has no guest_memfd (KVM_CAP_GUEST_MEMFD; Linux >= 6.8 with CONFIG_KVM_GUEST_MEMFD)"
            raise self._error("KVM_CREATE_GUEST_MEMFD", err, args, hint)
        try:
            return GuestMemfd(ret, size, int(flags))
        except BaseException:
            os.close(ret)
            raise

    # -- memslots -----------------------------------------------------------
    def set_user_memory_region(self, slot: int, gpa: int, size: int, userspace_addr: int = 0,
                               flags: MemslotFlag | int = 0, *, keep: Any = None) -> None:
        """KVM_SET_USER_MEMORY_REGION (the legacy ioctl, no guest_memfd)."""
        err = _structs.set_user_memory_region(self.fileno(), slot, int(flags), gpa, size, userspace_addr)
        if err:
            raise self._error("KVM_SET_USER_MEMORY_REGION", err, {"slot": slot, "gpa": gpa, "size": size,
                              "userspace_addr": userspace_addr, "flags": MemslotFlag(int(flags))})
        self._record(slot, gpa, size, userspace_addr, int(flags), None, 0, keep)

    def set_user_memory_region2(self, slot: int, gpa: int, size: int, userspace_addr: int = 0,
                                flags: MemslotFlag | int = 0, guest_memfd: GuestMemfd | int | None = None,
                                guest_memfd_offset: int = 0, *, keep: Any = None) -> None:
        """KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2). size 0 deletes the slot.

        ``guest_memfd`` is a GuestMemfd or any fd number (negative tests pass other fds).
        ``keep`` is an object the Vm holds while the slot exists (e.g. the host mapping).
        """
        gfd = _fd_of(guest_memfd)
        err = _structs.set_user_memory_region2(self.fileno(), slot, int(flags), gpa, size, userspace_addr,
                                           guest_memfd_offset, gfd)
        if err:
            raise self._error("KVM_SET_USER_MEMORY_REGION2", err, {
                "slot": slot, "gpa": gpa, "size": size, "userspace_addr": userspace_addr,
                "flags": MemslotFlag(int(flags)), "guest_memfd": gfd, "offset": guest_memfd_offset})
        self._record(slot, gpa, size, userspace_addr, int(flags),
                     gfd if int(flags) & MemslotFlag.GUEST_MEMFD else None, guest_memfd_offset,
                     (keep, guest_memfd if isinstance(guest_memfd, GuestMemfd) else None))

    def delete_memslot(self, slot: int) -> None:
        """Delete a slot (KVM_SET_USER_MEMORY_REGION2 with size 0)."""
        old = self.memslots.get(slot)
        self.set_user_memory_region2(slot, old.gpa if old else 0, 0, 0,
                                     (old.flags & MemslotFlag.GUEST_MEMFD) if old else 0,
                                     old.guest_memfd if old and old.guest_memfd is not None else None,
                                     0)

    def _record(self, slot: int, gpa: int, size: int, hva: int, flags: int, gfd: int | None, off: int, keep: Any) -> None:
        if size == 0:
            self.memslots.pop(slot, None)
            self._keep.pop(slot, None)
        else:
            self.memslots[slot] = Memslot(slot, gpa, size, hva, MemslotFlag(flags), gfd, off)
            self._keep[slot] = keep

    def memslot_table(self) -> str:
        return "\n".join(str(self.memslots[s]) for s in sorted(self.memslots)) or "(no memslots)"

    # -- memory attributes --------------------------------------------------
    def set_memory_attributes(self, gpa: int, size: int, attributes: MemoryAttribute | int, flags: int = 0) -> None:
        """KVM_SET_MEMORY_ATTRIBUTES (KVM_CAP_MEMORY_ATTRIBUTES): PRIVATE or 0 (shared) for a GPA range."""
        err = _structs.set_memory_attributes(self.fileno(), gpa, size, int(attributes), flags)
        if err:
            hint = ""
            if err == _errno.ENOTTY:
                hint = ("this kernel has no KVM_SET_MEMORY_ATTRIBUTES (KVM_CAP_MEMORY_ATTRIBUTES = 0); "
                        "private memory needs CONFIG_KVM_SW_PROTECTED_VM: use the test kernel (`kvmffi kernel build`)")
            raise self._error("KVM_SET_MEMORY_ATTRIBUTES", err, {"gpa": gpa, "size": size,
                              "attributes": MemoryAttribute(int(attributes)), "flags": flags}, hint)

    def set_private(self, gpa: int, size: int) -> None:
        """Selftests' vm_mem_set_private."""
        self.set_memory_attributes(gpa, size, MemoryAttribute.PRIVATE)

    def set_shared(self, gpa: int, size: int) -> None:
        """Selftests' vm_mem_set_shared."""
        self.set_memory_attributes(gpa, size, 0)

    # -- vCPUs --------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU; the vCPU is closed with this Vm."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CREATE_VCPU, vcpu_id)
        if ret < 0:
            raise self._error("KVM_CREATE_VCPU", err, {"id": vcpu_id})
        try:
            v = Vcpu(ret, vcpu_id, self, self.kvm.vcpu_mmap_size, sync_regs=self._sync_regs)
        except BaseException:
            os.close(ret)
            raise
        self.vcpus[vcpu_id] = v
        return v
