"""The test-kernel tier: build a kernel with KVM_SW_PROTECTED_VM, boot it under QEMU, run inside."""

from .build import KernelBuildError, build_kernel, default_image
from .qemu import BootError, BootResult, boot

__all__ = ["BootError", "BootResult", "KernelBuildError", "boot", "build_kernel", "default_image"]
