"""KVM_PRE_FAULT_MEMORY (pre_fault_memory_test; behaviour 55-60).

Runs on every VM type of the test kernel: DEFAULT with anonymous memory (55-59) and
the private type with a private guest_memfd slot (60).
"""

import errno
import signal
import threading
import time

import pytest

from kvmffi import Cap, KvmError, MemslotFlag, VmType
from kvmffi.requirements import expect_kernel_bug, require_cap
from kvmffi.testing import expect_errno
from kvmffi.testvm import KICK_SIGNAL, TEST_GPA, TestVm

MiB = 1 << 20
SLOT_SIZE = 16 * MiB
PAGE = 4096

# Not marked private: the DEFAULT VM type runs these too (shared memory).


def skip_missing_vm_type(kvm, vm_type: VmType, feature: str | None = None) -> None:
    """Skip (fail in strict mode) naming the KVM_CAP_VM_TYPES bit this test needs; a private type the
    MMU mode withholds by design (no TDP MMU) is a skip in strict mode too."""
    from kvmffi.hints import missing_cap_reason
    from kvmffi.kernels import private_types_withheld
    from kvmffi.requirements import skip_missing
    withheld = private_types_withheld() if vm_type == VmType.SW_PROTECTED else None
    if withheld:
        pytest.skip(withheld)
    skip_missing(missing_cap_reason(Cap.VM_TYPES, kvm.check_extension(Cap.VM_TYPES), "/dev/kvm",
                                    f"bit {int(vm_type)}"), feature)


@pytest.fixture(params=["shared", "private"])
def pf_vm(request, kvm):
    """A TestVm with a 64 MiB slot at 4 GiB: anonymous on DEFAULT, private guest_memfd on SW_PROTECTED."""
    private = request.param == "private"
    vm_type = VmType.SW_PROTECTED if private else VmType.DEFAULT
    types = kvm.vm_types()
    if vm_type not in types:
        skip_missing_vm_type(kvm, vm_type)
    with TestVm("sync_loop", kvm=kvm, vm_type=vm_type) as t:
        assert t.vm is not None
        require_cap(Cap.PRE_FAULT_MEMORY, t.vm)
        mem = t.add_memory(TEST_GPA, SLOT_SIZE, "gmem" if private else "anon", map_in_guest=False)
        if private:
            t.vm.set_private(TEST_GPA, SLOT_SIZE)
        t.mem = mem  # type: ignore[attr-defined]
        yield t


def pre_fault_all(vcpu, gpa: int, size: int, timeout: float = 30.0) -> tuple[int, int]:
    """Loop like the selftest: each call must make progress or fail, never both, never neither.

    EINTR (a signal) is retried with what the kernel wrote back; ``timeout`` bounds the
    loop, so a kernel that never makes progress fails the test instead of hanging it.
    """
    deadline = time.monotonic() + timeout
    while size:
        if time.monotonic() > deadline:
            raise AssertionError(f"KVM_PRE_FAULT_MEMORY made no progress for {timeout} s at gpa {gpa:#x} "
                                 f"({size:#x} bytes left)")
        try:
            ngpa, nsize = vcpu.pre_fault_memory(gpa, size)
        except KvmError as e:
            # a call makes progress or fails, never both: a failure leaves the range as it was
            assert e.remaining == (gpa, size), (
                f"failed KVM_PRE_FAULT_MEMORY ({e.errno_name}) moved the range to {e.remaining}")
            if e.errno == errno.EINTR:
                continue
            raise
        assert nsize < size and ngpa == gpa + (size - nsize), "KVM_PRE_FAULT_MEMORY made no progress"
        gpa, size = ngpa, nsize
    return gpa, size


class Kicker:
    """Signals one thread every few ms (as a VMM's timer would) so blocking ioctls return EINTR."""

    def __init__(self) -> None:
        self.target = threading.get_ident()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="kvmffi-kicker")

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            signal.pthread_kill(self.target, KICK_SIGNAL)

    def __enter__(self) -> "Kicker":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def recreate(t, mem) -> None:
    flags = MemslotFlag.GUEST_MEMFD if mem.gmem is not None else MemslotFlag(0)
    t.vm.delete_memslot(mem.slot)
    t.vm.set_user_memory_region2(mem.slot, mem.gpa, mem.size, mem.host.addr, flags, mem.gmem, 0, keep=mem.host)


def test_pre_fault_2m_completes(pf_vm) -> None:
    """behaviour 55, 60: (gpa, 2M) completes: size comes back 0, gpa advanced by 2 MiB."""
    v = pf_vm.vcpus[0]
    assert pre_fault_all(v, TEST_GPA, 2 * MiB) == (TEST_GPA + 2 * MiB, 0)


def test_pre_fault_crossing_slot_end_is_partial_then_enoent(pf_vm) -> None:
    """behaviour 56: a range crossing the end of the slot progresses to the end, then ENOENT with the rest."""
    v = pf_vm.vcpus[0]
    gpa = TEST_GPA + SLOT_SIZE - 2 * MiB
    with pytest.raises(KvmError) as ei:
        pre_fault_all(v, gpa, 4 * MiB)
    assert ei.value.errno == errno.ENOENT
    assert ei.value.remaining == (TEST_GPA + SLOT_SIZE, 2 * MiB)  # type: ignore[attr-defined]


@pytest.mark.parametrize("gpa,size,what", [(TEST_GPA, 0, "size 0"), (TEST_GPA + 1, PAGE, "unaligned gpa"),
                                           (TEST_GPA, PAGE + 1, "unaligned size")])
def test_pre_fault_invalid(pf_vm, gpa: int, size: int, what: str) -> None:
    """behaviour 57: EINVAL (the kernel's answer for size 0 and unaligned values)."""
    expect_errno(errno.EINVAL, f"KVM_PRE_FAULT_MEMORY with {what}", pf_vm.vcpus[0].pre_fault_memory, gpa, size)


def test_pre_fault_unknown_flags(pf_vm) -> None:
    expect_errno(errno.EINVAL, "KVM_PRE_FAULT_MEMORY with flags=1", pf_vm.vcpus[0].pre_fault_memory,
                 TEST_GPA, PAGE, 1)


def test_pre_fault_with_racing_memslot_delete(pf_vm) -> None:
    """behaviour 58, 59: while another thread deletes and recreates the slot, pre-faulting converges.

    A kicker signals the pre-faulting thread every few ms, as a VMM's timer would: each
    call either makes progress or fails with ENOENT (slot gone) / EAGAIN / EINTR, never
    both; for the private slot EFAULT too (the kernel's answer: a private GPA without a
    usable slot is a memory fault). After the churn the vCPU runs once (KVM_RUN reloads its MMU, see the next test)
    and then the whole slot pre-faults.
    """
    t = pf_vm
    v = t.vcpus[0]
    errors: list[BaseException] = []
    done = threading.Event()
    # a private GPA whose slot is gone mid-fault is reported as a memory fault: EFAULT
    allowed = {errno.ENOENT, errno.EAGAIN, errno.EINTR} | ({errno.EFAULT} if t.mem.gmem is not None else set())

    def churn() -> None:
        try:
            for _ in range(20):
                recreate(t, t.mem)
        except BaseException as e:  # reported below
            errors.append(e)
        finally:
            done.set()

    th = threading.Thread(target=churn, name="kvmffi-memslot-churn")
    with Kicker():
        th.start()
        try:
            gpa, size = TEST_GPA, SLOT_SIZE
            while not done.is_set() and size:
                try:
                    ngpa, nsize = v.pre_fault_memory(gpa, size)
                    assert nsize < size, "a successful KVM_PRE_FAULT_MEMORY made no progress"
                    gpa, size = ngpa, nsize
                except KvmError as e:
                    assert e.errno in allowed, f"{e} (allowed here: {sorted(allowed)})"
                    assert e.remaining == (gpa, size), (
                        f"failed KVM_PRE_FAULT_MEMORY ({e.errno_name}) moved the range to {e.remaining}")
        finally:
            th.join()
        assert not errors, errors
        v.run()  # the vCPU runs (the kicker makes it return at once): pending MMU work is done
        assert pre_fault_all(v, TEST_GPA, SLOT_SIZE) == (TEST_GPA + SLOT_SIZE, 0)


def test_memslot_delete_during_pre_fault_completes_without_signals(pf_vm, request) -> None:
    """One thread pre-faults the slot over and over while another deletes it, and nothing signals
    either: the delete must complete (bounded here at 20 s) and the pre-fault stop with ENOENT, EAGAIN
    or, for a private slot, EFAULT ("KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot
    during prefault", 3ccbf6f47098, v6.18). Before it the two waited on each other (the pre-fault
    retried on the invalid slot inside kvm->srcu, the delete waited for srcu) until a signal: a
    kicker, as a VMM's timer, would hide that, so past the bound this test kicks and fails."""
    expect_kernel_bug(request.node, "pre_fault_memslot_delete_deadlock")
    t = pf_vm
    v = t.vcpus[0]
    allowed = {errno.ENOENT, errno.EAGAIN} | ({errno.EFAULT} if t.mem.gmem is not None else set())
    stop = threading.Event()
    answers: list[int] = []
    errors: list[BaseException] = []
    started = threading.Event()

    def pre_fault() -> None:
        try:
            while not stop.is_set():
                started.set()
                try:
                    v.pre_fault_memory(TEST_GPA, SLOT_SIZE)
                except KvmError as e:
                    answers.append(e.errno or 0)
                    if e.errno != errno.EINTR:
                        return
        except BaseException as e:  # reported below
            errors.append(e)

    th = threading.Thread(target=pre_fault, name="kvmffi-pre-fault")
    th.start()
    started.wait(10)
    time.sleep(0.01)
    deleter = threading.Thread(target=t.vm.delete_memslot, args=(t.mem.slot,), name="kvmffi-memslot-delete")
    t0 = time.monotonic()
    deleter.start()
    deleter.join(20)
    hung = deleter.is_alive()
    stop.set()
    for _ in range(200):  # get both out: the pre-fault returns EINTR at a signal, then the delete completes
        if not th.is_alive() and not deleter.is_alive():
            break
        if th.is_alive():
            signal.pthread_kill(th.ident, KICK_SIGNAL)  # type: ignore[arg-type]
        time.sleep(0.05)
    th.join(10)
    deleter.join(10)
    assert not th.is_alive() and not deleter.is_alive(), "the pre-fault or the delete still hangs after signals"
    assert not errors, errors
    assert not hung, (f"deleting the slot did not complete within 20 s while another thread pre-faulted it "
                      f"(it did after signals, {time.monotonic() - t0:.0f} s in; the pre-fault answered "
                      f"{sorted({errno.errorcode.get(a, str(a)) for a in answers})})")
    last = answers[-1] if answers else 0
    assert last in allowed | {0}, f"the pre-fault ended with {errno.errorcode.get(last, last)} (allowed {allowed})"


def test_pre_fault_converges_after_memslot_recreate_without_kvm_run(pf_vm, request) -> None:
    """Delete and recreate the slot, then pre-fault without running the vCPU: it should converge.

    Linux 6.12 answers differently per slot kind: the private guest_memfd slot converges;
    the shared slot of a DEFAULT VM retries forever on the vCPU's obsolete MMU root until
    the vCPU next enters KVM_RUN (only a signal gets the ioctl out): the known bug
    pre_fault_obsolete_root_livelock, an expected failure on the kernels that have it (7.3
    converges).
    """
    t = pf_vm
    if t.mem.gmem is None:
        expect_kernel_bug(request.node, "pre_fault_obsolete_root_livelock")
    v = t.vcpus[0]
    assert pre_fault_all(v, TEST_GPA, 2 * MiB) == (TEST_GPA + 2 * MiB, 0)
    recreate(t, t.mem)
    with Kicker():
        assert pre_fault_all(v, TEST_GPA + 2 * MiB, 2 * MiB, timeout=5) == (TEST_GPA + 4 * MiB, 0)


GUEST_PATTERN = 0x5EED5EED5EED5EED


@pytest.mark.parametrize("shape", ["DEFAULT-anon", "SW_PROTECTED-anon", "SW_PROTECTED-private"])
def test_guest_reads_pre_faulted_memory(kvm, shape: str) -> None:
    """pre_fault_memory_test's sequence on a 2 MiB + 4 KiB slot, then the guest reads (zeros) and
    writes every page of it: (gpa, 2M) completes; (gpa+2M, 8K) faults the last page, then ENOENT
    with 4 KiB left; (gpa+2M+4K, 4K) is ENOENT at once. Each VM shape of the selftest: DEFAULT
    with anonymous memory, SW_PROTECTED with anonymous (shared) memory, SW_PROTECTED private."""
    type_name, kind = shape.split("-")
    vm_type = VmType[type_name]
    if vm_type not in kvm.vm_types():
        skip_missing_vm_type(kvm, vm_type, "KVM_CAP_VM_TYPES")
    size = 2 * MiB + PAGE
    with TestVm("shared_mem", kvm=kvm, vm_type=vm_type, timeout=120) as t:
        assert t.vm is not None
        require_cap(Cap.PRE_FAULT_MEMORY, t.vm)
        t.add_memory(TEST_GPA, size, "gmem" if kind == "private" else "anon")
        if kind == "private":
            t.vm.set_private(TEST_GPA, size)
        v = t.vcpus[0]
        assert pre_fault_all(v, TEST_GPA, 2 * MiB) == (TEST_GPA + 2 * MiB, 0)
        with pytest.raises(KvmError) as ei:
            pre_fault_all(v, TEST_GPA + 2 * MiB, 2 * PAGE)
        assert (ei.value.errno, ei.value.remaining) == (errno.ENOENT, (TEST_GPA + size, PAGE))  # type: ignore[attr-defined]
        with pytest.raises(KvmError) as ei:
            v.pre_fault_memory(TEST_GPA + size, PAGE)
        assert (ei.value.errno, ei.value.remaining) == (errno.ENOENT, (TEST_GPA + size, PAGE))  # type: ignore[attr-defined]
        for name, value in (("test_gpa", TEST_GPA), ("test_size", size), ("host_pattern", 0),
                            ("guest_pattern", GUEST_PATTERN), ("punch_check", 0)):
            t.set_param(name, value)
        t.run()
