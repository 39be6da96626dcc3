"""Load a guest ELF with pyelftools: PT_LOAD segments, the symbol table, and from its debug
information the line table, the enumerators and the struct layouts (the guest headers are the one
source of every constant the host shares with the guest).

Parsing DWARF is slow (seconds under emulation), so a guest build also writes a manifest beside the
ELF (``NAME.elf.json``): what :func:`load` reads from the ELF, the debug information's enumerators and
struct layouts included, derived once from that same ELF. :func:`load_cached` uses it when it
matches the ELF's size and mtime, and parses the ELF otherwise; the line table (for diagnostics)
is always read from the ELF, on first use.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1


class GuestElfError(ValueError):
    """The file is not a loadable x86-64 guest ELF; the message says why."""


@dataclass(frozen=True)
class Segment:
    gpa: int
    data: bytes      # file contents; memsz - len(data) bytes of zeros follow (bss)
    memsz: int
    executable: bool
    writable: bool
    offset: int = 0  # of data in the file


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int


@dataclass(frozen=True)
class StructLayout:
    size: int
    offsets: dict[str, int]


@dataclass
class GuestImage:
    path: str
    entry: int
    segments: list[Segment]
    symbols: dict[str, Symbol] = field(default_factory=dict)
    _data: bytes = field(default=b"", repr=False)
    _lines: list[tuple[int, str, int]] | None = field(default=None, repr=False)
    _types: tuple[dict[str, int], dict[str, StructLayout]] | None = field(default=None, repr=False)

    def _debug_types(self) -> tuple[dict[str, int], dict[str, StructLayout]]:
        if self._types is None:
            from elftools.elf.elffile import ELFFile
            try:
                elf = ELFFile(io.BytesIO(self._data))
                self._types = _types(elf) if elf.has_dwarf_info() else ({}, {})
            except Exception as e:  # pyelftools raises assorted errors on garbage
                raise GuestElfError(f"{self.path}: unreadable debug information: {type(e).__name__}: {e}") from None
        return self._types

    @property
    def constants(self) -> dict[str, int]:
        """Every C enumerator of the program (its own and kvmffi_guest.h's), by name."""
        return self._debug_types()[0]

    def constant(self, name: str) -> int:
        try:
            return self.constants[name]
        except KeyError:
            raise GuestElfError(f"guest {Path(self.path).name} has no enumerator {name!r} in its debug information "
                                "(constants the host reads are C enumerators, and guests are built with -g)") from None

    def struct(self, name: str) -> StructLayout:
        """The layout of ``struct name`` as the guest compiler laid it out."""
        try:
            return self._debug_types()[1][name]
        except KeyError:
            raise GuestElfError(f"guest {Path(self.path).name} has no struct {name!r} in its debug "
                                "information") from None

    @property
    def lines(self) -> list[tuple[int, str, int]]:
        """(address, file, line) from the DWARF line table, sorted; parsed on first use (it is slow)."""
        if self._lines is None:
            from elftools.elf.elffile import ELFFile
            try:
                elf = ELFFile(io.BytesIO(self._data))
                self._lines = _line_table(elf) if elf.has_dwarf_info() else []
            except Exception:
                self._lines = []
        return self._lines

    @property
    def end(self) -> int:
        return max(s.gpa + s.memsz for s in self.segments)

    def symbol(self, name: str) -> Symbol:
        try:
            return self.symbols[name]
        except KeyError:
            raise KeyError(f"guest {Path(self.path).name} has no symbol {name!r}") from None

    def source_line(self, addr: int) -> str | None:
        """'file:line' for a guest address, from the DWARF line table (if built with -g)."""
        import bisect
        i = bisect.bisect_right(self.lines, (addr, "\uffff", 1 << 30)) - 1
        if i < 0:
            return None
        a, f, ln = self.lines[i]
        if addr - a > 64:
            return None
        return f"{f}:{ln}"

    def function_at(self, addr: int) -> str | None:
        for s in self.symbols.values():
            if s.size and s.addr <= addr < s.addr + s.size:
                return s.name
        return None


_cache: dict[tuple[str, int, int], GuestImage] = {}


def load_cached(path: str | Path) -> GuestImage:
    """:func:`load`, remembered per (path, size, mtime): TestVms of one program share the parse.
    The ELF's manifest stands in for the parse where it describes this very file."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    img = _cache.get(key)
    if img is None:
        img = _from_manifest(path, st.st_size, st.st_mtime_ns) or load(path)
        _cache[key] = img
    return img


def manifest_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def write_manifest(path: str | Path) -> Path:
    """Parse the ELF at ``path`` (segments, symbols, enumerators, struct layouts) and write its manifest."""
    path = str(path)
    img = load(path)
    consts, structs = img._debug_types()
    st = os.stat(path)
    doc = {"version": MANIFEST_VERSION, "elf_size": st.st_size, "elf_mtime_ns": st.st_mtime_ns, "entry": img.entry,
           "segments": [[s.gpa, s.offset, len(s.data), s.memsz, s.executable, s.writable] for s in img.segments],
           "symbols": {n: [s.addr, s.size] for n, s in img.symbols.items()},
           "constants": consts, "structs": {n: [s.size, s.offsets] for n, s in structs.items()}}
    out = manifest_path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc, sort_keys=True))
    os.replace(tmp, out)
    return out


def _from_manifest(path: str | Path, size: int, mtime_ns: int) -> GuestImage | None:
    try:
        doc: dict[str, Any] = json.loads(manifest_path(path).read_text())
        if (doc.get("version"), doc.get("elf_size"), doc.get("elf_mtime_ns")) != (MANIFEST_VERSION, size, mtime_ns):
            return None
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != size:
            return None
        segs = [Segment(gpa, data[off:off + fsz], msz, x, w, off) for gpa, off, fsz, msz, x, w in doc["segments"]]
        img = GuestImage(str(path), doc["entry"], segs,
                         {n: Symbol(n, a, sz) for n, (a, sz) in doc["symbols"].items()}, _data=data)
        img._types = (doc["constants"], {n: StructLayout(sz, offs) for n, (sz, offs) in doc["structs"].items()})
        return img
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no manifest, or not one this version wrote: parse the ELF


def load(path: str | Path, data: bytes | None = None) -> GuestImage:
    """Parse an ELF file (or ``data``). Raises GuestElfError for anything not loadable."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.constants import P_FLAGS
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection
    path = str(path)
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise GuestElfError(f"cannot read guest ELF {path}: {e.strerror}") from None
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise GuestElfError(f"{path} is not an ELF file (size {len(data)}, magic {data[:4]!r})")
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise GuestElfError(f"{path} is {elf.elfclass}-bit {elf['e_machine']}, guests must be x86-64 ELF64")
        segs = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD":
                continue
            fsz, msz, off = seg["p_filesz"], seg["p_memsz"], seg["p_offset"]
            if off + fsz > len(data):
                raise GuestElfError(f"{path} is truncated: a PT_LOAD segment needs bytes up to {off + fsz:#x}, "
                                    f"the file has {len(data):#x}")
            if fsz > msz:
                raise GuestElfError(f"{path}: PT_LOAD at {seg['p_paddr']:#x} has filesz {fsz:#x} > memsz {msz:#x}")
            segs.append(Segment(seg["p_paddr"], data[off:off + fsz], msz, bool(seg["p_flags"] & P_FLAGS.PF_X),
                                bool(seg["p_flags"] & P_FLAGS.PF_W), off))
        if not segs:
            raise GuestElfError(f"{path} has no PT_LOAD segment")
        img = GuestImage(path, elf["e_entry"], segs, _data=data)
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for s in symtab.iter_symbols():
                if s.name and s["st_info"]["type"] in ("STT_OBJECT", "STT_FUNC", "STT_NOTYPE"):
                    img.symbols[s.name] = Symbol(s.name, s["st_value"], s["st_size"])
    except ELFError as e:
        raise GuestElfError(f"{path} is a malformed ELF: {e}") from None
    except GuestElfError:
        raise
    except Exception as e:  # pyelftools raises assorted errors on garbage
        raise GuestElfError(f"{path} is a malformed or truncated ELF: {type(e).__name__}: {e}") from None
    return img


def _line_table(elf: Any) -> list[tuple[int, str, int]]:
    out = []
    dw = elf.get_dwarf_info()
    for cu in dw.iter_CUs():
        lp = dw.line_program_for_CU(cu)
        if lp is None:
            continue
        files = lp["file_entry"]
        ver = lp["version"]
        for e in lp.get_entries():
            st = e.state
            if st is None or st.end_sequence:
                continue
            idx = st.file if ver >= 5 else st.file - 1
            name = files[idx].name.decode() if 0 <= idx < len(files) else "?"
            out.append((st.address, name, st.line))
    out.sort()
    return out


def _types(elf: Any) -> tuple[dict[str, int], dict[str, StructLayout]]:
    consts: dict[str, int] = {}
    structs: dict[str, StructLayout] = {}
    for cu in elf.get_dwarf_info().iter_CUs():
        for die in cu.iter_DIEs():
            at = die.attributes
            if die.tag == "DW_TAG_enumerator":
                consts[at["DW_AT_name"].value.decode()] = at["DW_AT_const_value"].value
            elif die.tag == "DW_TAG_structure_type" and "DW_AT_name" in at and "DW_AT_byte_size" in at:
                offsets = {c.attributes["DW_AT_name"].value.decode(): c.attributes["DW_AT_data_member_location"].value
                           for c in die.iter_children()
                           if c.tag == "DW_TAG_member" and "DW_AT_name" in c.attributes
                           and "DW_AT_data_member_location" in c.attributes}
                structs[at["DW_AT_name"].value.decode()] = StructLayout(at["DW_AT_byte_size"].value, offsets)
    return consts, structs
