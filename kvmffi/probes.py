"""Probes: behaviours of this host found by running a guest, not by asking a capability; and the
one hypercall scenario the probe and the hypercall tests share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .exits import HypercallExit
from .system import Kvm
from .uapi import Cap, HypercallNr, VmType

_cache: dict[str, Any] = {}


@dataclass
class HypercallRun:
    exits: list[HypercallExit] = field(default_factory=list)   # the KVM_EXIT_HYPERCALLs, in order
    seen: list[int] = field(default_factory=list)              # what the guest's hypercall returned


def run_map_gpa_range(kvm: Kvm, vm_type: VmType | int = VmType.DEFAULT, *, enable: bool = True,
                      ret: int | None = 0, after_unknown: bool = False, timeout: float = 30.0) -> HypercallRun:
    """The scenarios guest makes one KVM_HC_MAP_GPA_RANGE (TEST_GPA, 1 page, decrypted) and reports
    what it returned (``after_unknown``: first a hypercall KVM answers itself, -KVM_ENOSYS, whose
    result the guest reports too). ``enable`` turns KVM_CAP_EXIT_HYPERCALL on for it; each exit is
    answered with ``ret``, or re-entered without writing run->hypercall.ret when ``ret`` is None.
    Each exit keeps what KVM left in run->hypercall.ret (``HypercallExit.ret``), read before any
    write. Raises GuestHang where the hypercall never leaves KVM_RUN."""
    from .testvm import TEST_GPA, TestVm
    r = HypercallRun()

    def on_exit(vcpu: Any, ex: Any) -> bool:
        if isinstance(ex, HypercallExit):
            r.exits.append(ex)
            if ret is not None:
                ex.set_ret(ret)
            return True
        return False

    with TestVm("scenarios", kvm=kvm, vm_type=vm_type, timeout=timeout) as t:
        assert t.vm is not None
        if enable:
            t.vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << HypercallNr.MAP_GPA_RANGE)
        t.set_param("scenario", "S_HYPERCALL_AFTER_UNKNOWN" if after_unknown else "S_HYPERCALL")
        t.set_param("test_gpa", TEST_GPA)
        t.run(on_sync=lambda v, a: r.seen.append(a[1]), on_exit=on_exit)
    return r


def hypercall_exits_delivered(kvm: Kvm, timeout: float = 1.0) -> bool | None:
    """Does KVM_HC_MAP_GPA_RANGE reach userspace as KVM_EXIT_HYPERCALL? None if it cannot be asked."""
    key = "hypercall"
    if key in _cache:
        return _cache[key]  # type: ignore[no-any-return]
    from .testvm import GuestHang
    if not kvm.check_extension(Cap.EXIT_HYPERCALL) & (1 << HypercallNr.MAP_GPA_RANGE):
        _cache[key] = None
        return None
    try:
        res: bool | None = bool(run_map_gpa_range(kvm, timeout=timeout).exits)
    except GuestHang:
        res = False
    _cache[key] = res
    return res


def run_probes(kvm: Kvm) -> dict[str, Any]:
    from .kernels import nested_virtualization
    out: dict[str, Any] = {}
    out["nested_virtualization"] = ("yes (vmx/svm in /proc/cpuinfo): the test kernel can run with -accel kvm"
                                    if nested_virtualization() else
                                    "no (no vmx/svm in /proc/cpuinfo): the test kernel runs under QEMU TCG")
    try:
        h = hypercall_exits_delivered(kvm)
        out["hypercall_exits_delivered"] = {None: "cannot ask (no KVM_CAP_EXIT_HYPERCALL)",
                                            True: "yes", False: "NO (vCPU spins in KVM_RUN)"}[h]
    except Exception as e:  # a probe never breaks the report
        out["hypercall_exits_delivered"] = f"probe failed: {e}"
    return out
