"""`kvmffi run`, `kvmffi bisect` and `kvmffi matrix`: the suites on this host or in test kernels."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .machine import CANNOT_TEST, KERNEL_HELP, USAGE, add_machine_args, machine_spec

if TYPE_CHECKING:
    from ..runner import TierResult


def _run_tiers(args: argparse.Namespace, strict: bool) -> list[TierResult]:
    from ..runner import plan_tiers, run_tiers
    tiers, notes = plan_tiers(list(args.selection), machine_spec(args), tree=args.tree, soak=getattr(args, "soak", None),
                              quiet=args.quiet)
    for n in notes:
        print(f"kvmffi: {n}", file=sys.stderr)
    return run_tiers(tiers, keyword=args.k, fmt=getattr(args, "format", "pretty"),
                     junit_xml=getattr(args, "junit_xml", None), strict=strict, soak=getattr(args, "soak", None),
                     timeout=args.timeout)


def cmd_run(args: argparse.Namespace) -> int:
    """kselftest codes: 0 pass, 1 fail, 4 nothing ran but skips; 2 a bad option, 125 no test kernel."""
    from ..ktap import KSFT_SKIP, combine
    from ..testkernel import KernelBuildError
    from ..testkernel.sources import SourceError
    try:
        results = _run_tiers(args, args.strict)
    except (KernelBuildError, SourceError) as e:
        print(f"kvmffi run: cannot get the test kernel: {e}", file=sys.stderr)
        return CANNOT_TEST
    if not results:
        print("kvmffi run: no tier can run on this host (see above)", file=sys.stderr)
        return KSFT_SKIP
    return combine(r.ksft for r in results)


def cmd_bisect(args: argparse.Namespace) -> int:
    """For `git bisect run`: 0 good, 1 bad, 125 cannot test. Never anything else."""
    from ..runner import BISECT_BAD, BISECT_GOOD, BISECT_SKIP, bisect_verdict
    args.format = "pretty"
    args.junit_xml = None
    try:
        if args.selftests:
            args.selection = [f"selftests/{n}" for n in args.selftests]
        if not args.selection and not args.k:
            print("kvmffi bisect: name what to test (a path and/or -k EXPR, or --selftests NAME...): 125",
                  file=sys.stderr)
            return BISECT_SKIP
        results = _run_tiers(args, strict=False)
        verdict, why = bisect_verdict(results[0] if results else None)
    except KeyboardInterrupt as e:
        verdict, why = BISECT_SKIP, f"interrupted ({e or 'SIGINT'})"
    except BaseException as e:  # a bad option, build failure, boot failure, anything: cannot test this commit
        verdict, why = BISECT_SKIP, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    name = {BISECT_GOOD: "good", BISECT_BAD: "bad", BISECT_SKIP: "skip (cannot test)"}[verdict]
    print(f"kvmffi bisect: {name}, exit {verdict}: {why}", file=sys.stderr)
    return verdict


def cmd_matrix(args: argparse.Namespace) -> int:
    from .. import matrix as mx
    from ..testkernel import KernelBuildError
    from ..testkernel.sources import SourceError
    if args.jobs < 1:
        print(f"kvmffi matrix: -j {args.jobs}: give 1 or more", file=sys.stderr)
        return USAGE
    try:
        if args.configs:
            configs = [mx.parse_config(s) for s in args.configs.split(",")]
        else:
            configs = list(mx.DEFAULT_CONFIGS)
        if args.kernels:
            wanted = args.kernels.split(",")
            configs = [c for c in configs if c.spec.kernel in wanted] + [
                mx.parse_config(k) for k in wanted if not any(c.spec.kernel == k for c in configs)]
        if args.tiers:
            configs = mx.with_tiers(configs, args.tiers.split(","))
        configs = mx.shard(configs, args.shard)
    except ValueError as e:
        print(f"kvmffi matrix: {e}", file=sys.stderr)
        return USAGE
    fmt = "json" if args.json else args.format
    try:
        results = mx.run_matrix(configs, selection=args.selection or None, keyword=args.k, strict=args.strict,
                                jobs=args.jobs, quiet=args.quiet, log_dir=args.logs)
    except (KernelBuildError, SourceError) as e:
        print(f"kvmffi matrix: cannot get a test kernel: {e}", file=sys.stderr)
        return CANNOT_TEST
    if fmt == "json":
        print(mx.format_json(results))
    elif fmt == "ktap":
        print(mx.format_ktap(results))
    else:
        print(mx.format_table(results))
    return mx.exit_code(results)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("selection", nargs="*", help="tiers (host, private, selftests, host/test_vm.py, selftests/NAME, ...) "
                   "and/or your own pytest paths and node ids (default: every tier this host can run)")
    p.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per tier in the test kernel")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="repeat the conversion and memslot-churn scenarios for this long (with the kernel-log gate)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress for kernel builds")
    add_machine_args(p, kernel="run inside this test kernel under QEMU: " + KERNEL_HELP,
                     tree="build this kernel source tree with the fragment and run inside it")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    r = sub.add_parser("run", help="run the suites (this host, or a test kernel) with KTAP/JUnit/pytest output")
    _add_run_args(r)
    r.add_argument("--format", choices=["pretty", "ktap", "junit"], default="pretty")
    r.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML (one file per tier)")
    r.add_argument("--strict", action="store_true", help="a capability skip is a failure")
    r.set_defaults(fn=cmd_run)

    b = sub.add_parser("bisect", help="for `git bisect run`: 0 good, 1 bad, 125 cannot test")
    _add_run_args(b)
    b.add_argument("--selftests", nargs="+", metavar="NAME", help="bisect with the kernel's own KVM selftests "
                   "(built from the tree), e.g. --selftests pre_fault_memory_test")
    b.set_defaults(fn=cmd_bisect)

    mt = sub.add_parser("matrix", help="run the suites in every configuration (kernel x machine x KVM parameters)")
    mt.add_argument("selection", nargs="*", help="tiers or pytest paths (default: host and private)")
    mt.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    mt.add_argument("--kernels", help="only configurations on these kernels, e.g. 6.12,7.3,host")
    mt.add_argument("--configs", help="configurations by name (host, 6.12, 7.3, 7.3-numa2, 7.3-tdp-mmu-off, "
                    "7.3-shadow-mmu) or as KERNEL[+numaN][+cpusN][+PARAM=VALUE...], e.g. 7.3+numa2,7.3+kvm.enable_pmu=0")
    mt.add_argument("--tiers", help="tiers for every configuration: host, private, selftests (the kernel's own "
                    "KVM selftests from the test kernel's source; default: host and private)")
    mt.add_argument("--format", choices=["pretty", "ktap", "json"], default="pretty")
    mt.add_argument("--json", action="store_true", help="same as --format json")
    mt.add_argument("-j", "--jobs", type=int, default=1, help="configurations at once (QEMU instances)")
    mt.add_argument("--shard", metavar="I/N", help="run the I-th of N slices of the configurations")
    mt.add_argument("--strict", action="store_true", help="a capability skip is a failure")
    mt.add_argument("--logs", metavar="DIR", help="write each configuration's full output to DIR/NAME.log")
    mt.add_argument("-q", "--quiet", action="store_true")
    mt.set_defaults(fn=cmd_matrix)
