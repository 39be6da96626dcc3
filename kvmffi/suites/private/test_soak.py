"""Soak: the conversion and memslot-churn scenarios again and again, several vCPUs converting,
punching and moving memory at once, until the time is up (`kvmffi run --soak SECONDS`). Bounded in
time, it stops by itself; the kernel-log gate fails it at the first splat."""

import random
import threading
import time

import pytest

from kvmffi import Cap, Kvm, VmType
from kvmffi.requirements import knobs
from kvmffi.testvm import TEST_GPA, TestVm

from .conversions import PER_VCPU, run_conversions
from .test_pre_fault import SLOT_SIZE, Kicker, pre_fault_all, recreate

pytestmark = pytest.mark.private


def soak_seconds() -> float:
    seconds = knobs().soak
    if not seconds:
        pytest.skip("a soak runs when asked for: `kvmffi run --soak SECONDS [--kernel K]`, or pytest --kvm-soak SECONDS")
    return seconds


def churn_once(kvm: Kvm, vm_type: VmType) -> None:
    """One vCPU pre-faults a private slot while another thread deletes and recreates it."""
    with TestVm("sync_loop", kvm=kvm, vm_type=vm_type) as t:
        assert t.vm is not None
        if not t.vm.check_extension(Cap.PRE_FAULT_MEMORY):
            return
        mem = t.add_memory(TEST_GPA, SLOT_SIZE, "gmem", map_in_guest=False)
        t.vm.set_private(TEST_GPA, SLOT_SIZE)
        stop = threading.Event()
        errors: list[BaseException] = []

        def churn() -> None:
            try:
                while not stop.is_set():
                    recreate(t, mem)
            except BaseException as e:  # reported below
                errors.append(e)

        th = threading.Thread(target=churn, name="kvmffi-soak-churn")
        with Kicker():
            th.start()
            try:
                deadline = time.monotonic() + 2
                while time.monotonic() < deadline:
                    try:
                        t.vcpus[0].pre_fault_memory(TEST_GPA, SLOT_SIZE)
                    except OSError:
                        pass  # ENOENT/EAGAIN/EINTR/EFAULT while the slot churns (test_pre_fault checks them)
            finally:
                stop.set()
                th.join()
        assert not errors, errors
        t.vcpus[0].run()  # reload the MMU (the kicker makes it return)
        assert pre_fault_all(t.vcpus[0], TEST_GPA, SLOT_SIZE) == (TEST_GPA + SLOT_SIZE, 0)


def test_soak(kvm: Kvm, vm_type) -> None:
    seconds = soak_seconds()
    rng = random.Random(knobs().soak_seed or None)
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        if rng.random() < 0.7:
            vcpus, slots = rng.choice([(2, 1), (2, 2), (2, 4), (1, 2)])
            conv = run_conversions(kvm, vm_type, use_hypercall=rng.random() < 0.5, fallocate=rng.random() < 0.5,
                                   nr_vcpus=vcpus, nr_memslots=slots)
            assert conv.ranges_done == {i: list(range(5)) for i in range(vcpus)}
            assert PER_VCPU * vcpus % slots == 0
        else:
            churn_once(kvm, vm_type)
        rounds += 1
    print(f"soak: {rounds} rounds in {seconds:.0f} s")
    assert rounds > 0
