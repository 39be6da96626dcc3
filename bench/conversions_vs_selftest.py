#!/usr/bin/env python3
"""kvmffi's ported private_mem_conversions scenario against the kernel's own
private_mem_conversions_test, built from the same Debian source package, in one boot of that kernel.

    python bench/conversions_vs_selftest.py --version 7.3 [--json]

On the host it builds (or reuses) the test kernel and the selftest (``make headers_install`` is
part of the kernel build; the selftest is made from the same tree into the cache), then boots the
kernel once and runs this script inside (``--inside SELFTEST``), which measures, best of three:

  selftest_s          the selftest process
  scenario_s          kvmffi's scenario alone, inside an already started Python
  pytest_s            the whole pytest process that runs that one scenario
  pytest_startup_s    a pytest process that only collects it (Python, pytest and kvmffi starting)
  python_s            ``python -c pass``: the interpreter starting
  import_pytest_s     ``python -c "import pytest"``: with the scenario, the least any pytest process
                      that runs it can take here (``pytest_floor_s``)
  boot_s              QEMU start to the command (from the host)

Both sides with defaults: one vCPU, one memslot, anonymous shared memory, conversions through
KVM_HC_MAP_GPA_RANGE with and without fallocate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvmffi.runner import pytest_args  # noqa: E402
from kvmffi.suites import TIERS  # noqa: E402

TEST = "private_mem_conversions_test"


def wall(cmd: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # as `kvmffi run` does in the test kernel
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.monotonic() - t0, r.returncode


def inside(selftest: str) -> dict[str, float | int]:
    """In the test kernel: time the selftest, the scenario and the pytest processes."""
    st_s, st_rc = min(wall([selftest]) for _ in range(3))
    node = str(TIERS["private"] / "test_conversions.py") + "::test_conversions"
    base = [sys.executable, *pytest_args([node], "hypercall", "pretty", os.devnull, None, lean=True)]  # as `kvmffi run`
    startup_s, _ = min(wall(base + ["--collect-only"]) for _ in range(3))
    python_s, _ = min(wall([sys.executable, "-c", "pass"]) for _ in range(3))
    import_pytest_s, _ = min(wall([sys.executable, "-c", "import pytest"]) for _ in range(3))
    pytest_s, pytest_rc = min(wall(base) for _ in range(3))
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
    return {"selftest_s": st_s, "selftest_rc": st_rc, "scenario_s": best, "pytest_s": pytest_s,
            "pytest_rc": pytest_rc, "pytest_startup_s": startup_s, "python_s": python_s,
            "import_pytest_s": import_pytest_s}


def build_selftest(version: str) -> tuple[Path, Path]:
    """(the test kernel image, the selftest binary) for Debian's linux-source-VERSION."""
    from kvmffi.cache import cache_dir
    from kvmffi.testkernel import build_kernel
    from kvmffi.testkernel.build import headers_dir
    from kvmffi.testkernel.sources import kernel_source
    image = build_kernel(None, version=version)
    src = kernel_source(version)
    kvm_dir = src.tree / "tools" / "testing" / "selftests" / "kvm"
    arch = "x86" if (kvm_dir / "x86" / f"{TEST}.c").exists() else "x86_64"
    out = cache_dir() / "selftests" / hashlib.sha256(f"{src.label}".encode()).hexdigest()[:16]
    exe = out / arch / TEST
    if not exe.exists():
        print(f"building {arch}/{TEST} from {src.label}", file=sys.stderr)
        r = subprocess.run(["make", "-C", str(kvm_dir), f"-j{os.cpu_count() or 1}", f"OUTPUT={out}",
                            f"KHDR_INCLUDES=-isystem {headers_dir(image)}", str(exe)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0 or not exe.exists():
            raise SystemExit(f"building the selftest failed:\n{r.stderr[-3000:]}")
    return image, exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", default="7.3", help="Debian kernel source version (default 7.3)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--inside", metavar="SELFTEST", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        print("KVMFFI-BENCH " + json.dumps(inside(a.inside)), flush=True)
        return 0
    from kvmffi.runner import prepare_test_kernel
    from kvmffi.testkernel import boot
    image, exe = build_selftest(a.version)
    prepare_test_kernel(["private/test_conversions.py::test_conversions"], os.getcwd())
    r = boot(image, [sys.executable, str(Path(__file__).resolve()), "--inside", str(exe)], timeout=900)
    lines = [line for line in r.output if line.startswith("KVMFFI-BENCH ")]
    if r.returncode != 0 or not lines:
        print("\n".join(r.output[-30:]), file=sys.stderr)
        return 1
    res = json.loads(lines[-1].split(" ", 1)[1])
    res.update(version=a.version, boot_s=r.boot_seconds, ratio_pytest=res["pytest_s"] / res["selftest_s"],
               ratio_scenario=res["scenario_s"] / res["selftest_s"],
               pytest_floor_s=res["import_pytest_s"] + res["scenario_s"])
    res["ratio_pytest_floor"] = res["pytest_floor_s"] / res["selftest_s"]
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{a.version}: boot {res['boot_s']:.1f} s; selftest {res['selftest_s']:.2f} s; kvmffi scenario "
              f"{res['scenario_s']:.2f} s ({res['ratio_scenario']:.2f}x); pytest process {res['pytest_s']:.2f} s "
              f"({res['ratio_pytest']:.2f}x), of which starting and collecting {res['pytest_startup_s']:.2f} s; "
              f"python -c pass {res['python_s']:.2f} s, import pytest {res['import_pytest_s']:.2f} s: no pytest process "
              f"can run the scenario in less than {res['pytest_floor_s']:.2f} s ({res['ratio_pytest_floor']:.2f}x)")
    return 0 if res["selftest_rc"] == 0 and res["pytest_rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
