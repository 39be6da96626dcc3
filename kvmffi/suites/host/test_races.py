"""Operations KVM must serialize, run at the same time in loops (behaviours: races).

Each round starts both operations together (a barrier), and checks what both answered and what is
left; a kernel that gets the serialization wrong mostly shows it in its log (KASAN, lockdep, a
WARN), which the kernel-log gate turns into a failure of the test: run them in the debug kernel
(`kvmffi run --kernel 7.3-debug host/test_races.py`) to see use-after-frees.
"""

import threading

import pytest

from kvmffi import MemslotFlag, Vm, memory

GMEM = MemslotFlag.GUEST_MEMFD
TEST_GPA = 1 << 32
SIZE = 2 << 20
ROUNDS = 200


def _together(a, b) -> list[BaseException]:
    """Run ``a`` here and ``b`` in a thread, released at the same moment; their exceptions."""
    errors: list[BaseException] = []
    go = threading.Barrier(2, timeout=30)

    def other() -> None:
        try:
            go.wait()
            b()
        except BaseException as e:  # noqa: BLE001 (reported to the test)
            errors.append(e)

    t = threading.Thread(target=other, name="kvmffi-race")
    t.start()
    try:
        go.wait()
        a()
    except BaseException as e:  # noqa: BLE001
        errors.append(e)
    finally:
        t.join(timeout=60)
    assert not t.is_alive(), "the racing thread did not finish within 60 s"
    return errors


def test_memslot_delete_races_last_guest_memfd_close(vm: Vm, gmem_factory) -> None:
    """A guest_memfd slot is deleted while another thread closes the guest_memfd's last fd: both
    succeed, the slot is gone, and the slot number binds again; KVM must drop the binding even when
    the file is already dying ("KVM: guest_memfd: Remove bindings on memslot deletion when gmem is
    dying", ae431059e75d, CVE-2025-40274, v6.18; stable 6.12.59; before it, a use-after-free in
    kvm_gmem_release that KASAN reports)."""
    with memory.anonymous(SIZE) as host:
        for i in range(ROUNDS):
            g = gmem_factory(vm, SIZE)
            vm.set_user_memory_region2(0, TEST_GPA, SIZE, host.addr, GMEM, g, 0)
            errors = _together(lambda: vm.delete_memslot(0), g.close)
            if errors:
                pytest.fail(f"round {i}: {errors[0]!r}")
            assert 0 not in vm.memslots and g.closed
        last = gmem_factory(vm, SIZE)
        vm.set_user_memory_region2(0, TEST_GPA, SIZE, host.addr, GMEM, last, 0)
