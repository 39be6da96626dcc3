"""Check the bindings against a kernel's exported uAPI headers (``make headers_install``).

``kvmffi check-headers DIR`` compiles a small C program against ``DIR/linux/kvm.h`` that prints
the size and key field offsets of every struct kvmffi declares, every ioctl number, and every
capability, exit reason, VM type and flag number kvmffi's enums name, then compares them with
kvmffi's own. Anything the headers do not define (older kernels lack
guest_memfd) is reported as absent, not as a mismatch.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _cdef, _ioctls
from .uapi import Cap, ExitReason, GuestMemfdFlag, MemoryAttribute, MemoryFaultFlag, MemslotFlag, VmType


def uapi_constants() -> dict[str, int]:
    """Every number kvmffi's enums give a kernel name, by that name (KVM_CAP_GUEST_MEMFD: 234, ...)."""
    out: dict[str, int] = {}
    for c in Cap:
        out[c.kernel_name] = int(c)
    for e in ExitReason:
        out[f"KVM_EXIT_{e.name}"] = int(e)
    for t in VmType:
        out[t.kernel_name] = int(t)
    for prefix, flags in (("KVM_MEM_", MemslotFlag), ("GUEST_MEMFD_FLAG_", GuestMemfdFlag),
                          ("KVM_MEMORY_ATTRIBUTE_", MemoryAttribute), ("KVM_MEMORY_EXIT_FLAG_", MemoryFaultFlag)):
        for f in flags:
            out[f"{prefix}{f.name}"] = int(f)
    return out

# struct -> (the ioctl that proves the headers have it, fields to compare)
STRUCTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "kvm_userspace_memory_region": ("KVM_SET_USER_MEMORY_REGION", ("slot", "flags", "guest_phys_addr",
                                                                    "memory_size", "userspace_addr")),
    "kvm_userspace_memory_region2": ("KVM_SET_USER_MEMORY_REGION2", ("guest_phys_addr", "memory_size",
                                                                      "userspace_addr", "guest_memfd_offset",
                                                                      "guest_memfd", "pad2")),
    "kvm_create_guest_memfd": ("KVM_CREATE_GUEST_MEMFD", ("size", "flags", "reserved")),
    "kvm_memory_attributes": ("KVM_SET_MEMORY_ATTRIBUTES", ("address", "size", "attributes", "flags")),
    "kvm_pre_fault_memory": ("KVM_PRE_FAULT_MEMORY", ("gpa", "size", "flags", "padding")),
    "kvm_enable_cap": ("KVM_ENABLE_CAP", ("cap", "flags", "args", "pad")),
    "kvm_regs": ("KVM_GET_REGS", ("rax", "rdi", "rip", "rflags")),
    "kvm_sregs": ("KVM_GET_SREGS", ("cs", "tr", "ldt", "gdt", "idt", "cr0", "cr3", "efer", "apic_base",
                                    "interrupt_bitmap")),
    "kvm_segment": ("KVM_GET_SREGS", ("base", "limit", "selector", "type", "l", "unusable")),
    "kvm_cpuid2": ("KVM_SET_CPUID2", ("nent",)),
    "kvm_cpuid_entry2": ("KVM_SET_CPUID2", ("function", "index", "flags", "eax", "edx")),
    "kvm_run": ("KVM_RUN", ("immediate_exit", "exit_reason", "flags", "cr8", "apic_base", "io",
                            "kvm_valid_regs")),
}


@dataclass
class HeaderCheck:
    matched: list[str]
    mismatched: list[str]
    absent: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatched


def _program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>", "int main(void) {"]
    for name in sorted(_ioctls.IOCTL_NAMES.values()):
        lines += [f"#ifdef {name}", f'  printf("ioctl {name} %lu\\n", (unsigned long){name});', "#endif"]
    for name in sorted(uapi_constants()):
        lines += [f"#ifdef {name}", f'  printf("const {name} %llu\\n", (unsigned long long)({name}));', "#endif"]
    for struct, (guard, fields) in STRUCTS.items():
        lines.append(f"#ifdef {guard}")
        lines.append(f'  printf("size {struct} %zu\\n", sizeof(struct {struct}));')
        for f in fields:
            lines.append(f'  printf("offset {struct}.{f} %zu\\n", offsetof(struct {struct}, {f}));')
        lines.append("#endif")
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def check(include_dir: str | Path, cc: str = "gcc") -> HeaderCheck:
    """Compare against the headers under ``include_dir`` (the one holding linux/kvm.h)."""
    include_dir = Path(include_dir)
    if not (include_dir / "linux" / "kvm.h").exists():
        raise FileNotFoundError(f"no linux/kvm.h under {include_dir}: point at the usr/include of "
                                "`make headers_install INSTALL_HDR_PATH=...` (or /usr/include)")
    with tempfile.TemporaryDirectory(prefix="kvmffi-headers-") as tmp:
        src, exe = os.path.join(tmp, "check.c"), os.path.join(tmp, "check")
        Path(src).write_text(_program())
        r = subprocess.run([cc, "-nostdinc", "-isystem", str(include_dir), "-isystem", "/usr/include",
                            "-o", exe, src], capture_output=True, text=True)
        if r.returncode:
            r = subprocess.run([cc, "-I", str(include_dir), "-o", exe, src], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"compiling against {include_dir} failed:\n{r.stderr[-2000:]}")
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
    res = HeaderCheck([], [], [])
    consts = uapi_constants()
    seen = set()
    for line in out.splitlines():
        kind, name, value = line.split()
        v = int(value)
        if kind == "ioctl":
            ours = getattr(_ioctls, name)
        elif kind == "const":
            ours = consts[name]
        elif kind == "size":
            ours = _cdef.sizeof(f"struct {name}")
        else:
            struct, fld = name.split(".")
            ours = _cdef.offsetof(f"struct {struct}", fld)
        seen.add(name)
        (res.matched if ours == v else res.mismatched).append(
            f"{kind} {name} = {v:#x}" if ours == v else f"{kind} {name}: headers {v:#x}, kvmffi {ours:#x}")
    for name in sorted(_ioctls.IOCTL_NAMES.values()):
        if name not in seen:
            res.absent.append(f"ioctl {name}")
    for name in sorted(consts):
        if name not in seen:
            res.absent.append(f"const {name}")
    for struct in STRUCTS:
        if struct not in seen:
            res.absent.append(f"struct {struct}")
    return res
