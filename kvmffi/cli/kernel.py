"""`kvmffi kernel build`, `kvmffi vm`, `kvmffi selftests` and `kvmffi fixcheck`: test kernels, what
runs in them, and whether a test catches a bug put into one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .machine import CANNOT_TEST, KERNEL_HELP, USAGE, add_machine_args, machine_spec


def cmd_kernel_build(args: argparse.Namespace) -> int:
    from ..testkernel import KernelBuildError, build_kernel
    from ..testkernel.sources import SourceError
    try:
        img = build_kernel(Path(args.source) if args.source else None, version=args.version, debug=args.debug,
                           base_config=Path(args.config) if args.config else None, jobs=args.jobs, quiet=args.quiet)
    except (KernelBuildError, SourceError) as e:
        print(f"kvmffi kernel build: {e}", file=sys.stderr)
        return CANNOT_TEST
    print(img)
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    from ..runner import prepare_test_kernel
    from ..testkernel import BootError, KernelBuildError
    from ..testkernel.sources import SourceError
    from ..testkernel.spec import DEFAULT_VERSION
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("kvmffi vm: give a command to run inside, e.g. `kvmffi vm -- kvmffi caps`", file=sys.stderr)
        return USAGE
    spec = machine_spec(args, args.kernel or DEFAULT_VERSION)
    try:
        spec = spec.resolved(args.quiet)
    except (KernelBuildError, SourceError) as e:
        print(f"kvmffi vm: cannot get the test kernel: {e}", file=sys.stderr)
        return CANNOT_TEST
    try:
        prepare_test_kernel()  # the guest's root is read-only: guest programs and bytecode are made before boot
    except Exception as e:
        print(f"kvmffi vm: warning: guest programs not prebuilt: {e}", file=sys.stderr)
    try:
        r = spec.boot(cmd, timeout=args.timeout, echo=lambda line: print(line, flush=True))
    except BootError as e:
        print(f"kvmffi vm: {e}", file=sys.stderr)
        return CANNOT_TEST
    if not args.quiet:
        print(f"kvmffi vm: exit {r.returncode} (kernel {r.release}, boot {r.boot_seconds:.1f} s, total "
              f"{r.seconds:.1f} s, {r.accel})", file=sys.stderr)
    return r.returncode


def cmd_selftests(args: argparse.Namespace) -> int:
    """The kernel's own KVM selftests, built from the test kernel's source and run inside it."""
    from ..selftests import (DEFAULT_TIMEOUT, GUEST_MEMFD_SELFTESTS, SelftestBuildError, available, build_selftests,
                             junit_xml, ktap_lines, run_selftests)
    from ..testkernel import BootError, KernelBuildError, build_kernel
    from ..testkernel.sources import SourceError, kernel_source
    say = (lambda m: None) if args.quiet else (lambda m: print(f"kvmffi selftests: {m}", file=sys.stderr, flush=True))
    if args.timeout <= 0 or args.jobs < 1:
        print(f"kvmffi selftests: --timeout {args.timeout} / -j {args.jobs}: give seconds > 0 and jobs >= 1",
              file=sys.stderr)
        return USAGE
    spec = machine_spec(args, args.kernel or args.version or "7.3")
    try:
        if args.tree:
            tree = Path(args.tree).resolve()
            spec = spec if args.kernel else spec.with_kernel(str(build_kernel(tree, quiet=args.quiet)))
        else:
            v = spec.version or spec.with_kernel(args.version or "7.3").version
            assert v is not None
            tree = kernel_source(v[0]).tree
        names = list(args.names) or list(GUEST_MEMFD_SELFTESTS)
        found = available(tree, names)
        if args.list:
            print("\n".join(found))
            return 0
        missing = [n for n in names if not available(tree, [n])]
        if missing:
            print(f"kvmffi selftests: not in {tree}: {', '.join(missing)}", file=sys.stderr)
            return USAGE
        binaries = build_selftests(tree, found, progress=say)
        spec = spec.resolved(args.quiet)
        say(f"running {len(binaries)} selftest(s) in {spec.kernel} ({args.timeout:.0f} s each at most)")
        results = run_selftests(spec, binaries, timeout=args.timeout or DEFAULT_TIMEOUT, jobs=args.jobs,
                                echo=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)
                                                              if line.startswith("# selftest") else None))
    except (SourceError, KernelBuildError, SelftestBuildError, BootError) as e:
        print(f"kvmffi selftests: {e}", file=sys.stderr)
        return CANNOT_TEST
    if args.junit_xml:
        Path(args.junit_xml).write_text(junit_xml(results))
    if args.format == "junit":
        print(junit_xml(results))
    elif args.format == "ktap":
        print("\n".join(ktap_lines(results)))
    else:
        for r in results:
            print(f"{r.outcome.upper():<8} {r.name:<40} {r.seconds:6.1f} s"
                  + (f"  {r.detail.splitlines()[0]}" if r.detail and r.outcome != "pass" else ""))
            if r.outcome in ("fail", "timeout"):
                print("\n".join("         " + line for line in r.detail.splitlines()[1:]))
    failed = [r for r in results if r.outcome in ("fail", "timeout")]
    if failed:
        print(f"kvmffi selftests: {len(failed)} of {len(results)} failed: {', '.join(r.name for r in failed)}",
              file=sys.stderr)
        return 1
    return 0 if any(r.outcome == "pass" for r in results) else 4


def cmd_fixcheck(args: argparse.Namespace) -> int:
    """0 catches, 1 not caught, 2 fails without the bug, 125 cannot tell; the last line says which."""
    from ..fixcheck import CANNOT_TELL, EXIT_CODES, Machine, fixcheck
    from ..testkernel.tree import Change, TreeError
    m = Machine(machine_spec(args), debug=args.debug, strict=not args.lenient, timeout=args.timeout)
    change = Change(patch=Path(args.bug).resolve() if args.bug else None, fix=args.fix)
    tree = None if args.version else Path(args.tree or ".")
    try:
        res = fixcheck(change, list(args.selection), tree=tree, version=args.version, keyword=args.k, machine=m,
                       log_dir=Path(args.logs) if args.logs else None, quiet=args.quiet, use_cache=not args.rerun)
    except TreeError as e:
        print(f"kvmffi fixcheck: {e}", file=sys.stderr)
        print(f"kvmffi fixcheck: {CANNOT_TELL}", file=sys.stderr)
        return EXIT_CODES[CANNOT_TELL]
    if args.json:
        print(json.dumps(res.to_json(), indent=2))
    print(f"kvmffi fixcheck: {res.verdict}: {res.why}", file=sys.stderr)
    return res.exit_code


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("kernel", help="build the test kernel (KVM_SW_PROTECTED_VM) for the private tier")
    ksub = k.add_subparsers(dest="kcmd", required=True)
    kb = ksub.add_parser("build", help="build (or reuse) a bzImage; prints its path last (125: it cannot be built)")
    src = kb.add_mutually_exclusive_group()
    src.add_argument("--version", help="Debian's linux-source-VERSION: 6.12 (Debian 12's own, the default), 7.3, "
                     "7.2, ... or newest (fetched from Debian's newer suites with a private apt state)")
    src.add_argument("--source", help="a kernel source tree of your own")
    kb.add_argument("--config", help="a .config to merge the fragment into (default: tinyconfig)")
    kb.add_argument("--debug", action="store_true", help="add the debug fragment: KASAN, lockdep, DEBUG_VM, DEBUG_LIST, "
                    "UBSAN, KFENCE, LKDTM (cached beside the plain image)")
    kb.add_argument("-j", "--jobs", type=int, default=None, help="parallel jobs (default: all cores)")
    kb.add_argument("-q", "--quiet", action="store_true")
    kb.set_defaults(fn=cmd_kernel_build)

    fc = sub.add_parser("fixcheck", help="does a test catch a bug? build a tree with and without it, run, compare "
                        "(0 catches, 1 not caught, 2 fails without the bug, 125 cannot tell)")
    fc.add_argument("selection", nargs="*", help="tiers and/or pytest paths (default: every tier)")
    fc.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    where = fc.add_mutually_exclusive_group()
    where.add_argument("--tree", help="a clean kernel git tree (default: the current directory)")
    where.add_argument("--version", help="a git copy of Debian's linux-source-VERSION in the cache (7.3, 6.12, ...)")
    what = fc.add_mutually_exclusive_group(required=True)
    what.add_argument("--fix", metavar="COMMIT", help="a commit of the tree that fixed the bug: its revert is the bug")
    what.add_argument("--bug", metavar="PATCH", help="a patch that introduces the bug (git apply, -p1)")
    fc.add_argument("--debug", action="store_true", help="build with the debug fragment (KASAN, lockdep, ...)")
    fc.add_argument("--lenient", action="store_true", help="capability skips stay skips (default: strict)")
    fc.add_argument("--timeout", type=float, default=1800.0, help="seconds per tier in the test kernel")
    fc.add_argument("--logs", metavar="DIR", help="where the two runs' logs go (default: ~/.cache/kvmffi/fixcheck/logs)")
    fc.add_argument("--rerun", action="store_true", help="run without the bug again even if an earlier run is kept")
    fc.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    fc.add_argument("-q", "--quiet", action="store_true")
    add_machine_args(fc)
    fc.set_defaults(fn=cmd_fixcheck)

    st = sub.add_parser("selftests", help="the kernel's own KVM selftests, built from the test kernel's source and "
                        "run inside it (0 pass, 1 fail, 4 all skipped, 125 cannot build or boot)")
    st.add_argument("names", nargs="*", help="selftests, e.g. guest_memfd_test x86/private_mem_conversions_test "
                    "(default: the six guest_memfd-related ones)")
    where_ = st.add_mutually_exclusive_group()
    where_.add_argument("--version", help="Debian's linux-source-VERSION (default 7.3; 7.3-debug for the debug kernel)")
    where_.add_argument("--tree", help="a kernel source tree: the kernel and the selftests are built from it")
    st.add_argument("--timeout", type=float, default=120.0, help="seconds per selftest (default 120): killed and "
                    "reported as a timeout")
    st.add_argument("-j", "--jobs", type=int, default=1, help="selftests at once in the test kernel (default 1; "
                    "with more, a kernel splat is charged to every selftest that was running)")
    st.add_argument("--format", choices=["pretty", "ktap", "junit"], default="pretty")
    st.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML")
    st.add_argument("--list", action="store_true", help="list the named selftests the source has, and stop")
    st.add_argument("-q", "--quiet", action="store_true")
    add_machine_args(st, kernel="boot this test kernel (with --tree: the selftests' source): " + KERNEL_HELP)
    st.set_defaults(fn=cmd_selftests)

    v = sub.add_parser("vm", help="boot the test kernel under QEMU and run a command inside")
    v.add_argument("--timeout", type=float, default=900.0, help="seconds for boot and command together")
    v.add_argument("-q", "--quiet", action="store_true")
    v.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    add_machine_args(v, kernel="the test kernel (default 6.12): " + KERNEL_HELP)
    v.set_defaults(fn=cmd_vm)
