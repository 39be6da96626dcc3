"""The test-kernel runner: exit status, timeouts and boot failures, and no QEMU left behind."""

import os
import shutil
import subprocess
import sys

import psutil
import pytest

from kvmffi.testkernel import BootError, boot, default_image


def _qemus() -> set[int]:
    """QEMU processes started from this test process (children or deeper; other runs on the machine
    do not count)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("qemu-system") and p.status() != psutil.STATUS_ZOMBIE:
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def kernel():
    if os.environ.get("KVMFFI_IN_TEST_KERNEL"):
        pytest.skip("inside a test kernel: booting another one needs the host (a writable cache, QEMU at full speed)")
    img = default_image()
    if img is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no cached test kernel or no QEMU: run `kvmffi kernel build` (apt-get install qemu-system-x86)")
    yield img
    assert _qemus() == set(), "a QEMU process outlived the test"


def test_command_status_and_output_come_back(kernel) -> None:
    r = boot(kernel, ["sh", "-c", "echo hello from $(uname -r); exit 3"], timeout=120)
    assert r.returncode == 3
    assert any(line.startswith("hello from 6.12.") for line in r.output), r.output  # the default: Debian's 6.12
    assert f"hello from {r.release}" in r.output  # the release boot() reports is the one that ran the command


def test_timeout_is_reported_with_the_console_and_kills_qemu(kernel) -> None:
    with pytest.raises(BootError) as ei:
        boot(kernel, ["sh", "-c", "echo started; sleep 600"], timeout=15)
    assert ei.value.timed_out
    assert "timed out after 15 s" in str(ei.value)


def test_missing_kernel_is_a_clear_error() -> None:
    with pytest.raises(BootError, match="no kernel image at /nonexistent/bzImage: build one with `kvmffi kernel build`"):
        boot("/nonexistent/bzImage", ["true"])


def test_kvmffi_vm_exit_codes(kernel) -> None:
    run = [sys.executable, "-m", "kvmffi", "vm", "--kernel", str(kernel), "--timeout", "120", "-q", "--"]
    assert subprocess.run(run + ["true"], capture_output=True).returncode == 0
    assert subprocess.run(run + ["sh", "-c", "exit 7"], capture_output=True).returncode == 7
    bad = subprocess.run([sys.executable, "-m", "kvmffi", "vm", "--kernel", "/nonexistent", "-q", "--", "true"],
                         capture_output=True, text=True)
    # a path that is no file is a bad --kernel value: one line naming it, the usage code
    assert bad.returncode == 2 and "--kernel /nonexistent: give host, a version" in bad.stderr


MOUNT_CHECK = ("for d in /proc /sys /dev /run /run/kvmffi-tmp /run/kvmffi-home /dev/shm /dev/hugepages "
               "/sys/kernel/debug \"$KVMFFI_OUT\"; do grep -q \" $d \" /proc/mounts && echo \"mounted $d\"; done; "
               "touch \"$KVMFFI_OUT/written\" && echo out-writable; cat /proc/sys/vm/nr_hugepages")


@pytest.mark.parametrize("how", ["mount -a", "one by one"])
def test_the_test_kernel_mounts_what_the_suites_need(kernel, how: str, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path) -> None:
    from pathlib import Path

    from kvmffi.testkernel import qemu
    if how == "one by one":  # a mount(8) that cannot read the fstab: the init falls back to one mount each
        real = qemu._init_script
        monkeypatch.setattr(qemu, "_init_script", lambda c, cwd, env, out, fstab: real(c, cwd, env, out,
                                                                                        Path("/nonexistent")))
    r = boot(kernel, ["sh", "-c", MOUNT_CHECK], timeout=120, results_dir=tmp_path)
    assert r.returncode == 0, r.output
    assert sum(line.startswith("mounted ") for line in r.output) == 10, r.output
    assert "out-writable" in r.output and r.output[-1] == "64"
    assert (tmp_path / "written").exists()
