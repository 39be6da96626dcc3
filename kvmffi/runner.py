"""Run the suites on this host or inside a test kernel, and turn the results into exit codes.

kselftest exit codes for `kvmffi run`: 0 pass, 1 fail, 4 skip (nothing passed, nothing failed).
`git bisect run` codes for `kvmffi bisect`: 0 good, 1 bad, 125 cannot test; never 128-255.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import ktap
from .ktap import KSFT_FAIL, KSFT_PASS, KSFT_SKIP, is_ktap
from .testkernel.spec import DEFAULT_VERSION, BootSpec

HOST_SPEC = BootSpec()

BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125



@dataclass
class TierResult:
    name: str
    where: str
    pytest_rc: int = -1
    totals: dict[str, int] = field(default_factory=dict)
    skip_reasons: list[str] = field(default_factory=list)
    fail_names: list[str] = field(default_factory=list)
    infra_error: str = ""
    outcomes: dict[str, str] = field(default_factory=dict)   # test name -> passed/failed/skipped/xfailed/xpassed
    release: str = ""          # the kernel release the tier ran on

    @property
    def ksft(self) -> int:
        return KSFT_FAIL if self.infra_error else ktap.ksft_code(self.totals)

    def summary(self) -> str:
        if self.infra_error:
            return f"{self.name} ({self.where}): could not run: {self.infra_error}"
        t = self.totals
        if not t:
            return f"{self.name} ({self.where}): no results (pytest exit {self.pytest_rc})"
        return (f"{self.name} ({self.where}): pass {t['pass']}, fail {t['fail']}, error {t['error']}, "
                f"skip {t['skip']}")


def parse_ktap(text: str, res: TierResult) -> None:
    """Fill ``res`` from the KTAP report of a tier."""
    p = ktap.parse(text)
    res.totals = p.totals
    res.skip_reasons += p.skip_reasons
    res.fail_names += p.fail_names
    res.outcomes.update(p.outcomes)


# Built-in plugins the suites never use: under emulation each costs start-up time, so kvmffi's
# runs of its own suites inside a test kernel leave them out (--pdb, doctests, unittest, tmpdir, ...).
UNUSED_BUILTIN_PLUGINS = ("debugging", "doctest", "legacypath", "pastebin", "setuponly", "setupplan", "stepwise",
                          "subtests", "unittest")


def pytest_args(selection: list[str], keyword: str | None, fmt: str, ktap_file: str, junit: str | None,
                lean: bool = False) -> list[str]:
    """pytest's arguments for a selection of tier names (host, private, host/test_vm.py) and paths.
    ``lean`` (for the test kernel): only kvmffi's plugin and the built-in ones the suites use."""
    from .suites import SUITES_DIR, resolve
    paths = resolve(selection)
    # --kvmffi: the kernel-log gate, header and leak check watch every test kvmffi runs, the user's own too
    args = ["-m", "pytest", "-p", "no:cacheprovider", "--kvmffi", f"--ktap-file={ktap_file}"]
    in_suites = bool(paths) and all(Path(p.split("::")[0]).resolve().is_relative_to(SUITES_DIR) for p in paths)
    if in_suites:
        args.append(f"--rootdir={SUITES_DIR}")  # node ids read "host/test_vm.py::..." wherever kvmffi is installed
    if lean:
        args[2:2] = ["-p", "kvmffi.pytest_plugin"]
        if in_suites:  # paths of the user's own may use any of them
            for name in UNUSED_BUILTIN_PLUGINS + (() if junit else ("junitxml",)):
                args[2:2] = ["-p", f"no:{name}"]
    if fmt == "ktap":
        args.append("--ktap")
    elif fmt == "junit":
        args.append("-q")
    if junit:
        args.append(f"--junitxml={junit}")
    if keyword:
        args += ["-k", keyword]
    return args + paths


def prepare_test_kernel(selection: list[str] | None = None, cwd: str | None = None,
                        env: dict[str, str] | None = None) -> None:
    """What the test kernel cannot write for itself, its root being read-only (nothing written
    there is kept), made on the host before a boot: the guest programs (and their manifests);
    kvmffi's bytecode and its cffi modules; and, given a ``selection`` of suites, pytest's
    assertion-rewritten test modules (a collection here writes them, pytest there reads them).
    Raises GuestBuildError if a guest program does not build."""
    import compileall

    from . import _cdef, _libc  # noqa: F401  (their cffi declarations land in the cache, then compiled)
    from .cache import cache_dir
    from .guest.build import build_all
    build_all()
    for d in (Path(__file__).resolve().parent, cache_dir() / "cffi"):
        compileall.compile_dir(str(d), quiet=1)
    if not selection:
        return
    cmd = [sys.executable, *pytest_args(selection, None, "pretty", os.devnull, None, lean=True), "--collect-only", "-q"]
    penv = {k: v for k, v in (env or os.environ).items() if k != "PYTHONDONTWRITEBYTECODE"}  # writing them is the point
    subprocess.run(cmd, cwd=cwd, env=dict(penv, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", KVMFFI_LOG_GATE="off"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def run_tier(name: str, selection: list[str], *, spec: BootSpec = HOST_SPEC, keyword: str | None = None,
             fmt: str = "pretty", junit: str | None = None, strict: bool = False,
             echo: Callable[[str], None] = print, timeout: float = 1800.0,
             extra_env: dict[str, str] | None = None) -> TierResult:
    """Run pytest over ``selection`` (tier names or paths) on this host (``spec`` host) or inside the
    test kernel and machine ``spec`` names, from the current directory (the test kernel sees the
    host's files). The ``selftests`` tier runs the kernel's own KVM selftests instead (see
    run_selftests_tier)."""
    if is_selftests(selection):
        return run_selftests_tier(name, selection, spec=spec, echo=echo)
    root = os.getcwd()
    env = dict(os.environ, **(extra_env or {}))
    if strict:
        env["KVMFFI_STRICT"] = "1"
    else:
        env.pop("KVMFFI_STRICT", None)
    if spec.on_host:
        res = TierResult(name, f"this host, {os.uname().release}", release=os.uname().release)
        with tempfile.TemporaryDirectory(prefix="kvmffi-run-") as tmp:
            ktap = os.path.join(tmp, "result.ktap")
            cmd = [sys.executable, *pytest_args(selection, keyword, fmt, ktap, junit)]
            p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, errors="replace")
            assert p.stdout is not None
            for line in p.stdout:
                echo(line.rstrip("\n"))
            res.pytest_rc = p.wait()
            if os.path.exists(ktap):
                parse_ktap(Path(ktap).read_text(), res)
        return res

    from .testkernel import BootError
    res = TierResult(name, f"test kernel {spec.kernel}")
    try:
        prepare_test_kernel(selection, root, env)
    except Exception as e:
        res.infra_error = f"building the guest programs failed: {e}"
        return res
    with tempfile.TemporaryDirectory(prefix="kvmffi-run-") as tmp:
        results = Path(tmp)
        # under emulation every imported plugin costs seconds: load only kvmffi's
        cmd = [sys.executable, *pytest_args(selection, keyword, fmt, "{out}/result.ktap",
                                            "{out}/junit.xml" if junit else None, lean=True)]
        benv = {"KVMFFI_STRICT": "1" if strict else "0", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(extra_env or {})}
        try:
            r = spec.boot(cmd, timeout=timeout, cwd=str(root), echo=echo, env=benv, results_dir=results)
            res.pytest_rc, res.release = r.returncode, r.release
            machine = spec.describe()
            res.where += (f" ({r.accel}{f', {machine}' if machine else ''}, boot {r.boot_seconds:.1f} s, "
                          f"total {r.seconds:.0f} s)")
        except BootError as e:
            res.infra_error = str(e)
        if (results / "result.ktap").exists():
            parse_ktap((results / "result.ktap").read_text(), res)
        if junit and (results / "junit.xml").exists():
            Path(junit).write_bytes((results / "junit.xml").read_bytes())
    return res


def is_selftests(selection: list[str]) -> bool:
    from .suites import SELFTESTS_TIER
    return bool(selection) and all(s == SELFTESTS_TIER or s.startswith(SELFTESTS_TIER + "/") for s in selection)


def run_selftests_tier(name: str, selection: list[str], *, spec: BootSpec, echo: Callable[[str], None] = print,
                       timeout: float = 120.0) -> TierResult:
    """The kernel's own KVM selftests as a tier: built from the source ``kernel`` (a cached image) was
    built from, run inside it, one outcome per selftest (a timeout is a failure), KTAP lines echoed."""
    from .selftests import GUEST_MEMFD_SELFTESTS, build_selftests, ktap_lines, run_selftests
    from .testkernel import BootError
    from .testkernel.build import image_tree
    res = TierResult(name, f"test kernel {spec.kernel}")
    if spec.on_host:
        res.infra_error = "the selftests tier runs in a test kernel: give --kernel VERSION or --tree DIR"
        return res
    tree = image_tree(str(spec.image()))
    if tree is None:
        res.infra_error = (f"no source tree is recorded for {spec.kernel}: build it with `kvmffi kernel build` "
                           "(--version or --source) so its selftests can be built")
        return res
    names = [s.split("/", 1)[1] for s in selection if "/" in s] or list(GUEST_MEMFD_SELFTESTS)
    try:
        binaries = build_selftests(tree, names)
        results = run_selftests(spec, binaries, timeout=timeout)
    except (BootError, RuntimeError) as e:
        res.infra_error = str(e)
        return res
    lines = ktap_lines(results, prefix="selftests/")
    for line in lines:
        echo(line)
    parse_ktap("\n".join(lines), res)
    t = res.totals
    res.pytest_rc = 1 if t["fail"] else 0
    return res


@dataclass
class Tier:
    name: str                 # "host tier", "private tier", "selection", ...
    selection: list[str]      # tier names and/or pytest paths
    spec: BootSpec            # where: this host, or a test kernel (its image resolved) and machine


def plan_tiers(selection: list[str], spec: BootSpec = HOST_SPEC, *, tree: str | None = None,
               soak: float | None = None, quiet: bool = False) -> tuple[list[Tier], list[str]]:
    """Which tiers to run and where, and notes on tiers left out: a selection runs as given (on this
    host, or in the test kernel of ``spec`` / one built from ``tree``); with none, every tier this host
    can run, the private tier in the default test kernel where this host has no private memory.
    Raises KernelBuildError or SourceError when a kernel cannot be built."""
    from .caps import snapshot
    from .suites import TIERS
    if tree:
        from .testkernel import build_kernel
        spec = spec.with_kernel(str(build_kernel(Path(tree), quiet=quiet)))
    spec = spec.resolved(quiet)
    if soak:
        return [Tier("soak", selection or ["private/test_soak.py"], spec)], []
    if selection:
        spec.require_test_kernel()
        from .suites import SELFTESTS_TIER
        named = all(s.split("/")[0] in TIERS or s.split("/")[0] == SELFTESTS_TIER for s in selection)
        return [Tier(f"{selection[0]} tier" if named and len(selection) == 1 else "selection", selection, spec)], []
    if not spec.on_host:
        return [Tier("host tier", ["host"], spec), Tier("private tier", ["private"], spec)], []
    h = snapshot()
    tiers: list[Tier] = []
    notes = []
    if blocker := h.host_tier_blocker():
        notes.append(f"host tier not run: {blocker}")
    else:
        tiers.append(Tier("host tier", ["host"], spec))
    if not (blocker := h.private_tier_blocker()):
        tiers.append(Tier("private tier", ["private"], spec))
    else:
        import shutil
        if shutil.which("qemu-system-x86_64"):
            try:
                tiers.append(Tier("private tier", ["private"], spec.with_kernel(DEFAULT_VERSION).resolved(quiet)))
                notes.append(f"private tier runs in the test kernel: {blocker}")
            except Exception as e:
                notes.append(f"private tier not run: the test kernel could not be built: {e}")
        else:
            notes.append(f"private tier not run: {blocker}, and no qemu-system-x86_64 "
                         "(apt-get install qemu-system-x86) to boot the test kernel")
    return tiers, notes


def run_tiers(tiers: list[Tier], *, keyword: str | None = None, fmt: str = "pretty", junit_xml: str | None = None,
              strict: bool = False, soak: float | None = None, timeout: float = 1800.0,
              echo: Callable[[str], None] | None = None) -> list[TierResult]:
    """Run each tier in turn; with KTAP and several tiers, one KTAP subtest per tier on stdout.
    ``echo`` takes every output line instead (then nothing is printed)."""
    def note(line: str) -> None:
        if echo is None:
            print(line, file=sys.stderr, flush=True)
        else:
            echo(line)
    results = []
    nested = echo is None and fmt == "ktap" and len(tiers) > 1
    if nested:
        print("\n".join(ktap.plan(len(tiers))))
    for i, t in enumerate(tiers, 1):
        junit = junit_xml
        if junit and len(tiers) > 1:
            base, dot, ext = junit.rpartition(".")
            junit = f"{base}-{t.name.split()[0]}.{ext}" if dot else f"{junit}-{t.name.split()[0]}"
        note(f"kvmffi: {t.name}: {' '.join(t.selection)}" + (f" -k {keyword!r}" if keyword else "")
             + (" on this host" if t.spec.on_host else f" in test kernel {t.spec.kernel}"))
        r = run_tier(t.name, t.selection, spec=t.spec, keyword=keyword, fmt=fmt, junit=junit, strict=strict,
                     echo=echo or echo_for(nested, fmt),
                     extra_env={"KVMFFI_SOAK": str(soak)} if soak else None,
                     timeout=max(timeout, (soak or 0) + 900))
        results.append(r)
        if nested:
            print(ktap.result(i, t.name.replace(" ", "_"), r.ksft != KSFT_FAIL,
                              "SKIP nothing ran" if r.ksft == KSFT_SKIP else ""), flush=True)
    for r in results:
        note(f"kvmffi: {r.summary()}")
    return results


def echo_for(nested: bool, fmt: str) -> Callable[[str], None]:
    """How a tier's output lines are shown: indented under a parent KTAP plan, KTAP on stdout with
    pytest's other lines on stderr, or as they come."""
    def indented(line: str) -> None:
        print("    " + line if line else "", flush=True)

    def split(line: str) -> None:
        print(line, file=sys.stdout if is_ktap(line) else sys.stderr, flush=True)

    def plain(line: str) -> None:
        print(line, flush=True)

    return indented if nested else split if fmt == "ktap" else plain


def bisect_verdict(r: TierResult | None) -> tuple[int, str]:
    """(exit code, why) for `git bisect run`: 0 good, 1 bad, 125 cannot test."""
    if r is None:
        return BISECT_SKIP, "nothing could run"
    if r.infra_error:
        return BISECT_SKIP, f"infrastructure: {r.infra_error.splitlines()[0]}"
    if not r.totals or sum(r.totals.values()) == 0:
        return BISECT_SKIP, "no test was selected" if r.totals else f"no results (pytest exit {r.pytest_rc})"
    if r.ksft == KSFT_FAIL:
        return BISECT_BAD, f"{r.totals['fail'] + r.totals['error']} failed: " + ", ".join(r.fail_names[:3])
    if r.ksft == KSFT_PASS:
        return BISECT_GOOD, f"{r.totals['pass']} passed"
    reason = r.skip_reasons[0] if r.skip_reasons else "every selected test skipped"
    return BISECT_SKIP, f"all {r.totals['skip'] + r.totals['xfail']} selected tests skipped: {reason}"
