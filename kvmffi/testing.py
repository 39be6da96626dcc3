"""Helpers for tests written with kvmffi: errno expectations, child-process accesses."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import errno_name, errno_of


def expect_errno(expected: int, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Assert ``fn(*args)`` fails with ``expected`` (0 = succeeds); ``what`` describes the call.

    The failure reads like the selftests': "<what> should fail with EINVAL, got 0 (success)".
    """
    __tracebackhide__ = True
    got = errno_of(fn, *args, **kwargs)
    if got != expected:
        want = "succeed" if expected == 0 else f"fail with {errno_name(expected)}"
        raise AssertionError(f"{what} should {want}, got {errno_name(got)}")


def expect_answer(behaviour: Any, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> int:
    """Assert ``fn(*args)`` gives (as an errno, 0 = success) an answer the running kernel may give for
    ``behaviour`` (a kvmffi.kernels.Behaviour); the failure lists every kernel's answer. Returns it."""
    __tracebackhide__ = True
    from .kernels import running
    got = errno_of(fn, *args, **kwargs)
    allowed = behaviour.expected()
    if got not in allowed:
        want = " or ".join(errno_name(a) if isinstance(a, int) else str(a) for a in allowed) or "(no answer known)"
        raise AssertionError(f"{what} should give {want} on {running()}, got {errno_name(got)}. "
                             f"Known answers: {behaviour.describe()}")
    return got


@dataclass(frozen=True)
class ChildResult:
    """How a child process ended: ``signal`` (e.g. SIGBUS) or ``exitcode``."""

    signal: int | None
    exitcode: int | None

    def __str__(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exited with {self.exitcode}"


def run_in_child(fn: Callable[[], Any], timeout: float = 30.0) -> ChildResult:
    """Run ``fn`` in a forked child; report how it ended. For accesses expected to SIGBUS.

    The child exits 0 when ``fn`` returns, 1 when it raises. Memory mapped before
    the fork is shared with the child (MAP_SHARED), so the child sees the same pages.
    """
    pid = os.fork()
    if pid == 0:  # child: never return into the test runner
        code = 0
        try:
            signal.signal(signal.SIGBUS, signal.SIG_DFL)
            signal.signal(signal.SIGSEGV, signal.SIG_DFL)
            fn()
        except BaseException:
            code = 1
        os._exit(code)
    deadline_ok = True
    end = time.monotonic() + timeout
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > end:
            deadline_ok = False
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    if not deadline_ok:
        raise TimeoutError(f"child process did not finish within {timeout} s")
    if os.WIFSIGNALED(status):
        return ChildResult(os.WTERMSIG(status), None)
    return ChildResult(None, os.WEXITSTATUS(status))


@contextlib.contextmanager
def not_this_vms_guest_memfds(vm: Any, size: int) -> Iterator[list[tuple[str, int]]]:
    """Fds that are not ``vm``'s guest_memfd, as (description, fd): /dev/kvm, the VM fd, a
    memfd, and another VM's guest_memfd (of the same type). Binding any of them is EINVAL."""
    mfd = os.memfd_create("kvmffi-test", os.MFD_CLOEXEC)
    try:
        os.ftruncate(mfd, size)
        with vm.kvm.create_vm(vm.type) as other, other.create_guest_memfd(size) as foreign:
            yield [("/dev/kvm", vm.kvm.fileno()), ("the VM fd", vm.fileno()), ("a memfd", mfd),
                   ("another VM's guest_memfd", foreign.fileno())]
    finally:
        os.close(mfd)


def touch(buf: Any, offset: int, write: bool = False) -> None:
    """Read (or write) one byte of a mapping directly, bypassing kvmffi's guard: the access a child
    performs to see the real SIGBUS."""
    from .memory import unguarded
    view = unguarded(buf)
    if write:
        view[offset:offset + 1] = b"\x5a"
    else:
        _ = bytes(view[offset:offset + 1])


__all__ = ["ChildResult", "expect_answer", "expect_errno", "not_this_vms_guest_memfds", "run_in_child", "touch", "errno_of",
           "errno_name"]
