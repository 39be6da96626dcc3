"""What a TestVm raises when the guest fails: each names what happened and where."""

from __future__ import annotations

from ..exits import Exit


class GuestError(Exception):
    """Base of errors that come from the guest."""


class GuestAssertionError(AssertionError, GuestError):
    """A GUEST_ASSERT failed: the message carries the condition, file:line and values."""


class GuestException(GuestError):
    """The guest took an exception (vector, error code, RIP, CR2 reported by the IDT stubs)."""

    def __init__(self, msg: str, vector: int, error_code: int, rip: int, cr2: int) -> None:
        super().__init__(msg)
        self.vector, self.error_code, self.rip, self.cr2 = vector, error_code, rip, cr2


class GuestHang(GuestError, TimeoutError):
    """A vCPU did not exit within its timeout; the watchdog kicked it out of KVM_RUN."""


class UnexpectedExit(GuestError):
    """An exit the test did not handle; the message names it and shows registers and memslots."""

    def __init__(self, msg: str, exit: Exit | None) -> None:
        super().__init__(msg)
        self.exit = exit


class GuestTripleFault(UnexpectedExit):
    """KVM_EXIT_SHUTDOWN: the guest triple-faulted; the message shows its registers.
    ``reset_state``: they are the vCPU's reset state (SVM reinitializes it on a shutdown)."""

    reset_state: bool = False


class Stopped(GuestError):
    """A vCPU stopped because another one failed (never the cause a run reports)."""
