/* ucall, asserts, printf and memory helpers for kvmffi guests. */
#include "kvmffi_guest.h"

#include <stdarg.h>

static void ucall_struct(struct ucall *uc)
{
	__asm__ volatile("in %[port], %%al"
			 : : [port] "d"((uint16_t)UCALL_PORT), "D"(uc) : "rax", "memory");
}

void ucall_assert(uint64_t kind, const char *cond, const char *file, uint64_t line, uint64_t a, uint64_t b)
{
	for (;;)
		ucall(UCALL_ABORT, kind, cond, file, line, a, b);
}

void guest_done(void)
{
	for (;;)
		ucall(UCALL_DONE);
}

/* Called by the exception stubs; the host turns it into a Python error. */
void guest_exception_report(uint64_t vector, uint64_t error_code, uint64_t rip, uint64_t cr2, uint64_t rsp)
{
	for (;;)
		ucall(UCALL_EXCEPTION, vector, error_code, rip, cr2, rsp);
}

void *memset(void *s, int c, size_t n)
{
	uint8_t *p = s;
	while (n--)
		*p++ = (uint8_t)c;
	return s;
}

void *memcpy(void *d, const void *s, size_t n)
{
	uint8_t *dp = d;
	const uint8_t *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;
	for (; n; n--, x++, y++)
		if (*x != *y)
			return *x < *y ? -1 : 1;
	return 0;
}

void guest_fill_marks(void *p, size_t n, uint64_t pattern)
{
	uint8_t *b = p;
	for (size_t off = 0; off < n; off += 4096) {
		WRITE_ONCE(*(uint64_t *)(b + off), pattern);
		WRITE_ONCE(*(uint64_t *)(b + off + 4088), pattern);
	}
}

int64_t guest_check_marks(const void *p, size_t n, uint64_t pattern)
{
	const uint8_t *b = p;
	for (size_t off = 0; off < n; off += 4096) {
		if (READ_ONCE(*(const uint64_t *)(b + off)) != pattern)
			return (int64_t)off;
		if (READ_ONCE(*(const uint64_t *)(b + off + 4088)) != pattern)
			return (int64_t)(off + 4088);
	}
	return -1;
}

/* --- a small printf: %d %i %u %x %lx %llx %p %s %c %% (with l/ll, width, 0-pad) --- */
struct outbuf { char *p; size_t left; };

static void put(struct outbuf *o, char c)
{
	if (o->left > 1) {
		*o->p++ = c;
		o->left--;
	}
}

static void put_num(struct outbuf *o, uint64_t v, unsigned base, int neg, int width, char pad)
{
	char tmp[24];
	int n = 0;
	do {
		unsigned d = v % base;
		tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= base;
	} while (v);
	if (neg)
		tmp[n++] = '-';
	while (width-- > n)
		put(o, pad);
	while (n)
		put(o, tmp[--n]);
}

static void format(struct outbuf *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		int lng = 0, width = 0;
		char pad = ' ';
		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		fmt++;
		if (*fmt == '0') {
			pad = '0';
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			put_num(o, v < 0 ? (uint64_t)-v : (uint64_t)v, 10, v < 0, width, pad);
			break;
		}
		case 'u':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0, width, pad);
			break;
		case 'x':
			put_num(o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, 0, width, pad);
			break;
		case 'p':
			put(o, '0');
			put(o, 'x');
			put_num(o, (uint64_t)va_arg(ap, void *), 16, 0, width, pad);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			while (s && *s)
				put(o, *s++);
			break;
		}
		case 'c':
			put(o, (char)va_arg(ap, int));
			break;
		case '%':
			put(o, '%');
			break;
		default:
			put(o, '%');
			put(o, *fmt);
		}
	}
	*o->p = 0;
}

void guest_printf(const char *fmt, ...)
{
	struct ucall uc;
	struct outbuf o = { uc.buffer, sizeof(uc.buffer) };
	va_list ap;

	va_start(ap, fmt);
	format(&o, fmt, ap);
	va_end(ap);
	uc.cmd = UCALL_PRINTF;
	for (int i = 0; i < UCALL_MAX_ARGS; i++)
		uc.args[i] = 0;
	ucall_struct(&uc);
}

/* Vendor check: AMD uses vmmcall, Intel vmcall. */
static int is_amd(void)
{
	uint32_t a = 0, b, c, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "=c"(c), "=d"(d));
	return b == 0x68747541; /* "Auth" of AuthenticAMD */
}

uint64_t kvm_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
{
	uint64_t ret;
	if (is_amd())
		__asm__ volatile("vmmcall" : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1), "d"(a2), "S"(a3) : "memory");
	else
		__asm__ volatile("vmcall" : "=a"(ret) : "a"(nr), "b"(a0), "c"(a1), "d"(a2), "S"(a3) : "memory");
	return ret;
}
