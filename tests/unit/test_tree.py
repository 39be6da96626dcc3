"""fixcheck's tree states: a change put in for the block and taken out after, the tree left clean."""

import subprocess
from pathlib import Path

import pytest

from kvmffi.testkernel.tree import Change, TreeError, changed, require_clean_git_tree


def git(d: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(d), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / "kvm.c").write_text("check = 0;\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "bug")
    (tmp_path / "kvm.c").write_text("check = 1;\n")
    git(tmp_path, "commit", "-q", "-am", "fix")
    return tmp_path


def test_a_fix_is_reverted_for_the_block_and_restored(repo: Path) -> None:
    require_clean_git_tree(repo)
    with changed(repo, Change(fix="HEAD")):
        assert (repo / "kvm.c").read_text() == "check = 0;\n"
    assert (repo / "kvm.c").read_text() == "check = 1;\n"
    require_clean_git_tree(repo)


def test_a_patch_is_applied_and_taken_out_even_on_an_exception(repo: Path, tmp_path_factory) -> None:
    patch = tmp_path_factory.mktemp("p") / "bug.patch"
    patch.write_text("bug\n--- a/kvm.c\n+++ b/kvm.c\n@@ -1 +1 @@\n-check = 1;\n+check = 2;\n")
    with pytest.raises(KeyboardInterrupt), changed(repo, Change(patch=patch)):
        assert (repo / "kvm.c").read_text() == "check = 2;\n"
        raise KeyboardInterrupt
    require_clean_git_tree(repo)


def test_a_dirty_tree_or_a_patch_that_does_not_apply_is_refused(repo: Path, tmp_path_factory) -> None:
    patch = tmp_path_factory.mktemp("p") / "other.patch"
    patch.write_text("--- a/kvm.c\n+++ b/kvm.c\n@@ -1 +1 @@\n-nothing = 1;\n+nothing = 2;\n")
    with pytest.raises(TreeError, match="git apply --check"), changed(repo, Change(patch=patch)):
        pass
    (repo / "kvm.c").write_text("edited\n")
    with pytest.raises(TreeError, match="uncommitted changes"):
        require_clean_git_tree(repo)
