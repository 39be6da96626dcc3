"""Each test's report, amended: a requirement not met (MissingCapability) becomes a skip or a
strict failure in any session; in kvmffi's sessions the kernel-log gate's verdict is applied, a
security module's refusal becomes a skip, and a failure carries the tail of the kernel log.
"""

from __future__ import annotations

import subprocess

import pytest

from .log_gate import gate_report
from .state import current
from .verdicts import missing_verdict


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
    from ..errors import KvmError, MissingCapability
    # a requirement not met (kvmffi.requirements) is a skip or a strict failure in any session
    if rep.failed and call.excinfo is not None and isinstance(call.excinfo.value, MissingCapability) \
            and not hasattr(rep, "wasxfail"):
        exc = call.excinfo.value
        fail, msg = missing_verdict(exc.reason, exc.feature)
        if fail:
            rep.longrepr = msg
        else:
            rep.outcome = "skipped"
            rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {msg}")
        return
    if not current().active:
        return
    if call.when in ("call", "teardown") or (call.when == "setup" and rep.failed):
        gate_report(item, rep)
    from ..hints import security_module_refusal
    exc_ = call.excinfo.value if rep.failed and call.excinfo is not None else None
    refusal = security_module_refusal(exc_.ioctl, exc_.errno or 0) if isinstance(exc_, KvmError) else None
    if refusal and not hasattr(rep, "wasxfail"):  # the environment: a skip even in strict mode
        rep.outcome = "skipped"
        rep.longrepr = (str(item.path), (item.location[1] or 0) + 1, f"Skipped: {refusal}")
        return
    if rep.failed and call.when in ("setup", "call"):
        rep.sections.append(("kernel log (last 20 lines of dmesg)", _kernel_log_tail()))
