"""MmuMode: which MMU modes must withhold private VM types."""

from kvmffi.kernels import MmuMode


def test_private_vm_types_need_the_tdp_mmu() -> None:
    assert MmuMode(tdp=True, tdp_mmu=True).private_vm_types_possible is True
    assert MmuMode(tdp=True, tdp_mmu=False).private_vm_types_possible is False
    assert MmuMode(tdp=False, tdp_mmu=True).private_vm_types_possible is False
    assert MmuMode(tdp=False, tdp_mmu=False).private_vm_types_possible is False
    assert MmuMode(tdp=None, tdp_mmu=None).private_vm_types_possible is None


def test_names() -> None:
    assert str(MmuMode(True, False)) == "TDP on the legacy MMU (kvm.tdp_mmu=0)"
    assert str(MmuMode(False, True)) == "shadow paging (npt=0 / ept=0)"
    assert str(MmuMode(True, True)) == "the TDP MMU"
