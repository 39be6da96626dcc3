"""Struct sizes, field offsets and ioctl numbers against the uAPI facts, and the struct.Struct fast
paths against the declarations, byte for byte (no /dev/kvm needed)."""

from typing import Any

import pytest

from kvmffi import _cdef, _ffi, _ioctls, _structs

SIZES = {
    "struct kvm_userspace_memory_region": 32,
    "struct kvm_userspace_memory_region2": 160,
    "struct kvm_create_guest_memfd": 64,
    "struct kvm_memory_attributes": 32,
    "struct kvm_pre_fault_memory": 64,
    "struct kvm_enable_cap": 104,
    "struct kvm_regs": 144,
    "struct kvm_segment": 24,
    "struct kvm_dtable": 16,
    "struct kvm_sregs": 312,
    "struct kvm_run_io": 16,
    "struct kvm_run_mmio": 24,
    "struct kvm_run_hypercall": 72,
    "struct kvm_run_memory_fault": 24,
    "struct kvm_run_internal": 136,
    "struct kvm_run_system_event": 136,
    "struct kvm_cpuid_entry2": 40,
    "struct kvm_cpuid2": 8,
}


@pytest.mark.parametrize("struct,size", SIZES.items(), ids=[s.split()[1] for s in SIZES])
def test_struct_size(struct: str, size: int) -> None:
    assert _cdef.sizeof(struct) == size


OFFSETS = [
    ("struct kvm_userspace_memory_region2", "guest_phys_addr", 8),
    ("struct kvm_userspace_memory_region2", "memory_size", 16),
    ("struct kvm_userspace_memory_region2", "userspace_addr", 24),
    ("struct kvm_userspace_memory_region2", "guest_memfd_offset", 32),
    ("struct kvm_userspace_memory_region2", "guest_memfd", 40),
    ("struct kvm_userspace_memory_region2", "pad2", 48),
    ("struct kvm_create_guest_memfd", "flags", 8),
    ("struct kvm_create_guest_memfd", "reserved", 16),
    ("struct kvm_memory_attributes", "attributes", 16),
    ("struct kvm_memory_attributes", "flags", 24),
    ("struct kvm_pre_fault_memory", "flags", 16),
    ("struct kvm_enable_cap", "args", 8),
    ("struct kvm_enable_cap", "pad", 40),
    ("struct kvm_regs", "rip", 128),
    ("struct kvm_regs", "rflags", 136),
    ("struct kvm_segment", "selector", 12),
    ("struct kvm_segment", "type", 14),
    ("struct kvm_segment", "l", 19),
    ("struct kvm_segment", "unusable", 22),
    ("struct kvm_sregs", "tr", 144),
    ("struct kvm_sregs", "gdt", 192),
    ("struct kvm_sregs", "idt", 208),
    ("struct kvm_sregs", "cr0", 224),
    ("struct kvm_sregs", "cr3", 240),
    ("struct kvm_sregs", "efer", 264),
    ("struct kvm_sregs", "apic_base", 272),
    ("struct kvm_sregs", "interrupt_bitmap", 280),
    ("struct kvm_run", "immediate_exit", 1),
    ("struct kvm_run", "exit_reason", 8),
    ("struct kvm_run", "flags", 14),
    ("struct kvm_run", "cr8", 16),
    ("struct kvm_run", "apic_base", 24),
    ("struct kvm_run", "io", 32),
    ("struct kvm_run", "kvm_valid_regs", 288),
    ("struct kvm_run", "s", 304),
    ("struct kvm_run_io", "port", 2),
    ("struct kvm_run_io", "count", 4),
    ("struct kvm_run_io", "data_offset", 8),
    ("struct kvm_run_mmio", "data", 8),
    ("struct kvm_run_mmio", "len", 16),
    ("struct kvm_run_mmio", "is_write", 20),
    ("struct kvm_run_hypercall", "args", 8),
    ("struct kvm_run_hypercall", "ret", 56),
    ("struct kvm_run_hypercall", "flags", 64),
    ("struct kvm_run_memory_fault", "gpa", 8),
    ("struct kvm_run_memory_fault", "size", 16),
    ("struct kvm_run_system_event", "data", 8),
    ("struct kvm_run_fail_entry", "cpu", 8),
]


@pytest.mark.parametrize("struct,field,offset", OFFSETS, ids=[f"{s.split()[1]}.{f}" for s, f, _ in OFFSETS])
def test_field_offset(struct: str, field: str, offset: int) -> None:
    assert _cdef.offsetof(struct, field) == offset


IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00,
    "KVM_CREATE_VM": 0xAE01,
    "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
    "KVM_CREATE_VCPU": 0xAE41,
    "KVM_SET_NR_MMU_PAGES": 0xAE44,
    "KVM_RUN": 0xAE80,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
    "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_CREATE_GUEST_MEMFD": 0xC040AED4,
    "KVM_SET_MEMORY_ATTRIBUTES": 0x4020AED2,
    "KVM_PRE_FAULT_MEMORY": 0xC040AED5,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
    "KVM_SET_CPUID2": 0x4008AE90,
    "KVM_ENABLE_CAP": 0x4068AEA3,
    "KVM_GET_REGS": 0x8090AE81,
    "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83,
    "KVM_SET_SREGS": 0x4138AE84,
}


@pytest.mark.parametrize("name,number", IOCTLS.items(), ids=list(IOCTLS))
def test_ioctl_number(name: str, number: int) -> None:
    assert getattr(_ioctls, name) == number, f"{name} = {getattr(_ioctls, name):#x}, expected {number:#x}"


def test_every_ioctl_is_checked() -> None:
    assert set(_ioctls.IOCTL_NAMES.values()) == set(IOCTLS)


def test_negative_values_are_stored_as_twos_complement() -> None:
    t = _cdef.ffi.typeof("struct kvm_create_guest_memfd")
    assert _ffi._fit(t, {"size": -4096})["size"] == (1 << 64) - 4096
    t2 = _cdef.ffi.typeof("struct kvm_userspace_memory_region2")
    assert _ffi._fit(t2, {"slot": -1, "guest_memfd": 1 << 40})["slot"] == 0xFFFFFFFF
    assert _ffi._fit(t2, {"guest_memfd": (1 << 32) + 5})["guest_memfd"] == 5


@pytest.mark.parametrize("row", _ioctls.IOCTLS.values(), ids=list(_ioctls.IOCTLS))
def test_ioctl_row_matches_its_number(row: _ioctls.Ioctl) -> None:
    """The size field of the number is the row's struct's, the type is KVMIO, the fd kind is one of three."""
    assert (row.number >> 16) & 0x3FFF == (_cdef.sizeof(row.struct) if row.struct else 0)
    assert (row.number >> 8) & 0xFF == _ioctls.KVMIO
    assert row.fd in ("system", "vm", "vcpu")
    assert row.cap is None or row.cap == "basic" or row.cap.startswith("KVM_CAP_")


def _leaves(ctype: Any) -> list[Any]:
    """The struct's scalar fields in memory order, nested structs and arrays flattened, without the
    padding fields (struct.Struct skips those with ``x``)."""
    if ctype.kind == "struct":
        return [leaf for name, f in ctype.fields if not name.startswith("pad") for leaf in _leaves(f.type)]
    if ctype.kind == "array":
        return _leaves(ctype.item) * ctype.length
    return [ctype]


def _set_leaves(p: Any, ctype: Any, values: list[int]) -> None:
    """Set the fields of cdata ``p`` (of ``ctype``) from ``values`` in :func:`_leaves` order."""
    for name, f in ctype.fields:
        if name.startswith("pad"):
            continue
        t = f.type
        if t.kind == "struct":
            _set_leaves(getattr(p, name), t, values)
        elif t.kind == "array":
            arr = getattr(p, name)
            for i in range(t.length):
                if t.item.kind == "struct":
                    _set_leaves(arr[i], t.item, values)
                else:
                    arr[i] = values.pop(0)
        else:
            setattr(p, name, values.pop(0))


@pytest.mark.parametrize("struct", _structs.LAYOUTS, ids=[s.split()[1] for s in _structs.LAYOUTS])
def test_struct_layout_matches_declaration(struct: str) -> None:
    """Every field packed through the struct.Struct lands where the declaration puts it: each field
    gets its own bytes (a running counter), packed both ways, compared byte for byte."""
    ffi = _cdef.ffi
    t = ffi.typeof(struct)
    leaves = _leaves(t)
    layout = _structs.LAYOUTS[struct]
    assert len(leaves) == len(layout.unpack(bytes(layout.size))), f"{struct}: field count differs from its layout"
    values, counter = [], 0
    for leaf in leaves:
        n = ffi.sizeof(leaf)
        raw = bytes((counter + i) % 255 + 1 for i in range(n))
        counter += n
        values.append(int.from_bytes(raw, "little"))
    p = ffi.new(struct + " *")
    _set_leaves(p[0], t, list(values))
    assert layout.pack(*values) == bytes(ffi.buffer(p)), f"{struct}: struct.Struct and the declaration disagree"


def test_every_ioctl_an_error_names_is_a_row_of_the_table() -> None:
    """KvmError names its ioctl by a string at each call site: each such name must be a row of
    kvmffi._ioctls, so a misspelt name cannot reach a user's report."""
    import ast
    from pathlib import Path

    from kvmffi._ioctls import IOCTLS
    root = Path(__file__).resolve().parents[2] / "kvmffi"
    named = {}
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            name = node.args[0].value
            if fn in ("KvmError", "VmDeadError", "_error", "error") and isinstance(name, str) and name.startswith("KVM_"):
                named[name] = f"{f.relative_to(root)}:{node.lineno}"
    assert len(named) >= 15, named
    unknown = {n: where for n, where in named.items() if n not in IOCTLS}
    assert not unknown, f"ioctl names not in kvmffi._ioctls: {unknown}"
