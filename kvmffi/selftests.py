"""The kernel's own KVM selftests (tools/testing/selftests/kvm), built from a kernel tree and run
inside a test kernel built from the same tree, one result per test.

Built against the tree's exported uAPI headers (``make headers_install``) into the cache, keyed by
the tree's identity and the compiler; only the named tests. Each binary runs with a timeout (a
livelocked kernel hangs pre_fault_memory_test: it is killed and reported as a timeout with the last
lines of its output), and the kernel log is read around each one: a splat logged while it ran fails
it, as kvmffi's gate fails a test. Exit codes follow kselftest: 0 pass, 4 skip, anything else a
failure (254: an assertion, shown with its ``==== Test Assertion Failure ====`` block).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .testkernel.spec import BootSpec

# the selftests that exercise guest_memfd, memslots and private memory (x86 paths as in 6.12 and 7.x)
GUEST_MEMFD_SELFTESTS = ("guest_memfd_test", "set_memory_region_test", "pre_fault_memory_test", "vm_types_test",
                         "x86/private_mem_conversions_test", "x86/private_mem_kvm_exits_test")
DEFAULT_TIMEOUT = 120.0
# the kvmffi test files that assert what each selftest asserts (the same area of the uAPI): the matrix
# lists the configurations where the two sides disagree
COUNTERPARTS: dict[str, tuple[str, ...]] = {
    "guest_memfd_test": ("host/test_guest_memfd_create.py", "host/test_guest_memfd_fallocate.py",
                         "host/test_guest_memfd_mmap.py", "private/test_private_guest_memfd.py"),
    "set_memory_region_test": ("host/test_memslots.py",),
    "pre_fault_memory_test": ("private/test_pre_fault.py",),
    "vm_types_test": ("host/test_caps.py", "host/test_guest_memfd_create.py"),
    "private_mem_conversions_test": ("private/test_conversions.py", "private/test_attributes.py"),
    "private_mem_kvm_exits_test": ("private/test_kvm_exits.py",),
}


def disagreements(outcomes: dict[str, str]) -> list[str]:
    """Where a selftest and its kvmffi counterparts disagree in one configuration's outcomes
    ({"selftests/NAME": ..., "host/test_x.py::test_y[...]": ...}): one fails while the other passes."""
    out = []
    for key, o in sorted(outcomes.items()):
        if not key.startswith("selftests/"):
            continue
        name = key.rsplit("/", 1)[1]
        files = COUNTERPARTS.get(name, ())
        ours = [v for k, v in outcomes.items() if k.split("::")[0] in files]
        if not ours or o not in ("passed", "failed"):
            continue
        failed = [k for k, v in outcomes.items() if k.split("::")[0] in files and v == "failed"]
        if o == "failed" and not failed:
            out.append(f"{name} fails, kvmffi's {', '.join(files)} pass")
        elif o == "passed" and failed:
            out.append(f"{name} passes, kvmffi fails {len(failed)}: " + ", ".join(failed[:3])
                       + (" ..." if len(failed) > 3 else ""))
    return out
MARK = "KVMFFI-SELFTEST "


class SelftestBuildError(RuntimeError):
    """The selftests could not be built; the message names the step and shows make's output."""


@dataclass
class SelftestResult:
    name: str
    outcome: str                    # pass, fail, skip, timeout
    returncode: int | None
    seconds: float
    detail: str = ""                # skip reason, assertion block, or the last lines of the output
    splats: list[str] = field(default_factory=list)
    subtests: list[str] = field(default_factory=list)   # the binary's own TAP lines (kselftest_harness)


def _kvm_dir(tree: Path) -> Path:
    return tree / "tools" / "testing" / "selftests" / "kvm"


def available(tree: Path, names: tuple[str, ...] | list[str]) -> list[str]:
    """The named tests that exist in ``tree`` (a name without x86/ is looked for there too, for 6.x)."""
    kvm = _kvm_dir(tree)
    out = []
    for n in names:
        for cand in (n, f"x86/{n}", f"x86_64/{n.removeprefix('x86/')}", n.removeprefix("x86/")):
            if (kvm / f"{cand}.c").exists():
                out.append(cand)
                break
    return out


def _identity(tree: Path) -> str:
    from .testkernel.build import _source_identity
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return hashlib.sha256((_source_identity(tree) + "".join(cc)).encode()).hexdigest()[:16]


def build_selftests(tree: Path, names: list[str], progress: Callable[[str], None] = lambda s: None) -> dict[str, Path]:
    """Build the named selftests of ``tree``; {name: binary}. Raises SelftestBuildError."""
    from .cache import cache_dir
    tree = tree.resolve()
    kvm = _kvm_dir(tree)
    if not kvm.is_dir():
        raise SelftestBuildError(f"{tree} has no tools/testing/selftests/kvm: give a kernel source tree")
    names = available(tree, names)
    out = cache_dir() / "selftests" / _identity(tree)
    hdr = out / "headers"
    if not (hdr / "include" / "linux" / "kvm.h").exists():
        progress(f"exporting the uAPI headers of {tree}")
        r = subprocess.run(["make", f"O={out / 'hdr-build'}", "headers_install", f"INSTALL_HDR_PATH={hdr}"], cwd=tree,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SelftestBuildError(f"make headers_install failed in {tree}:\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    want = {n: out / n for n in names}
    missing = [n for n, p in want.items() if not p.exists()]
    if missing:
        progress(f"building {len(missing)} selftest(s): {' '.join(missing)}")
        r = subprocess.run(["make", "-C", str(kvm), f"-j{os.cpu_count() or 1}", f"OUTPUT={out}",
                            f"KHDR_INCLUDES=-isystem {hdr / 'include'}", *[str(want[n]) for n in missing]],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SelftestBuildError(f"building the selftests failed (exit {r.returncode}; needs uuid-dev):\n"
                                     f"{r.stdout[-1500:]}{r.stderr[-2500:]}")
    return {n: p for n, p in want.items() if p.exists()}


def classify(name: str, rc: int | None, output: list[str], seconds: float, timeout: float) -> SelftestResult:
    """One result from a binary's exit status and output (rc None: killed at the timeout)."""
    subtests = [line for line in output if line.startswith(("ok ", "not ok "))]
    tail = "\n".join(output[-15:])
    if rc is None:
        return SelftestResult(name, "timeout", None, seconds, f"killed after {timeout:.0f} s; last output:\n{tail}",
                              subtests=subtests)
    if rc == 0:
        return SelftestResult(name, "pass", 0, seconds, subtests=subtests)
    if rc == 4:
        reason = next((line for line in reversed(output) if "skip" in line.lower()), tail.splitlines()[-1:] or [""])
        return SelftestResult(name, "skip", 4, seconds, reason if isinstance(reason, str) else reason[0],
                              subtests=subtests)
    if "==== Test Assertion Failure ====" in output:
        i = output.index("==== Test Assertion Failure ====")
        block = "\n".join(output[i:i + 12])
        return SelftestResult(name, "fail", rc, seconds, f"assertion failure (exit {rc}):\n{block}", subtests=subtests)
    return SelftestResult(name, "fail", rc, seconds, f"exit {rc}; last output:\n{tail}", subtests=subtests)


def ktap_lines(results: list[SelftestResult], prefix: str = "") -> list[str]:
    """A KTAP report of the results: a binary's own TAP lines nested under its result line, its
    detail as diagnostics when it failed or timed out; ``prefix`` goes before each name."""
    from . import ktap
    lines = ktap.plan(len(results))
    for i, r in enumerate(results, 1):
        lines += [f"    {line}" for line in r.subtests]
        reason = r.detail.splitlines()[0] if r.detail else "skipped"
        lines.append(ktap.result(i, prefix + r.name, r.outcome in ("pass", "skip"),
                                 f"SKIP {reason}" if r.outcome == "skip" else ""))
        if r.outcome in ("fail", "timeout"):
            lines += ktap.diagnostics(f"{r.outcome}: {r.detail}")
    count = {k: sum(1 for r in results if r.outcome == k) for k in ("pass", "fail", "skip", "timeout")}
    lines.append(ktap.totals_line({"pass": count["pass"], "fail": count["fail"] + count["timeout"],
                                   "skip": count["skip"]}))
    return lines


def junit_xml(results: list[SelftestResult], suite: str = "kvm selftests") -> str:
    """JUnit XML for the results: a testcase per selftest, failure (timeouts too) or skipped with its text."""
    import xml.etree.ElementTree as ET
    fails = sum(r.outcome in ("fail", "timeout") for r in results)
    ts = ET.Element("testsuite", name=suite, tests=str(len(results)), failures=str(fails),
                    skipped=str(sum(r.outcome == "skip" for r in results)),
                    time=f"{sum(r.seconds for r in results):.3f}")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname="selftests", name=r.name, time=f"{r.seconds:.3f}")
        if r.outcome in ("fail", "timeout"):
            ET.SubElement(tc, "failure", message=r.outcome).text = r.detail
        elif r.outcome == "skip":
            ET.SubElement(tc, "skipped", message=r.detail.splitlines()[0] if r.detail else "skipped")
    return ET.tostring(ts, encoding="unicode")


def _run_one(name: str, path: str, timeout: float) -> SelftestResult:
    print(f"# selftest {name} ...", flush=True)
    t0 = time.monotonic()
    p = subprocess.Popen([path], cwd=os.path.dirname(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, _ = p.communicate()
        rc = None
    return classify(name, rc, out.decode(errors="replace").splitlines(), time.monotonic() - t0, timeout)


def run_inside(binaries: dict[str, str], timeout: float, jobs: int = 1) -> list[SelftestResult]:
    """In the test kernel: run each binary from its own directory, with the kernel-log gate around it
    (with ``jobs`` > 1 several at once: a splat is then charged to each binary that was running)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from .kmsg import KernelLog, find_splats
    log = KernelLog.open()
    lock = threading.Lock()
    running: set[str] = set()
    charged: dict[str, list[str]] = {n: [] for n in binaries}

    def collect() -> None:
        if log is None:
            return
        splats = [f"{s.kind}: {s.headline[:160]}" for s in find_splats(log.read())]
        for n in running:
            charged[n] += splats

    def one(item: tuple[str, str]) -> SelftestResult:
        name, path = item
        with lock:
            collect()
            running.add(name)
        r = _run_one(name, path, timeout)
        with lock:
            collect()
            running.discard(name)
            r.splats = charged[name]
            if r.splats and r.outcome == "pass":
                r.outcome, r.detail = "fail", "the kernel logged: " + "; ".join(r.splats)
            print(MARK + json.dumps(asdict(r)), flush=True)
        return r

    if log is not None:
        log.mark()
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as ex:
        return list(ex.map(one, binaries.items()))


def run_selftests(spec: BootSpec, binaries: dict[str, Path], *, timeout: float = DEFAULT_TIMEOUT,
                  echo: Callable[[str], None] | None = None, jobs: int = 1) -> list[SelftestResult]:
    """Boot the test kernel and machine ``spec`` names once and run ``binaries`` inside (``jobs`` at
    once); one result per test. Raises BootError."""
    request = json.dumps({"binaries": {n: str(p) for n, p in binaries.items()}, "timeout": timeout, "jobs": jobs})
    r = spec.boot([sys.executable, "-m", "kvmffi.selftests", request], timeout=timeout * len(binaries) + 300,
                  echo=echo)
    out = []
    for line in r.output:
        if line.startswith(MARK):
            out.append(SelftestResult(**json.loads(line[len(MARK):])))
    return out


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    run_inside(args["binaries"], float(args["timeout"]), int(args.get("jobs", 1)))
