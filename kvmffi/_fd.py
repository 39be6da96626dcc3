"""Base class for objects that own one file descriptor."""

from __future__ import annotations

import os
from types import TracebackType
from typing import Self


class FdOwner:
    """Owns one fd: ``fileno()``, idempotent ``close()``, context manager."""

    _fd: int = -1

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{type(self).__name__} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _close_children(self) -> None:
        pass

    def close(self) -> None:
        """Close the fd (and any children first). Safe to call more than once."""
        if self._fd < 0:
            return
        try:
            self._close_children()
        finally:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
