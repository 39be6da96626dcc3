"""The test kernel's configuration fragment: its options, which are required and why, and the check
of a configured tree against it.

An option marked ``# required: why`` on the line before it must survive ``olddefconfig``; any
other option that the tree does not define (a Kconfig symbol renamed or removed in that version)
is reported and left out, so one fragment serves every tree from 6.8 on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FRAGMENT = Path(__file__).with_name("fragment.config")
DEBUG_FRAGMENT = Path(__file__).with_name("debug.config")


@dataclass(frozen=True)
class Option:
    name: str               # CONFIG_X
    value: str              # 'y', '4', or 'n' for '# CONFIG_X is not set'
    required: str | None    # why the tiers cannot live without it, or None


def _parse(text: str) -> dict[str, str]:
    opts = {}
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
        if m:
            opts[m.group(1)] = m.group(2)
            continue
        m = re.match(r"^# (CONFIG_\w+) is not set$", line)
        if m:
            opts[m.group(1)] = "n"
    return opts


def fragment(path: Path = FRAGMENT) -> list[Option]:
    out, why = [], None
    for line in path.read_text().splitlines():
        m = re.match(r"^#\s*required:\s*(.+)$", line.strip())
        if m:
            why = m.group(1)
            continue
        opts = _parse(line)
        for k, v in opts.items():
            out.append(Option(k, v, why))
        if opts or not line.startswith("#"):
            why = None
    return out


def fragment_options(path: Path = FRAGMENT) -> dict[str, str]:
    """CONFIG_X -> value ('y', '4', or 'n' for '# CONFIG_X is not set')."""
    return {o.name: o.value for o in fragment(path)}


def check_config(config: Path, path: Path = FRAGMENT) -> list[str]:
    """Options of the fragment that did not survive olddefconfig, as 'CONFIG_X=want (got ...)'."""
    have = _parse(config.read_text())
    return [f"{o.name}={o.value} (got {have.get(o.name, 'n')})" for o in fragment(path)
            if have.get(o.name, "n") != o.value]


def tree_symbols(src: Path) -> set[str]:
    """Every CONFIG_ symbol some Kconfig file of the tree defines."""
    names: set[str] = set()
    pat = re.compile(r"^\s*(?:menu)?config\s+(\w+)", re.M)
    for f in src.rglob("Kconfig*"):
        if f.is_file():
            try:
                names.update("CONFIG_" + n for n in pat.findall(f.read_text(errors="replace")))
            except OSError:
                continue
    return names


@dataclass(frozen=True)
class ConfigVerdict:
    fatal: list[str]        # required options that did not survive, with why
    absent: list[str]       # options this tree does not define: left out
    dropped: list[str]      # optional options the tree has but that did not survive


def merged(paths: list[Path]) -> list[Option]:
    """The options of several fragments merged in order (a later value wins, required if either says so)."""
    out: dict[str, Option] = {}
    for path in paths:
        for o in fragment(path):
            prev = out.get(o.name)
            out[o.name] = Option(o.name, o.value, o.required or (prev.required if prev else None))
    return list(out.values())


def judge_config(config: Path, src: Path, paths: Path | list[Path] = FRAGMENT) -> ConfigVerdict:
    have = _parse(config.read_text())
    opts = merged(paths if isinstance(paths, list) else [paths])
    missing = [o for o in opts if have.get(o.name, "n") != o.value]
    if not missing:
        return ConfigVerdict([], [], [])
    defined = tree_symbols(src)
    fatal, absent, dropped = [], [], []
    for o in missing:
        got = have.get(o.name, "n")
        if o.required:
            where = "this tree does not define it" if o.name not in defined else f"got {got}"
            fatal.append(f"{o.name}={o.value} ({where}; needed: {o.required})")
        elif o.name not in defined:
            absent.append(o.name)
        else:
            dropped.append(f"{o.name}={o.value} (got {got})")
    return ConfigVerdict(fatal, absent, dropped)
