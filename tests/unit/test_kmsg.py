"""Kernel-log records and splat detection (the parser; the gate itself is proven in a test kernel)."""

from kvmffi.kmsg import Record, find_splats, parse_record, splat_kind

# records as /dev/kmsg returns them: "PRI,SEQ,USEC,FLAGS;TEXT" then continuation " KEY=VALUE" lines
LKDTM_WARNING = [
    "6,1201,5120000,-;lkdtm: Performing direct entry WARNING",
    "4,1202,5120100,-;------------[ cut here ]------------",
    "4,1203,5120101,-;WARNING: CPU: 1 PID: 97 at drivers/misc/lkdtm/bugs.c:103 lkdtm_WARNING+0x9/0x10\n"
    " SUBSYSTEM=misc",
    "4,1204,5120102,-;Modules linked in:",
    "4,1205,5120103,-;CPU: 1 UID: 0 PID: 97 Comm: python3 Not tainted 7.3.4 #1",
    "4,1206,5120104,-;RIP: 0010:lkdtm_WARNING+0x9/0x10",
    "4,1207,5120105,-;Call Trace:",
    "4,1208,5120106,-;---[ end trace 0000000000000000 ]---",
    "6,1209,5120200,-;kvm_amd: an ordinary line after the splat",
]


def _records(raw: list[str]) -> list[Record]:
    out = [parse_record(r) for r in raw]
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]


def test_parse_record_fields_and_facility() -> None:
    r = parse_record("4,1203,5120101,-;WARNING: CPU: 1 PID: 97 at x.c:1 f+0x1/0x2\n SUBSYSTEM=misc")
    assert r == Record(facility=0, level=4, seq=1203, usec=5120101, text="WARNING: CPU: 1 PID: 97 at x.c:1 f+0x1/0x2")
    user = parse_record("12,1300,6000000,-;WARNING: CPU: 0 PID: 1 at fake.c:1 written from userspace")
    assert user is not None and user.facility == 1 and not user.from_kernel
    assert parse_record("garbage") is None
    assert parse_record("4,1,2,-;tab\\x09here").text == "tab\there"  # type: ignore[union-attr]


def test_a_cut_here_warning_is_one_splat_with_its_whole_report() -> None:
    splats = find_splats(_records(LKDTM_WARNING))
    assert [s.kind for s in splats] == ["WARNING"]
    assert splats[0].lines[0] == "------------[ cut here ]------------"
    assert splats[0].lines[-1] == "---[ end trace 0000000000000000 ]---"
    assert "lkdtm_WARNING" in str(splats[0])


def test_lines_written_from_userspace_are_never_splats() -> None:
    raw = ["12,1300,6000000,-;WARNING: CPU: 0 PID: 1 at fake.c:1 f+0x0/0x0",
           "12,1301,6000001,-;BUG: KASAN: use-after-free in fake"]
    assert find_splats(_records(raw)) == []


def test_ordinary_kernel_lines_are_not_splats() -> None:
    for text in ("kvm-pvm: INTERNAL_ERROR in batch emul: rip=0xfff0 cpl=0 cr3=0x0",
                 "kvm_amd: Nested Virtualization enabled", "kvm_intel: VMX not supported by CPU 0",
                 "==================================================================", "lkdtm: Performing direct entry WARNING",
                 "Memory failure: 0x1234: recovery action for dirty LRU page: Recovered"):
        assert splat_kind(text) is None, text


def test_every_kind_of_splat_is_named() -> None:
    cases = {
        "BUG: KASAN: slab-use-after-free in kvm_gmem_get_pfn+0x1/0x2": "KASAN",
        "BUG: KFENCE: out-of-bounds read in foo": "KFENCE",
        "UBSAN: shift-out-of-bounds in arch/x86/kvm/mmu/mmu.c:123:4": "UBSAN",
        "WARNING: possible circular locking dependency detected": "lockdep",
        "WARNING: suspicious RCU usage": "lockdep",
        "BUG: unable to handle page fault for address: ffff888000000000": "BUG",
        "kernel BUG at mm/filemap.c:1500!": "BUG",
        "Oops: general protection fault, probably for non-canonical address 0xdead": "Oops",
        "rcu: INFO: rcu_preempt self-detected stall on CPU": "RCU stall",
        "watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [qemu:123]": "soft lockup",
        "INFO: task kworker/0:1:12 blocked for more than 120 seconds.": "hung task",
        "list_add corruption. prev->next should be next": "list corruption",
        "refcount_t: underflow; use-after-free.": "refcount",
    }
    for text, kind in cases.items():
        assert splat_kind(text) == kind, text
