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


def cmd_kernel_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .testkernel import KernelBuildError, build_kernel
    try:
        img = build_kernel(Path(args.source) if args.source else None,
                           base_config=Path(args.config) if args.config else None, jobs=args.jobs, quiet=args.quiet)
    except KernelBuildError as e:
        print(f"kvmffi kernel build: {e}", file=sys.stderr)
        return 1
    print(img)
    return 0


def _resolve_kernel(kernel: str | None, quiet: bool = False) -> str:
    """--kernel PATH, or the cached default kernel, building it if there is none."""
    if kernel:
        return kernel
    from .testkernel import build_kernel
    return str(build_kernel(None, quiet=quiet))


def cmd_vm(args: argparse.Namespace) -> int:
    from .guest.build import build_all
    from .testkernel import BootError, boot
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("kvmffi vm: give a command to run inside, e.g. `kvmffi vm -- kvmffi caps`", file=sys.stderr)
        return 2
    try:
        kernel = _resolve_kernel(args.kernel, args.quiet)
    except Exception as e:
        print(f"kvmffi vm: cannot get a test kernel: {e}", file=sys.stderr)
        return 125
    try:
        build_all()  # the guest's root is read-only: guest programs must be built before boot
    except Exception as e:
        print(f"kvmffi vm: warning: guest programs not prebuilt: {e}", file=sys.stderr)
    try:
        r = boot(kernel, cmd, cpus=args.cpus, memory=args.memory, timeout=args.timeout, accel=args.accel,
                 echo=lambda line: print(line, flush=True))
    except BootError as e:
        print(f"kvmffi vm: {e}", file=sys.stderr)
        return 125
    if not args.quiet:
        print(f"kvmffi vm: exit {r.returncode} (boot {r.boot_seconds:.1f} s, total {r.seconds:.1f} s, {r.accel})",
              file=sys.stderr)
    return r.returncode


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

    k = sub.add_parser("kernel", help="build the test kernel (KVM_SW_PROTECTED_VM) for the private tier")
    ksub = k.add_subparsers(dest="kcmd", required=True)
    kb = ksub.add_parser("build", help="build (or reuse) a bzImage; prints its path last")
    kb.add_argument("--source", help="kernel source tree (default: Debian's linux-source-6.12, installed if missing)")
    kb.add_argument("--config", help="a .config to merge the fragment into (default: tinyconfig)")
    kb.add_argument("-j", "--jobs", type=int, default=None, help="parallel jobs (default: all cores)")
    kb.add_argument("-q", "--quiet", action="store_true")
    kb.set_defaults(fn=cmd_kernel_build)

    v = sub.add_parser("vm", help="boot the test kernel under QEMU and run a command inside")
    v.add_argument("--kernel", help="bzImage (default: the cached test kernel, built if missing)")
    v.add_argument("--cpus", type=int, default=2)
    v.add_argument("--memory", default="2G")
    v.add_argument("--timeout", type=float, default=900.0, help="seconds for boot and command together")
    v.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"],
                   help="auto: KVM where the host offers nested virtualization, else TCG")
    v.add_argument("-q", "--quiet", action="store_true")
    v.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    v.set_defaults(fn=cmd_vm)
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
