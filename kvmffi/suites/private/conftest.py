"""Private tier: needs a VM type with private memory (KVM_X86_SW_PROTECTED_VM in the test kernel).

Modules mark themselves ``pytest.mark.private``: ``vm_type`` then goes over the VM types
with KVM_MEMORY_ATTRIBUTE_PRIVATE, and on a host without one each test skips naming
KVM_CAP_VM_TYPES / KVM_CAP_MEMORY_ATTRIBUTES and how to get them (`kvmffi run private`
boots the test kernel); strict mode fails instead.
"""
