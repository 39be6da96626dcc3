"""Build a test kernel: tinyconfig (or a given .config) + our fragment, olddefconfig, check, bzImage.

Built out of tree (O=) so the source stays clean; artefacts cached by source identity
and fragment hash under ``<cache>/kernel``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..guest.build import cache_dir
from .progress import Progress

FRAGMENT = Path(__file__).with_name("fragment.config")
DEBIAN_PACKAGE = "linux-source-6.12"
DEBIAN_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
BUILD_PACKAGES = ["build-essential", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "cpio", "xz-utils", "kmod"]


class KernelBuildError(RuntimeError):
    """The kernel could not be built; the message says which step and shows the tail of its output."""


def kernel_cache() -> Path:
    return cache_dir() / "kernel"


def fragment_options(fragment: Path = FRAGMENT) -> dict[str, str]:
    """CONFIG_X -> value ('y', '4', or 'n' for '# CONFIG_X is not set')."""
    opts = {}
    for line in fragment.read_text().splitlines():
        line = line.strip()
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            opts[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            opts[m.group(1)] = "n"
    return opts


def check_config(config: Path, fragment: Path = FRAGMENT) -> list[str]:
    """Options of the fragment that did not survive olddefconfig, as 'CONFIG_X=want (got ...)'."""
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            have[m.group(1)] = m.group(2)
        else:
            m = re.match(r"^# (CONFIG_\w+) is not set$", line)
            if m:
                have[m.group(1)] = "n"
    missing = []
    for k, want in fragment_options(fragment).items():
        got = have.get(k, "n")
        if got != want:
            missing.append(f"{k}={want} (got {got})")
    return missing


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


def _ensure_packages(progress: Progress, with_source: bool) -> None:
    want = BUILD_PACKAGES + ([DEBIAN_PACKAGE] if with_source else [])
    missing = []
    for pkg in want:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if not missing:
        return
    if os.geteuid() != 0:
        raise KernelBuildError(f"missing Debian packages {' '.join(missing)}: run as root, or "
                               f"`sudo apt-get install {' '.join(missing)}`")
    progress.note(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise KernelBuildError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")


def _source_identity(src: Path) -> str:
    """What makes two builds of a tree the same: git HEAD + diff, else the path and Makefile."""
    if (src / ".git").exists():
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        diff = subprocess.run(["git", "-C", str(src), "diff", "HEAD"], capture_output=True).stdout
        return f"git:{head}:{hashlib.sha256(diff).hexdigest()[:16]}"
    mk = (src / "Makefile").read_bytes() if (src / "Makefile").exists() else b""
    return f"path:{src.resolve()}:{hashlib.sha256(mk).hexdigest()[:16]}"


def _default_source(progress: Progress) -> Path:
    """Debian's linux-source-6.12, unpacked once into the cache."""
    if not DEBIAN_TARBALL.exists():
        _ensure_packages(progress, with_source=True)
    st = DEBIAN_TARBALL.stat()
    dest = kernel_cache() / "src" / f"linux-source-6.12-{st.st_size}-{int(st.st_mtime)}"
    done = dest / ".kvmffi-unpacked"
    if done.exists():
        return dest / "linux-source-6.12"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    progress.note(f"unpacking {DEBIAN_TARBALL} into {dest}")
    with tarfile.open(DEBIAN_TARBALL) as tf:
        tf.extractall(dest, filter="tar" if hasattr(tarfile, "data_filter") else None)  # type: ignore[call-arg]
    done.touch()
    return dest / "linux-source-6.12"


def image_key(src: Path, fragment: Path = FRAGMENT, base_config: Path | None = None) -> str:
    h = hashlib.sha256()
    h.update(_source_identity(src).encode())
    h.update(fragment.read_bytes())
    if base_config is not None:
        h.update(base_config.read_bytes())
    cc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    h.update("".join(cc).encode())
    return h.hexdigest()[:16]


def default_image() -> Path | None:
    """The cached bzImage of the default source, if one was built."""
    link = kernel_cache() / "default-bzImage"
    return link.resolve() if link.exists() else None


def build_kernel(source: Path | None = None, *, base_config: Path | None = None, jobs: int | None = None,
                 quiet: bool = False, fragment: Path = FRAGMENT) -> Path:
    """Build (or reuse) a bzImage; returns its path."""
    progress = Progress("kvmffi kernel", quiet=quiet)
    _ensure_packages(progress, with_source=False)
    src = (source or _default_source(progress)).resolve()
    if not (src / "Makefile").exists() or not (src / "arch" / "x86").is_dir():
        raise KernelBuildError(f"{src} is not a kernel source tree (no Makefile or arch/x86)")
    key = image_key(src, fragment, base_config)
    img_dir = kernel_cache() / "images" / key
    image = img_dir / "bzImage"
    if image.exists():
        progress.note(f"cached kernel {image} (source {_source_identity(src)})")
        return image
    out = kernel_cache() / "build" / hashlib.sha256(str(src).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    if (src / ".config").exists() and source is not None and not (out / ".config").exists():
        # an in-tree configuration makes O= builds refuse the tree
        raise KernelBuildError(f"{src} has an in-tree .config (or was built in tree): run `make mrproper` there, "
                               "or pass the configuration with --config FILE")
    progress.note(f"configuring {src} -> {out} ({'base ' + str(base_config) if base_config else 'tinyconfig'} + {fragment.name})")
    if base_config is not None:
        shutil.copy(base_config, out / ".config")
        _run(["make", f"O={out}", "olddefconfig"], src, "make olddefconfig")
    else:
        _run(["make", f"O={out}", "tinyconfig"], src, "make tinyconfig")
    _run(["scripts/kconfig/merge_config.sh", "-m", "-O", str(out), str(out / ".config"), str(fragment)], src,
         "merging the config fragment")
    _run(["make", f"O={out}", "olddefconfig"], src, "make olddefconfig")
    missing = check_config(out / ".config", fragment)
    if missing:
        raise KernelBuildError("these options of the fragment did not survive olddefconfig (a dependency is "
                               "missing in this tree or base config): " + ", ".join(missing))
    progress.note(f"make -j{jobs} bzImage (a cold build takes 4-8 minutes on 2 cores)")
    _run(["make", f"O={out}", f"-j{jobs}", "bzImage"], src, "make bzImage", progress, log=out / "kvmffi-build.log")
    built = out / "arch" / "x86" / "boot" / "bzImage"
    img_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(built, image)
    shutil.copy(out / ".config", img_dir / "config")
    (img_dir / "source").write_text(_source_identity(src) + "\n")
    if source is None:
        link = kernel_cache() / "default-bzImage"
        tmp = link.with_suffix(".tmp")
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(image)
        tmp.replace(link)
    progress.done(f"built {image}")
    return image
