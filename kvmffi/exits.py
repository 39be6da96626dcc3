"""Typed vCPU exits returned by :meth:`kvmffi.Vcpu.run` (frozen dataclasses; use ``match``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .uapi import ExitReason, IoDirection, MemoryFaultFlag, SystemEventType


class RunWriter(Protocol):
    """What an exit writes back through before the next KVM_RUN (the Vcpu that returned it)."""

    def _write_run(self, offset: int, data: bytes) -> None: ...
    def _set_mmio_data(self, data: bytes) -> None: ...
    def _set_hypercall_ret(self, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Exit:
    """Base of all exits."""

    @property
    def reason(self) -> ExitReason:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class IoExit(Exit):
    """KVM_EXIT_IO. ``data`` holds what an OUT wrote (size*count bytes); answer an IN with :meth:`respond`."""

    direction: IoDirection
    size: int
    port: int
    count: int
    data: bytes
    _vcpu: RunWriter = field(repr=False, compare=False)
    _data_offset: int = field(repr=False, compare=False)

    @property
    def reason(self) -> ExitReason:
        return ExitReason.IO

    def respond(self, data: bytes) -> None:
        """Bytes the guest's IN receives when the vCPU is run again."""
        want = self.size * self.count
        if len(data) != want:
            raise ValueError(f"IN on port {self.port:#x} takes {want} bytes (size {self.size} x count {self.count}), "
                             f"got {len(data)}")
        self._vcpu._write_run(self._data_offset, data)


@dataclass(frozen=True, slots=True)
class MmioExit(Exit):
    """KVM_EXIT_MMIO: a guest access to a GPA with no memslot, or a write to a read-only one."""

    phys_addr: int
    data: bytes
    len: int
    is_write: bool
    _vcpu: RunWriter = field(repr=False, compare=False)

    @property
    def reason(self) -> ExitReason:
        return ExitReason.MMIO

    def respond(self, data: bytes) -> None:
        """Data a read returns when the vCPU is run again."""
        self._vcpu._set_mmio_data(data)


@dataclass(frozen=True, slots=True)
class HypercallExit(Exit):
    """KVM_EXIT_HYPERCALL. Set the guest's RAX with :meth:`set_ret` before running again.

    ``ret`` is run->hypercall.ret as KVM left it at the exit, read before anything writes it: 0 on a
    correct kernel (KVM clears it since "KVM: x86: clear vcpu->run->hypercall.ret before exiting for
    KVM_EXIT_HYPERCALL", 9a1dfeff4414, v6.14; before, whatever was there). Re-entering without
    :meth:`set_ret` returns this value to the guest."""

    nr: int
    args: tuple[int, ...]
    flags: int
    ret: int
    _vcpu: RunWriter = field(repr=False, compare=False)

    @property
    def reason(self) -> ExitReason:
        return ExitReason.HYPERCALL

    @property
    def longmode(self) -> bool:
        return bool(self.flags & 1)

    def set_ret(self, value: int) -> None:
        """run->hypercall.ret (a negative errno is stored as its two's complement)."""
        self._vcpu._set_hypercall_ret(value)


@dataclass(frozen=True, slots=True)
class HltExit(Exit):
    @property
    def reason(self) -> ExitReason:
        return ExitReason.HLT


@dataclass(frozen=True, slots=True)
class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: a triple fault (or a shutdown the guest asked for)."""

    @property
    def reason(self) -> ExitReason:
        return ExitReason.SHUTDOWN


@dataclass(frozen=True, slots=True)
class FailEntryExit(Exit):
    hardware_entry_failure_reason: int
    cpu: int

    @property
    def reason(self) -> ExitReason:
        return ExitReason.FAIL_ENTRY


@dataclass(frozen=True, slots=True)
class InternalErrorExit(Exit):
    """KVM_EXIT_INTERNAL_ERROR; suberror 1 = emulation failure, 3 = delivery event, ..."""

    suberror: int
    data: tuple[int, ...]

    @property
    def reason(self) -> ExitReason:
        return ExitReason.INTERNAL_ERROR


@dataclass(frozen=True, slots=True)
class SystemEventExit(Exit):
    """KVM_EXIT_SYSTEM_EVENT: ``type`` (KVM_SYSTEM_EVENT_*) and run->system_event.data[:ndata]."""

    type: int
    data: tuple[int, ...]

    @property
    def reason(self) -> ExitReason:
        return ExitReason.SYSTEM_EVENT

    @property
    def event(self) -> SystemEventType | int:
        """The type as a SystemEventType where kvmffi knows it, else the number."""
        try:
            return SystemEventType(self.type)
        except ValueError:
            return self.type


@dataclass(frozen=True, slots=True)
class MemoryFaultExit(Exit):
    """KVM_EXIT_MEMORY_FAULT (KVM_RUN returned -1 with ``errno`` EFAULT or EHWPOISON)."""

    flags: MemoryFaultFlag
    gpa: int
    size: int
    errno: int

    @property
    def reason(self) -> ExitReason:
        return ExitReason.MEMORY_FAULT

    @property
    def private(self) -> bool:
        return bool(self.flags & MemoryFaultFlag.PRIVATE)


@dataclass(frozen=True, slots=True)
class IntrExit(Exit):
    """KVM_RUN returned EINTR: a signal (the watchdog's kick) or immediate_exit."""

    @property
    def reason(self) -> ExitReason:
        return ExitReason.INTR


@dataclass(frozen=True, slots=True)
class OtherExit(Exit):
    """An exit this module does not decode; ``raw`` is the 256-byte exit union."""

    exit_reason: int
    raw: bytes

    @property
    def reason(self) -> ExitReason:
        try:
            return ExitReason(self.exit_reason)
        except ValueError:
            return ExitReason.UNKNOWN

    def __str__(self) -> str:
        try:
            name = ExitReason(self.exit_reason).name
        except ValueError:
            name = f"unknown({self.exit_reason})"
        return f"OtherExit({name})"


def describe(exit: Any) -> str:
    """One line naming an exit, for error messages."""
    try:
        name = "KVM_EXIT_" + exit.reason.name
    except Exception:
        name = type(exit).__name__
    return f"{name} {exit!r}"
