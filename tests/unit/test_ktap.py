"""KTAP as kvmffi writes and reads it, and kselftest's exit-code rule."""

import pytest

from kvmffi import ktap
from kvmffi.selftests import SelftestResult, ktap_lines


@pytest.mark.parametrize("totals,code", [
    ({}, 1),                                                          # never finished
    ({"pass": 3, "fail": 0, "skip": 1, "error": 0}, 0),
    ({"pass": 3, "fail": 1}, 1),
    ({"pass": 3, "error": 1}, 1),
    ({"pass": 0, "skip": 4}, 4),
    ({"pass": 0, "fail": 0, "skip": 0, "error": 0}, 4),
])
def test_ksft_code(totals: dict[str, int], code: int) -> None:
    assert ktap.ksft_code(totals) == code


def test_combine() -> None:
    assert ktap.combine([0, 4, 1]) == 1
    assert ktap.combine([4, 0]) == 0
    assert ktap.combine([4, 4]) == 4
    assert ktap.combine([]) == 1
    assert ktap.combine([], empty=4) == 4


def test_written_lines_read_back() -> None:
    lines = [*ktap.plan(4), ktap.result(1, "a", True), ktap.result(2, "b", True, "SKIP no KVM_CAP_X"),
             "    ok 1 nested_ignored", ktap.result(3, "c", False), *ktap.diagnostics("why\nit failed"),
             ktap.result(4, "d", True, "XFAIL bug x"),
             ktap.totals_line({"pass": 1, "fail": 1, "skip": 1, "xfail": 1})]
    assert lines[:2] == ["KTAP version 1", "1..4"]
    assert lines[-1] == "# Totals: pass:1 fail:1 xfail:1 xpass:0 skip:1 error:0"
    p = ktap.parse("\n".join(lines))
    assert p.outcomes == {"a": "passed", "b": "skipped", "c": "failed", "d": "xfailed"}
    assert p.skip_reasons == ["no KVM_CAP_X"]
    assert p.fail_names == ["c"]
    assert p.totals == {"pass": 1, "fail": 1, "xfail": 1, "xpass": 0, "skip": 1, "error": 0}


def test_nested_totals_are_not_the_top_level_totals() -> None:
    text = "\n".join([*ktap.plan(1), ktap.totals_line({"fail": 9}, indent="    "), ktap.result(1, "t", True)])
    assert ktap.parse(text).totals == {}


def test_selftest_results_as_ktap() -> None:
    results = [SelftestResult("guest_memfd_test", "pass", 0, 1.0, subtests=["ok 1 file_read_write"]),
               SelftestResult("x86/private_mem_conversions_test", "skip", 4, 0.1, "KVM_X86_SW_PROTECTED_VM unsupported"),
               SelftestResult("pre_fault_memory_test", "timeout", None, 120.0, "killed after 120 s")]
    lines = ktap_lines(results, prefix="selftests/")
    assert "    ok 1 file_read_write" in lines
    assert "ok 2 selftests/x86/private_mem_conversions_test # SKIP KVM_X86_SW_PROTECTED_VM unsupported" in lines
    assert "not ok 3 selftests/pre_fault_memory_test" in lines
    assert "# timeout: killed after 120 s" in lines
    p = ktap.parse("\n".join(lines))
    assert p.totals["pass"] == 1 and p.totals["fail"] == 1 and p.totals["skip"] == 1
    assert ktap.ksft_code(p.totals) == 1
