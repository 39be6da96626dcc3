"""Command-line options, ini keys and markers, and the session lifecycle that reads them.

``pytest_configure`` settles strict mode (option, then ``KVMFFI_STRICT``, then ini), the KVM node
and the kernel-log gate mode into the session's state, registers the markers and sets up KTAP
output; ``pytest_unconfigure`` closes what the session opened.
"""

from __future__ import annotations

import os

import pytest

from .. import requirements
from .state import CONFIGS, KEY, SessionState, truthy
from .verdicts import system_cap

# marker -> its signature and help line (``pytest --markers``)
MARKER_HELP = {
    "requires_cap": "requires_cap(cap, min=1, vm=False): skip unless KVM reports the capability (on /dev/kvm, "
                    "or with vm=True on a VM of the test's vm_type)",
    "vm_types": "vm_types(*types): restrict the vm_type parametrization",
    "numa": "numa: needs two or more NUMA nodes",
    "kernel_splat": "kernel_splat(*kinds): the test expects kernel splats of these kinds (WARNING, BUG, KASAN, ...; "
                    "none given: any); the kernel-log gate lets them pass",
    "needs_gmem_flags": "needs_gmem_flags(flags): parametrize vm_type only over the types whose "
                        "KVM_CAP_GUEST_MEMFD_FLAGS include these flags, and skip (strict: fail) where none does",
    "kernel_bug": "kernel_bug(name): a known kernel bug (kvmffi.kernels.KNOWN_BUGS): an expected failure on the "
                  "kernels that have it, a normal test on the others",
    "any_vm_type": "any_vm_type: parametrize vm_type over every creatable type, not only those with guest_memfd",
    "private": "private: needs private memory; vm_type goes over the types with KVM_MEMORY_ATTRIBUTE_PRIVATE, "
               "and the test skips (fails in strict mode) without one",
}
MARKERS = frozenset(MARKER_HELP)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kvmffi", "kvmffi: KVM guest_memfd test harness")
    g.addoption("--kvmffi", action="store_true", default=False,
                help="apply kvmffi's header, kernel-log gate and leak check to this session even if no test "
                     "uses a kvmffi fixture or marker")
    g.addoption("--kvm-strict", action="store_true", default=None,
                help="turn capability skips into failures (also: ini kvm_strict, env KVMFFI_STRICT=1)")
    g.addoption("--kvm-path", default=None, help="KVM device node (default /dev/kvm; ini kvm_path)")
    g.addoption("--kvm-no-leak-check", action="store_true", default=False,
                help="do not fail the session when KVM fds or threads are left open at its end")
    g.addoption("--ktap", action="store_true", default=False,
                help="report in KTAP on standard output instead of pytest's own report")
    g.addoption("--ktap-file", default=None, help="also write a KTAP report to this file")
    g.addoption("--kvm-log-gate", choices=["auto", "on", "off"], default=None,
                help="fail a test during which the kernel logs a splat (WARNING, BUG, KASAN, lockdep, ...): "
                     "auto (default) where /dev/kmsg is readable, on (an unreadable log is an error), off")
    parser.addini("kvm_strict", "turn capability skips into failures", type="bool", default=False)
    parser.addini("kvm_path", "KVM device node", default="/dev/kvm")
    parser.addini("kvm_log_gate", "kernel-log gate: auto, on or off", default="auto")


def pytest_configure(config: pytest.Config) -> None:
    opt = config.getoption("--kvm-strict")
    env = os.environ.get("KVMFFI_STRICT")
    if opt is not None:
        strict = bool(opt)
    elif env is not None:
        strict = truthy(env)
    else:
        strict = bool(config.getini("kvm_strict"))
    gate = config.getoption("--kvm-log-gate") or os.environ.get("KVMFFI_LOG_GATE") or config.getini("kvm_log_gate")
    config.stash[KEY] = SessionState(strict=strict, forced=bool(config.getoption("--kvmffi")), gate_mode=gate,
                                     kvm_path=config.getoption("--kvm-path") or config.getini("kvm_path") or "/dev/kvm")
    CONFIGS.append(config)
    requirements.system_cap = system_cap
    from .. import ktap
    ktap.configure(config)
    for line in MARKER_HELP.values():
        config.addinivalue_line("markers", line)


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(KEY, None)
    if st is not None and st.log_gate is not None:
        st.log_gate.log.close()
        st.log_gate = None
    if config in CONFIGS:
        CONFIGS.remove(config)
