"""A vCPU's mmap'ed struct kvm_run, read and written through cffi: :class:`RunView`.

Decoding lives next to the declaration (``_cdef``): every method returns plain ints, bytes and
tuples, so no cdata leaves the raw layer.
"""

from __future__ import annotations

import fcntl as _fcntl
import mmap as _mmap
from typing import Any

from ._cdef import ffi
from ._ioctls import KVM_RUN
from ._structs import REG_OFFSETS
from .uapi import ExitReason

KVM_SYNC_X86_REGS = 1 << 0   # kvm_run.kvm_valid_regs: KVM stores struct kvm_regs in kvm_run.s at every exit
_EXIT_IO = int(ExitReason.IO)  # a plain int: compared on every exit
_RUN_S = ffi.offsetof("struct kvm_run", "s")
_ioctl_run = _fcntl.ioctl
SYNC_REG_OFFSETS = {name: _RUN_S + off for name, off in REG_OFFSETS.items()}  # in the kvm_run mapping


class RunView:
    """A vCPU's mmap'ed struct kvm_run: the exit's fields as plain values, and what userspace writes
    back (immediate_exit, an IN's data, a hypercall's return, an MMIO read's data)."""

    __slots__ = ("mm", "_run", "_io")

    def __init__(self, mm: _mmap.mmap) -> None:
        self.mm = mm
        self._run: Any = ffi.from_buffer("struct kvm_run *", mm)
        self._io: Any = self._run.io   # read on every exit: one level of lookup less

    def close(self) -> None:
        if self._run is not None:
            self._io = None
            ffi.release(self._run)
            self._run = None
            self.mm.close()

    def enter(self, fd: int, port: int) -> int:
        """KVM_RUN once: -1 if the exit is port I/O on ``port`` (nothing else read), else 0 or the errno.

        After a failed KVM_RUN exit_reason is stale unless KVM set it (KVM_EXIT_MEMORY_FAULT);
        :meth:`forget_exit` clears it once such an exit is consumed, so a stale one is never
        taken for a new one."""
        try:
            _ioctl_run(fd, KVM_RUN, 0)
        except OSError as e:
            return e.errno or 0
        if self._run.exit_reason == _EXIT_IO and self._io.port == port:
            return -1
        return 0

    def forget_exit(self) -> None:
        self._run.exit_reason = 0

    @property
    def exit_reason(self) -> int:
        return int(self._run.exit_reason)

    def io(self) -> tuple[int, int, int, int, int]:
        """(direction, size, port, count, data_offset)"""
        io = self._run.io
        return io.direction, io.size, io.port, io.count, io.data_offset

    def mmio(self) -> tuple[int, bytes, int, bool]:
        """(phys_addr, data, len, is_write)"""
        m = self._run.mmio
        return m.phys_addr, bytes(m.data)[:m.len], m.len, bool(m.is_write)

    def hypercall(self) -> tuple[int, tuple[int, ...], int, int]:
        """(nr, args, flags, ret): ret as KVM left it at the exit"""
        h = self._run.hypercall
        return h.nr, tuple(h.args), h.flags, h.ret

    def internal(self) -> tuple[int, tuple[int, ...]]:
        """(suberror, data[:ndata])"""
        i = self._run.internal
        return i.suberror, tuple(i.data[0:min(i.ndata, 16)])

    def system_event(self) -> tuple[int, tuple[int, ...]]:
        """(type, data[:ndata], at least data[0]: the older 'flags')"""
        e = self._run.system_event
        return e.type, tuple(e.data[0:max(1, min(e.ndata, 16))])

    def fail_entry(self) -> tuple[int, int]:
        """(hardware_entry_failure_reason, cpu)"""
        f = self._run.fail_entry
        return f.hardware_entry_failure_reason, f.cpu

    def memory_fault(self) -> tuple[int, int, int]:
        """(flags, gpa, size)"""
        m = self._run.memory_fault
        return m.flags, m.gpa, m.size

    def padding(self) -> bytes:
        """The exit's union, raw (for exits this project does not decode)."""
        return bytes(ffi.buffer(self._run.padding))

    @property
    def immediate_exit(self) -> bool:
        return bool(self._run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._run.immediate_exit = int(bool(value))

    def set_hypercall_ret(self, value: int) -> None:
        self._run.hypercall.ret = value & 0xFFFFFFFFFFFFFFFF

    def set_mmio_data(self, data: bytes) -> None:
        n = self._run.mmio.len
        if len(data) != n:
            raise ValueError(f"MMIO read of {n} bytes needs {n} bytes of data, got {len(data)}")
        ffi.memmove(self._run.mmio.data, data, n)

    def sync_regs(self, on: bool) -> None:
        """Ask KVM to store the general-purpose registers in kvm_run at every exit (KVM_CAP_SYNC_REGS)."""
        self._run.kvm_valid_regs = KVM_SYNC_X86_REGS if on else 0

    def read(self, offset: int, length: int) -> bytes:
        return self.mm[offset : offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self.mm[offset : offset + len(data)] = data
