"""The ``kvmffi`` command."""

from __future__ import annotations

import argparse
import json
import sys


def cmd_caps(args: argparse.Namespace) -> int:
    from .caps import format_table, snapshot
    h = snapshot(args.kvm_path, probes=not args.no_probes)
    if args.json:
        print(json.dumps(h.to_json(), indent=2))
    else:
        print(format_table(h))
    return 0 if h.kvm_accessible else 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmffi", description="KVM guest_memfd / private-memory test harness")
    from . import __version__
    p.add_argument("--version", action="version", version=f"kvmffi {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("caps", help="report what this host's KVM offers (per VM type) and host quirks")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--kvm-path", default="/dev/kvm")
    c.add_argument("--no-probes", action="store_true", help="skip the probes that run a guest")
    c.set_defaults(fn=cmd_caps)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("kvmffi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
