"""What KVM charges to the VMM's memory cgroup, and what happens at its limit (behaviours: accounting).

Each test runs a VMM (a Python child using kvmffi) inside a fresh cgroup v2 with the memory
controller and reads memory.current and memory.stat around its calls: guest_memfd's pages are page cache of the
guest_memfd inode, charged to the cgroup of the process that allocates them (fallocate or fault),
and uncharged when punched out. Needs cgroup v2 with the memory controller (the test kernels).
"""

import json

import pytest

from kvmffi.cgroup import CgroupUnavailable, MemoryCgroup

MiB = 1 << 20
SIZE = 32 * MiB

ALLOCATE = """
import ctypes, time
from kvmffi import Kvm
# PR_SET_THP_DISABLE: khugepaged would otherwise collapse this process's heap into 2 MiB pages at
# any moment, and memory.current would count them with guest_memfd's pages
ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0)
cur = lambda: int(open(os.path.join(CG, 'memory.current')).read())
def file_pages():
    for line in open(os.path.join(CG, 'memory.stat')):
        key, value = line.split()
        if key == 'file':
            return int(value)
def file_settled(done):
    # memory.stat is flushed from per-CPU counters when enough changed, and by a worker every
    # 2 s (mm/memcontrol.c FLUSH_TIME): read until it shows the change, at most 5 s
    deadline = time.monotonic() + 5
    while True:
        v = file_pages()
        if done(v) or time.monotonic() > deadline:
            return v
        time.sleep(0.05)
with Kvm() as kvm, kvm.create_vm(P['vm_type']) as vm:
    g = vm.create_guest_memfd(P['size'])
    before, file_before = cur(), file_pages()
    if P.get('limit') is not None:
        open(os.path.join(CG, 'memory.max'), 'w').write(str(before + P['limit']))
    try:
        g.allocate(0, P['size'])
        err = 0
    except OSError as e:
        err = e.errno
    after = cur()
    file_after = file_settled(lambda v: v - file_before >= P['size'])
    punched = file_punched = None
    if not err:
        g.punch_hole(0, P['size'])
        file_punched = file_settled(lambda v: v <= file_before)
        punched = cur()
    g.close()
print(json.dumps({'before': before, 'after': after, 'punched': punched, 'errno': err, 'file_before': file_before,
                  'file_after': file_after, 'file_punched': file_punched}))
"""

@pytest.fixture
def cgroup():
    try:
        cg = MemoryCgroup()
    except CgroupUnavailable as e:
        pytest.skip(f"{e}: run in the test kernels (`kvmffi run --kernel 7.3 host/test_memcg.py`)")
    with cg:
        yield cg


def _result(r) -> dict:
    assert r.returncode == 0, f"the VMM child exited {r.returncode}:\n{r.stderr[-2000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_guest_memfd_pages_are_charged_to_the_vmm_cgroup(cgroup, vm_type) -> None:
    """fallocate of 32 MiB of guest_memfd raises the VMM's memory.current by 32 MiB, all of it page
    cache: memory.stat's ``file`` grows by exactly 32 MiB (the pages are page cache of the guest_memfd
    inode, charged like shmem: mm/filemap.c filemap_add_folio). A punch hole over it takes ``file``
    back to where it was (filemap_unaccount_folio) and memory.current down by 32 MiB: the folios are
    freed, so a reference leaked by KVM shows here. Each memory.current figure may be 1 MiB short:
    memory charged by earlier calls and freed late (RCU) may come off meanwhile. The VMM child sets
    PR_SET_THP_DISABLE, as khugepaged collapsing its heap into a 2 MiB page would add to
    memory.current (seen in the debug kernel)."""
    res = _result(cgroup.run(ALLOCATE, {"vm_type": int(vm_type), "size": SIZE}))
    assert res["errno"] == 0, f"fallocate of {SIZE >> 20} MiB without a limit: errno {res['errno']}"
    charged = res["after"] - res["before"]
    assert charged >= SIZE - MiB, f"allocating {SIZE >> 20} MiB of guest_memfd charged {charged / MiB:.2f} MiB to the cgroup"
    file_charged = res["file_after"] - res["file_before"]
    assert file_charged == SIZE, \
        f"allocating {SIZE >> 20} MiB of guest_memfd added {file_charged / MiB:.2f} MiB of page cache (memory.stat file)"
    left = res["file_punched"] - res["file_before"]
    assert left == 0, f"punching {SIZE >> 20} MiB out left {left / MiB:.2f} MiB of page cache charged (memory.stat file)"
    freed = res["after"] - res["punched"]
    assert freed >= SIZE - MiB, \
        f"punching {SIZE >> 20} MiB out gave back {freed / MiB:.2f} MiB of memory.current: folios removed but not freed"


def test_guest_memfd_allocation_stops_at_the_cgroup_limit(cgroup, vm_type) -> None:
    """With memory.max 8 MiB above what the VMM uses, fallocate of 32 MiB of guest_memfd never takes
    the cgroup past its limit: it fails with ENOMEM, or the cgroup's OOM killer ends the VMM
    (memory.events oom_kill); memory.peak stays at or below memory.max."""
    r = cgroup.run(ALLOCATE, {"vm_type": int(vm_type), "size": SIZE, "limit": 8 * MiB})
    events = cgroup.events()
    limit = cgroup.value("memory.max")
    assert events.get("max", 0) > 0, f"the cgroup never reached its limit: memory.events {events}"
    if r.returncode == 0:
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["errno"] == 12, f"fallocate past the cgroup limit: errno {res['errno']} (want ENOMEM)"
    else:
        assert r.returncode == -9 and events.get("oom_kill", 0) >= 1, \
            f"the VMM child ended with {r.returncode}, memory.events {events}:\n{r.stderr[-1500:]}"
    try:
        peak = cgroup.value("memory.peak")
    except FileNotFoundError:
        return  # memory.peak is 5.19+
    assert peak <= limit, f"memory.peak {peak} is above memory.max {limit}"
