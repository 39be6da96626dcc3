"""A fuzz run: rounds of hypothesis sequences on one VM type, each finding shrunk and kept, the
kinds found so far counted rather than raised, and the result."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from ..kmsg import KernelLog
from ..system import Kvm
from ..uapi import VmType
from .findings import STATS, Finding, kind_of


@dataclass
class FuzzResult:
    examples: int
    calls: int
    seconds: float
    findings: list[Finding]
    answers: dict[str, dict[str, int]]
    known_bugs: dict[str, int]
    repeats: dict[str, int] = field(default_factory=dict)

    @property
    def finding(self) -> str | None:
        """The first finding's report, or None."""
        return str(self.findings[0]) if self.findings else None


SHRINK_SECONDS = 60      # hypothesis shrinks each finding for at most this long (its default: 300 s)
MAX_FINDINGS = 10


def fuzz(*, examples: int = 200, seed: int | None = None, vm_type: VmType = VmType.DEFAULT,
         steps: int = 40) -> FuzzResult:
    """Run ``examples`` random sequences of up to ``steps`` calls each and report every distinct
    finding: after each one (shrunk for at most SHRINK_SECONDS) a new round of ``examples``
    sequences starts, the kinds found so far counted rather than raised, until a round finds
    nothing new or MAX_FINDINGS kinds are found."""
    from hypothesis import HealthCheck, settings
    from hypothesis import seed as hseed
    from hypothesis.stateful import run_state_machine_as_test

    from .machine import build_machine

    if examples < 1 or steps < 1:
        raise ValueError(f"examples ({examples}) and steps ({steps}) must be at least 1")
    try:  # bound the shrinking of one finding (hypothesis has no setting for it)
        from hypothesis.internal.conjecture import engine
        engine.MAX_SHRINKING_SECONDS = SHRINK_SECONDS  # type: ignore[misc]
    except (ImportError, AttributeError):
        pass
    STATS.reset(examples)
    with Kvm() as kvm:
        if int(vm_type) not in [int(t) for t in kvm.vm_types()]:
            raise ValueError(f"VM type {vm_type.name} is not offered here (KVM_CAP_VM_TYPES)")
    log = KernelLog.open()
    t0 = time.monotonic()
    findings: list[Finding] = []
    kinds: set[str] = set()
    try:
        for round_ in range(MAX_FINDINGS * 2):   # each round: the full budget, the kinds found so far counted
            if len(findings) >= MAX_FINDINGS:
                break
            machine = build_machine(vm_type, log, frozenset(kinds))
            if seed is not None:
                machine = hseed(seed + round_)(machine)
            cfg = settings(max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
                           suppress_health_check=list(HealthCheck), print_blob=False)
            try:
                run_state_machine_as_test(machine, settings=cfg)
                break
            except Exception as e:  # a Finding, or a crash in kvmffi itself (a finding too)
                kind = kind_of(e)
                if kind in kinds:
                    STATS.repeats[kind] = STATS.repeats.get(kind, 0) + 1
                    continue
                kinds.add(kind)
                f = e if isinstance(e, Finding) else Finding(f"{type(e).__name__}: {e}", kind)
                f.kind = kind
                findings.append(f)
                print(f"kvmffi fuzz: finding {len(findings)} ({kind}) after {STATS.calls} calls", file=sys.stderr,
                      flush=True)
    finally:
        if log is not None:
            log.close()
    return FuzzResult(STATS.examples, STATS.calls, time.monotonic() - t0, findings, STATS.answers, STATS.known,
                      STATS.repeats)
