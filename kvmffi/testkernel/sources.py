"""Kernel sources by version, from Debian's linux-source-X.Y packages.

6.12 is Debian 12's own package (installed with the system's apt). Newer versions live in
Debian's newer suites (trixie-backports, sid): their .deb is fetched with ``apt-get download``
under a private apt state in the kvmffi cache (its own sources list, lists and archive
directories), so the system's apt configuration is never touched. Each tarball is unpacked
once into the cache.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cache import cache_dir
from .progress import Progress

SYSTEM_VERSION = "6.12"          # the linux-source package of Debian 12's own suites
NEWER_SUITES = ("trixie-backports", "sid")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
VERSION_RE = re.compile(r"^\d+\.\d+$")


class SourceError(RuntimeError):
    """A kernel source could not be had; the message says why and what to do."""


@dataclass(frozen=True)
class KernelSource:
    version: str        # "7.3"
    package: str        # "linux-source-7.3"
    deb_version: str    # "7.3.4-1~bpo13+1", or "" when unknown
    tree: Path          # the unpacked source tree

    @property
    def label(self) -> str:
        return f"{self.package} {self.deb_version}".strip()


def apt_env() -> dict[str, str]:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=apt_env(), cwd=cwd)
    if r.returncode != 0:
        raise SourceError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout


def ensure_packages(packages: list[str], progress: Progress) -> None:
    """Install Debian packages that are missing, with the system's apt (needs root)."""
    missing = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if "install ok installed" not in r.stdout:
            missing.append(pkg)
    if not missing:
        return
    if os.geteuid() != 0:
        raise SourceError(f"missing Debian packages {' '.join(missing)}: run as root, or "
                          f"`sudo apt-get install {' '.join(missing)}`")
    progress.note(f"installing {' '.join(missing)}")
    _run(["apt-get", "update", "-qq"], "apt-get update")
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], "apt-get install")


def debian_mirror() -> str:
    """The Debian archive the system's apt already uses ($KVMFFI_DEBIAN_MIRROR overrides it)."""
    env = os.environ.get("KVMFFI_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.suffix in (".list", ".sources") or f.name == "sources.list":
            try:
                texts.append(f.read_text())
            except OSError:
                continue
    for text in texts:
        # one-line style: deb [opts] URI suite components
        for m in re.finditer(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            uri, suite = m.group(1), m.group(2)
            if "security" not in suite and "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
        # deb822 style: URIs: ... / Suites: ...
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "security" not in suites.group(1) and uris.group(1).rstrip("/").endswith("/debian"):
                return uris.group(1).rstrip("/")
    raise SourceError("no Debian archive found in /etc/apt/sources.list*: set KVMFFI_DEBIAN_MIRROR to a Debian "
                      "mirror's URL (the directory that holds dists/ and pool/)")


class PrivateApt:
    """apt-get/apt-cache with their own sources list, lists and archives under the cache."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir() / "apt"

    def options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::Etc::SourceList={r / 'sources.list'}", "-o", f"Dir::Etc::SourceParts={r / 'sources.list.d'}",
                "-o", f"Dir::State::Lists={r / 'lists'}", "-o", f"Dir::Cache={r / 'cache'}",
                "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
                "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none",
                "-o", "APT::Get::List-Cleanup=0"]

    def prepare(self) -> None:
        r = self.root
        for d in (r / "sources.list.d", r / "lists" / "partial", r / "cache" / "archives" / "partial"):
            d.mkdir(parents=True, exist_ok=True)
        signed = f"[signed-by={KEYRING}] " if KEYRING.exists() else ""
        mirror = debian_mirror()
        lines = [f"deb {signed}{mirror} {suite} main" for suite in NEWER_SUITES]
        (r / "sources.list").write_text("# kvmffi's private apt state: kernel sources only\n" + "\n".join(lines) + "\n")

    def update(self, progress: Progress) -> None:
        self.prepare()
        progress.note(f"apt-get update ({', '.join(NEWER_SUITES)}) in a private apt state under {self.root}")
        _run(["apt-get", *self.options(), "update", "-qq"], "apt-get update (private state)")

    def fresh(self, max_age: float = 24 * 3600) -> bool:
        import time
        stamp = self.root / "lists"
        files = list(stamp.glob("*_Packages*")) if stamp.exists() else []
        return bool(files) and time.time() - min(f.stat().st_mtime for f in files) < max_age

    def source_versions(self) -> dict[str, str]:
        """{"7.3": "7.3.4-1~bpo13+1", ...}: the newest Debian version of each linux-source-X.Y."""
        out = _run(["apt-cache", *self.options(), "search", "--names-only", r"^linux-source-[0-9]+\.[0-9]+$"],
                   "apt-cache search")
        found: dict[str, str] = {}
        for line in out.splitlines():
            m = re.match(r"^linux-source-(\d+\.\d+)\s", line)
            if m:
                found[m.group(1)] = self.candidate(f"linux-source-{m.group(1)}")
        return {k: v for k, v in found.items() if v}

    def candidate(self, package: str) -> str:
        out = _run(["apt-cache", *self.options(), "policy", package], "apt-cache policy")
        m = re.search(r"Candidate:\s*(\S+)", out)
        return m.group(1) if m and m.group(1) != "(none)" else ""

    def download(self, package: str, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        _run(["apt-get", *self.options(), "download", "-qq", package], f"apt-get download {package}", cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise SourceError(f"apt-get download {package} left no .deb in {dest}")
        return debs[-1]


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def _unpack(tarball: Path, dest: Path, top: str, progress: Progress) -> Path:
    done = dest / ".kvmffi-unpacked"
    if done.exists():
        return dest / top
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    progress.note(f"unpacking {tarball.name} into {dest} (about a minute)")
    try:
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(dest)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, KeyboardInterrupt):
        shutil.rmtree(dest, ignore_errors=True)
        raise
    done.touch()
    return dest / top


def _system_source(progress: Progress) -> KernelSource:
    package = f"linux-source-{SYSTEM_VERSION}"
    tarball = Path(f"/usr/src/{package}.tar.xz")
    if not tarball.exists():
        ensure_packages([package], progress)
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    deb_version = r.stdout.strip()
    st = tarball.stat()
    dest = cache_dir() / "kernel" / "src" / f"{package}-{st.st_size}-{int(st.st_mtime)}"
    return KernelSource(SYSTEM_VERSION, package, deb_version, _unpack(tarball, dest, package, progress))


def _newer_source(version: str, progress: Progress) -> KernelSource:
    apt = PrivateApt()
    root = cache_dir() / "kernel" / "src"
    # an unpacked tree of this version is used as it is (no network needed again)
    if version != "newest":
        have = sorted(root.glob(f"linux-source-{version}_*/.kvmffi-unpacked"))
        if have:
            d = have[-1].parent
            return KernelSource(version, f"linux-source-{version}", d.name.split("_", 1)[1], d / f"linux-source-{version}")
    if not apt.fresh():
        apt.update(progress)
    versions = apt.source_versions()
    if not versions:
        raise SourceError(f"no linux-source-X.Y package in {', '.join(NEWER_SUITES)}")
    if version == "newest":
        version = max(versions, key=version_key)
        progress.note(f"newest kernel source in Debian: linux-source-{version} {versions[version]}")
        return _newer_source(version, progress)
    if version not in versions:
        raise SourceError(f"linux-source-{version} is not in Debian's {', '.join(NEWER_SUITES)}; available: "
                          + ", ".join(sorted(versions, key=version_key)) + f" (and {SYSTEM_VERSION} from Debian 12)")
    package, deb_version = f"linux-source-{version}", versions[version]
    dest = root / f"{package}_{deb_version}"
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        progress.note(f"downloading {package} {deb_version} (about 170 MB)")
        deb = apt.download(package, Path(tmp))
        progress.note(f"extracting {deb.name}")
        _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "x")], "dpkg-deb -x")
        deb.unlink()
        tarballs = sorted((Path(tmp) / "x" / "usr" / "src").glob(f"{package}.tar.*"))
        if not tarballs:
            raise SourceError(f"{package} holds no usr/src/{package}.tar.*")
        tree = _unpack(tarballs[0], dest, package, progress)
    return KernelSource(version, package, deb_version, tree)


def kernel_source(version: str = SYSTEM_VERSION, progress: Progress | None = None) -> KernelSource:
    """The unpacked source of Debian's linux-source-VERSION ("6.12", "7.3", ... or "newest")."""
    progress = progress or Progress("kvmffi kernel", quiet=True)
    if version != "newest" and not VERSION_RE.match(version):
        raise SourceError(f"kernel version {version!r}: give MAJOR.MINOR (6.12, 7.3) or 'newest'")
    if version == SYSTEM_VERSION:
        return _system_source(progress)
    return _newer_source(version, progress)
