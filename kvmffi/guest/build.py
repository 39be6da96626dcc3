"""Build guest programs with the system gcc, cached by a hash of sources, flags and compiler; each
ELF gets its manifest (see :mod:`kvmffi.guest.elf`) written beside it."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..cache import cache_dir
from .elf import manifest_path, write_manifest

CFLAGS = ["-ffreestanding", "-fno-pic", "-fno-pie", "-static", "-nostdlib", "-no-pie", "-mno-red-zone",
          "-mgeneral-regs-only", "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none",
          "-O2", "-g", "-fno-eliminate-unused-debug-types",  # the host reads enumerators from the debug info
          "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror=implicit-function-declaration"]


class GuestBuildError(RuntimeError):
    """gcc failed; the message carries the compiler's output and the file."""


def guests_dir() -> Path:
    """Where the guest sources live: $KVMFFI_GUESTS, else the copy installed with the package
    (kvmffi/guests), else the checkout's guests/ (an editable install)."""
    return _guests_dir(os.environ.get("KVMFFI_GUESTS"))


@functools.lru_cache(maxsize=8)
def _guests_dir(env: str | None) -> Path:
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]
    candidates = [package / "guests", package.parent / "guests"]
    for d in candidates:
        if (d / "include" / "kvmffi_guest.h").exists():
            return d
    raise FileNotFoundError(f"guest sources not found in {' or '.join(map(str, candidates))}: reinstall kvmffi, or set "
                            "KVMFFI_GUESTS to a directory laid out like guests/ (include/, lib/, guest.lds, PROGRAM.c)")


_cc_version: dict[str, str] = {}


def _compiler_id(cc: str) -> str:
    if cc not in _cc_version:
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise GuestBuildError(f"cannot run the guest compiler {cc!r}: {e}; install gcc (apt-get install gcc)") from None
        _cc_version[cc] = out.splitlines()[0] if out else cc
    return _cc_version[cc]


def sources_for(program: str, root: Path | None = None) -> list[Path]:
    root = root or guests_dir()
    src = root / program if program.endswith(".c") else root / f"{program}.c"
    if not src.exists():
        avail = sorted(p.stem for p in root.glob("*.c"))
        raise FileNotFoundError(f"no guest program {src}; available: {', '.join(avail)}")
    return [root / "lib" / "entry.S", root / "lib" / "ucall.c", src]


_memo: dict[tuple[object, ...], Path] = {}


def build(program: str, *, cc: str | None = None, extra_cflags: list[str] | None = None) -> Path:
    """Compile ``<program>.c`` of the guest sources with the guest library; returns the cached ELF's path.

    A process builds (or finds in the cache) each program once, as Python imports a module once:
    edits to the guest sources take effect in the next process, or after :func:`forget`.
    """
    root = guests_dir()
    cc = cc or os.environ.get("KVMFFI_GUEST_CC", "gcc")
    flags = CFLAGS + list(extra_cflags or [])
    memo_key = (program, root, tuple(flags), cc, cache_dir())
    hit = _memo.get(memo_key)
    if hit is not None and os.path.exists(hit):  # not removed since (a cleaned cache)
        return hit
    srcs = sources_for(program, root)
    lds = root / "guest.lds"
    headers = sorted((root / "include").glob("*.h"))
    out = _build(program, root, cc, srcs, lds, headers, flags)
    _memo[memo_key] = out
    return out


def forget() -> None:
    """Make the next :func:`build` of each program read its sources again (after editing them in this process)."""
    _memo.clear()


def _build(program: str, root: Path, cc: str, srcs: list[Path], lds: Path, headers: list[Path],
           flags: list[str]) -> Path:
    h = hashlib.sha256()
    for p in [*srcs, lds, *headers]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(flags).encode())
    cc_id = _compiler_id(cc)
    h.update(cc_id.encode())
    name = Path(program).stem
    out = cache_dir() / "guests" / f"{name}-{h.hexdigest()[:16]}.elf"
    if out.exists():
        if not manifest_path(out).exists():
            try:
                write_manifest(out)
            except OSError:
                pass  # a read-only cache (the test kernel's): the ELF is parsed where it is loaded
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        cmd = [cc, *flags, f"-I{root / 'include'}", "-Wl,-T," + str(lds), "-Wl,--build-id=none",
               "-o", str(tmp_out), *map(str, srcs)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise GuestBuildError(f"building guest program {srcs[-1]} failed ({cc_id}):\n{r.stderr.strip()}")
        shutil.move(str(tmp_out), out)
    write_manifest(out)
    return out


def build_all() -> list[Path]:
    """Build every guest program (e.g. before booting a test kernel whose root is read-only)."""
    return [build(p.stem) for p in sorted(guests_dir().glob("*.c"))]
