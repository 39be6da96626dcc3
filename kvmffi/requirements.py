"""What a test needs from the kernel, said in one place for test writers.

Each function raises :class:`kvmffi.errors.MissingCapability` when the kernel lacks something; the
pytest plugin reports it as a skip naming what is missing and how to get it, or as a failure in
strict mode unless the running kernel predates the feature (kvmffi.kernels.FEATURE_SINCE). Test
modules import this module, never the plugin::

    from kvmffi.requirements import require_cap, require_gmem_flags, skip_missing

    def test_pre_fault(vm):
        require_cap(Cap.PRE_FAULT_MEMORY, vm)      # asked on the VM: KVM answers per VM

The suites' knobs (how long to soak or fuzz, whether this machine may lose pages) come from
:func:`knobs`, whoever set them: a pytest option, an ini key or the environment.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from .errors import MissingCapability
from .hints import missing_cap_reason, require_gmem_flags
from .uapi import Cap

__all__ = ["Knobs", "MissingCapability", "expect_kernel_bug", "knobs", "require_cap", "require_gmem_flags",
           "skip_missing"]

#: How a capability is asked on /dev/kvm when no VM is given. The plugin points it at its session's
#: cached snapshot (and --kvm-path); outside pytest it opens /dev/kvm.
system_cap: Callable[[Cap], int] | None = None


def _ask_system(cap: Cap) -> int:
    if system_cap is not None:
        return system_cap(cap)
    from .system import Kvm
    with Kvm() as kvm:
        return kvm.check_extension(cap)


def skip_missing(reason: str, feature: str | None = None) -> None:
    """The kernel lacks something this test needs: raise MissingCapability(``reason``). ``feature``
    (a kvmffi.kernels.FEATURE_SINCE key) keeps it a skip in strict mode on kernels that predate it."""
    raise MissingCapability(reason, feature)


def require_cap(cap: Cap, vm: Any = None, min: int = 1) -> int:
    """KVM_CHECK_EXTENSION(``cap``) on ``vm`` (a Vm: KVM answers some capabilities per VM) or on
    /dev/kvm; returns the value, or raises MissingCapability when it is below ``min``."""
    if vm is not None:
        got = vm.check_extension(cap)
        where = f"a {getattr(vm.type, 'name', vm.type)} VM"
    else:
        got = _ask_system(cap)
        where = "/dev/kvm"
    if got < min:
        raise MissingCapability(missing_cap_reason(cap, got, where, f">= {min}"), cap.kernel_name)
    return got


def expect_kernel_bug(item: Any, name: str) -> None:
    """Mark the pytest item ``item`` an expected failure if the running kernel has the known bug
    ``name`` (kvmffi.kernels.KNOWN_BUGS). It still runs: on a kernel that fixed the bug it XPASSes,
    and on kernels outside the bug's range it is an ordinary test."""
    import pytest

    from .kernels import known_bug
    bug = known_bug(name)
    if bug.affected():
        item.add_marker(pytest.mark.xfail(reason=bug.reason(), strict=False, run=True))


@dataclass(frozen=True)
class Knobs:
    """What the suites are asked to do beyond their defaults. Each field NAME is set by the pytest
    option ``--kvm-NAME`` (``-`` for ``_``), else the ini key ``kvm_NAME``, else the environment
    variable ``KVMFFI_NAME``."""
    soak: float = 0.0          #: seconds private/test_soak.py runs; 0: it skips
    soak_seed: int = 0         #: the soak's random seed; 0: a fresh one
    fuzz_examples: int = 25    #: hypothesis sequences host/test_fuzz.py runs (at least 1)
    fuzz_seed: int = 1         #: host/test_fuzz.py's seed
    destructive: bool = False  #: tests may damage this machine for good (pages poisoned until reboot)


_BOOLS = {"1": True, "y": True, "yes": True, "true": True, "on": True,
          "0": False, "n": False, "no": False, "false": False, "off": False}


def parse_bool(text: str | None) -> bool | None:
    """A yes/no setting's text (1/0, y/n, yes/no, true/false, on/off, any case); None if it is none."""
    return _BOOLS.get((text or "").strip().lower())


def _int(text: str, least: int | None = None) -> int | None:
    try:
        v = int(text)
    except ValueError:
        return None
    return v if least is None or v >= least else None


def _seconds(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


#: What each knob's text must be: field -> (parser returning None for a bad value, what it expects).
KNOB_VALUES: dict[str, tuple[Callable[[str], Any], str]] = {
    "soak": (_seconds, "a number of seconds, 0 or more"),
    "soak_seed": (_int, "an integer (0: a fresh seed)"),
    "fuzz_examples": (lambda t: _int(t, 1), "a whole number, 1 or more"),
    "fuzz_seed": (_int, "an integer"),
    "destructive": (parse_bool, "a boolean (1/0, yes/no, true/false, on/off)"),
}


def knob_env(name: str) -> str:
    """The environment variable of knob ``name``: KVMFFI_FUZZ_EXAMPLES for fuzz_examples."""
    return "KVMFFI_" + name.upper()


def read_knobs(sources: Callable[[str], Iterable[tuple[str, str | None]]]) -> Knobs:
    """The knobs from ``sources(name)``: (where, text) pairs in order of precedence, the first set
    one (not None or empty) wins. Raises ValueError naming where a bad value came from."""
    got: dict[str, Any] = {}
    for f in fields(Knobs):
        parse, expected = KNOB_VALUES[f.name]
        for where, text in sources(f.name):
            if text is None or not text.strip():
                continue
            value = parse(text.strip())
            if value is None:
                raise ValueError(f"{where}: {text!r} is not {expected}")
            got[f.name] = value
            break
    return Knobs(**got)


def env_knobs() -> Knobs:
    """The knobs the environment sets (KVMFFI_SOAK, ...). Raises ValueError for a bad value."""
    return read_knobs(lambda name: [(knob_env(name), os.environ.get(knob_env(name)))])


#: Where :func:`knobs` reads. kvmffi's pytest plugin points it at its session's knobs (option, ini
#: key, environment); outside pytest they come from the environment.
session_knobs: Callable[[], Knobs] | None = None


def knobs() -> Knobs:
    """The suites' knobs (see :class:`Knobs`)::

        examples = knobs().fuzz_examples
    """
    return session_knobs() if session_knobs is not None else env_knobs()
