"""The vCPU watchdog: a vCPU that stays in KVM_RUN past its timeout is kicked out with a signal
(immediate_exit set first, so it cannot re-enter), and its run fails with GuestHang."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

from ..vcpu import Vcpu

KICK_SIGNAL = signal.SIGRTMIN + 3  # type: ignore[operator]


def install_kick_handler() -> None:
    """Install the no-op handler for the watchdog's signal, once; only the main thread can.

    The pytest plugin does this when a session uses kvmffi; a script that runs vCPUs from other
    threads calls it first from the main thread.
    """
    if signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, None, signal.SIG_IGN):
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the vCPU watchdog needs its signal handler: call "
                           "kvmffi.testvm.install_kick_handler() once from the main thread")
    signal.signal(KICK_SIGNAL, lambda s, f: None)


@dataclass
class VcpuState:
    """One vCPU's run: what the watchdog watches (progress, in_run) and what it did (kicked)."""
    vcpu: Vcpu
    progress: int = 0
    in_run: bool = False
    kicked: bool = False
    error: BaseException | None = None
    syncs: int = 0
    thread: threading.Thread | None = None
    last_ucall: tuple[int, ...] | None = None   # the last ucall seen, for failure reports


def kick(s: VcpuState) -> None:
    """Make the vCPU leave KVM_RUN now and not re-enter it."""
    s.kicked = True
    s.vcpu.immediate_exit = True
    tid = s.thread.ident if s.thread is not None else s.vcpu.thread_id
    if tid is not None:
        try:
            signal.pthread_kill(tid, KICK_SIGNAL)
        except ProcessLookupError:
            pass


class Watchdog:
    """Runs beside a TestVm's run: kicks a vCPU that made no progress for ``timeout`` seconds."""

    def __init__(self, states: list[VcpuState], timeout: float) -> None:
        self.states = states
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kvmffi-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        install_kick_handler()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        period = min(max(self.timeout / 8, 0.01), 0.25)
        seen = {id(s): (s.progress, time.monotonic()) for s in self.states}
        while not self._stop.wait(period):
            now = time.monotonic()
            for s in self.states:
                prog, since = seen[id(s)]
                if s.progress != prog or not s.in_run:
                    seen[id(s)] = (s.progress, now)
                elif now - since >= self.timeout and not s.kicked:
                    kick(s)
