"""The ``kvmffi`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING

from .runner import prepare_test_kernel, resolve_kernel

if TYPE_CHECKING:
    from .runner import TierResult


def cmd_caps(args: argparse.Namespace) -> int:
    from .caps import format_table, snapshot
    h = snapshot(args.kvm_path)
    if h.kvm_accessible and not args.no_probes:
        from .probes import run_probes
        from .system import Kvm
        with Kvm(args.kvm_path) as kvm:
            h.probes = run_probes(kvm)
    if args.json:
        print(json.dumps(h.to_json(), indent=2))
    else:
        print(format_table(h))
    return 0 if h.kvm_accessible else 4


def cmd_kernel_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .testkernel import KernelBuildError, build_kernel
    try:
        img = build_kernel(Path(args.source) if args.source else None, version=args.version, debug=args.debug,
                           base_config=Path(args.config) if args.config else None, jobs=args.jobs, quiet=args.quiet)
    except KernelBuildError as e:
        print(f"kvmffi kernel build: {e}", file=sys.stderr)
        return 1
    print(img)
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    from .testkernel import BootError, boot
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("kvmffi vm: give a command to run inside, e.g. `kvmffi vm -- kvmffi caps`", file=sys.stderr)
        return 2
    from .testkernel.qemu import memory_mib, numa_args
    try:
        memory_mib(args.memory)
        numa_args(args.numa, args.cpus, args.memory)
    except BootError as e:
        print(f"kvmffi vm: --memory/--numa: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        kernel = resolve_kernel(args.kernel, args.quiet)
    except Exception as e:
        print(f"kvmffi vm: cannot get a test kernel: {e}", file=sys.stderr)
        return 125
    try:
        prepare_test_kernel()  # the guest's root is read-only: guest programs and bytecode are made before boot
    except Exception as e:
        print(f"kvmffi vm: warning: guest programs not prebuilt: {e}", file=sys.stderr)
    try:
        r = boot(kernel, cmd, cpus=args.cpus, memory=args.memory, timeout=args.timeout, accel=args.accel, numa=args.numa,
                 extra_append=args.kernel_args,
                 echo=lambda line: print(line, flush=True))
    except BootError as e:
        print(f"kvmffi vm: {e}", file=sys.stderr)
        return 125
    if not args.quiet:
        print(f"kvmffi vm: exit {r.returncode} (boot {r.boot_seconds:.1f} s, total {r.seconds:.1f} s, {r.accel})",
              file=sys.stderr)
    return r.returncode


def _run_tiers(args: argparse.Namespace, strict: bool) -> list[TierResult]:
    from .runner import plan_tiers, run_tiers
    tiers, notes = plan_tiers(list(args.selection), kernel=args.kernel, tree=getattr(args, "tree", None),
                              soak=getattr(args, "soak", None), quiet=args.quiet)
    for n in notes:
        print(f"kvmffi: {n}", file=sys.stderr)
    return run_tiers(tiers, keyword=args.k, fmt=getattr(args, "format", "pretty"),
                     junit_xml=getattr(args, "junit_xml", None), strict=strict, numa=getattr(args, "numa", 0),
                     kernel_args=getattr(args, "kernel_args", ""), soak=getattr(args, "soak", None),
                     timeout=args.timeout)


def cmd_run(args: argparse.Namespace) -> int:
    from .ktap import KSFT_SKIP, combine
    try:
        results = _run_tiers(args, args.strict)
    except Exception as e:
        print(f"kvmffi run: {e}", file=sys.stderr)
        return 2
    if not results:
        print("kvmffi run: no tier can run on this host (see above)", file=sys.stderr)
        return KSFT_SKIP
    return combine(r.ksft for r in results)


def cmd_bisect(args: argparse.Namespace) -> int:
    """For `git bisect run`: 0 good, 1 bad, 125 cannot test. Never anything else."""
    from .runner import BISECT_BAD, BISECT_GOOD, BISECT_SKIP, bisect_verdict
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
    except BaseException as e:  # build failure, boot failure, anything: cannot test this commit
        verdict, why = BISECT_SKIP, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    name = {BISECT_GOOD: "good", BISECT_BAD: "bad", BISECT_SKIP: "skip (cannot test)"}[verdict]
    print(f"kvmffi bisect: {name}, exit {verdict}: {why}", file=sys.stderr)
    return verdict


def cmd_fixcheck(args: argparse.Namespace) -> int:
    """0 catches, 1 not caught, 2 fails without the bug, 125 cannot tell; the last line says which."""
    from pathlib import Path

    from .fixcheck import CANNOT_TELL, EXIT_CODES, Machine, fixcheck
    from .testkernel.tree import Change, TreeError
    if args.numa < 0 or args.numa == 1:
        print(f"kvmffi fixcheck: --numa {args.numa}: give 0 (no NUMA) or 2 or more nodes", file=sys.stderr)
        return 125
    change = Change(patch=Path(args.bug).resolve() if args.bug else None, fix=args.fix)
    tree = None if args.version else Path(args.tree or ".")
    m = Machine(debug=args.debug, kernel_args=args.kernel_args, numa=args.numa, strict=not args.lenient,
                timeout=args.timeout)
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


def cmd_selftests(args: argparse.Namespace) -> int:
    """The kernel's own KVM selftests, built from the test kernel's source and run inside it."""
    from pathlib import Path

    from .selftests import (DEFAULT_TIMEOUT, GUEST_MEMFD_SELFTESTS, SelftestBuildError, available, build_selftests,
                            junit_xml, ktap_lines, run_selftests)
    from .testkernel import BootError, KernelBuildError, build_kernel
    from .testkernel.sources import SourceError, kernel_source
    say = (lambda m: None) if args.quiet else (lambda m: print(f"kvmffi selftests: {m}", file=sys.stderr, flush=True))
    if args.timeout <= 0 or args.jobs < 1:
        print(f"kvmffi selftests: --timeout {args.timeout} / -j {args.jobs}: give seconds > 0 and jobs >= 1",
              file=sys.stderr)
        return 2
    try:
        if args.tree:
            tree = Path(args.tree).resolve()
            image = args.kernel or str(build_kernel(tree, quiet=args.quiet))
        else:
            version = args.version or (args.kernel if args.kernel and not os.path.exists(args.kernel) else "7.3")
            base = version.removesuffix("-debug")
            tree = kernel_source(base).tree
            image = args.kernel if args.kernel and os.path.exists(args.kernel) else \
                str(build_kernel(None, version=base, debug=version.endswith("-debug"), quiet=args.quiet))
        names = list(args.names) or list(GUEST_MEMFD_SELFTESTS)
        found = available(tree, names)
        if args.list:
            print("\n".join(found))
            return 0
        missing = [n for n in names if not available(tree, [n])]
        if missing:
            print(f"kvmffi selftests: not in {tree}: {', '.join(missing)}", file=sys.stderr)
            return 2
        binaries = build_selftests(tree, found, progress=say)
        say(f"running {len(binaries)} selftest(s) in {image} ({args.timeout:.0f} s each at most)")
        results = run_selftests(image, binaries, timeout=args.timeout or DEFAULT_TIMEOUT,
                                kernel_args=args.kernel_args, jobs=args.jobs, echo=None if args.quiet else
                                (lambda line: print(line, file=sys.stderr, flush=True)
                                 if line.startswith("# selftest") else None))
    except (SourceError, KernelBuildError, SelftestBuildError, BootError) as e:
        print(f"kvmffi selftests: {e}", file=sys.stderr)
        return 125
    if args.junit_xml:
        from pathlib import Path as _P
        _P(args.junit_xml).write_text(junit_xml(results))
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


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("selection", nargs="*", help="tiers (host, private, selftests, host/test_vm.py, selftests/NAME, ...) "
                   "and/or your own pytest "
                   "paths and node ids (default: every tier this host can run)")
    p.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--kernel", help="run inside this bzImage under QEMU, or a version: 6.12, 7.3, newest, 7.3-debug "
                   "(Debian's source, built once and cached)")
    g.add_argument("--tree", help="build this kernel source tree with the fragment and run inside it")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per tier in the test kernel")
    p.add_argument("--numa", type=int, default=0, metavar="N", help="N NUMA nodes in the test kernel's machine")
    p.add_argument("--kernel-args", default="", metavar="ARGS",
                   help="test kernel command line additions, e.g. KVM module parameters: 'kvm_amd.npt=0 kvm.enable_pmu=0'")
    p.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                   help="repeat the conversion and memslot-churn scenarios for this long (with the kernel-log gate)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress for kernel builds")


def cmd_matrix(args: argparse.Namespace) -> int:
    from . import matrix as mx
    try:
        if args.configs:
            configs = [mx.parse_config(s) for s in args.configs.split(",")]
        else:
            configs = list(mx.DEFAULT_CONFIGS)
        if args.kernels:
            wanted = args.kernels.split(",")
            configs = [c for c in configs if c.kernel in wanted] + [
                mx.parse_config(k) for k in wanted if not any(c.kernel == k for c in configs)]
        if args.tiers:
            configs = mx.with_tiers(configs, args.tiers.split(","))
        configs = mx.shard(configs, args.shard)
    except ValueError as e:
        print(f"kvmffi matrix: {e}", file=sys.stderr)
        return 2
    fmt = "json" if args.json else args.format
    results = mx.run_matrix(configs, selection=args.selection or None, keyword=args.k, strict=args.strict,
                            jobs=args.jobs, resolve=lambda k: resolve_kernel(k, args.quiet), log_dir=args.logs)
    if fmt == "json":
        print(mx.format_json(results))
    elif fmt == "ktap":
        print(mx.format_ktap(results))
    else:
        print(mx.format_table(results))
    return mx.exit_code(results)


def cmd_fuzz(args: argparse.Namespace) -> int:
    """Fuzz here, or inside a test kernel (re-running this command there through `kvmffi vm`)."""
    from .uapi import VmType
    if args.examples < 1 or args.steps < 1:
        print(f"kvmffi fuzz: --examples and --steps take a positive number (got {args.examples}, {args.steps})",
              file=sys.stderr)
        return 2
    if args.kernel:
        from .testkernel import BootError, boot
        try:
            kernel = resolve_kernel(args.kernel, args.quiet)
        except Exception as e:
            print(f"kvmffi fuzz: cannot get a test kernel: {e}", file=sys.stderr)
            return 125
        prepare_test_kernel()  # the test kernel's root is read-only: guest programs and bytecode are made before boot
        cmd = [sys.executable, "-m", "kvmffi", "fuzz", "--examples", str(args.examples), "--steps", str(args.steps),
               "--vm-type", args.vm_type] + (["--seed", str(args.seed)] if args.seed is not None else [])
        try:
            r = boot(kernel, cmd, timeout=args.timeout, extra_append=args.kernel_args,
                     echo=lambda line: print(line, flush=True))
        except BootError as e:
            print(f"kvmffi fuzz: {e}", file=sys.stderr)
            return 125
        return r.returncode
    from .fuzz import fuzz
    try:
        vm_type = VmType[args.vm_type.upper()]
    except KeyError:
        print(f"kvmffi fuzz: --vm-type {args.vm_type}: choose {', '.join(t.name for t in VmType)}", file=sys.stderr)
        return 2
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
    from .headers import check
    try:
        r = check(args.include_dir)
    except (OSError, RuntimeError) as e:
        print(f"kvmffi check-headers: {e}", file=sys.stderr)
        return 2
    for m in r.mismatched:
        print(f"MISMATCH {m}")
    for a in r.absent:
        print(f"absent   {a} (not in these headers)")
    print(f"kvmffi check-headers: {len(r.matched)} match, {len(r.mismatched)} mismatch, {len(r.absent)} absent "
          f"({args.include_dir})")
    return 0 if r.ok else 1


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

    mt = sub.add_parser("matrix", help="run the suites in every configuration (kernel x NUMA x KVM parameters)")
    mt.add_argument("selection", nargs="*", help="tiers or pytest paths (default: host and private)")
    mt.add_argument("-k", default=None, metavar="EXPR", help="pytest -k expression")
    mt.add_argument("--kernels", help="only configurations on these kernels, e.g. 6.12,7.3,host")
    mt.add_argument("--configs", help="configurations by name (host, 6.12, 7.3, 7.3-numa2, 7.3-tdp-mmu-off, "
                    "7.3-shadow-mmu) or as KERNEL[+numaN][+PARAM=VALUE...], e.g. 7.3+numa2,7.3+kvm.enable_pmu=0")
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

    fz = sub.add_parser("fuzz", help="fuzz the guest_memfd uAPI with hypothesis: contract, model and kernel log")
    fz.add_argument("--kernel", help="fuzz inside this test kernel (bzImage or version, e.g. 7.3-debug)")
    fz.add_argument("--examples", type=int, default=200, help="call sequences to try (default 200)")
    fz.add_argument("--steps", type=int, default=40, help="calls per sequence at most (default 40)")
    fz.add_argument("--seed", type=int, default=None, help="hypothesis seed, for a reproducible run")
    fz.add_argument("--vm-type", default="DEFAULT", help="DEFAULT (default) or SW_PROTECTED")
    fz.add_argument("--timeout", type=float, default=3600.0, help="seconds in the test kernel")
    fz.add_argument("--kernel-args", default="", metavar="ARGS", help="the test kernel's command line additions")
    fz.add_argument("-q", "--quiet", action="store_true")
    fz.set_defaults(fn=cmd_fuzz)

    h = sub.add_parser("check-headers", help="compare the bindings with a kernel's exported uAPI headers")
    h.add_argument("include_dir", nargs="?", default="/usr/include",
                   help="directory holding linux/kvm.h, e.g. the usr/include of `make headers_install`")
    h.set_defaults(fn=cmd_check_headers)

    k = sub.add_parser("kernel", help="build the test kernel (KVM_SW_PROTECTED_VM) for the private tier")
    ksub = k.add_subparsers(dest="kcmd", required=True)
    kb = ksub.add_parser("build", help="build (or reuse) a bzImage; prints its path last")
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
    fc.add_argument("--kernel-args", default="", metavar="ARGS", help="kernel command line additions, e.g. kvm.tdp_mmu=0")
    fc.add_argument("--numa", type=int, default=0, metavar="N", help="N NUMA nodes in the test kernel's machine")
    fc.add_argument("--lenient", action="store_true", help="capability skips stay skips (default: strict)")
    fc.add_argument("--timeout", type=float, default=1800.0, help="seconds per tier in the test kernel")
    fc.add_argument("--logs", metavar="DIR", help="where the two runs' logs go (default: the current directory)")
    fc.add_argument("--rerun", action="store_true", help="run without the bug again even if an earlier run is kept")
    fc.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    fc.add_argument("-q", "--quiet", action="store_true")
    fc.set_defaults(fn=cmd_fixcheck)

    st = sub.add_parser("selftests", help="the kernel's own KVM selftests, built from the test kernel's source and "
                        "run inside it (0 pass, 1 fail, 4 all skipped, 125 cannot build or boot)")
    st.add_argument("names", nargs="*", help="selftests, e.g. guest_memfd_test x86/private_mem_conversions_test "
                    "(default: the six guest_memfd-related ones)")
    where_ = st.add_mutually_exclusive_group()
    where_.add_argument("--version", help="Debian's linux-source-VERSION (default 7.3; 7.3-debug for the debug kernel)")
    where_.add_argument("--tree", help="a kernel source tree: the kernel and the selftests are built from it")
    st.add_argument("--kernel", help="boot this bzImage (with --tree: the selftests' source) or version")
    st.add_argument("--kernel-args", default="", metavar="ARGS", help="kernel command line additions")
    st.add_argument("--timeout", type=float, default=120.0, help="seconds per selftest (default 120): killed and "
                    "reported as a timeout")
    st.add_argument("-j", "--jobs", type=int, default=1, help="selftests at once in the test kernel (default 1; "
                    "with more, a kernel splat is charged to every selftest that was running)")
    st.add_argument("--format", choices=["pretty", "ktap", "junit"], default="pretty")
    st.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML")
    st.add_argument("--list", action="store_true", help="list the named selftests the source has, and stop")
    st.add_argument("-q", "--quiet", action="store_true")
    st.set_defaults(fn=cmd_selftests)

    v = sub.add_parser("vm", help="boot the test kernel under QEMU and run a command inside")
    v.add_argument("--kernel", help="bzImage or version (6.12, 7.3, 7.3-debug; default 6.12), built if missing")
    v.add_argument("--cpus", type=int, default=2)
    v.add_argument("--memory", default="2G")
    v.add_argument("--numa", type=int, default=0, metavar="N", help="split memory and CPUs into N NUMA nodes")
    v.add_argument("--kernel-args", default="", metavar="ARGS", help="kernel command line additions (KVM parameters)")
    v.add_argument("--timeout", type=float, default=900.0, help="seconds for boot and command together")
    v.add_argument("--accel", default="auto",
                   help="auto: KVM where the host offers nested virtualization, else TCG on one host thread "
                        "(tcg); or any QEMU -accel value, e.g. tcg,thread=multi")
    v.add_argument("-q", "--quiet", action="store_true")
    v.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    v.set_defaults(fn=cmd_vm)
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
    try:
        return int(args.fn(args))
    except KeyboardInterrupt as e:
        print(f"kvmffi: interrupted ({e or 'SIGINT'})", file=sys.stderr)
        return 125 if args.fn in (cmd_bisect, cmd_fixcheck) else 130


if __name__ == "__main__":
    sys.exit(main())
