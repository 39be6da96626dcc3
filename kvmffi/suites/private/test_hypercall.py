"""KVM_HC_MAP_GPA_RANGE reaching userspace, and what the guest sees (CHECKLIST 44-46)."""

import pytest
from kvmffi import Cap, HypercallExit, Kvm
from kvmffi.testvm import TEST_GPA, TestVm

pytestmark = pytest.mark.private

S_HYPERCALL = 12
KVM_ENOSYS = 1000


def _run(kvm: Kvm, vm_type, enable: bool, ret: int = 0):  # noqa: ANN001, ANN202
    exits: list[HypercallExit] = []
    seen: list[int] = []

    def on_exit(vcpu, ex) -> bool:  # noqa: ANN001
        if isinstance(ex, HypercallExit):
            exits.append(ex)
            ex.set_ret(ret)
            return True
        return False

    with TestVm("scenarios", kvm=kvm, vm_type=vm_type, timeout=30) as t:
        assert t.vm is not None
        if enable:
            t.vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << 12)
        t.set_param("scenario", S_HYPERCALL)
        t.set_param("test_gpa", TEST_GPA)
        t.run(on_sync=lambda v, a: seen.append(a[1]), on_exit=on_exit)
    return exits, seen


def test_map_gpa_range_exit_fields(kvm: Kvm, vm_type) -> None:  # noqa: ANN001
    """CHECKLIST 44: nr=12, args[0]=gpa, args[1]=npages, args[2]=attributes, long mode flag set."""
    exits, _ = _run(kvm, vm_type, enable=True)
    assert [(e.nr, e.args[:3], e.longmode) for e in exits] == [(12, (TEST_GPA, 1, 0), True)]


def test_guest_sees_hypercall_ret(kvm: Kvm, vm_type) -> None:  # noqa: ANN001
    """CHECKLIST 45: run->hypercall.ret is the guest's RAX, including a negative errno."""
    _, seen = _run(kvm, vm_type, enable=True, ret=0x77)
    assert seen == [0x77]
    _, seen = _run(kvm, vm_type, enable=True, ret=-22)
    assert seen == [(1 << 64) - 22]


def test_without_exit_hypercall_the_guest_gets_enosys(kvm: Kvm, vm_type) -> None:  # noqa: ANN001
    """CHECKLIST 46 (verify): without KVM_CAP_EXIT_HYPERCALL, no exit; the guest gets -KVM_ENOSYS (-1000)."""
    exits, seen = _run(kvm, vm_type, enable=False)
    assert exits == []
    assert seen == [(1 << 64) - KVM_ENOSYS]
