"""What the fuzzer's model predicts a call must answer: the calls that must fail, and with which errnos.

The fuzzer (kvmffi.fuzz) asks before each KVM_SET_USER_MEMORY_REGION2: given the memslots and
guest_memfd bindings the model holds, must this call fail? Every rule the kernel applies that the
call breaks contributes its errno (api.rst "KVM_SET_USER_MEMORY_REGION2"; virt/kvm/kvm_main.c
check_memory_region_flags() and kvm_set_memory_region(), virt/kvm/guest_memfd.c in 6.12 and 7.3),
so the prediction does not depend on the order in which a kernel checks them. A success where the
model predicts a failure, or an errno outside the predicted ones, is a finding; each rule has a
stable ``kind`` so that a run reports every distinct finding once.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass

from .uapi import MemslotFlag

PAGE = 4096
U64 = (1 << 64) - 1
KNOWN_FLAGS = int(MemslotFlag.LOG_DIRTY_PAGES | MemslotFlag.READONLY | MemslotFlag.GUEST_MEMFD)


@dataclass(frozen=True)
class SlotModel:
    gpa: int
    size: int
    flags: int
    hva: int
    gmem: int | None          # the guest_memfd's identity (the fuzzer's id()), or None
    offset: int


@dataclass(frozen=True)
class GmemModel:
    ident: int
    size: int


@dataclass(frozen=True)
class Rule:
    kind: str                 # a stable name: one finding per kind
    errno: int
    why: str


@dataclass(frozen=True)
class Expect:
    """The call must fail with one of ``errnos`` (the rules it breaks say why)."""
    rules: tuple[Rule, ...]

    @property
    def errnos(self) -> frozenset[int]:
        return frozenset(r.errno for r in self.rules)

    def describe(self) -> str:
        return "; ".join(f"{r.why} ({E.errorcode.get(r.errno, r.errno)})" for r in self.rules)


def set_memslot(slots: dict[int, SlotModel], slot: int, gpa: int, size: int, flags: int, hva: int,
                gmem: GmemModel | None, offset: int, *, unknown_flags_fail: bool = True,
                overlap_errnos: tuple[int, ...] = (E.EINVAL, E.EEXIST), gmem_supported: bool = True) -> Expect | None:
    """The rules KVM_SET_USER_MEMORY_REGION2(slot, gpa, size, hva, flags, gmem, offset) breaks, or
    None where it may succeed. ``gmem`` None with GUEST_MEMFD in ``flags`` means a closed or no fd;
    ``overlap_errnos``: the kernel's answer for a guest_memfd range another slot binds
    (kvmffi.kernels "gmem_range_already_bound"); ``gmem_supported``: the VM offers guest_memfd."""
    rules: list[Rule] = []

    def rule(kind: str, err: int, why: str) -> None:
        rules.append(Rule(kind, err, why))

    gm = bool(flags & MemslotFlag.GUEST_MEMFD)
    if flags & ~KNOWN_FLAGS and unknown_flags_fail:
        rule("memslot_unknown_flags", E.EINVAL, f"flag bits {flags & ~KNOWN_FLAGS:#x} are not defined")
    if gm and flags & MemslotFlag.LOG_DIRTY_PAGES:
        rule("gmem_with_dirty_log", E.EINVAL, "GUEST_MEMFD with LOG_DIRTY_PAGES")
    if gm and flags & MemslotFlag.READONLY:
        rule("gmem_with_readonly", E.EINVAL, "GUEST_MEMFD with READONLY (e563592224e0)")
    if size % PAGE:
        rule("memslot_size_unaligned", E.EINVAL, f"size {size:#x} is not page aligned")
    if gpa % PAGE:
        rule("memslot_gpa_unaligned", E.EINVAL, f"gpa {gpa:#x} is not page aligned")
    if hva % PAGE:
        rule("memslot_hva_unaligned", E.EINVAL, f"userspace_addr {hva:#x} is not page aligned")
    if gm and (offset % PAGE or offset + size > U64):
        rule("gmem_offset_unaligned_or_wraps", E.EINVAL, f"guest_memfd offset {offset:#x} unaligned or wrapping")
    if gpa + size > U64:
        rule("memslot_gpa_wraps", E.EINVAL, "gpa + size wraps")
    old = slots.get(slot)
    if size == 0:
        if old is None:
            rule("delete_missing_slot", E.EINVAL, f"deleting slot {slot}, which does not exist")
        return Expect(tuple(rules)) if rules else None
    if old is not None:
        if gm:
            rule("gmem_slot_modified", E.EINVAL, "guest_memfd memslots are immutable: they can only be deleted")
        if hva != old.hva or size != old.size:
            rule("memslot_resized_or_remapped", E.EINVAL, "a slot's size and userspace_addr cannot change")
        if (flags ^ old.flags) & (MemslotFlag.READONLY | MemslotFlag.GUEST_MEMFD):
            rule("memslot_readonly_or_gmem_toggled", E.EINVAL,
                 "READONLY and GUEST_MEMFD cannot change on a live slot (9935df5333aa)")
        moving = gpa != old.gpa
    else:
        moving = True
    if moving and not rules:
        for n, s in slots.items():
            if n != slot and gpa < s.gpa + s.size and s.gpa < gpa + size:
                rule("memslot_gpa_overlap", E.EEXIST, f"[{gpa:#x}, {gpa + size:#x}) overlaps slot {n}")
                break
    if gm and old is None:
        if gmem is None:
            rules.append(Rule("gmem_bad_fd", E.EBADF, "GUEST_MEMFD without an open guest_memfd"))
            rules.append(Rule("gmem_bad_fd", E.EINVAL, "GUEST_MEMFD without this VM's guest_memfd"))
        elif not gmem_supported:
            rule("gmem_unsupported", E.EINVAL, "this VM type has no guest_memfd")
        else:
            if offset + size > gmem.size:
                rule("gmem_bind_past_end", E.EINVAL,
                     f"binding [{offset:#x}, {offset + size:#x}) of a {gmem.size:#x}-byte guest_memfd (eba85fee7fc6)")
            elif not rules:
                for n, s in slots.items():
                    if s.gmem == gmem.ident and offset < s.offset + s.size and s.offset < offset + size:
                        for err in overlap_errnos:
                            rules.append(Rule("gmem_range_already_bound", err,
                                              f"guest_memfd range overlaps slot {n}'s binding (7ea987a90585)"))
                        break
    return Expect(tuple(rules)) if rules else None
