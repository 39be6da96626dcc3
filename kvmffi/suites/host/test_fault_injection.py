"""Allocation failures inside KVM's ioctls leave nothing half made (behaviours: error paths).

With the kernel's fault injection (CONFIG_FAULT_INJECTION, FAILSLAB, FAIL_PAGE_ALLOC and
FAULT_INJECTION_DEBUG_FS: the test kernels have them), ``/proc/thread-self/fail-nth`` = N makes
the N-th allocation this thread attempts fail. For N = 1, 2, ... each call must either succeed or
fail with a resource errno, leave no trace when it fails (no fd, no memslot, no binding), and the
next, uninjected try must succeed; the loop ends at the first N the call never reaches.
"""

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

from kvmffi import KvmError, MemslotFlag, Vm, memory
from kvmffi.contract import RESOURCES
from kvmffi.errors import errno_name

GMEM = MemslotFlag.GUEST_MEMFD
TEST_GPA = 1 << 32
SIZE = 2 << 20
MAX_SITES = 300          # more allocation sites than any of these calls has
DEBUGFS = "/sys/kernel/debug"
# the injection points must not skip the GFP_KERNEL allocations KVM makes (their defaults do)
KNOBS = {"failslab/ignore-gfp-wait": "N", "failslab/verbose": "0",
         "fail_page_alloc/ignore-gfp-wait": "N", "fail_page_alloc/ignore-gfp-highmem": "N",
         "fail_page_alloc/min-order": "0", "fail_page_alloc/verbose": "0"}


class FailNth:
    """This thread's /proc/thread-self/fail-nth: ``arm(n)`` makes its n-th allocation from now fail;
    ``fired()`` (after the call) says whether it did, and disarms."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def arm(self, n: int) -> None:
        os.pwrite(self.fd, str(n).encode(), 0)

    def fired(self) -> bool:
        left = int(os.pread(self.fd, 32, 0).decode().strip() or "0")
        os.pwrite(self.fd, b"0", 0)
        return left == 0


@pytest.fixture
def fail_nth() -> Iterator[FailNth]:
    path = "/proc/thread-self/fail-nth"
    missing = [k for k in KNOBS if not os.path.exists(f"{DEBUGFS}/{k}")]
    if not os.path.exists(path) or missing:
        pytest.skip("no fault injection in this kernel (needs CONFIG_FAULT_INJECTION, FAILSLAB, FAIL_PAGE_ALLOC and "
                    "FAULT_INJECTION_DEBUG_FS with debugfs mounted: the test kernels, `kvmffi run --kernel 7.3`)")
    saved = {}
    for k, v in KNOBS.items():
        with open(f"{DEBUGFS}/{k}") as f:
            saved[k] = f.read().strip()
        with open(f"{DEBUGFS}/{k}", "w") as f:
            f.write(v)
    fd = os.open(path, os.O_RDWR)
    try:
        yield FailNth(fd)
    finally:
        os.pwrite(fd, b"0", 0)
        os.close(fd)
        for k, v in saved.items():
            with contextlib.suppress(OSError), open(f"{DEBUGFS}/{k}", "w") as f:
                f.write(v)


def _open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def _lowest_free_fd() -> int:
    """The fd number the next open gets: a reserved but never installed fd (a lost put_unused_fd())
    does not show in /proc/self/fd, only here."""
    fd = os.dup(0)
    os.close(fd)
    return fd


def _inject(fi: FailNth, call: Callable[[], object], undo: Callable[[object], None],
            check_clean: Callable[[], None], what: str) -> int:
    """Fail the n-th allocation of ``call`` for n = 1, 2, ...; returns how many sites were failed."""
    for n in range(1, MAX_SITES + 1):
        before, lowest = _open_fds(), _lowest_free_fd()
        fi.arm(n)
        try:
            res, err = call(), 0
        except KvmError as e:
            res, err = None, e.errno or 0
        fired = fi.fired()
        if not fired:  # fewer than n allocations: the call ran clean
            assert err == 0, f"{what}: failed with {errno_name(err)} without an injected failure"
            undo(res)
            return n - 1
        if err == 0:   # the failed allocation had a fallback
            undo(res)
        else:
            assert err in RESOURCES, f"{what} with allocation {n} failing: {errno_name(err)} (want a resource errno)"
            leaked = _open_fds() - before
            assert not leaked, f"{what} failed at allocation {n} ({errno_name(err)}) but left fds {sorted(leaked)} open"
            now = _lowest_free_fd()
            assert now == lowest, (f"{what} failed at allocation {n} ({errno_name(err)}): the next fd is {now}, "
                                   f"was {lowest} (an fd number reserved and never given back)")
            check_clean()
        retry = call()           # nothing injected: the next try must succeed
        undo(retry)
    raise AssertionError(f"{what} reached more than {MAX_SITES} allocations")


def test_create_guest_memfd_under_allocation_failures(vm: Vm, fail_nth) -> None:
    """KVM_CREATE_GUEST_MEMFD with each allocation failing in turn: a resource errno and no fd, or
    success; then an uninjected create succeeds."""
    sites = _inject(fail_nth, lambda: vm.create_guest_memfd(SIZE), lambda g: g.close(),  # type: ignore[attr-defined]
                    lambda: None,
                    "KVM_CREATE_GUEST_MEMFD")
    assert sites > 0, "KVM_CREATE_GUEST_MEMFD made no allocation that fault injection could fail"


def test_bind_guest_memfd_under_allocation_failures(vm: Vm, gmem_factory, fail_nth) -> None:
    """KVM_SET_USER_MEMORY_REGION2 binding a guest_memfd, each allocation failing in turn: when it
    fails, neither the slot nor the binding exists (another slot can take the same GPA and the same
    guest_memfd range); the next try succeeds."""
    g = gmem_factory(vm, SIZE)
    with memory.anonymous(SIZE) as host:
        def bind() -> int:
            vm.set_user_memory_region2(0, TEST_GPA, SIZE, host.addr, GMEM, g, 0)
            return 0

        def clean() -> None:
            try:  # a half-made slot 0 or binding would refuse this: EEXIST (GPA or range) or EINVAL
                vm.set_user_memory_region2(1, TEST_GPA, SIZE, host.addr, GMEM, g, 0)
            except KvmError as e:
                raise AssertionError(f"after the failed bind, slot 1 over the same GPA and range: {e}") from None
            vm.delete_memslot(1)

        sites = _inject(fail_nth, bind, lambda _: vm.delete_memslot(0), clean, "binding a guest_memfd slot")
    assert sites > 0, "the bind made no allocation that fault injection could fail"
