"""Build a test kernel: tinyconfig (or a given .config) + our fragment, olddefconfig, check, bzImage.

Built out of tree (O=) so the source stays clean; artefacts cached by source identity
and fragment hash under ``<cache>/kernel``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ..cache import cache_dir
from .config import DEBUG_FRAGMENT, FRAGMENT, judge_config
from .progress import Progress
from .sources import SYSTEM_VERSION, KernelSource, SourceError, ensure_packages, kernel_source

BUILD_PACKAGES = ["build-essential", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "cpio", "xz-utils", "kmod",
                  "rsync"]


class KernelBuildError(RuntimeError):
    """The kernel could not be built; the message says which step and shows the tail of its output."""


def kernel_cache() -> Path:
    return cache_dir() / "kernel"


def _run(cmd: list[str], cwd: Path, what: str, progress: Progress | None = None, log: Path | None = None) -> None:
    tail: list[str] = []
    files = 0
    logf = open(log, "w") if log else None
    try:
        p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace")
        assert p.stdout is not None
        try:
            for line in p.stdout:
                if logf:
                    logf.write(line)
                tail.append(line.rstrip())
                del tail[:-40]
                if progress is not None and line.lstrip().startswith(("CC ", "AS ", "LD ", "AR ")):
                    files += 1
                    progress.update(f"{files} files, {line.split()[-1]}")
            rc = p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise
    finally:
        if logf:
            logf.close()
    if rc != 0:
        raise KernelBuildError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n" + "\n".join(tail[-25:]))


def _source_identity(src: Path, debian: KernelSource | None = None) -> str:
    """What makes two builds of a tree the same: the Debian package version, else git HEAD + diff,
    else the path and Makefile."""
    if debian is not None:
        return f"debian:{debian.package}:{debian.deb_version}"
    if (src / ".git").exists():
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        diff = subprocess.run(["git", "-C", str(src), "diff", "HEAD"], capture_output=True).stdout
        return f"git:{head}:{hashlib.sha256(diff).hexdigest()[:16]}"
    mk = (src / "Makefile").read_bytes() if (src / "Makefile").exists() else b""
    return f"path:{src.resolve()}:{hashlib.sha256(mk).hexdigest()[:16]}"


def image_key(identity: str, fragments: list[Path], base_config: Path | None = None) -> str:
    h = hashlib.sha256()
    h.update(identity.encode())
    for f in fragments:
        h.update(f.read_bytes())
    if base_config is not None:
        h.update(base_config.read_bytes())
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    h.update("".join(cc).encode())
    return h.hexdigest()[:16]


def version_link(version: str, debug: bool = False) -> Path:
    return kernel_cache() / f"bzImage-{version}{'-debug' if debug else ''}"


def default_image(version: str = SYSTEM_VERSION, debug: bool = False) -> Path | None:
    """The cached bzImage built with ``kvmffi kernel build --version VERSION [--debug]``, if there is one."""
    link = version_link(version, debug)
    return link.resolve() if link.exists() else None


def _link(link: Path, image: Path) -> None:
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(image)
    tmp.replace(link)


def image_tree(image: Path | str) -> Path | None:
    """The source tree a cached image was built from (its selftests come from there), if recorded."""
    f = Path(image).resolve().parent / "tree"
    try:
        tree = Path(f.read_text().strip())
    except OSError:
        return None
    return tree if tree.is_dir() else None


def headers_dir(image: Path) -> Path:
    """The exported uAPI headers (``make headers_install``) kept beside a Debian-version image."""
    return image.resolve().parent / "headers" / "include"


def _install_headers(src: Path, img_dir: Path, progress: Progress) -> None:
    """Export the tree's uAPI headers beside the image (for `kvmffi check-headers` and selftests)."""
    dest = img_dir / "headers"
    if (dest / "include" / "linux" / "kvm.h").exists():
        return
    out = kernel_cache() / "build" / ("hdr-" + hashlib.sha256(str(src).encode()).hexdigest()[:16])
    out.mkdir(parents=True, exist_ok=True)
    try:
        _run(["make", f"O={out}", "headers_install", f"INSTALL_HDR_PATH={dest}"], src, "make headers_install")
    except KernelBuildError as e:
        progress.note(f"uAPI headers not exported (the image is fine): {str(e).splitlines()[0]}")


def build_kernel(source: Path | None = None, *, version: str | None = None, base_config: Path | None = None,
                 jobs: int | None = None, quiet: bool = False, debug: bool = False) -> Path:
    """Build (or reuse) a bzImage of ``source`` (a tree) or of Debian's linux-source-``version``
    (default: 6.12); returns its path. ``debug`` adds the debug fragment (KASAN, lockdep, ...)."""
    fragments = [FRAGMENT] + ([DEBUG_FRAGMENT] if debug else [])
    progress = Progress("kvmffi kernel", quiet=quiet)
    if source is not None and version is not None:
        raise KernelBuildError("give a source tree or a version, not both")
    try:
        ensure_packages(BUILD_PACKAGES, progress)
        debian = None if source is not None else kernel_source(version or SYSTEM_VERSION, progress)
    except SourceError as e:
        raise KernelBuildError(str(e)) from None
    src = (source if debian is None else debian.tree).resolve()  # type: ignore[union-attr]
    if not (src / "Makefile").exists() or not (src / "arch" / "x86").is_dir():
        raise KernelBuildError(f"{src} is not a kernel source tree (no Makefile or arch/x86)")
    identity = _source_identity(src, debian)
    key = image_key(identity, fragments, base_config)
    img_dir = kernel_cache() / "images" / key
    image = img_dir / "bzImage"
    if image.exists():
        progress.note(f"cached kernel {image} ({identity})")
        if not (img_dir / "tree").exists():
            (img_dir / "tree").write_text(str(src) + "\n")
        if debian is not None:
            _install_headers(src, img_dir, progress)
            _link(version_link(debian.version, debug), image)
        return image
    # one build directory per tree and configuration kind: switching is then incremental
    out = kernel_cache() / "build" / (hashlib.sha256(str(src).encode()).hexdigest()[:16] + ("-debug" if debug else ""))
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    if (src / ".config").exists() and source is not None and not (out / ".config").exists():
        # an in-tree configuration makes O= builds refuse the tree
        raise KernelBuildError(f"{src} has an in-tree .config (or was built in tree): run `make mrproper` there, "
                               "or pass the configuration with --config FILE")
    progress.note(f"configuring {debian.label if debian else src} -> {out} "
                  f"({'base ' + str(base_config) if base_config else 'tinyconfig'} + {' + '.join(f.name for f in fragments)})")
    if base_config is not None:
        shutil.copy(base_config, out / ".config")
        _run(["make", f"O={out}", "olddefconfig"], src, "make olddefconfig")
    else:
        _run(["make", f"O={out}", "tinyconfig"], src, "make tinyconfig")
    _run(["scripts/kconfig/merge_config.sh", "-m", "-O", str(out), str(out / ".config"), *map(str, fragments)], src,
         "merging the config fragments")
    _run(["make", f"O={out}", "olddefconfig"], src, "make olddefconfig")
    verdict = judge_config(out / ".config", src, fragments)
    if verdict.absent:
        progress.note("left out, this tree does not define them: " + ", ".join(verdict.absent))
    if verdict.dropped:
        progress.note("left out, their dependencies are not met in this tree: " + ", ".join(verdict.dropped))
    if verdict.fatal:
        raise KernelBuildError("options the test tiers cannot run without did not survive olddefconfig: "
                               + "; ".join(verdict.fatal))
    progress.note(f"make -j{jobs} bzImage (a cold build takes 5-12 minutes on 2 cores{', more with --debug' if debug else ''})")
    _run(["make", f"O={out}", f"-j{jobs}", "bzImage"], src, "make bzImage", progress, log=out / "kvmffi-build.log")
    built = out / "arch" / "x86" / "boot" / "bzImage"
    img_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(built, img_dir / "bzImage.tmp")
    shutil.copy(out / ".config", img_dir / "config")
    (img_dir / "source").write_text(identity + "\n")
    (img_dir / "tree").write_text(str(src) + "\n")  # where its selftests come from
    (img_dir / "bzImage.tmp").replace(image)
    if debian is not None:
        _install_headers(src, img_dir, progress)
        _link(version_link(debian.version, debug), image)
    progress.done(f"built {image}")
    return image
