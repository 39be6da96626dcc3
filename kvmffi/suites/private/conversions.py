"""Host side of the private_conversions guest: converts, punches and checks on request."""

from __future__ import annotations

import threading
from typing import Any

from kvmffi import Cap, HypercallExit, HypercallNr, MapGpaAttr, MemoryAttribute, Vm
from kvmffi.testvm import TEST_GPA, TestMemory, TestVm, check_marks, fill_marks

MiB = 1 << 20
PER_VCPU = 4 * MiB


class Converter:
    """Answers the guest: conversions (ucall or KVM_HC_MAP_GPA_RANGE), punches, shared-view checks."""

    def __init__(self, tvm: TestVm, regions: list[TestMemory], fallocate: bool) -> None:
        assert tvm.vm is not None
        self.vm: Vm = tvm.vm
        self.regions = regions
        self.fallocate = fallocate
        self.lock = threading.Lock()
        self.ranges_done: dict[int, list[int]] = {}
        self.conversions = 0
        self.hypercalls: list[tuple[int, tuple[int, ...], bool]] = []
        # the guest's stage numbers, as private_conversions.c defines them
        self.check_shared, self.convert_stage, self.punch, self.range_done = (
            tvm.const(n) for n in ("SYNC_CHECK_SHARED", "SYNC_CONVERT", "SYNC_PUNCH", "SYNC_RANGE_DONE"))

    def _pieces(self, gpa: int, size: int) -> list[tuple[TestMemory, int, int]]:
        out = []
        end = gpa + size
        for r in self.regions:
            lo, hi = max(gpa, r.gpa), min(end, r.gpa + r.size)
            if lo < hi:
                out.append((r, lo - r.gpa, hi - lo))
        assert sum(n for _, _, n in out) == size, f"[{gpa:#x}, {end:#x}) is not all test memory"
        return out

    def convert(self, gpa: int, size: int, private: bool) -> None:
        if self.fallocate:
            for r, off, n in self._pieces(gpa, size):
                assert r.gmem is not None
                if private:
                    r.gmem.allocate(r.gmem_offset + off, n)
                else:
                    r.gmem.punch_hole(r.gmem_offset + off, n)
        self.vm.set_memory_attributes(gpa, size, MemoryAttribute.PRIVATE if private else 0)
        with self.lock:
            self.conversions += 1

    def on_sync(self, vcpu: Any, args: tuple[int, ...]) -> None:
        stage = args[0]
        if stage == self.check_shared:
            gpa, size, pattern, new = args[1:5]
            for r, off, n in self._pieces(gpa, size):
                bad = check_marks(r.host, off, n, pattern)
                assert bad == -1, (f"vCPU {vcpu.id}: host's shared view at {r.gpa + off + bad:#x} is not "
                                   f"{pattern:#x} (private writes must be invisible to it)")
                if new:
                    fill_marks(r.host, off, n, new)  # the guest reads it back after the sync
        elif stage == self.convert_stage:
            self.convert(args[1], args[2], bool(args[3]))
        elif stage == self.punch:
            for r, off, n in self._pieces(args[1], args[2]):
                assert r.gmem is not None
                r.gmem.punch_hole(r.gmem_offset + off, n)
        elif stage == self.range_done:
            with self.lock:
                self.ranges_done.setdefault(vcpu.id, []).append(args[1])
        else:
            raise AssertionError(f"unknown stage {stage}")

    def on_exit(self, vcpu: Any, ex: Any) -> bool:
        if isinstance(ex, HypercallExit) and ex.nr == HypercallNr.MAP_GPA_RANGE:
            gpa, npages, attrs = ex.args[0], ex.args[1], ex.args[2]
            with self.lock:
                self.hypercalls.append((ex.nr, ex.args[:3], ex.longmode))
            # what KVM left there, before the answer below overwrites it (9a1dfeff4414: KVM clears it)
            assert ex.ret == 0, (f"KVM left run->hypercall.ret = {ex.ret:#x} at KVM_EXIT_HYPERCALL (vCPU {vcpu.id}, "
                                 f"gpa {gpa:#x}): it must clear it before the exit")
            self.convert(gpa, npages * 4096, bool(attrs & MapGpaAttr.ENCRYPTED))
            ex.set_ret(0)
            return True
        return False


def run_conversions(kvm: Any, vm_type: Any, *, use_hypercall: bool, fallocate: bool, nr_vcpus: int = 1,
                    nr_memslots: int = 1, shared_backing: str = "anon") -> Converter:
    total = nr_vcpus * PER_VCPU
    with TestVm("private_conversions", kvm=kvm, vm_type=vm_type, nr_vcpus=nr_vcpus, timeout=120) as t:
        assert t.vm is not None
        if use_hypercall:
            t.vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << 12)
        gmem = t.vm.create_guest_memfd(total)
        try:
            per_slot = total // nr_memslots
            regions = [t.add_memory(TEST_GPA + i * per_slot, per_slot, "gmem", gmem=gmem, gmem_offset=i * per_slot,
                                    shared_backing=shared_backing) for i in range(nr_memslots)]
            t.set_param("test_gpa", TEST_GPA)
            t.set_param("per_vcpu_size", PER_VCPU)
            t.set_param("use_hypercall", int(use_hypercall))
            conv = Converter(t, regions, fallocate)
            t.run(on_sync=conv.on_sync, on_exit=conv.on_exit)
        finally:
            t.close()
            gmem.close()
    return conv

