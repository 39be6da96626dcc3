"""The bindings against the system's exported uAPI headers (whatever their age)."""

import os

import pytest

from kvmffi.headers import check


@pytest.mark.skipif(not os.path.exists("/usr/include/linux/kvm.h"),
                    reason="no /usr/include/linux/kvm.h (apt-get install linux-libc-dev)")
def test_bindings_match_the_system_headers() -> None:
    r = check("/usr/include")
    assert r.mismatched == []
    assert "ioctl KVM_RUN = 0xae80" in r.matched
    assert any(m.startswith("size kvm_sregs = 0x138") for m in r.matched)
    # what the headers lack is reported as absent, never as a mismatch
    assert all(a.startswith(("ioctl ", "struct ")) for a in r.absent)


def test_missing_headers_are_a_clear_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match="no linux/kvm.h under"):
        check(tmp_path)
