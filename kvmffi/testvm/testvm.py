"""A selftests-style test VM: one call gives a VM, a guest program, memory, vCPUs and a run loop.

>>> with TestVm("shared_mem") as tvm:                       # vm_create_with_one_vcpu
...     mem = tvm.add_memory(TEST_GPA, 2 << 20, backing="gmem-mmap")
...     tvm.set_param("test_gpa", TEST_GPA)
...     tvm.run(on_sync=lambda vcpu, args: ...)

Layout (GPA == GVA): descriptor tables and page tables in the first MiB, the guest
program at 1 MiB, one 64 KiB stack per vCPU below ``low_size``; test memory from
4 GiB up, mapped in the guest page tables only where a test asks.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import memory as _memory
from ..exits import Exit, IntrExit
from ..guest import build as _build
from ..guest import elf as _elf
from ..guest import x86
from ..guest_memfd import GuestMemfd
from ..hints import require_gmem_flags
from ..memory import HostMemory, RawMapping
from ..system import Kvm
from ..uapi import GuestMemfdFlag, MemslotFlag, VmType
from ..vcpu import Regs, Sregs, Vcpu
from ..vm import Vm
from .backing import Backing
from .diagnostics import unexpected_exit, where
from .errors import GuestHang, Stopped, UnexpectedExit
from .ucall import UcallAbi, assertion_error, exception_error
from .watchdog import VcpuState, Watchdog, kick

TEST_GPA = 1 << 32
STACK_SIZE = 64 << 10
LOW_SLOT = 0


@dataclass
class TestMemory:
    """Test memory at ``gpa``: ``host`` is the shared view (mapping), ``gmem`` the guest_memfd if any."""

    __test__ = False

    gpa: int
    size: int
    slot: int
    backing: Backing
    host: HostMemory | RawMapping | None
    gmem: GuestMemfd | None = None
    gmem_offset: int = 0
    owns_gmem: bool = True

    def read(self, offset: int, n: int) -> bytes:
        assert self.host is not None, f"{self.backing.value} test memory has no host mapping"
        return self.host[offset:offset + n]

    def write(self, offset: int, data: bytes) -> None:
        assert self.host is not None, f"{self.backing.value} test memory has no host mapping"
        self.host[offset:offset + len(data)] = data


class _LowMemory:
    def __init__(self, mem: HostMemory) -> None:
        self.mem = mem

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa:gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        return self.mem[gpa:gpa + n]


@dataclass
class RunResult:
    syncs: dict[int, int] = field(default_factory=dict)   # vCPU id -> GUEST_SYNC count
    printed: list[str] = field(default_factory=list)      # GUEST_PRINTF lines
    seconds: float = 0.0


class TestVm:
    """A VM running one guest program (``<program>.c`` of the guest sources) on ``nr_vcpus`` vCPUs."""

    __test__ = False  # not a pytest class

    def __init__(self, program: str | Path, *, vm_type: VmType | int = VmType.DEFAULT, nr_vcpus: int = 1,
                 kvm: Kvm | None = None, low_size: int = 8 << 20, timeout: float = 10.0,
                 printf: Callable[[str], None] | None = None) -> None:
        self._own_kvm = kvm is None
        self.kvm = kvm or Kvm()
        self.timeout = timeout
        self.printf = printf
        self.regions: list[TestMemory] = []
        self._next_slot = 1
        self._closed = False
        self.vm: Vm | None = None
        self.low: HostMemory | None = None
        try:
            path = Path(program) if str(program).endswith(".elf") else _build.build(str(program))
            self.image = _elf.load_cached(path)
            self.abi = UcallAbi.of(self.image)
            self.vm = self.kvm.create_vm(vm_type)
            max_vcpus = (low_size - max(self.image.end, 4 << 20)) // STACK_SIZE
            if nr_vcpus < 1 or nr_vcpus > max_vcpus:
                raise ValueError(f"nr_vcpus={nr_vcpus}: between 1 and {max_vcpus} fit in low_size={low_size:#x}")
            self.low_size = low_size
            self.low = _memory.anonymous(low_size)
            self._lowmem = _LowMemory(self.low)
            self.vm.set_user_memory_region(LOW_SLOT, 0, low_size, self.low.addr, keep=self.low)
            for seg in self.image.segments:
                if seg.gpa + seg.memsz > low_size or seg.gpa < x86.IMAGE_GPA:
                    raise _elf.GuestElfError(f"{path}: segment at {seg.gpa:#x}+{seg.memsz:#x} is outside "
                                             f"[{x86.IMAGE_GPA:#x}, {low_size:#x})")
                self.low[seg.gpa:seg.gpa + len(seg.data)] = seg.data
            self.pt = self._low_tables(self.image.symbol("kvmffi_exception_stubs").addr, low_size)
            self.states: list[VcpuState] = []
            for i in range(nr_vcpus):
                self.states.append(VcpuState(self._setup_vcpu(i)))
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------
    _low_templates: dict[tuple[int, int], tuple[bytes, Any]] = {}

    def _low_tables(self, stubs: int, low_size: int) -> x86.PageTables:
        """Descriptor tables and the low mapping (the first 2 MiB but page 0 in 4 KiB pages, the rest
        in 2 MiB pages). They are the same for every TestVm of one layout: built once per process,
        then copied (a few pages)."""
        key = (stubs, low_size)
        tpl = TestVm._low_templates.get(key)
        if tpl is not None:
            self._lowmem.write(x86.GDT_GPA, tpl[0])
            return x86.PageTables.restore(self._lowmem, tpl[1])
        x86.write_descriptor_tables(self._lowmem, stubs)
        pt = x86.PageTables(self._lowmem)
        pt.map(x86.PAGE, x86.PAGE, x86.HUGE_2M - x86.PAGE)
        pt.map(x86.HUGE_2M, x86.HUGE_2M, low_size - x86.HUGE_2M, x86.HUGE_2M)
        TestVm._low_templates[key] = (self._lowmem.read(x86.GDT_GPA, x86.IDT_GPA + 0x1000 - x86.GDT_GPA), pt.snapshot())
        return pt

    _entry_sregs: dict[tuple[int, int, int], Sregs] = {}

    def _setup_vcpu(self, i: int) -> Vcpu:
        assert self.vm is not None
        v = self.vm.create_vcpu(i)
        v.set_cpuid2(self.kvm.supported_cpuid)
        v.set_sregs(self._long_mode_sregs(v, i))
        v.set_regs(Regs(**self._entry_regs(i)))  # every register given (the rest 0): no KVM_GET_REGS first
        return v

    def _long_mode_sregs(self, v: Vcpu, i: int) -> Sregs:
        """vCPU ``i``'s special registers in long mode: its reset state as KVM answers it (the LDT,
        CR2, CR8, APIC base, pending interrupts) with our segments, tables and paging. The reset
        state is read once per process for each VM type and vCPU index, as the low tables are built once."""
        assert self.vm is not None
        key = (int(self.vm.type), i, self.pt.pml4)
        sregs = TestVm._entry_sregs.get(key)
        if sregs is None:
            sregs = v.get_sregs()
            x86.setup_long_mode(sregs, self.pt.pml4)
            TestVm._entry_sregs[key] = sregs
        return sregs

    def _entry_regs(self, i: int) -> dict[str, int]:
        """vCPU ``i``'s registers at the program's entry: guest_main(vcpu_id) on its own stack."""
        return {"rip": self.image.entry, "rsp": self.low_size - i * STACK_SIZE, "rdi": i, "rflags": 0x2}

    def restart(self) -> None:
        """Start the guest program again from its entry point on every vCPU (e.g. after GUEST_DONE),
        with the guest globals as they are now.

        The last exit (the ucall's port I/O) is completed first, as api.rst asks before changing
        the vCPU's state: KVM_RUN with immediate_exit finishes it and returns at once.
        """
        for i, s in enumerate(self.states):
            v = s.vcpu
            v.immediate_exit = True
            try:
                v.run()
            finally:
                v.immediate_exit = False
            v.set_regs(None, **self._entry_regs(i))  # the others as they are

    @property
    def vcpus(self) -> list[Vcpu]:
        return [s.vcpu for s in self.states]

    def add_memory(self, gpa: int, size: int, backing: Backing | str = "anon", *, slot: int | None = None,
                   map_in_guest: bool = True, page_size: int = x86.PAGE, gmem: GuestMemfd | None = None,
                   gmem_offset: int = 0, gmem_flags: GuestMemfdFlag | int | None = None,
                   readonly: bool = False, shared_backing: str = "anon") -> TestMemory:
        """Add a memslot of test memory and map it in the guest (GVA == GPA).

        backing: anon, memfd, thp, hugetlb (host memory); gmem (guest_memfd for the private
        half plus ``shared_backing`` host memory for the shared half); gmem-mmap (guest_memfd
        with MMAP|INIT_SHARED, its own mapping as the shared half); gmem-only (the same file,
        but the memslot's userspace_addr is 0: KVM serves shared faults from the file itself;
        ``host`` is still a mapping of the file for the test). ``gmem`` reuses an existing
        guest_memfd at ``gmem_offset`` (several slots over one file).
        """
        assert self.vm is not None
        kind = Backing.of(backing)
        slot = self._next_slot if slot is None else slot
        self._next_slot = max(self._next_slot, slot + 1)
        host: HostMemory | RawMapping | None = None
        owns = gmem is None
        flags = MemslotFlag.READONLY if readonly else MemslotFlag(0)
        try:
            if kind.guest_memfd:
                if gmem is None:
                    gf = gmem_flags if gmem_flags is not None else kind.gmem_flags
                    require_gmem_flags(self.vm, gf)  # asked on this VM: MissingCapability names what lacks
                    gmem = self.vm.create_guest_memfd(gmem_offset + size, gf)
                host = gmem.mmap(size, gmem_offset) if kind.in_place else Backing.of(shared_backing).host_memory(size)
                hva = host.addr if kind.maps_userspace else 0
                self.vm.set_user_memory_region2(slot, gpa, size, hva, flags | MemslotFlag.GUEST_MEMFD,
                                                gmem, gmem_offset, keep=host)
            else:
                host = kind.host_memory(size)
                self.vm.set_user_memory_region2(slot, gpa, size, host.addr, flags, keep=host)
        except BaseException:
            if host is not None:
                host.close()
            if owns and gmem is not None:
                gmem.close()
            raise
        tm = TestMemory(gpa, size, slot, kind, host, gmem, gmem_offset, owns)
        self.regions.append(tm)
        if map_in_guest:
            self.pt.map(gpa, gpa, size, page_size)
        return tm

    def delete_memory(self, tm: TestMemory) -> None:
        """Delete the memslot (the guest's next access to it is an MMIO exit or memory fault)."""
        assert self.vm is not None
        self.vm.delete_memslot(tm.slot)

    # -- guest globals -----------------------------------------------------
    def _sym_bytes(self, name: str) -> tuple[int, int]:
        s = self.image.symbol(name)
        return s.addr, s.size or 8

    def const(self, name: str) -> int:
        """One of the guest program's C enumerators (a scenario, a sync stage, ...): the guest source
        is its one definition, read from the ELF's debug information."""
        return self.image.constant(name)

    def set_param(self, name: str, value: int | str) -> None:
        """Write a guest global (an unsigned integer of its symbol's size) by name; a str value
        names one of the guest's enumerators (``t.set_param("scenario", "S_UD")``)."""
        if isinstance(value, str):
            value = self.const(value)
        addr, size = self._sym_bytes(name)
        self._lowmem.write(addr, int(value).to_bytes(size, "little", signed=value < 0))

    def read_gva(self, gva: int, n: int) -> bytes:
        """Read guest memory at a GVA (== GPA) from low memory or a test region's shared view."""
        if gva + n <= self.low_size:
            return self._lowmem.read(gva, n)
        for r in self.regions:
            if r.gpa <= gva and gva + n <= r.gpa + r.size and r.host is not None:
                return r.read(gva - r.gpa, n)
        raise ValueError(f"guest address {gva:#x}+{n:#x} is not in memory the host can read")

    def read_string(self, gva: int, limit: int = 512) -> str:
        try:
            raw = self.read_gva(gva, min(limit, self.low_size - gva) if gva < self.low_size else limit)
        except ValueError:
            return f"<string at {gva:#x} unreadable>"
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    # -- running -----------------------------------------------------------
    def run(self, on_sync: Callable[[Vcpu, tuple[int, ...]], Any] | None = None,
            on_exit: Callable[[Vcpu, Exit], bool] | None = None, timeout: float | None = None) -> RunResult:
        """Run every vCPU until it reaches GUEST_DONE.

        on_sync(vcpu, args): called for each GUEST_SYNC (args[0] is the stage).
        on_exit(vcpu, exit): called for exits other than ucalls; return True to keep running.
        timeout: seconds a vCPU may stay in KVM_RUN without exiting before the watchdog
        kicks it and the run fails with GuestHang (default: the TestVm's timeout).
        """
        tmo = self.timeout if timeout is None else timeout
        self._timeout = tmo
        result = RunResult()
        for s in self.states:
            s.error, s.kicked, s.syncs = None, False, 0
        t0 = time.monotonic()
        try:
            with Watchdog(self.states, tmo):
                if len(self.states) == 1:
                    self._loop(self.states[0], on_sync, on_exit, result)
                else:
                    for s in self.states:
                        s.thread = threading.Thread(target=self._thread_loop, args=(s, on_sync, on_exit, result),
                                                    name=f"kvmffi-vcpu{s.vcpu.id}", daemon=True)
                        s.thread.start()
                    for s in self.states:
                        assert s.thread is not None
                        while s.thread.is_alive():
                            s.thread.join(0.1)
                        s.thread = None
        finally:
            result.seconds = time.monotonic() - t0
        for s in self.states:
            result.syncs[s.vcpu.id] = s.syncs
        errors = [s.error for s in self.states if s.error is not None]
        real = [e for e in errors if not isinstance(e, Stopped)]  # the cause, not the vCPUs it stopped
        if real or errors:
            raise (real or errors)[0]
        return result

    def run_until_exit(self, on_sync: Callable[[Vcpu, tuple[int, ...]], Any] | None = None,
                       timeout: float | None = None) -> Exit | None:
        """Run (one vCPU) handling ucalls; return the first other exit, or None at GUEST_DONE."""
        if len(self.states) != 1:
            raise ValueError("run_until_exit drives a single-vCPU TestVm")
        got: list[Exit] = []

        def on_exit(vcpu: Vcpu, ex: Exit) -> bool:
            got.append(ex)
            raise Stopped("exit")

        try:
            self.run(on_sync=on_sync, on_exit=on_exit, timeout=timeout)
        except Stopped:
            return got[0]
        return None

    def _thread_loop(self, s: VcpuState, on_sync: Any, on_exit: Any, result: RunResult) -> None:
        try:
            self._loop(s, on_sync, on_exit, result)
        except BaseException as e:
            s.error = e
            for other in self.states:  # stop the others: one failure fails the run
                if other is not s and other.error is None:
                    other.error = Stopped(f"vCPU {other.vcpu.id} stopped: vCPU {s.vcpu.id} failed")
                    kick(other)

    def _loop(self, s: VcpuState, on_sync: Any, on_exit: Any, result: RunResult) -> None:
        vcpu = s.vcpu
        low = self.low
        assert low is not None
        low_size = self.low_size
        abi = self.abi
        unpack_from, header_size = abi.header.unpack_from, abi.header.size
        port, sync, done, ucall_size = abi.port, abi.sync, abi.done, abi.size
        run_io, get_reg = vcpu.run_io_fast, vcpu.get_reg
        intr_since: float | None = None
        while True:
            if s.error is not None:
                raise s.error
            s.progress += 1
            s.in_run = True
            ex = run_io(port)
            s.in_run = False
            if ex is None:  # a ucall: RDI holds the struct's address
                intr_since = None
                rdi = get_reg("rdi")
                if rdi + ucall_size <= low_size:
                    uc = unpack_from(low, rdi)
                else:
                    uc = abi.header.unpack(self.read_gva(rdi, header_size))
                cmd = uc[0]
                s.last_ucall = uc
                if cmd == sync:
                    s.syncs += 1
                    if on_sync is not None:
                        on_sync(vcpu, uc[1:])
                    continue
                if cmd == done:
                    return
                self._ucall_slow(vcpu, cmd, uc, rdi, result)
                continue
            if type(ex) is IntrExit:
                if s.kicked:
                    vcpu.immediate_exit = False
                    if s.error is not None:
                        raise s.error
                    rip = vcpu.get_reg("rip")
                    raise GuestHang(f"vCPU {vcpu.id} did not exit within {self._timeout:.1f} s; "
                                    f"stopped at rip={rip:#x}{where(self.image, rip)}")
                # a signal that was not the watchdog's: fine once, a hang if it never stops
                now = time.monotonic()
                if intr_since is None:
                    intr_since = now
                elif now - intr_since > self._timeout:
                    rip = vcpu.get_reg("rip")
                    raise GuestHang(f"vCPU {vcpu.id}: KVM_RUN kept returning EINTR (a signal each time, not the "
                                    f"watchdog's) for {self._timeout:.1f} s at rip={rip:#x}{where(self.image, rip)}; "
                                    "e.g. KVM sends SIGBUS for a poisoned page of guest memory")
                continue
            intr_since = None
            if on_exit is not None and on_exit(vcpu, ex):
                continue
            raise self._unexpected(vcpu, ex, last_ucall=s.last_ucall)

    def _ucall_slow(self, vcpu: Vcpu, cmd: int, uc: tuple[int, ...], rdi: int, result: RunResult) -> None:
        abi = self.abi
        if cmd == abi.printf:
            text = self.read_string(rdi + abi.buffer_offset, abi.buffer_len)
            result.printed.append(text)
            if self.printf is not None:
                self.printf(text)
            else:
                print(f"guest vCPU {vcpu.id}: {text}", file=sys.stderr)
            return
        if cmd == abi.abort:
            raise assertion_error(abi, uc[1:], self.read_string)
        if cmd == abi.exception:
            raise exception_error(uc[1:], lambda rip: where(self.image, rip))
        raise self._unexpected(vcpu, None, f"unknown ucall {cmd} from the guest")

    def _unexpected(self, vcpu: Vcpu, ex: Exit | None, what: str | None = None,
                    last_ucall: tuple[int, ...] | None = None) -> UnexpectedExit:
        assert self.vm is not None
        last = None
        if last_ucall is not None:
            names = {self.abi.sync: "GUEST_SYNC", self.abi.printf: "GUEST_PRINTF", self.abi.done: "GUEST_DONE"}
            last = f"{names.get(last_ucall[0], f'ucall {last_ucall[0]}')}{tuple(hex(a) for a in last_ucall[1:])}"
        return unexpected_exit(self.image, self.vm, vcpu, ex, what, last)

    # -- teardown ----------------------------------------------------------
    def close(self) -> None:
        """Close vCPUs, VM, guest_memfds and mappings. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self.vm is not None:
            self.vm.close()
        for r in self.regions:
            if r.host is not None:
                r.host.close()
            if r.gmem is not None and r.owns_gmem:
                r.gmem.close()
        self.regions.clear()
        if self.low is not None:
            self.low.close()
        if self._own_kvm:
            self.kvm.close()

    def __enter__(self) -> TestVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
