"""bench/run.py still runs and reports what the README quotes (structure only: no timing thresholds)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_json_has_the_documented_keys() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--json", "--iterations", "200",
                          "--bringups", "2", "--vms", "2", "--rounds", "1"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    res = json.loads(out)
    for key in ("ucall_roundtrip", "bringup"):
        r = res[key]
        assert r["kvmffi_us"] > 0 and r["c_selftests_us"] > 0 and r["c_best_us"] > 0
        assert r["ratio_vs_selftests"] == r["c_selftests_us"] / r["kvmffi_us"]
        assert r["ratio_vs_best"] == r["ratio"] == r["c_best_us"] / r["kvmffi_us"]
    u = res["ucall_roundtrip"]
    assert u["python_bare_us"] > 0 and u["ratio_bare_vs_best"] == u["c_best_us"] / u["python_bare_us"]
    assert res["vm_overhead_kib"] == res["vm_overhead_kib"]  # a number, not NaN
