"""fallocate and PUNCH_HOLE on a guest_memfd (behaviour 13-16, and that punching frees memory)."""

import errno

import pytest

from kvmffi import PAGE_SIZE, errno_of
from kvmffi.guest_memfd import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from kvmffi.testing import expect_errno

SIZE = 4 * PAGE_SIZE


@pytest.fixture
def gmem(vm, gmem_factory, gmem_flags):
    return gmem_factory(vm, SIZE, gmem_flags)


def test_allocate_whole_file(gmem) -> None:
    gmem.allocate(0, SIZE)


def test_allocate_at_and_beyond_size_fails(gmem) -> None:
    expect_errno(errno.EINVAL, "fallocate at offset == size", gmem.allocate, SIZE, PAGE_SIZE)
    expect_errno(errno.EINVAL, "fallocate beyond size", gmem.allocate, SIZE + PAGE_SIZE, PAGE_SIZE)
    expect_errno(errno.EINVAL, "fallocate straddling size", gmem.allocate, 0, SIZE + PAGE_SIZE)


def test_allocate_needs_keep_size(gmem) -> None:
    """guest_memfd cannot grow: fallocate without FALLOC_FL_KEEP_SIZE is EOPNOTSUPP."""
    expect_errno(errno.EOPNOTSUPP, "fallocate(mode=0)", gmem.fallocate, 0, 0, PAGE_SIZE)


def test_punch_hole_at_and_beyond_size_is_noop(gmem) -> None:
    gmem.punch_hole(SIZE, PAGE_SIZE)
    gmem.punch_hole(SIZE + PAGE_SIZE, PAGE_SIZE)
    gmem.punch_hole(PAGE_SIZE, 1 << 30)
    assert gmem.stat().st_size == SIZE


UNALIGNED = [(0, 1), (0, PAGE_SIZE - 1), (0, PAGE_SIZE + 1), (1, 1), (1, PAGE_SIZE - 1), (1, PAGE_SIZE),
             (1, PAGE_SIZE + 1), (PAGE_SIZE - 1, 1), (PAGE_SIZE - 1, PAGE_SIZE), (PAGE_SIZE + 1, PAGE_SIZE)]


@pytest.mark.parametrize("offset,length", UNALIGNED, ids=[f"{o:#x}+{n:#x}" for o, n in UNALIGNED])
def test_unaligned_punch_hole_and_allocate_fail(gmem, offset: int, length: int) -> None:
    expect_errno(errno.EINVAL, f"PUNCH_HOLE at offset {offset:#x} len {length:#x}", gmem.punch_hole, offset, length)
    expect_errno(errno.EINVAL, f"fallocate at offset {offset:#x} len {length:#x}", gmem.allocate, offset, length)


def test_punch_then_reallocate(gmem) -> None:
    gmem.allocate(0, SIZE)
    gmem.punch_hole(0, PAGE_SIZE)
    gmem.allocate(0, PAGE_SIZE)
    gmem.punch_hole(0, SIZE)
    gmem.allocate(0, SIZE)


def test_unknown_mode_bits_fail(gmem) -> None:
    """Only KEEP_SIZE and PUNCH_HOLE: COLLAPSE_RANGE (0x08), ZERO_RANGE (0x10) etc. are EOPNOTSUPP."""
    for mode in (0x08, 0x10, 0x20, 0x40):
        expect_errno(errno.EOPNOTSUPP, f"fallocate(mode={mode:#x})", gmem.fallocate,
                     mode | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE)
    assert errno_of(gmem.fallocate, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, PAGE_SIZE) == 0


def _unevictable_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Unevictable:"):
                return int(line.split()[1])
    raise AssertionError("no Unevictable line in /proc/meminfo")


def test_allocate_and_punch_hole_move_real_memory(vm, gmem_factory, gmem_flags) -> None:
    """Allocating 64 MiB takes that much unevictable memory; punching it gives it back.

    st_blocks cannot tell: kernels through 7.3 do not account guest_memfd pages in i_blocks
    (it stays 0; a kernel that starts accounting them would show the whole size), so the
    check reads /proc/meminfo's Unevictable, where guest_memfd pages live. Tolerance: 12.5%
    for other activity on the machine.
    """
    size = 64 << 20
    g = gmem_factory(vm, size, gmem_flags)
    before = _unevictable_kib()
    g.allocate(0, size)
    allocated = _unevictable_kib() - before
    assert g.stat().st_blocks in (0, size // 512), f"st_blocks {g.stat().st_blocks} after allocating {size:#x}"
    g.punch_hole(0, size)
    freed = before + allocated - _unevictable_kib()
    want = (size >> 10) * 7 // 8
    assert allocated >= want, f"fallocate of 64 MiB raised Unevictable by only {allocated} KiB"
    assert freed >= want, f"PUNCH_HOLE of 64 MiB gave back only {freed} KiB of {allocated} KiB"
