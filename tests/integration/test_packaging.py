"""The sdist and the wheel carry the guest programs' sources (the checkout's guests/, installed as
kvmffi/guests), and an installed copy builds its guests from them. Built with this environment's
setuptools, without build isolation or an index: no network, no fresh venv."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUESTS = ROOT / "guests"
SETUPTOOLS_MIN = 77  # pyproject.toml's build-system.requires
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis")


def _guest_sources() -> list[str]:
    return sorted(str(p.relative_to(GUESTS)) for p in GUESTS.rglob("*") if p.suffix in (".c", ".h", ".S", ".lds"))


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel): the sdist built from a copy of the checkout, the wheel from the sdist, as
    `python -m build` does."""
    if not (ROOT / "pyproject.toml").exists() or not GUESTS.is_dir():
        pytest.skip(f"{ROOT} is not a kvmffi checkout (no pyproject.toml or guests/)")
    have = version("setuptools")
    if int(have.split(".")[0]) < SETUPTOOLS_MIN:
        pytest.skip(f"setuptools {have} cannot build kvmffi (needs >= {SETUPTOOLS_MIN}): pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("packaging")
    src, out = tmp / "src", tmp / "dist"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCES)  # the build writes kvmffi.egg-info/ and build/ beside the sources
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", build_sdist, str(out)], cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building the sdist failed:\n{r.stderr[-3000:]}"
    sdist = out / r.stdout.strip().splitlines()[-1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                        "-w", str(out), str(sdist)], cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building the wheel from {sdist.name} failed:\n{r.stderr[-3000:]}"
    wheels = list(out.glob("kvmffi-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {[w.name for w in wheels]}"
    return sdist, wheels[0]


def test_guest_sources_are_in_the_sdist(dists: tuple[Path, Path]) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = [s for s in _guest_sources() if f"guests/{s}" not in names]
    assert not missing, f"the sdist {sdist.name} should carry every guest source; missing: {missing}"


def test_guest_sources_are_in_the_wheel_under_the_package(dists: tuple[Path, Path]) -> None:
    _, wheel = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kvmffi/guests/guest.lds", "kvmffi/guests/include/kvmffi_guest.h"} <= names
    missing = [s for s in _guest_sources() if f"kvmffi/guests/{s}" not in names]
    assert not missing, f"the wheel {wheel.name} should carry every guest source in kvmffi/guests; missing: {missing}"
    assert not [n for n in names if n.startswith("guests/")], "the guests belong inside the package, not at the top level"


def test_the_wheel_has_every_module_of_the_package(dists: tuple[Path, Path]) -> None:
    """setup.py finds the packages under kvmffi/ and adds kvmffi.guests (mapped from guests/): none is
    left out."""
    _, wheel = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "kvmffi"
    expected = [str(p.relative_to(ROOT)) for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    expected += ["kvmffi/py.typed", *(str(p.relative_to(ROOT)) for p in (package / "testkernel").glob("*.config"))]
    missing = sorted(e for e in expected if e not in names)
    assert not missing, f"the wheel {wheel.name} should have every file of the package; missing: {missing}"


def test_an_installed_copy_builds_guests_from_its_own_sources(dists: tuple[Path, Path], tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build guest programs: apt-get install gcc")
    _, wheel = dists
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from kvmffi.guest import build, elf; p = build.build('sync_loop'); "
            "print(build.guests_dir()); print(elf.load(p).entry)")
    env = {k: v for k, v in os.environ.items() if k != "KVMFFI_GUESTS"}
    env.update(PYTHONPATH=str(site), KVMFFI_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building a guest from the unpacked wheel failed:\n{r.stderr[-3000:]}"
    where, entry = r.stdout.split()
    assert Path(where) == (site / "kvmffi" / "guests").resolve(), f"the installed copy should use its own guests, not {where}"
    assert int(entry) == 0x100000
