"""fixcheck's verdict from the two states' runs."""

from kvmffi.fixcheck import CANNOT_TELL, CATCHES, EXIT_CODES, FAILS_WITHOUT, NOT_CAUGHT, StateRun, judge
from kvmffi.runner import TierResult


def state(**outcomes: str) -> StateRun:
    t = TierResult("host tier", "here")
    t.outcomes = dict(outcomes)
    t.totals = {k: 0 for k in ("pass", "fail", "xfail", "xpass", "skip", "error")}
    for o in outcomes.values():
        t.totals[{"passed": "pass", "failed": "fail", "skipped": "skip"}[o]] += 1
    return StateRun("img", tiers=[t])


def test_verdicts_and_exit_codes() -> None:
    ok = state(a="passed", b="passed")
    assert judge(ok, state(a="passed", b="failed"))[0] == CATCHES
    assert judge(ok, ok)[0] == NOT_CAUGHT
    assert judge(state(a="failed"), state(a="failed"))[0] == FAILS_WITHOUT
    assert judge(ok, StateRun(error="build failed: make bzImage"))[0] == CANNOT_TELL
    assert judge(state(a="skipped"), state(a="skipped"))[0] == CANNOT_TELL
    assert EXIT_CODES == {CATCHES: 0, NOT_CAUGHT: 1, FAILS_WITHOUT: 2, CANNOT_TELL: 125}


def test_the_catching_tests_are_named() -> None:
    why = judge(state(a="passed", b="passed"), state(a="passed", b="failed"))[1]
    assert "1 test(s) fail with the bug" in why and "b" in why


def test_a_kernel_that_dies_running_the_selection_is_caught_one_that_does_not_boot_cannot_tell() -> None:
    ok = state(a="passed")
    died = StateRun("img", tiers=[TierResult("host tier", "x", infra_error="the kernel stopped before the command "
                                             "finished (QEMU exit 0)\n  last console lines: ...")])
    hung = StateRun("img", tiers=[TierResult("host tier", "x", infra_error="timed out after 1800 s (while running "
                                             "the command)")])
    no_boot = StateRun("img", tiers=[TierResult("host tier", "x", infra_error="the kernel did not boot to the "
                                                "command (QEMU exit 1)")])
    assert judge(ok, died)[0] == CATCHES and judge(ok, hung)[0] == CATCHES
    assert judge(ok, no_boot)[0] == CANNOT_TELL
