"""Vcpu: a vCPU fd with its mmap'ed kvm_run; run() returns typed exits."""

from __future__ import annotations

import errno as _errno
import mmap
import struct
import threading
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from . import _ffi, _ioctls, _run, _structs
from ._fd import FdOwner
from .exits import (Exit, FailEntryExit, HltExit, HypercallExit, InternalErrorExit, IntrExit, IoExit, MemoryFaultExit,
                    MmioExit, OtherExit, ShutdownExit, SystemEventExit)
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
_regs_values = attrgetter(*_REG_NAMES)


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
_segment_values = attrgetter(*_SEG_FIELDS)


@dataclass(slots=True)
class DTable:
    """struct kvm_dtable (GDTR / IDTR)."""

    base: int = 0
    limit: int = 0


_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
_CRS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
_segments = attrgetter(*_SEGMENTS)
_cr_values = attrgetter(*_CRS)


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

    def __init__(self, fd: int, vcpu_id: int, vm: Vm, mmap_size: int, sync_regs: bool = False) -> None:
        super().__init__(fd)
        self.id = vcpu_id
        self.vm = vm
        self._view: _run.RunView | None = None
        self._view = _run.RunView(mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE))
        self._run_mm = self._view.mm
        self._unpack_reg = struct.Struct("<Q").unpack_from
        self._read_reg = _structs.reg_reader(fd)
        self.thread_id: int | None = None  # the thread that last entered KVM_RUN, for the watchdog
        # KVM_CAP_SYNC_REGS: KVM stores the registers in kvm_run at every exit, so reading one after
        # an exit needs no KVM_GET_REGS. They are fresh from an exit until userspace sets registers.
        self._sync_regs = False
        self._regs_fresh = False
        self.sync_regs = sync_regs

    def __repr__(self) -> str:
        return f"<Vcpu {self.id} {'closed' if self.closed else f'fd={self._fd}'}>"

    def _close_children(self) -> None:
        self._regs_fresh = False
        if self._view is not None:
            self._view.close()
            self._view = None

    # -- KVM_RUN ------------------------------------------------------------
    def run(self) -> Exit:
        """KVM_RUN once; returns the decoded exit."""
        ex = self.run_io_fast(-1)
        assert ex is not None
        return ex

    def run_io_fast(self, port: int) -> Exit | None:
        """KVM_RUN once, for run loops: None if the exit is port I/O on ``port`` (nothing decoded,
        nothing allocated; read what you need with :meth:`get_reg`), else the exit as :meth:`run`
        returns it."""
        view = self._view
        if view is None:
            raise ValueError("Vcpu is closed")
        self.thread_id = _get_ident()
        r = view.enter(self._fd, port)
        if r < 0:
            self._regs_fresh = self._sync_regs
            return None
        self._regs_fresh = self._sync_regs and r in (0, _errno.EINTR)
        if r:
            if r == _errno.EINTR:
                return _INTR
            if r in (_errno.EFAULT, EHWPOISON) and view.exit_reason == ExitReason.MEMORY_FAULT:
                flags, gpa, size = view.memory_fault()
                view.forget_exit()
                return MemoryFaultExit(MemoryFaultFlag(flags), gpa, size, r)
            raise self.vm._error("KVM_RUN", r, {"vcpu": self.id})
        reason = view.exit_reason
        decode = _DECODERS.get(reason)
        return decode(self, view) if decode is not None else OtherExit(reason, view.padding())

    @property
    def sync_regs(self) -> bool:
        """Whether KVM stores the registers in kvm_run at every exit (set by the Vm where the
        kernel offers KVM_CAP_SYNC_REGS with KVM_SYNC_X86_REGS; settable, e.g. to compare)."""
        return self._sync_regs

    @sync_regs.setter
    def sync_regs(self, on: bool) -> None:
        self._live_view().sync_regs(bool(on))
        self._sync_regs = bool(on)
        self._regs_fresh = False

    def _live_view(self) -> _run.RunView:
        if self._view is None:
            raise ValueError("Vcpu is closed")
        return self._view

    @property
    def immediate_exit(self) -> bool:
        return self._live_view().immediate_exit

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._live_view().immediate_exit = value

    def _write_run(self, offset: int, data: bytes) -> None:
        self._live_view().write(offset, data)

    def _set_hypercall_ret(self, value: int) -> None:
        self._live_view().set_hypercall_ret(value)

    def _set_mmio_data(self, data: bytes) -> None:
        self._live_view().set_mmio_data(data)

    # -- registers ----------------------------------------------------------
    def get_regs(self) -> Regs:
        """KVM_GET_REGS."""
        err, values = _structs.get_regs(self.fileno())
        if err:
            raise self.vm._error("KVM_GET_REGS", err, {"vcpu": self.id})
        return Regs(*values)

    def get_reg(self, name: str) -> int:
        """One register by name: from kvm_run when KVM synced the registers at the last exit
        (KVM_CAP_SYNC_REGS), else KVM_GET_REGS into a reused buffer. The run loop's fast path."""
        try:
            if self._regs_fresh:  # KVM stored them in kvm_run at the last exit
                return self._unpack_reg(self._run_mm, _run.SYNC_REG_OFFSETS[name])[0]  # type: ignore[no-any-return]
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
        self._regs_fresh = False
        err = _structs.set_regs(self.fileno(), _regs_values(regs))
        if err:
            raise self.vm._error("KVM_SET_REGS", err, {"vcpu": self.id})

    def get_sregs(self) -> Sregs:
        """KVM_GET_SREGS."""
        err, f = _structs.get_sregs(self.fileno())
        if err:
            raise self.vm._error("KVM_GET_SREGS", err, {"vcpu": self.id})
        cs, ds, es, fs, gs, ss, tr, ldt = (Segment(*f[i:i + 12]) for i in range(0, 96, 12))
        cr0, cr2, cr3, cr4, cr8, efer, apic_base = f[100:107]
        return Sregs(cs, ds, es, fs, gs, ss, tr, ldt, DTable(f[96], f[97]), DTable(f[98], f[99]),
                     cr0, cr2, cr3, cr4, cr8, efer, apic_base, (f[107], f[108], f[109], f[110]))

    def set_sregs(self, sregs: Sregs | None = None, **changes: Any) -> None:
        """KVM_SET_SREGS. With keyword arguments only, changes just those fields."""
        if sregs is None:
            sregs = self.get_sregs()
        for k, v in changes.items():
            if not hasattr(sregs, k):
                raise TypeError(f"no special register {k!r}")
            setattr(sregs, k, v)
        flat: list[int] = []
        for seg in _segments(sregs):
            flat += _segment_values(seg)
        flat += (sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit)
        flat += _cr_values(sregs)
        flat += sregs.interrupt_bitmap
        err = _structs.set_sregs(self.fileno(), tuple(flat))
        if err:
            raise self.vm._error("KVM_SET_SREGS", err, {"vcpu": self.id})

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
        ret, err, p = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_PRE_FAULT_MEMORY, "struct kvm_pre_fault_memory",
                                        {"gpa": gpa, "size": size, "flags": flags})
        if ret < 0:
            e = self.vm._error("KVM_PRE_FAULT_MEMORY", err, {"vcpu": self.id, "gpa": gpa, "size": size, "flags": flags})
            e.remaining = (p["gpa"], p["size"])
            raise e
        return p["gpa"], p["size"]



_INTR = IntrExit()
_get_ident = threading.get_ident
_HLT = HltExit()
_SHUTDOWN = ShutdownExit()


def _io(v: Vcpu, view: _run.RunView) -> IoExit:
    direction, size, port, count, off = view.io()
    d = IoDirection(direction)
    n = size * count
    data = view.read(off, n) if d is IoDirection.OUT else bytes(n)
    return IoExit(d, size, port, count, data, v, off)


def _mmio(v: Vcpu, view: _run.RunView) -> MmioExit:
    gpa, data, n, is_write = view.mmio()
    return MmioExit(gpa, data, n, is_write, v)


def _hypercall(v: Vcpu, view: _run.RunView) -> HypercallExit:
    nr, args, flags, ret = view.hypercall()
    return HypercallExit(nr, args, flags, ret, v)


def _internal(v: Vcpu, view: _run.RunView) -> InternalErrorExit:
    return InternalErrorExit(*view.internal())


def _system_event(v: Vcpu, view: _run.RunView) -> SystemEventExit:
    return SystemEventExit(*view.system_event())


def _fail_entry(v: Vcpu, view: _run.RunView) -> FailEntryExit:
    return FailEntryExit(*view.fail_entry())


_DECODERS: dict[int, Any] = {
    ExitReason.IO: _io,
    ExitReason.MMIO: _mmio,
    ExitReason.HYPERCALL: _hypercall,
    ExitReason.HLT: lambda v, r: _HLT,
    ExitReason.SHUTDOWN: lambda v, r: _SHUTDOWN,
    ExitReason.FAIL_ENTRY: _fail_entry,
    ExitReason.INTERNAL_ERROR: _internal,
    ExitReason.SYSTEM_EVENT: _system_event,
    ExitReason.INTR: lambda v, r: _INTR,
}
