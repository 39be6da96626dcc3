"""hints: the environment's reasons, named."""


def test_security_module_refusal_names_the_lsms(tmp_path) -> None:
    import errno

    from kvmffi.hints import security_module_refusal
    lsm = tmp_path / "lsm"
    lsm.write_text("lockdown,capability,selinux\n")
    msg = security_module_refusal("KVM_CREATE_GUEST_MEMFD", errno.EACCES, str(lsm))
    assert msg is not None and "EACCES" in msg and "lockdown,capability,selinux" in msg
    assert security_module_refusal("KVM_CREATE_GUEST_MEMFD", errno.EINVAL, str(lsm)) is None
    assert security_module_refusal("KVM_CREATE_VM", errno.EPERM, str(lsm)) is None


def test_capability_hints_come_from_the_features() -> None:
    from kvmffi.hints import CAP_HINTS
    from kvmffi.kernels import FEATURES, Feature
    from kvmffi.uapi import Cap
    assert CAP_HINTS[Cap.GUEST_MEMFD] == FEATURES["KVM_CAP_GUEST_MEMFD"].hint()
    assert CAP_HINTS[Cap.GUEST_MEMFD].startswith("needs Linux >= 6.8 with CONFIG_KVM_GUEST_MEMFD")
    assert {Cap(c).kernel_name for c in CAP_HINTS} == {n for n in FEATURES if n.startswith("KVM_CAP_")}
    assert Feature((6, 10), how="a TDP MMU").hint() == "needs Linux >= 6.10; a TDP MMU"
    assert Feature((6, 8), "CONFIG_X").hint() == "needs Linux >= 6.8 with CONFIG_X"


def test_cpu_facts_and_emulator_problems(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kvmffi import kernels
    monkeypatch.setattr(kernels, "cpu_info", lambda: {"model name": "QEMU TCG CPU version 2.5+",
                                                      "flags": "fpu sse2 svm"})
    assert kernels.under_emulation() and kernels.nested_virtualization()
    assert kernels.emulator_problem("tcg_smp_reset_triple_fault").applies()
    monkeypatch.setattr(kernels, "cpu_info", lambda: {"model name": "AMD EPYC 7763", "flags": "fpu sse2"})
    assert not kernels.under_emulation() and not kernels.nested_virtualization()
    assert not kernels.emulator_problem("tcg_smp_reset_triple_fault").applies()
