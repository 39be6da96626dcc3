"""VM-level behaviour: running with no memory, memory attributes on a VM without them (behaviour 36, 39)."""

import errno

from kvmffi import Cap, ExitReason, InternalErrorExit, Kvm, MemoryAttribute, Vm, VmType, memory
from kvmffi.testing import expect_errno

KVM_INTERNAL_ERROR_EMULATION = 1


def test_run_with_no_memslots(vm: Vm) -> None:
    """behaviour 36: KVM_RUN with zero memslots exits with KVM_EXIT_INTERNAL_ERROR (emulation failure
    at the reset vector), after KVM_SET_NR_MMU_PAGES as the selftests do: without it a shadow MMU
    (kvm_pvm's, or upstream's with tdp_mmu=0) has no pages and fails KVM_RUN with ENOSPC instead.
    Measured: 6.18 kvm_pvm, 6.12 and 7.3 (kvm_amd, nested).
    """
    vm.set_nr_mmu_pages(64)
    ex = vm.create_vcpu(0).run()
    assert isinstance(ex, InternalErrorExit), f"expected KVM_EXIT_INTERNAL_ERROR, got {ex!r}"
    assert ex.reason is ExitReason.INTERNAL_ERROR
    assert ex.suberror == KVM_INTERNAL_ERROR_EMULATION


def test_run_with_no_memory_at_reset_vector_is_internal_error(vm: Vm) -> None:
    """A memslot exists but not at the reset vector (0xfffffff0): emulation failure exit."""
    with memory.anonymous(0x1000) as page:
        vm.set_user_memory_region(0, 1 << 32, 0x1000, page.addr)
        ex = vm.create_vcpu(0).run()
        assert isinstance(ex, InternalErrorExit), f"expected KVM_EXIT_INTERNAL_ERROR, got {ex!r}"
        assert ex.suberror == KVM_INTERNAL_ERROR_EMULATION
        vm.close()


def test_set_memory_attributes_private_on_default_vm(kvm: Kvm) -> None:
    """behaviour 39: a DEFAULT VM cannot have private memory.

    Where the kernel has no memory attributes at all (KVM_CAP_MEMORY_ATTRIBUTES = 0 on
    /dev/kvm, as on this host) the ioctl does not exist: ENOTTY. Where it exists, a DEFAULT
    VM supports no attributes: EINVAL.
    """
    with kvm.create_vm(VmType.DEFAULT) as vm:
        assert vm.check_extension(Cap.MEMORY_ATTRIBUTES) & MemoryAttribute.PRIVATE == 0
        want = errno.ENOTTY if kvm.check_extension(Cap.MEMORY_ATTRIBUTES) == 0 else errno.EINVAL
        expect_errno(want, "KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) on a DEFAULT VM",
                     vm.set_memory_attributes, 0, 0x1000, MemoryAttribute.PRIVATE)


def test_vm_close_closes_vcpus_and_is_idempotent(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    v0, v1 = vm.create_vcpu(0), vm.create_vcpu(1)
    vm.close()
    vm.close()
    assert v0.closed and v1.closed and vm.closed


def test_duplicate_vcpu_id_fails(vm: Vm) -> None:
    vm.create_vcpu(0)
    expect_errno(errno.EEXIST, "second vCPU with id 0", vm.create_vcpu, 0)


def test_bad_fd_errors(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    vm.close()
    import pytest
    with pytest.raises(ValueError, match="Vm is closed"):
        vm.check_extension(Cap.GUEST_MEMFD)
