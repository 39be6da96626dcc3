"""A short uAPI fuzz as part of the host tier (`kvmffi fuzz` runs longer ones): hypothesis call
sequences on a DEFAULT VM, every answer within the contract, host and guest reads matching the
model, no splat, no fd left open. KVMFFI_FUZZ_EXAMPLES sets the length (default 25)."""

import os

from kvmffi import Kvm
from kvmffi.fuzz import fuzz
from kvmffi.uapi import Cap, VmType


def test_fuzz_finds_nothing(kvm: Kvm) -> None:
    from kvmffi.requirements import require_cap
    require_cap(Cap.GUEST_MEMFD)
    examples = int(os.environ.get("KVMFFI_FUZZ_EXAMPLES", "25"))
    r = fuzz(examples=examples, seed=int(os.environ.get("KVMFFI_FUZZ_SEED", "1")), vm_type=VmType.DEFAULT)
    print(f"fuzz: {r.calls} calls in {r.examples} sequences, {r.seconds:.0f} s; known bugs hit: {r.known_bugs}")
    assert r.finding is None, r.finding
    assert r.calls > examples, "the fuzzer made almost no calls"
    assert r.answers.get("KVM_CREATE_GUEST_MEMFD", {}).get("ok", 0) > 0, "no guest_memfd was ever created"
