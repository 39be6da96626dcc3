"""What KVM answers differently across kernels, said once.

Where the uAPI's documented answer is the same everywhere, a test asserts it directly. Where
kernels legitimately differ and no capability tells which answer to expect, the test reads the
answer for the running kernel here: each behaviour lists every answer with the kernels that give
it (measured, or read in that version's source). Versions between two known answers accept
either, and say so. Known kernel bugs are listed with the first kernel without them: tests
marked ``@pytest.mark.kernel_bug(NAME)`` run as expected failures on affected kernels, so a fix
shows as XPASS and a regression on a fixed kernel fails.

Answers of one KVM implementation rather than one version (the paravirtualized kvm_pvm) carry
its module name.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass

Version = tuple[int, int]
NEWEST_KNOWN_NEXT = (7, 4)       # the first kernel after the newest whose answers are recorded here (7.3)
VENDOR_MODULES = ("kvm_pvm", "kvm_amd", "kvm_intel")


@dataclass(frozen=True)
class Kernel:
    release: str
    version: Version
    module: str          # the KVM vendor module in use: kvm_amd, kvm_intel, kvm_pvm, or ""

    def __str__(self) -> str:
        return f"{self.release} ({self.module or 'no KVM module'})"


def parse_release(release: str) -> Version:
    m = re.match(r"^(\d+)\.(\d+)", release)
    if not m:
        raise ValueError(f"kernel release {release!r} does not start with MAJOR.MINOR")
    return int(m.group(1)), int(m.group(2))


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (``flags``, ``model name``, ...); empty when
    it cannot be read. The one place kvmffi reads it."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_flags() -> frozenset[str]:
    return frozenset(cpu_info().get("flags", "").split())


def nested_virtualization() -> bool:
    """Does this CPU show VMX or SVM, so a guest (the test kernel) could run KVM with hardware help?"""
    return bool(cpu_flags() & {"vmx", "svm"})


def vendor_module() -> str:
    """The KVM vendor module in use. Built-in kvm_intel and kvm_amd both show in /sys/module (both
    have parameters), so the CPU's virtualization flag decides between them."""
    present = [m for m in VENDOR_MODULES if os.path.isdir(f"/sys/module/{m}")]
    if "kvm_pvm" in present or len(present) <= 1:
        return present[0] if present else ""
    flags = cpu_flags()
    if "svm" in flags and "kvm_amd" in present:
        return "kvm_amd"
    if "vmx" in flags and "kvm_intel" in present:
        return "kvm_intel"
    return present[0]


@functools.lru_cache(maxsize=1)
def running() -> Kernel:
    release = os.uname().release
    return Kernel(release, parse_release(release), vendor_module())


@dataclass(frozen=True)
class Answer:
    value: object
    since: Version | None = None      # first version with this answer (None: from the start)
    until: Version | None = None      # first version without it (None: still)
    module: str | None = None         # only on this KVM implementation
    kernels: str = ""                 # which kernels were seen giving it, for messages

    def applies(self, k: Kernel) -> bool:
        if self.module is not None and self.module != k.module:
            return False
        if self.since is not None and k.version < self.since:
            return False
        return not (self.until is not None and k.version >= self.until)


@dataclass(frozen=True)
class Behaviour:
    name: str
    what: str
    answers: tuple[Answer, ...]
    why: str = ""

    def expected(self, k: Kernel | None = None) -> list[object]:
        """The answers the running kernel may give: one where its version is known, several in a gap."""
        k = k or running()
        specific = [a for a in self.answers if a.module is not None and a.applies(k)]
        found = specific or [a for a in self.answers if a.module is None and a.applies(k)]
        return [a.value for a in found]

    def describe(self) -> str:
        def name(v: object) -> str:
            from .errors import errno_name
            return errno_name(v) if isinstance(v, int) else str(v)
        return f"{self.what}: " + "; ".join(f"{name(a.value)} on {a.kernels}" for a in self.answers) + (
            f" ({self.why})" if self.why else "")


@dataclass(frozen=True)
class KnownBug:
    name: str
    what: str
    fixed_in: str                     # the first kernel without it, as known
    affects: tuple[Answer, ...]       # the kernels that have it (value unused)

    def affected(self, k: Kernel | None = None) -> bool:
        k = k or running()
        return any(a.applies(k) for a in self.affects)

    def reason(self) -> str:
        return f"known kernel bug: {self.what}; fixed in {self.fixed_in}"


BEHAVIOURS: dict[str, Behaviour] = {b.name: b for b in (
    Behaviour(
        "gmem_range_already_bound",
        "binding a guest_memfd range that another memslot already binds (disjoint GPAs)",
        (Answer(errno.EINVAL, until=(6, 19), kernels="6.8-6.18 (measured: 6.12, 6.18)"),
         Answer(errno.EEXIST, since=(7, 2), kernels="7.2 and later (7.2 source; measured: 7.3)"),
         Answer(errno.EINVAL, since=(6, 19), until=(7, 2), kernels="6.19-7.1 (not measured)"),
         Answer(errno.EEXIST, since=(6, 19), until=(7, 2), kernels="6.19-7.1 (not measured)")),
        "kvm_gmem_bind() returned EINVAL for every refusal; later kernels say EEXIST for an overlap"),
    Behaviour(
        "gmem_fstatfs_magic",
        "fstatfs() of a guest_memfd: the filesystem magic its inode lives on",
        (Answer(0x09041934, until=(6, 19), kernels="6.8-6.18, the anonymous-inode filesystem (measured: 6.12, 6.18)"),
         Answer(0x474D454D, since=(6, 19), kernels="6.19 and later, guest_memfd's own filesystem, \"GMEM\" "
                "(include/uapi/linux/magic.h GUEST_MEMFD_MAGIC; measured: 7.3)")),
        "6.19 moved guest_memfd inodes to their own pseudo filesystem"),
    Behaviour(
        "gmem_madv_collapse",
        "MADV_COLLAPSE on a guest_memfd mapping",
        (Answer(errno.EINVAL, until=NEWEST_KNOWN_NEXT, kernels="6.18-7.3: guest_memfd has no huge folios (measured: 6.18, 7.3)"),
         Answer(0, since=NEWEST_KNOWN_NEXT, kernels="newer kernels with guest_memfd huge pages"),
         Answer(errno.EINVAL, since=NEWEST_KNOWN_NEXT, kernels="newer kernels without them")),
        "mm/khugepaged.c collapses only anonymous and shmem/file THP-capable mappings"),
    Behaviour(
        "memslot_flag_bits_3_31",
        "KVM_SET_USER_MEMORY_REGION(2) with a flag bit from 3 to 31",
        (Answer(errno.EINVAL, until=NEWEST_KNOWN_NEXT, kernels="every kernel through 7.3, which define bits 0-2 only"),
         Answer(0, since=NEWEST_KNOWN_NEXT, kernels="kernels newer than 7.3 may define new flags"),
         Answer(errno.EINVAL, since=NEWEST_KNOWN_NEXT, kernels="kernels newer than 7.3 (unknown bits)")),
        "include/uapi/linux/kvm.h: KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEM_GUEST_MEMFD"),
    Behaviour(
        "gmem_reserved_nonzero",
        "KVM_CREATE_GUEST_MEMFD with a non-zero kvm_create_guest_memfd.reserved[] word",
        (Answer(0, until=NEWEST_KNOWN_NEXT, kernels="6.8-7.3 (not checked; measured: 6.12, 6.18, 7.3)"),
         Answer(0, since=NEWEST_KNOWN_NEXT, kernels="newer kernels, unchecked"),
         Answer(errno.EINVAL, since=NEWEST_KNOWN_NEXT, kernels="newer kernels that start checking it")),
        "api.rst does not say the reserved words are checked"),
)}


KNOWN_BUGS: dict[str, KnownBug] = {b.name: b for b in (
    KnownBug(
        "gmem_bind_offset_overflow",
        "KVM_SET_USER_MEMORY_REGION2 accepts a guest_memfd offset whose offset + size overflows "
        "(offset 0x7ffffffffffff000: a signed overflow in kvm_gmem_bind's range check)",
        "7.2 (\"KVM: guest_memfd: Treat memslot binding offset+size as unsigned values\", eba85fee7fc6; stable "
        "7.1.4; 6.12 refuses it too: its offset was u64)",
        (Answer(None, since=(6, 13), until=(7, 2), kernels="6.13-7.1 (measured: 6.18)"),)),
    KnownBug(
        "pvm_gmem_only_slot_not_served",
        "kvm_pvm does not serve a guest_memfd slot with userspace_addr 0 from the file: the guest's "
        "access is a KVM_EXIT_MMIO",
        "no kvm_pvm release yet (upstream KVM serves it)",
        (Answer(None, module="kvm_pvm", kernels="kvm_pvm"),)),
    KnownBug(
        "pvm_hypercall_exits_not_delivered",
        "on kvm_pvm, vmcall/vmmcall never leave KVM_RUN (the vCPU re-executes the instruction) even with "
        "KVM_CAP_EXIT_HYPERCALL enabled for KVM_HC_MAP_GPA_RANGE",
        "no kvm_pvm release yet (upstream KVM exits with KVM_EXIT_HYPERCALL)",
        (Answer(None, module="kvm_pvm", kernels="kvm_pvm"),)),
    KnownBug(
        "pre_fault_memslot_delete_deadlock",
        "KVM_PRE_FAULT_MEMORY retries forever on a memslot that is being deleted while it holds kvm->srcu, "
        "which the deletion waits for: both threads hang until a signal interrupts the pre-fault",
        "6.18 (\"KVM: x86/mmu: Return -EAGAIN if userspace deletes/moves memslot during prefault\", 3ccbf6f47098; "
        "not in Debian 6.12.117)",
        (Answer(None, since=(6, 11), until=(6, 18), kernels="6.11-6.17 (6.12 by source)"),)),
    KnownBug(
        "pre_fault_obsolete_root_livelock",
        "KVM_PRE_FAULT_MEMORY retries forever on the vCPU's obsolete MMU root after a memslot is "
        "deleted and recreated, until the vCPU next enters KVM_RUN",
        "6.15 (\"KVM: x86/mmu: Check and free obsolete roots in kvm_mmu_reload()\", 20a6cff3b283; not in "
        "Debian 6.12.117)",
        (Answer(None, since=(6, 10), until=(6, 15), kernels="6.10-6.14 (measured: 6.12)"),)),
)}


def behaviour(name: str) -> Behaviour:
    try:
        return BEHAVIOURS[name]
    except KeyError:
        raise KeyError(f"no behaviour {name!r} in kvmffi.kernels.BEHAVIOURS") from None


def known_bug(name: str) -> KnownBug:
    try:
        return KNOWN_BUGS[name]
    except KeyError:
        raise KeyError(f"no known bug {name!r} in kvmffi.kernels.KNOWN_BUGS") from None


# How to get the private tier where this host lacks private memory.
TEST_KERNEL = ("run this tier inside the kvmffi test kernel (`kvmffi run private`, which builds "
               "a KVM_SW_PROTECTED_VM kernel and boots it under QEMU), or use a host with SEV-SNP/TDX")


@dataclass(frozen=True)
class Feature:
    """A uAPI feature the suites may need: the first upstream release with it (older kernels lack it
    by design: strict mode keeps such a skip a skip; on a newer kernel its absence is a failure), the
    kernel configuration it needs, and how else to get it."""
    since: Version
    config: str = ""     # e.g. "CONFIG_KVM_SW_PROTECTED_VM"
    how: str = ""        # beyond a new enough kernel with that configuration

    def hint(self) -> str:
        """The second half of a skip reason: 'needs Linux >= 6.8 with CONFIG_...; how'."""
        s = f"needs Linux >= {'.'.join(map(str, self.since))}" + (f" with {self.config}" if self.config else "")
        return f"{s}; {self.how}" if self.how else s


# Each feature by its uAPI name (a capability's KVM_CAP_* name, or a flag's): the one place that
# says which kernel brought it and what it takes (api.rst section 4 and 8, the Kconfig entries).
FEATURES: dict[str, Feature] = {
    "KVM_CAP_USER_MEMORY2": Feature((6, 8)),
    "KVM_CAP_MEMORY_FAULT_INFO": Feature((6, 8)),
    "KVM_CAP_MEMORY_ATTRIBUTES": Feature((6, 8), "CONFIG_KVM_SW_PROTECTED_VM (private memory)", TEST_KERNEL),
    "KVM_CAP_GUEST_MEMFD": Feature((6, 8), "CONFIG_KVM_GUEST_MEMFD (x86: CONFIG_KVM_SW_PROTECTED_VM, SEV or TDX)"),
    "KVM_CAP_VM_TYPES": Feature((6, 8), "a protected VM type (CONFIG_KVM_SW_PROTECTED_VM)", TEST_KERNEL),
    "KVM_CAP_PRE_FAULT_MEMORY": Feature((6, 10), how="a TDP MMU (kvm.tdp_mmu=Y with NPT/EPT on bare metal, or the "
                                                   "test kernel)"),
    "KVM_CAP_EXIT_HYPERCALL": Feature((5, 10)),
    "KVM_CAP_GUEST_MEMFD_FLAGS": Feature((6, 18)),
    "GUEST_MEMFD_FLAG_MMAP": Feature((6, 18)),
    "GUEST_MEMFD_FLAG_INIT_SHARED": Feature((6, 18)),
}
FEATURE_SINCE: dict[str, Version] = {name: f.since for name, f in FEATURES.items()}


@dataclass(frozen=True)
class EmulatorProblem:
    """A known problem of the emulator the test kernels may run under (QEMU TCG), not of KVM: a
    test whose failure shows exactly its symptom marks it an expected failure under emulation only;
    on real hardware and with KVM acceleration the same symptom fails."""
    name: str
    what: str

    def applies(self) -> bool:
        return under_emulation()

    def reason(self) -> str:
        return f"known emulator problem: {self.what}"


EMULATOR_PROBLEMS: dict[str, EmulatorProblem] = {p.name: p for p in (
    EmulatorProblem(
        "tcg_smp_reset_triple_fault",
        "under QEMU TCG with one host thread per emulated CPU (MTTCG, QEMU 7.2), two vCPUs converting "
        "memory at once ended in a triple fault whose registers are already the reset state in 8 of 120 "
        "runs (6.12 and 7.3 alike), against 0 of 60 with TCG on one thread and 0 of 60 on one CPU; the "
        "test kernels run TCG on one thread (kvmffi.testkernel.qemu.TCG)"),
)}


def emulator_problem(name: str) -> EmulatorProblem:
    try:
        return EMULATOR_PROBLEMS[name]
    except KeyError:
        raise KeyError(f"no emulator problem {name!r} in kvmffi.kernels.EMULATOR_PROBLEMS") from None


def predates(feature: str, k: Kernel | None = None) -> bool:
    """True when the running kernel is older than the first release with ``feature``."""
    since = FEATURE_SINCE.get(feature)
    return since is not None and (k or running()).version < since


def under_emulation() -> bool:
    """Is this machine a QEMU TCG guest (the test kernels on a host without nested virtualization)?
    Its CPU names itself so in /proc/cpuinfo."""
    return "QEMU TCG CPU" in cpu_info().get("model name", "")


def _param(path: str) -> bool | None:
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        return None
    return v in ("Y", "y", "1")


@dataclass(frozen=True)
class MmuMode:
    """The MMU KVM runs guests with, from its module parameters: two-dimensional paging (NPT/EPT) or
    shadow paging, and with TDP whether the TDP MMU or the legacy MMU manages it. None: not known
    (another KVM implementation, or no such parameter)."""
    tdp: bool | None          # kvm_amd.npt / kvm_intel.ept
    tdp_mmu: bool | None      # kvm.tdp_mmu

    @property
    def private_vm_types_possible(self) -> bool | None:
        """KVM_X86_SW_PROTECTED_VM needs the TDP MMU ("KVM: x86/mmu: Restrict KVM_SW_PROTECTED_VM to the
        TDP MMU", a1176ef5c92a, v6.8): False where KVM must not offer it, None where unknown."""
        if self.tdp is False or (self.tdp and self.tdp_mmu is False):
            return False
        if self.tdp and self.tdp_mmu:
            return True
        return None

    def __str__(self) -> str:
        if self.tdp is None:
            return "MMU mode unknown"
        if not self.tdp:
            return "shadow paging (npt=0 / ept=0)"
        return "the TDP MMU" if self.tdp_mmu else "TDP on the legacy MMU (kvm.tdp_mmu=0)"


def private_types_withheld(k: Kernel | None = None) -> str | None:
    """Why KVM offers no VM type with private memory by design in the running MMU mode, or None."""
    mode = mmu_mode(k)
    if mode.private_vm_types_possible is not False:
        return None
    return (f"KVM runs guests with {mode}: it offers no VM type with private memory there "
            "(KVM_X86_SW_PROTECTED_VM needs the TDP MMU, a1176ef5c92a); boot with kvm.tdp_mmu=1 and npt/ept on")


def cap_withheld(cap_name: str, k: Kernel | None = None) -> str | None:
    """Why the running MMU mode withholds a capability by design, or None: KVM_CAP_PRE_FAULT_MEMORY
    is tdp_enabled (arch/x86/kvm/x86.c), so shadow paging answers 0."""
    mode = mmu_mode(k)
    if cap_name == "KVM_CAP_PRE_FAULT_MEMORY" and mode.tdp is False:
        return f"KVM runs guests with {mode}: KVM_CAP_PRE_FAULT_MEMORY needs TDP (NPT/EPT)"
    return None


def mmu_mode(k: Kernel | None = None) -> MmuMode:
    """The running KVM's MMU mode, read from /sys/module/*/parameters."""
    module = (k or running()).module
    tdp = {"kvm_amd": _param("/sys/module/kvm_amd/parameters/npt"),
           "kvm_intel": _param("/sys/module/kvm_intel/parameters/ept")}.get(module)
    tdp_mmu = _param("/sys/module/kvm/parameters/tdp_mmu") if tdp is not None else None
    return MmuMode(tdp, tdp_mmu)
