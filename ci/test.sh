#!/usr/bin/env bash
# The test command: install, type-check, then run every tier this machine can run.
#   unit tier     no /dev/kvm needed
#   host tier     this machine's /dev/kvm, strict (a capability skip is a failure)
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== mypy"
mypy

echo "== unit and library tests"
python -m pytest -q tests/unit

echo "== host tier (strict) on $(uname -r)"
KVMFFI_STRICT=1 python -m pytest -q tests/host
