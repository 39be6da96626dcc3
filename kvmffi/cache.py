"""Where kvmffi keeps what it builds and fetches (guest ELFs, kernel sources and images)."""

from __future__ import annotations

import functools
import os
from pathlib import Path


def cache_dir() -> Path:
    """$KVMFFI_CACHE, else $XDG_CACHE_HOME/kvmffi, else ~/.cache/kvmffi."""
    env = os.environ
    return _cache_dir(env.get("KVMFFI_CACHE"), env.get("XDG_CACHE_HOME"), env.get("HOME"))


@functools.lru_cache(maxsize=8)
def _cache_dir(kvmffi_cache: str | None, xdg_cache_home: str | None, home: str | None) -> Path:
    if kvmffi_cache:
        return Path(kvmffi_cache)
    base = xdg_cache_home or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmffi"
