"""KTAP, once: the lines kvmffi writes (plans, results with their SKIP and XFAIL directives,
diagnostics, the totals line), the reader that turns them back into outcomes, the kselftest
exit-code rule, and the pytest reporter that writes one ``ok``/``not ok`` line per test.

The reporter is enabled with ``--ktap`` (to standard output, replacing pytest's own report) or
``--ktap-file FILE``. Format: Documentation/dev-tools/ktap.rst (version 1: nested subtests are
indented by four spaces and precede their parent's result line). Exit codes: kselftest's
(tools/testing/selftests/kselftest.h): 0 pass, 1 fail, 4 skip.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import pytest

KSFT_PASS, KSFT_FAIL, KSFT_SKIP = 0, 1, 4
TOTAL_KEYS = ("pass", "fail", "xfail", "xpass", "skip", "error")
_TOTALS = re.compile(r"# Totals: pass:(\d+) fail:(\d+) xfail:(\d+) xpass:(\d+) skip:(\d+) error:(\d+)")


def ksft_code(totals: Mapping[str, int]) -> int:
    """kselftest's rule for one run: 1 if anything failed or errored (or there are no totals at
    all: the run never finished), else 0 if anything passed, else 4 (everything skipped)."""
    if not totals or totals.get("fail") or totals.get("error"):
        return KSFT_FAIL
    return KSFT_PASS if totals.get("pass") else KSFT_SKIP


def combine(codes: Iterable[int], empty: int = KSFT_FAIL) -> int:
    """The code of several runs: 1 if any failed, else 0 if any passed, else 4; ``empty`` if none."""
    codes = list(codes)
    if not codes:
        return empty
    if KSFT_FAIL in codes:
        return KSFT_FAIL
    return KSFT_PASS if KSFT_PASS in codes else KSFT_SKIP


def plan(n: int, indent: str = "") -> list[str]:
    """The version line and the plan of ``n`` results."""
    return [f"{indent}KTAP version 1", f"{indent}1..{n}"]


def result(i: int, name: str, ok: bool, directive: str = "", indent: str = "") -> str:
    """One result line; ``directive`` is e.g. ``SKIP reason`` or ``XFAIL reason``."""
    return f"{indent}{'ok' if ok else 'not ok'} {i} {name}" + (f" # {directive}" if directive else "")


def diagnostics(text: str, indent: str = "") -> list[str]:
    return [f"{indent}# {line}" for line in text.splitlines()]


def totals_line(t: Mapping[str, int], indent: str = "") -> str:
    return indent + "# Totals: " + " ".join(f"{k}:{t.get(k, 0)}" for k in TOTAL_KEYS)


@dataclass
class Parsed:
    """What a KTAP text says at its top level (indented subtests are not counted)."""
    totals: dict[str, int] = field(default_factory=dict)      # from the totals line; empty without one
    outcomes: dict[str, str] = field(default_factory=dict)    # name -> passed/failed/skipped/xfailed
    skip_reasons: list[str] = field(default_factory=list)
    fail_names: list[str] = field(default_factory=list)


def parse(text: str) -> Parsed:
    """Read the top-level result lines and the totals line of a KTAP text."""
    out = Parsed()
    for line in text.splitlines():
        m = _TOTALS.search(line)
        if m and not line.startswith(" "):
            out.totals = dict(zip(TOTAL_KEYS, map(int, m.groups()), strict=True))
        elif line.startswith("ok "):
            name = line.split(" ", 2)[2] if line.count(" ") >= 2 else ""
            name, _, directive = name.partition(" # ")
            if directive.startswith("SKIP"):
                out.skip_reasons.append(directive[4:].strip())
                out.outcomes[name] = "skipped"
            elif directive.startswith("XFAIL"):
                out.outcomes[name] = "xfailed"
            else:
                out.outcomes[name] = "passed"
        elif line.startswith("not ok "):
            name = line.split(" ", 3)[-1].partition(" # ")[0]
            out.fail_names.append(name)
            out.outcomes[name] = "failed"
    return out


def is_ktap(line: str) -> bool:
    """Whether an output line belongs to a KTAP report (the rest of pytest's output does not)."""
    return line.startswith(("TAP version", "KTAP version", "1..", "ok ", "not ok ", "# ", "    "))


@dataclass
class _Outcome:
    state: str = "pass"  # pass, fail, skip, error, xfail, xpass
    reason: str = ""
    diag: list[str] = field(default_factory=list)


def ktap_name(nodeid: str) -> str:
    """A test name safe for a KTAP line: no '#', no whitespace runs."""
    return re.sub(r"\s+", "_", nodeid.replace("#", "_"))


def _one_line(s: str) -> str:
    return " ".join(s.split())


class KtapReporter:
    def __init__(self, out: IO[str], replace_terminal: bool = False) -> None:
        self.out = out
        self.replace_terminal = replace_terminal
        self.n = 0
        self.planned = 0
        self.current: dict[str, _Outcome] = {}
        self.totals = {"pass": 0, "fail": 0, "xfail": 0, "xpass": 0, "skip": 0, "error": 0}

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.replace_terminal:
            # silence pytest's own report: point its writer at /dev/null (unregistering it
            # here would not stop hooks already under way, such as the session header)
            from _pytest.terminal import TerminalWriter
            tr = session.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                self._devnull = open(os.devnull, "w")
                tr._tw = TerminalWriter(self._devnull)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.planned = len(session.items)
        for line in plan(self.planned):
            self.write(line)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        o = self.current.setdefault(report.nodeid, _Outcome())
        if report.skipped:
            if hasattr(report, "wasxfail"):
                o.state, o.reason = "xfail", str(report.wasxfail)
            elif o.state == "pass":
                o.state = "skip"
                lr = report.longrepr
                o.reason = _one_line(lr[2] if isinstance(lr, tuple) else str(lr)).removeprefix("Skipped: ")
        elif report.failed:
            if report.when == "call":
                o.state = "fail"
            elif o.state != "fail":
                o.state = "error"
            text = report.longreprtext or ""
            lines = [ln for ln in text.splitlines() if ln.startswith("E ")] or text.splitlines()[-5:]
            o.diag += [f"{report.when}: {ln}" for ln in lines[:20]]
        elif report.when == "call" and hasattr(report, "wasxfail"):
            o.state = "xpass"

    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        o = self.current.pop(nodeid, _Outcome())
        self.n += 1
        for d in o.diag:
            self.write(f"# {d}")
        name = ktap_name(nodeid)
        directive = {"skip": f"SKIP {o.reason}", "xfail": f"XFAIL {o.reason}"}.get(o.state, "")
        self.write(result(self.n, name, o.state in ("pass", "skip", "xfail"), directive))
        self.totals[o.state] += 1

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.n < self.planned:
            self.write(f"# {self.planned - self.n} planned tests did not run (session interrupted)")
        self.write(totals_line(self.totals))


def configure(config: pytest.Config) -> None:
    to_stdout = config.getoption("--ktap")
    path = config.getoption("--ktap-file")
    if not (to_stdout or path):
        return
    if to_stdout:
        # a dup of the real stdout: pytest's capture cannot swallow it
        config.pluginmanager.register(KtapReporter(os.fdopen(os.dup(1), "w"), replace_terminal=True), "kvmffi-ktap")
    if path:
        name = "kvmffi-ktap-file" if to_stdout else "kvmffi-ktap"
        config.pluginmanager.register(KtapReporter(open(path, "w")), name)
