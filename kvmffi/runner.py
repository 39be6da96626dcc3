"""Run the suites on this host or inside a test kernel, and turn the results into exit codes.

kselftest exit codes for `kvmffi run`: 0 pass, 1 fail, 4 skip (nothing passed, nothing failed).
`git bisect run` codes for `kvmffi bisect`: 0 good, 1 bad, 125 cannot test; never 128-255.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4
BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125

TOTALS = re.compile(r"# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)")


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

    @property
    def ksft(self) -> int:
        t = self.totals
        if self.infra_error or not t:
            return KSFT_FAIL
        if t["fail"] or t["error"]:
            return KSFT_FAIL
        if t["pass"]:
            return KSFT_PASS
        return KSFT_SKIP

    def summary(self) -> str:
        if self.infra_error:
            return f"{self.name} ({self.where}): could not run: {self.infra_error}"
        t = self.totals
        if not t:
            return f"{self.name} ({self.where}): no results (pytest exit {self.pytest_rc})"
        return (f"{self.name} ({self.where}): pass {t['pass']}, fail {t['fail']}, error {t['error']}, "
                f"skip {t['skip']}")


def parse_ktap(text: str, res: TierResult) -> None:
    for line in text.splitlines():
        m = TOTALS.search(line)
        if m:
            keys = ("pass", "fail", "xfail", "xpass", "skip", "error")
            res.totals = dict(zip(keys, map(int, m.groups()), strict=True))
        elif line.startswith("ok ") and " # SKIP " in line:
            res.skip_reasons.append(line.split(" # SKIP ", 1)[1])
            res.outcomes[line.split(" ", 2)[2].split(" # SKIP ", 1)[0]] = "skipped"
        elif line.startswith("ok ") and " # XFAIL " in line:
            res.outcomes[line.split(" ", 2)[2].split(" # XFAIL ", 1)[0]] = "xfailed"
        elif line.startswith("ok "):
            res.outcomes[line.split(" ", 2)[2]] = "passed"
        elif line.startswith("not ok "):
            res.fail_names.append(line.split(" ", 3)[-1])
            res.outcomes[line.split(" ", 3)[-1]] = "failed"


def pytest_args(selection: list[str], keyword: str | None, fmt: str, ktap_file: str, junit: str | None) -> list[str]:
    """pytest's arguments for a selection of tier names (host, private, host/test_vm.py) and paths."""
    from .suites import SUITES_DIR, resolve
    paths = resolve(selection)
    args = ["-m", "pytest", "-p", "no:cacheprovider", "-p", "pytester", f"--ktap-file={ktap_file}"]
    if paths and all(Path(p.split("::")[0]).resolve().is_relative_to(SUITES_DIR) for p in paths):
        args.append(f"--rootdir={SUITES_DIR}")  # node ids read "host/test_vm.py::..." wherever kvmffi is installed
    if fmt == "ktap":
        args.append("--ktap")
    elif fmt == "junit":
        args.append("-q")
    if junit:
        args.append(f"--junitxml={junit}")
    if keyword:
        args += ["-k", keyword]
    return args + paths


def prepare_bytecode(selection: list[str], cwd: str, env: dict[str, str]) -> None:
    """Compile on the host what Python and pytest would compile in the test kernel, whose root is
    read-only (nothing written there is kept): kvmffi's modules, and pytest's assertion-rewritten
    test modules (a collection here writes them; the test kernel's pytest reads them)."""
    import compileall

    from . import _ffi, _libc  # noqa: F401  (their cffi declarations land in the cache, then compiled)
    from .cache import cache_dir
    for d in (Path(__file__).resolve().parent, cache_dir() / "cffi"):
        compileall.compile_dir(str(d), quiet=1)
    cmd = [sys.executable, *pytest_args(selection, None, "pretty", os.devnull, None), "--collect-only", "-q"]
    cmd[3:3] = ["-p", "kvmffi.pytest_plugin"]
    subprocess.run(cmd, cwd=cwd, env=dict(env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", KVMFFI_LOG_GATE="off"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def run_tier(name: str, selection: list[str], *, keyword: str | None = None, fmt: str = "pretty",
             junit: str | None = None, strict: bool = False, kernel: str | None = None,
             echo: Callable[[str], None] = print, timeout: float = 1800.0, cpus: int = 2,
             numa: int = 0, extra_env: dict[str, str] | None = None, kernel_args: str = "") -> TierResult:
    """Run pytest over ``selection`` (tier names or paths) here (kernel None) or inside ``kernel`` under QEMU,
    from the current directory (the test kernel sees the host's files)."""
    root = os.getcwd()
    env = dict(os.environ, **(extra_env or {}))
    if strict:
        env["KVMFFI_STRICT"] = "1"
    else:
        env.pop("KVMFFI_STRICT", None)
    if kernel is None:
        res = TierResult(name, f"this host, {os.uname().release}")
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

    from .guest.build import build_all
    from .testkernel import BootError, boot
    res = TierResult(name, f"test kernel {kernel}")
    try:
        build_all()
    except Exception as e:
        res.infra_error = f"building the guest programs failed: {e}"
        return res
    prepare_bytecode(selection, root, env)
    with tempfile.TemporaryDirectory(prefix="kvmffi-run-") as tmp:
        results = Path(tmp)
        # under emulation every imported plugin costs seconds: load only kvmffi's
        cmd = [sys.executable, *pytest_args(selection, keyword, fmt, "{out}/result.ktap",
                                            "{out}/junit.xml" if junit else None)]
        cmd[3:3] = ["-p", "kvmffi.pytest_plugin"]
        benv = {"KVMFFI_STRICT": "1" if strict else "0", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(extra_env or {})}
        try:
            r = boot(kernel, cmd, cpus=cpus, timeout=timeout, cwd=str(root), echo=echo, env=benv, results_dir=results,
                     numa=numa, extra_append=kernel_args)
            res.pytest_rc = r.returncode
            res.where += (f" ({r.accel}{f', {numa} NUMA nodes' if numa > 1 else ''}, boot {r.boot_seconds:.1f} s, "
                          f"total {r.seconds:.0f} s)")
        except BootError as e:
            res.infra_error = str(e)
        if (results / "result.ktap").exists():
            parse_ktap((results / "result.ktap").read_text(), res)
        if junit and (results / "junit.xml").exists():
            Path(junit).write_bytes((results / "junit.xml").read_bytes())
    return res


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
