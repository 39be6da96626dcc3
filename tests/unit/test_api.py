"""The Python layer without /dev/kvm: enums, errors, the raw tier."""

import errno
import os

import pytest

from kvmffi import GuestMemfdFlag, Kvm, KvmError, MemslotFlag, errno_of
from kvmffi.testing import expect_errno, run_in_child


def test_flag_names_show_in_repr() -> None:
    assert str(MemslotFlag.GUEST_MEMFD | MemslotFlag.READONLY) == "READONLY|GUEST_MEMFD"
    assert str(GuestMemfdFlag(0)) == "0"
    assert str(GuestMemfdFlag(1 << 5 | 1)) == "MMAP|0x20"


def test_kvm_error_names_ioctl_and_arguments() -> None:
    e = KvmError("KVM_SET_USER_MEMORY_REGION2", errno.EINVAL,
                 {"slot": 1, "gpa": 1 << 32, "size": 0x1000, "flags": MemslotFlag.GUEST_MEMFD, "guest_memfd": 7, "offset": 0})
    assert str(e) == ("KVM_SET_USER_MEMORY_REGION2 failed: [Errno 22] Invalid argument "
                      "(slot=1 gpa=0x100000000 size=0x1000 flags=GUEST_MEMFD guest_memfd=7 offset=0)")
    assert isinstance(e, OSError) and e.errno == errno.EINVAL


def test_errno_of_returns_errno_and_closes_unexpected_success() -> None:
    closed = []

    class Res:
        def close(self) -> None:
            closed.append(True)

    def fail() -> None:
        raise KvmError("X", errno.ENOTTY)

    assert errno_of(fail) == errno.ENOTTY
    assert errno_of(Res) == 0 and closed == [True]


def test_expect_errno_message_says_what_should_have_happened() -> None:
    with pytest.raises(AssertionError, match="should fail with EINVAL, got 0 \\(success\\)"):
        expect_errno(errno.EINVAL, "noop", lambda: None)


def test_missing_device_gives_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist: load kvm_intel or kvm_amd"):
        Kvm(str(tmp_path / "nokvm"))


def test_run_in_child_reports_signal_and_exitcode() -> None:
    assert run_in_child(lambda: os.kill(os.getpid(), 7)).signal == 7
    assert run_in_child(lambda: None).exitcode == 0
    assert run_in_child(lambda: 1 / 0).exitcode == 1
