/* Guest entry and exception stubs.
 * The host starts every vCPU at _start with RSP = top of its stack and RDI = vCPU id, which
 * stays in RDI: guest_main(vcpu_id) gets it as its first argument.
 */
	.text
	.globl _start
_start:
	xorq %rbp, %rbp
	andq $-16, %rsp
	call guest_main
	call guest_done
1:	hlt
	jmp 1b

/* 32 exception stubs, 16 bytes apart, starting at kvmffi_exception_stubs.
 * Vectors without a hardware error code push 0 so the frame is uniform. */
	.balign 16
	.globl kvmffi_exception_stubs
kvmffi_exception_stubs:
	.irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.balign 16
	.if (\vec == 8) || (\vec == 10) || (\vec == 11) || (\vec == 12) || (\vec == 13) || (\vec == 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	pushq $\vec
	jmp exception_common
	.else
	pushq $0
	pushq $\vec
	jmp exception_common
	.endif
	.endr

/* Stack on entry: vector, error code, RIP, CS, RFLAGS, RSP, SS */
exception_common:
	movq 0(%rsp), %rdi       /* vector */
	movq 8(%rsp), %rsi       /* error code */
	movq 16(%rsp), %rdx      /* rip */
	movq %cr2, %rcx          /* cr2 */
	movq 40(%rsp), %r8       /* faulting rsp */
	andq $-16, %rsp
	call guest_exception_report
2:	hlt
	jmp 2b

	.section .note.GNU-stack,"",@progbits
