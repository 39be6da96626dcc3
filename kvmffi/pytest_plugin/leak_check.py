"""The leak check: a kvmffi session that ends with KVM fds still open, or threads still running,
that were not there when it started fails (``--kvm-no-leak-check`` turns it off).
"""

from __future__ import annotations

import os
import threading

import pytest

from .state import current


def _kvm_fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "kvm" in link:
            out[int(name)] = link
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listing it


def pytest_sessionstart(session: pytest.Session) -> None:
    current().baseline = (set(_kvm_fds()), _open_fds(), {t.ident for t in threading.enumerate()})


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    cfg = session.config
    st = current()
    if not st.active or st.baseline is None or cfg.getoption("--kvm-no-leak-check"):
        return
    import gc
    gc.collect()
    before_fds, before_n, before_threads = st.baseline
    leaked = {fd: link for fd, link in _kvm_fds().items() if fd not in before_fds}
    threads = [t for t in threading.enumerate() if t.ident not in before_threads and t.is_alive()]
    msgs = []
    if leaked:
        msgs.append("KVM fds left open at session end: " + ", ".join(f"{fd}->{lnk}" for fd, lnk in sorted(leaked.items())))
    if threads:
        msgs.append("threads left running at session end: " + ", ".join(t.name for t in threads))
    tr = cfg.pluginmanager.get_plugin("terminalreporter")
    n = _open_fds()
    ktap = cfg.pluginmanager.get_plugin("kvmffi-ktap")
    if ktap is not None and msgs:
        for m in msgs:
            ktap.write("# kvmffi: " + m)
    if tr is not None:
        tr.write_line(f"kvmffi leak check: open fds {before_n} at start, {n} at end; "
                      f"{len(leaked)} KVM fds and {len(threads)} threads leaked")
        for m in msgs:
            tr.write_line("kvmffi: " + m, red=True)
    if msgs and session.exitstatus == 0:
        session.exitstatus = 1
