"""KVM's own metadata for private memory is charged to the VMM's memory cgroup (behaviours: accounting).

KVM_SET_MEMORY_ATTRIBUTES keeps one xarray entry per 4 KiB page (virt/kvm/kvm_main.c
kvm_vm_set_mem_attributes; the xarray is XA_FLAGS_ACCOUNT and its nodes are allocated with
GFP_KERNEL_ACCOUNT since the ioctl's first version, v6.8): a VMM that marks 1 GiB private owns
about 2.3 MiB of xarray nodes (262144 entries, 64 to a 576-byte node; measured in 7.3: 2.25 MiB
of memory.current, all slab), and its cgroup pays for them. Needs cgroup v2 with the memory controller (the test
kernels).
"""

import json

import pytest

from kvmffi.cgroup import CgroupUnavailable, MemoryCgroup

pytestmark = pytest.mark.private

MiB = 1 << 20
GiB = 1 << 30

MARK_PRIVATE = """
from kvmffi import Kvm, MemoryAttribute
cur = lambda: int(open(os.path.join(CG, 'memory.current')).read())
with Kvm() as kvm, kvm.create_vm(P['vm_type']) as vm:
    before = cur()
    vm.set_memory_attributes(0, P['size'], MemoryAttribute.PRIVATE)
    after = cur()
print(json.dumps({'before': before, 'after': after}))
"""


def test_memory_attributes_are_charged_to_the_vmm_cgroup(vm_type) -> None:
    """Marking 1 GiB private (no memslot needed) raises the VMM's memory.current by at least 1 MiB:
    the attribute xarray is KVM memory allocated on the VMM's behalf (GFP_KERNEL_ACCOUNT)."""
    try:
        cg = MemoryCgroup()
    except CgroupUnavailable as e:
        pytest.skip(f"{e}: run in the test kernels (`kvmffi run --kernel 7.3 private`)")
    with cg:
        r = cg.run(MARK_PRIVATE, {"vm_type": int(vm_type), "size": GiB}, timeout=300)
        assert r.returncode == 0, f"the VMM child exited {r.returncode}:\n{r.stderr[-2000:]}"
        res = json.loads(r.stdout.strip().splitlines()[-1])
    charged = res["after"] - res["before"]
    assert charged >= MiB, (f"marking 1 GiB private charged {charged / MiB:.2f} MiB to the VMM's cgroup (the "
                            "attribute xarray alone is about 2.3 MiB)")
