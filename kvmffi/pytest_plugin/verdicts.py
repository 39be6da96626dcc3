"""What a missing requirement becomes: a skip, or in strict mode a failure (unless the running
kernel predates the feature or withholds it by design).

Also the glue between kvmffi.requirements and the session: capabilities asked on /dev/kvm are
answered from the session's snapshot, and the helpers tests once imported from the plugin.
"""

from __future__ import annotations

from .. import requirements
from ..system import Kvm
from ..uapi import Cap
from ..vm import Vm
from .state import current, host_caps


def strict_mode() -> bool:
    return current().strict


def missing_verdict(reason: str, feature: str | None) -> tuple[bool, str]:
    """(fail?, message) for a missing capability: strict mode fails unless the kernel predates it."""
    from ..kernels import FEATURE_SINCE, cap_withheld, predates, running
    withheld = cap_withheld(feature) if feature is not None else None
    if withheld:
        return False, f"{reason} [{withheld}]"
    if feature is not None and predates(feature):
        since = ".".join(map(str, FEATURE_SINCE[feature]))
        return False, f"{reason} [{running().release} predates {feature} (Linux {since})]"
    if current().strict:
        return True, f"strict mode: {reason}"
    return False, reason


def skip_missing(reason: str, feature: str | None = None) -> None:
    """Kept for tests written against the plugin: kvmffi.requirements.skip_missing."""
    __tracebackhide__ = True
    requirements.skip_missing(reason, feature)


def require_cap(cap: Cap, vm: Vm | None = None, min: int = 1) -> int:
    """Kept for tests written against the plugin: kvmffi.requirements.require_cap."""
    __tracebackhide__ = True
    return requirements.require_cap(cap, vm, min)


def system_cap(cap: Cap) -> int:
    """/dev/kvm's answer, from the session's snapshot where it has one (kvmffi.requirements asks here)."""
    cached = host_caps().system.get(cap.name)
    if cached is None:
        with Kvm(current().kvm_path) as kvm:
            cached = kvm.check_extension(cap)
    return cached
