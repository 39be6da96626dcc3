"""The machine spec: what each field accepts, and the one line a bad value gets."""

import pytest

from kvmffi.testkernel.spec import BootSpec, SpecError


def test_defaults_run_on_this_host() -> None:
    s = BootSpec()
    assert s.on_host and s.version is None and s.describe() == ""
    assert s.resolved() is s


@pytest.mark.parametrize("kernel,version", [("6.12", ("6.12", False)), ("7.3-debug", ("7.3", True)),
                                            ("newest", ("newest", False))])
def test_versions(kernel: str, version: tuple[str, bool]) -> None:
    assert BootSpec(kernel).version == version


def test_a_bzimage_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    img = tmp_path / "bzImage"
    img.write_bytes(b"")
    s = BootSpec(str(img), numa=2, kernel_args="kvm.tdp_mmu=0")
    assert s.version is None and s.image() == img and s.resolved() == s
    assert s.describe() == "2 NUMA nodes, kvm.tdp_mmu=0"


@pytest.mark.parametrize("kw,message", [
    ({"kernel": "9.x"}, "--kernel 9.x: give host, a version"),
    ({"kernel": "7.3", "cpus": 0}, "--cpus 0: give 1 or more"),
    ({"kernel": "7.3", "memory": "abc"}, "--memory abc: give MiB or a size like 2G or 1536M"),
    ({"kernel": "7.3", "numa": 1}, r"--numa 1: give 0 \(no NUMA\) or 2 or more nodes"),
    ({"kernel": "7.3", "numa": -2}, r"--numa -2: give 0"),
    ({"kernel": "7.3", "numa": 3, "memory": "256M"}, "must split into equal nodes"),
])
def test_bad_values_name_the_option(kw: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        BootSpec(**kw)  # type: ignore[arg-type]


def test_machine_options_need_a_test_kernel() -> None:
    BootSpec("7.3", numa=2).require_test_kernel()
    BootSpec().require_test_kernel()
    with pytest.raises(SpecError, match="2 NUMA nodes: these describe a test kernel's machine; give --kernel too"):
        BootSpec(numa=2).require_test_kernel()
