"""A selftests-style test VM: one call gives a VM, a guest program, memory, vCPUs and a run loop.

>>> with TestVm("shared_mem") as tvm:                       # vm_create_with_one_vcpu
...     mem = tvm.add_memory(TEST_GPA, 2 << 20, backing="gmem-mmap")
...     tvm.set_param("test_gpa", TEST_GPA)
...     tvm.run(on_sync=lambda vcpu, args: ...)

Modules: testvm (layout, construction, memory, guest globals), runloop (the run loop and exit
handling), backing (typed memory backings), ucall (the channel as the guest was built), watchdog,
diagnostics (failure reports), errors, marks (page marks shared with the guest library).
"""

from .backing import BACKINGS, Backing
from .errors import (GuestAssertionError, GuestError, GuestException, GuestHang, GuestTripleFault, Stopped,
                     UnexpectedExit)
from .marks import check_marks, fill_marks
from .runloop import RunResult
from .testvm import LOW_SLOT, STACK_SIZE, TEST_GPA, TestMemory, TestVm
from .ucall import UcallAbi
from .watchdog import KICK_SIGNAL, install_kick_handler

__all__ = ["BACKINGS", "Backing", "GuestAssertionError", "GuestError", "GuestException", "GuestHang",
           "GuestTripleFault", "Stopped", "UnexpectedExit", "check_marks", "fill_marks", "LOW_SLOT", "STACK_SIZE",
           "TEST_GPA", "RunResult", "TestMemory", "TestVm", "UcallAbi", "KICK_SIGNAL", "install_kick_handler"]
