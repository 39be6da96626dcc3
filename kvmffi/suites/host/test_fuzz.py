"""A short uAPI fuzz as part of the host tier (`kvmffi fuzz` runs longer ones): hypothesis call
sequences on a DEFAULT VM, every answer within the contract, host and guest reads matching the
model, no splat, no fd left open. --kvm-fuzz-examples (ini kvm_fuzz_examples, env
KVMFFI_FUZZ_EXAMPLES) sets the length (default 25), --kvm-fuzz-seed the seed."""

from kvmffi import Kvm
from kvmffi.fuzz import fuzz
from kvmffi.requirements import knobs, require_cap
from kvmffi.uapi import Cap, VmType


def test_fuzz_finds_nothing(kvm: Kvm) -> None:
    require_cap(Cap.GUEST_MEMFD)
    examples = knobs().fuzz_examples
    r = fuzz(examples=examples, seed=knobs().fuzz_seed, vm_type=VmType.DEFAULT)
    print(f"fuzz: {r.calls} calls in {r.examples} sequences, {r.seconds:.0f} s; known bugs hit: {r.known_bugs}")
    assert r.finding is None, r.finding
    assert r.calls > examples, "the fuzzer made almost no calls"
    assert r.answers.get("KVM_CREATE_GUEST_MEMFD", {}).get("ok", 0) > 0, "no guest_memfd was ever created"
