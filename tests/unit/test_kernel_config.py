"""Test-kernel configuration checks (no build needed)."""

from pathlib import Path

import pytest

from kvmffi.testkernel.build import FRAGMENT, KernelBuildError, build_kernel, check_config, fragment_options


def test_fragment_has_what_private_memory_needs() -> None:
    opts = fragment_options()
    for k in ("CONFIG_KVM", "CONFIG_KVM_AMD", "CONFIG_KVM_SW_PROTECTED_VM", "CONFIG_EXPERT", "CONFIG_9P_FS",
              "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_HUGETLBFS", "CONFIG_PROCESSOR_SELECT", "CONFIG_CPU_SUP_AMD"):
        assert opts[k] == "y", k
    assert opts["CONFIG_MODULES"] == "n"
    assert opts["CONFIG_NR_CPUS"] == "4"


def test_check_config_names_what_did_not_survive(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    lines = [f"{k}={v}" if v != "n" else f"# {k} is not set" for k, v in fragment_options().items()]
    cfg.write_text("\n".join(lines) + "\n")
    assert check_config(cfg, FRAGMENT) == []
    text = cfg.read_text().replace("CONFIG_KVM_SW_PROTECTED_VM=y", "# CONFIG_KVM_SW_PROTECTED_VM is not set")
    text = text.replace("CONFIG_NR_CPUS=4", "CONFIG_NR_CPUS=64")
    cfg.write_text(text)
    assert check_config(cfg, FRAGMENT) == ["CONFIG_NR_CPUS=4 (got 64)", "CONFIG_KVM_SW_PROTECTED_VM=y (got n)"]


def test_not_a_kernel_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelBuildError, match="is not a kernel source tree"):
        build_kernel(tmp_path, quiet=True)
