/* Guest and host share test memory in place (guest_memfd with MMAP, or any backing).
 * stage 1: the guest checks the host's pattern, writes its own, syncs.
 * stage 2: the host punched a hole in the first page: the guest sees zeros there
 *          and its own pattern everywhere else, then writes the first page again.
 */
#include "kvmffi_guest.h"

GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t test_size;
GUEST_PARAM uint64_t host_pattern;
GUEST_PARAM uint64_t guest_pattern;
GUEST_PARAM uint64_t punch_check;

void guest_main(void)
{
	uint8_t *mem = (uint8_t *)test_gpa;

	GUEST_ASSERT_EQ(guest_check_pattern(mem, (uint8_t)host_pattern, test_size), -1);
	memset(mem, (uint8_t)guest_pattern, test_size);
	GUEST_SYNC(1);

	if (punch_check) {
		GUEST_ASSERT_EQ(guest_check_pattern(mem, 0, 4096), -1);
		GUEST_ASSERT_EQ(guest_check_pattern(mem + 4096, (uint8_t)guest_pattern, test_size - 4096), -1);
		memset(mem, (uint8_t)guest_pattern, 4096);
		GUEST_SYNC(2);
	}
	GUEST_DONE();
}
