"""KvmError: every failing ioctl raises it, naming the ioctl and its arguments."""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Callable
from typing import Any, Protocol


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if hasattr(v, "fileno") and callable(v.fileno):
        try:
            return str(v.fileno())
        except Exception:
            return repr(v)
    if isinstance(v, int) and not hasattr(v, "name") and type(v) is int:
        return hex(v) if v >= 10 or v < 0 else str(v)
    return str(v)


class KvmError(OSError):
    """A KVM ioctl failed. ``.errno`` is the kernel's errno, ``.ioctl`` the ioctl's name."""

    #: KVM_PRE_FAULT_MEMORY writes the range back even when it fails: the (gpa, size) it left
    remaining: tuple[int, int] | None = None

    def __init__(self, ioctl: str, err: int, args: dict[str, Any] | None = None, hint: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.ioctl = ioctl
        self.ioctl_args = dict(args or {})
        self.hint = hint

    def __str__(self) -> str:
        s = f"{self.ioctl} failed: [Errno {self.errno}] {self.strerror}"
        if self.ioctl_args:
            s += " (" + " ".join(f"{k}={_fmt(v)}" for k, v in self.ioctl_args.items()) + ")"
        if self.hint:
            s += f": {self.hint}"
        return s

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno or 0)


class VmDeadError(KvmError):
    """KVM killed the VM (EIO, and the VM no longer answers)."""


class ErrorFactory(Protocol):
    """Makes the exception for a failed call: ``(ioctl, errno, args, hint)`` to a KvmError.

    ``KvmError`` itself is one. A Vm hands its own to the vCPUs it creates, so that an EIO from a
    VM that KVM killed becomes a :class:`VmDeadError` without the vCPU asking its Vm anything.
    """

    def __call__(self, ioctl: str, err: int, args: dict[str, Any], hint: str = "", /) -> KvmError: ...


class HostMemoryFault(OSError):
    """The host touched guest memory it may not access: a private guest_memfd page, a page past the
    end of the file, a poisoned page. A direct access would have been SIGBUS and killed the process;
    kvmffi's guest_memfd mappings copy through the kernel instead, so it is this exception."""

    def __init__(self, err: int, address: int, offset: int, write: bool) -> None:
        super().__init__(err, f"host {'write to' if write else 'read of'} guest memory at {address:#x} "
                              f"(offset {offset:#x} of the mapping) faulted: the page is not accessible to the "
                              "host (private, past the end of the guest_memfd, or poisoned); a direct access "
                              "would be SIGBUS")
        self.address, self.offset, self.write = address, offset, write


class MissingCapability(Exception):
    """The kernel lacks what a test needs. The message names what is missing and how to get it;
    ``feature`` (a kvmffi.kernels.FEATURE_SINCE key) lets strict mode tell a kernel that predates
    the feature from one that lost it. The pytest plugin reports it as a skip (strict: a failure).
    """

    def __init__(self, reason: str, feature: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.feature = feature


def errno_of(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> int:
    """Call ``fn`` and return 0 on success or the errno of the OSError it raised.

    The raw tier for negative tests that loop over many bad inputs: whatever
    ``fn`` returns is closed if it has a ``close`` method, so a call that was
    expected to fail but succeeded leaks nothing.
    """
    try:
        res = fn(*args, **kwargs)
    except OSError as e:
        return e.errno or 0
    close = getattr(res, "close", None)
    if callable(close):
        close()
    return 0


def errno_name(err: int) -> str:
    return "0 (success)" if err == 0 else _errno.errorcode.get(err, str(err))
