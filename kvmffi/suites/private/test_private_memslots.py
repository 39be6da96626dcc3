"""guest_memfd memslots on a VM with private memory (CHECKLIST 17, 28-34)."""

import errno

import pytest

from kvmffi import PAGE_SIZE, Kvm, MemslotFlag, Vm, memory
from kvmffi.kernels import behaviour
from kvmffi.testing import expect_answer, expect_errno, not_this_vms_guest_memfds

pytestmark = pytest.mark.private

GMEM = MemslotFlag.GUEST_MEMFD
GPA = 1 << 32
MiB = 1 << 20


@pytest.fixture
def host_mem():
    with memory.anonymous(4 * MiB) as m:
        yield m


@pytest.fixture
def gmem(vm, gmem_factory):
    return gmem_factory(vm, 4 * MiB)


def test_guest_memfd_outlives_vm(kvm: Kvm, vm_type) -> None:
    """CHECKLIST 17: fallocate and PUNCH_HOLE after the VM fd is closed still succeed (gmem pins the VM)."""
    vm = kvm.create_vm(vm_type)
    g = vm.create_guest_memfd(4 * MiB)
    vm.close()
    with g:
        g.allocate(0, 4 * MiB)
        g.punch_hole(0, MiB)
        g.allocate(0, PAGE_SIZE)


def test_wrong_guest_memfd_fds(vm: Vm, host_mem) -> None:
    """CHECKLIST 28: /dev/kvm, the VM fd, a memfd or another VM's guest_memfd: EINVAL."""
    with not_this_vms_guest_memfds(vm, MiB) as fds:
        for what, fd in fds:
            expect_errno(errno.EINVAL, f"binding {what}", vm.set_user_memory_region2, 0, GPA, MiB,
                         host_mem.addr, GMEM, fd)


@pytest.mark.parametrize("offset", [1, PAGE_SIZE - 1, PAGE_SIZE + 0x10])
def test_unaligned_offset(vm: Vm, gmem, host_mem, offset: int) -> None:
    """CHECKLIST 29."""
    expect_errno(errno.EINVAL, f"guest_memfd_offset {offset:#x}", vm.set_user_memory_region2, 0, GPA, PAGE_SIZE,
                 host_mem.addr, GMEM, gmem, offset)


def test_binding_past_the_end(vm: Vm, gmem, host_mem) -> None:
    """CHECKLIST 30 (verify): offset + size > i_size is EINVAL."""
    expect_errno(errno.EINVAL, "offset 4K + 4M of a 4 MiB guest_memfd", vm.set_user_memory_region2, 0, GPA,
                 4 * MiB, host_mem.addr, GMEM, gmem, PAGE_SIZE)


def test_overlaps(vm: Vm, gmem, host_mem) -> None:
    """CHECKLIST 31: an overlapping gmem range is refused (EINVAL through 6.18, EEXIST from 7.2:
    kvmffi.kernels gmem_range_already_bound), overlapping GPAs EEXIST; delete then rebind works."""
    vm.set_user_memory_region2(0, GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_answer(behaviour("gmem_range_already_bound"), "same gmem range at another GPA",
                  vm.set_user_memory_region2, 1, GPA + 2 * MiB, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_errno(errno.EEXIST, "same GPA, another gmem range", vm.set_user_memory_region2, 1, GPA, MiB,
                 host_mem.addr, GMEM, gmem, MiB)
    vm.set_user_memory_region2(1, GPA + MiB, MiB, host_mem.addr + MiB, GMEM, gmem, MiB)
    vm.delete_memslot(0)
    vm.set_user_memory_region2(0, GPA, MiB, host_mem.addr, GMEM, gmem, 0)


@pytest.mark.parametrize("flag", [MemslotFlag.LOG_DIRTY_PAGES, MemslotFlag.READONLY], ids=lambda f: f.name)
def test_dirty_log_and_readonly_refused(vm: Vm, gmem, host_mem, flag: MemslotFlag) -> None:
    """CHECKLIST 32, 33 (verify): EINVAL with GUEST_MEMFD."""
    expect_errno(errno.EINVAL, f"GUEST_MEMFD|{flag.name}", vm.set_user_memory_region2, 0, GPA, MiB,
                 host_mem.addr, GMEM | flag, gmem, 0)


def test_guest_memfd_flag_cannot_change(vm: Vm, gmem, host_mem) -> None:
    """CHECKLIST 34."""
    vm.set_user_memory_region2(0, GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_errno(errno.EINVAL, "dropping GUEST_MEMFD", vm.set_user_memory_region2, 0, GPA, MiB, host_mem.addr, 0)
    vm.set_user_memory_region2(1, GPA + 2 * MiB, MiB, host_mem.addr, 0)
    expect_errno(errno.EINVAL, "adding GUEST_MEMFD", vm.set_user_memory_region2, 1, GPA + 2 * MiB, MiB,
                 host_mem.addr, GMEM, gmem, MiB)
