"""A memory cgroup (v2) for one test: make it under the unified hierarchy, run a Python child
inside, read its memory files, remove it. Used to check what KVM charges to the VMM's cgroup.

Needs cgroup v2 with the memory controller available at the root (the test kernels mount
/sys/fs/cgroup; a hybrid host with a v1 memory hierarchy has no v2 memory controller).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No cgroup v2 memory controller here; the message says what is missing."""


class MemoryCgroup:
    """A child cgroup with the memory controller: ``run(script)`` runs Python inside it."""

    def __init__(self, root: Path = ROOT) -> None:
        ctrl = root / "cgroup.controllers"
        if not ctrl.exists():
            raise CgroupUnavailable(f"no cgroup v2 hierarchy at {root} (mount -t cgroup2 none {root})")
        if "memory" not in ctrl.read_text().split():
            raise CgroupUnavailable(f"the cgroup v2 hierarchy at {root} has no memory controller (needs CONFIG_MEMCG, "
                                    "and no cgroup v1 memory hierarchy holding it)")
        sub = root / "cgroup.subtree_control"
        if "memory" not in sub.read_text().split():
            try:
                sub.write_text("+memory")
            except OSError as e:
                raise CgroupUnavailable(f"cannot enable the memory controller in {sub}: {e.strerror}") from None
        self.path = root / f"kvmffi-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()

    def read(self, name: str) -> str:
        return (self.path / name).read_text()

    def value(self, name: str) -> int:
        return int(self.read(name).split()[0])

    def events(self) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in self.read("memory.events").splitlines())}

    def set(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def run(self, script: str, params: dict[str, object], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``script`` in a Python child that first moves itself into this cgroup; ``params`` are
        JSON in its ``P``, and the cgroup's path is ``CG``. Its last stdout line is usually JSON."""
        prologue = (f"import json, os\nCG = {str(self.path)!r}\nP = json.loads({json.dumps(json.dumps(params))})\n"
                    "open(os.path.join(CG, 'cgroup.procs'), 'w').write(str(os.getpid()))\n")
        return subprocess.run([sys.executable, "-c", prologue + script], capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        procs = self.path / "cgroup.procs"
        if procs.exists():
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        try:
            self.path.rmdir()
        except OSError:
            pass

    def __enter__(self) -> MemoryCgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
