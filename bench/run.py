#!/usr/bin/env python3
"""kvmffi benchmarks, each side by side with two C references in the same run, interleaved.

    python bench/run.py [--json] [--iterations N] [--bringups R] [--vms V] [--rounds K]

ucall_roundtrip  GUEST_SYNC round trip through TestVm.run (KVM_RUN, IO exit, RDI, ucall decode)
                 against bench/ucall_ref.c on the same guest bytes, two ways: as the KVM
                 selftests' library does it (KVM_RUN, KVM_GET_REGS, read struct ucall) and the
                 best C (KVM_CAP_SYNC_REGS: RDI from kvm_run, no second ioctl)
                 and, for scale, the least any Python can do per round trip: a bare loop of
                 fcntl.ioctl(KVM_RUN) on the same guest, nothing read (python_bare_us)
bringup          VM + memory + program + page tables + vCPU + registers, run to the first
                 ucall, tear down; against the C program doing the same from kvmffi's image
vm_overhead_kib  host memory (USS) per extra TestVm beyond its resident guest memory

ratio_vs_selftests = c_selftests_us / kvmffi_us, ratio_vs_best = c_best_us / kvmffi_us (1.0 is as
fast as that C); ratio = ratio_vs_best. Each side's figure is its best round (--rounds).
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvmffi import Kvm, _ffi, _ioctls  # noqa: E402
from kvmffi.testvm import TestVm  # noqa: E402


def build_ref(tmp: Path) -> Path:
    exe = tmp / "ucall_ref"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "ucall_ref.c")], check=True)
    return exe


def write_state(kvm: Kvm, path: Path, iterations: int) -> None:
    """The guest as kvmffi sets it up: registers and low memory, for the C reference."""
    with TestVm("sync_loop", kvm=kvm) as t:
        t.set_param("iterations", iterations)
        v = t.vcpus[0]
        _, _, sregs = _ffi.ioctl_bytes(v.fileno(), _ioctls.KVM_GET_SREGS, "struct kvm_sregs")
        _, _, regs = _ffi.ioctl_bytes(v.fileno(), _ioctls.KVM_GET_REGS, "struct kvm_regs")
        assert t.low is not None
        a = t.abi
        path.write_bytes(struct.pack("<4Q", t.low_size, a.port, a.sync, a.done) + sregs + regs
                         + bytes(t.low[:0x200000]))


def c_measure(exe: Path, state: Path, mode: str, how: str, n: int) -> float:
    out = subprocess.run([str(exe), str(state), mode, how, str(n)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def py_ucall(kvm: Kvm, iterations: int) -> float:
    with TestVm("sync_loop", kvm=kvm) as t:
        t.set_param("iterations", iterations)
        v = t.vcpus[0]
        v.run()  # warm up: the first SYNC, as the C side does
        t0 = time.perf_counter()
        t.run()
        dt = time.perf_counter() - t0
    return dt * 1e6 / iterations  # iterations - 1 SYNCs + DONE


def py_bare(kvm: Kvm, iterations: int) -> float:
    """fcntl.ioctl(KVM_RUN) in a loop on the same guest: no exit decoded, no ucall read."""
    with TestVm("sync_loop", kvm=kvm) as t:
        t.set_param("iterations", iterations)
        v = t.vcpus[0]
        v.run()
        fd, ioctl, run = v.fileno(), fcntl.ioctl, _ioctls.KVM_RUN
        t0 = time.perf_counter()
        for _ in range(iterations - 1):
            ioctl(fd, run, 0)
        return (time.perf_counter() - t0) * 1e6 / (iterations - 1)


def py_bringup(kvm: Kvm, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        with TestVm("sync_loop", kvm=kvm) as t:
            t.vcpus[0].run()
    return (time.perf_counter() - t0) * 1e6 / reps


def vm_overhead_kib(kvm: Kvm, n: int) -> float:
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_full_info().uss
    vms = [TestVm("sync_loop", kvm=kvm) for _ in range(n)]
    for t in vms:
        t.vcpus[0].run()
    after = proc.memory_full_info().uss
    lows = {t.low.addr for t in vms if t.low is not None}
    guest = sum(m.rss for m in proc.memory_maps(grouped=False) if int(m.addr.split("-")[0], 16) in lows)
    for t in vms:
        t.close()
    return (after - before - guest) / n / 1024


def _figures(times: dict[str, list[float]]) -> dict[str, float]:
    """Each side's best round and median, and the ratios (C time / kvmffi time) of the best rounds."""
    best = {k: min(v) for k, v in times.items()}
    out = {f"{k}_us": best[k] for k in times}
    out.update({f"{k}_median_us": statistics.median(v) for k, v in times.items()})
    out["ratio_vs_selftests"] = best["c_selftests"] / best["kvmffi"]
    out["ratio_vs_best"] = out["ratio"] = best["c_best"] / best["kvmffi"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--bringups", type=int, default=50)
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best of each side counts")
    a = ap.parse_args()
    with Kvm() as kvm, tempfile.TemporaryDirectory(prefix="kvmffi-bench-") as tmp:
        tmpd = Path(tmp)
        exe = build_ref(tmpd)
        state = tmpd / "state"
        write_state(kvm, state, a.iterations)
        py_bringup(kvm, 3)  # warm caches (guest build, ELF parse) for both sides alike
        sides = ("kvmffi", "c_selftests", "c_best")
        uc: dict[str, list[float]] = {k: [] for k in sides}
        bu: dict[str, list[float]] = {k: [] for k in sides}
        bare: list[float] = []
        for _ in range(a.rounds):  # interleaved, so drift on the machine hits every side
            uc["c_selftests"].append(c_measure(exe, state, "ucall", "selftests", a.iterations))
            uc["kvmffi"].append(py_ucall(kvm, a.iterations))
            uc["c_best"].append(c_measure(exe, state, "ucall", "best", a.iterations))
            bare.append(py_bare(kvm, a.iterations))
            bu["c_selftests"].append(c_measure(exe, state, "bringup", "selftests", a.bringups))
            bu["kvmffi"].append(py_bringup(kvm, a.bringups))
            bu["c_best"].append(c_measure(exe, state, "bringup", "best", a.bringups))
        res: dict[str, Any] = {
            "host": {"kernel": os.uname().release, "cpu_count": os.cpu_count(), "rounds": a.rounds},
            "ucall_roundtrip": dict(_figures(uc), iterations=a.iterations, python_bare_us=min(bare),
                                    ratio_bare_vs_best=min(uc["c_best"]) / min(bare)),
            "bringup": dict(_figures(bu), reps=a.bringups),
            "vm_overhead_kib": vm_overhead_kib(kvm, a.vms),
        }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for name, key in (("ucall round trip", "ucall_roundtrip"), ("bring-up", "bringup")):
            r = res[key]
            print(f"{name:<17} kvmffi {r['kvmffi_us']:.2f} us; C selftests-style {r['c_selftests_us']:.2f} us "
                  f"(ratio {r['ratio_vs_selftests']:.3f}); best C {r['c_best_us']:.2f} us (ratio {r['ratio_vs_best']:.3f})")
        r = res["ucall_roundtrip"]
        print(f"bare Python KVM_RUN loop {r['python_bare_us']:.2f} us (best C / bare {r['ratio_bare_vs_best']:.3f})")
        print(f"host memory per extra VM beyond guest memory: {res['vm_overhead_kib']:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
