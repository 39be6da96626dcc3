"""Page marks: the first and last 8 bytes of each 4 KiB page hold a pattern (the host side of the
guest library's guest_fill_marks / guest_check_marks)."""

from __future__ import annotations

import struct
from typing import Any

MARK_OFFSETS = (0, 4088)


def fill_marks(buf: Any, offset: int, size: int, pattern: int) -> None:
    """Write ``pattern`` at the marks of every page of buf[offset:offset + size]."""
    b = struct.pack("<Q", pattern & 0xFFFFFFFFFFFFFFFF)
    for page in range(offset, offset + size, 4096):
        for m in MARK_OFFSETS:
            buf[page + m:page + m + 8] = b


def check_marks(buf: Any, offset: int, size: int, pattern: int) -> int:
    """The first mismatching offset (relative to ``offset``), or -1 if every mark holds ``pattern``."""
    b = struct.pack("<Q", pattern & 0xFFFFFFFFFFFFFFFF)
    for page in range(offset, offset + size, 4096):
        for m in MARK_OFFSETS:
            if buf[page + m:page + m + 8] != b:
                return page + m - offset
    return -1
