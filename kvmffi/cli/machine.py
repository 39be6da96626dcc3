"""The machine options every command that boots a test kernel takes, parsed once into a BootSpec,
and the exit codes the commands share for the same facts."""

from __future__ import annotations

import argparse

from ..testkernel.spec import HOST, BootSpec

USAGE = 2          # an option has a value it cannot take (argparse's own code for usage errors)
CANNOT_TEST = 125  # the test kernel could not be had: source, build or boot failed (git bisect's "skip")

KERNEL_HELP = ("a version of Debian's kernel source: 6.12, 7.3, newest, with -debug for KASAN and lockdep (built "
               "once and cached), or the path of a bzImage")


def add_machine_args(p: argparse.ArgumentParser, *, kernel: str | None = None,
                     tree: str | None = None) -> None:
    """Add --cpus, --memory, --numa, --kernel-args and --accel (one help text for every command);
    ``kernel`` and ``tree`` are the help of --kernel and --tree where the command takes them
    (mutually exclusive)."""
    g = p.add_argument_group("test kernel machine")
    if kernel or tree:
        x = g.add_mutually_exclusive_group()
        if kernel:
            x.add_argument("--kernel", help=kernel)
        if tree:
            x.add_argument("--tree", help=tree)
    g.add_argument("--cpus", type=int, default=2, metavar="N", help="vCPUs (default 2)")
    g.add_argument("--memory", default="2G", help="QEMU -m: MiB or a size like 2G, 1536M (default 2G)")
    g.add_argument("--numa", type=int, default=0, metavar="N",
                   help="split memory and CPUs into N NUMA nodes (0: none, the default; else 2 or more)")
    g.add_argument("--kernel-args", default="", metavar="ARGS",
                   help="test kernel command line additions, e.g. KVM module parameters: 'kvm_amd.npt=0 kvm.enable_pmu=0'")
    g.add_argument("--accel", default="auto", help="QEMU -accel: auto (KVM where this host offers nested "
                   "virtualization, else TCG on one host thread), tcg, kvm, or any value such as tcg,thread=multi")


def machine_spec(args: argparse.Namespace, kernel: str | None = None) -> BootSpec:
    """The BootSpec the options give (``kernel`` overrides --kernel). Raises SpecError."""
    return BootSpec(kernel or getattr(args, "kernel", None) or HOST, cpus=args.cpus, memory=args.memory,
                    numa=args.numa, kernel_args=args.kernel_args, accel=args.accel)
