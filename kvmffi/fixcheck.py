"""Does a test catch a bug? Build a kernel tree with and without the bug, run the same selection in
both, and compare.

The bug is a change to a clean git tree: a patch that introduces it, or the revert of the commit
that fixed it. Both kernels are built in the tree's one build directory (the second build is
incremental, about 35 s for a one-file change), booted under QEMU, and the selection (default:
every tier, as ``kvmffi run --kernel``) runs strictly in each. The verdict:

- ``catches``: passes without the bug and fails with it (exit 0);
- ``not caught``: passes with the bug too (exit 1);
- ``fails without the bug``: the selection fails on the tree as given, so it cannot tell (exit 2);
- ``cannot tell``: a build, boot or run failure, or nothing ran (exit 125).

Runs without the bug are kept in the image's cache directory, keyed by the selection, the machine
and kvmffi's own sources, so checking many bugs against one tree runs the baseline once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import ktap
from .cache import cache_dir
from .ktap import KSFT_FAIL, KSFT_PASS
from .runner import TierResult, plan_tiers, run_tiers
from .testkernel.progress import Progress
from .testkernel.spec import BootSpec
from .testkernel.tree import Change, changed, git_copy, require_clean_git_tree, tree_lock

CATCHES, NOT_CAUGHT, FAILS_WITHOUT, CANNOT_TELL = "catches", "not caught", "fails without the bug", "cannot tell"
EXIT_CODES = {CATCHES: 0, NOT_CAUGHT: 1, FAILS_WITHOUT: 2, CANNOT_TELL: 125}


@dataclass
class Machine:
    """How the kernels are built and booted: the same for both states. ``spec``'s kernel is left
    as host: each state boots the image built from the tree."""
    spec: BootSpec = field(default_factory=BootSpec)
    debug: bool = False
    strict: bool = True
    timeout: float = 1800.0

    def describe(self) -> str:
        return ", ".join(x for x in ("debug kernel" if self.debug else "kernel", self.spec.describe()) if x)


@dataclass
class StateRun:
    """One state of the tree: its image and what the selection did there."""
    image: str = ""
    build_s: float = 0.0
    run_s: float = 0.0
    cached: bool = False
    tiers: list[TierResult] = field(default_factory=list)
    error: str = ""

    @property
    def failed(self) -> list[str]:
        return [n for t in self.tiers for n, o in t.outcomes.items() if o == "failed"]

    @property
    def infra(self) -> str:
        if self.error:
            return self.error
        for t in self.tiers:
            if t.infra_error:
                return f"{t.name}: {t.infra_error.splitlines()[0]}"
            if not t.totals:
                return f"{t.name}: no results (pytest exit {t.pytest_rc})"
        return "" if self.tiers else "nothing ran"

    @property
    def ksft(self) -> int:
        return ktap.combine(t.ksft for t in self.tiers)


@dataclass
class FixcheckResult:
    tree: str
    change: str
    selection: list[str]
    machine: Machine
    without_bug: StateRun
    with_bug: StateRun
    verdict: str = CANNOT_TELL
    why: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    @property
    def caught_by(self) -> list[str]:
        """Tests that fail with the bug and did not fail without it."""
        before = set(self.without_bug.failed)
        return [n for n in self.with_bug.failed if n not in before]

    def to_json(self) -> dict[str, object]:
        return {"verdict": self.verdict, "exit": self.exit_code, "why": self.why, "tree": self.tree,
                "change": self.change, "selection": self.selection, "machine": asdict(self.machine),
                "caught_by": self.caught_by,
                "without_bug": _state_json(self.without_bug), "with_bug": _state_json(self.with_bug)}


def _state_json(s: StateRun) -> dict[str, object]:
    return {"image": s.image, "build_s": round(s.build_s, 1), "run_s": round(s.run_s, 1), "cached_run": s.cached,
            "failed": s.failed, "error": s.infra,
            "totals": [dict(t.totals, tier=t.name) for t in s.tiers]}


# a kernel that dies or hangs while it runs the selection has answered: with the bug that is a catch
DIED_RUNNING = ("stopped before the command finished", "timed out after", "while running the command")


def judge(without: StateRun, with_bug: StateRun) -> tuple[str, str]:
    """The verdict and why, from the two states' runs."""
    if without.infra:
        return CANNOT_TELL, f"without the bug: {without.infra}"
    if with_bug.infra:
        died = any(d in with_bug.infra for d in DIED_RUNNING[:1]) or all(d in with_bug.infra for d in DIED_RUNNING[1:])
        if died and without.ksft == KSFT_PASS:
            return CATCHES, f"the kernel with the bug died or hung while running the selection: {with_bug.infra}"
        return CANNOT_TELL, f"with the bug: {with_bug.infra}"
    if without.ksft == KSFT_FAIL:
        return FAILS_WITHOUT, ("the selection fails on the tree without the bug: " + ", ".join(without.failed[:5])
                               or "see its log")
    if without.ksft != KSFT_PASS:
        return CANNOT_TELL, "every selected test skipped without the bug"
    if with_bug.ksft == KSFT_FAIL:
        failed = with_bug.failed
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        return CATCHES, (f"{len(failed)} test(s) fail with the bug and pass without it: " + ", ".join(failed[:5]) + more
                         if failed else "a tier fails with the bug (no single test named: see its log)")
    return NOT_CAUGHT, "the selection passes with the bug too"


# modules that decide nothing a tier's run does: the commands around it
NOT_IN_A_RUN = frozenset({"cli", "fixcheck.py", "matrix.py", "selftests.py", "__main__.py"})


def _suite_hash() -> str:
    """kvmffi's own sources that a tier's run uses (suites, harness, bindings, guests, the test
    kernel's configuration): a kept run is valid while they are unchanged."""
    from .guest.build import guests_dir
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    guests = guests_dir().resolve()  # the checkout's guests/, or kvmffi/guests in an installed copy
    files = [(f, str(f.relative_to(root))) for f in root.rglob("*") if not f.is_relative_to(guests)
             and f.relative_to(root).parts[0] not in NOT_IN_A_RUN]
    files += [(f, str(Path("guests", f.relative_to(guests)))) for f in guests.rglob("*")]
    for f, name in sorted(files, key=lambda x: x[1]):
        if f.is_file() and f.suffix in (".py", ".c", ".h", ".S", ".lds", ".config"):
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _run_key(image: Path, selection: list[str], keyword: str | None, m: Machine) -> Path:
    spec = json.dumps([selection, keyword, asdict(m), _suite_hash()], sort_keys=True)
    return image.resolve().parent / "fixcheck-runs" / (hashlib.sha256(spec.encode()).hexdigest()[:16] + ".json")


def _run_state(image: Path, selection: list[str], keyword: str | None, m: Machine, log: Path, progress: Progress,
               use_cache: bool) -> StateRun:
    cache = _run_key(image, selection, keyword, m)
    if use_cache and cache.exists():
        data = json.loads(cache.read_text())
        kept = [TierResult(**t) for t in data["tiers"]]
        return StateRun(str(image), 0.0, data["run_s"], True, kept)
    tiers, notes = plan_tiers(selection, m.spec.with_kernel(str(image)), quiet=True)
    t0 = time.monotonic()
    with open(log, "w") as f:
        for n in notes:
            f.write(f"kvmffi: {n}\n")

        def echo(line: str) -> None:
            f.write(line + "\n")
            f.flush()
            if line.startswith(("FAILED", "ERROR")) or " passed" in line or " failed" in line:
                progress.update(line[:100])

        results = run_tiers(tiers, keyword=keyword, strict=m.strict, timeout=m.timeout, echo=echo)
    s = StateRun(str(image), 0.0, time.monotonic() - t0, False, results)
    if use_cache and not s.infra:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"run_s": s.run_s, "tiers": [asdict(t) for t in results]}))
    return s


def fixcheck(change: Change, selection: list[str], *, tree: Path | None = None, version: str | None = None,
             keyword: str | None = None, machine: Machine | None = None, log_dir: Path | None = None,
             quiet: bool = False, use_cache: bool = True) -> FixcheckResult:
    """Build ``tree`` (or a git copy of Debian's linux-source-``version``) without and with ``change``,
    run ``selection`` in each, and judge. Raises TreeError for a tree or change that cannot be used."""
    from .testkernel import KernelBuildError, build_kernel
    m = machine or Machine()
    progress = Progress("kvmffi fixcheck", quiet=quiet)
    if tree is None:
        assert version is not None
        tree = git_copy(version, progress)
    tree = tree.resolve()
    logs = log_dir or cache_dir() / "fixcheck" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res = FixcheckResult(str(tree), change.describe(), selection or ["every tier"], m, StateRun(), StateRun())
    with tree_lock(tree):
        require_clean_git_tree(tree)  # under the lock: another fixcheck's change in the tree is not "uncommitted"
        change.diff(tree)  # a bad --fix or unreadable --bug fails before any build
        images: dict[str, Path] = {}
        for state, target in (("without the bug", res.without_bug), ("with the bug", res.with_bug)):
            t0 = time.monotonic()
            progress.note(f"building {tree.name} {state} ({m.describe()})")
            try:
                if state == "with the bug":
                    with changed(tree, change):
                        images[state] = build_kernel(tree, debug=m.debug, quiet=quiet)
                else:
                    images[state] = build_kernel(tree, debug=m.debug, quiet=quiet)
            except KernelBuildError as e:
                target.error = f"build failed: {str(e).splitlines()[0]}"
                progress.note(f"{state}: {target.error}")
                res.verdict, res.why = judge(res.without_bug, res.with_bug)
                return res
            finally:
                target.build_s = time.monotonic() - t0
            target.image = str(images[state])
    for state, target in (("without the bug", res.without_bug), ("with the bug", res.with_bug)):
        log = logs / f"fixcheck-{'without' if state.startswith('without') else 'with'}-bug.log"
        progress.note(f"running {' '.join(selection) or 'every tier'} {state} (log: {log})")
        run = _run_state(Path(target.image), selection, keyword, m, log, progress,
                         use_cache=use_cache and state == "without the bug")
        target.run_s, target.cached, target.tiers = run.run_s, run.cached, run.tiers
        progress.note(f"{state}: " + ("; ".join(t.summary() for t in target.tiers) or target.infra)
                      + (" (kept from an earlier run)" if run.cached else f" in {run.run_s:.0f} s"))
    res.verdict, res.why = judge(res.without_bug, res.with_bug)
    return res
