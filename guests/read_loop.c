/* Read test memory, once or forever: for memory-fault exits (private_mem_kvm_exits_test). */
#include "kvmffi_guest.h"

GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t forever;

void guest_main(uint64_t vcpu_id)
{
	uint64_t v;

	GUEST_SYNC(0);
	do {
		v = READ_ONCE(*(volatile uint64_t *)test_gpa);
	} while (READ_ONCE(forever));
	GUEST_SYNC(1, v);
	GUEST_DONE();
}
