"""KVM_SET_USER_MEMORY_REGION2 with guest_memfd (behaviour 27-35).

This kernel lets DEFAULT VMs bind guest_memfd, so these run on the host tier.
"""

import errno
import os

import pytest

from kvmffi import PAGE_SIZE, Cap, Kvm, MemslotFlag, Vm, errno_of, memory
from kvmffi.kernels import behaviour
from kvmffi.testing import expect_answer, expect_errno, not_this_vms_guest_memfds

GMEM = MemslotFlag.GUEST_MEMFD
TEST_GPA = 1 << 32
TEST_SIZE = 2 << 20
MiB = 1 << 20


@pytest.fixture
def gmem(vm, gmem_factory):
    return gmem_factory(vm, 4 * MiB)


@pytest.fixture
def host_mem():
    with memory.anonymous(4 * MiB) as m:
        yield m


def test_guest_memfd_flag_on_legacy_ioctl_fails(vm: Vm, host_mem) -> None:
    expect_errno(errno.EINVAL, "KVM_SET_USER_MEMORY_REGION with KVM_MEM_GUEST_MEMFD",
                 vm.set_user_memory_region, 0, TEST_GPA, TEST_SIZE, host_mem.addr, GMEM)


def test_unknown_flag_bits_fail_on_both_ioctls(vm: Vm, host_mem) -> None:
    """Flag bits no kernel through 7.3 defines are EINVAL (kvmffi.kernels: memslot_flag_bits_3_31)."""
    b = behaviour("memslot_flag_bits_3_31")
    for bit in range(3, 32):
        f = 1 << bit
        for name, fn in (("KVM_SET_USER_MEMORY_REGION", vm.set_user_memory_region),
                         ("KVM_SET_USER_MEMORY_REGION2", vm.set_user_memory_region2)):
            expect_answer(b, f"{name} flags={f:#x}", fn, 0, TEST_GPA, TEST_SIZE, host_mem.addr, f)
            if 0 in vm.memslots:
                vm.delete_memslot(0)


def test_wrong_fds_fail(vm: Vm, host_mem) -> None:
    """The guest_memfd fd must be this VM's guest_memfd (behaviour 28); a closed fd is EBADF."""
    with not_this_vms_guest_memfds(vm, TEST_SIZE) as fds:
        for what, fd in fds:
            expect_errno(errno.EINVAL, f"binding {what} as guest_memfd",
                         vm.set_user_memory_region2, 0, TEST_GPA, TEST_SIZE, host_mem.addr, GMEM, fd)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    expect_errno(errno.EBADF, f"binding closed fd {r} as guest_memfd",
                 vm.set_user_memory_region2, 0, TEST_GPA, TEST_SIZE, host_mem.addr, GMEM, r)


@pytest.mark.parametrize("offset", [1, 0x80, PAGE_SIZE - 1, PAGE_SIZE + 1])
def test_unaligned_gmem_offset_fails(vm: Vm, gmem, host_mem, offset: int) -> None:
    expect_errno(errno.EINVAL, f"guest_memfd_offset {offset:#x}",
                 vm.set_user_memory_region2, 0, TEST_GPA, PAGE_SIZE, host_mem.addr, GMEM, gmem, offset)


@pytest.mark.parametrize("offset,size", [(PAGE_SIZE, 4 * MiB), (4 * MiB, PAGE_SIZE), (4 * MiB - PAGE_SIZE, 2 * PAGE_SIZE)])
def test_binding_beyond_gmem_size_fails(vm: Vm, gmem, host_mem, offset: int, size: int) -> None:
    """behaviour 30 (verify): offset + size > i_size is EINVAL (the kernel's answer)."""
    expect_errno(errno.EINVAL, f"binding [{offset:#x}, {offset + size:#x}) of a 4 MiB guest_memfd",
                 vm.set_user_memory_region2, 0, TEST_GPA, size, host_mem.addr, GMEM, gmem, offset)
    # the last page exactly is fine
    vm.set_user_memory_region2(0, TEST_GPA, PAGE_SIZE, host_mem.addr, GMEM, gmem, 4 * MiB - PAGE_SIZE)


# offset + size overflows loff_t (guest_memfd_test's test_invalid_binding), and wraps u64
INT64_MAX_PAGE = ((1 << 63) - 1) & ~(PAGE_SIZE - 1)
U64_TOP_PAGE = (1 << 64) - PAGE_SIZE


@pytest.mark.kernel_bug("gmem_bind_offset_overflow")
def test_binding_at_int64_max_offset_fails(vm: Vm, gmem) -> None:
    """A binding at guest_memfd offset ALIGN_DOWN(INT64_MAX, page), whose end overflows a signed
    offset, is EINVAL (6.12, 7.3; the 7.3 selftest asserts it). Kernels that did the range check in
    signed arithmetic accept it (measured: 6.18): a known bug, fixed by 7.2."""
    expect_errno(errno.EINVAL, f"binding 4 pages at guest_memfd offset {INT64_MAX_PAGE:#x}",
                 vm.set_user_memory_region2, 0, 0, 4 * PAGE_SIZE, 0, GMEM, gmem, INT64_MAX_PAGE)
    assert vm.memslots == {}


def test_binding_at_wrapping_offset_fails(vm: Vm, gmem) -> None:
    """offset + size wrapping around 2^64 is EINVAL (the memslot sanity check, before any binding)."""
    expect_errno(errno.EINVAL, f"binding 4 pages at guest_memfd offset {U64_TOP_PAGE:#x}",
                 vm.set_user_memory_region2, 0, 0, 4 * PAGE_SIZE, 0, GMEM, gmem, U64_TOP_PAGE)


def test_overlapping_gmem_ranges_with_disjoint_gpas(vm: Vm, gmem, host_mem) -> None:
    """behaviour 31, cause 1: a second slot binding an already-bound gmem range is refused, whether
    the overlap is total or partial: EINVAL through 6.18, EEXIST from 7.2 on (kvmffi.kernels:
    gmem_range_already_bound)."""
    b = behaviour("gmem_range_already_bound")
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_answer(b, "same gmem range, GPA elsewhere",
                  vm.set_user_memory_region2, 1, TEST_GPA + 2 * MiB, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_answer(b, "partly overlapping gmem range, GPA elsewhere",
                  vm.set_user_memory_region2, 1, TEST_GPA + 2 * MiB, MiB, host_mem.addr, GMEM, gmem, MiB - PAGE_SIZE)
    assert sorted(vm.memslots) == [0]


def test_overlapping_gpas_with_disjoint_gmem_ranges(vm: Vm, gmem, host_mem) -> None:
    """behaviour 31, cause 2: overlapping GPAs are EEXIST (the memslot check), gmem ranges disjoint."""
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_errno(errno.EEXIST, "same GPA, disjoint gmem range",
                 vm.set_user_memory_region2, 1, TEST_GPA, MiB, host_mem.addr + MiB, GMEM, gmem, MiB)
    expect_errno(errno.EEXIST, "partly overlapping GPA, disjoint gmem range",
                 vm.set_user_memory_region2, 1, TEST_GPA + MiB - PAGE_SIZE, MiB, host_mem.addr + MiB, GMEM, gmem, MiB)


def test_non_overlapping_bindings_and_rebind_after_delete(vm: Vm, gmem, host_mem) -> None:
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    vm.set_user_memory_region2(1, TEST_GPA + MiB, MiB, host_mem.addr + MiB, GMEM, gmem, MiB)
    vm.delete_memslot(0)
    assert sorted(vm.memslots) == [1]
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    # and after deleting, the range can go to a different slot at a different GPA
    vm.delete_memslot(0)
    vm.set_user_memory_region2(2, TEST_GPA + 8 * MiB, MiB, host_mem.addr, GMEM, gmem, 0)


@pytest.mark.parametrize("flag", [MemslotFlag.LOG_DIRTY_PAGES, MemslotFlag.READONLY], ids=lambda f: f.name)
def test_guest_memfd_with_dirty_log_or_readonly_fails(vm: Vm, gmem, host_mem, flag: MemslotFlag) -> None:
    """behaviour 32, 33: LOG_DIRTY_PAGES or READONLY with GUEST_MEMFD is EINVAL."""
    expect_errno(errno.EINVAL, f"KVM_MEM_GUEST_MEMFD|{flag.name}",
                 vm.set_user_memory_region2, 0, TEST_GPA, MiB, host_mem.addr, GMEM | flag, gmem, 0)
    # the same flag without guest_memfd is fine on this kernel
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, flag)


def test_guest_memfd_ness_cannot_change(vm: Vm, gmem, host_mem) -> None:
    """behaviour 34: flipping KVM_MEM_GUEST_MEMFD on an existing slot is EINVAL, both ways."""
    vm.set_user_memory_region2(0, TEST_GPA, MiB, host_mem.addr, GMEM, gmem, 0)
    expect_errno(errno.EINVAL, "dropping GUEST_MEMFD from slot 0",
                 vm.set_user_memory_region2, 0, TEST_GPA, MiB, host_mem.addr, 0)
    vm.set_user_memory_region2(1, TEST_GPA + 2 * MiB, MiB, host_mem.addr, 0)
    expect_errno(errno.EINVAL, "adding GUEST_MEMFD to slot 1",
                 vm.set_user_memory_region2, 1, TEST_GPA + 2 * MiB, MiB, host_mem.addr, GMEM, gmem, MiB)


def test_max_memslots(kvm: Kvm, vm: Vm) -> None:
    """behaviour 35: KVM_CAP_NR_MEMSLOTS slots can be added (per address space); one more is EINVAL."""
    n = kvm.check_extension(Cap.NR_MEMSLOTS)
    assert n > 0
    assert vm.check_extension(Cap.NR_MEMSLOTS) == n
    with memory.anonymous(PAGE_SIZE) as page:
        for slot in range(n):
            vm.set_user_memory_region(slot, TEST_GPA + slot * PAGE_SIZE, PAGE_SIZE, page.addr)
        expect_errno(errno.EINVAL, f"slot {n} with NR_MEMSLOTS={n}",
                     vm.set_user_memory_region, n, TEST_GPA + n * PAGE_SIZE, PAGE_SIZE, page.addr)
        expect_errno(errno.EINVAL, f"slot {n} via REGION2",
                     vm.set_user_memory_region2, n, TEST_GPA + n * PAGE_SIZE, PAGE_SIZE, page.addr)
        vm.close()  # before the page goes away


def test_set_memory_region_validation(vm: Vm, host_mem) -> None:
    """Classic checks that still hold for REGION2: unaligned GPA, size, hva."""
    expect_errno(errno.EINVAL, "unaligned gpa", vm.set_user_memory_region2, 0, TEST_GPA + 1, MiB, host_mem.addr)
    expect_errno(errno.EINVAL, "unaligned size", vm.set_user_memory_region2, 0, TEST_GPA, MiB + 1, host_mem.addr)
    expect_errno(errno.EINVAL, "unaligned hva", vm.set_user_memory_region2, 0, TEST_GPA, MiB, host_mem.addr + 1)
    assert errno_of(vm.set_user_memory_region2, 0, TEST_GPA, MiB, host_mem.addr) == 0
