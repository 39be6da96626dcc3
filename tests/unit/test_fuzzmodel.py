"""The fuzzer's model: which KVM_SET_USER_MEMORY_REGION2 calls must fail, and with which errnos."""

import errno as E

from kvmffi.fuzzmodel import GmemModel, SlotModel, set_memslot
from kvmffi.uapi import MemslotFlag

GM = int(MemslotFlag.GUEST_MEMFD)
RO = int(MemslotFlag.READONLY)
G = 1 << 32
HVA = 0x7F0000000000
gmem = GmemModel(1, 1 << 20)


def kinds(exp) -> set[str]:
    return {r.kind for r in exp.rules} if exp else set()


def test_a_valid_guest_memfd_binding_may_succeed() -> None:
    assert set_memslot({}, 1, G, 1 << 20, GM, HVA, gmem, 0) is None


def test_flag_combinations_and_alignment() -> None:
    assert kinds(set_memslot({}, 1, G, 4096, GM | RO, HVA, gmem, 0)) == {"gmem_with_readonly"}
    assert kinds(set_memslot({}, 1, G, 4096, 1 << 9, HVA, None, 0)) == {"memslot_unknown_flags"}
    assert set_memslot({}, 1, G, 4096, 1 << 9, HVA, None, 0, unknown_flags_fail=False) is None
    assert "memslot_size_unaligned" in kinds(set_memslot({}, 1, G, 4097, 0, HVA, None, 0))


def test_a_binding_past_the_end_of_the_file() -> None:
    exp = set_memslot({}, 1, G, 4096, GM, HVA, gmem, (1 << 63) - 4096)
    assert kinds(exp) == {"gmem_bind_past_end"} and exp is not None and exp.errnos == {E.EINVAL}


def test_changes_to_a_live_slot() -> None:
    slots = {1: SlotModel(G, 4096, GM, HVA, 1, 0)}
    assert "memslot_readonly_or_gmem_toggled" in kinds(set_memslot(slots, 1, G, 4096, 0, HVA, None, 0))
    assert "gmem_slot_modified" in kinds(set_memslot(slots, 1, G, 4096, GM, HVA, gmem, 0))
    assert set_memslot(slots, 1, G, 0, 0, 0, None, 0) is None          # deleting it may succeed
    assert kinds(set_memslot({}, 1, G, 0, 0, 0, None, 0)) == {"delete_missing_slot"}


def test_overlaps_by_kernel_answer() -> None:
    slots = {1: SlotModel(G, 8192, GM, HVA, 1, 0)}
    exp = set_memslot(slots, 2, G + 4096, 4096, 0, HVA, None, 0)
    assert kinds(exp) == {"memslot_gpa_overlap"} and exp is not None and exp.errnos == {E.EEXIST}
    exp = set_memslot(slots, 2, G + (1 << 30), 4096, GM, HVA, gmem, 4096, overlap_errnos=(E.EEXIST,))
    assert kinds(exp) == {"gmem_range_already_bound"} and exp is not None and exp.errnos == {E.EEXIST}
