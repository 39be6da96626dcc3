"""The examples in the bindings' docstrings run, on the real /dev/kvm, and close what they open."""

from __future__ import annotations

import doctest
import io
import os
from types import ModuleType

import pytest

from kvmffi import Kvm, guest_memfd, system, vcpu, vm

MODULES = [system, vm, vcpu, guest_memfd]


def _kvm_unusable() -> str | None:
    try:
        Kvm().close()
    except OSError as e:
        return str(e)
    return None


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run_and_close_what_they_open(module: ModuleType) -> None:
    reason = _kvm_unusable()
    if reason:
        pytest.skip(f"the examples need /dev/kvm: {reason}")
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{module.__name__} has no docstring example"
    out = io.StringIO()
    runner = doctest.DocTestRunner()
    for test in tests:
        before = _open_fds()
        runner.run(test, out=out.write, clear_globs=False)  # globals kept: an fd left open stays open
        left = _open_fds() - before
        test.globs.clear()
        assert not left, f"the example of {test.name} leaves fds open: {sorted(left)}"
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} examples in {module.__name__} failed:\n{out.getvalue()}"
