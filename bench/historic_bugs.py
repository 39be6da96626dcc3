#!/usr/bin/env python3
"""Does kvmffi catch the bugs kernels really had? The historic-bug catalogue (bench/historic/) run
through `kvmffi fixcheck`, with the kernel's own KVM selftests from the same source beside it.

    python bench/historic_bugs.py [--json] [--only ID,...] [--no-selftests] [--version 7.3]

For each reachable bug: a git copy of Debian's linux-source-VERSION is built without and with the
bug's patch (one build directory: the second build is incremental), kvmffi's full tiers run
strictly in both (fixcheck's verdict: catches, not caught, fails without the bug, cannot tell), and
the guest_memfd-related selftests, built once from the same tree, run in both kernels in the same
configuration (debug fragment, kernel arguments) with a 120 s timeout each. A column is "caught"
when something fails with the bug that passed without it.

Exit 0 when kvmffi catches every reachable bug, 1 otherwise. Progress on stderr; the table (or JSON)
on stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvmffi.fixcheck import CATCHES, Machine, fixcheck  # noqa: E402
from kvmffi.selftests import GUEST_MEMFD_SELFTESTS, SelftestResult, build_selftests, run_selftests  # noqa: E402
from kvmffi.testkernel.spec import BootSpec  # noqa: E402
from kvmffi.testkernel.tree import Change, git_copy  # noqa: E402

CATALOGUE = HERE / "historic" / "catalogue.toml"


@dataclass
class Bug:
    id: str
    fix: str
    subject: str
    patch: Path
    lived: str = ""
    cve: str = ""
    where: str = ""
    shows: str = ""
    debug: bool = False
    kernel_args: str = ""
    expect: list[str] = field(default_factory=list)
    reachable: bool = True
    why: str = ""
    selection: list[str] = field(default_factory=list)   # default: every tier
    selection_why: str = ""


def load(path: Path = CATALOGUE) -> list[Bug]:
    data = tomllib.loads(path.read_text())
    out = []
    for b in data["bug"]:
        b = dict(b)
        b["patch"] = path.parent / b["patch"]
        out.append(Bug(**b))
    return out


def result_key(bug: Bug, version: str, fuzz: int) -> str:
    """What makes a bug's saved row valid: its entry and patch, the kernel source, the fuzz length and
    kvmffi's own sources (a row from other code is run again)."""
    import hashlib
    from dataclasses import asdict

    from kvmffi.fixcheck import _suite_hash
    spec = json.dumps([{k: str(v) for k, v in asdict(bug).items()}, bug.patch.read_text(), version, fuzz,
                       _suite_hash()], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def say(msg: str) -> None:
    print(f"historic_bugs: {msg}", file=sys.stderr, flush=True)


def selftest_failures(results: list[SelftestResult]) -> set[str]:
    return {r.name for r in results if r.outcome in ("fail", "timeout")}


def fuzz_findings(image: str, examples: int, kernel_args: str, log: Path) -> tuple[list[str], int]:
    """A bounded `kvmffi fuzz` run (seed 7) inside ``image``: (the kinds of its findings, exit code)."""
    import re
    import subprocess
    cmd = [sys.executable, "-m", "kvmffi", "fuzz", "--kernel", image, "--examples", str(examples), "--seed", "7",
           "-q"]
    if kernel_args:
        cmd += ["--kernel-args", kernel_args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    log.write_text(r.stdout + r.stderr)
    return re.findall(r"^kvmffi fuzz: FINDING \d+ \((.*)\)$", r.stdout, re.M), r.returncode


def run_bug(bug: Bug, version: str, selftests: dict[str, Path] | None, baseline_selftests: dict[tuple[bool, str], set[str]],
            logs: Path, fuzz_examples: int = 0, baseline_fuzz: dict[tuple[bool, str], set[str]] | None = None
            ) -> dict[str, object]:
    m = Machine(BootSpec(kernel_args=bug.kernel_args), debug=bug.debug)
    t0 = time.monotonic()
    res = fixcheck(Change(patch=bug.patch), list(bug.selection), version=version, machine=m, log_dir=logs / bug.id)
    entry: dict[str, object] = {
        "id": bug.id, "fix": bug.fix, "subject": bug.subject, "reachable": True,
        "config": m.describe(), "verdict": res.verdict, "why": res.why,
        "selection": bug.selection or ["every tier"], "selection_why": bug.selection_why,
        "kvmffi": {"caught": res.verdict == CATCHES, "tests": res.caught_by, "expected": bug.expect},
        "build_s": round(res.without_bug.build_s + res.with_bug.build_s, 1),
        "run_s": round(res.without_bug.run_s + res.with_bug.run_s, 1),
    }
    st: dict[str, object] = {"caught": False, "tests": [], "ran": False}
    if selftests and res.with_bug.image and res.without_bug.image:
        key = (bug.debug, bug.kernel_args)
        try:
            if key not in baseline_selftests:
                say(f"{bug.id}: selftests without the bug ({m.describe()})")
                base = run_selftests(BootSpec(res.without_bug.image, kernel_args=bug.kernel_args), selftests)
                baseline_selftests[key] = selftest_failures(base)
            say(f"{bug.id}: selftests with the bug")
            t1 = time.monotonic()
            got = run_selftests(BootSpec(res.with_bug.image, kernel_args=bug.kernel_args), selftests)
            entry["run_s"] = round(float(entry["run_s"]) + time.monotonic() - t1, 1)  # type: ignore[arg-type]
            caught = sorted(selftest_failures(got) - baseline_selftests[key])
            st = {"caught": bool(caught), "tests": caught, "ran": True,
                  "results": {r.name: r.outcome for r in got},
                  "failing_without_bug": sorted(baseline_selftests[key])}
        except Exception as e:  # a selftests problem never hides kvmffi's column
            st = {"caught": False, "tests": [], "ran": False, "error": f"{type(e).__name__}: {e}"}
    entry["selftests"] = st
    if fuzz_examples and res.with_bug.image and res.without_bug.image and baseline_fuzz is not None:
        key = (bug.debug, bug.kernel_args)
        if key not in baseline_fuzz:
            say(f"{bug.id}: fuzz without the bug ({fuzz_examples} sequences)")
            baseline_fuzz[key] = set(fuzz_findings(res.without_bug.image, fuzz_examples, bug.kernel_args,
                                                   logs / bug.id / "fuzz-without-bug.log")[0])
        say(f"{bug.id}: fuzz with the bug ({fuzz_examples} sequences)")
        kinds, _ = fuzz_findings(res.with_bug.image, fuzz_examples, bug.kernel_args, logs / bug.id / "fuzz-with-bug.log")
        new = [k for k in kinds if k not in baseline_fuzz[key]]
        entry["fuzz"] = {"caught": bool(new), "findings": new, "examples": fuzz_examples}
    entry["total_s"] = round(time.monotonic() - t0, 1)
    return entry


def table(bugs: list[dict[str, object]]) -> str:
    fuzz = any("fuzz" in b for b in bugs)
    rows = [("bug", "config", "kvmffi", "selftests", *(("fuzz",) if fuzz else ()), "build s", "run s")]
    for b in bugs:
        if not b["reachable"]:
            rows.append((str(b["id"]), "-", "unreachable", "unreachable", *(("-",) if fuzz else ()), "-", "-"))
            continue
        k, s = b["kvmffi"], b["selftests"]
        assert isinstance(k, dict) and isinstance(s, dict)
        kv = ("caught: " + ", ".join(t.split("::")[-1] for t in k["tests"])) if k["caught"] else str(b["verdict"])
        sv = ("caught: " + ", ".join(s["tests"])) if s["caught"] else ("missed" if s.get("ran") else "not run")
        fz = b.get("fuzz")
        fv = (("caught: " + ", ".join(fz["findings"])) if fz["caught"] else "missed") if isinstance(fz, dict) else "-"
        rows.append((str(b["id"]), str(b["config"]), kv, sv, *((fv,) if fuzz else ()), str(b["build_s"]),
                     str(b["run_s"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)  # unwinds: the kernel tree is restored, QEMU ended


def main() -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", help="comma-separated bug ids")
    ap.add_argument("--version", default="7.3", help="Debian kernel source the patches are for (default 7.3)")
    ap.add_argument("--no-selftests", action="store_true", help="leave the selftests column out")
    ap.add_argument("--logs", default="/tmp/kvmffi-historic-bugs", help="fixcheck logs per bug")
    ap.add_argument("--rerun", action="store_true", help="run bugs again even where a row for the same code is kept")
    ap.add_argument("--fuzz", type=int, default=0, metavar="N",
                    help="also a fuzz column: `kvmffi fuzz --examples N --seed 7` in both kernels of each bug")
    a = ap.parse_args()
    bugs = load()
    if a.only:
        wanted = a.only.split(",")
        unknown = [w for w in wanted if w not in {b.id for b in bugs}]
        if unknown:
            print(f"historic_bugs: unknown bug id(s) {', '.join(unknown)}; known: {', '.join(b.id for b in bugs)}",
                  file=sys.stderr)
            return 2
        bugs = [b for b in bugs if b.id in wanted]
    logs = Path(a.logs)
    selftests = None
    if not a.no_selftests:
        try:
            tree = git_copy(a.version)
            selftests = build_selftests(tree, list(GUEST_MEMFD_SELFTESTS), progress=say)
        except Exception as e:
            say(f"selftests column left out: {e}")
    base: dict[tuple[bool, str], set[str]] = {}
    base_fuzz: dict[tuple[bool, str], set[str]] = {}
    out: list[dict[str, object]] = []
    for i, bug in enumerate(bugs, 1):
        if not bug.reachable:
            say(f"[{i}/{len(bugs)}] {bug.id}: not reachable: {bug.why}")
            out.append({"id": bug.id, "fix": bug.fix, "subject": bug.subject, "reachable": False, "why": bug.why,
                        "kvmffi": {"caught": False, "tests": []}, "selftests": {"caught": False, "tests": []},
                        "build_s": 0, "run_s": 0})
            continue
        saved = logs / bug.id / f"row-{result_key(bug, a.version, a.fuzz)}.json"
        if saved.exists() and not a.rerun:
            entry = json.loads(saved.read_text())
            say(f"[{i}/{len(bugs)}] {bug.id}: kept from an earlier run of the same code ({saved})")
            out.append(entry)
            continue
        say(f"[{i}/{len(bugs)}] {bug.id} ({bug.fix}: {bug.subject})")
        entry = run_bug(bug, a.version, selftests, base, logs, a.fuzz, base_fuzz)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(entry))
        say(f"[{i}/{len(bugs)}] {bug.id}: kvmffi {entry['verdict']}; selftests "
            f"{'caught' if entry['selftests']['caught'] else 'missed'} in {entry['total_s']} s")  # type: ignore[index]
        out.append(entry)
    reachable = [b for b in out if b["reachable"]]
    k_caught = sum(1 for b in reachable if b["kvmffi"]["caught"])  # type: ignore[index,misc]
    s_caught = sum(1 for b in reachable if b["selftests"]["caught"])  # type: ignore[index,misc]
    summary = {"bugs": out, "kvmffi_caught": k_caught, "selftests_caught": s_caught, "total": len(out),
               "reachable": len(reachable)}
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(table(out))
        print(f"\nkvmffi caught {k_caught} of {len(reachable)} reachable bugs, the selftests {s_caught} "
              f"({len(out)} in the catalogue)")
    return 0 if k_caught == len(reachable) else 1


if __name__ == "__main__":
    sys.exit(main())
