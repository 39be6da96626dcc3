"""Capability snapshot of this host: what KVM offers, per VM type, plus host facts."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import KvmError
from .kernels import FEATURES, vendor_module
from .system import Kvm
from .uapi import Cap, GuestMemfdFlag, MemoryAttribute, VmType


@dataclass
class VmTypeCaps:
    """Answers of KVM_CHECK_EXTENSION asked on a VM of one type."""

    vm_type: str
    value: int
    creatable: bool
    error: str = ""
    guest_memfd: int = 0
    guest_memfd_flags: int = 0
    memory_attributes: int = 0
    pre_fault_memory: int = 0
    user_memory2: int = 0
    environment: str = ""       # a refusal by the environment (a security module), not by KVM

    @property
    def private(self) -> bool:
        """This VM type supports KVM_MEMORY_ATTRIBUTE_PRIVATE."""
        return bool(self.memory_attributes & MemoryAttribute.PRIVATE)

    @property
    def guest_memfd_flag_names(self) -> str:
        return str(GuestMemfdFlag(self.guest_memfd_flags))

    @property
    def memory_attribute_names(self) -> str:
        return str(MemoryAttribute(self.memory_attributes))


@dataclass
class HostCaps:
    kernel: str
    machine: str
    kvm_path: str
    kvm_accessible: bool
    error: str = ""
    vendor_module: str = ""
    nested: str = ""
    tdp_mmu: str = ""
    api_version: int = 0
    vm_types_mask: int = 0
    system: dict[str, int] = field(default_factory=dict)
    per_vm_type: list[VmTypeCaps] = field(default_factory=list)
    probes: dict[str, Any] = field(default_factory=dict)   # filled by kvmffi.probes.run_probes

    def host_tier_blocker(self) -> str:
        """Why the host tier cannot run here ('' when it can): the one decision the runner, the
        matrix and `kvmffi caps` use."""
        if not self.kvm_accessible:
            return f"{self.kvm_path} not usable: {self.error}"
        if self.system.get("GUEST_MEMFD", 0) <= 0:
            return f"KVM_CAP_GUEST_MEMFD is 0 on this kernel ({FEATURES['KVM_CAP_GUEST_MEMFD'].hint()})"
        return ""

    def private_memory(self) -> bool:
        """Does a VM type this host can create support private memory (the private tier runs here)?"""
        return any(v.private for v in self.per_vm_type if v.creatable)

    def private_tier_blocker(self) -> str:
        """Why the private tier cannot run here ('' when it can): it then runs in a test kernel."""
        if self.private_memory():
            return ""
        return (f"no VM type with private memory on this host (KVM_CAP_VM_TYPES={self.vm_types_mask:#x}, "
                f"KVM_CAP_MEMORY_ATTRIBUTES={self.system.get('MEMORY_ATTRIBUTES', 0):#x})")

    def vm_type(self, t: VmType | int) -> VmTypeCaps | None:
        for v in self.per_vm_type:
            if v.value == int(t):
                return v
        return None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for v in d["per_vm_type"]:
            v["guest_memfd_flag_names"] = str(GuestMemfdFlag(v["guest_memfd_flags"]))
            v["memory_attribute_names"] = str(MemoryAttribute(v["memory_attributes"]))
        return d


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


SYSTEM_CAPS = (Cap.USER_MEMORY2, Cap.MEMORY_FAULT_INFO, Cap.MEMORY_ATTRIBUTES, Cap.GUEST_MEMFD, Cap.VM_TYPES,
               Cap.PRE_FAULT_MEMORY, Cap.GUEST_MEMFD_FLAGS, Cap.EXIT_HYPERCALL, Cap.NR_MEMSLOTS,
               Cap.READONLY_MEM, Cap.MAX_VCPUS)


def snapshot(path: str = "/dev/kvm") -> HostCaps:
    """Ask the kernel. Never raises for a missing /dev/kvm: the snapshot says why."""
    mod = vendor_module()
    h = HostCaps(kernel=platform.release(), machine=platform.machine(), kvm_path=path, kvm_accessible=False,
                 vendor_module=mod,
                 nested=_read(f"/sys/module/{mod}/parameters/nested") if mod else "",
                 tdp_mmu=_read("/sys/module/kvm/parameters/tdp_mmu"))
    try:
        kvm = Kvm(path)
    except OSError as e:
        h.error = str(e.strerror or e)
        return h
    with kvm:
        h.kvm_accessible = True
        h.api_version = kvm.api_version
        for c in SYSTEM_CAPS:
            h.system[c.name] = kvm.check_extension(c)
        h.vm_types_mask = h.system["VM_TYPES"]
        mask = h.vm_types_mask or 1
        for t in VmType:
            if not mask & (1 << t.value):
                continue
            vc = VmTypeCaps(t.name, t.value, False)
            try:
                with kvm.create_vm(t) as vm:
                    vc.creatable = True
                    vc.guest_memfd = vm.check_extension(Cap.GUEST_MEMFD)
                    vc.guest_memfd_flags = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
                    vc.memory_attributes = vm.check_extension(Cap.MEMORY_ATTRIBUTES)
                    vc.pre_fault_memory = vm.check_extension(Cap.PRE_FAULT_MEMORY)
                    vc.user_memory2 = vm.check_extension(Cap.USER_MEMORY2)
                    if vc.guest_memfd > 0:
                        try:
                            vm.create_guest_memfd(1 << 21).close()
                        except KvmError as e:
                            from .hints import security_module_refusal
                            vc.environment = security_module_refusal(e.ioctl, e.errno or 0) or str(e)
            except KvmError as e:
                vc.error = str(e)
            h.per_vm_type.append(vc)
    return h


def format_table(h: HostCaps) -> str:
    lines = [f"kernel          {h.kernel} ({h.machine})",
             f"/dev/kvm        {'ok' if h.kvm_accessible else 'NOT usable: ' + h.error}",
             f"vendor module   {h.vendor_module or '(none found)'}"
             + (f"  nested={h.nested}" if h.nested else "") + (f"  tdp_mmu={h.tdp_mmu}" if h.tdp_mmu else "")]
    if not h.kvm_accessible:
        return "\n".join(lines)
    vt = [v.vm_type for v in h.per_vm_type]
    lines += [f"api version     {h.api_version}",
              f"VM types        {h.vm_types_mask:#x} ({', '.join(vt)})",
              "",
              "system capabilities (KVM_CHECK_EXTENSION on /dev/kvm):"]
    for name, val in h.system.items():
        shown = hex(val) if name in ("EXIT_HYPERCALL", "VM_TYPES", "GUEST_MEMFD_FLAGS", "MEMORY_ATTRIBUTES") else str(val)
        lines.append(f"  KVM_CAP_{name:<30} {shown}")
    lines += ["", "per VM type (KVM_CHECK_EXTENSION on a VM fd):",
              f"  {'type':<14} {'GUEST_MEMFD':>11}  {'GUEST_MEMFD_FLAGS':<22} {'MEMORY_ATTRIBUTES':<20} PRE_FAULT"]
    for v in h.per_vm_type:
        if not v.creatable:
            lines.append(f"  {v.vm_type:<14} cannot create: {v.error}")
            continue
        lines.append(f"  {v.vm_type:<14} {v.guest_memfd:>11}  {v.guest_memfd_flag_names:<22} "
                     f"{v.memory_attribute_names:<20} {v.pre_fault_memory}")
        unknown = v.guest_memfd_flags & ~sum(GuestMemfdFlag.__members__.values())
        if unknown:
            lines.append(f"  {'':<14} guest_memfd flag bits {unknown:#x} are unknown to kvmffi: untested")
        if v.environment:
            lines.append(f"  {'':<14} {v.environment}")
    import shutil
    host, private = h.host_tier_blocker(), h.private_tier_blocker()
    lines += ["", "tiers:", "  unit                             runs anywhere",
              "  host (kvmffi run host)           " + ("runs here" if not host else f"cannot run: {host}"),
              "  private (kvmffi run private)     " + (
                  "runs here" if not private else
                  f"runs in the test kernel under QEMU: {private}" if shutil.which("qemu-system-x86_64") else
                  f"cannot run: {private}, and no qemu-system-x86_64 (apt-get install qemu-system-x86)")]
    if h.probes:
        lines += ["", "probes:"]
        for k, val in h.probes.items():
            lines.append(f"  {k:<32} {val}")
    return "\n".join(lines)
