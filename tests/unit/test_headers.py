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
    assert all(a.startswith(("ioctl ", "struct ", "const ")) for a in r.absent)


def test_missing_headers_are_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no linux/kvm.h under"):
        check(tmp_path)


def test_bindings_match_the_7_3_headers() -> None:
    """Every struct, ioctl, capability, exit reason and flag number kvmffi names, against the uAPI
    headers exported from Debian's linux-source-7.3 (kept beside the 7.3 test kernel)."""
    from kvmffi.testkernel.build import default_image, headers_dir
    img = default_image("7.3")
    if img is None or not (headers_dir(img) / "linux" / "kvm.h").exists():
        pytest.skip("no 7.3 uAPI headers: `kvmffi kernel build --version 7.3` exports them beside the image")
    r = check(headers_dir(img))
    assert r.mismatched == []
    for name, value in (("KVM_CAP_GUEST_MEMFD_FLAGS", 244), ("KVM_EXIT_MEMORY_FAULT", 39),
                        ("GUEST_MEMFD_FLAG_INIT_SHARED", 2), ("KVM_X86_SW_PROTECTED_VM", 1)):
        assert f"const {name} = {value:#x}" in r.matched
    # every number kvmffi names exists in 7.3: nothing unmerged has a number here
    assert [a for a in r.absent if a.startswith("const ")] == []
    assert r.absent == []
