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
    assert lines[:2] == ["KTAP version 1", "1..4"]
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
    assert r.stdout.lines[:3] == ["KTAP version 1", "1..1", "ok 1 test_one.py::test_a"]
    assert "passed" not in r.stdout.str()


def test_failure_report_carries_the_kernel_log(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_f="def test_f(kvm):\n    assert False\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-no-leak-check")
    r.stdout.fnmatch_lines(["*kernel log (last 20 lines of dmesg)*"])


UNRELATED = """
import threading, time

def test_leaves_a_thread_running():
    threading.Thread(target=time.sleep, args=(5,), daemon=True, name="left-behind").start()

def test_fails():
    assert 1 == 2
"""


def test_a_session_that_does_not_use_kvmffi_sees_nothing_of_it(pytester: pytest.Pytester) -> None:
    """No header, no leak check, no kernel log in failure reports: as if the plugin were not installed."""
    pytester.makepyfile(test_unrelated=UNRELATED)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "thread")
    r.assert_outcomes(passed=1)
    assert r.ret == 0
    assert "kvmffi:" not in r.stdout.str() and "leak check" not in r.stdout.str()
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "fails")
    r.assert_outcomes(failed=1)
    assert "kvmffi:" not in r.stdout.str() and "dmesg" not in r.stdout.str()


def test_a_fixture_namesake_does_not_switch_kvmffi_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_own_vm="""
import pytest, threading, time

@pytest.fixture
def vm():
    return "the project's own vm"

def test_uses_its_own_vm(vm):
    threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
    assert vm == "the project's own vm"
""")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1)
    assert r.ret == 0 and "kvmffi:" not in r.stdout.str()


def test_a_kvmffi_fixture_or_the_option_switch_the_session_on(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unrelated=UNRELATED)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "thread", "--kvmffi")
    assert r.ret == 1  # the thread left behind fails the session
    r.stdout.fnmatch_lines(["kvmffi: kernel *", "*threads left running at session end: left-behind*"])
    pytester.makepyfile(test_kvm="def test_opens(kvm):\n    assert kvm.api_version == 12\n")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_kvm.py")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(["kvmffi: kernel *", "kvmffi leak check: *0 KVM fds and 0 threads leaked"])


KNOBS_SAMPLE = """
from kvmffi.requirements import knobs

def test_knobs():
    print("fuzz_examples =", knobs().fuzz_examples)
"""


@pytest.mark.parametrize(("option", "ini", "env", "expected"), [
    (None, None, None, 25),
    (None, None, "7", 7),
    (None, "5", "7", 5),
    ("3", "5", "7", 3),
])
def test_a_knob_comes_from_the_option_then_the_ini_key_then_the_environment(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
        option: str | None, ini: str | None, env: str | None, expected: int) -> None:
    pytester.makepyfile(test_knobs=KNOBS_SAMPLE)
    monkeypatch.delenv("KVMFFI_FUZZ_EXAMPLES", raising=False)
    if env is not None:
        monkeypatch.setenv("KVMFFI_FUZZ_EXAMPLES", env)
    if ini is not None:
        pytester.makeini(f"[pytest]\nkvm_fuzz_examples = {ini}\n")
    args = ["-p", "no:cacheprovider", "-s"] + (["--kvm-fuzz-examples", option] if option is not None else [])
    r = pytester.runpytest_subprocess(*args)
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines([f"*fuzz_examples = {expected}*"])


@pytest.mark.parametrize(("where", "value", "message"), [
    ("option", "abc", "ERROR: --kvm-fuzz-examples: 'abc' is not a whole number, 1 or more"),
    ("option", "0", "ERROR: --kvm-fuzz-examples: '0' is not a whole number, 1 or more"),
    ("ini", "many", "ERROR: ini kvm_fuzz_examples: 'many' is not a whole number, 1 or more"),
])
def test_a_bad_knob_is_a_usage_error_naming_where_it_came_from(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str, value: str, message: str) -> None:
    pytester.makepyfile(test_knobs=KNOBS_SAMPLE)
    monkeypatch.delenv("KVMFFI_FUZZ_EXAMPLES", raising=False)
    args = ["-p", "no:cacheprovider"]
    if where == "option":
        args += ["--kvm-fuzz-examples", value]
    else:
        pytester.makeini(f"[pytest]\nkvm_fuzz_examples = {value}\n")
    r = pytester.runpytest_subprocess(*args)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines([message])


def test_a_bad_knob_in_the_environment_fails_only_the_tests_that_read_it(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin loads in every session of the environment: a bad KVMFFI_* value must not stop a
    session that never reads it."""
    pytester.makepyfile(test_knobs=KNOBS_SAMPLE, test_other="def test_other():\n    assert True\n")
    monkeypatch.setenv("KVMFFI_FUZZ_EXAMPLES", "-1")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*ValueError: KVMFFI_FUZZ_EXAMPLES: '-1' is not a whole number, 1 or more*"])


def test_knobs_outside_pytest_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmffi import requirements
    for name in ("SOAK", "SOAK_SEED", "FUZZ_EXAMPLES", "FUZZ_SEED", "DESTRUCTIVE"):
        monkeypatch.delenv(f"KVMFFI_{name}", raising=False)
    assert requirements.env_knobs() == requirements.Knobs()
    monkeypatch.setenv("KVMFFI_SOAK", "2.5")
    monkeypatch.setenv("KVMFFI_DESTRUCTIVE", "yes")
    assert requirements.env_knobs() == requirements.Knobs(soak=2.5, destructive=True)
    monkeypatch.setenv("KVMFFI_SOAK", "-1")
    with pytest.raises(ValueError, match="KVMFFI_SOAK: '-1' is not a number of seconds"):
        requirements.env_knobs()


def test_the_numa_marker_skips_by_itself(pytester: pytest.Pytester) -> None:
    """``numa(n)`` needs no call in the test's body: too few nodes is a skip naming how many there are."""
    pytester.makepyfile(test_numa="""
import pytest

@pytest.mark.numa(64)
def test_needs_many_nodes():
    raise AssertionError("ran without 64 NUMA nodes")

@pytest.mark.numa(1)
def test_one_node_is_enough():
    pass
""")
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvmffi", "-rs")
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines(["*needs >= 64 NUMA nodes, this machine has * (a topology fact*"])
