"""The pytest plugin itself, run with pytester: strict mode, KTAP, skip reasons (no /dev/kvm needed)."""

import pytest

SAMPLE = """
import pytest
from kvmffi.pytest_plugin import skip_missing

def test_pass():
    pass

def test_fail():
    assert 1 == 2

def test_missing_cap():
    skip_missing("KVM_CAP_FOO is 0 on /dev/kvm: get a newer kernel")

@pytest.mark.skip(reason="topology")
def test_plain_skip():
    pass
"""


def test_capability_skip_is_a_skip_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SAMPLE)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "--kvm-no-leak-check")
    r.assert_outcomes(passed=1, failed=1, skipped=2)
    r.stdout.fnmatch_lines(["*KVM_CAP_FOO is 0 on /dev/kvm: get a newer kernel*"])


@pytest.mark.parametrize("how", ["option", "env", "ini"])
def test_strict_mode_turns_capability_skips_into_failures(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                          how: str) -> None:
    pytester.makepyfile(SAMPLE)
    args = ["-p", "no:cacheprovider", "--kvm-no-leak-check"]
    monkeypatch.delenv("KVMFFI_STRICT", raising=False)
    if how == "option":
        args.append("--kvm-strict")
    elif how == "env":
        monkeypatch.setenv("KVMFFI_STRICT", "1")
    else:
        pytester.makeini("[pytest]\nkvm_strict = true\n")
    r = pytester.runpytest_subprocess(*args)
    r.assert_outcomes(passed=1, failed=2, skipped=1)
    r.stdout.fnmatch_lines(["*strict mode: KVM_CAP_FOO is 0*"])


def test_ktap_report(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMFFI_STRICT", raising=False)
    pytester.makepyfile(test_sample=SAMPLE)
    out = pytester.path / "out.ktap"
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check", f"--ktap-file={out}")
    lines = out.read_text().splitlines()
    assert lines[:2] == ["TAP version 13", "1..4"]
    results = [ln for ln in lines if ln.startswith(("ok ", "not ok "))]
    assert results == [
        "ok 1 test_sample.py::test_pass",
        "not ok 2 test_sample.py::test_fail",
        "ok 3 test_sample.py::test_missing_cap # SKIP KVM_CAP_FOO is 0 on /dev/kvm: get a newer kernel",
        "ok 4 test_sample.py::test_plain_skip # SKIP topology",
    ]
    assert any(ln.startswith("# call: E") and "assert 1 == 2" in ln for ln in lines)
    assert lines[-1] == "# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:2 error:0"


def test_ktap_on_stdout_replaces_the_pytest_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_a():\n    pass\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check", "--ktap")
    assert r.stdout.lines[:3] == ["TAP version 13", "1..1", "ok 1 test_one.py::test_a"]
    assert "passed" not in r.stdout.str()


def test_failure_report_carries_the_kernel_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_f="def test_f():\n    assert False\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check")
    r.stdout.fnmatch_lines(["*kernel log (last 20 lines of dmesg)*"])
