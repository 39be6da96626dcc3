#!/usr/bin/env python3
"""Inside the test kernel: kvmffi's ported private_mem_conversions scenario against the kernel's
own x86_64/private_mem_conversions_test (built from the same source package), in the same boot.

    kvmffi vm -- python bench/conversions_vs_selftest.py SELFTEST [--json]

Both with defaults: one vCPU, one memslot, anonymous shared memory, conversions through
KVM_HC_MAP_GPA_RANGE with and without fallocate. Wall times of whole processes, and of the
scenario alone inside Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from kvmffi.suites import TIERS

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def wall(cmd: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # as `kvmffi run` does in the test kernel
    r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.monotonic() - t0, r.returncode


def main() -> int:
    selftest = sys.argv[1]
    st_s, st_rc = min(wall([selftest]) for _ in range(3))
    py = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "kvmffi.pytest_plugin",
          str(TIERS["private"] / "test_conversions.py") + "::test_conversions", "-k", "hypercall"]
    pytest_s, pytest_rc = min(wall(py) for _ in range(3))
    from kvmffi import Kvm, VmType
    from kvmffi.suites.private.conversions import run_conversions
    from kvmffi.testvm import install_kick_handler
    install_kick_handler()
    with Kvm() as kvm:
        best = 1e9
        for _ in range(3):
            t0 = time.monotonic()
            for fallocate in (False, True):
                run_conversions(kvm, VmType.SW_PROTECTED, use_hypercall=True, fallocate=fallocate)
            best = min(best, time.monotonic() - t0)
    res = {"selftest_s": st_s, "selftest_rc": st_rc, "kvmffi_pytest_process_s": pytest_s,
           "kvmffi_pytest_rc": pytest_rc, "kvmffi_scenario_s": best,
           "ratio_scenario": best / st_s, "ratio_process": pytest_s / st_s}
    print(json.dumps(res, indent=2) if "--json" in sys.argv else
          f"kernel selftest {st_s:.2f} s (exit {st_rc}); kvmffi scenario {best:.2f} s "
          f"({best / st_s:.2f}x); kvmffi pytest process {pytest_s:.2f} s ({pytest_s / st_s:.2f}x, exit {pytest_rc})")
    return 0 if st_rc == 0 and pytest_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
