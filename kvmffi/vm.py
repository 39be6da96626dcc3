"""Vm: a VM fd. Memslots, guest_memfd, memory attributes, capabilities, vCPUs."""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _ffi, _ioctls, _structs
from ._fd import FdOwner
from .errors import KvmError, VmDeadError
from .guest_memfd import GuestMemfd
from .kernels import FEATURES
from .uapi import Cap, GuestMemfdFlag, MemoryAttribute, MemslotFlag, VmType
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .system import Kvm


@dataclass(frozen=True)
class Memslot:
    """One memslot as last set through this Vm (for diagnostics)."""

    slot: int
    gpa: int
    size: int
    userspace_addr: int
    flags: MemslotFlag
    guest_memfd: int | None
    guest_memfd_offset: int

    def __str__(self) -> str:
        s = f"slot {self.slot}: gpa {self.gpa:#x}-{self.gpa + self.size:#x} hva {self.userspace_addr:#x} flags {self.flags}"
        if self.guest_memfd is not None:
            s += f" gmem fd {self.guest_memfd} +{self.guest_memfd_offset:#x}"
        return s


def _fd_of(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, int):
        return x
    return int(x.fileno())


class Vm(FdOwner):
    """A VM fd: memslots, guest_memfd, memory attributes, per-VM capabilities, vCPUs. Create with
    :meth:`kvmffi.Kvm.create_vm`; closing it closes its vCPUs (a context manager too).

    Memory passed to memslots (``userspace_addr`` or a ``keep=`` object) must outlive
    the slot; the Vm keeps references to objects handed to it. Failing ioctls raise
    :class:`~kvmffi.KvmError` naming the ioctl and its arguments; an EIO from a VM that KVM
    killed is a :class:`~kvmffi.VmDeadError` ("KVM killed the VM, check the kernel log").

    ``kvm`` is the Kvm that created it, for the caller; the Vm itself uses only what the Kvm
    handed it at creation: ``vcpu_mmap_size`` (KVM_GET_VCPU_MMAP_SIZE) and ``sync_regs``, whether
    its vCPUs have KVM store their registers in kvm_run (KVM_CAP_SYNC_REGS with
    KVM_SYNC_X86_REGS, as a VM of this type answered; settable before creating vCPUs).

    >>> from kvmffi import HostMemory, Kvm
    >>> with HostMemory(-1, 0x2000) as mem, Kvm() as kvm, kvm.create_vm() as vm:
    ...     vm.set_user_memory_region2(1, 0x100000, len(mem), mem.addr)
    ...     print(vm.memslot_table())  # doctest: +ELLIPSIS
    ...     vm.delete_memslot(1)
    ...     vcpu = vm.create_vcpu(0)
    ...     vm.memslot_table(), sorted(vm.vcpus)
    slot 1: gpa 0x100000-0x102000 hva 0x... flags 0
    ('(no memslots)', [0])
    """

    def __init__(self, fd: int, vm_type: int, kvm: Kvm, *, vcpu_mmap_size: int, sync_regs: bool = False) -> None:
        super().__init__(fd)
        self.kvm = kvm
        try:
            self.type: VmType | int = VmType(vm_type)
        except ValueError:
            self.type = vm_type
        self.vcpu_mmap_size = vcpu_mmap_size
        self.sync_regs = sync_regs
        self.vcpus: dict[int, Vcpu] = {}
        self.memslots: dict[int, Memslot] = {}
        self._keep: dict[int, Any] = {}

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, VmType) else self.type
        return f"<Vm {t} {'closed' if self.closed else f'fd={self._fd}'}>"

    def _close_children(self) -> None:
        for v in list(self.vcpus.values()):
            v.close()
        self.vcpus.clear()
        self._keep.clear()

    def _error(self, name: str, err: int, args: dict[str, Any], hint: str = "") -> KvmError:
        if err == _errno.EIO and not self.closed:
            ret, _ = _ffi.ioctl_int(self._fd, _ioctls.KVM_CHECK_EXTENSION, int(Cap.USER_MEMORY))
            if ret < 0:
                return VmDeadError(name, err, args, "KVM killed the VM, check the kernel log (dmesg)")
        return KvmError(name, err, args, hint)

    # -- capabilities -------------------------------------------------------
    def check_extension(self, cap: Cap | int) -> int:
        """The VM's answer for a capability: KVM_CHECK_EXTENSION on the VM fd (api.rst 4.4,
        KVM_CAP_CHECK_EXTENSION_VM). 0 if absent, else positive, sometimes a value or a bitmap
        (GUEST_MEMFD_FLAGS, MEMORY_ATTRIBUTES, NR_MEMSLOTS). Ask the VM rather than /dev/kvm where
        the answer depends on the VM type. Raises KvmError (VmDeadError if KVM killed the VM)."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CHECK_EXTENSION, int(cap))
        if ret < 0:
            raise self._error("KVM_CHECK_EXTENSION", err, {"cap": cap})
        return ret

    def has_cap(self, cap: Cap | int) -> bool:
        """Whether this VM offers ``cap`` (:meth:`check_extension` > 0)."""
        return self.check_extension(cap) > 0

    def guest_memfd_flags(self) -> GuestMemfdFlag:
        """Flags this VM accepts for KVM_CREATE_GUEST_MEMFD: the KVM_CAP_GUEST_MEMFD_FLAGS bitmap
        (api.rst 4.142), 0 where the kernel predates it. Raises KvmError."""
        return GuestMemfdFlag(self.check_extension(Cap.GUEST_MEMFD_FLAGS))

    def enable_cap(self, cap: Cap | int, *args: int, flags: int = 0) -> None:
        """Enable a VM capability: KVM_ENABLE_CAP on the VM fd (api.rst 4.37, KVM_CAP_ENABLE_CAP_VM),
        e.g. ``vm.enable_cap(Cap.EXIT_HYPERCALL, 1 << 12)``; ``args`` are the capability's up to
        four u64 arguments (api.rst section 7 says what each takes). ValueError for more than
        four; KvmError (EINVAL for a capability that cannot be enabled or bad arguments)."""
        if len(args) > 4:
            raise ValueError(f"KVM_ENABLE_CAP takes at most 4 args, got {len(args)}")
        ret, err, _ = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_ENABLE_CAP, "struct kvm_enable_cap",
                                        {"cap": int(cap), "flags": flags, "args": list(args)})
        if ret < 0:
            raise self._error("KVM_ENABLE_CAP", err,
                              {"cap": cap, "args": "[" + ", ".join(hex(a) for a in args) + "]", "flags": flags})

    def set_nr_mmu_pages(self, pages: int) -> None:
        """KVM_SET_NR_MMU_PAGES (x86; not in api.rst): the shadow MMU's budget of page-table
        pages, as the selftests set it before running a VM with no memslots. ``pages`` below
        KVM_MIN_ALLOC_MMU_PAGES (64) is KvmError EINVAL."""
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_SET_NR_MMU_PAGES, pages)
        if ret < 0:
            raise self._error("KVM_SET_NR_MMU_PAGES", err, {"pages": pages})

    # -- guest_memfd ---------------------------------------------------------
    def create_guest_memfd(self, size: int, flags: GuestMemfdFlag | int = 0,
                           reserved: tuple[int, ...] | None = None) -> GuestMemfd:
        """Create a guest_memfd bound to this VM: KVM_CREATE_GUEST_MEMFD (api.rst 4.142,
        KVM_CAP_GUEST_MEMFD; ask the VM, the answer depends on its type).

        ``size`` is bytes, a positive multiple of the page size; ``flags`` a subset of
        :meth:`guest_memfd_flags` (MMAP, INIT_SHARED). ``reserved`` fills the struct's reserved
        words, for negative tests (non-zero is EINVAL). Returns a :class:`GuestMemfd` that owns
        the new fd and may outlive the Vm. Raises KvmError: EINVAL for an unsupported flag or a
        size that is 0, unaligned or negative, ENOTTY without guest_memfd, ENOMEM/EMFILE/ENFILE
        (``kvmffi.contract.ALLOWED["KVM_CREATE_GUEST_MEMFD"]``).
        """
        ret, err, _ = _ffi.ioctl_struct(self.fileno(), _ioctls.KVM_CREATE_GUEST_MEMFD, "struct kvm_create_guest_memfd",
                                        {"size": size, "flags": int(flags), "reserved": list(reserved or ())})
        if ret < 0:
            args: dict[str, Any] = {"size": size, "flags": GuestMemfdFlag(int(flags))}
            if reserved:
                args["reserved"] = list(reserved)
            hint = ""
            if err == _errno.ENOTTY:
                hint = f"this kernel has no guest_memfd (KVM_CAP_GUEST_MEMFD {FEATURES['KVM_CAP_GUEST_MEMFD'].hint()})"
            raise self._error("KVM_CREATE_GUEST_MEMFD", err, args, hint)
        try:
            return GuestMemfd(ret, size, int(flags))
        except BaseException:
            os.close(ret)
            raise

    # -- memslots -----------------------------------------------------------
    def set_user_memory_region(self, slot: int, gpa: int, size: int, userspace_addr: int = 0,
                               flags: MemslotFlag | int = 0, *, keep: Any = None) -> None:
        """Create, move, change or (``size`` 0) delete a memslot: KVM_SET_USER_MEMORY_REGION
        (api.rst 4.35, KVM_CAP_USER_MEMORY), the legacy ioctl, no guest_memfd.

        ``slot`` is the slot id (bits 16-31 the address space), ``gpa``, ``size`` and
        ``userspace_addr`` bytes, page aligned (``size`` 0 deletes); ``flags`` LOG_DIRTY_PAGES or
        READONLY (KVM_CAP_READONLY_MEM). ``keep`` is an object the Vm holds while the slot exists.
        Raises KvmError: EINVAL for bad flags, alignment or sizes, EEXIST for overlapping GPAs.
        """
        err = _structs.set_user_memory_region(self.fileno(), slot, int(flags), gpa, size, userspace_addr)
        if err:
            raise self._error("KVM_SET_USER_MEMORY_REGION", err, {"slot": slot, "gpa": gpa, "size": size,
                              "userspace_addr": userspace_addr, "flags": MemslotFlag(int(flags))})
        self._record(slot, gpa, size, userspace_addr, int(flags), None, 0, keep)

    def set_user_memory_region2(self, slot: int, gpa: int, size: int, userspace_addr: int = 0,
                                flags: MemslotFlag | int = 0, guest_memfd: GuestMemfd | int | None = None,
                                guest_memfd_offset: int = 0, *, keep: Any = None) -> None:
        """Create, move, change or delete a memslot: KVM_SET_USER_MEMORY_REGION2 (api.rst 4.140,
        KVM_CAP_USER_MEMORY2), which can bind a guest_memfd range.

        ``gpa``, ``size``, ``userspace_addr`` and ``guest_memfd_offset`` are bytes, page aligned;
        ``size`` 0 deletes the slot. With ``MemslotFlag.GUEST_MEMFD`` the slot's private memory is
        [``guest_memfd_offset``, +``size``) of ``guest_memfd``, a GuestMemfd of this VM or any fd
        number (negative tests pass other fds); ``userspace_addr`` is then its shared memory.
        ``keep`` is an object the Vm holds while the slot exists (e.g. the host mapping). Raises
        KvmError: EINVAL for bad flags, alignment or sizes, a guest_memfd of another VM or a range
        past its end; EEXIST for overlapping GPAs (from 7.2, an already bound guest_memfd range);
        EBADF for a closed fd (``kvmffi.contract.ALLOWED["KVM_SET_USER_MEMORY_REGION2"]``).
        """
        gfd = _fd_of(guest_memfd)
        err = _structs.set_user_memory_region2(self.fileno(), slot, int(flags), gpa, size, userspace_addr,
                                           guest_memfd_offset, gfd)
        if err:
            raise self._error("KVM_SET_USER_MEMORY_REGION2", err, {
                "slot": slot, "gpa": gpa, "size": size, "userspace_addr": userspace_addr,
                "flags": MemslotFlag(int(flags)), "guest_memfd": gfd, "offset": guest_memfd_offset})
        self._record(slot, gpa, size, userspace_addr, int(flags),
                     gfd if int(flags) & MemslotFlag.GUEST_MEMFD else None, guest_memfd_offset,
                     (keep, guest_memfd if isinstance(guest_memfd, GuestMemfd) else None))

    def delete_memslot(self, slot: int) -> None:
        """Delete a memslot: KVM_SET_USER_MEMORY_REGION2 with size 0 (api.rst 4.140), repeating
        the slot's recorded GPA and GUEST_MEMFD flag. Raises KvmError (EINVAL where the kernel
        refuses to delete a slot it does not have)."""
        old = self.memslots.get(slot)
        self.set_user_memory_region2(slot, old.gpa if old else 0, 0, 0,
                                     (old.flags & MemslotFlag.GUEST_MEMFD) if old else 0,
                                     old.guest_memfd if old and old.guest_memfd is not None else None,
                                     0)

    def _record(self, slot: int, gpa: int, size: int, hva: int, flags: int, gfd: int | None, off: int, keep: Any) -> None:
        if size == 0:
            self.memslots.pop(slot, None)
            self._keep.pop(slot, None)
        else:
            self.memslots[slot] = Memslot(slot, gpa, size, hva, MemslotFlag(flags), gfd, off)
            self._keep[slot] = keep

    def memslot_table(self) -> str:
        """The memslots as set through this Vm, one line per slot (for failure reports)."""
        return "\n".join(str(self.memslots[s]) for s in sorted(self.memslots)) or "(no memslots)"

    # -- memory attributes --------------------------------------------------
    def set_memory_attributes(self, gpa: int, size: int, attributes: MemoryAttribute | int, flags: int = 0) -> None:
        """Mark a GPA range private or shared: KVM_SET_MEMORY_ATTRIBUTES (api.rst 4.141,
        KVM_CAP_MEMORY_ATTRIBUTES, whose per-VM answer lists the attributes the VM supports).

        ``gpa`` and ``size`` are bytes, page aligned, size > 0; ``attributes`` is
        ``MemoryAttribute.PRIVATE`` or 0 (shared); ``flags`` must be 0. Raises KvmError: EINVAL
        for flags, unsupported attributes, size 0, unaligned or overflowing ranges; ENOTTY where
        the ioctl does not exist; EAGAIN, EFAULT
        (``kvmffi.contract.ALLOWED["KVM_SET_MEMORY_ATTRIBUTES"]``).
        """
        err = _structs.set_memory_attributes(self.fileno(), gpa, size, int(attributes), flags)
        if err:
            hint = ""
            if err == _errno.ENOTTY:
                hint = ("this kernel has no KVM_SET_MEMORY_ATTRIBUTES (KVM_CAP_MEMORY_ATTRIBUTES = 0); "
                        "private memory needs CONFIG_KVM_SW_PROTECTED_VM: use the test kernel (`kvmffi kernel build`)")
            raise self._error("KVM_SET_MEMORY_ATTRIBUTES", err, {"gpa": gpa, "size": size,
                              "attributes": MemoryAttribute(int(attributes)), "flags": flags}, hint)

    def set_private(self, gpa: int, size: int) -> None:
        """The selftests' vm_mem_set_private: :meth:`set_memory_attributes` with PRIVATE."""
        self.set_memory_attributes(gpa, size, MemoryAttribute.PRIVATE)

    def set_shared(self, gpa: int, size: int) -> None:
        """The selftests' vm_mem_set_shared: :meth:`set_memory_attributes` with 0."""
        self.set_memory_attributes(gpa, size, 0)

    # -- vCPUs --------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> Vcpu:
        """Create a vCPU: KVM_CREATE_VCPU (api.rst 4.7, basic) and its kvm_run mapping
        (``vcpu_mmap_size`` bytes). The vCPU is in ``vcpus`` and closed with this Vm.

        ``vcpu_id`` is below KVM_CAP_MAX_VCPU_ID. Raises KvmError: EEXIST for an id already in
        use, EINVAL for one out of range or more vCPUs than KVM_CAP_MAX_VCPUS.
        """
        ret, err = _ffi.ioctl_int(self.fileno(), _ioctls.KVM_CREATE_VCPU, vcpu_id)
        if ret < 0:
            raise self._error("KVM_CREATE_VCPU", err, {"id": vcpu_id})
        try:
            v = Vcpu(ret, vcpu_id, self, self.vcpu_mmap_size, sync_regs=self.sync_regs, error=self._error)
        except BaseException:
            os.close(ret)
            raise
        self.vcpus[vcpu_id] = v
        return v
