"""Command-line options, ini keys and markers, and the session lifecycle that reads them.

``pytest_configure`` settles strict mode (option, then ``KVMFFI_STRICT``, then ini), the KVM node,
the kernel-log gate mode and the suites' knobs (kvmffi.requirements.Knobs: option, then ini, then
environment; a bad value is a usage error) into the session's state, registers the markers and sets up KTAP
output; ``pytest_unconfigure`` closes what the session opened.
"""

from __future__ import annotations

import os

import pytest

from .. import requirements
from .state import CONFIGS, KEY, SessionState, current, truthy
from .verdicts import system_cap

# marker -> its signature and help line (``pytest --markers``)
MARKER_HELP = {
    "requires_cap": "requires_cap(cap, min=1, vm=False): skip unless KVM reports the capability (on /dev/kvm, "
                    "or with vm=True on a VM of the test's vm_type)",
    "vm_types": "vm_types(*types): restrict the vm_type parametrization",
    "numa": "numa(n=2): needs n or more NUMA nodes; skips by itself otherwise (a topology fact, in strict mode too)",
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

# knob (kvmffi.requirements.Knobs) -> (metavar, help); option --kvm-NAME, ini kvm_NAME, env KVMFFI_NAME
_DEFAULT = requirements.Knobs()
KNOB_HELP = {
    "soak": ("SECONDS", "run the soak (private/test_soak.py) this long; default: it skips"),
    "soak_seed": ("N", "the soak's random seed; default: a fresh one"),
    "fuzz_examples": ("N", f"hypothesis sequences host/test_fuzz.py runs; default {_DEFAULT.fuzz_examples}"),
    "fuzz_seed": ("N", f"host/test_fuzz.py's seed; default {_DEFAULT.fuzz_seed}"),
    "destructive": ("", "let tests damage this machine for good: host/test_memory_failure.py poisons pages "
                        "until reboot"),
}


def knob_option(name: str) -> str:
    return "--kvm-" + name.replace("_", "-")


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
    for name, (metavar, text) in KNOB_HELP.items():
        where = f"ini kvm_{name}, env {requirements.knob_env(name)}"
        if metavar:
            g.addoption(knob_option(name), metavar=metavar, default=None, help=f"{text} (also: {where})")
        else:
            g.addoption(knob_option(name), action="store_true", default=None, help=f"{text} (also: {where}=1)")
    parser.addini("kvm_strict", "turn capability skips into failures", type="bool", default=False)
    parser.addini("kvm_path", "KVM device node", default="/dev/kvm")
    parser.addini("kvm_log_gate", "kernel-log gate: auto, on or off", default="auto")
    for name, (_, text) in KNOB_HELP.items():
        parser.addini(f"kvm_{name}", text, default="")


def settle_knobs(config: pytest.Config) -> requirements.Knobs | str:
    """The knobs from the option, else the ini key, else the environment. A bad option or ini value
    is a usage error; a bad environment value is returned as its message, and fails the tests that
    read the knobs (the plugin loads in every session: an unrelated session must not stop on it)."""
    def sources(name: str, env: bool = True) -> list[tuple[str, str | None]]:
        opt = config.getoption(knob_option(name))
        out = [(knob_option(name), "1" if opt is True else opt), (f"ini kvm_{name}", str(config.getini(f"kvm_{name}")))]
        return out + [(requirements.knob_env(name), os.environ.get(requirements.knob_env(name)))] if env else out
    try:
        requirements.read_knobs(lambda name: sources(name, env=False))
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    try:
        return requirements.read_knobs(sources)
    except ValueError as e:
        return str(e)


def session_knobs() -> requirements.Knobs:
    """The current session's knobs (kvmffi.requirements.knobs asks here); outside one, the environment's."""
    if not CONFIGS:
        return requirements.env_knobs()
    knobs = current().knobs
    if isinstance(knobs, str):
        raise ValueError(knobs)
    return knobs


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
                                     kvm_path=config.getoption("--kvm-path") or config.getini("kvm_path") or "/dev/kvm",
                                     knobs=settle_knobs(config))
    CONFIGS.append(config)
    requirements.system_cap = system_cap
    requirements.session_knobs = session_knobs
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
