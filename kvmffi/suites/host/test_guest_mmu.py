"""What the guest's own paging and KVM's emulation hand back: a mapping the VMM changes behind the
guest's back, and a write that KVM splits into two MMIO exits.

The retargeting tests matter most on the shadow MMU (kvm_amd.npt=0 / kvm_intel.ept=0, the matrix's
7.3-shadow-mmu), where KVM shadows the guest's page tables and write-protects them against the
guest, not against the VMM: the guest's read leaves a read-only shadow PTE (its PTE's dirty bit is
clear), and its write after the VMM changed the PTE replaces that present shadow PTE.
"""

import struct

import pytest

from kvmffi import Kvm, MmioExit
from kvmffi.kernels import mmu_mode
from kvmffi.testvm import TEST_GPA, TestVm

PAGE = 4096
VALUE = 0x1122334455667788
MMIO_GPA = 0xC000_0000          # no memslot here: the guest's accesses are MMIO exits


def _retarget(kvm: Kvm, vm_type, target_gpa: int, target_is_mmio: bool) -> tuple[list[tuple[int, ...]],
                                                                                     list[MmioExit], int, int]:
    """The guest reads GVA TEST_GPA (mapped to page A), the VMM maps that GVA to ``target_gpa``, the
    guest writes VALUE there and reads it back. Returns (syncs, MMIO exits, then the first words of
    pages A and A + 4 KiB)."""
    syncs: list[tuple[int, ...]] = []
    mmio: list[MmioExit] = []
    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        mem = t.add_memory(TEST_GPA, 2 * PAGE, "anon")
        t.set_param("scenario", "S_READ_SYNC_WRITE")
        t.set_param("test_gpa", TEST_GPA)
        t.set_param("value", VALUE)

        def on_sync(v, args) -> None:
            syncs.append(tuple(args))
            if args[0] == 1:   # the guest has read page A through the GVA: point the GVA elsewhere
                t.pt.map(TEST_GPA, target_gpa, PAGE)

        def on_exit(v, ex) -> bool:
            if isinstance(ex, MmioExit) and target_is_mmio:
                mmio.append(ex)
                if not ex.is_write:
                    ex.respond(struct.pack("<Q", VALUE)[:ex.len])
                return True
            return False

        t.run(on_sync=on_sync, on_exit=on_exit)
        assert mem.host is not None
        a, b = (struct.unpack_from("<Q", bytes(mem.host[off:off + 8]))[0] for off in (0, PAGE))
    return syncs, mmio, a, b


def test_guest_write_follows_a_pte_the_vmm_changed(kvm: Kvm, vm_type) -> None:
    """After the guest read GVA V (page A), the VMM points V's PTE at page B; the guest's write then
    lands in B, not A, and reads back. On the shadow MMU this replaces a present shadow PTE with one
    for another page, which must not WARN ("KVM: x86/mmu: Only WARN in direct MMUs when overwriting
    shadow-present SPTE", df8374607577, CVE-2026-23402, 7.0-rc6; the kernel-log gate fails the test on
    the WARN). With TDP the CPU may also keep the stale translation (the VMM did not flush): A or B."""
    syncs, _, a, b = _retarget(kvm, vm_type, TEST_GPA + PAGE, target_is_mmio=False)
    assert [s[0] for s in syncs] == [1, 2] and syncs[1][1] == VALUE, f"the guest's syncs: {syncs}"
    if mmu_mode().tdp is False:
        assert (a, b) == (0, VALUE), f"shadow MMU: the write went to A={a:#x} B={b:#x} (want it in B only)"
    else:
        assert (a, b) in ((0, VALUE), (VALUE, 0)), f"the write went to A={a:#x} B={b:#x}"


def test_guest_write_to_a_pte_retargeted_at_mmio_exits(kvm: Kvm, vm_type) -> None:
    """The same with page B a GPA no memslot backs: on the shadow MMU the guest's write is a
    KVM_EXIT_MMIO at B carrying VALUE, and KVM must drop the present shadow PTE for A when it installs
    the MMIO one ("KVM: x86/mmu: Drop/zap existing present SPTE even when creating an MMIO SPTE",
    aad885e77496, CVE-2026-23401, 7.0-rc6; before it a WARN, which the gate fails)."""
    syncs, mmio, a, _ = _retarget(kvm, vm_type, MMIO_GPA, target_is_mmio=True)
    writes = [(e.phys_addr, e.data) for e in mmio if e.is_write]
    assert [s[0] for s in syncs] == [1, 2] and syncs[1][1] == VALUE, f"the guest's syncs: {syncs}"
    if mmu_mode().tdp is False:
        assert writes == [(MMIO_GPA, struct.pack("<Q", VALUE))] and a == 0, \
            f"shadow MMU: MMIO writes {writes}, page A {a:#x}"
    else:
        assert (writes, a) in (([], VALUE), ([(MMIO_GPA, struct.pack("<Q", VALUE))], 0)), \
            f"MMIO writes {writes}, page A {a:#x}"


def _run_in_new_thread(vcpu, timeout: float = 30.0):
    """One KVM_RUN from a thread of its own, which then ends (its kernel stack is freed)."""
    import signal
    import threading

    from kvmffi.testvm import KICK_SIGNAL
    out: list[object] = []
    th = threading.Thread(target=lambda: out.append(vcpu.run()), name="kvmffi-one-run")
    th.start()
    th.join(timeout)
    if th.is_alive():
        signal.pthread_kill(th.ident, KICK_SIGNAL)  # type: ignore[arg-type]
        th.join(10)
        raise AssertionError(f"KVM_RUN did not return within {timeout} s")
    return out[0] if out else None


@pytest.mark.parametrize("runner", ["same thread", "each KVM_RUN from a new thread"])
def test_enter_across_two_mmio_pages_exits_with_both_halves(kvm: Kvm, vm_type, runner: str) -> None:
    """The guest's ENTER pushes RBP = 0x1122334455667788 at MMIO_GPA + 0xffc: KVM emulates the 8-byte
    write that crosses into the next page as two KVM_EXIT_MMIOs, (MMIO_GPA + 0xffc, 4 bytes
    88 77 66 55) then (MMIO_GPA + 0x1000, 4 bytes 44 33 22 11). The second one is sent on the next
    KVM_RUN, from data KVM must have kept: also when that KVM_RUN comes from another thread, after
    the first one's thread (and its kernel stack) is gone ("KVM: x86: Use scratch field in MMIO
    fragment to hold small write values", 0b16e69d17d8, CVE-2026-31588; before it the second half
    was read from the emulator's dead stack frame)."""
    mmio: list[tuple[int, bytes, bool]] = []
    with TestVm("scenarios", kvm=kvm, vm_type=vm_type) as t:
        t.pt.map(MMIO_GPA, MMIO_GPA, 2 * PAGE)   # mapped in the guest, backed by no memslot
        t.set_param("scenario", "S_ENTER_ACROSS_MMIO")
        t.set_param("test_gpa", MMIO_GPA)
        t.set_param("value", VALUE)
        if runner != "same thread":
            for _ in range(2):
                ex = _run_in_new_thread(t.vcpus[0])
                assert isinstance(ex, MmioExit), f"KVM_RUN from a new thread: {ex!r} (want KVM_EXIT_MMIO)"
                mmio.append((ex.phys_addr, ex.data, ex.is_write))

        def on_exit(v, ex) -> bool:
            if isinstance(ex, MmioExit):
                mmio.append((ex.phys_addr, ex.data, ex.is_write))
                return True
            return False

        t.run(on_exit=on_exit)
    raw = struct.pack("<Q", VALUE)
    assert mmio == [(MMIO_GPA + 0xFFC, raw[:4], True), (MMIO_GPA + 0x1000, raw[4:], True)], \
        "the two MMIO write exits: " + ", ".join(f"({a:#x}, {d.hex()}, {'w' if w else 'r'})" for a, d, w in mmio)
