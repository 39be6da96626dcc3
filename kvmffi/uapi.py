"""KVM uAPI constants as enums and flags (values from include/uapi/linux/kvm.h).

Every method that takes one of these also accepts a plain int, so negative tests
can pass any bit pattern.
"""

from __future__ import annotations

import enum


class Cap(enum.IntEnum):
    """KVM_CAP_* numbers for KVM_CHECK_EXTENSION and KVM_ENABLE_CAP."""

    USER_MEMORY = 3
    NR_MEMSLOTS = 10
    SYNC_REGS = 74
    MAX_VCPUS = 66
    READONLY_MEM = 81
    CHECK_EXTENSION_VM = 105
    EXIT_HYPERCALL = 201
    USER_MEMORY2 = 231
    MEMORY_FAULT_INFO = 232
    MEMORY_ATTRIBUTES = 233
    GUEST_MEMFD = 234
    VM_TYPES = 235
    PRE_FAULT_MEMORY = 236
    GUEST_MEMFD_FLAGS = 244
    # Unmerged uAPI (in-place conversion, KVM_SET_MEMORY_ATTRIBUTES2) gets no number here: its
    # series asked for several numbers that merged kernels gave to other capabilities (249 is
    # S390_HPAGE_2G and 250 PPC_COMPAT_CAPS in 7.3). Detect such features by behaviour.

    @property
    def kernel_name(self) -> str:
        return "KVM_CAP_" + self.name


class VmType(enum.IntEnum):
    """x86 VM types for KVM_CREATE_VM (KVM_CAP_VM_TYPES is a bitmap of these)."""

    DEFAULT = 0
    SW_PROTECTED = 1
    SEV = 2
    SEV_ES = 3
    SNP = 4
    TDX = 5

    @property
    def kernel_name(self) -> str:
        return "KVM_X86_DEFAULT_VM" if self is VmType.DEFAULT else f"KVM_X86_{self.name}_VM"


class ExitReason(enum.IntEnum):
    """KVM_EXIT_* values of kvm_run.exit_reason."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    OSI = 18
    SYSTEM_EVENT = 24
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    X86_BUS_LOCK = 33
    NOTIFY = 37
    MEMORY_FAULT = 39


class _NamedFlag(enum.IntFlag):
    def __str__(self) -> str:
        if self.value == 0:
            return "0"
        names = [m.name for m in type(self) if m.value and (self.value & m.value) == m.value and m.name]
        rest = self.value & ~sum(m.value for m in type(self) if m.value and (self.value & m.value) == m.value)
        if rest:
            names.append(hex(rest))
        return "|".join(n for n in names if n)

    __repr__ = __str__


class MemslotFlag(_NamedFlag, boundary=enum.KEEP):
    """KVM_MEM_* flags of a memory region."""

    LOG_DIRTY_PAGES = 1 << 0
    READONLY = 1 << 1
    GUEST_MEMFD = 1 << 2


class GuestMemfdFlag(_NamedFlag, boundary=enum.KEEP):
    """GUEST_MEMFD_FLAG_* for KVM_CREATE_GUEST_MEMFD (advertised by KVM_CAP_GUEST_MEMFD_FLAGS)."""

    MMAP = 1 << 0
    INIT_SHARED = 1 << 1


class MemoryAttribute(_NamedFlag, boundary=enum.KEEP):
    """KVM_MEMORY_ATTRIBUTE_* for KVM_SET_MEMORY_ATTRIBUTES."""

    PRIVATE = 1 << 3


class MemoryFaultFlag(_NamedFlag, boundary=enum.KEEP):
    """KVM_MEMORY_EXIT_FLAG_* in a KVM_EXIT_MEMORY_FAULT exit."""

    PRIVATE = 1 << 3


class HypercallNr(enum.IntEnum):
    """KVM_HC_* hypercall numbers (include/uapi/linux/kvm_para.h)."""

    VAPIC_POLL_IRQ = 1
    MMU_OP = 2
    FEATURES = 3
    PPC_MAP_MAGIC_PAGE = 4
    KICK_CPU = 5
    MIPS_GET_CLOCK_FREQ = 6
    MIPS_EXIT_VM = 7
    MIPS_CONSOLE_OUTPUT = 8
    CLOCK_PAIRING = 9
    SEND_IPI = 10
    SCHED_YIELD = 11
    MAP_GPA_RANGE = 12


class MapGpaAttr(_NamedFlag, boundary=enum.KEEP):
    """Attributes (RDX) of KVM_HC_MAP_GPA_RANGE: page size in bits 0-1, ENCRYPTED bit 4."""

    PAGE_SIZE_2M = 1
    PAGE_SIZE_1G = 2
    ENCRYPTED = 1 << 4


class SystemEventType(enum.IntEnum):
    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6
    TDX_FATAL = 7


class IoDirection(enum.IntEnum):
    IN = 0
    OUT = 1


PAGE_SIZE = 4096
