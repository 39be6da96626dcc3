"""Kvm: the /dev/kvm system fd."""

from __future__ import annotations

import errno as _errno
import os
from functools import cached_property

from . import _ffi, _ioctls
from ._fd import FdOwner
from .errors import KvmError
from .uapi import Cap, VmType
from .vm import Vm


class Kvm(FdOwner):
    """/dev/kvm. ``Kvm(path=...)`` opens another node.

    >>> with Kvm() as kvm:
    ...     with kvm.create_vm() as vm:
    ...         vcpu = vm.create_vcpu(0)
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
        """KVM_GET_API_VERSION (always 12 on a stable kernel)."""
        return self._ioctl("KVM_GET_API_VERSION", _ioctls.KVM_GET_API_VERSION)

    def check_extension(self, cap: Cap | int) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (the system-wide answer)."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CHECK_EXTENSION, int(cap))
        if ret < 0:
            raise KvmError("KVM_CHECK_EXTENSION", err, {"cap": cap})
        return ret

    def has_cap(self, cap: Cap | int) -> bool:
        return self.check_extension(cap) > 0

    @cached_property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run and what follows)."""
        return self._ioctl("KVM_GET_VCPU_MMAP_SIZE", _ioctls.KVM_GET_VCPU_MMAP_SIZE)

    @cached_property
    def supported_cpuid(self) -> list[tuple[int, ...]]:
        """KVM_GET_SUPPORTED_CPUID: entries (function, index, flags, eax, ebx, ecx, edx)."""
        entries, err = _ffi.get_supported_cpuid(self.fileno())
        if err:
            raise KvmError("KVM_GET_SUPPORTED_CPUID", err)
        return entries

    def vm_types(self) -> list[VmType | int]:
        """VM types this host can create, from the KVM_CAP_VM_TYPES bitmap (DEFAULT if absent)."""
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
        """KVM_CREATE_VM (retried on EINTR, at most 100 times in a row). The Vm is a context manager."""
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
            return Vm(ret, int(vm_type), self)
        except BaseException:
            os.close(ret)
            raise
