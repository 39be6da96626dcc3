"""kvmffi's test suites, shipped with the package: ``host`` (this machine's /dev/kvm) and ``private``
(private memory: a VM type with KVM_MEMORY_ATTRIBUTE_PRIVATE, e.g. the test kernel's SW_PROTECTED).

``kvmffi run host``, ``kvmffi run private`` run them from any directory; paths of your own test
files work alongside them and can use kvmffi's fixtures."""

from __future__ import annotations

from pathlib import Path

SUITES_DIR = Path(__file__).resolve().parent

TIERS = {"host": SUITES_DIR / "host", "private": SUITES_DIR / "private"}
# not a pytest tier: the kernel's own KVM selftests, built from the test kernel's source (kvmffi.selftests);
# "selftests" runs the guest_memfd-related ones, "selftests/NAME" one of them
SELFTESTS_TIER = "selftests"


def resolve(selection: list[str]) -> list[str]:
    """Tier names (``host``, ``private``, or ``host/test_vm.py``-style paths inside a tier) become the
    installed suite paths; anything else (a user's own files, node ids) is passed on as it is."""
    out = []
    for item in selection:
        head, sep, rest = item.partition("/")
        if head in TIERS and not Path(item).exists():
            out.append(str(TIERS[head] / rest) if sep else str(TIERS[head]))
        else:
            out.append(item)
    return out
