"""Test-kernel configuration: the fragment, which options are required, and the verdict on a
configured tree (no build needed)."""

from pathlib import Path

import pytest

from kvmffi.testkernel.build import KernelBuildError, build_kernel
from kvmffi.testkernel.config import FRAGMENT, check_config, fragment, fragment_options, judge_config, tree_symbols
from kvmffi.testkernel.sources import SourceError, kernel_source


def test_fragment_has_what_the_tiers_need() -> None:
    opts = fragment_options()
    for k in ("CONFIG_KVM", "CONFIG_KVM_AMD", "CONFIG_KVM_SW_PROTECTED_VM", "CONFIG_EXPERT", "CONFIG_9P_FS",
              "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_HUGETLBFS", "CONFIG_PROCESSOR_SELECT", "CONFIG_CPU_SUP_AMD",
              "CONFIG_NUMA", "CONFIG_X86_MCE", "CONFIG_MEMORY_FAILURE"):
        assert opts[k] == "y", k
    assert opts["CONFIG_MODULES"] == "n"
    assert opts["CONFIG_NR_CPUS"] == "4"


def test_required_options_say_why() -> None:
    required = {o.name: o.required for o in fragment() if o.required}
    assert "the private tier" in (required["CONFIG_KVM_SW_PROTECTED_VM"] or "")
    for k in ("CONFIG_KVM", "CONFIG_KVM_AMD", "CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_BINFMT_SCRIPT"):
        assert k in required, k
    # options a tree may lack are not required: PROC_SYSCTL is gone in 7.x, NUMA is for one test group
    for k in ("CONFIG_PROC_SYSCTL", "CONFIG_NUMA", "CONFIG_MEMORY_FAILURE", "CONFIG_DEBUG_FS"):
        assert k not in required, k


def _config_from_fragment(path: Path) -> None:
    lines = [f"{k}={v}" if v != "n" else f"# {k} is not set" for k, v in fragment_options().items()]
    path.write_text("\n".join(lines) + "\n")


def test_check_config_names_what_did_not_survive(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    _config_from_fragment(cfg)
    assert check_config(cfg, FRAGMENT) == []
    text = cfg.read_text().replace("CONFIG_KVM_SW_PROTECTED_VM=y", "# CONFIG_KVM_SW_PROTECTED_VM is not set")
    text = text.replace("CONFIG_NR_CPUS=4", "CONFIG_NR_CPUS=64")
    cfg.write_text(text)
    assert check_config(cfg, FRAGMENT) == ["CONFIG_NR_CPUS=4 (got 64)", "CONFIG_KVM_SW_PROTECTED_VM=y (got n)"]


def _tree(tmp_path: Path, symbols: list[str]) -> Path:
    src = tmp_path / "src"
    (src / "arch" / "x86").mkdir(parents=True)
    (src / "Kconfig").write_text("".join(f"config {s}\n\tbool\n" for s in symbols))
    return src


def test_verdict_skips_what_the_tree_lacks_and_fails_on_required(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    _config_from_fragment(cfg)
    names = [k[len("CONFIG_"):] for k in fragment_options()]
    # a tree without PROC_SYSCTL (7.x): reported as absent, not fatal
    src = _tree(tmp_path, [n for n in names if n != "PROC_SYSCTL"])
    cfg.write_text(cfg.read_text().replace("CONFIG_PROC_SYSCTL=y", ""))
    v = judge_config(cfg, src)
    assert (v.fatal, v.absent, v.dropped) == ([], ["CONFIG_PROC_SYSCTL"], [])
    # an optional option whose dependencies fail: dropped, not fatal
    cfg.write_text(cfg.read_text().replace("CONFIG_MEMORY_FAILURE=y", "# CONFIG_MEMORY_FAILURE is not set"))
    v = judge_config(cfg, src)
    assert v.dropped == ["CONFIG_MEMORY_FAILURE=y (got n)"] and v.fatal == []
    # a required one: fatal, naming why it is needed
    cfg.write_text(cfg.read_text().replace("CONFIG_KVM_SW_PROTECTED_VM=y", "# CONFIG_KVM_SW_PROTECTED_VM is not set"))
    v = judge_config(cfg, src)
    assert len(v.fatal) == 1 and v.fatal[0].startswith("CONFIG_KVM_SW_PROTECTED_VM=y (got n; needed: the private tier")


def test_tree_symbols_reads_config_and_menuconfig(tmp_path: Path) -> None:
    src = tmp_path / "t"
    (src / "sub").mkdir(parents=True)
    (src / "Kconfig").write_text("config FOO\n\tbool\nmenuconfig BAR\n\tbool\n")
    (src / "sub" / "Kconfig.debug").write_text("  config BAZ\n")
    assert tree_symbols(src) == {"CONFIG_FOO", "CONFIG_BAR", "CONFIG_BAZ"}


def test_not_a_kernel_tree_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KernelBuildError, match="is not a kernel source tree"):
        build_kernel(tmp_path, quiet=True)


@pytest.mark.parametrize("bad", ["7", "seven", "7.3.4", "../x"])
def test_bad_version_is_a_clear_error(bad: str) -> None:
    with pytest.raises(SourceError, match="give MAJOR.MINOR"):
        kernel_source(bad)


def test_source_and_version_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KernelBuildError, match="not both"):
        build_kernel(tmp_path, version="7.3", quiet=True)
