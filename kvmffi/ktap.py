"""KTAP output for pytest: one `ok`/`not ok` line per test, `# SKIP reason`, a totals line.

Enabled with ``--ktap`` (to standard output, replacing pytest's own report) or
``--ktap-file FILE``. Kernel test runners and KernelCI read this format.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import IO, Any

import pytest


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
        self.write("TAP version 13")
        self.write(f"1..{self.planned}")

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
        if o.state == "pass":
            self.write(f"ok {self.n} {name}")
        elif o.state == "skip":
            self.write(f"ok {self.n} {name} # SKIP {o.reason}")
        elif o.state == "xfail":
            self.write(f"ok {self.n} {name} # XFAIL {o.reason}")
        else:
            self.write(f"not ok {self.n} {name}")
        self.totals[o.state] += 1

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.n < self.planned:
            self.write(f"# {self.planned - self.n} planned tests did not run (session interrupted)")
        t = self.totals
        self.write(f"# Totals: pass:{t['pass']} fail:{t['fail']} xfail:{t['xfail']} xpass:{t['xpass']} "
                   f"skip:{t['skip']} error:{t['error']}")


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
