"""Vcpu: a vCPU fd with its mmap'ed kvm_run; run() returns typed exits."""

from __future__ import annotations

import errno as _errno
import mmap
import struct
import threading
from typing import TYPE_CHECKING, Any

from . import _ffi, _ioctls, _run, _structs
from ._fd import FdOwner
from .errors import ErrorFactory, KvmError
from .exits import (Exit, FailEntryExit, HltExit, HypercallExit, InternalErrorExit, IntrExit, IoExit, MemoryFaultExit,
                    MmioExit, OtherExit, ShutdownExit, SystemEventExit)
from .regs import (REG_NAMES, DTable, Regs, Segment, Sregs, cr_values, regs_values, segment_values,
                   segments)
from .uapi import ExitReason, IoDirection, MemoryFaultFlag

EHWPOISON = 133  # not in Python's errno module

if TYPE_CHECKING:
    from .vm import Vm


class Vcpu(FdOwner):
    """One vCPU: a vCPU fd and its mmap'ed ``struct kvm_run``. Create with
    :meth:`kvmffi.Vm.create_vcpu`; closed with its Vm (or by ``close()``, or as a context manager).

    ``run()`` wraps KVM_RUN and returns an :class:`~kvmffi.exits.Exit`. A
    KVM_EXIT_MEMORY_FAULT (KVM_RUN -1 with EFAULT/EHWPOISON) is returned, not
    raised; EINTR (a signal or immediate_exit) is returned as ``IntrExit``.
    Failing ioctls raise :class:`~kvmffi.KvmError` naming the ioctl and the vCPU id;
    :class:`~kvmffi.VmDeadError` when KVM killed the VM.

    ``vm`` is the Vm that created it, for the caller; the vCPU itself uses only what the Vm handed
    it at creation (the kvm_run size, the sync-regs decision, the error factory).

    A guest of one HLT instruction at GPA 0, run in real mode:

    >>> from kvmffi import HostMemory, Kvm
    >>> with HostMemory(-1, 0x1000) as mem, Kvm() as kvm, kvm.create_vm() as vm:
    ...     mem[0] = 0xF4                                  # hlt
    ...     vm.set_user_memory_region(0, 0, len(mem), mem.addr)
    ...     vcpu = vm.create_vcpu(0)
    ...     sregs = vcpu.get_sregs()
    ...     sregs.cs.base = sregs.cs.selector = 0
    ...     vcpu.set_sregs(sregs)
    ...     vcpu.set_regs(rip=0, rflags=0x2)
    ...     vcpu.run(), vcpu.get_reg("rip")
    (HltExit(), 1)
    """

    def __init__(self, fd: int, vcpu_id: int, vm: Vm, mmap_size: int, sync_regs: bool = False,
                 *, error: ErrorFactory = KvmError) -> None:
        super().__init__(fd)
        self.id = vcpu_id
        self.vm = vm
        self._error = error  # the Vm's: an EIO from a dead VM becomes a VmDeadError
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
        """Enter the guest once: KVM_RUN (Documentation/virt/kvm/api.rst 4.10, basic) and the decoded
        exit, a frozen dataclass to ``match`` on (:mod:`kvmffi.exits`).

        Returned, not raised: ``IntrExit`` for EINTR (a signal, or ``immediate_exit`` set) and
        ``MemoryFaultExit(flags, gpa, size, errno)`` for EFAULT/EHWPOISON with
        KVM_EXIT_MEMORY_FAULT (KVM_CAP_MEMORY_FAULT_INFO). Any other errno raises KvmError
        (VmDeadError for EIO when KVM killed the VM); ValueError if the vCPU is closed.
        """
        ex = self.run_io_fast(-1)
        assert ex is not None
        return ex

    def run_io_fast(self, port: int) -> Exit | None:
        """KVM_RUN once, for run loops: None if the exit is port I/O on ``port`` (nothing decoded,
        nothing allocated; read what you need with :meth:`get_reg`), else the exit as :meth:`run`
        returns it, raising what :meth:`run` raises. ``port`` -1 matches no port."""
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
            raise self._error("KVM_RUN", r, {"vcpu": self.id})
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
        """kvm_run's ``immediate_exit`` (api.rst 5, "The kvm_run structure"): when set, the next
        KVM_RUN returns EINTR at once (an ``IntrExit``) instead of entering the guest. Settable;
        ValueError if the vCPU is closed."""
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
        """The general-purpose registers: KVM_GET_REGS (api.rst 4.11, basic). Raises KvmError."""
        err, values = _structs.get_regs(self.fileno())
        if err:
            raise self._error("KVM_GET_REGS", err, {"vcpu": self.id})
        return Regs(*values)

    def get_reg(self, name: str) -> int:
        """One register by name (a :class:`Regs` field, e.g. ``"rip"``): from kvm_run when KVM synced
        the registers at the last exit (KVM_CAP_SYNC_REGS, api.rst 6.74), else KVM_GET_REGS
        (api.rst 4.11) into a reused buffer. The run loop's fast path. TypeError for an unknown
        name; KvmError if KVM_GET_REGS fails."""
        try:
            if self._regs_fresh:  # KVM stored them in kvm_run at the last exit
                return self._unpack_reg(self._run_mm, _run.SYNC_REG_OFFSETS[name])[0]  # type: ignore[no-any-return]
            return self._read_reg(name)  # type: ignore[no-any-return]
        except KeyError:
            raise TypeError(f"no register {name!r}; kvm_regs has {', '.join(REG_NAMES)}") from None
        except OSError as e:
            raise self._error("KVM_GET_REGS", e.errno or 0, {"vcpu": self.id}) from None

    def set_regs(self, regs: Regs | None = None, **changes: int) -> None:
        """Set the general-purpose registers: KVM_SET_REGS (api.rst 4.12, basic).

        With keyword arguments only (``vcpu.set_regs(rip=0x1000)``) it reads the registers first
        (KVM_GET_REGS) and changes just those. TypeError for an unknown register; KvmError if an
        ioctl fails.
        """
        if regs is None:
            regs = self.get_regs()
        for k, v in changes.items():
            if k not in REG_NAMES:
                raise TypeError(f"no register {k!r}; kvm_regs has {', '.join(REG_NAMES)}")
            setattr(regs, k, v)
        self._regs_fresh = False
        err = _structs.set_regs(self.fileno(), regs_values(regs))
        if err:
            raise self._error("KVM_SET_REGS", err, {"vcpu": self.id})

    def get_sregs(self) -> Sregs:
        """The special registers (segments, descriptor tables, control registers, EFER, APIC base):
        KVM_GET_SREGS (api.rst 4.13, basic, x86). Raises KvmError."""
        err, f = _structs.get_sregs(self.fileno())
        if err:
            raise self._error("KVM_GET_SREGS", err, {"vcpu": self.id})
        cs, ds, es, fs, gs, ss, tr, ldt = (Segment(*f[i:i + 12]) for i in range(0, 96, 12))
        cr0, cr2, cr3, cr4, cr8, efer, apic_base = f[100:107]
        return Sregs(cs, ds, es, fs, gs, ss, tr, ldt, DTable(f[96], f[97]), DTable(f[98], f[99]),
                     cr0, cr2, cr3, cr4, cr8, efer, apic_base, (f[107], f[108], f[109], f[110]))

    def set_sregs(self, sregs: Sregs | None = None, **changes: Any) -> None:
        """Set the special registers: KVM_SET_SREGS (api.rst 4.14, basic, x86).

        With keyword arguments only (``vcpu.set_sregs(cr0=..., efer=...)``) it reads them first
        (KVM_GET_SREGS) and changes just those fields. KVM checks CR0/CR4/EFER against the vCPU's
        CPUID (set it first, :meth:`set_cpuid2`): an inconsistent combination is KvmError EINVAL.
        TypeError for an unknown field.
        """
        if sregs is None:
            sregs = self.get_sregs()
        for k, v in changes.items():
            if not hasattr(sregs, k):
                raise TypeError(f"no special register {k!r}")
            setattr(sregs, k, v)
        flat: list[int] = []
        for seg in segments(sregs):
            flat += segment_values(seg)
        flat += (sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit)
        flat += cr_values(sregs)
        flat += sregs.interrupt_bitmap
        err = _structs.set_sregs(self.fileno(), tuple(flat))
        if err:
            raise self._error("KVM_SET_SREGS", err, {"vcpu": self.id})

    def set_cpuid2(self, entries: list[tuple[int, ...]]) -> None:
        """Set the vCPU's CPUID: KVM_SET_CPUID2 (x86; api.rst 4.20 documents it beside KVM_SET_CPUID)
        with (function, index, flags, eax, ebx, ecx, edx) entries, e.g.
        ``vcpu.set_cpuid2(kvm.supported_cpuid)``. KVM checks long mode and CR4 bits against these,
        so set them before the special registers. Raises KvmError: E2BIG for more entries than
        KVM_MAX_CPUID_ENTRIES, EINVAL for an inconsistent table or, after the first KVM_RUN, one
        that differs from the table already set."""
        err = _ffi.set_cpuid2(self.fileno(), entries)
        if err:
            raise self._error("KVM_SET_CPUID2", err, {"vcpu": self.id, "nent": len(entries)})

    # -- pre-fault ----------------------------------------------------------
    def pre_fault_memory(self, gpa: int, size: int, flags: int = 0) -> tuple[int, int]:
        """Map guest memory ahead of the guest's access: KVM_PRE_FAULT_MEMORY (api.rst 4.143,
        KVM_CAP_PRE_FAULT_MEMORY; ask the Vm, the answer is per VM type), once.

        ``gpa`` and ``size`` are bytes, page aligned; ``flags`` must be 0. Returns the (gpa, size)
        the kernel wrote back: size is what remains (call again while it is not 0). Raises
        KvmError, whose ``remaining`` attribute holds the (gpa, size) after a failure: EINVAL
        (unaligned, overflowing, size 0, flags), ENOENT (no memslot at ``gpa``), EINTR (a signal
        before any page), EFAULT, EOPNOTSUPP (shadow paging), EIO, ENOTTY without the capability
        (``kvmffi.contract.ALLOWED["KVM_PRE_FAULT_MEMORY"]``).
        """
        ret, err, p = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_PRE_FAULT_MEMORY, "struct kvm_pre_fault_memory",
                                        {"gpa": gpa, "size": size, "flags": flags})
        if ret < 0:
            e = self._error("KVM_PRE_FAULT_MEMORY", err, {"vcpu": self.id, "gpa": gpa, "size": size, "flags": flags})
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
