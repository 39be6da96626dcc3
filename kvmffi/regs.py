"""x86 vCPU registers as KVM_GET_REGS / KVM_GET_SREGS give them (struct kvm_regs, struct
kvm_sregs, struct kvm_segment, struct kvm_dtable: arch/x86/include/uapi/asm/kvm.h), as plain
dataclasses, and the field orders the packers in kvmffi._structs follow."""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter


@dataclass(slots=True)
class Regs:
    """General-purpose registers (struct kvm_regs)."""

    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = 0

    def __str__(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name):#x}" for f in fields(self))


REG_NAMES = tuple(f.name for f in fields(Regs))
regs_values = attrgetter(*REG_NAMES)


@dataclass(slots=True)
class Segment:
    """struct kvm_segment."""

    base: int = 0
    limit: int = 0
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 (the kernel's name)
    g: int = 0
    avl: int = 0
    unusable: int = 0


SEG_FIELDS = tuple(f.name for f in fields(Segment))
segment_values = attrgetter(*SEG_FIELDS)


@dataclass(slots=True)
class DTable:
    """struct kvm_dtable (GDTR / IDTR)."""

    base: int = 0
    limit: int = 0


SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
CRS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")
segments = attrgetter(*SEGMENTS)
cr_values = attrgetter(*CRS)


@dataclass(slots=True)
class Sregs:
    """Special registers (struct kvm_sregs)."""

    cs: Segment
    ds: Segment
    es: Segment
    fs: Segment
    gs: Segment
    ss: Segment
    tr: Segment
    ldt: Segment
    gdt: DTable
    idt: DTable
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0
    apic_base: int = 0
    interrupt_bitmap: tuple[int, int, int, int] = (0, 0, 0, 0)

    def __str__(self) -> str:
        return (f"cr0={self.cr0:#x} cr2={self.cr2:#x} cr3={self.cr3:#x} cr4={self.cr4:#x} efer={self.efer:#x} "
                f"cs={self.cs.selector:#x}(l={self.cs.l}) gdt={self.gdt.base:#x}/{self.gdt.limit:#x} "
                f"idt={self.idt.base:#x}/{self.idt.limit:#x}")
