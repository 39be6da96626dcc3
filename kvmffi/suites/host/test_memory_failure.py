"""Memory failure (MADV_HWPOISON) on guest memory: what the guest and the host see afterwards.

Documentation/virt/kvm/api.rst: a guest access to a poisoned guest_memfd page is a
KVM_EXIT_MEMORY_FAULT with KVM_RUN failing with EHWPOISON. No selftest covers it. Each scenario
runs in its own process (memory_failure_scenario.py): KVM answers a poisoned page of ordinary
memory with SIGBUS to the VMM, and a poisoned page is lost to the machine until reboot, so these
run in the kvmffi test kernels (or where --kvm-destructive or KVMFFI_DESTRUCTIVE=1 says this machine
may lose pages).
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmffi import GuestMemfdFlag, Kvm
from kvmffi.hints import require_gmem_flags
from kvmffi.requirements import knobs
from kvmffi.vcpu import EHWPOISON

SCENARIO = Path(__file__).with_name("memory_failure_scenario.py")
PAGE = 4096


def need_poisoning() -> None:
    if not (os.environ.get("KVMFFI_IN_TEST_KERNEL") or knobs().destructive):
        pytest.skip("poisons pages of this machine's memory for good: runs in a kvmffi test kernel "
                    "(`kvmffi run --kernel 7.3`), or here with --kvm-destructive (KVMFFI_DESTRUCTIVE=1)")
    with open("/proc/meminfo") as f:
        if "HardwareCorrupted:" not in f.read():
            pytest.skip("this kernel has no CONFIG_MEMORY_FAILURE (the kvmffi test kernels have it)")


def run_scenario(kind: str) -> dict[str, Any]:
    r = subprocess.run([sys.executable, str(SCENARIO), kind], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the {kind} scenario failed (exit {r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_poisoned_guest_memfd_page(kvm: Kvm) -> None:
    """A guest_memfd page (MMAP|INIT_SHARED, in place) poisoned by MADV_HWPOISON. Measured on 7.3:
    the poisoning process is killed (SIGBUS); the host's access faults (HostMemoryFault, EFAULT)
    while the next page is intact; the guest's access is KVM_EXIT_MEMORY_FAULT for exactly that
    page with EHWPOISON and no signal; PUNCH_HOLE then fallocate give a fresh zero page that host
    and guest read again."""
    need_poisoning()
    with kvm.create_vm() as vm:
        require_gmem_flags(vm, GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED)
    got = run_scenario("gmem")
    assert got == {
        "kind": "gmem", "poisoning_child": "killed by SIGBUS",
        "host_read": f"HostMemoryFault errno {errno.EFAULT}", "host_read_neighbour": True,
        "guest_read": {"exit": "MEMORY_FAULT", "errno": EHWPOISON, "gpa": PAGE, "size": PAGE, "flags": 0},
        "sigbus_to_vmm": 0, "punch_hole": 0, "allocate": 0,
        "host_read_after_punch": "00" * 8, "guest_read_after_punch": "DONE"}


def test_poisoned_anonymous_page(kvm: Kvm) -> None:
    """An anonymous page of guest memory poisoned. Measured on 6.12 and 7.3: the poisoning process
    is killed; reading the page through the kernel (process_vm_readv) kills the reader with SIGBUS
    too; the next page is intact; the guest's access never completes: each KVM_RUN sends the VMM
    thread SIGBUS (BUS_MCEERR_AR, for the VMM to inject a machine check) and returns EINTR."""
    need_poisoning()
    got = run_scenario("anon")
    sigbus = got.pop("sigbus_to_vmm")
    assert got == {"kind": "anon", "poisoning_child": "killed by SIGBUS", "host_read": "child killed by SIGBUS",
                   "host_read_neighbour": True, "guest_read": {"exit": "INTR (repeated)"}}
    assert sigbus > 1, "KVM did not send the VMM SIGBUS for the poisoned page"
