"""A kernel git tree that a change is put into and taken out of again: the two states fixcheck builds.

A change is either a patch file (applied with ``git apply``, taken out with ``git apply -R``) or
the revert of a fix commit (its diff applied in reverse). The tree must be clean before; it is
left as it was found afterwards, Ctrl-C included. ``git_copy(version)`` makes (once, then reuses)
a git repository of Debian's linux-source-VERSION in the cache, one commit, for changes on a
Debian source.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_dir
from .progress import Progress
from .sources import SourceError, kernel_source

GIT_IDENTITY = ["-c", "user.name=kvmffi", "-c", "user.email=kvmffi@localhost"]


class TreeError(RuntimeError):
    """The tree is not a git tree, is not clean, or the change does not apply; the message says which."""


def _git(tree: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(tree), *GIT_IDENTITY, *args], input=stdin, capture_output=True)


def _check(r: subprocess.CompletedProcess[bytes], what: str) -> bytes:
    if r.returncode != 0:
        raise TreeError(f"{what} failed (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()[-1500:]}")
    return r.stdout


@dataclass(frozen=True)
class Change:
    """What turns the tree into its buggy state: a patch, or the reverse of a fix commit."""
    patch: Path | None = None
    fix: str | None = None

    def describe(self) -> str:
        return f"patch {self.patch}" if self.patch else f"revert of {self.fix}"

    def diff(self, tree: Path) -> bytes:
        """The change as a forward diff (applying it makes the buggy tree)."""
        if self.patch is not None:
            try:
                return self.patch.read_bytes()
            except OSError as e:
                raise TreeError(f"--bug {self.patch}: {e.strerror}") from None
        assert self.fix is not None
        _check(_git(tree, "rev-parse", "--verify", "--quiet", f"{self.fix}^{{commit}}"), f"finding commit {self.fix}")
        _check(_git(tree, "merge-base", "--is-ancestor", self.fix, "HEAD"),
               f"checking that {self.fix} is in HEAD's history (the tree must contain the fix)")
        # the fix undone: the diff from the fixed state back to the one before it
        return _check(_git(tree, "diff", "--binary", self.fix, f"{self.fix}^"), f"git diff {self.fix} {self.fix}^")


def require_clean_git_tree(tree: Path) -> None:
    if not (tree / ".git").exists():
        raise TreeError(f"{tree} is not a git tree: fixcheck needs one (`git init && git add -A -f && git commit`), "
                        "or use --version V for a git copy of Debian's source")
    status = _check(_git(tree, "status", "--porcelain", "--untracked-files=no"), "git status")
    if status.strip():
        files = ", ".join(line[3:] for line in status.decode(errors="replace").splitlines()[:5])
        raise TreeError(f"{tree} has uncommitted changes ({files}): commit or stash them first")


@contextmanager
def tree_lock(tree: Path) -> Iterator[None]:
    """One fixcheck at a time per tree (the work tree and its build directory are shared)."""
    lock = cache_dir() / "locks"
    lock.mkdir(parents=True, exist_ok=True)
    name = str(tree.resolve()).strip("/").replace("/", "_")
    with open(lock / f"{name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TreeError(f"another kvmffi fixcheck is using {tree}; wait for it to finish") from None
        yield


@contextmanager
def changed(tree: Path, change: Change) -> Iterator[None]:
    """The tree with ``change`` applied inside the block; restored after it, whatever happens.
    Raises TreeError if the change does not apply (the tree is then untouched)."""
    diff = change.diff(tree)
    with tempfile.NamedTemporaryFile(suffix=".patch") as f:
        f.write(diff)
        f.flush()
        _check(_git(tree, "apply", "--check", f.name), f"applying the {change.describe()} (git apply --check)")
        _check(_git(tree, "apply", f.name), f"applying the {change.describe()}")
        try:
            yield
        finally:
            r = _git(tree, "apply", "-R", f.name)
            if r.returncode != 0:  # last resort: the tree was clean before
                _git(tree, "checkout", "--", ".")


def git_copy(version: str, progress: Progress | None = None) -> Path:
    """A git repository of Debian's linux-source-``version`` under the cache (made once, reused):
    the unpacked source as one commit, for changes that are put in and taken out again."""
    progress = progress or Progress("kvmffi fixcheck", quiet=True)
    try:
        src = kernel_source(version, progress)
    except SourceError as e:
        raise TreeError(str(e)) from None
    dest = cache_dir() / "kernel" / "git" / f"{src.package}_{src.deb_version}"
    if (dest / ".git").exists():
        return dest
    progress.note(f"making a git copy of {src.label} at {dest} (once)")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["cp", "-a", str(src.tree), str(tmp)], check=True, capture_output=True)
        _check(_git(tmp, "init", "-q"), "git init")
        _check(_git(tmp, "add", "-A", "-f"), "git add")  # Debian's .gitignore ignores the top level
        _check(_git(tmp, "commit", "-q", "-m", src.label), "git commit")
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
