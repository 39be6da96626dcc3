"""KVM_HC_MAP_GPA_RANGE reaching userspace, and what the guest sees (behaviour 44-46)."""

import pytest

from kvmffi import Kvm
from kvmffi.probes import run_map_gpa_range
from kvmffi.testvm import TEST_GPA

pytestmark = pytest.mark.private

KVM_ENOSYS = 1000


def test_map_gpa_range_exit_fields(kvm: Kvm, vm_type) -> None:
    """behaviour 44: nr=12, args[0]=gpa, args[1]=npages, args[2]=attributes, long mode flag set, and
    run->hypercall.ret 0 as KVM leaves it."""
    exits = run_map_gpa_range(kvm, vm_type).exits
    assert [(e.nr, e.args[:3], e.longmode, e.ret) for e in exits] == [(12, (TEST_GPA, 1, 0), True, 0)]


def test_hypercall_ret_is_zero_at_the_exit_after_a_hypercall_kvm_answered(kvm: Kvm, vm_type) -> None:
    """KVM answers an unknown hypercall itself (-KVM_ENOSYS; from 6.14 it writes that answer to
    run->hypercall.ret too); at the next KVM_EXIT_HYPERCALL run->hypercall.ret must be 0, and a VMM that
    re-enters without writing it gives the guest 0 (9a1dfeff4414, v6.14; before it, the value left
    there reached the guest). Nothing here writes ret: the guest gets what KVM left."""
    r = run_map_gpa_range(kvm, vm_type, ret=None, after_unknown=True)
    assert [(e.nr, e.ret) for e in r.exits] == [(12, 0)], \
        f"run->hypercall.ret at the exit: {[hex(e.ret) for e in r.exits]} (must be 0)"
    assert r.seen == [(1 << 64) - KVM_ENOSYS, 0], f"the guest's hypercalls returned {[hex(v) for v in r.seen]}"


def test_guest_sees_hypercall_ret(kvm: Kvm, vm_type) -> None:
    """behaviour 45: run->hypercall.ret is the guest's RAX, including a negative errno."""
    seen = run_map_gpa_range(kvm, vm_type, ret=0x77).seen
    assert seen == [0x77]
    seen = run_map_gpa_range(kvm, vm_type, ret=-22).seen
    assert seen == [(1 << 64) - 22]


def test_without_exit_hypercall_the_guest_gets_enosys(kvm: Kvm, vm_type) -> None:
    """behaviour 46 (verify): without KVM_CAP_EXIT_HYPERCALL, no exit; the guest gets -KVM_ENOSYS (-1000)."""
    r = run_map_gpa_range(kvm, vm_type, enable=False)
    assert r.exits == []
    assert r.seen == [(1 << 64) - KVM_ENOSYS]
