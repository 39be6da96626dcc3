"""`kvmffi caps` tells the truth about this host: compared with direct questions to the kernel."""

import json
import os
import subprocess
import sys

from kvmffi import Cap, Kvm, VmType
from kvmffi.kernels import VENDOR_MODULES


def test_caps_json_matches_the_kernel(kvm: Kvm) -> None:
    out = subprocess.run([sys.executable, "-m", "kvmffi", "caps", "--json", "--no-probes"], capture_output=True,
                         text=True, check=True).stdout
    caps = json.loads(out)
    loaded = [m for m in VENDOR_MODULES if os.path.isdir(f"/sys/module/{m}")]
    flags = open("/proc/cpuinfo").read()
    in_use = [m for m in loaded if m == "kvm_pvm" or (m == "kvm_amd" and " svm" in flags)
              or (m == "kvm_intel" and " vmx" in flags)]
    # built-in kvm_intel and kvm_amd both appear in /sys/module; the one in use has its CPU flag
    assert caps["vendor_module"] == (in_use[0] if in_use else loaded[0] if loaded else "")
    assert caps["kernel"] == os.uname().release
    assert caps["api_version"] == kvm.api_version == 12
    for c in (Cap.GUEST_MEMFD, Cap.MEMORY_ATTRIBUTES, Cap.VM_TYPES, Cap.GUEST_MEMFD_FLAGS, Cap.NR_MEMSLOTS):
        assert caps["system"][c.name] == kvm.check_extension(c), c.name
    types = [VmType(v["value"]) for v in caps["per_vm_type"]]
    assert types == kvm.vm_types()
    for v in caps["per_vm_type"]:
        with kvm.create_vm(v["value"]) as vm:
            assert v["guest_memfd_flags"] == vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
            assert v["memory_attributes"] == vm.check_extension(Cap.MEMORY_ATTRIBUTES)
            assert v["guest_memfd"] == vm.check_extension(Cap.GUEST_MEMFD)


def test_caps_table_names_the_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "kvmffi", "caps", "--no-probes"], capture_output=True, text=True,
                         check=True).stdout
    assert "per VM type (KVM_CHECK_EXTENSION on a VM fd):" in out
    assert "KVM_CAP_GUEST_MEMFD " in out


def test_vm_types_offered_match_the_mmu_mode(kvm: Kvm) -> None:
    """Without the TDP MMU (kvm.tdp_mmu=0, or shadow paging with npt=0 / ept=0) KVM must not offer
    KVM_X86_SW_PROTECTED_VM in KVM_CAP_VM_TYPES, and KVM_CREATE_VM(1) fails with EINVAL ("KVM: x86/mmu:
    Restrict KVM_SW_PROTECTED_VM to the TDP MMU", a1176ef5c92a, v6.8; the matrix's 7.3-tdp-mmu-off and
    7.3-shadow-mmu configurations run it)."""
    import errno

    import pytest

    from kvmffi import errno_of
    from kvmffi.kernels import mmu_mode
    mode = mmu_mode()
    if mode.private_vm_types_possible is not False:
        pytest.skip(f"KVM runs guests with {mode}: private VM types may be offered here (the matrix's "
                    "kvm.tdp_mmu=0 and npt=0 configurations check they are withheld)")
    types = kvm.check_extension(Cap.VM_TYPES)
    assert not types & (1 << VmType.SW_PROTECTED), \
        f"KVM_CAP_VM_TYPES = {types:#x} offers KVM_X86_SW_PROTECTED_VM with {mode}"
    got = errno_of(kvm.create_vm, VmType.SW_PROTECTED)
    assert got == errno.EINVAL, f"KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM) with {mode}: errno {got} (want EINVAL)"
