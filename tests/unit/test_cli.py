"""The command line: a bad option value gets one line naming it, and the same code on every command
(2; 125 for bisect and fixcheck, whose callers read 2 as an answer). No kernel is built or booted."""

import pytest

from kvmffi.cli import build_parser, main
from kvmffi.cli.machine import machine_spec
from kvmffi.testkernel.spec import BootSpec


@pytest.mark.parametrize("argv,code,message", [
    (["run", "--kernel", "9.x", "host"], 2, "kvmffi run: --kernel 9.x: give host, a version"),
    (["run", "--kernel", "7.3", "--numa", "1", "host"], 2, "kvmffi run: --numa 1: give 0 (no NUMA) or 2 or more"),
    (["run", "--numa", "2", "host"], 2, "2 NUMA nodes: these describe a test kernel's machine; give --kernel too"),
    (["vm", "--memory", "abc", "--", "true"], 2, "kvmffi vm: --memory abc: give MiB or a size like 2G"),
    (["fuzz", "--examples", "-1"], 2, "kvmffi fuzz: --examples and --steps take a positive number"),
    (["fuzz", "--kernel-args", "kvm.tdp_mmu=0"], 2, "give --kernel too"),
    (["selftests", "--cpus", "0"], 2, "kvmffi selftests: --cpus 0: give 1 or more"),
    (["matrix", "--configs", "bogus"], 2, "neither a known configuration (host, 6.12, 7.3"),
    (["matrix", "--configs", "7.3+numa1"], 2, "configuration '7.3+numa1': --numa 1"),
    (["bisect", "--kernel", "9.x", "host"], 125, "kvmffi bisect: skip (cannot test), exit 125: SpecError: --kernel 9.x"),
    (["fixcheck", "--bug", "x.patch", "--numa", "3", "--memory", "256M"], 125, "must split into equal nodes"),
])
def test_bad_values(argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_booting_command_takes_the_same_machine_options() -> None:
    p = build_parser()
    machine = ["--cpus", "4", "--memory", "4G", "--numa", "2", "--kernel-args", "kvm.tdp_mmu=0", "--accel", "tcg"]
    want = BootSpec("7.3-debug", cpus=4, memory="4G", numa=2, kernel_args="kvm.tdp_mmu=0", accel="tcg")
    for cmd in (["run", "host"], ["bisect", "host"], ["vm"], ["fuzz"], ["selftests"]):
        args = p.parse_args([*cmd[:1], "--kernel", "7.3-debug", *machine, *cmd[1:]])
        assert machine_spec(args) == want, cmd
    args = p.parse_args(["fixcheck", "--bug", "x.patch", *machine])
    assert machine_spec(args) == BootSpec(cpus=4, memory="4G", numa=2, kernel_args="kvm.tdp_mmu=0", accel="tcg")
