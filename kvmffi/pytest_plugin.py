"""pytest plugin (entry point ``kvmffi``): fixtures, markers, strict mode, report header, kernel-log
gate, leak check.

Quiet where unused: the header, the kernel-log gate, the kernel log on failures and the leak check
apply to a session only if one of its tests uses a kvmffi fixture or marker, or lives in
kvmffi's suites, or ``--kvmffi`` asks for them. Every other pytest session in the environment
runs as if the plugin were not installed. The state of a session lives in ``config.stash``.

Markers
    ``@pytest.mark.requires_cap(Cap.X, min=1, vm=False)``: skip unless KVM_CHECK_EXTENSION(X) >= min,
    asked on /dev/kvm, or with ``vm=True`` on a VM of the test's ``vm_type``.
    ``@pytest.mark.vm_types(VmType.A, ...)``: restrict the ``vm_type`` parametrization.

Strict mode (``--kvm-strict``, ini ``kvm_strict = true`` or ``KVMFFI_STRICT=1``) turns every
capability skip into a failure: use it on hosts that are supposed to have what the suite needs.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import caps as _caps
from . import requirements
from .guest_memfd import GuestMemfd
from .hints import missing_cap_reason
from .system import Kvm
from .uapi import Cap, GuestMemfdFlag, VmType
from .vm import Vm


@dataclass
class _Session:
    """One pytest session's kvmffi state (in ``config.stash``; nested pytester sessions get their own)."""
    strict: bool = False
    kvm_path: str = "/dev/kvm"
    gate_mode: str = "auto"
    forced: bool = False
    active: bool = False
    caps: _caps.HostCaps | None = None
    log_gate: LogGate | None = None
    baseline: tuple[set[int], int, set[int | None]] | None = None
    notes: list[str] = field(default_factory=list)


_KEY = pytest.StashKey[_Session]()
_CONFIGS: list[pytest.Config] = []   # configured sessions, innermost last


def _st() -> _Session:
    """The current session's state; outside pytest (a script using these helpers), a default one."""
    if _CONFIGS:
        return _CONFIGS[-1].stash[_KEY]
    return _Session(strict=_truthy(os.environ.get("KVMFFI_STRICT")))


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "y", "yes", "true", "on")


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
        strict = _truthy(env)
    else:
        strict = bool(config.getini("kvm_strict"))
    gate = config.getoption("--kvm-log-gate") or os.environ.get("KVMFFI_LOG_GATE") or config.getini("kvm_log_gate")
    config.stash[_KEY] = _Session(strict=strict, forced=bool(config.getoption("--kvmffi")), gate_mode=gate,
                                  kvm_path=config.getoption("--kvm-path") or config.getini("kvm_path") or "/dev/kvm")
    _CONFIGS.append(config)
    requirements.system_cap = _system_cap
    from . import ktap
    ktap.configure(config)
    config.addinivalue_line("markers", "requires_cap(cap, min=1, vm=False): skip unless KVM reports the "
                            "capability (on /dev/kvm, or with vm=True on a VM of the test's vm_type)")
    config.addinivalue_line("markers", "vm_types(*types): restrict the vm_type parametrization")
    config.addinivalue_line("markers", "numa: needs two or more NUMA nodes")
    config.addinivalue_line("markers", "kernel_splat(*kinds): the test expects kernel splats of these kinds "
                            "(WARNING, BUG, KASAN, ...; none given: any); the kernel-log gate lets them pass")
    config.addinivalue_line("markers", "needs_gmem_flags(flags): parametrize vm_type only over the types whose "
                            "KVM_CAP_GUEST_MEMFD_FLAGS include these flags, and skip (strict: fail) where none does")
    config.addinivalue_line("markers", "kernel_bug(name): a known kernel bug (kvmffi.kernels.KNOWN_BUGS): an "
                            "expected failure on the kernels that have it, a normal test on the others")
    config.addinivalue_line("markers", "any_vm_type: parametrize vm_type over every creatable type, "
                            "not only those with guest_memfd")
    config.addinivalue_line("markers", "private: needs private memory; vm_type goes over the types with "
                            "KVM_MEMORY_ATTRIBUTE_PRIVATE, and the test skips (fails in strict mode) without one")


def host_caps() -> _caps.HostCaps:
    """The host's capability snapshot (taken once per session)."""
    st = _st()
    if st.caps is None:
        st.caps = _caps.snapshot(st.kvm_path)
    return st.caps


def strict_mode() -> bool:
    return _st().strict


def _missing_verdict(reason: str, feature: str | None) -> tuple[bool, str]:
    """(fail?, message) for a missing capability: strict mode fails unless the kernel predates it."""
    from .kernels import FEATURE_SINCE, cap_withheld, predates, running
    withheld = cap_withheld(feature) if feature is not None else None
    if withheld:
        return False, f"{reason} [{withheld}]"
    if feature is not None and predates(feature):
        since = ".".join(map(str, FEATURE_SINCE[feature]))
        return False, f"{reason} [{running().release} predates {feature} (Linux {since})]"
    if _st().strict:
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


def _system_cap(cap: Cap) -> int:
    """/dev/kvm's answer, from the session's snapshot where it has one (kvmffi.requirements asks here)."""
    cached = host_caps().system.get(cap.name)
    if cached is None:
        with Kvm(_st().kvm_path) as kvm:
            cached = kvm.check_extension(cap)
    return cached


def _header() -> list[str]:
    h = host_caps()
    lines = [f"kvmffi: kernel {h.kernel}, vendor module {h.vendor_module or 'none'}"
             + (f", nested={h.nested}" if h.nested else "") + f", strict={'on' if strict_mode() else 'off'}"]
    if not h.kvm_accessible:
        lines.append(f"kvmffi: {h.kvm_path} not usable: {h.error}")
        return lines
    s = h.system
    lines.append(f"kvmffi: KVM api {h.api_version}, VM types {h.vm_types_mask:#x}, GUEST_MEMFD={s['GUEST_MEMFD']} "
                 f"MEMORY_ATTRIBUTES={s['MEMORY_ATTRIBUTES']:#x} PRE_FAULT={s['PRE_FAULT_MEMORY']} "
                 f"NR_MEMSLOTS={s['NR_MEMSLOTS']}")
    for v in h.per_vm_type:
        if v.creatable:
            lines.append(f"kvmffi: {v.vm_type} VM: guest_memfd flags {v.guest_memfd_flag_names}, "
                         f"memory attributes {v.memory_attribute_names}")
    return lines


# -- parametrization -----------------------------------------------------------

# VM types kvmffi can run a vCPU in. SEV, SEV-ES, SNP and TDX need a launch flow (measured
# encryption of the initial image, a TD module) that kvmffi does not have.
RUNNABLE_TYPES = (VmType.DEFAULT, VmType.SW_PROTECTED)


def _unrunnable_types(h: _caps.HostCaps) -> list[VmType]:
    return [VmType(v.value) for v in h.per_vm_type if v.creatable and v.value not in RUNNABLE_TYPES]


def _creatable_types(h: _caps.HostCaps, need: str = "guest_memfd") -> list[VmType]:
    """VM types to parametrize over: those the host creates that have what the tests need.

    need: "any" (creatable), "guest_memfd" (KVM_CAP_GUEST_MEMFD on the VM fd), or
    "private" (KVM_MEMORY_ATTRIBUTE_PRIVATE on the VM fd). Falls back to the first type
    that fits nothing, so the test runs and its requirement check explains the skip.
    """
    ok = [v for v in h.per_vm_type if v.creatable and v.value in RUNNABLE_TYPES]
    if need == "guest_memfd":
        ok = [v for v in ok if v.guest_memfd > 0]
    elif need == "private":
        ok = [v for v in ok if v.private]
    types = [VmType(v.value) for v in ok]
    if types:
        return types
    fallback = VmType.SW_PROTECTED if need == "private" else VmType.DEFAULT
    return [fallback]


def _flag_combos(mask: int) -> list[GuestMemfdFlag]:
    bits = [1 << b for b in range(64) if mask & (1 << b)]
    out = []
    for n in range(len(bits) + 1):
        for combo in itertools.combinations(bits, n):
            out.append(GuestMemfdFlag(sum(combo)))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "vm_type" not in names:
        return
    h = host_caps()
    need = "any" if metafunc.definition.get_closest_marker("any_vm_type") else "guest_memfd"
    if metafunc.definition.get_closest_marker("private"):
        need = "private"
    types = _creatable_types(h, need)
    nf = metafunc.definition.get_closest_marker("needs_gmem_flags")
    if nf is not None:
        want = int(nf.args[0])
        with_flags = [t for t in types if (vc := h.vm_type(t)) is not None and vc.guest_memfd_flags & want == want]
        types = with_flags or types[:1]  # none: the first runs, and explains its skip
    m = metafunc.definition.get_closest_marker("vm_types")
    if m is not None:
        wanted = [VmType(int(t)) for t in m.args]
        types = [t for t in wanted if t in types] or wanted
    if "gmem_flags" in names:
        params = []
        for t in types:
            vc = h.vm_type(t)
            # bits kvmffi does not know are left out (`kvmffi caps` lists them as untested)
            for f in _flag_combos((vc.guest_memfd_flags if vc else 0) & sum(GuestMemfdFlag.__members__.values())):
                params.append(pytest.param(t, f, id=f"{t.name}-{str(f).replace('|', '+') or '0'}"))
    else:
        params = [pytest.param(t, id=t.name) for t in types]
    # creatable types kvmffi cannot drive are listed, each skipped with the reason
    for t in _unrunnable_types(h):
        if m is None or t in [VmType(int(x)) for x in m.args]:
            reason = (f"{t.kernel_name} is offered by this kernel, but running its vCPUs needs a launch flow "
                      "(SEV/SNP measured launch, TDX module) that kvmffi does not have")
            values = (t, GuestMemfdFlag(0)) if "gmem_flags" in names else (t,)
            params.append(pytest.param(*values, id=t.name, marks=pytest.mark.skip(reason=reason)))
    if "gmem_flags" in names:
        metafunc.parametrize(("vm_type", "gmem_flags"), params)
    else:
        metafunc.parametrize("vm_type", params)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="session")
def kvm() -> Iterator[Kvm]:
    """/dev/kvm, opened once per session; skips (fails in strict mode) if it cannot be opened."""
    try:
        k = Kvm(_st().kvm_path)
    except OSError as e:
        skip_missing(str(e.strerror or e))
        raise
    with k:
        yield k


@pytest.fixture
def vm_factory(kvm: Kvm) -> Iterator[Callable[..., Vm]]:
    """``vm_factory(vm_type=DEFAULT)``: VMs closed at teardown, even when the test fails."""
    made: list[Vm] = []

    def make(vm_type: VmType | int = VmType.DEFAULT) -> Vm:
        vm = kvm.create_vm(vm_type)
        made.append(vm)
        return vm

    yield make
    for vm in reversed(made):
        vm.close()


@pytest.fixture
def vm_type() -> VmType:
    """The VM type under test; tests using it are parametrized over every type this host creates."""
    return VmType.DEFAULT


@pytest.fixture
def gmem_flags() -> GuestMemfdFlag:
    """guest_memfd flags under test; parametrized with ``vm_type`` over every advertised combination."""
    return GuestMemfdFlag(0)


@pytest.fixture
def vm(vm_factory: Callable[..., Vm], vm_type: VmType) -> Vm:
    """A VM of the test's ``vm_type`` (parametrized over every type this host can create)."""
    return vm_factory(vm_type)


@pytest.fixture
def gmem_factory() -> Iterator[Callable[..., GuestMemfd]]:
    """``gmem_factory(vm, size, flags=0)``: guest_memfds closed at teardown."""
    made: list[GuestMemfd] = []

    def make(vm: Vm, size: int, flags: GuestMemfdFlag | int = 0) -> GuestMemfd:
        g = vm.create_guest_memfd(size, flags)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


expect_kernel_bug = requirements.expect_kernel_bug


def pytest_runtest_setup(item: pytest.Item) -> None:
    for m in item.iter_markers("kernel_bug"):
        expect_kernel_bug(item, m.args[0])
    if item.get_closest_marker("private") is not None:
        callspec = getattr(item, "callspec", None)
        t = callspec.params.get("vm_type", VmType.SW_PROTECTED) if callspec else VmType.SW_PROTECTED
        vc = host_caps().vm_type(t)
        from .kernels import private_types_withheld
        withheld = private_types_withheld()
        if (vc is None or not vc.creatable or not vc.private) and withheld:
            # withheld by design: strict mode keeps it a skip (host/test_caps.py checks it is withheld)
            pytest.skip(withheld)
        if vc is None or not vc.creatable:
            h = host_caps()
            skip_missing(missing_cap_reason(Cap.VM_TYPES, h.vm_types_mask, "/dev/kvm",
                                            "a VM type with private memory, e.g. KVM_X86_SW_PROTECTED_VM (bit 1)")
                         if h.kvm_accessible else f"{h.kvm_path} not usable: {h.error}")
        elif not vc.private:
            skip_missing(missing_cap_reason(Cap.MEMORY_ATTRIBUTES, vc.memory_attributes, f"a {vc.vm_type} VM",
                                            "KVM_MEMORY_ATTRIBUTE_PRIVATE (0x8)"))
    nf = item.get_closest_marker("needs_gmem_flags")
    if nf is not None:  # the marker skips by itself: asked on a VM of the test's type (KVM answers per VM)
        callspec = getattr(item, "callspec", None)
        t = callspec.params.get("vm_type", VmType.DEFAULT) if callspec else VmType.DEFAULT
        vc = host_caps().vm_type(t)
        if vc is not None and vc.creatable:
            from .hints import require_gmem_flags
            with Kvm(_st().kvm_path) as k, k.create_vm(t) as v:
                require_gmem_flags(v, int(nf.args[0]))
    for m in item.iter_markers("requires_cap"):
        cap = Cap(m.args[0])
        need = int(m.kwargs.get("min", 1))
        if m.kwargs.get("vm"):
            continue  # checked by the fixture below once the VM exists
        require_cap(cap, None, need)


@pytest.fixture(autouse=True)
def _kvmffi_vm_caps(request: pytest.FixtureRequest) -> None:
    marks = [m for m in request.node.iter_markers("requires_cap") if m.kwargs.get("vm")]
    if not marks:
        return
    t = request.getfixturevalue("vm_type") if "vm_type" in request.fixturenames else VmType.DEFAULT
    with Kvm(_st().kvm_path) as k, k.create_vm(t) as v:
        for m in marks:
            require_cap(Cap(m.args[0]), v, int(m.kwargs.get("min", 1)))


# -- activation ------------------------------------------------------------------

MARKERS = frozenset({"requires_cap", "vm_types", "numa", "kernel_splat", "needs_gmem_flags", "kernel_bug",
                     "any_vm_type", "private"})


def _uses_kvmffi(item: pytest.Item) -> bool:
    """Does this test use kvmffi: one of its fixtures (as defined here, not a namesake), a marker, or
    is it one of kvmffi's suites?"""
    from .suites import SUITES_DIR
    if any(item.get_closest_marker(name) is not None for name in MARKERS):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for defs in (getattr(info, "name2fixturedefs", None) or {}).values():
        func = getattr(defs[-1], "func", None) if defs else None
        if getattr(func, "__module__", None) == __name__ and not getattr(func, "__name__", "").startswith("_kvmffi"):
            return True
    return Path(str(item.path)).resolve().is_relative_to(SUITES_DIR)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Switch kvmffi's session machinery on if a collected test uses kvmffi (or --kvmffi asks)."""
    st = config.stash[_KEY]
    if not (st.forced or any(_uses_kvmffi(i) for i in items)):
        return
    st.active = True
    if st.gate_mode != "off":
        from .kmsg import KernelLog
        log = KernelLog.open()
        if log is None and st.gate_mode == "on":
            raise pytest.UsageError("--kvm-log-gate=on but /dev/kmsg cannot be read: run as root, or "
                                    "sysctl kernel.dmesg_restrict=0")
        st.log_gate = LogGate(log) if log is not None else None
    from .testvm import install_kick_handler
    install_kick_handler()  # the vCPU watchdog's signal; must be installed on the main thread
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and config.option.verbose >= 0:
        for line in _header():
            tr.write_line(line)


# -- kernel-log gate -------------------------------------------------------------

class LogGate:
    """The kernel log of the running test: marked when the test starts, read when it reports."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.records: list[Any] = []
        self.reported = 0

    def start(self) -> None:
        self.log.mark()
        self.records = []
        self.reported = 0

    def splats(self) -> list[Any]:
        """Every splat the kernel logged since the test started (reads what is new)."""
        from .kmsg import find_splats
        self.records += self.log.read()
        return find_splats(self.records)

    def new_splats(self) -> list[Any]:
        s = self.splats()
        new, self.reported = s[self.reported:], len(s)
        return new


@pytest.fixture
def kernel_log() -> LogGate:
    """The kernel-log gate of this test: ``kernel_log.splats()`` lists what the kernel logged so far."""
    gate = _st().log_gate
    if gate is None:
        pytest.skip("the kernel log (/dev/kmsg) cannot be read here, or the gate is off (--kvm-log-gate)")
    return gate  # type: ignore[no-any-return]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    gate = _st().log_gate
    if gate is not None:
        gate.start()


def _gate_report(item: pytest.Item, rep: pytest.TestReport) -> None:
    gate = _st().log_gate
    if gate is None:
        return
    splats = gate.new_splats()
    if not splats:
        return
    allowed: set[str] | None = None
    for m in item.iter_markers("kernel_splat"):
        allowed = (allowed or set()) | set(m.args) if m.args else {"*"}
    unexpected = [s for s in splats if allowed is None or not ("*" in allowed or s.kind in allowed)]
    text = "\n\n".join(f"[{s.kind}]\n{s}" for s in splats)
    rep.sections.append(("kernel splats logged during the test", text))
    if not unexpected or hasattr(rep, "wasxfail"):
        return
    head = f"the kernel logged {len(unexpected)} splat(s) during the test: " + ", ".join(
        f"{s.kind}: {s.headline[:140]}" for s in unexpected)
    if rep.passed:
        rep.outcome = "failed"
        rep.longrepr = head + "\n\n" + "\n\n".join(str(s) for s in unexpected)
    elif rep.failed and rep.longrepr is not None:
        rep.sections.append(("kernel-log gate", head))


# -- failure report --------------------------------------------------------------

def _kernel_log_tail(n: int = 20) -> str:
    try:
        r = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"(dmesg unavailable: {e})"
    if r.returncode != 0:
        return f"(dmesg failed: {r.stderr.strip()})"
    return "\n".join(r.stdout.splitlines()[-n:]) or "(empty)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """On a failure, attach the tail of the kernel log: a WARN or an oops is often the real story."""
    outcome = yield
    rep = outcome.get_result()
    from .errors import KvmError, MissingCapability
    # a requirement not met (kvmffi.requirements) is a skip or a strict failure in any session
    if rep.failed and call.excinfo is not None and isinstance(call.excinfo.value, MissingCapability) \
            and not hasattr(rep, "wasxfail"):
        exc = call.excinfo.value
        fail, msg = _missing_verdict(exc.reason, exc.feature)
        if fail:
            rep.longrepr = msg
        else:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {msg}")
        return
    if not _st().active:
        return
    if call.when in ("call", "teardown") or (call.when == "setup" and rep.failed):
        _gate_report(item, rep)
    from .hints import security_module_refusal
    exc_ = call.excinfo.value if rep.failed and call.excinfo is not None else None
    refusal = security_module_refusal(exc_.ioctl, exc_.errno or 0) if isinstance(exc_, KvmError) else None
    if refusal and not hasattr(rep, "wasxfail"):  # the environment: a skip even in strict mode
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {refusal}")
        return
    if rep.failed and call.when in ("setup", "call"):
        rep.sections.append(("kernel log (last 20 lines of dmesg)", _kernel_log_tail()))


# -- leak check ----------------------------------------------------------------

def _kvm_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "kvm" in link:
            out[int(name)] = link
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listing it


def pytest_sessionstart(session: pytest.Session) -> None:
    _st().baseline = (set(_kvm_fds()), _open_fds(), {t.ident for t in threading.enumerate()})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    cfg = session.config
    st = _st()
    if not st.active or st.baseline is None or cfg.getoption("--kvm-no-leak-check"):
        return
    import gc
    gc.collect()
    before_fds, before_n, before_threads = st.baseline
    leaked = {fd: link for fd, link in _kvm_fds().items() if fd not in before_fds}
    threads = [t for t in threading.enumerate() if t.ident not in before_threads and t.is_alive()]
    msgs = []
    if leaked:
        msgs.append("KVM fds left open at session end: " + ", ".join(f"{fd}->{lnk}" for fd, lnk in sorted(leaked.items())))
    if threads:
        msgs.append("threads left running at session end: " + ", ".join(t.name for t in threads))
    tr = cfg.pluginmanager.get_plugin("terminalreporter")
    n = _open_fds()
    ktap = cfg.pluginmanager.get_plugin("kvmffi-ktap")
    if ktap is not None and msgs:
        for m in msgs:
            ktap.write("# kvmffi: " + m)
    if tr is not None:
        tr.write_line(f"kvmffi leak check: open fds {before_n} at start, {n} at end; "
                      f"{len(leaked)} KVM fds and {len(threads)} threads leaked")
        for m in msgs:
            tr.write_line("kvmffi: " + m, red=True)
    if msgs and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_KEY, None)
    if st is not None and st.log_gate is not None:
        st.log_gate.log.close()
        st.log_gate = None
    if config in _CONFIGS:
        _CONFIGS.remove(config)
