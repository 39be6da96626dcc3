"""KVM_PRE_FAULT_MEMORY (pre_fault_memory_test; CHECKLIST 55-60).

Runs on every VM type of the test kernel: DEFAULT with anonymous memory (55-59) and
the private type with a private guest_memfd slot (60).
"""

import errno
import signal
import threading

import pytest

from kvmffi import Cap, KvmError, MemslotFlag, VmType
from kvmffi.pytest_plugin import require_cap
from kvmffi.testing import expect_errno
from kvmffi.testvm import KICK_SIGNAL, TEST_GPA, TestVm

MiB = 1 << 20
SLOT_SIZE = 16 * MiB
PAGE = 4096

# Not marked private: the DEFAULT VM type runs these too (shared memory).


@pytest.fixture(params=["shared", "private"])
def pf_vm(request, kvm):  # noqa: ANN001, ANN201
    """A TestVm with a 64 MiB slot at 4 GiB: anonymous on DEFAULT, private guest_memfd on SW_PROTECTED."""
    private = request.param == "private"
    vm_type = VmType.SW_PROTECTED if private else VmType.DEFAULT
    types = kvm.vm_types()
    if vm_type not in types:
        from kvmffi.hints import missing_cap_reason
        from kvmffi.pytest_plugin import skip_missing
        skip_missing(missing_cap_reason(Cap.VM_TYPES, kvm.check_extension(Cap.VM_TYPES), "/dev/kvm",
                                        f"bit {int(vm_type)}"))
    with TestVm("sync_loop", kvm=kvm, vm_type=vm_type) as t:
        assert t.vm is not None
        require_cap(Cap.PRE_FAULT_MEMORY, t.vm)
        mem = t.add_memory(TEST_GPA, SLOT_SIZE, "gmem" if private else "anon", map_in_guest=False)
        if private:
            t.vm.set_private(TEST_GPA, SLOT_SIZE)
        t.mem = mem  # type: ignore[attr-defined]
        yield t


def pre_fault_all(vcpu, gpa: int, size: int) -> tuple[int, int]:  # noqa: ANN001
    """Loop like the selftest: each call must make progress or fail, never both, never neither."""
    while size:
        try:
            ngpa, nsize = vcpu.pre_fault_memory(gpa, size)
        except KvmError as e:
            if e.errno == errno.EINTR:
                rgpa, rsize = e.remaining  # type: ignore[attr-defined]
                assert (rgpa, rsize) == (gpa, size) or rsize < size
                gpa, size = rgpa, rsize
                continue
            raise
        assert nsize < size and ngpa == gpa + (size - nsize), "KVM_PRE_FAULT_MEMORY made no progress"
        gpa, size = ngpa, nsize
    return gpa, size


def test_pre_fault_2m_completes(pf_vm) -> None:  # noqa: ANN001
    """CHECKLIST 55, 60: (gpa, 2M) completes: size comes back 0, gpa advanced by 2 MiB."""
    v = pf_vm.vcpus[0]
    assert pre_fault_all(v, TEST_GPA, 2 * MiB) == (TEST_GPA + 2 * MiB, 0)


def test_pre_fault_crossing_slot_end_is_partial_then_enoent(pf_vm) -> None:  # noqa: ANN001
    """CHECKLIST 56: a range crossing the end of the slot progresses to the end, then ENOENT with the rest."""
    v = pf_vm.vcpus[0]
    gpa = TEST_GPA + SLOT_SIZE - 2 * MiB
    with pytest.raises(KvmError) as ei:
        pre_fault_all(v, gpa, 4 * MiB)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.remaining == (TEST_GPA + SLOT_SIZE, 2 * MiB)  # type: ignore[attr-defined]


@pytest.mark.parametrize("gpa,size,what", [(TEST_GPA, 0, "size 0"), (TEST_GPA + 1, PAGE, "unaligned gpa"),
                                           (TEST_GPA, PAGE + 1, "unaligned size")])
def test_pre_fault_invalid(pf_vm, gpa: int, size: int, what: str) -> None:  # noqa: ANN001
    """CHECKLIST 57: EINVAL (the kernel's answer for size 0 and unaligned values)."""
    expect_errno(errno.EINVAL, f"KVM_PRE_FAULT_MEMORY with {what}", pf_vm.vcpus[0].pre_fault_memory, gpa, size)


def test_pre_fault_unknown_flags(pf_vm) -> None:  # noqa: ANN001
    expect_errno(errno.EINVAL, "KVM_PRE_FAULT_MEMORY with flags=1", pf_vm.vcpus[0].pre_fault_memory,
                 TEST_GPA, PAGE, 1)


def test_pre_fault_with_racing_memslot_delete(pf_vm) -> None:  # noqa: ANN001
    """CHECKLIST 58, 59: while another thread deletes and recreates the slot, pre-faulting converges.

    A pre-fault that meets the slot mid-deletion retries inside the kernel until a signal
    is pending (and the deletion waits for it), so a third thread kicks the pre-faulting
    thread with a signal every few ms, as a VMM would: each call then either makes
    progress or fails with ENOENT (slot gone) / EAGAIN / EINTR, never both. After the
    recreation settles the whole range pre-faults.
    """
    t = pf_vm
    v = t.vcpus[0]
    mem = t.mem
    stop = threading.Event()
    errors: list[BaseException] = []
    flags = MemslotFlag.GUEST_MEMFD if mem.gmem is not None else MemslotFlag(0)

    def churn() -> None:
        try:
            for _ in range(50):
                if stop.is_set():
                    break
                t.vm.delete_memslot(mem.slot)
                t.vm.set_user_memory_region2(mem.slot, mem.gpa, mem.size, mem.host.addr, flags, mem.gmem, 0,
                                             keep=mem.host)
        except BaseException as e:  # reported below
            errors.append(e)

    me = threading.get_ident()

    def kicker() -> None:
        while not stop.wait(0.005):
            signal.pthread_kill(me, KICK_SIGNAL)

    th = threading.Thread(target=churn, name="kvmffi-memslot-churn")
    kt = threading.Thread(target=kicker, name="kvmffi-kicker")
    th.start()
    kt.start()
    seen = set()
    try:
        gpa, size = TEST_GPA, SLOT_SIZE
        while th.is_alive() and size:
            try:
                gpa, size = v.pre_fault_memory(gpa, size)
            except KvmError as e:
                assert e.errno in (errno.ENOENT, errno.EAGAIN, errno.EINTR), str(e)
                seen.add(e.errno)
    finally:
        stop.set()
        th.join()
        kt.join()
    assert not errors, errors
    assert pre_fault_all(v, TEST_GPA, SLOT_SIZE) == (TEST_GPA + SLOT_SIZE, 0)
