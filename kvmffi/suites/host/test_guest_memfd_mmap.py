"""mmap of a guest_memfd (behaviour 18-25). Accesses expected to SIGBUS run in a child process."""

import errno
import mmap
import signal
from functools import partial

import pytest

from kvmffi import PAGE_SIZE, GuestMemfdFlag, KvmError
from kvmffi.errors import HostMemoryFault
from kvmffi.kernels import behaviour
from kvmffi.requirements import skip_missing
from kvmffi.testing import expect_answer
from kvmffi.testing import run_in_child, touch

SIZE = 4 * PAGE_SIZE
MMAP = GuestMemfdFlag.MMAP
SHARED = GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED




def need_guard() -> None:
    from kvmffi.memory import guard_available
    if not guard_available():
        skip_missing("process_vm_readv is ENOSYS (CONFIG_CROSS_MEMORY_ATTACH=n): kvmffi's mappings then access "
                     "guest memory directly, and a bad page would be SIGBUS (the kvmffi test kernels have it)")


def test_mmap_without_mmap_flag_fails(vm, gmem_factory) -> None:
    """Without GUEST_MEMFD_FLAG_MMAP: mmap of one page and of the whole file fail with ENODEV."""
    g = gmem_factory(vm, SIZE, 0)
    for length in (PAGE_SIZE, SIZE):
        with pytest.raises(KvmError) as ei:
            g.mmap(length)
        assert ei.value.errno == errno.ENODEV, f"mmap({length:#x}) without MMAP flag: {ei.value}"


@pytest.mark.needs_gmem_flags(MMAP)
def test_map_private_fails(vm, gmem_factory) -> None:
    """guest_memfd has no copy-on-write: MAP_PRIVATE is EINVAL, for every advertised flag set with MMAP."""
    have = vm.guest_memfd_flags()
    for flags in (MMAP, SHARED):
        if flags & have != flags:
            continue
        g = gmem_factory(vm, SIZE, flags)
        with pytest.raises(KvmError) as ei:
            g.mmap(shared=False)
        assert ei.value.errno == errno.EINVAL, f"mmap(MAP_PRIVATE) of a guest_memfd with {flags}: {ei.value}"


@pytest.mark.needs_gmem_flags(SHARED)
def test_init_shared_write_read_punch(vm, gmem_factory) -> None:
    """Write/read back the whole mapping; PUNCH_HOLE of page 0 reads back zeros, the rest intact."""
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap() as m:
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(SIZE))
        m[:] = pattern
        assert m[:] == pattern
        g.punch_hole(0, PAGE_SIZE)
        assert m[:PAGE_SIZE] == bytes(PAGE_SIZE)
        assert m[PAGE_SIZE:] == pattern[PAGE_SIZE:]
        m[:PAGE_SIZE] = b"\xaa" * PAGE_SIZE
        assert m[:PAGE_SIZE] == b"\xaa" * PAGE_SIZE


@pytest.mark.needs_gmem_flags(SHARED)
def test_data_survives_unmap_and_remap(vm, gmem_factory) -> None:
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap() as m:
        m[100:104] = b"kvm!"
    with g.mmap(PAGE_SIZE, PAGE_SIZE) as m2:
        m2[0:4] = b"page"
    with g.mmap() as m3:
        assert m3[100:104] == b"kvm!" and m3[PAGE_SIZE:PAGE_SIZE + 4] == b"page"


@pytest.mark.needs_gmem_flags(MMAP)
@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_mmap_without_init_shared_sigbus(vm, gmem_factory, write: bool) -> None:
    """MMAP without INIT_SHARED: memory starts private, so any host access is SIGBUS."""
    g = gmem_factory(vm, SIZE, MMAP)
    with g.mmap() as m:
        for off in (0, SIZE - 1):
            r = run_in_child(partial(touch, m, off, write))
            assert r.signal == signal.SIGBUS, f"{'write' if write else 'read'} at {off:#x}: child {r}"


@pytest.mark.needs_gmem_flags(SHARED)
@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_access_past_eof_sigbus(vm, gmem_factory, write: bool) -> None:
    """A mapping longer than the file: below EOF works, reads and writes at and after EOF are SIGBUS,
    and the file's bytes are untouched (guest_memfd_test's test_fault_overflow)."""
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap(4 * SIZE) as m:
        m[:SIZE] = b"\xaa" * SIZE
        for off in (SIZE, SIZE + PAGE_SIZE, 4 * SIZE - 1):
            r = run_in_child(partial(touch, m, off, write))
            assert r.signal == signal.SIGBUS, f"{'write' if write else 'read'} at {off:#x} past EOF {SIZE:#x}: child {r}"
        assert run_in_child(lambda: touch(m, SIZE - 1, write)).exitcode == 0
        assert m[:SIZE - 1] == b"\xaa" * (SIZE - 1)


MADV_COLLAPSE = 25


@pytest.mark.needs_gmem_flags(SHARED)
def test_madvise(vm, gmem_factory) -> None:
    """MADV_HUGEPAGE succeeds, MADV_COLLAPSE answers as kernels.py records ("gmem_madv_collapse":
    EINVAL through 7.3), MADV_DONTNEED keeps the data (file-backed)."""
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap() as m:
        m[:4] = b"abcd"
        m.madvise(mmap.MADV_HUGEPAGE)
        expect_answer(behaviour("gmem_madv_collapse"), "MADV_COLLAPSE on the mapping", m.madvise, MADV_COLLAPSE)
        m.madvise(mmap.MADV_DONTNEED)
        assert m[:4] == b"abcd"


@pytest.mark.needs_gmem_flags(SHARED)
def test_collapse_then_mlock_keeps_the_data(vm, gmem_factory) -> None:
    """A MMAP|INIT_SHARED mapping with MADV_HUGEPAGE, every page written, MADV_COLLAPSE (EINVAL on
    kernels whose guest_memfd has no huge folios, through 7.3), then mlock of the whole mapping:
    mlock succeeds, every page keeps its byte, and the kernel logs nothing (the gate; a WARN in the
    fault path was reported on 6.19-rc8 for this sequence)."""
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap() as m:
        m.madvise(mmap.MADV_HUGEPAGE)
        for page in range(SIZE // PAGE_SIZE):
            m[page * PAGE_SIZE] = page & 0xFF or 0x5A
        expect_answer(behaviour("gmem_madv_collapse"), "MADV_COLLAPSE on the mapping", m.madvise, MADV_COLLAPSE)
        m.mlock()
        try:
            got = [m[page * PAGE_SIZE] for page in range(SIZE // PAGE_SIZE)]
        finally:
            m.mlock(False)
    assert got == [page & 0xFF or 0x5A for page in range(SIZE // PAGE_SIZE)]


@pytest.mark.numa
@pytest.mark.needs_gmem_flags(SHARED)
@pytest.mark.parametrize("policy", ["interleave", "bind", "default", "invalid"])
def test_numa_mbind_round_trip(vm, gmem_factory, policy: str) -> None:
    """behaviour 24: mbind on a guest_memfd mapping round-trips through get_mempolicy (>= 2 NUMA nodes)."""
    from kvmffi import numa
    nodes = numa.online_nodes()
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap() as m:
        mask = (1 << nodes[0]) | (1 << nodes[1])
        if policy == "invalid":
            assert numa.mbind(m.addr, SIZE, 99, mask) == errno.EINVAL
            return
        mode = {"interleave": numa.MPOL_INTERLEAVE, "bind": numa.MPOL_BIND, "default": numa.MPOL_DEFAULT}[policy]
        assert numa.mbind(m.addr, SIZE, mode, 0 if mode == numa.MPOL_DEFAULT else mask) == 0
        got_mode, got_mask = numa.get_mempolicy_addr(m.addr)
        assert got_mode == mode
        if mode != numa.MPOL_DEFAULT:
            assert got_mask == mask


@pytest.mark.numa
@pytest.mark.needs_gmem_flags(SHARED)
def test_numa_policy_decides_node(vm, gmem_factory) -> None:
    """behaviour 25: a BIND policy set before allocation decides where each page lands; one set after
    allocation moves nothing until the pages are punched and allocated again (>= 2 NUMA nodes)."""
    from kvmffi import numa
    nodes = numa.online_nodes()
    g = gmem_factory(vm, SIZE, SHARED)
    half, n = SIZE // 2, SIZE // PAGE_SIZE
    a, b = nodes[:2]
    with g.mmap() as m:
        for node in (a, b):
            g.punch_hole(0, SIZE)
            assert numa.mbind(m.addr, SIZE, numa.MPOL_BIND, 1 << node) == 0
            m[:] = b"\x01" * SIZE
            assert numa.page_nodes(m.addr, n) == [node] * n
        # per page: the first half bound to one node, the second to the other (guest_memfd_test)
        g.punch_hole(0, SIZE)
        assert numa.mbind(m.addr, half, numa.MPOL_BIND, 1 << a) == 0
        assert numa.mbind(m.addr + half, half, numa.MPOL_BIND, 1 << b) == 0
        m[:] = b"\x02" * SIZE
        assert numa.page_nodes(m.addr, n) == [a] * (n // 2) + [b] * (n // 2)
        # a policy changed after allocation (without MPOL_MF_MOVE) leaves the pages where they are
        assert numa.mbind(m.addr, SIZE, numa.MPOL_BIND, 1 << b) == 0
        assert numa.page_nodes(m.addr, n) == [a] * (n // 2) + [b] * (n // 2)
        # punch and touch again: they are allocated where the new policy says
        g.punch_hole(0, SIZE)
        m[:] = b"\x03" * SIZE
        assert numa.page_nodes(m.addr, n) == [b] * n


@pytest.mark.needs_gmem_flags(MMAP)
def test_host_access_to_private_memory_raises_instead_of_killing(vm, gmem_factory) -> None:
    """behaviour 77: the host touching private guest_memfd memory through kvmffi's mapping gets
    HostMemoryFault (EFAULT, with the offset) and the test process lives on; the same access done
    directly is SIGBUS (the test above, in a child)."""
    need_guard()
    g = gmem_factory(vm, SIZE, MMAP)
    with g.mmap() as m:
        with pytest.raises(HostMemoryFault) as ei:
            _ = m[PAGE_SIZE]
        assert (ei.value.errno, ei.value.offset, ei.value.write) == (errno.EFAULT, PAGE_SIZE, False)
        assert ei.value.address == m.addr + PAGE_SIZE
        with pytest.raises(HostMemoryFault) as ei:
            m[0:8] = b"12345678"
        assert (ei.value.errno, ei.value.offset, ei.value.write) == (errno.EFAULT, 0, True)


@pytest.mark.needs_gmem_flags(SHARED)
def test_guarded_access_stops_at_eof(vm, gmem_factory) -> None:
    """A write straddling the end of the file lands below EOF and faults at EOF exactly."""
    need_guard()
    g = gmem_factory(vm, SIZE, SHARED)
    with g.mmap(2 * SIZE) as m:
        with pytest.raises(HostMemoryFault) as ei:
            m[SIZE - 8:SIZE + 8] = b"\x11" * 16
        assert (ei.value.offset, ei.value.write) == (SIZE, True)
        assert m[SIZE - 8:SIZE] == b"\x11" * 8
        with pytest.raises(HostMemoryFault) as ei:
            _ = m[SIZE - 8:SIZE + 8]
        assert (ei.value.offset, ei.value.write) == (SIZE, False)
