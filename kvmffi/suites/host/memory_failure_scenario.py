"""Poison one page of guest memory (MADV_HWPOISON) and report, as JSON on stdout, what the host
and the guest see. Runs in its own process: KVM may answer a poisoned page with SIGBUS to the VMM,
and a page that is poisoned is lost to the machine until reboot (test kernels only).

    python memory_failure_scenario.py gmem|anon
gmem: the guest's memory is a guest_memfd mapped in place (MMAP|INIT_SHARED, 6.18+).
anon: the guest's memory is anonymous host memory (every kernel).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from kvmffi import HostMemoryFault, IntrExit, MemoryFaultExit
from kvmffi.testing import run_in_child
from kvmffi.testvm import TEST_GPA, GuestHang, TestVm

MADV_HWPOISON = 100
PAGE = 4096
SIZE = 2 << 20
POISONED = 1          # page index
MARK = 0x5AFE5AFE5AFE5AFE


def guarded_read_in_child(host: Any, offset: int) -> str:
    """What kvmffi's guarded read of 8 bytes at ``offset`` answers, asked in a child (it may hang)."""
    r, w = os.pipe()

    def read() -> None:
        try:
            answer = host[offset:offset + 8].hex()
        except HostMemoryFault as e:
            answer = f"HostMemoryFault errno {e.errno}"
        os.write(w, answer.encode())

    try:
        res = run_in_child(read, timeout=10)
    except TimeoutError:
        return "hangs (killed after 10 s)"
    finally:
        os.close(w)
    got = os.read(r, 200).decode()
    os.close(r)
    return got if res.exitcode == 0 else f"child {res}"


def main(kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    sigbus: list[int] = []
    signal.signal(signal.SIGBUS, lambda s, f: sigbus.append(s))  # only KVM's signal can land here
    with TestVm("read_loop", timeout=20) as t:
        mem = t.add_memory(TEST_GPA, SIZE, "gmem-mmap" if kind == "gmem" else "anon")
        host = mem.host
        assert host is not None
        for page in range(4):
            host[page * PAGE:page * PAGE + 8] = MARK.to_bytes(8, "little")
        t.set_param("test_gpa", TEST_GPA + POISONED * PAGE)
        t.set_param("forever", 0)
        t.run()  # the guest has read the page once: it is mapped in the guest too
        child = run_in_child(lambda: host.madvise(MADV_HWPOISON, POISONED * PAGE, PAGE))
        out["poisoning_child"] = str(child)
        out["host_read"] = guarded_read_in_child(host, POISONED * PAGE)
        out["host_read_neighbour"] = host[2 * PAGE:2 * PAGE + 8] == MARK.to_bytes(8, "little")
        t.restart()
        try:
            ex = t.run_until_exit(timeout=5)
        except GuestHang:
            ex = IntrExit()  # KVM_RUN returned EINTR again and again: a signal on each entry
        if isinstance(ex, MemoryFaultExit):
            out["guest_read"] = {"exit": "MEMORY_FAULT", "errno": ex.errno, "gpa": ex.gpa - TEST_GPA,
                                 "size": ex.size, "flags": int(ex.flags)}
        elif isinstance(ex, IntrExit):
            out["guest_read"] = {"exit": "INTR (repeated)"}
        else:
            out["guest_read"] = {"exit": repr(ex)}
        out["sigbus_to_vmm"] = len(sigbus)
        if kind == "gmem" and mem.gmem is not None:
            try:
                mem.gmem.punch_hole(POISONED * PAGE, PAGE)
                out["punch_hole"] = 0
            except OSError as e:
                out["punch_hole"] = e.errno
            try:
                mem.gmem.allocate(POISONED * PAGE, PAGE)
                out["allocate"] = 0
            except OSError as e:
                out["allocate"] = e.errno
            out["host_read_after_punch"] = guarded_read_in_child(host, POISONED * PAGE)
            t.restart()
            try:
                ex = t.run_until_exit(timeout=5)
            except GuestHang:
                ex = IntrExit()
            out["guest_read_after_punch"] = "DONE" if ex is None else repr(ex)
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(json.dumps(main(sys.argv[1])))
