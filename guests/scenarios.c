/* Small scenarios selected by the host through `scenario`: exceptions, triple fault,
 * a hang, failing asserts, printf, code in test memory, a write to a read-only slot. */
#include "kvmffi_guest.h"

enum {
	S_PAGE_FAULT = 0,
	S_UD = 1,
	S_DIVIDE = 2,
	S_GP = 3,
	S_TRIPLE_FAULT = 4,
	S_HANG = 5,
	S_ASSERT = 6,
	S_ASSERT_EQ = 7,
	S_PRINTF = 8,
	S_CALL_TEST_MEMORY = 9,
	S_WRITE_TEST_MEMORY = 10,
	S_READ_TEST_MEMORY = 11,
	S_HYPERCALL = 12,
	S_HYPERCALL_AFTER_UNKNOWN = 13,
	S_READ_SYNC_WRITE = 14,
	S_ENTER_ACROSS_MMIO = 15,
};

/* A hypercall number KVM does not know: KVM answers it itself with -KVM_ENOSYS. */
#define UNKNOWN_HYPERCALL 0x4b7fu

GUEST_PARAM uint64_t scenario;
GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t value;

static volatile uint64_t zero;

void guest_main(uint64_t vcpu_id)
{
	switch (scenario) {
	case S_PAGE_FAULT:
		(void)READ_ONCE(*(volatile uint64_t *)test_gpa);
		break;
	case S_UD:
		__asm__ volatile("ud2");
		break;
	case S_DIVIDE: {
		uint64_t q = 1, d = zero, hi = 0;
		__asm__ volatile("divq %2" : "+a"(q), "+d"(hi) : "r"(d));
		value = q;
		break;
	}
	case S_GP:
		(void)READ_ONCE(*(volatile uint64_t *)0x8000000000000000ul);
		break;
	case S_TRIPLE_FAULT: {
		struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = { 0, 0 };
		__asm__ volatile("lidt %0; ud2" : : "m"(idtr));
		break;
	}
	case S_HANG:
		for (;;)
			cpu_relax();
	case S_ASSERT:
		GUEST_ASSERT(value == 42);
		break;
	case S_ASSERT_EQ:
		GUEST_ASSERT_EQ(value, 42);
		break;
	case S_PRINTF:
		GUEST_PRINTF("hello from vcpu %lu: %s %d 0x%lx", vcpu_id, "value", -7, value);
		break;
	case S_CALL_TEST_MEMORY: {
		uint64_t (*fn)(void) = (uint64_t (*)(void))test_gpa;
		value = fn();
		GUEST_SYNC(1, value);
		break;
	}
	case S_WRITE_TEST_MEMORY:
		WRITE_ONCE(*(volatile uint64_t *)test_gpa, value);
		GUEST_SYNC(1);
		break;
	case S_READ_TEST_MEMORY:
		GUEST_SYNC(1, READ_ONCE(*(volatile uint64_t *)test_gpa));
		break;
	case S_HYPERCALL:
		value = kvm_hypercall_map_gpa_range(test_gpa, 4096, KVM_MAP_GPA_RANGE_DECRYPTED);
		GUEST_SYNC(1, value);
		break;
	case S_READ_SYNC_WRITE:
		/* read test_gpa (a GVA), let the host change its mapping, write it, read it back */
		GUEST_SYNC(1, READ_ONCE(*(volatile uint64_t *)test_gpa));
		WRITE_ONCE(*(volatile uint64_t *)test_gpa, value);
		GUEST_SYNC(2, READ_ONCE(*(volatile uint64_t *)test_gpa));
		break;
	case S_ENTER_ACROSS_MMIO:
		/* ENTER pushes RBP (value) at test_gpa + 0xffc: an 8-byte write across a page boundary
		 * into memory no memslot backs, which KVM emulates as two MMIO fragments */
		__asm__ volatile("mov %%rsp, %%r12\n\t"
				 "mov %%rbp, %%r13\n\t"
				 "mov %[v], %%rbp\n\t"
				 "mov %[sp], %%rsp\n\t"
				 "enter $0, $0\n\t"
				 "mov %%r12, %%rsp\n\t"
				 "mov %%r13, %%rbp\n\t"
				 : : [v] "r"(value), [sp] "r"(test_gpa + 0x1004) : "r12", "r13", "memory");
		GUEST_SYNC(1);
		break;
	case S_HYPERCALL_AFTER_UNKNOWN:
		/* one KVM answers itself, then one that exits to userspace */
		value = kvm_hypercall(UNKNOWN_HYPERCALL, 0, 0, 0, 0);
		GUEST_SYNC(1, value);
		value = kvm_hypercall_map_gpa_range(test_gpa, 4096, KVM_MAP_GPA_RANGE_DECRYPTED);
		GUEST_SYNC(1, value);
		break;
	}
	GUEST_DONE();
}
