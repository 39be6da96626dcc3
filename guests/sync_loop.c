/* GUEST_SYNC in a loop: the ucall round trip measured by bench/ and the run-loop tests. */
#include "kvmffi_guest.h"

GUEST_PARAM uint64_t iterations = 1000;

void guest_main(uint64_t vcpu_id)
{
	for (uint64_t i = 0; i < iterations; i++)
		GUEST_SYNC(i);
	GUEST_DONE();
}
