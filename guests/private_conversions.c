/* Private <-> shared conversion, as x86/private_mem_conversions_test does it, per vCPU.
 *
 * For each range shape {(0,4K), (0,2M), (4K,4K), (4K,2M), (2M,4K)} of this vCPU's area:
 *   1. write an "init" pattern while shared; the host sees it in its shared view and
 *      writes its own "host" pattern, which the guest then reads;
 *   2. convert to private, write a "private" pattern: the host's shared view still
 *      shows the host pattern (private writes are invisible to it), the neighbours stay
 *      shared;
 *   3. convert the odd pages back to shared one by one: they read the host pattern
 *      again, the even pages still read the private pattern (holes);
 *   4. convert the whole range back to shared: the host pattern everywhere; the host
 *      writes a last pattern, which the guest reads.
 * Then punch holes in private memory over each range shape: the punched range reads zero.
 * Conversions go through KVM_HC_MAP_GPA_RANGE (use_hypercall) or a ucall to the host.
 * Patterns are page marks (first and last 8 bytes of each page).
 */
#include "kvmffi_guest.h"

#define SZ_4K 0x1000ul
#define SZ_2M 0x200000ul

enum {
	SYNC_CHECK_SHARED = 1,  /* args: gpa, size, pattern, new: host checks its shared view,
				 * then writes the new pattern there (0: none) */
	SYNC_CONVERT = 2,       /* args: gpa, size, private: host converts */
	SYNC_PUNCH = 3,         /* args: gpa, size: host punches the guest_memfd */
	SYNC_RANGE_DONE = 4,    /* args: range index */
};

GUEST_PARAM uint64_t test_gpa;
GUEST_PARAM uint64_t per_vcpu_size;
GUEST_PARAM uint64_t use_hypercall;

static const struct { uint64_t offset, size; } ranges[] = {
	{ 0, SZ_4K }, { 0, SZ_2M }, { SZ_4K, SZ_4K }, { SZ_4K, SZ_2M }, { SZ_2M, SZ_4K },
};

static void convert(uint64_t gpa, uint64_t size, bool to_private)
{
	if (use_hypercall) {
		uint64_t ret = kvm_hypercall_map_gpa_range(gpa, size, to_private ? KVM_MAP_GPA_RANGE_ENCRYPTED
										 : KVM_MAP_GPA_RANGE_DECRYPTED);
		GUEST_ASSERT_EQ(ret, 0);
	} else {
		GUEST_SYNC(SYNC_CONVERT, gpa, size, to_private);
	}
}

static void test_range(uint64_t base, int idx, uint64_t vcpu)
{
	uint64_t gpa = base + ranges[idx].offset, size = ranges[idx].size;
	uint64_t init = 0x0101010101010101ul * (0x10 + idx * 0x10 + vcpu);
	uint64_t host = init ^ 0x0f0f0f0f0f0f0f0ful;
	uint64_t last = init ^ 0x3c3c3c3c3c3c3c3cul;
	uint64_t priv = ~init;
	uint64_t span = ranges[idx].offset ? gpa - SZ_4K : gpa;
	uint64_t span_size = gpa + size + SZ_4K - span;
	uint64_t off;

	guest_fill_marks((void *)span, span_size, init);
	GUEST_SYNC(SYNC_CHECK_SHARED, span, span_size, init, host);
	GUEST_ASSERT_EQ(guest_check_marks((void *)span, span_size, host), -1);

	convert(gpa, size, true);
	guest_fill_marks((void *)gpa, size, priv);
	GUEST_ASSERT_EQ(guest_check_marks((void *)gpa, size, priv), -1);
	GUEST_SYNC(SYNC_CHECK_SHARED, gpa, size, host, 0);
	GUEST_ASSERT_EQ(guest_check_marks((void *)span, gpa - span, host), -1);
	GUEST_ASSERT_EQ(guest_check_marks((void *)(gpa + size), SZ_4K, host), -1);

	for (off = SZ_4K; off < size; off += 2 * SZ_4K)
		convert(gpa + off, SZ_4K, false);
	for (off = 0; off < size; off += SZ_4K)
		GUEST_ASSERT_EQ(guest_check_marks((void *)(gpa + off), SZ_4K, (off / SZ_4K) & 1 ? host : priv), -1);

	convert(gpa, size, false);
	GUEST_ASSERT_EQ(guest_check_marks((void *)gpa, size, host), -1);
	GUEST_SYNC(SYNC_CHECK_SHARED, gpa, size, host, last);
	GUEST_ASSERT_EQ(guest_check_marks((void *)gpa, size, last), -1);
	GUEST_SYNC(SYNC_RANGE_DONE, idx);
}

/* PUNCH_HOLE without a conversion frees private memory: the guest's next read of the punched
 * range is zeros. For each range shape, first faulting in just the range (precise), then the
 * whole area (not precise: the neighbours keep their data). */
static void test_punch_hole(uint64_t base, uint64_t size, uint64_t vcpu, bool precise)
{
	uint64_t pattern = 0x7700000000000077ul | (vcpu << 8) | ((uint64_t)precise << 16);

	convert(base, size, true);
	for (int i = 0; i < (int)(sizeof(ranges) / sizeof(ranges[0])); i++) {
		uint64_t gpa = base + ranges[i].offset, len = ranges[i].size;

		GUEST_SYNC(SYNC_PUNCH, base, size);
		if (precise) {
			guest_fill_marks((void *)gpa, len, pattern);
			GUEST_ASSERT_EQ(guest_check_marks((void *)gpa, len, pattern), -1);
		} else {
			guest_fill_marks((void *)base, size, pattern);
			GUEST_ASSERT_EQ(guest_check_marks((void *)base, size, pattern), -1);
		}
		GUEST_SYNC(SYNC_PUNCH, gpa, len);
		GUEST_ASSERT_EQ(guest_check_marks((void *)gpa, len, 0), -1);
		if (!precise)
			GUEST_ASSERT_EQ(guest_check_marks((void *)(gpa + len), SZ_4K, pattern), -1);
	}
	convert(base, size, false);
}

void guest_main(uint64_t vcpu_id)
{
	uint64_t vcpu = vcpu_id;
	uint64_t base = test_gpa + vcpu * per_vcpu_size;

	for (int i = 0; i < (int)(sizeof(ranges) / sizeof(ranges[0])); i++)
		test_range(base, i, vcpu);
	test_punch_hole(base, per_vcpu_size, vcpu, true);
	test_punch_hole(base, per_vcpu_size, vcpu, false);
	GUEST_DONE();
}
