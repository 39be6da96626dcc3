"""Memory-fault exits for private GPAs (x86/private_mem_kvm_exits_test; behaviour 42, 43, 54)."""

import errno
import threading
import time

import pytest

from kvmffi import Kvm, MemoryFaultExit, MemoryFaultFlag
from kvmffi.testvm import TEST_GPA, GuestException, TestVm

pytestmark = pytest.mark.private

PAGE = 4096


def test_private_gpa_in_slot_without_guest_memfd(kvm: Kvm, vm_type) -> None:
    """behaviour 42: KVM_RUN -1/EFAULT with KVM_EXIT_MEMORY_FAULT, flags PRIVATE, the page's gpa and size."""
    with TestVm("read_loop", kvm=kvm, vm_type=vm_type) as t:
        t.add_memory(TEST_GPA, 2 << 20, "anon")
        assert t.vm is not None
        t.vm.set_private(TEST_GPA, 2 << 20)
        t.set_param("test_gpa", TEST_GPA + 3 * PAGE + 8)
        ex = t.run_until_exit()
    assert isinstance(ex, MemoryFaultExit), f"expected KVM_EXIT_MEMORY_FAULT, got {ex!r}"
    assert (ex.flags, ex.gpa, ex.size, ex.errno) == (MemoryFaultFlag.PRIVATE, TEST_GPA + 3 * PAGE, PAGE, 14)


def test_memslot_deleted_while_guest_reads_private_memory(kvm: Kvm, vm_type) -> None:
    """behaviour 43: delete the guest_memfd slot under a vCPU reading private memory: memory-fault exit."""
    with TestVm("read_loop", kvm=kvm, vm_type=vm_type, timeout=60) as t:
        mem = t.add_memory(TEST_GPA, 2 << 20, "gmem")
        assert t.vm is not None
        t.vm.set_private(TEST_GPA, 2 << 20)
        t.set_param("test_gpa", TEST_GPA)
        t.set_param("forever", 1)
        result: list[object] = []
        started = threading.Event()

        def vcpu_thread() -> None:
            try:
                result.append(t.run_until_exit(on_sync=lambda v, a: started.set()))
            except BaseException as e:  # reported below
                result.append(e)

        th = threading.Thread(target=vcpu_thread, name="kvmffi-test-vcpu")
        th.start()
        try:
            assert started.wait(30), "the guest did not start"
            time.sleep(0.2)  # let it read private memory for a while
            t.delete_memory(mem)
        finally:
            th.join(90)
        assert not th.is_alive()
    ex = result[0]
    assert isinstance(ex, MemoryFaultExit), f"expected KVM_EXIT_MEMORY_FAULT, got {ex!r}"
    assert (ex.flags, ex.gpa, ex.size, ex.errno) == (MemoryFaultFlag.PRIVATE, TEST_GPA, PAGE, errno.EFAULT)


def test_access_outside_guest_page_tables_faults(kvm: Kvm, vm_type) -> None:
    """behaviour 54: only mapped pages are reachable: one past the test memory is a guest #PF."""
    with TestVm("read_loop", kvm=kvm, vm_type=vm_type) as t:
        t.add_memory(TEST_GPA, 2 << 20, "gmem")
        t.set_param("test_gpa", TEST_GPA + (2 << 20))
        with pytest.raises(GuestException) as ei:
            t.run()
    assert (ei.value.vector, ei.value.cr2) == (14, TEST_GPA + (2 << 20))
