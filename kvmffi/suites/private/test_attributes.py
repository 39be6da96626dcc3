"""KVM_SET_MEMORY_ATTRIBUTES on a VM with private memory (behaviour 37-41)."""

import errno

import pytest

from kvmffi import Cap, Kvm, MemoryAttribute, Vm, VmType
from kvmffi.testing import expect_errno

pytestmark = pytest.mark.private

PAGE = 4096
GPA = 1 << 32


def test_cap_reports_private_per_vm_type(kvm: Kvm, vm: Vm) -> None:
    """behaviour 37: PRIVATE (bit 3) on a private VM fd and system-wide; 0 on a DEFAULT VM fd."""
    assert vm.check_extension(Cap.MEMORY_ATTRIBUTES) == MemoryAttribute.PRIVATE
    assert kvm.check_extension(Cap.MEMORY_ATTRIBUTES) & MemoryAttribute.PRIVATE
    with kvm.create_vm(VmType.DEFAULT) as default:
        assert default.check_extension(Cap.MEMORY_ATTRIBUTES) == 0


BAD = [
    ("flags=1", dict(gpa=GPA, size=PAGE, attributes=MemoryAttribute.PRIVATE, flags=1)),
    ("flags=1<<63", dict(gpa=GPA, size=PAGE, attributes=0, flags=1 << 63)),
    ("size 0", dict(gpa=GPA, size=0, attributes=MemoryAttribute.PRIVATE)),
    ("unaligned gpa", dict(gpa=GPA + 1, size=PAGE, attributes=MemoryAttribute.PRIVATE)),
    ("unaligned size", dict(gpa=GPA, size=PAGE + 1, attributes=MemoryAttribute.PRIVATE)),
    ("gpa+size overflows", dict(gpa=(1 << 64) - PAGE, size=2 * PAGE, attributes=MemoryAttribute.PRIVATE)),
] + [(f"attribute bit {b}", dict(gpa=GPA, size=PAGE, attributes=1 << b)) for b in range(64) if b != 3]


@pytest.mark.parametrize("what,args", BAD, ids=[b[0] for b in BAD])
def test_invalid_attributes_fail(vm: Vm, what: str, args: dict) -> None:
    """behaviour 38: every malformed request is EINVAL."""
    expect_errno(errno.EINVAL, f"KVM_SET_MEMORY_ATTRIBUTES with {what}", vm.set_memory_attributes, **args)


def test_private_on_default_vm_fails_here(kvm: Kvm) -> None:
    """behaviour 39 where the ioctl exists: a DEFAULT VM supports no attributes, EINVAL."""
    with kvm.create_vm(VmType.DEFAULT) as default:
        expect_errno(errno.EINVAL, "PRIVATE on a DEFAULT VM", default.set_memory_attributes, GPA, PAGE,
                     MemoryAttribute.PRIVATE)


def test_attributes_need_no_memslot(vm: Vm) -> None:
    """behaviour 40 (verify): attributes are per GPA: setting them where no memslot exists succeeds."""
    assert vm.memslots == {}
    vm.set_private(GPA, 16 * PAGE)
    vm.set_private(1 << 40, 2 << 20)
    vm.set_shared(GPA + 4 * PAGE, PAGE)


def test_setting_attributes_is_idempotent(vm: Vm) -> None:
    """behaviour 41: the same request twice succeeds twice, in both directions."""
    for _ in range(2):
        vm.set_private(GPA, 4 * PAGE)
    for _ in range(2):
        vm.set_shared(GPA, 4 * PAGE)
