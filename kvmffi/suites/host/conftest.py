"""Host tier: tests that run against this machine's real /dev/kvm."""

import pytest

from kvmffi import Cap
from kvmffi.requirements import require_cap


@pytest.fixture(autouse=True)
def _needs_guest_memfd_on_host(kvm) -> None:
    require_cap(Cap.GUEST_MEMFD)
