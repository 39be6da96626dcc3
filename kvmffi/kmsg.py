"""The kernel log, read through /dev/kmsg, and the splats in it.

A splat is what the kernel prints when something is wrong even though the ioctl answered:
WARNING and BUG reports, oopses, KASAN/UBSAN/KFENCE reports, lockdep's reports, RCU stalls,
soft lockups, hung tasks. Only records the kernel itself logged count (facility 0): lines
written from userspace into /dev/kmsg are facility 1 and never look like a splat here, and
ordinary kernel lines (kvm-pvm reporting a guest's triple fault) do not match.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field

# the first line of each kind of splat; the report runs from it to the end of the test's log
SPLAT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(rx)) for name, rx in (
    ("KASAN", r"^BUG: KASAN: "),
    ("KFENCE", r"^BUG: KFENCE: "),
    ("UBSAN", r"^UBSAN: "),
    ("lockdep", r"^WARNING: possible (circular|recursive) locking"),
    ("lockdep", r"^WARNING: (inconsistent lock state|suspicious RCU usage|bad unlock balance)"),
    ("soft lockup", r"watchdog: BUG: soft lockup"),
    ("hard lockup", r"Watchdog detected hard LOCKUP"),
    ("RCU stall", r"rcu: INFO: rcu_\w+ (self-)?detected stall"),
    ("RCU stall", r"rcu_\w+ detected stalls? on CPUs/tasks"),
    ("hung task", r"^INFO: task .* blocked for more than \d+ seconds"),
    ("WARNING", r"^WARNING: "),
    ("cut here", r"^-+\[ cut here \]-+$"),
    ("BUG", r"^BUG: "),
    ("BUG", r"^kernel BUG at "),
    ("Oops", r"^Oops: "),
    ("general protection fault", r"^general protection fault"),
    ("list corruption", r"^list_(add|del) corruption"),
    ("refcount", r"^refcount_t: "),
    ("kmemleak", r"^kmemleak: \d+ new suspected memory leaks"),
    ("panic", r"^Kernel panic - not syncing"),
))
# a separator line alone is not a splat: KASAN's "====" only counts with a KASAN line after it
_SEPARATOR = re.compile(r"^=+$")
_END = re.compile(r"^-+\[ end (trace|Kernel panic)")


@dataclass(frozen=True)
class Record:
    facility: int
    level: int
    seq: int
    usec: int
    text: str

    @property
    def from_kernel(self) -> bool:
        return self.facility == 0


def parse_record(raw: str) -> Record | None:
    """One /dev/kmsg record: "PRI,SEQ,USEC,FLAGS[,...];MESSAGE" then " KEY=VALUE" lines."""
    head, sep, rest = raw.partition(";")
    if not sep:
        return None
    fields = head.split(",")
    try:
        pri, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
    except (ValueError, IndexError):
        return None
    text = rest.split("\n", 1)[0]
    text = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    return Record(pri >> 3, pri & 7, seq, usec, text)


def splat_kind(text: str) -> str | None:
    """The kind of splat a kernel line starts, or None."""
    if _SEPARATOR.match(text):
        return None
    for name, rx in SPLAT_PATTERNS:
        if rx.search(text):
            return name
    return None


@dataclass
class Splat:
    kind: str
    lines: list[str] = field(default_factory=list)
    closed: bool = False    # its "---[ end trace ... ]---" line was seen

    def __str__(self) -> str:
        return "\n".join(self.lines)

    @property
    def headline(self) -> str:
        """The line that names the problem (the one after a "cut here" marker)."""
        for line in self.lines:
            if not re.match(r"^-+\[ cut here \]-+$", line):
                return line
        return self.lines[0]


def find_splats(records: list[Record], limit: int = 300) -> list[Splat]:
    """Splats among the kernel's records: each from its first line up to the next splat (at most
    ``limit`` lines each), so the whole report travels with it."""
    out: list[Splat] = []
    for r in records:
        if not r.from_kernel:
            continue
        kind = splat_kind(r.text)
        # "cut here" is followed by the WARNING/BUG line: one splat, not two
        if kind is not None and not (out and out[-1].kind == "cut here" and len(out[-1].lines) == 1):
            out.append(Splat(kind, [r.text]))
        elif out and not out[-1].closed:
            if kind is not None and out[-1].kind == "cut here":
                out[-1].kind = kind
            if len(out[-1].lines) < limit:
                out[-1].lines.append(r.text)
            if _END.match(r.text):
                out[-1].closed = True
    return out


class KernelLog:
    """/dev/kmsg from a mark on: ``mark()`` skips what is there, ``read()`` returns what came since.

    ``KernelLog.open()`` returns None where /dev/kmsg cannot be read (no permission,
    kernel.dmesg_restrict for a non-root user, no such device).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str = "/dev/kmsg") -> KernelLog | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        log = cls(fd)
        try:
            log.mark()
            log.read()
        except OSError:
            log.close()
            return None
        return log

    def mark(self) -> None:
        os.lseek(self.fd, 0, os.SEEK_END)

    def read(self) -> list[Record]:
        out = []
        while True:
            try:
                raw = os.read(self.fd, 16384)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                raise
            if not raw:
                break
            rec = parse_record(raw.decode(errors="replace"))
            if rec is not None:
                out.append(rec)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> KernelLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
