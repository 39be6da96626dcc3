"""uAPI fuzzing with hypothesis: random sequences of guest_memfd, memslot, attribute, pre-fault and
vCPU calls on one VM, each answer checked against the contract (kvmffi.contract), the host's view
of shared guest_memfd memory and the guest's reads checked against a model, and the kernel log
watched for splats. A finding is shrunk by hypothesis and printed as a Python script that replays
it with kvmffi's public API.

findings.py: findings, their kinds and replay text, the run's counts; space.py: the limits and
strategies the rules draw from; machine.py: the state machine's rules (imports hypothesis, so it is
imported only when a run starts); run.py: the run loop, ``fuzz()`` and its result.
"""

from __future__ import annotations

from typing import Any

from ..errors import KvmError
from .findings import Finding
from .run import FuzzResult, fuzz


def __getattr__(name: str) -> Any:
    """``build_machine`` without importing hypothesis until it is asked for."""
    if name == "build_machine":
        from .machine import build_machine
        return build_machine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Finding", "FuzzResult", "fuzz", "KvmError"]
