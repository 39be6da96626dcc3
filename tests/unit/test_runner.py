"""Exit codes of `kvmffi run` (kselftest) and `kvmffi bisect` (git bisect run), from KTAP results."""

import pytest

from kvmffi.runner import TierResult, bisect_verdict, parse_ktap


def tier(ktap: str, infra: str = "") -> TierResult:
    r = TierResult("t", "here", infra_error=infra)
    parse_ktap(ktap, r)
    return r


PASS = "TAP version 13\n1..2\nok 1 a\nok 2 b # SKIP x\n# Totals: pass:1 fail:0 xfail:0 xpass:0 skip:1 error:0\n"
FAIL = "TAP version 13\n1..2\nok 1 a\nnot ok 2 b\n# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n"
ERROR = "TAP version 13\n1..1\nnot ok 1 a\n# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:1\n"
SKIP = ("TAP version 13\n1..2\nok 1 a # SKIP KVM_CAP_X is 0\nok 2 b # SKIP KVM_CAP_X is 0\n"
        "# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:2 error:0\n")
NONE = "TAP version 13\n1..0\n# Totals: pass:0 fail:0 xfail:0 xpass:0 skip:0 error:0\n"


@pytest.mark.parametrize("ktap,ksft,bisect", [(PASS, 0, 0), (FAIL, 1, 1), (ERROR, 1, 1), (SKIP, 4, 125),
                                              (NONE, 4, 125)], ids=["pass", "fail", "error", "skip", "none"])
def test_exit_codes(ktap: str, ksft: int, bisect: int) -> None:
    r = tier(ktap)
    assert r.ksft == ksft
    assert bisect_verdict(r)[0] == bisect


def test_bisect_says_why() -> None:
    assert bisect_verdict(tier(SKIP)) == (125, "all 2 selected tests skipped: KVM_CAP_X is 0")
    assert bisect_verdict(tier(FAIL)) == (1, "1 failed: b")
    assert bisect_verdict(tier(PASS, infra="timed out after 600 s\nconsole tail")) == (
        125, "infrastructure: timed out after 600 s")
    assert bisect_verdict(None) == (125, "nothing could run")


def test_bisect_never_leaves_1_to_127_plus_125() -> None:
    for k in (PASS, FAIL, ERROR, SKIP, NONE):
        for infra in ("", "boot failed"):
            code, _ = bisect_verdict(tier(k, infra))
            assert code in (0, 1, 125)


def test_numa_args_split_memory_and_spread_cpus() -> None:
    from kvmffi.testkernel.qemu import BootError, memory_mib, numa_args
    assert numa_args(0, 2, "2G") == [] and numa_args(1, 2, "2G") == []
    assert numa_args(2, 3, "2G") == [
        "-object", "memory-backend-ram,id=kvmffi-mem0,size=1024M", "-numa", "node,nodeid=0,memdev=kvmffi-mem0,cpus=0,cpus=2",
        "-object", "memory-backend-ram,id=kvmffi-mem1,size=1024M", "-numa", "node,nodeid=1,memdev=kvmffi-mem1,cpus=1"]
    assert memory_mib("1536M") == 1536 and memory_mib("1024") == 1024
    import pytest
    with pytest.raises(BootError, match="equal nodes"):
        numa_args(3, 2, "2G")
    with pytest.raises(BootError, match="give MiB"):
        memory_mib("lots")


def test_tcg_runs_on_one_thread_unless_asked() -> None:
    from kvmffi.testkernel.qemu import TCG, choose_accel
    assert TCG == "tcg,thread=single"
    assert choose_accel("tcg") == TCG
    assert choose_accel("tcg,thread=multi") == "tcg,thread=multi"
    assert choose_accel("kvm") == "kvm"
    assert choose_accel("auto") in ("kvm", TCG)


def test_kvmffi_runs_pytest_with_its_session_machinery_on() -> None:
    """Whatever kvmffi's commands run, the kernel-log gate watches: `--kvmffi` turns the gate, the
    header and the leak check on for tests that use no kvmffi fixture (a user's own test that makes
    the kernel WARN fails under `kvmffi run --kernel 7.3 ./test_x.py`)."""
    from kvmffi.runner import pytest_args
    assert "--kvmffi" in pytest_args(["./test_x.py"], None, "pretty", "/dev/null", None)
    assert "--kvmffi" in pytest_args(["host"], None, "ktap", "/dev/null", None, lean=True)
