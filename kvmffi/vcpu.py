"""Vcpu: a vCPU fd with its mmap'ed kvm_run; run() returns typed exits."""

from __future__ import annotations

import errno as _errno
import mmap
import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from . import _ffi
from ._fd import FdOwner
from .errors import KvmError
from .exits import (Exit, FailEntryExit, HltExit, HypercallExit, InternalErrorExit, IntrExit, IoExit,
                    MemoryFaultExit, MmioExit, OtherExit, ShutdownExit, SystemEventExit)
from .uapi import ExitReason, IoDirection, MemoryFaultFlag

EHWPOISON = 133  # not in Python's errno module

if TYPE_CHECKING:
    from .vm import Vm


@dataclass(slots=True)
class Regs:
    """General-purpose registers (struct kvm_regs)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0

    def __str__(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name):#x}" for f in fields(self))


_REG_NAMES = tuple(f.name for f in fields(Regs))


@dataclass(slots=True)
class Segment:
    """struct kvm_segment."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 (the kernel's name)
    g: int = 0
    avl: int = 0
    unusable: int = 0


_SEG_FIELDS = tuple(f.name for f in fields(Segment))


@dataclass(slots=True)
class DTable:
    """struct kvm_dtable (GDTR / IDTR)."""

    base: int = 0
    limit: int = 0


_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_CRS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")


@dataclass(slots=True)
class Sregs:
    """Special registers (struct kvm_sregs)."""

    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DTable
    idt: DTable
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __str__(self) -> str:
        return (f"cr0={self.cr0:#x} cr2={self.cr2:#x} cr3={self.cr3:#x} cr4={self.cr4:#x} efer={self.efer:#x} "
                f"cs={self.cs.selector:#x}(l={self.cs.l}) gdt={self.gdt.base:#x}/{self.gdt.limit:#x} "
                f"idt={self.idt.base:#x}/{self.idt.limit:#x}")


class Vcpu(FdOwner):
    """One vCPU. Create with :meth:`kvmffi.Vm.create_vcpu`; closed with its Vm.

    ``run()`` wraps KVM_RUN and returns an :class:`~kvmffi.exits.Exit`. A
    KVM_EXIT_MEMORY_FAULT (KVM_RUN -1 with EFAULT/EHWPOISON) is returned, not
    raised; EINTR (a signal or immediate_exit) is returned as ``IntrExit``.
    """

    def __init__(self, fd: int, vcpu_id: int, vm: Vm, mmap_size: int) -> None:
        super().__init__(fd)
        self.id = vcpu_id
        self.vm = vm
        self._view: _ffi.RunView | None = None
        self._view = _ffi.RunView(mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        self._run = self._view.run
        self._read_reg = _ffi.reg_reader(fd)
        self.thread_id: int | None = None  # the thread inside KVM_RUN, for the watchdog
        self.last_exit: Exit | None = None

    def __repr__(self) -> str:
        return f"<Vcpu {self.id} {'closed' if self.closed else f'fd={self._fd}'}>"

    def _close_children(self) -> None:
        if self._view is not None:
            self._run = None
            self._view.close()
            self._view = None

    # -- KVM_RUN ------------------------------------------------------------
    def run(self) -> Exit:
        """KVM_RUN once; returns the decoded exit."""
        ex = self.run_ucall_port(-1)
        assert ex is not None
        return ex

    def run_ucall_port(self, port: int) -> Exit | None:
        """The run loop's fast path: KVM_RUN once; None if the exit is an IO exit on ``port``
        (nothing decoded, nothing allocated), else the decoded exit as :meth:`run` returns it."""
        run = self._run
        if run is None:
            raise ValueError("Vcpu is closed")
        run.exit_reason = 0
        self.thread_id = threading.get_ident()
        err = _ffi.ioctl_run(self._fd)
        self.thread_id = None
        if not err and run.exit_reason == _EXIT_IO and run.io.port == port:
            return None
        if err:
            if err == _errno.EINTR:
                ex: Exit = _INTR
            elif err in (_errno.EFAULT, EHWPOISON) and run.exit_reason == ExitReason.MEMORY_FAULT:
                mf = run.memory_fault
                ex = MemoryFaultExit(MemoryFaultFlag(mf.flags), mf.gpa, mf.size, err)
            else:
                raise self.vm._error("KVM_RUN", err, {"vcpu": self.id})
        else:
            decode = _DECODERS.get(run.exit_reason)
            ex = decode(self, run) if decode is not None else OtherExit(run.exit_reason, bytes(_ffi.ffi.buffer(run.padding)))
        self.last_exit = ex
        return ex

    @property
    def immediate_exit(self) -> bool:
        return bool(self._run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._run.immediate_exit = int(bool(value))

    def _write_run(self, offset: int, data: bytes) -> None:
        assert self._view is not None
        self._view.write(offset, data)

    def _set_hypercall_ret(self, value: int) -> None:
        self._run.hypercall.ret = value & 0xFFFFFFFFFFFFFFFF

    def _set_mmio_data(self, data: bytes) -> None:
        n = self._run.mmio.len
        if len(data) != n:
            raise ValueError(f"MMIO read of {n} bytes needs {n} bytes of data, got {len(data)}")
        _ffi.ffi.memmove(self._run.mmio.data, data, n)

    # -- registers ----------------------------------------------------------
    def get_regs(self) -> Regs:
        """KVM_GET_REGS."""
        p = _ffi.new("struct kvm_regs")
        self._ioctl_ptr("KVM_GET_REGS", _ffi.KVM_GET_REGS, p)
        return Regs(*(getattr(p, n) for n in _REG_NAMES))

    def get_reg(self, name: str) -> int:
        """One register by name (KVM_GET_REGS into a reused buffer: the run loop's fast path)."""
        try:
            return self._read_reg(name)  # type: ignore[no-any-return]
        except KeyError:
            raise TypeError(f"no register {name!r}; kvm_regs has {', '.join(_REG_NAMES)}") from None
        except OSError as e:
            raise self.vm._error("KVM_GET_REGS", e.errno or 0, {"vcpu": self.id}) from None

    def set_regs(self, regs: Regs | None = None, **changes: int) -> None:
        """KVM_SET_REGS. With keyword arguments only, changes just those registers."""
        if regs is None:
            regs = self.get_regs()
        for k, v in changes.items():
            if k not in _REG_NAMES:
                raise TypeError(f"no register {k!r}; kvm_regs has {', '.join(_REG_NAMES)}")
            setattr(regs, k, v)
        p = _ffi.new("struct kvm_regs", **{n: getattr(regs, n) for n in _REG_NAMES})
        self._ioctl_ptr("KVM_SET_REGS", _ffi.KVM_SET_REGS, p)

    def get_sregs(self) -> Sregs:
        """KVM_GET_SREGS."""
        p = _ffi.new("struct kvm_sregs")
        self._ioctl_ptr("KVM_GET_SREGS", _ffi.KVM_GET_SREGS, p)
        segs = {n: Segment(*(getattr(getattr(p, n), f) for f in _SEG_FIELDS)) for n in _SEGMENTS}
        kw: dict[str, Any] = dict(segs)
        kw.update({n: getattr(p, n) for n in _CRS})
        return Sregs(gdt=DTable(p.gdt.base, p.gdt.limit), idt=DTable(p.idt.base, p.idt.limit),
                     interrupt_bitmap=tuple(p.interrupt_bitmap), **kw)

    def set_sregs(self, sregs: Sregs | None = None, **changes: Any) -> None:
        """KVM_SET_SREGS. With keyword arguments only, changes just those fields."""
        if sregs is None:
            sregs = self.get_sregs()
        for k, v in changes.items():
            if not hasattr(sregs, k):
                raise TypeError(f"no special register {k!r}")
            setattr(sregs, k, v)
        p = _ffi.new("struct kvm_sregs")
        for n in _SEGMENTS:
            seg, dst = getattr(sregs, n), getattr(p, n)
            for f in _SEG_FIELDS:
                setattr(dst, f, getattr(seg, f))
        for n in ("gdt", "idt"):
            getattr(p, n).base = getattr(sregs, n).base
            getattr(p, n).limit = getattr(sregs, n).limit
        for n in _CRS:
            setattr(p, n, getattr(sregs, n))
        for i, v in enumerate(sregs.interrupt_bitmap):
            p.interrupt_bitmap[i] = v
        self._ioctl_ptr("KVM_SET_SREGS", _ffi.KVM_SET_SREGS, p)

    def set_cpuid2(self, entries: list[tuple[int, ...]]) -> None:
        """KVM_SET_CPUID2 with (function, index, flags, eax, ebx, ecx, edx) entries,
        e.g. ``vcpu.set_cpuid2(vm.kvm.supported_cpuid)``. KVM checks long mode and CR4
        bits against these, so set them before the special registers."""
        err = _ffi.set_cpuid2(self.fileno(), entries)
        if err:
            raise self.vm._error("KVM_SET_CPUID2", err, {"vcpu": self.id, "nent": len(entries)})

    # -- pre-fault ----------------------------------------------------------
    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        """KVM_PRE_FAULT_MEMORY (KVM_CAP_PRE_FAULT_MEMORY) once.

        Returns the (gpa, size) the kernel wrote back: size is what remains. Raises
        KvmError, whose ``remaining`` attribute holds the (gpa, size) after a failure.
        """
        p = _ffi.new("struct kvm_pre_fault_memory", gpa=gpa, size=size, flags=flags)
        ret, err = _ffi.ioctl_ptr(self.fileno(), _ffi.KVM_PRE_FAULT_MEMORY, p)
        if ret < 0:
            e = self.vm._error("KVM_PRE_FAULT_MEMORY", err, {"vcpu": self.id, "gpa": gpa, "size": size, "flags": flags})
            e.remaining = (p.gpa, p.size)
            raise e
        return p.gpa, p.size

    def _ioctl_ptr(self, name: str, req: int, p: Any) -> None:
        ret, err = _ffi.ioctl_ptr(self.fileno(), req, p)
        if ret < 0:
            raise self.vm._error(name, err, {"vcpu": self.id})


_EXIT_IO = int(ExitReason.IO)  # a plain int: compared on every exit
_INTR = IntrExit()
_HLT = HltExit()
_SHUTDOWN = ShutdownExit()


def _io(v: Vcpu, run: Any) -> IoExit:
    io = run.io
    n = io.size * io.count
    off = io.data_offset
    d = IoDirection(io.direction)
    data = v._view.read(off, n) if d is IoDirection.OUT else bytes(n)  # type: ignore[union-attr]
    return IoExit(d, io.size, io.port, io.count, data, v, off)


def _mmio(v: Vcpu, run: Any) -> MmioExit:
    m = run.mmio
    n = m.len
    return MmioExit(m.phys_addr, bytes(m.data)[:n], n, bool(m.is_write), v)


def _hypercall(v: Vcpu, run: Any) -> HypercallExit:
    h = run.hypercall
    return HypercallExit(h.nr, tuple(h.args), h.flags, v)


def _internal(v: Vcpu, run: Any) -> InternalErrorExit:
    i = run.internal
    return InternalErrorExit(i.suberror, tuple(i.data[0:min(i.ndata, 16)]))


def _system_event(v: Vcpu, run: Any) -> SystemEventExit:
    s = run.system_event
    return SystemEventExit(s.type, tuple(s.data[0:max(1, min(s.ndata, 16))]))


_DECODERS = {
    ExitReason.IO: _io,
    ExitReason.MMIO: _mmio,
    ExitReason.HYPERCALL: _hypercall,
    ExitReason.HLT: lambda v, r: _HLT,
    ExitReason.SHUTDOWN: lambda v, r: _SHUTDOWN,
    ExitReason.FAIL_ENTRY: lambda v, r: FailEntryExit(r.fail_entry.hardware_entry_failure_reason, r.fail_entry.cpu),
    ExitReason.INTERNAL_ERROR: _internal,
    ExitReason.SYSTEM_EVENT: _system_event,
    ExitReason.INTR: lambda v, r: _INTR,
}
