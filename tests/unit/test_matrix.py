"""Matrix bookkeeping: configurations, shards, differences, report formats (no kernel needed)."""

import json

import pytest

from kvmffi.matrix import (DEFAULT_CONFIGS, Config, ConfigResult, differences, exit_code, format_json, format_ktap,
                           format_table, parse_config, shard)
from kvmffi.runner import TierResult
from kvmffi.testkernel.spec import BootSpec, SpecError

KEYS = ("pass", "fail", "xfail", "xpass", "skip", "error")


def _result(name: str, outcomes: dict[str, str], **kw: object) -> ConfigResult:
    t = TierResult(name, "x")
    t.outcomes = outcomes
    counts = {"passed": "pass", "failed": "fail", "skipped": "skip", "xfailed": "xfail"}
    t.totals = {k: 0 for k in KEYS}
    for o in outcomes.values():
        t.totals[counts[o]] += 1
    return ConfigResult(Config(name, BootSpec(**kw)), tiers=[t])  # type: ignore[arg-type]


def test_default_configurations() -> None:
    assert [c.name for c in DEFAULT_CONFIGS] == ["host", "6.12", "7.3", "7.3-numa2", "7.3-tdp-mmu-off",
                                                 "7.3-shadow-mmu"]
    legacy = DEFAULT_CONFIGS[-2]
    assert legacy.spec.kernel_args == "kvm.tdp_mmu=0" and legacy.tiers == ("host",) and "SW_PROTECTED" in legacy.note
    shadow = DEFAULT_CONFIGS[-1]
    assert "kvm_amd.npt=0" in shadow.spec.kernel_args and shadow.tiers == ("host",) and "SW_PROTECTED" in shadow.note


def test_parse_config() -> None:
    assert parse_config("7.3-numa2").spec.numa == 2
    c = parse_config("7.3+numa2+cpus4+kvm.enable_pmu=0")
    assert c.spec == BootSpec("7.3", cpus=4, numa=2, kernel_args="kvm.enable_pmu=0")
    with pytest.raises(SpecError, match="neither numaN, cpusN nor a PARAM=VALUE"):
        parse_config("7.3+bogus")
    with pytest.raises(SpecError, match="known configuration"):
        parse_config("bogus")
    with pytest.raises(SpecError, match=r"configuration '7.3\+numa1': --numa 1: give 0 \(no NUMA\) or 2 or more"):
        parse_config("7.3+numa1")
    with pytest.raises(SpecError, match="give --kernel too"):
        parse_config("host+numa2")


def test_shard_slices_the_configurations() -> None:
    cs = list(DEFAULT_CONFIGS)
    slices = [shard(cs, f"{i}/2") for i in (1, 2)]
    assert [c.name for c in slices[0]] == ["host", "7.3", "7.3-tdp-mmu-off"]
    assert sorted(c.name for s in slices for c in s) == sorted(c.name for c in cs)
    with pytest.raises(ValueError, match="give I/N"):
        shard(cs, "3/2")


def test_differences_and_reports() -> None:
    a = _result("a", {"t1": "passed", "t2": "passed", "only_a": "passed"})
    b = _result("b", {"t1": "passed", "t2": "skipped"}, kernel="7.3", numa=2)
    assert differences([a, b]) == {"t2": {"a": "passed", "b": "skipped"}}
    table = format_table([a, b])
    assert "1 tests exist in some configurations only" in table and "t2\n      a=pass  b=skip" in table
    data = json.loads(format_json([a, b]))
    assert data["configs"][1]["numa_nodes"] == 2 and data["configs"][1]["outcomes"]["t2"] == "skipped"
    assert data["configs"][0]["totals"] == {"pass": 3, "fail": 0, "skip": 0, "xfail": 0, "xpass": 0, "error": 0}
    ktap = format_ktap([a, b])
    assert ktap.startswith("KTAP version 1\n1..2") and "    ok 2 t2 # SKIP" in ktap and ktap.endswith("ok 2 b")
    assert exit_code([a, b]) == 0
    assert exit_code([a, _result("c", {"t1": "failed"})]) == 1


def test_with_tiers_keeps_what_a_configuration_leaves_out_by_design() -> None:
    from kvmffi.matrix import with_tiers
    cs = with_tiers(list(DEFAULT_CONFIGS), ["host", "private", "selftests"])
    by = {c.name: c.tiers for c in cs}
    assert by["host"] == ("host", "private")                  # this host runs no selftests
    assert by["7.3"] == ("host", "private", "selftests")
    assert by["7.3-shadow-mmu"] == ("host", "selftests")      # no private tier without the TDP MMU
    assert [c.name for c in with_tiers(list(DEFAULT_CONFIGS), ["selftests"])] == [
        "6.12", "7.3", "7.3-numa2", "7.3-tdp-mmu-off", "7.3-shadow-mmu"]
    with pytest.raises(ValueError, match="choose from host, private, selftests"):
        with_tiers(list(DEFAULT_CONFIGS), ["bogus"])


def test_disagreements_between_a_selftest_and_its_kvmffi_counterparts() -> None:
    from kvmffi.selftests import disagreements
    outcomes = {"selftests/guest_memfd_test": "passed", "host/test_guest_memfd_create.py::test_x[DEFAULT]": "failed",
                "selftests/x86/pre_fault_memory_test": "failed", "private/test_pre_fault.py::test_y": "passed",
                "selftests/set_memory_region_test": "passed", "host/test_memslots.py::test_z": "passed"}
    assert disagreements(outcomes) == [
        "guest_memfd_test passes, kvmffi fails 1: host/test_guest_memfd_create.py::test_x[DEFAULT]",
        "pre_fault_memory_test fails, kvmffi's private/test_pre_fault.py pass"]


def test_selftest_results_as_junit() -> None:
    import xml.etree.ElementTree as ET

    from kvmffi.selftests import SelftestResult, classify, junit_xml
    rs = [classify("guest_memfd_test", 0, [], 0.4, 120), classify("pre_fault_memory_test", None, ["Random seed"], 120, 120),
          classify("vm_types_test", 4, ["SKIP: no SW_PROTECTED"], 0.1, 120),
          classify("x", 254, ["==== Test Assertion Failure ====", "  x.c:10: false"], 0.2, 120)]
    assert [r.outcome for r in rs] == ["pass", "timeout", "skip", "fail"] and isinstance(rs[0], SelftestResult)
    assert "assertion failure (exit 254)" in rs[3].detail and "x.c:10" in rs[3].detail
    ts = ET.fromstring(junit_xml(rs))
    assert (ts.get("tests"), ts.get("failures"), ts.get("skipped")) == ("4", "2", "1")
    assert ts.find("testcase[@name='pre_fault_memory_test']/failure").get("message") == "timeout"  # type: ignore[union-attr]
