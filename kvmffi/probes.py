"""Probes: behaviours of this host found by running something, not by asking a capability."""

from __future__ import annotations

from typing import Any

from .system import Kvm


def run_probes(kvm: Kvm) -> dict[str, Any]:
    return {}
