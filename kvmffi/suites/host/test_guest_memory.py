"""Guest and host share memory: guest_memfd in place, punched pages, backings, several vCPUs (behaviour 26)."""

import pytest

from kvmffi import GuestMemfdFlag, Kvm, VmType
from kvmffi.testvm import TEST_GPA, TestMemory, TestVm, check_marks, fill_marks

SIZE = 2 << 20
HOST_PATTERN = 0xAAAAAAAAAAAAAAAA
GUEST_PATTERN = 0x5555555555555555
SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED


def prepare_shared_mem(t: TestVm, mem: TestMemory, punch_check: bool) -> None:
    """The host's pattern in the test memory, and the shared_mem guest's parameters."""
    fill_marks(mem.host, 0, SIZE, HOST_PATTERN)
    for name, v in (("test_gpa", TEST_GPA), ("test_size", SIZE), ("host_pattern", HOST_PATTERN),
                    ("guest_pattern", GUEST_PATTERN), ("punch_check", int(punch_check))):
        t.set_param(name, v)


def share_test_memory(kvm: Kvm, vm_type: VmType, backing: str) -> None:
    with TestVm("shared_mem", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, SIZE, backing)
        prepare_shared_mem(t, mem, punch_check=False)
        t.run()
        assert check_marks(mem.host, 0, SIZE, GUEST_PATTERN) == -1


@pytest.mark.parametrize("backing", ["anon", "memfd", "thp", "gmem"])
def test_host_and_guest_share_test_memory(kvm: Kvm, vm_type, backing: str) -> None:
    """Host writes, the guest reads it at 4 GiB and writes back, the host sees the guest's writes."""
    share_test_memory(kvm, vm_type, backing)


@pytest.mark.needs_gmem_flags(SHARED)
def test_host_and_guest_share_guest_memfd_in_place(kvm: Kvm, vm_type) -> None:
    """The same through guest_memfd's own mapping (MMAP|INIT_SHARED) as the slot's shared memory."""
    share_test_memory(kvm, vm_type, "gmem-mmap")


@pytest.mark.needs_gmem_flags(SHARED)
@pytest.mark.kernel_bug("pvm_gmem_only_slot_not_served")
def test_guest_memfd_in_place_with_no_userspace_addr(kvm: Kvm, vm_type) -> None:
    """behaviour 26: slot != 0 at 4 GiB with userspace_addr = 0; a fresh mapping sees the guest's writes.

    KVM serves such a "guest_memfd only" slot (MMAP|INIT_SHARED) from the file itself
    (upstream: 6.18 and 7.3). kvm_pvm does not: the guest's first access is a KVM_EXIT_MMIO
    at the slot's GPA, a known bug there (an expected failure).
    """
    with TestVm("shared_mem", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, SIZE, "gmem-only", slot=7)
        assert t.vm is not None and t.vm.memslots[7].userspace_addr == 0
        prepare_shared_mem(t, mem, punch_check=False)
        assert mem.gmem is not None and mem.host is not None
        mem.host.close()
        mem.host = None
        with mem.gmem.mmap() as before:
            fill_marks(before, 0, SIZE, HOST_PATTERN)
        t.run()
        with mem.gmem.mmap() as after:
            assert check_marks(after, 0, SIZE, GUEST_PATTERN) == -1


@pytest.mark.needs_gmem_flags(SHARED)
@pytest.mark.parametrize("backing", ["gmem-mmap"])
def test_punched_page_reads_zero_in_guest(kvm: Kvm, vm_type, backing: str) -> None:
    """PUNCH_HOLE of page 0 while the guest has it mapped: the guest reads zeros, the rest is intact."""
    with TestVm("shared_mem", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, SIZE, backing)
        prepare_shared_mem(t, mem, punch_check=True)
        stages = []

        def on_sync(vcpu, args) -> None:
            stages.append(args[0])
            if args[0] == 1:
                assert check_marks(mem.host, 0, SIZE, GUEST_PATTERN) == -1
                assert mem.gmem is not None
                mem.gmem.punch_hole(0, 4096)
                assert mem.read(0, 4096) == bytes(4096)

        t.run(on_sync=on_sync)
        assert stages == [1, 2]
        assert check_marks(mem.host, 0, SIZE, GUEST_PATTERN) == -1


@pytest.mark.needs_gmem_flags(SHARED)
@pytest.mark.parametrize("nr_vcpus", [2, 4])
def test_vcpus_on_disjoint_ranges(kvm: Kvm, vm_type, nr_vcpus: int) -> None:
    chunk = 1 << 20
    with TestVm("multi_vcpu", kvm=kvm, vm_type=vm_type, nr_vcpus=nr_vcpus) as t:
        mem = t.add_memory(TEST_GPA, nr_vcpus * chunk, "gmem-mmap")
        t.set_param("test_gpa", TEST_GPA)
        t.set_param("chunk_size", chunk)
        r = t.run()
        assert r.syncs == {i: 16 for i in range(nr_vcpus)}
        for i in range(nr_vcpus):
            last = 0x0101010101010101 * ((0x10 * (i + 1) + 15) & 0xFF)
            assert check_marks(mem.host, i * chunk, chunk, last) == -1, f"vCPU {i}'s chunk"
