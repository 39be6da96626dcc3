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
