"""The ``kvmffi`` command: the parser, one module per group of subcommands, and ``main``.

Exit codes shared by every subcommand for the same facts: 2 for an option with a value it cannot
take (one line naming the option and what it accepts), 125 when the test kernel cannot be had
(source, build or boot), 130 on Ctrl-C (125 for bisect and fixcheck, whose callers read 125 as
"cannot tell"); the rest is each command's own (kselftest's 0/1/4 for run, matrix and selftests).
"""

from __future__ import annotations

import argparse
import sys

from ..testkernel.spec import SpecError
from . import kernel, run, tools
from .machine import CANNOT_TEST, USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmffi", description="KVM guest_memfd / private-memory test harness")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"kvmffi {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    tools.register(sub)
    run.register(sub)
    kernel.register(sub)
    return p


def _terminate(signum: int, frame: object) -> None:
    import signal
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    import signal
    args = build_parser().parse_args(argv)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so QEMU and VMs are cleaned up
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    name = args.cmd if args.cmd != "kernel" else f"kernel {args.kcmd}"
    try:
        return int(args.fn(args))
    except SpecError as e:
        print(f"kvmffi {name}: {e}", file=sys.stderr)
        return CANNOT_TEST if args.fn in (run.cmd_bisect, kernel.cmd_fixcheck) else USAGE
    except KeyboardInterrupt as e:
        print(f"kvmffi: interrupted ({e or 'SIGINT'})", file=sys.stderr)
        return CANNOT_TEST if args.fn in (run.cmd_bisect, kernel.cmd_fixcheck) else 130


if __name__ == "__main__":
    sys.exit(main())
