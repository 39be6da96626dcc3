"""Guest build and ELF loading (needs gcc, not /dev/kvm)."""

import os
import shutil
from pathlib import Path

import pytest

from kvmffi.guest import build, elf
from kvmffi.guest.x86 import PAGE, PageTables


@pytest.fixture
def guest_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src = build.guests_dir()
    dst = tmp_path / "guests"
    shutil.copytree(src, dst)
    monkeypatch.setenv("KVMFFI_GUESTS", str(dst))
    monkeypatch.setenv("KVMFFI_CACHE", str(tmp_path / "cache"))
    return dst


def test_build_is_cached_and_rebuilt_on_change_after_forget(guest_tree: Path) -> None:
    a = build.build("sync_loop")
    assert build.build("sync_loop") == a
    p = guest_tree / "sync_loop.c"
    p.write_text(p.read_text() + "\n/* changed */\n")
    assert build.build("sync_loop") == a  # once per process, as an import
    build.forget()
    b = build.build("sync_loop")
    assert b != a and b.exists()


def test_header_change_rebuilds(guest_tree: Path) -> None:
    a = build.build("sync_loop")
    h = guest_tree / "include" / "kvmffi_guest.h"
    h.write_text(h.read_text() + "\n")
    build.forget()
    assert build.build("sync_loop") != a


def test_compile_error_shows_compiler_message_and_file(guest_tree: Path) -> None:
    (guest_tree / "broken.c").write_text('#include "kvmffi_guest.h"\nvoid guest_main(void) { undefined_fn(); }\n')
    with pytest.raises(build.GuestBuildError) as ei:
        build.build("broken")
    msg = str(ei.value)
    assert "broken.c" in msg and "undefined_fn" in msg


def test_unknown_program_lists_available(guest_tree: Path) -> None:
    with pytest.raises(FileNotFoundError, match="available: .*sync_loop"):
        build.build("nosuch")


def test_loader_finds_segments_entry_and_symbols(guest_tree: Path) -> None:
    img = elf.load(build.build("sync_loop"))
    assert img.entry == 0x100000
    assert img.segments[0].gpa == 0x100000 and img.segments[0].executable
    it = img.symbol("iterations")
    assert it.size == 8
    with pytest.raises(KeyError, match="no symbol 'nope'"):
        img.symbol("nope")
    gm = img.symbol("guest_main")
    assert (img.source_line(gm.addr) or "").startswith("sync_loop.c:")


def test_manifest_says_what_parsing_the_elf_says(guest_tree: Path) -> None:
    path = build.build("sync_loop")
    assert elf.manifest_path(path).exists()
    parsed = elf.load(path)
    elf._cache.clear()
    from_manifest = elf.load_cached(path)
    assert from_manifest._types is not None  # taken from the manifest, no DWARF read
    assert from_manifest.entry == parsed.entry and from_manifest.segments == parsed.segments
    assert from_manifest.symbols == parsed.symbols
    assert from_manifest.constants == parsed.constants and from_manifest.constants["UCALL_SYNC"] >= 0
    assert from_manifest.struct("ucall") == parsed.struct("ucall")
    assert from_manifest.source_line(parsed.symbol("guest_main").addr) == parsed.source_line(parsed.symbol("guest_main").addr)


def test_a_stale_manifest_is_ignored(guest_tree: Path) -> None:
    path = build.build("sync_loop")
    m = elf.manifest_path(path)
    m.write_text(m.read_text().replace('"entry": ', '"entry": 1'))  # a manifest that lies...
    os.utime(path, ns=(1, 1))                                         # ...about another version of the file
    elf._cache.clear()
    assert elf.load_cached(path).entry == elf.load(path).entry == 0x100000
    m.write_text("{not json")
    os.utime(path, ns=(2, 2))
    assert elf.load_cached(path).entry == 0x100000


def test_truncated_elf_is_a_clear_error(guest_tree: Path, tmp_path: Path) -> None:
    data = build.build("sync_loop").read_bytes()
    bad = tmp_path / "trunc.elf"
    bad.write_bytes(data[: 0x1000 + 16])
    with pytest.raises(elf.GuestElfError, match="truncated"):
        elf.load(bad)


@pytest.mark.parametrize("data,match", [(b"", "not an ELF"), (b"\x7fELF" + b"\xff" * 60, "malformed"),
                                        (b"MZ" + bytes(100), "not an ELF")])
def test_garbage_is_a_clear_error(tmp_path: Path, data: bytes, match: str) -> None:
    p = tmp_path / "bad.elf"
    p.write_bytes(data)
    with pytest.raises(elf.GuestElfError, match=match):
        elf.load(p)


class _Mem:
    def __init__(self) -> None:
        self.b = bytearray(2 << 20)

    def write(self, gpa: int, data: bytes) -> None:
        self.b[gpa:gpa + len(data)] = data

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.b[gpa:gpa + n])


def _walk(mem: _Mem, cr3: int, va: int) -> int | None:
    t = cr3
    for shift in (39, 30, 21, 12):
        e = int.from_bytes(mem.read(t + 8 * ((va >> shift) & 511), 8), "little")
        if not e & 1:
            return None
        if shift == 21 and e & 0x80:
            return (e & 0x000FFFFFFFE00000) | (va & 0x1FFFFF)
        t = e & 0x000FFFFFFFFFF000
    return t | (va & 0xFFF)


def test_page_tables_map_only_what_was_asked() -> None:
    mem = _Mem()
    pt = PageTables(mem, 0x10000, 0x100000)
    pt.map(0x1000, 0x1000, 0x3000)
    pt.map(1 << 32, 1 << 32, 2 << 20, 2 << 20)
    assert _walk(mem, pt.pml4, 0x2345) == 0x2345
    assert _walk(mem, pt.pml4, 0x0) is None
    assert _walk(mem, pt.pml4, 0x4000) is None
    assert _walk(mem, pt.pml4, (1 << 32) + 0x12345) == (1 << 32) + 0x12345
    assert _walk(mem, pt.pml4, (1 << 32) + (2 << 20)) is None
    pt.unmap_page(0x2000)
    assert _walk(mem, pt.pml4, 0x2000) is None
    with pytest.raises(ValueError, match="not aligned"):
        pt.map(0x1001, 0x1000, PAGE)
