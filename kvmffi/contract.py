"""The errnos each call may answer, written once, with where each comes from.

Sources: Documentation/virt/kvm/api.rst (api), the kernels' code for the calls (virt/kvm/
guest_memfd.c, virt/kvm/kvm_main.c, arch/x86/kvm; read in 6.12 and 7.3), and the VFS and mm
paths in front of them (fallocate(2), mmap(2), madvise(2)). Resource errnos (ENOMEM, EMFILE,
ENFILE, ENOSPC) are allowed wherever the kernel allocates. A call answering anything else is a
finding of the fuzzer.
"""

from __future__ import annotations

import errno as E

RESOURCES = frozenset({E.ENOMEM, E.EMFILE, E.ENFILE, E.ENOSPC})

ALLOWED: dict[str, tuple[frozenset[int], str]] = {
    "KVM_CREATE_GUEST_MEMFD": (frozenset({E.EINVAL}) | RESOURCES,
                               "api: EINVAL for an unsupported flag, a size that is 0, not page aligned or "
                               "negative; guest_memfd.c: kvm_gmem_create"),
    "fallocate": (frozenset({E.EINVAL, E.EOPNOTSUPP, E.EINTR, E.EFBIG}) | RESOURCES,
                  "guest_memfd.c kvm_gmem_fallocate: EOPNOTSUPP without KEEP_SIZE or for other modes, EINVAL "
                  "unaligned, EINVAL past i_size; EINTR: allocation stops at a pending signal; fallocate(2): "
                  "EINVAL/EOPNOTSUPP from the VFS mode checks, EFBIG for offset + len past the file size limit"),
    "mmap": (frozenset({E.ENODEV, E.EINVAL, E.EACCES}) | RESOURCES,
             "guest_memfd.c kvm_gmem_mmap: ENODEV without GUEST_MEMFD_FLAG_MMAP, EINVAL for MAP_PRIVATE"),
    "KVM_SET_USER_MEMORY_REGION2": (frozenset({E.EINVAL, E.EEXIST, E.EBADF, E.EFAULT}) | RESOURCES,
                                    "api: EINVAL for bad flags, alignment, sizes, a guest_memfd that is not "
                                    "this VM's or a range past its end; EEXIST for overlapping GPAs (and, from "
                                    "7.2, an already bound guest_memfd range); EBADF for a closed fd"),
    "KVM_SET_MEMORY_ATTRIBUTES": (frozenset({E.EINVAL, E.ENOTTY, E.EFAULT, E.EAGAIN}) | RESOURCES,
                                  "api: EINVAL for flags, unsupported attributes, size 0, unaligned or "
                                  "overflowing ranges; ENOTTY where the ioctl does not exist (no "
                                  "KVM_CAP_MEMORY_ATTRIBUTES)"),
    "KVM_PRE_FAULT_MEMORY": (frozenset({E.EINVAL, E.ENOENT, E.EAGAIN, E.EINTR, E.EFAULT, E.EIO, E.ENOTTY,
                                        E.EOPNOTSUPP}) | RESOURCES,
                             "api: ENOENT for a GPA without a memslot, EINVAL for flags/size/alignment, "
                             "EINTR for a signal, EIO if KVM cannot map; EFAULT: a private GPA without usable "
                             "guest_memfd; ENOTTY/EOPNOTSUPP without KVM_CAP_PRE_FAULT_MEMORY"),
    "KVM_RUN": (frozenset({E.EINTR, E.EFAULT, 133}) | RESOURCES,
                "api: EINTR for a signal; EFAULT/EHWPOISON (133) with KVM_EXIT_MEMORY_FAULT"),
    "host access": (frozenset({E.EFAULT}),
                    "a page the host may not touch (private, past EOF): kvmffi's guarded copy answers EFAULT"),
}


def allowed(call: str) -> frozenset[int]:
    return ALLOWED[call][0]


def check(call: str, err: int) -> None:
    """Raise AssertionError if ``err`` (0 = success) is not an answer ``call`` may give."""
    from .errors import errno_name
    if err and err not in ALLOWED[call][0]:
        names = ", ".join(sorted(errno_name(e) for e in ALLOWED[call][0]))
        raise AssertionError(f"{call} answered {errno_name(err)}, outside its contract ({names}): "
                             f"{ALLOWED[call][1]}")
