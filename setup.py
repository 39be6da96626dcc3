"""kvmffi's packages, the one setting pyproject.toml cannot give: every package under kvmffi/
(found, as a find directive would) and kvmffi.guests, which pyproject.toml's package-dir maps
from the top-level guests/ and a find directive cannot add. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["kvmffi", "kvmffi.*"]), "kvmffi.guests"])
