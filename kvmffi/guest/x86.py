"""x86-64 bring-up: 4-level page tables, GDT and TSS, an IDT, long-mode special registers."""

from __future__ import annotations

import struct
from typing import Any

PAGE = 4096
HUGE_2M = 2 << 20

# Low memory layout (GPA == GVA); page 0 stays unmapped so NULL dereferences fault.
GDT_GPA = 0x1000
TSS_GPA = 0x1100
IDT_GPA = 0x2000
PT_POOL_GPA = 0x10000
PT_POOL_END = 0x100000
IMAGE_GPA = 0x100000

SEL_CODE = 0x08
SEL_DATA = 0x10
SEL_TSS = 0x18

PTE_P = 1 << 0
PTE_W = 1 << 1
PTE_PS = 1 << 7

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_LME, EFER_LMA = 1 << 8, 1 << 10

VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
                10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC",
                19: "#XM", 20: "#VE", 21: "#CP", 29: "#VC", 30: "#SX"}


class PageTables:
    """Builds identity (or any) mappings into a page-table pool in guest memory.

    ``write(gpa, bytes)`` and ``read(gpa, n)`` access guest physical memory.
    Only what is mapped is reachable: anything else faults in the guest.
    """

    def __init__(self, mem: Any, pool_start: int = PT_POOL_GPA, pool_end: int = PT_POOL_END) -> None:
        self.mem = mem
        self.next = pool_start
        self.end = pool_end
        self._child: dict[tuple[int, int], int] = {}  # (table, index) -> next-level table
        self.pml4 = self._alloc()

    def _alloc(self) -> int:
        if self.next >= self.end:
            raise MemoryError(f"guest page-table pool [{PT_POOL_GPA:#x}, {self.end:#x}) is full: map less, "
                              "or map test memory with 2 MiB pages (page_size=2 << 20)")
        p = self.next
        self.next += PAGE
        self.mem.write(p, bytes(PAGE))
        return p

    def _entry(self, table: int, index: int) -> int:
        return int(struct.unpack_from("<Q", self.mem.read(table + 8 * index, 8))[0])

    def _set(self, table: int, index: int, val: int) -> None:
        self.mem.write(table + 8 * index, struct.pack("<Q", val))

    def _next_table(self, table: int, index: int) -> int:
        t = self._child.get((table, index))
        if t is not None:
            return t
        e = self._entry(table, index)
        if e & PTE_P:
            if e & PTE_PS:
                raise ValueError("cannot map a 4 KiB page inside an existing 2 MiB mapping")
            t = e & 0x000FFFFFFFFFF000
        else:
            t = self._alloc()
            self._set(table, index, t | PTE_P | PTE_W)
        self._child[(table, index)] = t
        return t

    def map(self, gva: int, gpa: int, size: int, page_size: int = PAGE, writable: bool = True) -> None:
        """Map [gva, gva+size) to [gpa, ...) with 4 KiB or 2 MiB pages."""
        if page_size not in (PAGE, HUGE_2M):
            raise ValueError("page_size must be 4 KiB or 2 MiB")
        if gva % page_size or gpa % page_size or size % page_size:
            raise ValueError(f"map({gva:#x}, {gpa:#x}, {size:#x}) is not aligned to page size {page_size:#x}")
        flags = PTE_P | (PTE_W if writable else 0) | (PTE_PS if page_size == HUGE_2M else 0)
        level_shift = 21 if page_size == HUGE_2M else 12
        span = 512 << level_shift  # what one last-level table covers
        off = 0
        while off < size:
            va = gva + off
            n = min((span - va % span) >> level_shift, (size - off) >> level_shift)
            pdpt = self._next_table(self.pml4, (va >> 39) & 511)
            table = self._next_table(pdpt, (va >> 30) & 511)
            if page_size == PAGE:
                table = self._next_table(table, (va >> 21) & 511)
            first = (va >> level_shift) & 511
            pa = gpa + off
            step = 1 << level_shift
            self.mem.write(table + 8 * first, struct.pack(f"<{n}Q", *(pa + i * step | flags for i in range(n))))
            off += n << level_shift

    def snapshot(self) -> tuple[bytes, int, dict[tuple[int, int], int], int]:
        """The pool's used pages and bookkeeping, to rebuild identical tables with :meth:`restore`."""
        start = self.pml4
        return bytes(self.mem.read(start, self.next - start)), self.next, dict(self._child), start

    @classmethod
    def restore(cls, mem: Any, snap: tuple[bytes, int, dict[tuple[int, int], int], int]) -> PageTables:
        data, nxt, child, start = snap
        pt = cls.__new__(cls)
        pt.mem, pt.next, pt.end, pt._child, pt.pml4 = mem, nxt, PT_POOL_END, dict(child), start
        mem.write(start, data)
        return pt

    def unmap_page(self, gva: int) -> None:
        pdpt = self._entry(self.pml4, (gva >> 39) & 511) & 0x000FFFFFFFFFF000
        pd = self._entry(pdpt, (gva >> 30) & 511) & 0x000FFFFFFFFFF000
        pt = self._entry(pd, (gva >> 21) & 511) & 0x000FFFFFFFFFF000
        self._set(pt, (gva >> 12) & 511, 0)


def _gdt_entry(base: int, limit: int, access: int, flags: int) -> bytes:
    return struct.pack("<HHBBBB", limit & 0xFFFF, base & 0xFFFF, (base >> 16) & 0xFF, access,
                       ((limit >> 16) & 0xF) | (flags << 4), (base >> 24) & 0xFF)


def write_descriptor_tables(mem: Any, stubs: int) -> None:
    """GDT (null, code64, data, TSS) at GDT_GPA, a TSS, and an IDT whose vectors 0-31 go to the stubs."""
    gdt = bytearray()
    gdt += bytes(8)
    gdt += _gdt_entry(0, 0xFFFFF, 0x9B, 0xA)    # code: P, DPL0, S, exec/read; G, L
    gdt += _gdt_entry(0, 0xFFFFF, 0x93, 0xC)    # data: P, DPL0, S, read/write; G, DB
    gdt += _gdt_entry(TSS_GPA, 0x67, 0x8B, 0)   # 64-bit TSS (busy), low half
    gdt += struct.pack("<II", TSS_GPA >> 32, 0)  # high half
    mem.write(GDT_GPA, bytes(gdt))
    mem.write(TSS_GPA, bytes(0x68))
    idt = bytearray(256 * 16)
    for vec in range(32):
        h = stubs + 16 * vec
        struct.pack_into("<HHBBHII", idt, vec * 16, h & 0xFFFF, SEL_CODE, 0, 0x8E, (h >> 16) & 0xFFFF, h >> 32, 0)
    mem.write(IDT_GPA, bytes(idt))


def setup_long_mode(sregs: Any, cr3: int) -> None:
    """Fill a kvmffi Sregs for 64-bit long mode with our GDT, IDT and TSS."""
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.efer = EFER_LME | EFER_LMA
    sregs.cr3 = cr3
    cs = sregs.cs
    cs.base, cs.limit, cs.selector, cs.type, cs.present, cs.dpl, cs.db, cs.s, cs.l, cs.g, cs.avl, cs.unusable = \
        0, 0xFFFFFFFF, SEL_CODE, 0xB, 1, 0, 0, 1, 1, 1, 0, 0
    for name in ("ds", "es", "fs", "gs", "ss"):
        s = getattr(sregs, name)
        s.base, s.limit, s.selector, s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable = \
            0, 0xFFFFFFFF, SEL_DATA, 0x3, 1, 0, 1, 1, 0, 1, 0, 0
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type, tr.present, tr.dpl, tr.db, tr.s, tr.l, tr.g, tr.avl, tr.unusable = \
        TSS_GPA, 0x67, SEL_TSS, 0xB, 1, 0, 0, 0, 0, 0, 0, 0
    sregs.gdt.base, sregs.gdt.limit = GDT_GPA, 5 * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_GPA, 256 * 16 - 1
