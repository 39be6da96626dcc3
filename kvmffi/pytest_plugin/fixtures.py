"""kvmffi's fixtures: /dev/kvm, VMs and guest_memfds that are closed at teardown, the VM type and
guest_memfd flags under test (parametrized by kvmffi.pytest_plugin.parametrize), and the autouse
fixture that asks ``requires_cap(..., vm=True)`` on a VM of the test's type.

``VmFactory`` and ``GmemFactory`` are the types of the factory fixtures, for annotations
(``from kvmffi.pytest_plugin import GmemFactory, VmFactory``)::

    def test_two_vms(vm_factory: VmFactory, gmem_factory: GmemFactory) -> None: ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import pytest

from ..guest_memfd import GuestMemfd
from ..system import Kvm
from ..uapi import Cap, GuestMemfdFlag, VmType
from ..vm import Vm
from .state import current
from .verdicts import require_cap, skip_missing


class VmFactory(Protocol):
    """The ``vm_factory`` fixture: ``vm_factory(vm_type=DEFAULT)`` makes a VM closed at teardown."""

    def __call__(self, vm_type: VmType | int = VmType.DEFAULT) -> Vm: ...


class GmemFactory(Protocol):
    """The ``gmem_factory`` fixture: ``gmem_factory(vm, size, flags=0)`` makes a guest_memfd closed at teardown."""

    def __call__(self, vm: Vm, size: int, flags: GuestMemfdFlag | int = 0) -> GuestMemfd: ...


def is_kvmffi_fixture(defs: Sequence[Any]) -> bool:
    """Is the fixture a test gets from these definitions (pytest's FixtureDefs for one name, the
    closest last) one of kvmffi's own, not a namesake? kvmffi's autouse fixtures do not count."""
    func = getattr(defs[-1], "func", None) if defs else None
    module = getattr(func, "__module__", None) or ""
    return (module == __package__ or module.startswith(f"{__package__}.")) \
        and not getattr(func, "__name__", "").startswith("_kvmffi")


@pytest.fixture(scope="session")
def kvm() -> Iterator[Kvm]:
    """/dev/kvm, opened once per session; skips (fails in strict mode) if it cannot be opened."""
    try:
        k = Kvm(current().kvm_path)
    except OSError as e:
        skip_missing(str(e.strerror or e))
        raise
    with k:
        yield k


@pytest.fixture
def vm_factory(kvm: Kvm) -> Iterator[VmFactory]:
    """``vm_factory(vm_type=DEFAULT)``: VMs closed at teardown, even when the test fails."""
    made: list[Vm] = []

    def make(vm_type: VmType | int = VmType.DEFAULT) -> Vm:
        vm = kvm.create_vm(vm_type)
        made.append(vm)
        return vm

    yield make
    for vm in reversed(made):
        vm.close()


@pytest.fixture
def vm_type() -> VmType:
    """The VM type under test; tests using it are parametrized over every type this host creates."""
    return VmType.DEFAULT


@pytest.fixture
def gmem_flags() -> GuestMemfdFlag:
    """guest_memfd flags under test; parametrized with ``vm_type`` over every advertised combination."""
    return GuestMemfdFlag(0)


@pytest.fixture
def vm(vm_factory: VmFactory, vm_type: VmType) -> Vm:
    """A VM of the test's ``vm_type`` (parametrized over every type this host can create)."""
    return vm_factory(vm_type)


@pytest.fixture
def gmem_factory() -> Iterator[GmemFactory]:
    """``gmem_factory(vm, size, flags=0)``: guest_memfds closed at teardown."""
    made: list[GuestMemfd] = []

    def make(vm: Vm, size: int, flags: GuestMemfdFlag | int = 0) -> GuestMemfd:
        g = vm.create_guest_memfd(size, flags)
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


@pytest.fixture(autouse=True)
def _kvmffi_vm_caps(request: pytest.FixtureRequest) -> None:
    """The ``requires_cap(..., vm=True)`` markers, asked on a VM of the test's ``vm_type``."""
    marks = [m for m in request.node.iter_markers("requires_cap") if m.kwargs.get("vm")]
    if not marks:
        return
    t = request.getfixturevalue("vm_type") if "vm_type" in request.fixturenames else VmType.DEFAULT
    with Kvm(current().kvm_path) as k, k.create_vm(t) as v:
        for m in marks:
            require_cap(Cap(m.args[0]), v, int(m.kwargs.get("min", 1)))
