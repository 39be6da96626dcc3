"""The kernel-log gate: a splat the kernel logs during a test fails that test, with the splat in
its report; lines written from userspace do not count. Proven with LKDTM, which makes the kernel
print a real WARNING (the kvmffi test kernels have CONFIG_LKDTM and debugfs)."""

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

LKDTM = "/sys/kernel/debug/provoke-crash/DIRECT"


def lkdtm_available() -> bool:
    return os.access(LKDTM, os.W_OK)


def provoke(what: str) -> None:
    with open(LKDTM, "w") as f:
        f.write(what)


def need_lkdtm() -> None:
    if not lkdtm_available():
        # a fact of this machine's kernel configuration, not of KVM: a skip even in strict mode
        pytest.skip(f"no {LKDTM} (CONFIG_LKDTM and debugfs): run in a kvmffi test kernel "
                    "(`kvmffi run --kernel 7.3 host/test_kernel_log.py`)")


@pytest.mark.kernel_splat("WARNING")
def test_lkdtm_warning_is_seen(kernel_log) -> None:
    need_lkdtm()
    provoke("WARNING")
    splats = kernel_log.splats()
    assert [s.kind for s in splats] == ["WARNING"], [str(s) for s in splats]
    assert "lkdtm" in str(splats[0]).lower()


INNER = '''
import os, pytest

def provoke(what):
    with open("LKDTM", "w") as f:
        f.write(what)

def test_warns_unexpectedly():
    provoke("WARNING")

@pytest.mark.kernel_splat("WARNING")
def test_warns_as_expected(kernel_log):
    provoke("WARNING")
    assert [s.kind for s in kernel_log.splats()] == ["WARNING"]

@pytest.mark.kernel_splat("BUG")
def test_warns_but_expects_another_kind():
    provoke("WARNING")
'''.replace("LKDTM", LKDTM)

USERSPACE = '''
import os

def test_userspace_writes_a_fake_warning(kernel_log):
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, b"<4>WARNING: CPU: 0 PID: 1 at fake.c:1 kvmffi_fake+0x0/0x0\\n")
        os.write(fd, b"<3>BUG: KASAN: use-after-free in kvmffi_fake\\n")
    finally:
        os.close(fd)
    assert kernel_log.splats() == []
'''


def _run_inner(name: str, source: str) -> tuple[dict[str, int], str]:
    """Run ``source`` as the test module ``name``.py in a pytest process of its own with the gate on
    (no strict mode, no leak check): its outcomes by kind ({"passed": 1, ...}) and its output."""
    with tempfile.TemporaryDirectory(prefix="kvmffi-gate-") as d:
        Path(d, f"{name}.py").write_text(textwrap.dedent(source))
        env = {k: v for k, v in os.environ.items() if k != "KVMFFI_STRICT"}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "kvmffi", "-p", "no:cacheprovider",
                            "--kvm-no-leak-check", "--kvm-log-gate=on", "-rA", f"--rootdir={d}", f"{name}.py"],
                           cwd=d, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    summary = [line for line in out.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    assert summary, f"the inner pytest (exit {r.returncode}) printed no summary:\n{out}"
    return {kind.rstrip("s") if kind == "errors" else kind: int(n)
            for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary[-1])}, out


@pytest.mark.kernel_splat("WARNING")
def test_gate_fails_the_test_that_made_the_kernel_warn() -> None:
    need_lkdtm()
    outcomes, out = _run_inner("test_gate_fails_the_test_that_made_the_kernel_warn", INNER)
    assert outcomes == {"passed": 1, "failed": 2}, out
    assert "FAILED test_gate_fails_the_test_that_made_the_kernel_warn.py::test_warns_unexpectedly" in out
    assert "FAILED test_gate_fails_the_test_that_made_the_kernel_warn.py::test_warns_but_expects_another_kind" in out
    assert "the kernel logged 1 splat(s) during the test: WARNING" in out
    # the whole splat is in the report: the WARNING line with its source, the registers, the trace
    assert "drivers/misc/lkdtm/bugs.c" in out and "Call Trace:" in out and "---[ end trace" in out


def test_userspace_lines_do_not_trip_the_gate() -> None:
    if not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("/dev/kmsg is not readable and writable here (run as root)")
    outcomes, out = _run_inner("test_userspace_lines_do_not_trip_the_gate", USERSPACE)
    assert outcomes == {"passed": 1}, out
