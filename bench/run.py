#!/usr/bin/env python3
"""kvmffi benchmarks, each side by side with a C reference in the same run.

    python bench/run.py [--json] [--iterations N] [--bringups R] [--vms V]

ucall_roundtrip  GUEST_SYNC round trip through TestVm.run (KVM_RUN, IO exit, KVM_GET_REGS,
                 ucall decode) against bench/ucall_ref.c doing the same on the same guest bytes
bringup          VM + memory + program + page tables + vCPU + registers, run to the first
                 ucall, tear down; against the C program doing the same from kvmffi's image
vm_overhead_kib  host memory (USS) per extra TestVm beyond its resident guest memory

ratio = c_us / kvmffi_us: 1.0 is as fast as C.
"""

from __future__ import annotations

import argparse
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

from kvmffi import Kvm, _ffi  # noqa: E402
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
        _, _, sregs = _ffi.ioctl_bytes(v.fileno(), _ffi.KVM_GET_SREGS, "struct kvm_sregs")
        _, _, regs = _ffi.ioctl_bytes(v.fileno(), _ffi.KVM_GET_REGS, "struct kvm_regs")
        assert t.low is not None
        path.write_bytes(struct.pack("<Q", t.low_size) + sregs + regs
                         + bytes(t.low[:0x200000]))


def c_measure(exe: Path, state: Path, mode: str, n: int) -> float:
    out = subprocess.run([str(exe), str(state), mode, str(n)], check=True, capture_output=True, text=True).stdout
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


def best_of(fn, rounds: int) -> float:  # type: ignore[no-untyped-def]
    return min(fn() for _ in range(rounds))


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
        uc_c, uc_py, bu_c, bu_py = [], [], [], []
        for _ in range(a.rounds):  # interleaved, so drift on the machine hits both sides
            uc_c.append(c_measure(exe, state, "ucall", a.iterations))
            uc_py.append(py_ucall(kvm, a.iterations))
            bu_c.append(c_measure(exe, state, "bringup", a.bringups))
            bu_py.append(py_bringup(kvm, a.bringups))
        res: dict[str, Any] = {
            "host": {"kernel": os.uname().release, "cpu_count": os.cpu_count()},
            "ucall_roundtrip": {"kvmffi_us": min(uc_py), "c_us": min(uc_c), "ratio": min(uc_c) / min(uc_py),
                                "kvmffi_median_us": statistics.median(uc_py), "c_median_us": statistics.median(uc_c),
                                "iterations": a.iterations},
            "bringup": {"kvmffi_us": min(bu_py), "c_us": min(bu_c), "ratio": min(bu_c) / min(bu_py),
                        "kvmffi_median_us": statistics.median(bu_py), "c_median_us": statistics.median(bu_c),
                        "reps": a.bringups},
            "vm_overhead_kib": vm_overhead_kib(kvm, a.vms),
        }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        u, b = res["ucall_roundtrip"], res["bringup"]
        print(f"ucall round trip: kvmffi {u['kvmffi_us']:.2f} us, C {u['c_us']:.2f} us, ratio {u['ratio']:.3f}")
        print(f"bring-up:         kvmffi {b['kvmffi_us']:.0f} us, C {b['c_us']:.0f} us, ratio {b['ratio']:.3f}")
        print(f"host memory per extra VM beyond guest memory: {res['vm_overhead_kib']:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
