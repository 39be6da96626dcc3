"""One machine spec: which kernel runs the tests and on what virtual machine.

A :class:`BootSpec` is parsed once where the user gives it (the command line, a matrix
configuration) and carried unchanged to the code that boots it. ``kernel`` is ``host`` (this
machine's own kernel, nothing booted), a version of Debian's kernel source (``6.12``, ``7.3``,
``newest``; ``-debug`` adds the debug fragment: KASAN, lockdep, ...) built once and cached, or the
path of a bzImage. The other fields describe the QEMU machine. A new knob is one field here, its
check in ``__post_init__`` and its QEMU argument in :meth:`BootSpec.boot`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .qemu import BootError, BootResult, boot, memory_mib, numa_args
from .sources import SYSTEM_VERSION

HOST = "host"
VERSION = re.compile(r"(\d+\.\d+|newest)(-debug)?")
DEFAULT_VERSION = SYSTEM_VERSION   # the kernel the private tier boots when this host has no private memory


def is_kernel(text: str) -> bool:
    """Whether ``text`` names a kernel a BootSpec takes: host, a version, or an existing file."""
    return text == HOST or bool(VERSION.fullmatch(text)) or os.path.isfile(text)


class SpecError(ValueError):
    """A machine option has a value it cannot take: the message names the option and what it accepts."""


@dataclass(frozen=True)
class BootSpec:
    """Where tests run. Raises SpecError for a value it cannot take."""
    kernel: str = HOST        # host, VERSION[-debug], or a bzImage path
    cpus: int = 2             # vCPUs of the QEMU machine
    memory: str = "2G"        # QEMU -m syntax: MiB, or 2G, 1536M
    numa: int = 0             # NUMA nodes (0: none; else >= 2, memory split equally, CPUs round-robin)
    kernel_args: str = ""     # added to the test kernel's command line, e.g. 'kvm.tdp_mmu=0'
    accel: str = "auto"       # QEMU -accel: auto (KVM if this host nests, else TCG), tcg, kvm, ...

    def __post_init__(self) -> None:
        if not is_kernel(self.kernel):
            raise SpecError(f"--kernel {self.kernel}: give host, a version (6.12, 7.3, newest; add -debug for KASAN and "
                            "lockdep) or the path of a bzImage")
        if self.cpus < 1:
            raise SpecError(f"--cpus {self.cpus}: give 1 or more")
        try:
            memory_mib(self.memory)
        except BootError:
            raise SpecError(f"--memory {self.memory}: give MiB or a size like 2G or 1536M") from None
        if self.numa < 0 or self.numa == 1:
            raise SpecError(f"--numa {self.numa}: give 0 (no NUMA) or 2 or more nodes")
        if self.numa:
            try:
                numa_args(self.numa, self.cpus, self.memory)
            except BootError as e:
                raise SpecError(str(e)) from None

    @property
    def on_host(self) -> bool:
        return self.kernel == HOST

    def require_test_kernel(self) -> None:
        """Raises SpecError if machine options are given for a run on this host, which has no
        machine to shape."""
        if self.on_host and self.describe():
            raise SpecError(f"{self.describe()}: these describe a test kernel's machine; give --kernel too")

    @property
    def version(self) -> tuple[str, bool] | None:
        """(version, debug) for a version of Debian's source, else None."""
        m = VERSION.fullmatch(self.kernel)
        return (m.group(1), bool(m.group(2))) if m else None

    def with_kernel(self, kernel: str) -> BootSpec:
        return replace(self, kernel=kernel)

    def image(self, quiet: bool = False) -> Path:
        """The bzImage to boot: a path as given, a version built once and cached (KernelBuildError,
        SourceError when it cannot be). Not for ``host``."""
        if self.on_host:
            raise ValueError("the host's own kernel has no image to boot")
        v = self.version
        if v is None:
            return Path(self.kernel)
        from .build import build_kernel
        return build_kernel(None, version=v[0], debug=v[1], quiet=quiet)

    def resolved(self, quiet: bool = False) -> BootSpec:
        """The same spec with a version replaced by its built image (host stays host)."""
        return self if self.on_host or self.version is None else self.with_kernel(str(self.image(quiet)))

    def boot(self, command: list[str], *, timeout: float = 600.0, cwd: str | None = None,
             echo: Callable[[str], None] | None = None, env: dict[str, str] | None = None,
             results_dir: Path | None = None, quiet: bool = False) -> BootResult:
        """Boot the kernel with this machine and run ``command`` (see qemu.boot); the result's
        ``release`` is the release the booted kernel reported. Raises BootError."""
        return boot(self.image(quiet), command, cpus=self.cpus, memory=self.memory, accel=self.accel, numa=self.numa,
                    extra_append=self.kernel_args, timeout=timeout, cwd=cwd, echo=echo, env=env,
                    results_dir=results_dir)

    def describe(self) -> str:
        """The machine in a few words (the kernel aside): '2 NUMA nodes, kvm.tdp_mmu=0'."""
        parts = []
        if self.cpus != _DEFAULT.cpus:
            parts.append(f"{self.cpus} CPUs")
        if self.memory != _DEFAULT.memory:
            parts.append(f"memory {self.memory}")
        if self.numa > 1:
            parts.append(f"{self.numa} NUMA nodes")
        if self.kernel_args:
            parts.append(self.kernel_args)
        if self.accel != _DEFAULT.accel:
            parts.append(f"accel {self.accel}")
        return ", ".join(parts)


_DEFAULT = BootSpec()
