"""Guest programs on this host's KVM: ucalls, asserts, exceptions, triple fault, watchdog, exits."""

import threading

import pytest

from kvmffi import Cap, Exit, GuestMemfdFlag, IoDirection, IoExit, Kvm, MmioExit, Regs
from kvmffi.guest import x86
from kvmffi.probes import run_map_gpa_range
from kvmffi.requirements import skip_missing
from kvmffi.testvm import (TEST_GPA, GuestAssertionError, GuestException, GuestHang, GuestTripleFault, TestVm,
                           UnexpectedExit)


@pytest.fixture
def scenario(kvm: Kvm, vm_type):
    made: list[TestVm] = []

    def make(which: str, value: int = 0, timeout: float = 10.0) -> TestVm:
        t = TestVm("scenarios", kvm=kvm, vm_type=vm_type, timeout=timeout)
        made.append(t)
        t.set_param("scenario", which)
        t.set_param("value", value)
        t.set_param("test_gpa", TEST_GPA)
        return t

    yield make
    for t in made:
        t.close()


def test_printf_reaches_host(scenario) -> None:
    r = scenario("S_PRINTF", value=0xBEEF).run()
    assert r.printed == ["hello from vcpu 0: value -7 0xbeef"]


def test_sync_carries_values(kvm: Kvm) -> None:
    seen = []
    with TestVm("sync_loop", kvm=kvm) as t:
        t.set_param("iterations", 5)
        r = t.run(on_sync=lambda v, args: seen.append(args[0]))
    assert seen == [0, 1, 2, 3, 4] and r.syncs == {0: 5}


def test_guest_assert_reports_condition_and_line(scenario) -> None:
    with pytest.raises(GuestAssertionError, match=r"guest assertion failed at .*scenarios\.c:\d+: value == 42$"):
        scenario("S_ASSERT", value=7).run()


def test_guest_assert_eq_reports_both_values(scenario) -> None:
    with pytest.raises(GuestAssertionError, match=r"value == 42 \(0x7 vs 0x2a; as signed: 7 vs 42\)"):
        scenario("S_ASSERT_EQ", value=7).run()


def test_guest_assert_passes(scenario) -> None:
    scenario("S_ASSERT_EQ", value=42).run()


def test_page_fault_reports_cr2_and_source_line(scenario) -> None:
    """Test memory that was never mapped in the guest page tables faults: #PF with CR2 = the address."""
    with pytest.raises(GuestException) as ei:
        scenario("S_PAGE_FAULT").run()
    e = ei.value
    assert (e.vector, e.cr2, e.error_code) == (14, TEST_GPA, 0)
    assert "guest #PF at rip=" in str(e) and "(guest_main at scenarios.c:" in str(e)
    assert "cr2=0x100000000 error_code=0x0 (read, not present)" in str(e)


@pytest.mark.parametrize("which,vector,name", [("S_UD", 6, "#UD"), ("S_DIVIDE", 0, "#DE"), ("S_GP", 13, "#GP")])
def test_exceptions_are_reported(scenario, which: int, vector: int, name: str) -> None:
    with pytest.raises(GuestException, match=f"guest {name} at rip=0x[0-9a-f]+ \\(guest_main at scenarios.c") as ei:
        scenario(which).run()
    assert ei.value.vector == vector


def test_triple_fault_is_reported_with_registers(scenario) -> None:
    """With an empty IDT, #UD cannot be delivered: triple fault, KVM_EXIT_SHUTDOWN."""
    with pytest.raises(GuestTripleFault) as ei:
        scenario("S_TRIPLE_FAULT").run()
    msg = str(ei.value)
    assert "KVM_EXIT_SHUTDOWN" in msg and "regs: rax=" in msg and "memslots:" in msg


def test_watchdog_stops_a_spinning_guest(scenario) -> None:
    """A guest that never exits is kicked out of KVM_RUN and reported with its RIP; nothing is left behind."""
    threads = threading.active_count()
    t = scenario("S_HANG", timeout=0.5)
    with pytest.raises(GuestHang, match=r"vCPU 0 did not exit within 0.5 s; stopped at rip=0x[0-9a-f]+ \(guest_main"):
        t.run()
    assert threading.active_count() == threads
    # the vCPU is usable again afterwards: immediate_exit was cleared
    assert t.vcpus[0].immediate_exit is False


def test_unhandled_mmio_is_an_unexpected_exit(kvm: Kvm, vm_type) -> None:
    """Mapped in the guest page tables but no memslot: the read is KVM_EXIT_MMIO, named in the error."""
    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        t.pt.map(TEST_GPA, TEST_GPA, 4096)
        t.set_param("scenario", "S_READ_TEST_MEMORY")
        t.set_param("test_gpa", TEST_GPA)
        with pytest.raises(UnexpectedExit, match=r"unexpected exit KVM_EXIT_MMIO MmioExit\(phys_addr=4294967296"):
            t.run()


def test_mmio_read_gets_the_hosts_answer(kvm: Kvm, vm_type) -> None:
    seen = []

    def on_exit(vcpu, ex) -> bool:
        assert isinstance(ex, MmioExit) and not ex.is_write and ex.phys_addr == TEST_GPA and ex.len == 8
        ex.respond((0x1122334455667788).to_bytes(8, "little"))
        return True

    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        t.pt.map(TEST_GPA, TEST_GPA, 4096)
        t.set_param("scenario", "S_READ_TEST_MEMORY")
        t.set_param("test_gpa", TEST_GPA)
        t.run(on_sync=lambda v, a: seen.append(a[1]), on_exit=on_exit)
    assert seen == [0x1122334455667788]


def test_write_to_readonly_memslot_is_mmio_exit(kvm: Kvm, vm_type) -> None:
    """A write to a KVM_MEM_READONLY slot exits as MMIO with the data; the memory is unchanged."""
    exits = []
    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, 4096, "anon", readonly=True)
        mem.write(0, b"\x11" * 8)
        t.set_param("scenario", "S_WRITE_TEST_MEMORY")
        t.set_param("test_gpa", TEST_GPA)
        t.set_param("value", 0xCAFEF00D)
        def on_exit(v: object, ex: Exit) -> bool:
            exits.append(ex)
            return isinstance(ex, MmioExit)

        t.run(on_exit=on_exit)
        mmio = [e for e in exits if isinstance(e, MmioExit)]
        assert mmio == exits, exits
        assert [(e.phys_addr, e.is_write, e.data) for e in mmio] == [(TEST_GPA, True, (0xCAFEF00D).to_bytes(8, "little"))]
        assert mem.read(0, 8) == b"\x11" * 8


@pytest.mark.needs_gmem_flags(GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED)
def test_guest_executes_code_from_guest_memfd(kvm: Kvm, vm_type) -> None:
    """The host writes `mov $0x1234abcd, %eax; ret` into guest_memfd; the guest calls it."""
    code = bytes.fromhex("b8cdab3412c3")
    got = []
    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, 2 << 20, "gmem-mmap")
        mem.write(0, code)
        t.set_param("scenario", "S_CALL_TEST_MEMORY")
        t.set_param("test_gpa", TEST_GPA)
        t.run(on_sync=lambda v, a: got.append(a[1]))
    assert got == [0x1234ABCD]


@pytest.mark.kernel_bug("pvm_hypercall_exits_not_delivered")
def test_hypercall_exit(kvm: Kvm, vm_type) -> None:
    """KVM_HC_MAP_GPA_RANGE reaches userspace with nr/args/longmode; the guest sees the host's ret.

    Where vmcall/vmmcall never leave KVM_RUN (kvm_pvm) the watchdog ends the run after 5 s
    (GuestHang): a known bug there, an expected failure.
    """
    if not kvm.check_extension(Cap.EXIT_HYPERCALL) & (1 << 12):
        skip_missing("KVM_CAP_EXIT_HYPERCALL lacks bit 12 (KVM_HC_MAP_GPA_RANGE): needs Linux >= 6.0")
    r = run_map_gpa_range(kvm, vm_type, ret=0x77, timeout=5)
    assert [(e.nr, e.args[:3], e.longmode) for e in r.exits] == [(12, (TEST_GPA, 1, 0), True)]
    assert r.seen == [0x77]


def test_registers_synced_in_kvm_run_match_kvm_get_regs(kvm: Kvm) -> None:
    """KVM_CAP_SYNC_REGS with KVM_SYNC_X86_REGS: at every exit KVM stores struct kvm_regs in
    kvm_run.s, and each register read from there equals KVM_GET_REGS's; after KVM_SET_REGS the
    next read sees the new value (kvm_run's copy is stale until the next exit)."""
    with TestVm("sync_loop", kvm=kvm) as t:
        v = t.vcpus[0]
        got = t.vm.check_extension(Cap.SYNC_REGS) if t.vm is not None else 0
        if not got & 1:
            skip_missing(f"KVM_CAP_SYNC_REGS is {got:#x} on this VM: no KVM_SYNC_X86_REGS (Linux >= 4.17 on x86)")
        assert v.sync_regs, "the Vm should turn sync regs on where the kernel offers them"
        t.set_param("iterations", 2)
        assert v.run_io_fast(t.abi.port) is None  # the first ucall
        names = [f for f in Regs.__dataclass_fields__]
        synced = {n: v.get_reg(n) for n in names}
        assert synced == {n: getattr(v.get_regs(), n) for n in names}
        assert t.image.entry <= synced["rip"] < t.image.end and synced["rdi"] < t.low_size
        v.set_regs(r12=0x5EED)
        assert v.get_reg("r12") == 0x5EED
        v.sync_regs = False
        assert v.run_io_fast(t.abi.port) is None  # the second ucall, registers through KVM_GET_REGS only
        assert v.get_reg("r12") == v.get_regs().r12


def test_io_exit_decoding(kvm: Kvm) -> None:
    """The ucall is an IN on port 0x1000 of one byte: check the decoded IoExit directly."""
    with TestVm("sync_loop", kvm=kvm) as t:
        t.set_param("iterations", 1)
        ex = t.vcpus[0].run()
    assert isinstance(ex, IoExit), ex
    assert (ex.direction, ex.size, ex.port, ex.count) == (IoDirection.IN, 1, 0x1000, 1)


def test_restart_runs_the_guest_again(kvm: Kvm) -> None:
    """TestVm.restart completes the last exit and starts the program again: it reads the new value."""
    with TestVm("read_loop", kvm=kvm) as t:
        mem = t.add_memory(TEST_GPA, 2 << 20, "anon")
        t.set_param("test_gpa", TEST_GPA)
        seen: list[int] = []
        for value in (0x1111, 0x2222, 0x3333):
            mem.write(0, value.to_bytes(8, "little"))
            t.restart()
            t.run(on_sync=lambda v, a: seen.append(a[1]) if a[0] == 1 else None)
    assert seen == [0x1111, 0x2222, 0x3333]


def test_testvm_vcpus_start_from_their_own_reset_state(kvm: Kvm, vm_type) -> None:
    """TestVm reads a vCPU's reset state (KVM_GET_SREGS) once per process for each VM type and vCPU
    index and reuses it with its long-mode registers: a later TestVm's vCPUs hold what a fresh vCPU
    of the same index holds after the same set-up (APIC base, CR8, pending interrupts, LDT...)."""
    with TestVm("sync_loop", kvm=kvm, vm_type=vm_type, nr_vcpus=2):
        pass
    with TestVm("sync_loop", kvm=kvm, vm_type=vm_type, nr_vcpus=2) as t, kvm.create_vm(vm_type) as vm:
        for i, v in enumerate(t.vcpus):
            fresh = vm.create_vcpu(i)
            fresh.set_cpuid2(kvm.supported_cpuid)  # long mode must be in the vCPU's CPUID first
            sregs = fresh.get_sregs()
            x86.setup_long_mode(sregs, t.pt.pml4)
            fresh.set_sregs(sregs)
            assert v.get_sregs() == fresh.get_sregs(), f"vCPU {i}"
