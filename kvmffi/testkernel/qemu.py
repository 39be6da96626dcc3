"""Boot a test kernel under QEMU with the host's root filesystem (9p, read-only) and run a command.

The host's /, Python and this checkout included, is the guest's root. The command runs in
the current directory with the same PATH; its output streams back over the serial console
and its exit status comes back as a marker line. No QEMU process outlives ``boot()``.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import cache_dir

BEGIN = "KVMFFI-BEGIN-7d1f"
EXIT = "KVMFFI-EXIT-7d1f="
PASS_ENV = ("KVMFFI_", "CI", "PYTEST_ADDOPTS", "TERM")


class BootError(RuntimeError):
    """QEMU or the kernel failed before the command finished; ``console_tail`` shows why."""

    def __init__(self, msg: str, console_tail: list[str], timed_out: bool = False) -> None:
        tail = "\n".join("    " + line for line in console_tail[-30:])
        super().__init__(f"{msg}\n  last console lines:\n{tail}" if console_tail else msg)
        self.console_tail = console_tail
        self.timed_out = timed_out


@dataclass
class BootResult:
    returncode: int
    output: list[str] = field(default_factory=list)
    boot_seconds: float = 0.0
    seconds: float = 0.0
    accel: str = ""
    release: str = ""          # the booted kernel's release (uname -r), as it reported it


# QEMU's TCG emulates the test kernel's CPUs on one host thread, not one thread each (MTTCG): with
# one thread per CPU, two vCPUs of a nested guest converting memory at once ended in a triple fault
# (or a hang) in 8 of 120 runs of the two-vCPU conversion scenario (QEMU 7.2, 6.12 and 7.3 alike),
# in 0 of 60 with one thread and 0 of 60 with one CPU (kvmffi.kernels.EMULATOR_PROBLEMS).
# `--accel tcg,thread=multi` asks for MTTCG.
TCG = "tcg,thread=single"


def choose_accel(accel: str = "auto") -> str:
    """QEMU's -accel: ``auto`` is KVM where the host can nest, else TCG on one thread; ``tcg`` is
    that TCG; anything else (kvm, tcg,thread=multi) as given."""
    if accel == "auto":
        from ..kernels import nested_virtualization
        accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) and nested_virtualization() else "tcg"
    return TCG if accel == "tcg" else accel


def _mounts(out_dir: Path) -> list[tuple[str, str, str, str]]:
    """The test kernel's mounts after /proc, as (source, target, type, options); options starting
    with X-mount or nofail are mount(8)'s own (nofail: may fail quietly; /dev is usually mounted
    by the kernel already)."""
    return [("sys", "/sys", "sysfs", "defaults"), ("cgroup2", "/sys/fs/cgroup", "cgroup2", "nofail"),
            ("devtmpfs", "/dev", "devtmpfs", "nofail"),
            ("run", "/run", "tmpfs", "defaults"), ("tmp", "/run/kvmffi-tmp", "tmpfs", "X-mount.mkdir"),
            ("home", "/run/kvmffi-home", "tmpfs", "X-mount.mkdir"), ("shm", "/dev/shm", "tmpfs", "X-mount.mkdir"),
            ("none", "/dev/hugepages", "hugetlbfs", "X-mount.mkdir,nofail"),
            ("none", "/sys/kernel/debug", "debugfs", "nofail"),
            ("kvmffiout", str(out_dir), "9p", "trans=virtio,version=9p2000.L,msize=262144")]


def _fstab(out_dir: Path) -> str:
    """The mounts for one ``mount -a``: each program started under emulation costs about 0.1 s."""
    return "".join(f"{src} {dst} {kind} {opts} 0 0\n" for src, dst, kind, opts in _mounts(out_dir))


def _mount_one_by_one(out_dir: Path) -> str:
    """The same mounts, one mount(8) each, for a mount without ``-a -T``."""
    lines = []
    for src, dst, kind, opts in _mounts(out_dir):
        fs_opts = ",".join(o for o in opts.split(",") if not o.startswith(("X-mount", "nofail")) and o != "defaults")
        quiet = " 2>/dev/null" if "nofail" in opts else ""
        lines.append(f"mkdir -p {shlex.quote(dst)} 2>/dev/null; mount -t {kind} {f'-o {fs_opts} ' if fs_opts else ''}"
                     f"{src} {shlex.quote(dst)}{quiet}")
    return "\n".join(lines)


def _init_script(command: list[str], cwd: str, env: dict[str, str], out_dir: Path, fstab: Path) -> str:
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
    return f"""#!/bin/sh
mount -t proc proc /proc
mount -a -T {shlex.quote(str(fstab))} 2>/dev/null || {{
{_mount_one_by_one(out_dir)}
}}
echo 64 > /proc/sys/vm/nr_hugepages 2>/dev/null
echo 20 > /proc/sys/kernel/hung_task_timeout_secs 2>/dev/null
{exports}
cd {shlex.quote(cwd)} || echo "kvmffi: cannot cd to {cwd} in the test kernel"
echo "{BEGIN} $(uname -r)"
{" ".join(shlex.quote(c) for c in command)} < /dev/null 2>&1
echo {EXIT}$?
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def memory_mib(memory: str) -> int:
    """QEMU's -m syntax (2G, 1536M, 1024) in MiB."""
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]?)\s*", memory)
    if not m:
        raise BootError(f"memory {memory!r}: give MiB or a size like 2G or 1536M", [])
    return int(m.group(1)) * (1024 if m.group(2) in ("G", "g") else 1)


def numa_args(nodes: int, cpus: int, memory: str) -> list[str]:
    """QEMU arguments for ``nodes`` NUMA nodes (none for 0 or 1): equal memory, CPU i on node i % nodes."""
    if nodes <= 1:
        return []
    total = memory_mib(memory)
    if total % nodes or total // nodes < 128:
        raise BootError(f"--numa {nodes} with {total} MiB: the memory must split into equal nodes of >= 128 MiB", [])
    out = []
    for n in range(nodes):
        out += ["-object", f"memory-backend-ram,id=kvmffi-mem{n},size={total // nodes}M"]
        node = f"node,nodeid={n},memdev=kvmffi-mem{n}"
        for c in range(n, cpus, nodes):
            node += f",cpus={c}"
        out += ["-numa", node]
    return out


def boot(kernel: Path | str, command: list[str], *, cpus: int = 2, memory: str = "2G", timeout: float = 600.0,
         accel: str = "auto", cwd: str | None = None, extra_append: str = "", qemu: str = "qemu-system-x86_64",
         echo: Callable[[str], None] | None = None, env: dict[str, str] | None = None,
         results_dir: Path | None = None, numa: int = 0) -> BootResult:
    """Boot ``kernel`` and run ``command`` inside; returns its exit status and output lines.

    Raises BootError if QEMU cannot start, the kernel dies, or ``timeout`` passes first.
    ``echo`` receives each output line as it arrives (e.g. print). The guest can write
    files into a writable directory: ``{out}`` in ``command`` (and $KVMFFI_OUT) names it;
    with ``results_dir`` they are copied there afterwards. ``numa`` >= 2 splits memory into that
    many NUMA nodes (QEMU memory backends and -numa nodes), the CPUs spread across them.
    """
    kernel = Path(kernel)
    if not kernel.exists():
        raise BootError(f"no kernel image at {kernel}: build one with `kvmffi kernel build`", [])
    if shutil.which(qemu) is None:
        raise BootError(f"{qemu} not found: apt-get install qemu-system-x86", [])
    accel = choose_accel(accel)
    cwd = cwd or os.getcwd()
    boot_dir = cache_dir() / "boot" / uuid.uuid4().hex[:12]
    out_dir = boot_dir / "out"
    out_dir.mkdir(parents=True)
    # /tmp stays the host's (read-only), so checkouts under /tmp work; scratch goes to /run
    genv = {"PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin", "HOME": "/run/kvmffi-home",
            "TMPDIR": "/run/kvmffi-tmp",
            "PYTHONDONTWRITEBYTECODE": "1", "KVMFFI_CACHE": str(cache_dir()), "KVMFFI_IN_TEST_KERNEL": "1",
            "KVMFFI_OUT": str(out_dir), "LANG": "C.UTF-8", "PY_COLORS": "0"}
    for k, v in os.environ.items():
        if k.startswith(PASS_ENV) and k not in genv:
            genv[k] = v
    genv.update(env or {})
    command = [c.replace("{out}", str(out_dir)) for c in command]
    init, fstab = boot_dir / "init", boot_dir / "fstab"
    fstab.write_text(_fstab(out_dir))
    init.write_text(_init_script(command, cwd, genv, out_dir, fstab))
    init.chmod(0o755)
    cpu = "host" if accel.split(",")[0] == "kvm" else "max"
    # pci=noacpi: PCI interrupts routed from the BIOS table, not by ACPI's interpreter (which took
    # about 0.3 s per virtio device under TCG); pty.legacy_count=0: no 256 BSD ptys (0.2 s)
    append = ("console=ttyS0 root=root rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose "
              f"ro init={init} panic=-1 quiet loglevel=3 pci=noacpi pty.legacy_count=0 "
              f"kvm_amd.nested=1 kvm_amd.npt=1 kvm_intel.nested=1 {extra_append}")
    argv = [qemu, "-accel", accel, "-M", "pc", "-cpu", cpu, "-smp", str(cpus), "-m", memory, "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-kernel", str(kernel), "-append", append,
            "-virtfs", "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={out_dir},mount_tag=kvmffiout,security_model=none"]
    argv += numa_args(numa, cpus, memory)
    t0 = time.monotonic()
    lines: queue.Queue[str | None] = queue.Queue()
    console: list[str] = []
    result = BootResult(returncode=-1, accel=accel)
    from .._libc import die_with_parent
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=die_with_parent)

    def reader() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace").replace("\r", "").rstrip("\n"))
        lines.put(None)

    rt = threading.Thread(target=reader, name="kvmffi-qemu-console", daemon=True)
    rt.start()
    started = False
    exit_code: int | None = None
    try:
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootError(f"timed out after {timeout:.0f} s "
                                f"({'while running the command' if started else 'while booting'})", console,
                                timed_out=True)
            try:
                line = lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is None:
                break
            if not started:
                i = line.find(BEGIN)
                if i >= 0:
                    started = True
                    result.boot_seconds = time.monotonic() - t0
                    result.release = line[i + len(BEGIN):].strip()
                else:
                    console.append(line)
                    del console[:-200]
                continue
            if line.startswith(EXIT):
                exit_code = int(line[len(EXIT):].strip() or "255")
                continue
            if exit_code is not None:
                continue  # shutdown noise
            result.output.append(line)
            console.append(line)
            del console[:-200]
            if echo is not None:
                echo(line)
        proc.wait(timeout=30)
    finally:
        _kill(proc)
        rt.join(timeout=10)
        if results_dir is not None:
            results_dir.mkdir(parents=True, exist_ok=True)
            for f in out_dir.iterdir():
                if f.is_file():
                    shutil.copy(f, results_dir / f.name)
        shutil.rmtree(boot_dir, ignore_errors=True)
    result.seconds = time.monotonic() - t0
    if exit_code is None:
        what = "the kernel stopped before the command finished" if started else "the kernel did not boot to the command"
        raise BootError(f"{what} (QEMU exit {proc.returncode})", console)
    result.returncode = exit_code
    return result


def _kill(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if proc.stdout is not None:
        proc.stdout.close()

