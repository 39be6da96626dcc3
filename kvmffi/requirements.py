"""What a test needs from the kernel, said in one place for test writers.

Each function raises :class:`kvmffi.errors.MissingCapability` when the kernel lacks something; the
pytest plugin reports it as a skip naming what is missing and how to get it, or as a failure in
strict mode unless the running kernel predates the feature (kvmffi.kernels.FEATURE_SINCE). Test
modules import this module, never the plugin::

    from kvmffi.requirements import require_cap, require_gmem_flags, skip_missing

    def test_pre_fault(vm):
        require_cap(Cap.PRE_FAULT_MEMORY, vm)      # asked on the VM: KVM answers per VM
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import MissingCapability
from .hints import missing_cap_reason, require_gmem_flags
from .uapi import Cap

__all__ = ["MissingCapability", "expect_kernel_bug", "require_cap", "require_gmem_flags", "skip_missing"]

#: How a capability is asked on /dev/kvm when no VM is given. The plugin points it at its session's
#: cached snapshot (and --kvm-path); outside pytest it opens /dev/kvm.
system_cap: Callable[[Cap], int] | None = None


def _ask_system(cap: Cap) -> int:
    if system_cap is not None:
        return system_cap(cap)
    from .system import Kvm
    with Kvm() as kvm:
        return kvm.check_extension(cap)


def skip_missing(reason: str, feature: str | None = None) -> None:
    """The kernel lacks something this test needs: raise MissingCapability(``reason``). ``feature``
    (a kvmffi.kernels.FEATURE_SINCE key) keeps it a skip in strict mode on kernels that predate it."""
    raise MissingCapability(reason, feature)


def require_cap(cap: Cap, vm: Any = None, min: int = 1) -> int:
    """KVM_CHECK_EXTENSION(``cap``) on ``vm`` (a Vm: KVM answers some capabilities per VM) or on
    /dev/kvm; returns the value, or raises MissingCapability when it is below ``min``."""
    if vm is not None:
        got = vm.check_extension(cap)
        where = f"a {getattr(vm.type, 'name', vm.type)} VM"
    else:
        got = _ask_system(cap)
        where = "/dev/kvm"
    if got < min:
        raise MissingCapability(missing_cap_reason(cap, got, where, f">= {min}"), cap.kernel_name)
    return got


def expect_kernel_bug(item: Any, name: str) -> None:
    """Mark the pytest item ``item`` an expected failure if the running kernel has the known bug
    ``name`` (kvmffi.kernels.KNOWN_BUGS). It still runs: on a kernel that fixed the bug it XPASSes,
    and on kernels outside the bug's range it is an ordinary test."""
    import pytest

    from .kernels import known_bug
    bug = known_bug(name)
    if bug.affected():
        item.add_marker(pytest.mark.xfail(reason=bug.reason(), strict=False, run=True))
