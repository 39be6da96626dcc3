"""Parametrization of kvmffi's ``vm_type`` and ``gmem_flags`` fixtures over what this host offers.

A test that uses them runs once per VM type the host creates and kvmffi can drive (narrowed by the
``any_vm_type``, ``private``, ``needs_gmem_flags`` and ``vm_types`` markers), and with
``gmem_flags`` once per combination of the guest_memfd flags each type advertises. Creatable
types kvmffi cannot run (SEV, SNP, TDX) are listed too, each skipped with the reason. A test
whose ``vm_type`` or ``gmem_flags`` is a fixture of its own is left alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from .. import caps as _caps
from ..uapi import GuestMemfdFlag, VmType
from .fixtures import is_kvmffi_fixture
from .state import host_caps

# VM types kvmffi can run a vCPU in. SEV, SEV-ES, SNP and TDX need a launch flow (measured
# encryption of the initial image, a TD module) that kvmffi does not have.
RUNNABLE_TYPES = (VmType.DEFAULT, VmType.SW_PROTECTED)


def _unrunnable_types(h: _caps.HostCaps) -> list[VmType]:
    return [VmType(v.value) for v in h.per_vm_type if v.creatable and v.value not in RUNNABLE_TYPES]


def _creatable_types(h: _caps.HostCaps, need: str = "guest_memfd") -> list[VmType]:
    """VM types to parametrize over: those the host creates that have what the tests need.

    need: "any" (creatable), "guest_memfd" (KVM_CAP_GUEST_MEMFD on the VM fd), or
    "private" (KVM_MEMORY_ATTRIBUTE_PRIVATE on the VM fd). Falls back to the first type
    that fits nothing, so the test runs and its requirement check explains the skip.
    """
    ok = [v for v in h.per_vm_type if v.creatable and v.value in RUNNABLE_TYPES]
    if need == "guest_memfd":
        ok = [v for v in ok if v.guest_memfd > 0]
    elif need == "private":
        ok = [v for v in ok if v.private]
    types = [VmType(v.value) for v in ok]
    if types:
        return types
    fallback = VmType.SW_PROTECTED if need == "private" else VmType.DEFAULT
    return [fallback]


def _flag_combos(mask: int) -> list[GuestMemfdFlag]:
    bits = [1 << b for b in range(64) if mask & (1 << b)]
    out = []
    for n in range(len(bits) + 1):
        for combo in itertools.combinations(bits, n):
            out.append(GuestMemfdFlag(sum(combo)))
    return out


def _uses_own(metafunc: pytest.Metafunc, name: str) -> bool:
    """Does the test use kvmffi's fixture ``name`` (not a namesake of the user's own)?"""
    if name not in metafunc.fixturenames:
        return False
    # the definitions pytest resolved for each name, closest last; a pytest that stops exposing
    # them leaves the name alone to decide
    arg2defs: dict[str, Sequence[Any]] | None = getattr(metafunc, "_arg2fixturedefs", None)
    if arg2defs is None:
        return True
    return is_kvmffi_fixture(arg2defs.get(name, ()))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _uses_own(metafunc, "vm_type"):
        return
    with_flags = _uses_own(metafunc, "gmem_flags")
    h = host_caps()
    need = "any" if metafunc.definition.get_closest_marker("any_vm_type") else "guest_memfd"
    if metafunc.definition.get_closest_marker("private"):
        need = "private"
    types = _creatable_types(h, need)
    nf = metafunc.definition.get_closest_marker("needs_gmem_flags")
    if nf is not None:
        want = int(nf.args[0])
        have = [t for t in types if (vc := h.vm_type(t)) is not None and vc.guest_memfd_flags & want == want]
        types = have or types[:1]  # none: the first runs, and explains its skip
    m = metafunc.definition.get_closest_marker("vm_types")
    if m is not None:
        wanted = [VmType(int(t)) for t in m.args]
        types = [t for t in wanted if t in types] or wanted
    if with_flags:
        params = []
        for t in types:
            vc = h.vm_type(t)
            # bits kvmffi does not know are left out (`kvmffi caps` lists them as untested)
            for f in _flag_combos((vc.guest_memfd_flags if vc else 0) & sum(GuestMemfdFlag.__members__.values())):
                params.append(pytest.param(t, f, id=f"{t.name}-{str(f).replace('|', '+') or '0'}"))
    else:
        params = [pytest.param(t, id=t.name) for t in types]
    # creatable types kvmffi cannot drive are listed, each skipped with the reason
    for t in _unrunnable_types(h):
        if m is None or t in [VmType(int(x)) for x in m.args]:
            reason = (f"{t.kernel_name} is offered by this kernel, but running its vCPUs needs a launch flow "
                      "(SEV/SNP measured launch, TDX module) that kvmffi does not have")
            values = (t, GuestMemfdFlag(0)) if with_flags else (t,)
            params.append(pytest.param(*values, id=t.name, marks=pytest.mark.skip(reason=reason)))
    if with_flags:
        metafunc.parametrize(("vm_type", "gmem_flags"), params)
    else:
        metafunc.parametrize("vm_type", params)
