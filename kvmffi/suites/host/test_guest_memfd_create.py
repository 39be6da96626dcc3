"""KVM_CREATE_GUEST_MEMFD: capabilities, flags, sizes, fstat, file operations (behaviour 1-12)."""

import errno
import os

import pytest

from kvmffi import PAGE_SIZE, Cap, GuestMemfdFlag, Kvm, VmType, errno_of
from kvmffi.kernels import behaviour
from kvmffi.requirements import require_cap
from kvmffi.testing import expect_answer, expect_errno

SIZE = 4 * PAGE_SIZE


def test_cap_guest_memfd_matches_what_vm_creation_does(kvm: Kvm) -> None:
    """KVM_CAP_GUEST_MEMFD > 0 system-wide, and some VM type creates a guest_memfd."""
    assert kvm.check_extension(Cap.GUEST_MEMFD) > 0
    created = []
    for t in kvm.vm_types():
        with kvm.create_vm(t) as vm:
            if vm.check_extension(Cap.GUEST_MEMFD):
                assert errno_of(vm.create_guest_memfd, SIZE) == 0
                created.append(t)
    assert created, "KVM_CAP_GUEST_MEMFD > 0 but no VM type advertises it on its VM fd"


def test_vm_types_bitmap_is_exact(kvm: Kvm) -> None:
    """Every VM type in KVM_CAP_VM_TYPES creates; every other type 0..63 fails with EINVAL (7.3's
    vm_types_test; types from 32 on cannot be in the 32-bit answer)."""
    mask = kvm.check_extension(Cap.VM_TYPES) or 1
    for t in range(64):
        want = 0 if mask & (1 << t) else errno.EINVAL
        expect_errno(want, f"KVM_CREATE_VM(type={t}) with VM_TYPES={mask:#x}", kvm.create_vm, t)


def test_flags_cap_is_asked_per_vm(vm) -> None:
    """Every advertised single flag creates; every other bit 0..63 fails with EINVAL."""
    advertised = vm.check_extension(Cap.GUEST_MEMFD_FLAGS)
    for bit in range(64):
        f = 1 << bit
        want = 0 if advertised & f else errno.EINVAL
        expect_errno(want, f"guest_memfd() with flag {f:#x} (advertised {advertised:#x})",
                     vm.create_guest_memfd, SIZE, f)


def test_init_shared_implies_mmap(vm) -> None:
    flags = GuestMemfdFlag(vm.check_extension(Cap.GUEST_MEMFD_FLAGS))
    if flags & GuestMemfdFlag.INIT_SHARED:
        assert flags & GuestMemfdFlag.MMAP, f"INIT_SHARED advertised without MMAP: {flags}"
    else:
        assert GuestMemfdFlag.INIT_SHARED not in flags


@pytest.mark.vm_types(VmType.DEFAULT)
def test_default_vm_advertises_mmap_and_init_shared(vm) -> None:
    """A DEFAULT x86 VM holds only shared memory: it advertises MMAP and INIT_SHARED (6.18, 7.3;
    a later kernel may offer more flags)."""
    require_cap(Cap.GUEST_MEMFD_FLAGS)
    want = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED
    assert vm.guest_memfd_flags() & want == want, f"DEFAULT VM guest_memfd flags {vm.guest_memfd_flags()}"



def test_combined_flags_create(vm, gmem_flags) -> None:
    """Every combination of advertised flags creates a guest_memfd.

    The kernel's answer for INIT_SHARED without MMAP on this kernel: accepted too
    (it only checks flags against the advertised mask).
    """
    with vm.create_guest_memfd(SIZE, gmem_flags) as g:
        assert g.stat().st_size == SIZE


def test_unaligned_sizes_fail(vm, gmem_flags) -> None:
    for size in range(1, PAGE_SIZE):
        expect_errno(errno.EINVAL, f"guest_memfd() with non-page-aligned size {size:#x} flags {gmem_flags}",
                     vm.create_guest_memfd, size, gmem_flags)
    for size in (PAGE_SIZE + 1, 2 * PAGE_SIZE - 1):
        expect_errno(errno.EINVAL, f"guest_memfd() with size {size:#x}", vm.create_guest_memfd, size, gmem_flags)


def test_zero_size_fails(vm, gmem_flags) -> None:
    expect_errno(errno.EINVAL, "guest_memfd() with size 0", vm.create_guest_memfd, 0, gmem_flags)


def test_negative_size_fails(vm) -> None:
    """size is a u64 but must fit loff_t: -4096 (0xfffffffffffff000) is refused."""
    expect_errno(errno.EINVAL, "guest_memfd() with size -4096", vm.create_guest_memfd, -PAGE_SIZE)


def test_huge_size_is_lazy(vm) -> None:
    """The kernel's answer: a 4 EiB guest_memfd is created (nothing is allocated up front)."""
    with vm.create_guest_memfd(1 << 62) as g:
        assert g.stat().st_size == 1 << 62


@pytest.mark.parametrize("index", range(6))
def test_nonzero_reserved(vm, index: int) -> None:
    """behaviour 8: kernels through 7.3 do not check kvm_create_guest_memfd.reserved[] (created);
    one that starts checking it answers EINVAL (kvmffi.kernels: gmem_reserved_nonzero)."""
    reserved = tuple(1 if i == index else 0 for i in range(6))
    expect_answer(behaviour("gmem_reserved_nonzero"), f"guest_memfd() with reserved[{index}] = 1",
                  vm.create_guest_memfd, SIZE, 0, reserved)


def test_two_guest_memfds_are_independent(vm, gmem_factory) -> None:
    a = gmem_factory(vm, SIZE)
    b = gmem_factory(vm, 2 * SIZE)
    sa, sb = a.stat(), b.stat()
    assert (sa.st_size, sb.st_size) == (SIZE, 2 * SIZE)
    assert sa.st_ino != sb.st_ino


def test_fstat(vm, gmem_factory, gmem_flags) -> None:
    g = gmem_factory(vm, SIZE, gmem_flags)
    st = g.stat()
    assert st.st_size == SIZE
    assert st.st_blksize == PAGE_SIZE


def test_fstatfs_names_the_guest_memfd_filesystem(vm, gmem_factory) -> None:
    """fstatfs() of a guest_memfd: its own filesystem ("GMEM", 0x474d454d) from 6.19, the
    anonymous-inode filesystem's magic before (kvmffi.kernels "gmem_fstatfs_magic")."""
    b = behaviour("gmem_fstatfs_magic")
    magic = gmem_factory(vm, SIZE).fs_magic()
    assert magic in b.expected(), f"fstatfs f_type {magic:#x}; known answers: {b.describe()}"


def test_read_write_fail(vm, gmem_factory, gmem_flags) -> None:
    """No read/write file operations, whatever the flags: read/write give EINVAL, pread/pwrite ESPIPE
    (not seekable). Measured: 6.12, 6.18, 7.3."""
    fd = gmem_factory(vm, SIZE, gmem_flags).fileno()
    expect_errno(errno.EINVAL, "read() on a guest_memfd", os.read, fd, 8)
    expect_errno(errno.EINVAL, "write() on a guest_memfd", os.write, fd, b"x" * 8)
    expect_errno(errno.ESPIPE, "pread() on a guest_memfd", os.pread, fd, 8, 0)
    expect_errno(errno.ESPIPE, "pwrite() on a guest_memfd", os.pwrite, fd, b"x" * 8, 0)


@pytest.mark.parametrize("new_size", [0, PAGE_SIZE, 8 * PAGE_SIZE])
def test_not_resizable(vm, gmem_factory, new_size: int) -> None:
    """behaviour 12 (verify): ftruncate fails with EINVAL for shrink, same size and grow alike."""
    g = gmem_factory(vm, 4 * PAGE_SIZE)
    expect_errno(errno.EINVAL, f"ftruncate(guest_memfd, {new_size:#x})", os.ftruncate, g.fileno(), new_size)
    assert g.stat().st_size == 4 * PAGE_SIZE


def test_close_is_idempotent_and_fd_is_released(vm) -> None:
    g = vm.create_guest_memfd(SIZE)
    fd = g.fileno()
    g.close()
    g.close()
    expect_errno(errno.EBADF, f"fstat of closed fd {fd}", os.fstat, fd)
    with pytest.raises(ValueError, match="closed"):
        g.fileno()


def test_guest_memfd_outlives_its_vm(kvm: Kvm, vm_type) -> None:
    """The guest_memfd pins the VM: fallocate and punch work after the VM fd is closed (behaviour 17)."""
    vm = kvm.create_vm(vm_type)
    g = vm.create_guest_memfd(SIZE)
    vm.close()
    try:
        g.allocate(0, SIZE)
        g.punch_hole(0, PAGE_SIZE)
        assert g.stat().st_size == SIZE
    finally:
        g.close()
