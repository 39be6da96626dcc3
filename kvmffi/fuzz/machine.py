"""The fuzzer's state machine: its rules, one VM's calls checked against the contract
(kvmffi.contract), the model (kvmffi.fuzzmodel) and the kernel log. This module imports hypothesis:
kvmffi.fuzz imports it only when a run starts."""

from __future__ import annotations

import errno as E
import os
from collections.abc import Callable
from typing import Any, ClassVar, cast

from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, multiple, precondition, rule

from .. import contract
from .. import fuzzmodel as fm
from ..errors import HostMemoryFault, errno_name
from ..exits import IntrExit, MemoryFaultExit
from ..guest_memfd import FALLOC_FL_PUNCH_HOLE, GuestMemfd
from ..kmsg import KernelLog, find_splats
from ..testvm import TestVm
from ..uapi import Cap, GuestMemfdFlag, MemoryAttribute, MemslotFlag, VmType
from .findings import STATS, Finding, replay
from .space import (GPA_BASE, GPA_SPAN, KICK_AFTER, MAX_GMEM, PAGE, RESOURCE_ERRNOS, Slot, gmem_flags, gpas, kick_later,
                    memslot_flags, modes, offsets, sizes, slot_sizes)


class GmemMachine(RuleBasedStateMachine):
    """Random calls on one VM of type ``vm_type``. The per-run parameters are class attributes, set by
    build_machine: the VM type, the kernel log to watch (None: not watched), and the kinds of finding
    this run already reported (counted, not raised)."""

    vm_type: ClassVar[VmType] = VmType.DEFAULT
    log: ClassVar[KernelLog | None] = None
    reported: ClassVar[frozenset[str]] = frozenset()

    gmems = Bundle("gmems")
    maps = Bundle("maps")

    def __init__(self) -> None:
        super().__init__()
        STATS.examples += 1
        STATS.progress()
        self.script = ["from kvmffi import Kvm", f"kvm = Kvm(); vm = kvm.create_vm({int(self.vm_type)})",
                       "vcpu = vm.create_vcpu(0)"]
        self.names: dict[int, str] = {}
        self.tvm = TestVm("read_loop", vm_type=self.vm_type, timeout=KICK_AFTER)
        assert self.tvm.vm is not None
        self.vm = self.tvm.vm
        self.vcpu = self.tvm.vcpus[0]
        self.slots: dict[int, Slot] = {}
        self.mappings: list[tuple[GuestMemfd, Any]] = []
        self.mapped_pages: set[int] = set()
        self.made: list[GuestMemfd] = []
        self.model: dict[tuple[int, int], int] = {}               # (gmem id, page) -> first byte, shared view
        self.private_pages: set[int] = set()                      # GPA pages set private
        self.fds_at_start = len(os.listdir("/proc/self/fd"))
        if self.log is not None:
            self.log.mark()

    # -- bookkeeping -----------------------------------------------------------------
    def _name(self, obj: Any, prefix: str) -> str:
        key = id(obj)
        if key not in self.names:
            self.names[key] = f"{prefix}{len(self.names)}"
        return self.names[key]

    def _call(self, what: str, line: str, fn: Callable[[], Any]) -> tuple[int, Any]:
        self.script.append(line)
        try:
            res = fn()
            err = 0
        except HostMemoryFault as e:
            res, err = None, e.errno or 0
        except OSError as e:
            res, err = None, e.errno or 0
        except Exception as e:  # kvmffi itself failed on these arguments: a finding too
            import traceback
            tb = "".join(traceback.format_exception(e)[-4:])
            raise Finding(f"kvmffi raised {type(e).__name__}: {e}\n{tb}" + self.replay()) from None
        STATS.record(what, err)
        try:
            contract.check(what, err)
        except AssertionError as e:
            raise Finding(str(e) + self.replay()) from None
        return err, res

    def _wrong(self, bug: str | None, what: str, kind: str) -> None:
        """A wrong answer: a finding, unless it is a known bug of this kernel or a kind this run
        already reported (counted, not raised)."""
        from ..kernels import known_bug
        if bug is not None and known_bug(bug).affected():
            STATS.known[bug] = STATS.known.get(bug, 0) + 1
            return
        if kind in self.reported:
            STATS.repeats[kind] = STATS.repeats.get(kind, 0) + 1
            return
        raise Finding(what + self.replay(), kind)

    def replay(self) -> str:
        return replay(self.script)

    # -- guest_memfd -------------------------------------------------------------------
    @rule(target=gmems, size=sizes, flags=gmem_flags)
    def create_gmem(self, size: int, flags: int) -> Any:
        line = f"g = vm.create_guest_memfd({size:#x}, {flags:#x})"
        err, g = self._call("KVM_CREATE_GUEST_MEMFD", line, lambda: self.vm.create_guest_memfd(size, flags))
        if err:
            return multiple()
        self.script[-1] = f"{self._name(g, 'g')} = vm.create_guest_memfd({size:#x}, {flags:#x})"
        self.made.append(g)
        return g

    @rule(g=st.one_of(gmems, maps.map(lambda gm: gm[0])), mode=modes, offset=offsets, length=slot_sizes)
    def fallocate(self, g: GuestMemfd, mode: int, offset: int, length: int) -> None:
        if g.closed:
            return
        n = self._name(g, "g")
        err, _ = self._call("fallocate", f"{n}.fallocate({mode:#x}, {offset:#x}, {length:#x})",
                            lambda: g.fallocate(mode, offset, length))
        if not err and mode & FALLOC_FL_PUNCH_HOLE:
            for p in range(offset // PAGE, (offset + length + PAGE - 1) // PAGE):
                self.model.pop((id(g), p), None)

    @rule(target=maps, g=gmems)
    def mmap(self, g: GuestMemfd) -> Any:
        if g.closed or g.size > MAX_GMEM:
            return multiple()
        n = self._name(g, "g")
        err, m = self._call("mmap", f"m = {n}.mmap()", lambda: g.mmap())
        if err:
            return multiple()
        self.script[-1] = f"{self._name(m, 'm')} = {n}.mmap()"
        self.mappings.append((g, m))
        return (g, m)

    @rule(gm=maps, page=st.integers(min_value=0, max_value=MAX_GMEM // PAGE), value=st.integers(1, 255))
    def host_write(self, gm: tuple[GuestMemfd, Any], page: int, value: int) -> None:
        g, m = gm
        if m.closed or page * PAGE >= len(m):
            return
        err, _ = self._call("host access", f"{self._name(m, 'm')}[{page * PAGE:#x}] = {value:#x}",
                            lambda: m.__setitem__(page * PAGE, value))
        if not err:
            self.model[(id(g), page)] = value
        elif GuestMemfdFlag.INIT_SHARED in g.flags:
            raise Finding(f"host write to page {page} of a MMAP|INIT_SHARED guest_memfd faulted" + self.replay())

    @rule(gm=maps, page=st.integers(min_value=0, max_value=MAX_GMEM // PAGE))
    def host_read(self, gm: tuple[GuestMemfd, Any], page: int) -> None:
        g, m = gm
        if m.closed or page * PAGE >= len(m):
            return
        err, v = self._call("host access", f"{self._name(m, 'm')}[{page * PAGE:#x}]", lambda: m[page * PAGE])
        if not err and v != self.model.get((id(g), page), 0):
            raise Finding(f"host read {v:#x} from page {page} of {self._name(g, 'g')}, the model says "
                          f"{self.model.get((id(g), page), 0):#x}" + self.replay())
        if err and GuestMemfdFlag.INIT_SHARED in g.flags:
            raise Finding(f"host read of page {page} of a MMAP|INIT_SHARED guest_memfd faulted" + self.replay())

    @rule(gm=consumes(maps))
    def munmap(self, gm: tuple[GuestMemfd, Any]) -> None:
        g, m = gm
        if m.closed or any(s.keep is m for s in self.slots.values()):
            return  # a slot points into it: the VM keeps it (kvmffi's order: VM first)
        self.script.append(f"{self._name(m, 'm')}.close()")
        m.close()

    @rule(g=consumes(gmems))
    def close_gmem(self, g: GuestMemfd) -> None:
        if g.closed:
            return
        self.script.append(f"{self._name(g, 'g')}.close()")
        g.close()

    # -- memslots ----------------------------------------------------------------------
    @rule(slot=st.integers(min_value=1, max_value=8), gpa=gpas, size=slot_sizes, flags=memslot_flags,
          g=st.one_of(st.none(), gmems), offset=offsets, use_mapping=st.booleans())
    def set_memslot(self, slot: int, gpa: int, size: int, flags: int, g: GuestMemfd | None, offset: int,
                    use_mapping: bool) -> None:
        if g is not None and g.closed:
            g = None
        hva, keep, in_place = 0, None, False
        if use_mapping and g is not None:
            for mg, mm in self.mappings:
                if mg is g and not mm.closed:
                    in_place = 0 <= offset and offset + size <= len(mm)
                    hva, keep = (mm.addr + offset if in_place else mm.addr), mm
                    break
        if keep is None and size:
            keep = self.tvm.low  # valid host memory for the slot's shared half
            hva = keep.addr if keep is not None else 0
            size = min(size, len(keep) if keep is not None else 0)
        self._set_memslot(slot, gpa, size, hva, flags, g, offset, keep, in_place)

    def _set_memslot(self, slot: int, gpa: int, size: int, hva: int, flags: int, g: GuestMemfd | None,
                     offset: int, keep: Any, in_place: bool) -> None:
        """KVM_SET_USER_MEMORY_REGION2, checked against the model's prediction; the model follows."""
        gn = self._name(g, "g") if g is not None else "None"
        line = (f"vm.set_user_memory_region2({slot}, {gpa:#x}, {size:#x}, {hva:#x}, {flags:#x}, {gn}, "
                f"{offset:#x})")
        expect = self._expect_memslot(slot, gpa, size, flags, hva, g, offset)
        err, _ = self._call("KVM_SET_USER_MEMORY_REGION2", line,
                            lambda: self.vm.set_user_memory_region2(slot, gpa, size, hva, flags, g, offset,
                                                                    keep=keep))
        if expect is not None and not err:
            kind = expect.rules[0].kind
            bug = "gmem_bind_offset_overflow" if kind == "gmem_bind_past_end" else None
            self._wrong(bug, f"KVM_SET_USER_MEMORY_REGION2 succeeded where it must fail: {expect.describe()}",
                        kind)
        elif expect is not None and err not in expect.errnos and err not in RESOURCE_ERRNOS:
            self._wrong(None, f"KVM_SET_USER_MEMORY_REGION2 answered {errno_name(err)} where it must fail with "
                        f"{' or '.join(errno_name(e) for e in sorted(expect.errnos))}: {expect.describe()}",
                        "wrong_errno:" + expect.rules[0].kind)
        if not err:
            if size:
                gm = g if flags & MemslotFlag.GUEST_MEMFD else None
                self.slots[slot] = Slot(gpa, size, gm, offset, keep, in_place and gm is not None, flags, hva)
            else:
                self.slots.pop(slot, None)

    @precondition(lambda self: bool(self.slots))
    @rule(data=st.data(), flip=st.sampled_from([int(MemslotFlag.GUEST_MEMFD), int(MemslotFlag.READONLY),
                                                int(MemslotFlag.LOG_DIRTY_PAGES), 0]),
          move=st.sampled_from([0, 0, PAGE, GPA_SPAN]))
    def change_slot(self, data: Any, flip: int, move: int) -> None:
        """A live slot set again with the same size and userspace_addr, a flag flipped and/or moved:
        the changes KVM allows (dirty logging, moving a plain slot) and those it refuses."""
        n = data.draw(st.sampled_from(sorted(self.slots)))
        cur = self.slots[n]
        flags = cur.flags ^ flip
        g = cur.gmem if cur.gmem is not None and not cur.gmem.closed else None
        self._set_memslot(n, cur.gpa + move, cur.size, cur.hva, flags, g, cur.offset, cur.keep, cur.in_place)

    @precondition(lambda self: any(s.gmem is not None and not s.gmem.closed for s in self.slots.values()))
    @rule(data=st.data(), slot=st.integers(min_value=1, max_value=8), shift=st.sampled_from([0, PAGE, -PAGE]))
    def bind_range_again(self, data: Any, slot: int, shift: int) -> None:
        """A guest_memfd range another slot binds (or one page off it), bound again at a GPA no slot
        uses: refused, with EINVAL before 7.2 and EEXIST from it; a range beside it may succeed."""
        bound = sorted(n for n, s in self.slots.items() if s.gmem is not None and not s.gmem.closed)
        cur = self.slots[data.draw(st.sampled_from(bound))]
        offset = max(cur.offset + shift, 0)
        gpa = GPA_BASE + GPA_SPAN + (slot << 24)   # above every GPA the other rules use
        self._set_memslot(slot, gpa, cur.size, cur.hva, int(MemslotFlag.GUEST_MEMFD),
                          cur.gmem, offset, cur.keep, False)

    def _expect_memslot(self, slot: int, gpa: int, size: int, flags: int, hva: int, g: GuestMemfd | None,
                        offset: int) -> fm.Expect | None:
        from ..kernels import behaviour
        # every slot of the VM, the harness's own included; a binding ends when its guest_memfd closes
        model = {}
        for n, m in self.vm.memslots.items():
            mine = self.slots.get(n)
            gm = mine.gmem if mine is not None else None
            model[n] = fm.SlotModel(m.gpa, m.size, int(m.flags), m.userspace_addr,
                                    id(gm) if gm is not None and not gm.closed else None, m.guest_memfd_offset)
        bits = behaviour("memslot_flag_bits_3_31").expected()
        overlap = tuple(e for e in behaviour("gmem_range_already_bound").expected() if isinstance(e, int))
        return fm.set_memslot(model, slot, gpa, size, flags, hva,
                              fm.GmemModel(id(g), g.size) if g is not None else None, offset,
                              unknown_flags_fail=0 not in bits, overlap_errnos=overlap,
                              gmem_supported=self.vm.check_extension(Cap.GUEST_MEMFD) > 0)

    @precondition(lambda self: self.vm_type == VmType.DEFAULT)
    @rule(target=maps, pages=st.integers(1, 64), slot=st.integers(1, 8),
          gpa_page=st.integers(0, GPA_SPAN // PAGE - 64), first=st.integers(0, 63), count=st.integers(1, 64))
    def bind_in_place(self, pages: int, slot: int, gpa_page: int, first: int, count: int) -> Any:
        """A valid shared setup: a MMAP|INIT_SHARED guest_memfd, its mapping, a slot over part of it
        whose userspace_addr is that part of the mapping."""
        flags = int(GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED)
        err, g = self._call("KVM_CREATE_GUEST_MEMFD", f"g = vm.create_guest_memfd({pages * PAGE:#x}, {flags:#x})",
                            lambda: self.vm.create_guest_memfd(pages * PAGE, flags))
        if err:
            return multiple()
        gn = self._name(g, "g")
        self.made.append(g)
        self.script[-1] = f"{gn} = vm.create_guest_memfd({pages * PAGE:#x}, {flags:#x})"
        err, m = self._call("mmap", f"m = {gn}.mmap()", lambda: g.mmap())
        if err:
            return multiple()
        self.script[-1] = f"{self._name(m, 'm')} = {gn}.mmap()"
        self.mappings.append((g, m))
        first = min(first, pages - 1)
        count = min(count, pages - first)
        off, size, gpa = first * PAGE, count * PAGE, GPA_BASE + gpa_page * PAGE
        line = (f"vm.set_user_memory_region2({slot}, {gpa:#x}, {size:#x}, {self._name(m, 'm')}.addr + {off:#x}, "
                f"{int(MemslotFlag.GUEST_MEMFD):#x}, {gn}, {off:#x})")
        err, _ = self._call("KVM_SET_USER_MEMORY_REGION2", line,
                            lambda: self.vm.set_user_memory_region2(slot, gpa, size, m.addr + off,
                                                                    MemslotFlag.GUEST_MEMFD, g, off, keep=m))
        if not err:
            self.slots[slot] = Slot(gpa, size, g, off, m, True, int(MemslotFlag.GUEST_MEMFD), m.addr + off)
        return (g, m)

    @rule(gpa=gpas, size=slot_sizes, attrs=st.sampled_from([0, int(MemoryAttribute.PRIVATE), 1, 1 << 63]),
          flags=st.sampled_from([0, 0, 0, 1]))
    def set_attributes(self, gpa: int, size: int, attrs: int, flags: int) -> None:
        line = f"vm.set_memory_attributes({gpa:#x}, {size:#x}, {attrs:#x}, {flags:#x})"
        err, _ = self._call("KVM_SET_MEMORY_ATTRIBUTES", line,
                            lambda: self.vm.set_memory_attributes(gpa, size, attrs, flags))
        if not err:
            for p in range(gpa // PAGE, (gpa + size) // PAGE):
                if attrs & MemoryAttribute.PRIVATE:
                    self.private_pages.add(p)
                else:
                    self.private_pages.discard(p)

    # -- vCPU --------------------------------------------------------------------------
    @rule(gpa=gpas, size=slot_sizes, flags=st.sampled_from([0, 0, 0, 1]))
    def pre_fault(self, gpa: int, size: int, flags: int) -> None:
        timer = kick_later(KICK_AFTER)
        try:
            err, _ = self._call("KVM_PRE_FAULT_MEMORY", f"vcpu.pre_fault_memory({gpa:#x}, {size:#x}, {flags:#x})",
                                lambda: self.vcpu.pre_fault_memory(gpa, size, flags))
        finally:
            timer.cancel()
        if err == E.EINTR:  # only the kick interrupts it: nothing else signals this thread
            self._wrong("pre_fault_obsolete_root_livelock",
                        f"KVM_PRE_FAULT_MEMORY({gpa:#x}, {size:#x}) was still running after {KICK_AFTER} s "
                        "(kicked out with EINTR): pre-faulting a slot's worth of memory takes milliseconds",
                        "pre_fault_no_progress")

    @precondition(lambda self: self.vm_type == VmType.DEFAULT)
    @rule(data=st.data())
    def guest_reads(self, data: Any) -> None:
        """The guest reads the first byte of a page of a guest_memfd slot: the model's value."""
        bound = [(n, s) for n, s in self.slots.items() if s.gmem is not None and s.in_place
                 and not s.gmem.closed and GuestMemfdFlag.INIT_SHARED in s.gmem.flags
                 and not any(p in self.private_pages for p in range(s.gpa // PAGE, (s.gpa + s.size) // PAGE))]
        if not bound:
            return
        slot, s = data.draw(st.sampled_from(bound))
        page = data.draw(st.integers(min_value=0, max_value=s.size // PAGE - 1))
        target = s.gpa + page * PAGE
        want = self.model.get((id(s.gmem), s.offset // PAGE + page), 0)
        if target not in self.mapped_pages:
            self.tvm.pt.map(target, target, PAGE)
            self.mapped_pages.add(target)
        self.tvm.set_param("test_gpa", target)
        self.tvm.set_param("forever", 0)
        self.tvm.restart()
        got: list[int] = []
        self.script.append(f"# the guest reads GPA {target:#x} (slot {slot}): expects {want:#x}")
        try:
            ex = self.tvm.run_until_exit(on_sync=lambda v, a: got.append(a[1]) if a[0] == 1 else None,
                                         timeout=KICK_AFTER)
        except Exception as e:  # a hang or an exception in the guest: an answer to check
            STATS.record("KVM_RUN", E.EINTR)
            raise Finding(f"the guest's read of {target:#x} did not complete: {e}" + self.replay()) from None
        STATS.record("KVM_RUN", 0)
        if isinstance(ex, (MemoryFaultExit, IntrExit)):
            raise Finding(f"the guest's read of shared guest_memfd memory at {target:#x} exited with {ex!r}"
                          + self.replay())
        if ex is not None:
            return  # another exit (e.g. MMIO where the slot's mapping is not served): not modelled
        if got and (got[0] & 0xFF) != want:
            raise Finding(f"the guest read {got[0] & 0xFF:#x} at {target:#x}, the host model says {want:#x}"
                          + self.replay())

    @invariant()
    def no_kernel_splat(self) -> None:
        if self.log is None:
            return
        splats = find_splats(self.log.read())
        if splats:
            raise Finding(f"the kernel logged a splat: {splats[0].kind}\n{splats[0]}" + self.replay())

    def teardown(self) -> None:
        self.tvm.close()
        for _, m in self.mappings:
            m.close()
        for g in self.made:
            g.close()
        leaked = len(os.listdir("/proc/self/fd")) - self.fds_at_start
        if leaked > 0:
            raise Finding(f"{leaked} fds left open after the VM and its guest_memfds were closed" + self.replay())


def build_machine(vm_type: VmType, log: KernelLog | None,
                  reported: frozenset[str] = frozenset()) -> type[GmemMachine]:
    """The state machine class for one VM type. Findings of a kind in ``reported`` are counted, not
    raised: a run goes on to find other kinds."""
    return cast("type[GmemMachine]", type("GmemMachine", (GmemMachine,),
                                          {"vm_type": vm_type, "log": log, "reported": reported}))
