"""What kvmffi's markers check before a test runs: ``kernel_bug`` (an expected failure on kernels
that have the bug), ``private``, ``needs_gmem_flags`` and ``requires_cap`` (a skip, or in strict
mode a failure, naming what is missing), and ``numa(N)`` (a skip in every mode: the machine's
topology, not the kernel, lacks the nodes). ``requires_cap(..., vm=True)`` is asked on a VM of the
test's type, by an autouse fixture (kvmffi.pytest_plugin.fixtures) once ``vm_type`` is known.
"""

from __future__ import annotations

import pytest

from .. import requirements
from ..hints import missing_cap_reason
from ..system import Kvm
from ..uapi import Cap, VmType
from .state import current, host_caps
from .verdicts import require_cap, skip_missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    for m in item.iter_markers("kernel_bug"):
        requirements.expect_kernel_bug(item, m.args[0])
    if item.get_closest_marker("private") is not None:
        callspec = getattr(item, "callspec", None)
        t = callspec.params.get("vm_type", VmType.SW_PROTECTED) if callspec else VmType.SW_PROTECTED
        vc = host_caps().vm_type(t)
        from ..kernels import private_types_withheld
        withheld = private_types_withheld()
        if (vc is None or not vc.creatable or not vc.private) and withheld:
            # withheld by design: strict mode keeps it a skip (host/test_caps.py checks it is withheld)
            pytest.skip(withheld)
        if vc is None or not vc.creatable:
            h = host_caps()
            skip_missing(missing_cap_reason(Cap.VM_TYPES, h.vm_types_mask, "/dev/kvm",
                                            "a VM type with private memory, e.g. KVM_X86_SW_PROTECTED_VM (bit 1)")
                         if h.kvm_accessible else f"{h.kvm_path} not usable: {h.error}")
        elif not vc.private:
            skip_missing(missing_cap_reason(Cap.MEMORY_ATTRIBUTES, vc.memory_attributes, f"a {vc.vm_type} VM",
                                            "KVM_MEMORY_ATTRIBUTE_PRIVATE (0x8)"))
    numa = item.get_closest_marker("numa")
    if numa is not None:
        from ..numa import online_nodes
        want, have = int(numa.args[0]) if numa.args else 2, len(online_nodes())
        if have < want:
            pytest.skip(f"needs >= {want} NUMA nodes, this machine has {have} (a topology fact, not a kernel "
                        f"capability: `kvmffi run --kernel 7.3 --numa {want}` boots a machine with them)")
    nf = item.get_closest_marker("needs_gmem_flags")
    if nf is not None:  # the marker skips by itself: asked on a VM of the test's type (KVM answers per VM)
        callspec = getattr(item, "callspec", None)
        t = callspec.params.get("vm_type", VmType.DEFAULT) if callspec else VmType.DEFAULT
        vc = host_caps().vm_type(t)
        if vc is not None and vc.creatable:
            from ..hints import require_gmem_flags
            with Kvm(current().kvm_path) as k, k.create_vm(t) as v:
                require_gmem_flags(v, int(nf.args[0]))
    for m in item.iter_markers("requires_cap"):
        cap = Cap(m.args[0])
        need = int(m.kwargs.get("min", 1))
        if m.kwargs.get("vm"):
            continue  # checked once the VM exists, by fixtures._kvmffi_vm_caps
        require_cap(cap, None, need)

