"""What a fuzz run records: findings (each with the script that replays it), their kinds, and the
answers, known bugs and repeats counted along the way."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field

from ..errors import errno_name


class Finding(AssertionError):
    """A call answered outside its contract, the model disagreed with the kernel, or the kernel
    logged a splat. The message ends with a script that replays the sequence; ``kind`` names the
    rule that was broken, so that a run reports each kind once."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


def replay(script: list[str]) -> str:
    """The text a finding ends with: the calls so far, as kvmffi public API lines."""
    return "\n\nreplay (kvmffi public API):\n    " + "\n    ".join(script)


def kind_of(e: BaseException) -> str:
    """A finding's kind: the rule it broke, else the shape of its first line (numbers left out)."""
    if isinstance(e, Finding) and e.kind != "other":
        return e.kind
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"0x[0-9a-f]+|\d+", "N", first)[:120]


@dataclass
class Stats:
    calls: int = 0
    examples: int = 0
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    known: dict[str, int] = field(default_factory=dict)     # known kernel bugs hit, by name
    repeats: dict[str, int] = field(default_factory=dict)   # findings of a kind already reported, by kind
    planned: int = 0
    started: float = 0.0
    last_report: float = 0.0

    def reset(self, planned: int) -> None:
        """A new run of ``planned`` sequences: every count back to zero, the clock started."""
        self.calls, self.examples, self.answers, self.known, self.repeats = 0, 0, {}, {}, {}
        self.planned, self.started = planned, time.monotonic()
        self.last_report = self.started

    def progress(self) -> None:
        """A line on stderr every 30 s of a long run: sequences done, calls, elapsed."""
        now = time.monotonic()
        if now - self.last_report >= 30:
            self.last_report = now
            print(f"kvmffi fuzz: {self.examples - 1}/{self.planned} sequences, {self.calls} calls, "
                  f"{now - self.started:.0f} s", file=sys.stderr, flush=True)

    def record(self, call: str, err: int) -> None:
        self.calls += 1
        per = self.answers.setdefault(call, {})
        key = errno_name(err) if err else "ok"
        per[key] = per.get(key, 0) + 1


STATS = Stats()
