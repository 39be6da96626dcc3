"""The KVM structs as the raw layer declares them to cffi, and the one FFI parsed from them.

Struct declarations are written from the KVM uAPI facts (include/uapi/linux/kvm.h),
not from the distro's headers, so the bindings work on a userspace whose headers are
older than the running kernel. ``_cffi.load`` parses them once per machine into the cache;
importing this module is what puts them there (``runner.prepare_test_kernel`` relies on it).
"""

from __future__ import annotations

from . import _cffi

CDEF = r"""
    /* --- memory regions ------------------------------------------------ */
    struct kvm_userspace_memory_region {          /* 32 bytes */
        uint32_t slot;
        uint32_t flags;
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
    };

    struct kvm_userspace_memory_region2 {         /* 160 bytes */
        uint32_t slot;
        uint32_t flags;
        uint64_t guest_phys_addr;
        uint64_t memory_size;
        uint64_t userspace_addr;
        uint64_t guest_memfd_offset;
        uint32_t guest_memfd;
        uint32_t pad1;
        uint64_t pad2[14];
    };

    struct kvm_create_guest_memfd {               /* 64 bytes */
        uint64_t size;
        uint64_t flags;
        uint64_t reserved[6];
    };

    struct kvm_memory_attributes {                /* 32 bytes */
        uint64_t address;
        uint64_t size;
        uint64_t attributes;
        uint64_t flags;
    };

    struct kvm_pre_fault_memory {                 /* 64 bytes */
        uint64_t gpa;
        uint64_t size;
        uint64_t flags;
        uint64_t padding[5];
    };

    struct kvm_enable_cap {                       /* 104 bytes */
        uint32_t cap;
        uint32_t flags;
        uint64_t args[4];
        uint8_t  pad[64];
    };

    /* --- registers (x86) ----------------------------------------------- */
    struct kvm_regs {                             /* 144 bytes */
        uint64_t rax, rbx, rcx, rdx;
        uint64_t rsi, rdi, rsp, rbp;
        uint64_t r8,  r9,  r10, r11;
        uint64_t r12, r13, r14, r15;
        uint64_t rip, rflags;
    };

    struct kvm_segment {                          /* 24 bytes */
        uint64_t base;
        uint32_t limit;
        uint16_t selector;
        uint8_t  type;
        uint8_t  present, dpl, db, s, l, g, avl;
        uint8_t  unusable;
        uint8_t  padding;
    };

    struct kvm_dtable {                           /* 16 bytes */
        uint64_t base;
        uint16_t limit;
        uint16_t padding[3];
    };

    struct kvm_sregs {                            /* 312 bytes */
        struct kvm_segment cs, ds, es, fs, gs, ss;
        struct kvm_segment tr, ldt;
        struct kvm_dtable gdt, idt;
        uint64_t cr0, cr2, cr3, cr4, cr8;
        uint64_t efer;
        uint64_t apic_base;
        uint64_t interrupt_bitmap[4];
    };

    /* --- CPUID ------------------------------------------------------------ */
    struct kvm_cpuid_entry2 {                     /* 40 bytes */
        uint32_t function;
        uint32_t index;
        uint32_t flags;
        uint32_t eax, ebx, ecx, edx;
        uint32_t padding[3];
    };

    struct kvm_cpuid2 {                           /* 8 bytes + nent entries */
        uint32_t nent;
        uint32_t padding;
        struct kvm_cpuid_entry2 entries[];
    };

    /* --- struct kvm_run: the exits this project decodes ------------------ */
    struct kvm_run_io {
        uint8_t  direction;
        uint8_t  size;
        uint16_t port;
        uint32_t count;
        uint64_t data_offset;
    };

    struct kvm_run_mmio {
        uint64_t phys_addr;
        uint8_t  data[8];
        uint32_t len;
        uint8_t  is_write;
    };

    struct kvm_run_hypercall {
        uint64_t nr;
        uint64_t args[6];
        uint64_t ret;
        uint64_t flags;         /* union with the older u32 longmode */
    };

    struct kvm_run_internal {
        uint32_t suberror;
        uint32_t ndata;
        uint64_t data[16];
    };

    struct kvm_run_fail_entry {
        uint64_t hardware_entry_failure_reason;
        uint32_t cpu;
    };

    struct kvm_run_system_event {
        uint32_t type;
        uint32_t ndata;
        uint64_t data[16];      /* data[0] is the older 'flags' */
    };

    struct kvm_run_memory_fault {
        uint64_t flags;
        uint64_t gpa;
        uint64_t size;
    };

    struct kvm_run_ex {
        uint32_t exception;
        uint32_t error_code;
    };

    struct kvm_run {
        uint8_t  request_interrupt_window;
        uint8_t  immediate_exit;
        uint8_t  padding1[6];
        uint32_t exit_reason;
        uint8_t  ready_for_interrupt_injection;
        uint8_t  if_flag;
        uint16_t flags;
        uint64_t cr8;
        uint64_t apic_base;
        union {
            uint64_t hardware_exit_reason;
            struct kvm_run_fail_entry fail_entry;
            struct kvm_run_ex ex;
            struct kvm_run_io io;
            struct kvm_run_mmio mmio;
            struct kvm_run_hypercall hypercall;
            struct kvm_run_internal internal;
            struct kvm_run_system_event system_event;
            struct kvm_run_memory_fault memory_fault;
            char padding[256];
        };
        uint64_t kvm_valid_regs;
        uint64_t kvm_dirty_regs;
        char s[2048];
    };

    /* --- libc ------------------------------------------------------------ */
    int ioctl(int fd, unsigned long request, ...);
"""
ffi = _cffi.load("kvm", CDEF)


def sizeof(struct: str) -> int:
    return ffi.sizeof(struct)


def offsetof(struct: str, *fields: str) -> int:
    return ffi.offsetof(struct, *fields)
