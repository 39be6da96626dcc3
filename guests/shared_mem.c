/* Guest and host share test memory in place (guest_memfd with MMAP, or any backing).
 * stage 1: the guest checks the host's pattern, writes its own, syncs.
 * stage 2: the host punched a hole in the first page: the guest sees zeros there
 *          and its own pattern everywhere else, then writes the first page again.
 * Patterns are page marks (first and last 8 bytes of each page).
 */
#include "kvmffi_guest.h"

GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t test_size;
GUEST_PARAM uint64_t host_pattern;
GUEST_PARAM uint64_t guest_pattern;
GUEST_PARAM uint64_t punch_check;

void guest_main(uint64_t vcpu_id)
{
	uint8_t *mem = (uint8_t *)test_gpa;

	GUEST_ASSERT_EQ(guest_check_marks(mem, test_size, host_pattern), -1);
	guest_fill_marks(mem, test_size, guest_pattern);
	GUEST_SYNC(1);

	if (punch_check) {
		GUEST_ASSERT_EQ(guest_check_marks(mem, 4096, 0), -1);
		GUEST_ASSERT_EQ(guest_check_marks(mem + 4096, test_size - 4096, guest_pattern), -1);
		guest_fill_marks(mem, 4096, guest_pattern);
		GUEST_SYNC(2);
	}
	GUEST_DONE();
}
