"""pytest plugin (entry point ``kvmffi``): fixtures, markers, strict mode, report header, kernel-log
gate, leak check.

Quiet where unused: the header, the kernel-log gate, the kernel log on failures and the leak check
apply to a session only if one of its tests uses a kvmffi fixture or marker, or lives in
kvmffi's suites, or ``--kvmffi`` asks for them. Every other pytest session in the environment
runs as if the plugin were not installed. The state of a session lives in ``config.stash``.

Markers
    ``@pytest.mark.requires_cap(Cap.X, min=1, vm=False)``: skip unless KVM_CHECK_EXTENSION(X) >= min,
    asked on /dev/kvm, or with ``vm=True`` on a VM of the test's ``vm_type``.
    ``@pytest.mark.vm_types(VmType.A, ...)``: restrict the ``vm_type`` parametrization.

Strict mode (``--kvm-strict``, ini ``kvm_strict = true`` or ``KVMFFI_STRICT=1``) turns every
capability skip into a failure: use it on hosts that are supposed to have what the suite needs.

One module per idea; this package is the plugin pytest registers, so it gathers their hooks and
fixtures::

    state           the session's state (config.stash) and the host snapshot
    options         options, ini keys, markers; configure and unconfigure
    verdicts        a missing requirement: skip, or strict failure
    parametrize     vm_type and gmem_flags over what the host offers
    fixtures        kvm, vm_factory, vm, gmem_factory, vm_type, gmem_flags; requires_cap(vm=True)
    marks           what the markers check before a test runs
    activation      whether a session is kvmffi's, and the report header
    log_gate        the kernel-log gate and the kernel_log fixture
    failure_report  skips, strict failures and the kernel log in test reports
    leak_check      KVM fds and threads left at session end
"""

from __future__ import annotations

from ..requirements import expect_kernel_bug
from .activation import pytest_collection_modifyitems
from .failure_report import pytest_runtest_makereport
from .fixtures import GmemFactory, VmFactory, _kvmffi_vm_caps, gmem_factory, gmem_flags, kvm, vm, vm_factory, vm_type
from .leak_check import pytest_sessionfinish, pytest_sessionstart
from .log_gate import LogGate, kernel_log, pytest_runtest_logstart
from .marks import pytest_runtest_setup
from .options import MARKERS, pytest_addoption, pytest_configure, pytest_unconfigure
from .parametrize import RUNNABLE_TYPES, pytest_generate_tests
from .state import host_caps
from .verdicts import require_cap, skip_missing, strict_mode

__all__ = [
    # helpers for tests and scripts
    "MARKERS", "RUNNABLE_TYPES", "expect_kernel_bug", "host_caps", "require_cap", "skip_missing", "strict_mode",
    # types for annotating the fixtures
    "GmemFactory", "LogGate", "VmFactory",
    # fixtures
    "_kvmffi_vm_caps", "gmem_factory", "gmem_flags", "kernel_log", "kvm", "vm", "vm_factory", "vm_type",
    # hooks
    "pytest_addoption", "pytest_collection_modifyitems", "pytest_configure", "pytest_generate_tests",
    "pytest_runtest_logstart", "pytest_runtest_makereport", "pytest_runtest_setup", "pytest_sessionfinish",
    "pytest_sessionstart", "pytest_unconfigure",
]
