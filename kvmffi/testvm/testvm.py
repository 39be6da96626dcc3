"""A selftests-style test VM: one call gives a VM, a guest program, memory, vCPUs and a run loop.

>>> with TestVm("shared_mem") as tvm:                       # vm_create_with_one_vcpu
...     mem = tvm.add_memory(TEST_GPA, 2 << 20, backing="gmem-mmap")
...     tvm.set_param("test_gpa", TEST_GPA)
...     tvm.run(on_sync=lambda vcpu, args: ...)

Layout (GPA == GVA): descriptor tables and page tables in the first MiB, the guest
program at 1 MiB, one 64 KiB stack per vCPU below ``low_size``; test memory from
4 GiB up, mapped in the guest page tables only where a test asks. The run loop is runloop.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import memory as _memory
from ..exits import Exit
from ..guest import build as _build
from ..guest import elf as _elf
from ..guest import x86
from ..guest_memfd import GuestMemfd
from ..hints import require_gmem_flags
from ..memory import HostMemory, RawMapping
from ..system import Kvm
from ..uapi import GuestMemfdFlag, MemslotFlag, VmType
from ..regs import Regs, Sregs
from ..vcpu import Vcpu
from ..vm import Vm
from .backing import Backing
from .errors import Stopped
from .runloop import OnExit, OnSync, RunLoop, RunResult
from .ucall import UcallAbi
from .watchdog import VcpuState

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
        """``n`` bytes at byte ``offset`` of the region's host view (HostMemoryFault for a private page)."""
        assert self.host is not None, f"{self.backing.value} test memory has no host mapping"
        return self.host[offset:offset + n]

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at byte ``offset`` of the region's host view (HostMemoryFault for a private page)."""
        assert self.host is not None, f"{self.backing.value} test memory has no host mapping"
        self.host[offset:offset + len(data)] = data


class _LowMemory:
    def __init__(self, mem: HostMemory) -> None:
        self.mem = mem

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa:gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        return self.mem[gpa:gpa + n]


class TestVm:
    """A VM running one guest program (``<program>.c`` of the guest sources) on ``nr_vcpus`` vCPUs.

    program: a guest program's name (built into the cache on first use) or a path to a ``.elf``.
    vm_type: KVM_CREATE_VM's type. kvm: an open Kvm to use (default: one of its own, closed with
    the TestVm). low_size: bytes of low memory (memslot 0: tables, program, stacks), a multiple of
    2 MiB. timeout: seconds a vCPU may stay in KVM_RUN (see :meth:`run`). printf: receives each
    GUEST_PRINTF line (default: printed to stderr).

    Raises ValueError for ``nr_vcpus`` below 1 or more 64 KiB stacks than fit in ``low_size``
    above the program (and 4 MiB); GuestElfError (a
    ValueError) for a segment outside [1 MiB, low_size); FileNotFoundError or GuestBuildError
    when the program does not build; KvmError from KVM_CREATE_VM (a type the host does not offer:
    see KVM_CAP_VM_TYPES), KVM_SET_USER_MEMORY_REGION, KVM_CREATE_VCPU, KVM_SET_CPUID2 or the register ioctls.
    Whatever it made so far is closed first.
    """

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
        Raises KvmError from KVM_RUN (VmDeadError when KVM killed the VM) or KVM_SET_REGS.
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
        """The vCPUs, by id (0 to nr_vcpus - 1)."""
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

        gpa, size, gmem_offset: bytes; gpa and size 4 KiB aligned (KVM), and aligned to
        ``page_size`` (4 KiB or 2 MiB) when ``map_in_guest``; gmem_offset 4 KiB aligned. slot:
        the memslot number (default: one past the highest this TestVm used). gmem_flags: for a new guest_memfd
        (default: what the backing needs). readonly: KVM_MEM_READONLY (guest writes become MMIO exits).

        Raises MissingCapability when the VM does not offer the guest_memfd flags (asked with
        KVM_CAP_GUEST_MEMFD_FLAGS); ValueError for an unknown backing or, after the memslot is
        made, a range not aligned to ``page_size``; OSError when the host memory cannot be had
        (e.g. no hugetlb pages); KvmError from KVM_CREATE_GUEST_MEMFD (EINVAL: size 0 or not
        page aligned, unsupported flags) or KVM_SET_USER_MEMORY_REGION2 (EINVAL: bad flags,
        alignment or sizes, a guest_memfd of another VM or a range past its end; EEXIST: the GPA
        range overlaps another slot, and from 7.2 the guest_memfd range is already bound).
        What it made is closed when the memslot fails.
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
        """Delete the memslot (the guest's next access to it is an MMIO exit or memory fault).

        ``tm`` keeps its mapping and guest_memfd until :meth:`close`. Raises KvmError from
        KVM_SET_USER_MEMORY_REGION2 (VmDeadError when KVM killed the VM).
        """
        assert self.vm is not None
        self.vm.delete_memslot(tm.slot)

    # -- guest globals -----------------------------------------------------
    def _sym_bytes(self, name: str) -> tuple[int, int]:
        s = self.image.symbol(name)
        return s.addr, s.size or 8

    def const(self, name: str) -> int:
        """One of the guest program's C enumerators (a scenario, a sync stage, ...): the guest source
        is its one definition, read from the ELF's debug information. Raises GuestElfError (a
        ValueError) when the program has no such enumerator."""
        return self.image.constant(name)

    def set_param(self, name: str, value: int | str) -> None:
        """Write a guest global (an unsigned integer of its symbol's size) by name; a str value
        names one of the guest's enumerators (``t.set_param("scenario", "S_UD")``); a negative value is
        written in two's complement. Raises KeyError for an unknown symbol,
        GuestElfError for an unknown enumerator, OverflowError for a value that does not fit."""
        if isinstance(value, str):
            value = self.const(value)
        addr, size = self._sym_bytes(name)
        self._lowmem.write(addr, int(value).to_bytes(size, "little", signed=value < 0))

    def read_gva(self, gva: int, n: int) -> bytes:
        """Read ``n`` bytes of guest memory at a GVA (== GPA) from low memory or a test region's
        shared view (any alignment). Raises ValueError when the range is not in low memory or
        within one region with a host mapping; HostMemoryFault when a page there is not
        accessible to the host (private, past the end of the guest_memfd)."""
        if gva + n <= self.low_size:
            return self._lowmem.read(gva, n)
        for r in self.regions:
            if r.gpa <= gva and gva + n <= r.gpa + r.size and r.host is not None:
                return r.read(gva - r.gpa, n)
        raise ValueError(f"guest address {gva:#x}+{n:#x} is not in memory the host can read")

    def read_string(self, gva: int, limit: int = 512) -> str:
        """The NUL-terminated string at ``gva`` (at most ``limit`` bytes, decoded as UTF-8 with
        replacement), or a placeholder naming the address when the host cannot read it there.
        HostMemoryFault (a private page) is not caught."""
        try:
            raw = self.read_gva(gva, min(limit, self.low_size - gva) if gva < self.low_size else limit)
        except ValueError:
            return f"<string at {gva:#x} unreadable>"
        return raw.split(b"\0", 1)[0].decode(errors="replace")


    # -- running (the loop itself is runloop.py) ---------------------------
    def run(self, on_sync: OnSync | None = None, on_exit: OnExit | None = None,
            timeout: float | None = None) -> RunResult:
        """Run every vCPU until it reaches GUEST_DONE (KVM_RUN; one thread per vCPU when there are
        several); returns the GUEST_SYNC counts, GUEST_PRINTF lines and the seconds it took.

        on_sync(vcpu, args): called for each GUEST_SYNC (args[0] is the stage).
        on_exit(vcpu, exit): called for exits other than ucalls (including memory-fault exits,
        KVM_RUN's EFAULT/EHWPOISON with KVM_EXIT_MEMORY_FAULT); return True to keep running.
        timeout: seconds a vCPU may stay in KVM_RUN without exiting before the watchdog
        kicks it and the run fails with GuestHang (default: the TestVm's timeout).

        Raises GuestAssertionError (a GUEST_ASSERT failed), GuestException (the guest took an
        exception), GuestHang (a TimeoutError: the watchdog kicked a vCPU, or KVM_RUN kept
        answering EINTR), UnexpectedExit / GuestTripleFault (an exit nobody handled, or an unknown
        ucall), KvmError from KVM_RUN (VmDeadError when KVM killed the VM: EIO) or a register read, and whatever
        on_sync or on_exit raise; with several vCPUs the first failure stops the others and is
        the one raised. RuntimeError when called off the main thread before
        ``install_kick_handler()``.
        """
        return RunLoop(self, on_sync, on_exit, self.timeout if timeout is None else timeout).run()

    def run_until_exit(self, on_sync: OnSync | None = None, timeout: float | None = None) -> Exit | None:
        """Run (one vCPU) handling ucalls; return the first other exit, or None at GUEST_DONE.

        Raises ValueError for a TestVm with more than one vCPU, and what :meth:`run` raises.
        """
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
        """The TestVm; :meth:`close` runs at the end of the ``with`` block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the TestVm (see :meth:`close`)."""
        self.close()
