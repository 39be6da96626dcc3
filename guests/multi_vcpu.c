/* Several vCPUs at once, each on its own chunk of test memory. */
#include "kvmffi_guest.h"

GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t chunk_size;
GUEST_PARAM uint64_t rounds = 16;

void guest_main(uint64_t vcpu_id)
{
	uint64_t id = vcpu_id;
	uint8_t *chunk = (uint8_t *)(test_gpa + id * chunk_size);

	for (uint64_t r = 0; r < rounds; r++) {
		uint64_t pat = 0x0101010101010101ul * (uint8_t)(0x10 * (id + 1) + r);
		guest_fill_marks(chunk, chunk_size, pat);
		GUEST_ASSERT_EQ(guest_check_marks(chunk, chunk_size, pat), -1);
		GUEST_SYNC(id, r);
	}
	GUEST_DONE();
}
