"""Whether a session is kvmffi's: the plugin stays invisible unless a collected test uses one of
kvmffi's fixtures (not a namesake) or markers, lives in kvmffi's suites, or ``--kvmffi`` asks.

When it is, the session is switched on: the kernel-log gate opens /dev/kmsg, the vCPU watchdog's
signal handler is installed, and the report header says which host the run is looking at.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures import is_kvmffi_fixture
from .log_gate import LogGate
from .options import MARKERS
from .state import KEY, host_caps
from .verdicts import strict_mode


def _uses_kvmffi(item: pytest.Item) -> bool:
    """Does this test use kvmffi: one of its fixtures (as defined here, not a namesake), a marker, or
    is it one of kvmffi's suites?"""
    from ..suites import SUITES_DIR
    if any(item.get_closest_marker(name) is not None for name in MARKERS):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for defs in (getattr(info, "name2fixturedefs", None) or {}).values():
        if is_kvmffi_fixture(defs):
            return True
    return Path(str(item.path)).resolve().is_relative_to(SUITES_DIR)


def header() -> list[str]:
    """The report header: kernel, vendor module, KVM API version, VM types and the key capabilities."""
    h = host_caps()
    lines = [f"kvmffi: kernel {h.kernel}, vendor module {h.vendor_module or 'none'}"
             + (f", nested={h.nested}" if h.nested else "") + f", strict={'on' if strict_mode() else 'off'}"]
    if not h.kvm_accessible:
        lines.append(f"kvmffi: {h.kvm_path} not usable: {h.error}")
        return lines
    s = h.system
    lines.append(f"kvmffi: KVM api {h.api_version}, VM types {h.vm_types_mask:#x}, GUEST_MEMFD={s['GUEST_MEMFD']} "
                 f"MEMORY_ATTRIBUTES={s['MEMORY_ATTRIBUTES']:#x} PRE_FAULT={s['PRE_FAULT_MEMORY']} "
                 f"NR_MEMSLOTS={s['NR_MEMSLOTS']}")
    for v in h.per_vm_type:
        if v.creatable:
            lines.append(f"kvmffi: {v.vm_type} VM: guest_memfd flags {v.guest_memfd_flag_names}, "
                         f"memory attributes {v.memory_attribute_names}")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Switch kvmffi's session machinery on if a collected test uses kvmffi (or --kvmffi asks)."""
    st = config.stash[KEY]
    if not (st.forced or any(_uses_kvmffi(i) for i in items)):
        return
    st.active = True
    if st.gate_mode != "off":
        from ..kmsg import KernelLog
        log = KernelLog.open()
        if log is None and st.gate_mode == "on":
            raise pytest.UsageError("--kvm-log-gate=on but /dev/kmsg cannot be read: run as root, or "
                                    "sysctl kernel.dmesg_restrict=0")
        st.log_gate = LogGate(log) if log is not None else None
    from ..testvm import install_kick_handler
    install_kick_handler()  # the vCPU watchdog's signal; must be installed on the main thread
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and config.option.verbose >= 0:
        for line in header():
            tr.write_line(line)
