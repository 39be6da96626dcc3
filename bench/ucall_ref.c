/* C references for bench/run.py: the same guest bytes, driven with plain ioctls, two ways.
 *
 *   ucall_ref STATE ucall selftests|best N
 *       the guest's GUEST_SYNC round trips; prints microseconds per round trip
 *   ucall_ref STATE bringup selftests|best R
 *       R times: VM + memory + vCPU + CPUID + registers, run to the first ucall, tear down;
 *       prints microseconds per bring-up
 *
 * selftests: what the KVM selftests' library does per ucall on x86: KVM_RUN, then KVM_GET_REGS
 * for RDI, then read struct ucall. best: KVM_CAP_SYNC_REGS, so KVM stores the registers in
 * kvm_run at every exit and RDI is read from there (no second ioctl).
 *
 * STATE is written by bench/run.py: u64 low_size, u64 ucall port, u64 UCALL_SYNC, u64 UCALL_DONE
 * (read from the guest ELF: kvmffi_guest.h is their one source), struct kvm_sregs, struct
 * kvm_regs, then the guest's low memory image (program, descriptor tables, page tables) as
 * kvmffi built it.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t ucall_port, ucall_sync, ucall_done;
static int use_sync_regs;
static int kvm_fd;
static struct kvm_cpuid2 *cpuid;
static uint64_t low_size;
static struct kvm_sregs sregs0;
static struct kvm_regs regs0;
static uint8_t *image;
static int used_pages[512], nr_used; /* pages of the image that are not all zero */

struct vm {
	int vm_fd, vcpu_fd;
	uint8_t *mem;
	struct kvm_run *run;
	size_t run_size;
};

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void vm_up(struct vm *v)
{
	v->vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (v->vm_fd < 0)
		die("KVM_CREATE_VM");
	v->mem = mmap(NULL, low_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (v->mem == MAP_FAILED)
		die("mmap");
	/* descriptor and page tables, program: the non-zero pages of the first 2 MiB,
	 * as kvmffi writes only what it sets up */
	for (int i = 0; i < nr_used; i++)
		memcpy(v->mem + used_pages[i] * 4096, image + used_pages[i] * 4096, 4096);
	struct kvm_userspace_memory_region r = { .slot = 0, .guest_phys_addr = 0, .memory_size = low_size,
						 .userspace_addr = (uint64_t)v->mem };
	if (ioctl(v->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	v->vcpu_fd = ioctl(v->vm_fd, KVM_CREATE_VCPU, 0);
	if (v->vcpu_fd < 0)
		die("KVM_CREATE_VCPU");
	v->run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu_fd, 0);
	if (v->run == MAP_FAILED)
		die("mmap kvm_run");
	if (use_sync_regs)
		v->run->kvm_valid_regs = KVM_SYNC_X86_REGS;
	if (ioctl(v->vcpu_fd, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2");
	if (ioctl(v->vcpu_fd, KVM_SET_SREGS, &sregs0) < 0)
		die("KVM_SET_SREGS");
	if (ioctl(v->vcpu_fd, KVM_SET_REGS, &regs0) < 0)
		die("KVM_SET_REGS");
}

static void vm_down(struct vm *v)
{
	munmap(v->run, v->run_size);
	close(v->vcpu_fd);
	close(v->vm_fd);
	munmap(v->mem, low_size);
}

/* One ucall: run until an IN on the ucall port; returns the command. */
static uint64_t next_ucall(struct vm *v)
{
	for (;;) {
		if (ioctl(v->vcpu_fd, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (v->run->exit_reason == KVM_EXIT_IO && v->run->io.port == ucall_port) {
			uint64_t rdi;
			if (use_sync_regs) {
				rdi = v->run->s.regs.regs.rdi;
			} else {
				struct kvm_regs regs;
				if (ioctl(v->vcpu_fd, KVM_GET_REGS, &regs) < 0)
					die("KVM_GET_REGS");
				rdi = regs.rdi;
			}
			return *(volatile uint64_t *)(v->mem + rdi);
		}
		fprintf(stderr, "unexpected exit %u\n", v->run->exit_reason);
		exit(2);
	}
}

int main(int argc, char **argv)
{
	if (argc != 5 || (strcmp(argv[3], "selftests") && strcmp(argv[3], "best"))) {
		fprintf(stderr, "usage: %s STATE ucall|bringup selftests|best N\n", argv[0]);
		return 2;
	}
	use_sync_regs = !strcmp(argv[3], "best");
	FILE *f = fopen(argv[1], "rb");
	if (!f || fread(&low_size, 8, 1, f) != 1 || fread(&ucall_port, 8, 1, f) != 1 ||
	    fread(&ucall_sync, 8, 1, f) != 1 || fread(&ucall_done, 8, 1, f) != 1 ||
	    fread(&sregs0, sizeof(sregs0), 1, f) != 1 ||
	    fread(&regs0, sizeof(regs0), 1, f) != 1)
		die("reading STATE");
	image = malloc(0x200000);
	if (fread(image, 1, 0x200000, f) != 0x200000)
		die("reading the image");
	fclose(f);
	for (int p = 0; p < 512; p++)
		for (int b = 0; b < 4096; b++)
			if (image[p * 4096 + b]) {
				used_pages[nr_used++] = p;
				break;
			}
	long n = atol(argv[4]);

	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0)
		die("/dev/kvm");
	if (use_sync_regs && !(ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) & KVM_SYNC_X86_REGS)) {
		fprintf(stderr, "no KVM_CAP_SYNC_REGS with KVM_SYNC_X86_REGS on this kernel\n");
		return 4;
	}
	cpuid = calloc(1, sizeof(*cpuid) + 256 * sizeof(struct kvm_cpuid_entry2));
	cpuid->nent = 256;
	if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID");

	struct vm v;
	if (!strcmp(argv[2], "ucall")) {
		vm_up(&v);
		if (next_ucall(&v) != ucall_sync)  /* warm up: the first SYNC */
			return 3;
		long syncs = 1;
		double t0 = now_us();
		uint64_t cmd;
		while ((cmd = next_ucall(&v)) == ucall_sync)
			syncs++;
		double t1 = now_us();
		if (cmd != ucall_done)
			return 3;
		vm_down(&v);
		/* timed: syncs - 1 SYNC round trips after the warm-up, plus the final DONE */
		printf("%.3f %ld\n", (t1 - t0) / syncs, syncs);
		return 0;
	}
	double t0 = now_us();
	for (long i = 0; i < n; i++) {
		vm_up(&v);
		if (next_ucall(&v) != ucall_sync)
			return 3;
		vm_down(&v);
	}
	printf("%.3f %ld\n", (now_us() - t0) / n, n);
	return 0;
}
