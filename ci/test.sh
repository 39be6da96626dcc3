#!/usr/bin/env bash
# The test command: install, type-check, then run every tier:
#   test kernels   Debian's linux-source-6.12 and linux-source-7.3, built once, cached
#   unit tier      no /dev/kvm needed
#   host tier      this machine's /dev/kvm, strict (a capability skip is a failure)
#   in each test kernel (6.12, 7.3): the host and private tiers, strict; the newest with two
#   NUMA nodes, so the guest_memfd mempolicy tests run (6.12 has no guest_memfd mmap)
# KVMFFI_SKIP_PRIVATE=1 leaves the test kernels out (e.g. a host without QEMU).
# KVMFFI_TEST_KERNELS="6.12 7.3" chooses the kernel versions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
versions=${KVMFFI_TEST_KERNELS:-6.12 7.3}

echo "== mypy"
mypy

declare -A kernel
if [ "${KVMFFI_SKIP_PRIVATE:-0}" != 1 ]; then
  for v in $versions; do
    echo "== test kernel $v (built once, then cached)"
    kernel[$v]=$(kvmffi kernel build --version "$v" | tail -n 1)
  done
fi

echo "== unit tier"
python -m pytest -q -p no:cacheprovider tests/unit

echo "== host tier (strict) on $(uname -r)"
kvmffi caps
KVMFFI_STRICT=1 python -m pytest -q -p no:cacheprovider tests/host

if [ "${KVMFFI_SKIP_PRIVATE:-0}" = 1 ]; then
  echo "== test kernels: left out (KVMFFI_SKIP_PRIVATE=1)"
else
  last=$(echo $versions | awk '{print $NF}')
  for v in $versions; do
    numa=0; [ "$v" = "$last" ] && numa=2
    echo "== host and private tiers (strict) in the $v test kernel$( [ $numa = 2 ] && echo ', 2 NUMA nodes')"
    kvmffi run --strict --numa $numa --kernel "${kernel[$v]}"
  done
fi
echo "== all tiers passed in $(( $(date +%s) - start )) s"
