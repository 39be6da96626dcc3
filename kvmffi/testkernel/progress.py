"""Progress for long work: a live line on a terminal, a line a minute elsewhere (CI)."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    def __init__(self, what: str, quiet: bool = False, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        self.what = what
        self.quiet = quiet
        self.stream = stream
        self.tty = stream.isatty() and os.environ.get("CI") is None
        self.t0 = time.monotonic()
        self.last = 0.0
        self.shown = False

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def update(self, detail: str) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last >= 0.2:
                self.stream.write(f"\r\033[K{self.what}: {detail} [{self.elapsed():.0f}s]")
                self.stream.flush()
                self.last = now
                self.shown = True
        elif now - self.last >= 60:
            self.stream.write(f"{self.what}: {detail} [{self.elapsed():.0f}s]\n")
            self.stream.flush()
            self.last = now

    def note(self, line: str) -> None:
        if self.quiet:
            return
        if self.tty and self.shown:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.what}: {line}\n")
        self.stream.flush()
        self.shown = False

    def done(self, line: str) -> None:
        self.note(f"{line} in {self.elapsed():.1f}s")
