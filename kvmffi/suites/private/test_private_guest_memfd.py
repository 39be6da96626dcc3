"""guest_memfd on a VM type with private memory (behaviour 81)."""

import errno
import signal
from functools import partial

import pytest

from kvmffi import PAGE_SIZE, GuestMemfdFlag, Vm, VmType
from kvmffi.hints import require_gmem_flags
from kvmffi.testing import expect_errno, run_in_child, touch

pytestmark = pytest.mark.private

SIZE = 4 * PAGE_SIZE


def test_private_vm_offers_no_init_shared(vm: Vm) -> None:
    """A VM type with private memory never offers INIT_SHARED (its memory starts private), and
    creating a guest_memfd with it is EINVAL. Measured: 7.3 offers MMAP only, 6.12 no flags."""
    assert GuestMemfdFlag.INIT_SHARED not in vm.guest_memfd_flags()
    expect_errno(errno.EINVAL, f"guest_memfd() with INIT_SHARED on a {VmType(vm.type).name} VM",
                 vm.create_guest_memfd, SIZE, GuestMemfdFlag.INIT_SHARED)
    expect_errno(errno.EINVAL, f"guest_memfd() with MMAP|INIT_SHARED on a {VmType(vm.type).name} VM",
                 vm.create_guest_memfd, SIZE, GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED)


@pytest.mark.needs_gmem_flags(GuestMemfdFlag.MMAP)
@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_private_guest_memfd_mapping_sigbus(vm: Vm, gmem_factory, write: bool) -> None:
    """MMAP on a private VM type: the mapping works, any access to the (private) memory is SIGBUS."""
    require_gmem_flags(vm, GuestMemfdFlag.MMAP)
    g = gmem_factory(vm, SIZE, GuestMemfdFlag.MMAP)
    with g.mmap() as m:
        for off in (0, PAGE_SIZE, SIZE - 1):
            r = run_in_child(partial(touch, m, off, write))
            assert r.signal == signal.SIGBUS, f"{'write' if write else 'read'} at {off:#x}: child {r}"
