"""Shared test configuration; the fixtures themselves come from the kvmffi pytest plugin."""

pytest_plugins = ["pytester"]
