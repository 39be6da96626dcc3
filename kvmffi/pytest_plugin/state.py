"""A pytest session's kvmffi state, kept in ``config.stash``, and the host snapshot taken once per session.

Nested sessions (pytester's in-process runs) each get their own state; the innermost configured
one is current. Outside pytest (a script calling the plugin's helpers) a default state applies,
strict only if ``KVMFFI_STRICT`` says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from .. import caps as _caps
from .. import requirements
from ..requirements import Knobs

if TYPE_CHECKING:
    from .log_gate import LogGate


@dataclass
class SessionState:
    """One pytest session's kvmffi state (in ``config.stash``; nested pytester sessions get their own)."""
    strict: bool = False
    kvm_path: str = "/dev/kvm"
    gate_mode: str = "auto"
    forced: bool = False
    knobs: Knobs | str = field(default_factory=Knobs)   # str: why the environment's value is bad
    active: bool = False
    caps: _caps.HostCaps | None = None
    log_gate: LogGate | None = None
    baseline: tuple[set[int], int, set[int | None]] | None = None
    notes: list[str] = field(default_factory=list)


KEY = pytest.StashKey[SessionState]()
CONFIGS: list[pytest.Config] = []   # configured sessions, innermost last


def current() -> SessionState:
    """The current session's state; outside pytest (a script using these helpers), a default one."""
    if CONFIGS:
        return CONFIGS[-1].stash[KEY]
    return SessionState(strict=truthy(os.environ.get("KVMFFI_STRICT")))


def truthy(v: str | None) -> bool:
    return requirements.parse_bool(v) is True


def host_caps() -> _caps.HostCaps:
    """The host's capability snapshot (taken once per session)."""
    st = current()
    if st.caps is None:
        st.caps = _caps.snapshot(st.kvm_path)
    return st.caps
