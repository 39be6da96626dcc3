"""Failure reports for a TestVm: where in the guest source an address is, and an unexpected
exit with registers and memslots."""

from __future__ import annotations

from ..exits import Exit, IoExit, ShutdownExit, describe
from ..guest.elf import GuestImage
from ..uapi import IoDirection
from ..vcpu import Vcpu
from ..vm import Vm
from .errors import GuestTripleFault, UnexpectedExit


def where(image: GuestImage, rip: int) -> str:
    """' (function at file:line)' for a guest address, or '' where the image does not say."""
    parts = [p for p in (image.function_at(rip), image.source_line(rip)) if p]
    return f" ({' at '.join(parts)})" if parts else ""


def unexpected_exit(image: GuestImage, vm: Vm, vcpu: Vcpu, ex: Exit | None, what: str | None = None,
                    last_ucall: str | None = None) -> UnexpectedExit:
    """The error for an exit nobody handled: what it was, where the guest was, its registers, the
    memslots, and the vCPU's last ucall (where it was in its program when the state is lost)."""
    try:
        regs = str(vcpu.get_regs())
        sregs = str(vcpu.get_sregs())
        rip = vcpu.get_reg("rip")
    except Exception as e:  # the VM may be dead
        regs, sregs, rip = f"(registers unavailable: {e})", "", -1
    head = what or f"unexpected exit {describe(ex)} on vCPU {vcpu.id}"
    if isinstance(ex, ShutdownExit):
        head = (f"guest triple fault on vCPU {vcpu.id} (KVM_EXIT_SHUTDOWN): an exception while "
                "delivering an exception, e.g. with no usable IDT or stack")
        if rip == 0xFFF0:
            head += ("; the registers below are the reset state: on AMD (SVM) KVM reinitializes the "
                     "vCPU on a shutdown, so where the guest was is lost")
    if isinstance(ex, IoExit) and ex.direction is IoDirection.IN:
        head += " (an IN the test does not answer)"
    at = f"rip={rip:#x}{where(image, rip)}" if rip >= 0 else "rip unknown"
    msg = (f"{head}\n  at {at}\n" + (f"  last ucall from this vCPU: {last_ucall}\n" if last_ucall else "")
           + f"  regs: {regs}\n  sregs: {sregs}\n"
           f"  memslots:\n    " + vm.memslot_table().replace("\n", "\n    "))
    if isinstance(ex, ShutdownExit):
        err = GuestTripleFault(msg, ex)
        err.reset_state = rip == 0xFFF0
        return err
    return UnexpectedExit(msg, ex)
