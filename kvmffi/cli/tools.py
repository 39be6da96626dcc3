"""`kvmffi caps`, `kvmffi fuzz` and `kvmffi check-headers`: what this KVM offers, the uAPI fuzzer,
and the bindings against a kernel's headers."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .machine import CANNOT_TEST, KERNEL_HELP, USAGE, add_machine_args, machine_spec


def cmd_caps(args: argparse.Namespace) -> int:
    from ..caps import format_table, snapshot
    h = snapshot(args.kvm_path)
    if h.kvm_accessible and not args.no_probes:
        from ..probes import run_probes
        from ..system import Kvm
        with Kvm(args.kvm_path) as kvm:
            h.probes = run_probes(kvm)
    if args.json:
        print(json.dumps(h.to_json(), indent=2))
    else:
        print(format_table(h))
    return 0 if h.kvm_accessible else 4


def cmd_fuzz(args: argparse.Namespace) -> int:
    """Fuzz here, or inside a test kernel (re-running this command there)."""
    from ..uapi import VmType
    if args.examples < 1 or args.steps < 1:
        print(f"kvmffi fuzz: --examples and --steps take a positive number (got {args.examples}, {args.steps})",
              file=sys.stderr)
        return USAGE
    try:
        vm_type = VmType[args.vm_type.upper()]
    except KeyError:
        print(f"kvmffi fuzz: --vm-type {args.vm_type}: choose {', '.join(t.name for t in VmType)}", file=sys.stderr)
        return USAGE
    spec = machine_spec(args)
    if not spec.on_host:
        from ..runner import prepare_test_kernel
        from ..testkernel import BootError, KernelBuildError
        from ..testkernel.sources import SourceError
        try:
            spec = spec.resolved(args.quiet)
        except (KernelBuildError, SourceError) as e:
            print(f"kvmffi fuzz: cannot get the test kernel: {e}", file=sys.stderr)
            return CANNOT_TEST
        prepare_test_kernel()  # the test kernel's root is read-only: guest programs and bytecode are made before boot
        cmd = [sys.executable, "-m", "kvmffi", "fuzz", "--examples", str(args.examples), "--steps", str(args.steps),
               "--vm-type", args.vm_type] + (["--seed", str(args.seed)] if args.seed is not None else [])
        try:
            r = spec.boot(cmd, timeout=args.timeout, echo=lambda line: print(line, flush=True))
        except BootError as e:
            print(f"kvmffi fuzz: {e}", file=sys.stderr)
            return CANNOT_TEST
        return r.returncode
    spec.require_test_kernel()
    from ..fuzz import fuzz
    try:
        res = fuzz(examples=args.examples, seed=args.seed, vm_type=vm_type, steps=args.steps)
    except ValueError as e:
        print(f"kvmffi fuzz: {e}", file=sys.stderr)
        return 4
    for call, answers in sorted(res.answers.items()):
        print(f"  {call:<30} " + ", ".join(f"{k} {v}" for k, v in sorted(answers.items())))
    for bug, n in res.known_bugs.items():
        print(f"kvmffi fuzz: known kernel bug {bug} hit {n} times (kvmffi.kernels; not a new finding)")
    for i, f in enumerate(res.findings, 1):
        print(f"kvmffi fuzz: FINDING {i} ({f.kind})\n{f}\n")
    for kind, n in res.repeats.items():
        print(f"kvmffi fuzz: finding {kind} seen {n} more times")
    print(f"kvmffi fuzz: {res.calls} calls in {res.examples} sequences, {res.seconds:.0f} s, "
          f"{len(res.findings)} finding(s) on {os.uname().release} ({vm_type.name} VM)")
    return 1 if res.findings else 0


def cmd_check_headers(args: argparse.Namespace) -> int:
    from ..headers import check
    try:
        r = check(args.include_dir)
    except (OSError, RuntimeError) as e:
        print(f"kvmffi check-headers: {e}", file=sys.stderr)
        return USAGE
    for m in r.mismatched:
        print(f"MISMATCH {m}")
    for a in r.absent:
        print(f"absent   {a} (not in these headers)")
    print(f"kvmffi check-headers: {len(r.matched)} match, {len(r.mismatched)} mismatch, {len(r.absent)} absent "
          f"({args.include_dir})")
    return 0 if r.ok else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("caps", help="report what this host's KVM offers (per VM type) and host quirks")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.add_argument("--kvm-path", default="/dev/kvm")
    c.add_argument("--no-probes", action="store_true", help="skip the probes that run a guest")
    c.set_defaults(fn=cmd_caps)

    fz = sub.add_parser("fuzz", help="fuzz the guest_memfd uAPI with hypothesis: contract, model and kernel log")
    fz.add_argument("--examples", type=int, default=200, help="call sequences to try (default 200)")
    fz.add_argument("--steps", type=int, default=40, help="calls per sequence at most (default 40)")
    fz.add_argument("--seed", type=int, default=None, help="hypothesis seed, for a reproducible run")
    fz.add_argument("--vm-type", default="DEFAULT", help="DEFAULT (default) or SW_PROTECTED")
    fz.add_argument("--timeout", type=float, default=3600.0, help="seconds in the test kernel")
    fz.add_argument("-q", "--quiet", action="store_true")
    add_machine_args(fz, kernel="fuzz inside this test kernel: " + KERNEL_HELP)
    fz.set_defaults(fn=cmd_fuzz)

    h = sub.add_parser("check-headers", help="compare the bindings with a kernel's exported uAPI headers")
    h.add_argument("include_dir", nargs="?", default="/usr/include",
                   help="directory holding linux/kvm.h, e.g. the usr/include of `make headers_install`")
    h.set_defaults(fn=cmd_check_headers)
