"""Kvm: the /dev/kvm system fd."""

from __future__ import annotations

import errno as _errno
import os
from functools import cached_property

from . import _ffi, _ioctls, _run
from ._fd import FdOwner
from .errors import KvmError
from .uapi import Cap, VmType
from .vm import Vm


class Kvm(FdOwner):
    """The KVM system fd: opens /dev/kvm (``Kvm(path=...)`` opens another node) and creates VMs.

    Closing it (or leaving its ``with`` block) closes only /dev/kvm; VMs have their own fds.
    Raises FileNotFoundError when the node does not exist (no kvm_intel/kvm_amd loaded) and
    PermissionError when it cannot be opened, each saying what to do.

    >>> from kvmffi import Cap, Kvm
    >>> with Kvm() as kvm:
    ...     kvm.api_version, kvm.has_cap(Cap.USER_MEMORY)
    ...     with kvm.create_vm() as vm:
    ...         vcpu = vm.create_vcpu(0)
    (12, True)
    """

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self._sync_regs_by_type: dict[VmType | int, bool] = {}  # KVM_CAP_SYNC_REGS as a VM of each type answered
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(_errno.ENOENT, f"{path} does not exist: load kvm_intel or kvm_amd "
                                    "(modprobe), or enable nested virtualization for this VM", path) from None
        except PermissionError:
            raise PermissionError(_errno.EACCES, f"cannot open {path}: run as root or add this user "
                                  "to the 'kvm' group", path) from None
        super().__init__(fd)

    def __repr__(self) -> str:
        return f"<Kvm {self.path} {'closed' if self.closed else f'fd={self._fd}'}>"

    def _ioctl(self, name: str, req: int, arg: int = 0) -> int:
        ret, err = _ffi.ioctl_int(self.fileno(), req, arg)
        if ret < 0:
            raise KvmError(name, err, {"arg": arg} if arg else {})
        return ret

    @cached_property
    def api_version(self) -> int:
        """KVM_GET_API_VERSION (api.rst 4.1, basic): 12 on every kernel since 2.6.22; any other
        value means the rest of this API does not apply. Asked once. Raises KvmError."""
        return self._ioctl("KVM_GET_API_VERSION", _ioctls.KVM_GET_API_VERSION)

    def check_extension(self, cap: Cap | int) -> int:
        """The system-wide answer for a capability: KVM_CHECK_EXTENSION on /dev/kvm (api.rst 4.4,
        basic). 0 if absent, else positive, sometimes a value or a bitmap (VM_TYPES,
        NR_MEMSLOTS). Where the answer depends on the VM type (GUEST_MEMFD, GUEST_MEMFD_FLAGS,
        MEMORY_ATTRIBUTES, PRE_FAULT_MEMORY) ask the VM: :meth:`Vm.check_extension`. Raises KvmError."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CHECK_EXTENSION, int(cap))
        if ret < 0:
            raise KvmError("KVM_CHECK_EXTENSION", err, {"cap": cap})
        return ret

    def has_cap(self, cap: Cap | int) -> bool:
        """Whether the host offers ``cap`` system-wide (:meth:`check_extension` > 0)."""
        return self.check_extension(cap) > 0

    @cached_property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE (api.rst 4.5, basic): bytes to mmap from a vCPU fd (kvm_run and
        the pages after it), a multiple of the page size. Asked once; each Vm is handed it."""
        return self._ioctl("KVM_GET_VCPU_MMAP_SIZE", _ioctls.KVM_GET_VCPU_MMAP_SIZE)

    @cached_property
    def supported_cpuid(self) -> list[tuple[int, ...]]:
        """KVM_GET_SUPPORTED_CPUID (api.rst 4.46, KVM_CAP_EXT_CPUID, x86): the CPUID KVM can give a
        guest, as (function, index, flags, eax, ebx, ecx, edx) entries for
        :meth:`Vcpu.set_cpuid2`. Asked once. Raises KvmError."""
        entries, err = _ffi.get_supported_cpuid(self.fileno())
        if err:
            raise KvmError("KVM_GET_SUPPORTED_CPUID", err)
        return entries

    def vm_types(self) -> list[VmType | int]:
        """VM types this host can create: the bits of KVM_CAP_VM_TYPES (api.rst 8.41, x86) as
        :class:`VmType` (a bare int for a type kvmffi does not name); [DEFAULT] where the kernel
        predates the capability. Raises KvmError."""
        mask = self.check_extension(Cap.VM_TYPES) or 1
        out: list[VmType | int] = []
        for bit in range(64):
            if mask & (1 << bit):
                try:
                    out.append(VmType(bit))
                except ValueError:
                    out.append(bit)
        return out

    def create_vm(self, vm_type: VmType | int = VmType.DEFAULT) -> Vm:
        """Create a VM: KVM_CREATE_VM (api.rst 4.2, basic) with ``vm_type`` (one of
        :meth:`vm_types`), retried on EINTR at most 100 times in a row.

        The new fd is wrapped in its :class:`Vm` before anything else can fail; the Vm is handed
        the kvm_run size and whether vCPUs of its type sync registers (KVM_CAP_SYNC_REGS,
        api.rst 6.74, asked of the first VM of each type). The Vm is a context manager. Raises
        KvmError: EINVAL for a type the host does not offer (the message shows
        KVM_CAP_VM_TYPES), ENOMEM/EMFILE when out of resources.
        """
        for _ in range(100):  # bounded: a kernel that only ever answers EINTR fails instead of hanging
            ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CREATE_VM, int(vm_type))
            if ret >= 0 or err != _errno.EINTR:
                break
        if ret < 0:
            hint = ""
            if err == _errno.EINVAL:
                hint = (f"VM type {int(vm_type)} not supported here (KVM_CAP_VM_TYPES = "
                        f"{self.check_extension(Cap.VM_TYPES):#x})")
            raise KvmError("KVM_CREATE_VM", err, {"type": vm_type}, hint)
        try:
            vm = Vm(ret, int(vm_type), self, vcpu_mmap_size=self.vcpu_mmap_size)
        except BaseException:
            os.close(ret)
            raise
        try:
            vm.sync_regs = self._sync_regs_for(vm)
        except BaseException:
            vm.close()
            raise
        return vm

    def _sync_regs_for(self, vm: Vm) -> bool:
        """Whether vCPUs of ``vm``'s type can have KVM store their registers in kvm_run
        (KVM_CAP_SYNC_REGS with KVM_SYNC_X86_REGS): asked of the first VM of each type, then kept."""
        known = self._sync_regs_by_type
        if vm.type not in known:
            known[vm.type] = bool(vm.check_extension(Cap.SYNC_REGS) & _run.KVM_SYNC_X86_REGS)
        return known[vm.type]
