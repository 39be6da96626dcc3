"""Where kvmffi keeps what it builds and fetches (guest ELFs, kernel sources and images)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$KVMFFI_CACHE, else $XDG_CACHE_HOME/kvmffi, else ~/.cache/kvmffi."""
    env = os.environ.get("KVMFFI_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmffi"
