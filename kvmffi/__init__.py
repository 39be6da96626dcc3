"""kvmffi: a userspace-VMM test harness for KVM guest_memfd and private memory.

The bindings: Kvm (/dev/kvm) creates a Vm, which creates Vcpus and GuestMemfds; Vcpu.run()
returns typed exits. The test VM (kvmffi.testvm), the pytest plugin, the suites and the
test kernels build on them (docs/architecture.md)."""

from .errors import HostMemoryFault, KvmError, MissingCapability, VmDeadError, errno_of
from .exits import (Exit, FailEntryExit, HltExit, HypercallExit, InternalErrorExit, IntrExit, IoExit, MemoryFaultExit,
                    MmioExit, OtherExit, ShutdownExit, SystemEventExit)
from .guest_memfd import GuestMemfd
from .memory import HostMemory
from .system import Kvm
from .uapi import (PAGE_SIZE, Cap, ExitReason, GuestMemfdFlag, HypercallNr, IoDirection, MapGpaAttr, MemoryAttribute,
                   MemoryFaultFlag, MemslotFlag, VmType)
from .regs import DTable, Regs, Segment, Sregs
from .vcpu import Vcpu
from .vm import Memslot, Vm

__version__ = "0.1.0"

__all__ = [
    "HostMemoryFault", "MissingCapability", "Cap", "DTable", "Exit", "ExitReason", "FailEntryExit", "GuestMemfd",
    "GuestMemfdFlag", "HltExit", "HostMemory", "HypercallExit", "HypercallNr", "InternalErrorExit", "IntrExit",
    "IoDirection", "IoExit", "Kvm", "KvmError", "MapGpaAttr", "MemoryAttribute", "MemoryFaultExit", "MemoryFaultFlag",
    "Memslot", "MemslotFlag", "MmioExit", "OtherExit", "PAGE_SIZE", "Regs", "Segment", "ShutdownExit", "Sregs",
    "SystemEventExit", "Vcpu", "Vm", "VmDeadError", "VmType", "errno_of",
]
