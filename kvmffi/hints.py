"""What to do when a capability is missing: the second half of every skip reason."""

from __future__ import annotations

from typing import Any

from .errors import MissingCapability
from .kernels import FEATURES
from .uapi import Cap, GuestMemfdFlag

# derived from kvmffi.kernels.FEATURES: a capability's hint is its feature's
CAP_HINTS: dict[int, str] = {cap: FEATURES[cap.kernel_name].hint() for cap in Cap if cap.kernel_name in FEATURES}


def missing_cap_reason(cap: Cap, got: int, where: str = "/dev/kvm", want: str = "> 0") -> str:
    hint = CAP_HINTS.get(cap, "")
    s = f"{cap.kernel_name} is {got:#x} on {where} (need {want})"
    return f"{s}: {hint}" if hint else s


def require_gmem_flags(vm: Any, flags: GuestMemfdFlag | int) -> None:
    """Raise MissingCapability unless ``vm`` advertises every guest_memfd flag in ``flags``
    (KVM_CAP_GUEST_MEMFD_FLAGS, asked on the VM fd)."""
    __tracebackhide__ = True
    flags = GuestMemfdFlag(flags)
    have = GuestMemfdFlag(vm.check_extension(Cap.GUEST_MEMFD_FLAGS))
    missing = flags & ~have
    if not missing:
        return
    vtype = getattr(vm.type, "name", vm.type)
    if have and GuestMemfdFlag.INIT_SHARED in missing and GuestMemfdFlag.MMAP in have:
        how = ("VM types with private memory start guest_memfd private and never offer INIT_SHARED; "
               "a DEFAULT VM does")
    else:
        how = CAP_HINTS[Cap.GUEST_MEMFD_FLAGS]
    first = GuestMemfdFlag(missing & -missing)
    raise MissingCapability(f"a {vtype} VM offers guest_memfd flags {have or 0}, this needs {flags}: {how}",
                            feature=f"GUEST_MEMFD_FLAG_{first.name}")


def security_module_refusal(ioctl: str, err: int, lsm_path: str = "/sys/kernel/security/lsm") -> str | None:
    """The environment's reason when a security module refuses what KVM would create: guest_memfd's
    inode is made through anon_inode_make_secure_inode(), so an LSM policy can answer EACCES or EPERM
    to KVM_CREATE_GUEST_MEMFD. Such a refusal is a skip (bisect 125), never a kernel failure."""
    import errno as E
    if ioctl != "KVM_CREATE_GUEST_MEMFD" or err not in (E.EACCES, E.EPERM):
        return None
    try:
        with open(lsm_path) as f:
            lsms = f.read().strip() or "none listed"
    except OSError:
        lsms = f"unknown ({lsm_path} unreadable)"
    return (f"KVM_CREATE_GUEST_MEMFD answered {E.errorcode[err]}: a security module refuses guest_memfd's inode "
            f"(active LSMs: {lsms}); the environment, not KVM: allow anon inodes of class kvm-gmem in its policy")
