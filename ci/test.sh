#!/usr/bin/env bash
# The test command: install, type-check, then run every tier:
#   unit tier      no /dev/kvm needed
#   host tier      this machine's /dev/kvm, strict (a capability skip is a failure)
#   private tier   inside the test kernel (built once, cached), strict
# KVMFFI_SKIP_PRIVATE=1 leaves the private tier out (e.g. a host without QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)

echo "== mypy"
mypy

echo "== unit tier"
python -m pytest -q -p no:cacheprovider tests/unit

if [ "${KVMFFI_SKIP_PRIVATE:-0}" != 1 ]; then
  echo "== test kernel (built once, then cached)"
  kernel=$(kvmffi kernel build | tail -n 1)
fi

echo "== host tier (strict) on $(uname -r)"
kvmffi caps
KVMFFI_STRICT=1 python -m pytest -q -p no:cacheprovider tests/host

if [ "${KVMFFI_SKIP_PRIVATE:-0}" = 1 ]; then
  echo "== private tier: left out (KVMFFI_SKIP_PRIVATE=1)"
else
  echo "== private tier (strict) in the test kernel"
  kvmffi run --strict --kernel "$kernel" tests/private
fi
echo "== all tiers passed in $(( $(date +%s) - start )) s"
