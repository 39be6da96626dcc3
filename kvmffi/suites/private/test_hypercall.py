"""KVM_HC_MAP_GPA_RANGE reaching userspace, and what the guest sees (CHECKLIST 44-46)."""

import pytest

from kvmffi import Kvm
from kvmffi.probes import run_map_gpa_range
from kvmffi.testvm import TEST_GPA

pytestmark = pytest.mark.private

KVM_ENOSYS = 1000


def test_map_gpa_range_exit_fields(kvm: Kvm, vm_type) -> None:
    """CHECKLIST 44: nr=12, args[0]=gpa, args[1]=npages, args[2]=attributes, long mode flag set."""
    exits = run_map_gpa_range(kvm, vm_type).exits
    assert [(e.nr, e.args[:3], e.longmode) for e in exits] == [(12, (TEST_GPA, 1, 0), True)]


def test_guest_sees_hypercall_ret(kvm: Kvm, vm_type) -> None:
    """CHECKLIST 45: run->hypercall.ret is the guest's RAX, including a negative errno."""
    seen = run_map_gpa_range(kvm, vm_type, ret=0x77).seen
    assert seen == [0x77]
    seen = run_map_gpa_range(kvm, vm_type, ret=-22).seen
    assert seen == [(1 << 64) - 22]


def test_without_exit_hypercall_the_guest_gets_enosys(kvm: Kvm, vm_type) -> None:
    """CHECKLIST 46 (verify): without KVM_CAP_EXIT_HYPERCALL, no exit; the guest gets -KVM_ENOSYS (-1000)."""
    r = run_map_gpa_range(kvm, vm_type, enable=False)
    assert r.exits == []
    assert r.seen == [(1 << 64) - KVM_ENOSYS]
