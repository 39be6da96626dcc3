/* kvmffi guest API: what a guest program includes.
 *
 * Guests run in 64-bit long mode, identity-mapped (GVA == GPA), one stack per vCPU.
 * They talk to the host through ucalls: the guest fills a struct ucall and executes
 * `in` on UCALL_PORT with RDI = the struct's address; the host decodes it.
 */
#ifndef KVMFFI_GUEST_H
#define KVMFFI_GUEST_H

typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long uint64_t;
typedef long int64_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

/* Constants the host needs are enumerators, never macros: the host reads them (and struct
 * ucall's layout) from the guest ELF's debug information, so this file is their one source. */
enum { UCALL_PORT = 0x1000, UCALL_MAX_ARGS = 7, UCALL_BUFFER_LEN = 256 };

enum {
	UCALL_NONE = 0,
	UCALL_SYNC = 1,
	UCALL_ABORT = 2,
	UCALL_PRINTF = 3,
	UCALL_DONE = 4,
	UCALL_EXCEPTION = 5,
};

/* ABORT args: [0] kind, [1] condition text, [2] file, [3] line, [4] a, [5] b */
enum { ASSERT_KIND_TRUE = 0, ASSERT_KIND_EQ = 1, ASSERT_KIND_NE = 2 };

struct ucall {
	uint64_t cmd;
	uint64_t args[UCALL_MAX_ARGS];
	char buffer[UCALL_BUFFER_LEN];
};

/* The ucall itself: fill the struct, `in` from UCALL_PORT with RDI = its address.
 * Inline and loop-free: on hosts that emulate guest instructions every one counts. */
static inline __attribute__((always_inline)) void
ucall7(uint64_t cmd, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6)
{
	struct ucall uc;
	uc.cmd = cmd;
	uc.args[0] = a0; uc.args[1] = a1; uc.args[2] = a2; uc.args[3] = a3;
	uc.args[4] = a4; uc.args[5] = a5; uc.args[6] = a6;
	__asm__ volatile("in %[port], %%al"
			 : : [port] "d"((uint16_t)UCALL_PORT), "D"(&uc), "m"(uc) : "rax", "memory");
}
#define __UCALL7(cmd, a0, a1, a2, a3, a4, a5, a6, ...) \
	ucall7(cmd, (uint64_t)(a0), (uint64_t)(a1), (uint64_t)(a2), (uint64_t)(a3), \
	       (uint64_t)(a4), (uint64_t)(a5), (uint64_t)(a6))
#define ucall(cmd, ...) __UCALL7(cmd, ##__VA_ARGS__, 0, 0, 0, 0, 0, 0, 0, 0)
void ucall_assert(uint64_t kind, const char *cond, const char *file, uint64_t line, uint64_t a, uint64_t b);
void guest_printf(const char *fmt, ...);
__attribute__((noreturn)) void guest_done(void);

/* Every guest program defines its entry point; vcpu_id is 0 .. nr_vcpus - 1. */
void guest_main(uint64_t vcpu_id);

/* GUEST_SYNC(stage, up to 6 more values): the host's on_sync gets (stage, values...). */
#define GUEST_SYNC(stage, ...) ucall(UCALL_SYNC, stage, ##__VA_ARGS__)
#define GUEST_DONE() guest_done()
#define GUEST_PRINTF(fmt, ...) guest_printf(fmt, ##__VA_ARGS__)

#define GUEST_ASSERT(cond) do { \
	if (!(cond)) ucall_assert(ASSERT_KIND_TRUE, #cond, __FILE__, __LINE__, 0, 0); \
} while (0)

#define GUEST_ASSERT_EQ(a, b) do { \
	uint64_t __a = (uint64_t)(a), __b = (uint64_t)(b); \
	if (__a != __b) ucall_assert(ASSERT_KIND_EQ, #a " == " #b, __FILE__, __LINE__, __a, __b); \
} while (0)

#define GUEST_ASSERT_NE(a, b) do { \
	uint64_t __a = (uint64_t)(a), __b = (uint64_t)(b); \
	if (__a == __b) ucall_assert(ASSERT_KIND_NE, #a " != " #b, __FILE__, __LINE__, __a, __b); \
} while (0)

#define GUEST_FAIL(msg) ucall_assert(ASSERT_KIND_TRUE, msg, __FILE__, __LINE__, 0, 0)

/* Memory helpers (freestanding). */
void *memset(void *s, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* Page marks: the first and last 8 bytes of every 4 KiB page. Cheap enough for
 * megabytes of test memory; the host's kvmffi.testvm.fill_marks/check_marks match. */
void guest_fill_marks(void *p, size_t n, uint64_t pattern);
int64_t guest_check_marks(const void *p, size_t n, uint64_t pattern);

/* KVM_HC_MAP_GPA_RANGE (12): vmcall or vmmcall by CPU vendor. Returns RAX. */
#define KVM_HC_MAP_GPA_RANGE 12
#define KVM_MAP_GPA_RANGE_PAGE_SZ_4K 0
#define KVM_MAP_GPA_RANGE_PAGE_SZ_2M 1
#define KVM_MAP_GPA_RANGE_ENCRYPTED (1 << 4)
#define KVM_MAP_GPA_RANGE_DECRYPTED 0
uint64_t kvm_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3);
static inline uint64_t kvm_hypercall_map_gpa_range(uint64_t gpa, uint64_t size, uint64_t attrs)
{
	return kvm_hypercall(KVM_HC_MAP_GPA_RANGE, gpa, size >> 12, attrs, 0);
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }

#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))
#define WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))

/* Host-visible parameters: guest globals the host sets by name before running. */
#define GUEST_PARAM __attribute__((used, section(".data.params")))

#endif
