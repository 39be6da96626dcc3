"""A TestVm's run loop: each vCPU in KVM_RUN until GUEST_DONE, ucalls handled on the way (the fast
path reads GUEST_SYNC and GUEST_DONE straight from low memory), the watchdog beside it, the other
exits handed to the test or reported as failures. One vCPU runs on the calling thread; several run
on one thread each, and the first failure stops the others."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exits import Exit, IntrExit
from ..vcpu import Vcpu
from .diagnostics import unexpected_exit, where
from .errors import GuestHang, Stopped, UnexpectedExit
from .ucall import assertion_error, exception_error
from .watchdog import VcpuState, Watchdog, kick

if TYPE_CHECKING:
    from .testvm import TestVm

OnSync = Callable[[Vcpu, tuple[int, ...]], Any]
OnExit = Callable[[Vcpu, Exit], bool]


@dataclass
class RunResult:
    """What a run saw: GUEST_SYNCs per vCPU, GUEST_PRINTF lines, and how long it took."""

    syncs: dict[int, int] = field(default_factory=dict)   # vCPU id -> GUEST_SYNC count
    printed: list[str] = field(default_factory=list)      # GUEST_PRINTF lines
    seconds: float = 0.0


class RunLoop:
    """One run of ``tvm``'s vCPUs (what ``TestVm.run`` documents)."""

    def __init__(self, tvm: TestVm, on_sync: OnSync | None, on_exit: OnExit | None, timeout: float) -> None:
        self.tvm = tvm
        self.states = tvm.states
        self.on_sync = on_sync
        self.on_exit = on_exit
        self.timeout = timeout
        self.result = RunResult()

    def run(self) -> RunResult:
        result = self.result
        for s in self.states:
            s.error, s.kicked, s.syncs = None, False, 0
        t0 = time.monotonic()
        try:
            with Watchdog(self.states, self.timeout):
                if len(self.states) == 1:
                    self._loop(self.states[0])
                else:
                    for s in self.states:
                        s.thread = threading.Thread(target=self._thread_loop, args=(s,),
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

    def _thread_loop(self, s: VcpuState) -> None:
        try:
            self._loop(s)
        except BaseException as e:
            s.error = e
            for other in self.states:  # stop the others: one failure fails the run
                if other is not s and other.error is None:
                    other.error = Stopped(f"vCPU {other.vcpu.id} stopped: vCPU {s.vcpu.id} failed")
                    kick(other)

    def _loop(self, s: VcpuState) -> None:
        tvm = self.tvm
        on_sync, on_exit, timeout = self.on_sync, self.on_exit, self.timeout
        vcpu = s.vcpu
        low = tvm.low
        assert low is not None
        low_size = tvm.low_size
        abi = tvm.abi
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
                    uc = abi.header.unpack(tvm.read_gva(rdi, header_size))
                cmd = uc[0]
                s.last_ucall = uc
                if cmd == sync:
                    s.syncs += 1
                    if on_sync is not None:
                        on_sync(vcpu, uc[1:])
                    continue
                if cmd == done:
                    return
                self._ucall_slow(vcpu, cmd, uc, rdi)
                continue
            if type(ex) is IntrExit:
                if s.kicked:
                    vcpu.immediate_exit = False
                    if s.error is not None:
                        raise s.error
                    rip = vcpu.get_reg("rip")
                    raise GuestHang(f"vCPU {vcpu.id} did not exit within {timeout:.1f} s; "
                                    f"stopped at rip={rip:#x}{where(tvm.image, rip)}")
                # a signal that was not the watchdog's: fine once, a hang if it never stops
                now = time.monotonic()
                if intr_since is None:
                    intr_since = now
                elif now - intr_since > timeout:
                    rip = vcpu.get_reg("rip")
                    raise GuestHang(f"vCPU {vcpu.id}: KVM_RUN kept returning EINTR (a signal each time, not the "
                                    f"watchdog's) for {timeout:.1f} s at rip={rip:#x}{where(tvm.image, rip)}; "
                                    "e.g. KVM sends SIGBUS for a poisoned page of guest memory")
                continue
            intr_since = None
            if on_exit is not None and on_exit(vcpu, ex):
                continue
            raise self._unexpected(vcpu, ex, last_ucall=s.last_ucall)

    def _ucall_slow(self, vcpu: Vcpu, cmd: int, uc: tuple[int, ...], rdi: int) -> None:
        tvm = self.tvm
        abi = tvm.abi
        if cmd == abi.printf:
            text = tvm.read_string(rdi + abi.buffer_offset, abi.buffer_len)
            self.result.printed.append(text)
            if tvm.printf is not None:
                tvm.printf(text)
            else:
                print(f"guest vCPU {vcpu.id}: {text}", file=sys.stderr)
            return
        if cmd == abi.abort:
            raise assertion_error(abi, uc[1:], tvm.read_string)
        if cmd == abi.exception:
            raise exception_error(uc[1:], lambda rip: where(tvm.image, rip))
        raise self._unexpected(vcpu, None, f"unknown ucall {cmd} from the guest")

    def _unexpected(self, vcpu: Vcpu, ex: Exit | None, what: str | None = None,
                    last_ucall: tuple[int, ...] | None = None) -> UnexpectedExit:
        tvm = self.tvm
        assert tvm.vm is not None
        last = None
        if last_ucall is not None:
            names = {tvm.abi.sync: "GUEST_SYNC", tvm.abi.printf: "GUEST_PRINTF", tvm.abi.done: "GUEST_DONE"}
            last = f"{names.get(last_ucall[0], f'ucall {last_ucall[0]}')}{tuple(hex(a) for a in last_ucall[1:])}"
        return unexpected_exit(tvm.image, tvm.vm, vcpu, ex, what, last)
