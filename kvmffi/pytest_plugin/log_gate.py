"""The kernel-log gate: a test during which the kernel logs a splat (WARNING, BUG, KASAN, lockdep,
...) fails, unless its ``kernel_splat`` marker expects that kind.

The log is marked when each test starts and read when it reports; every splat is attached to the
report. The ``kernel_log`` fixture lets a test look at what the kernel has logged so far.
"""

from __future__ import annotations

from typing import Any

import pytest

from .state import current


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
        from ..kmsg import find_splats
        self.records += self.log.read()
        return find_splats(self.records)

    def new_splats(self) -> list[Any]:
        s = self.splats()
        new, self.reported = s[self.reported:], len(s)
        return new


@pytest.fixture
def kernel_log() -> LogGate:
    """The kernel-log gate of this test: ``kernel_log.splats()`` lists what the kernel logged so far."""
    gate = current().log_gate
    if gate is None:
        pytest.skip("the kernel log (/dev/kmsg) cannot be read here, or the gate is off (--kvm-log-gate)")
    return gate  # type: ignore[no-any-return]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    gate = current().log_gate
    if gate is not None:
        gate.start()


def gate_report(item: pytest.Item, rep: pytest.TestReport) -> None:
    """Attach the splats logged since the test's last report; fail a passed test on an unexpected one."""
    gate = current().log_gate
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
