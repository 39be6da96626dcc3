"""The suites' shared configuration; the fixtures themselves come from the kvmffi pytest plugin.
pytester drives inner sessions (the kernel-log gate's end-to-end test)."""

pytest_plugins = ["pytester"]
