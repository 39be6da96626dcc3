#!/usr/bin/env bash
# The test command: install, lint and type-check, then run every tier:
#   test kernels   Debian's linux-source-6.12 and -7.3, and 7.3 with the debug fragment (KASAN,
#                  lockdep, ...), each built once and cached
#   unit tier      no /dev/kvm needed
#   matrix         the host and private tiers, strict, in: this host (host tier), the 6.12 test
#                  kernel, 7.3 with two NUMA nodes, 7.3 on the legacy MMU (kvm.tdp_mmu=0, host tier);
#                  the shadow-MMU configuration is left out to keep a cold run near 45 minutes
#   debug kernel   every tier (host and private, the kernel-log gate's LKDTM tests among them) and a
#                  short uAPI fuzz, in 7.3-debug (KASAN with KASAN_VMALLOC, lockdep, ...)
# KVMFFI_SKIP_PRIVATE=1 leaves the test kernels out (e.g. a host without QEMU): unit and host tiers only.
# KVMFFI_CI_CONFIGS / KVMFFI_FUZZ_EXAMPLES override the matrix configurations and the fuzz length.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
configs=${KVMFFI_CI_CONFIGS:-host,6.12,7.3-numa2,7.3-tdp-mmu-off,7.3-shadow-mmu}
examples=${KVMFFI_FUZZ_EXAMPLES:-50}

echo "== ruff and mypy (package, suites, tests, bench)"
ruff check
mypy

if [ "${KVMFFI_SKIP_PRIVATE:-0}" != 1 ]; then
  for v in 6.12 7.3; do
    echo "== test kernel $v (built once, then cached) [$(( $(date +%s) - start )) s]"
    kvmffi kernel build --version "$v" | tail -n 1
  done
  echo "== test kernel 7.3 with the debug fragment [$(( $(date +%s) - start )) s]"
  kvmffi kernel build --version 7.3 --debug | tail -n 1
fi

echo "== unit tier [$(( $(date +%s) - start )) s]"
python -m pytest -q -p no:cacheprovider tests/unit tests/integration

kvmffi caps
if [ "${KVMFFI_SKIP_PRIVATE:-0}" = 1 ]; then
  echo "== host tier (strict) on $(uname -r)"
  kvmffi run --strict host
  echo "== test kernels: left out (KVMFFI_SKIP_PRIVATE=1)"
  exit 0
fi

echo "== matrix (strict): $configs [$(( $(date +%s) - start )) s]"
logs=$(mktemp -d /tmp/kvmffi-ci-matrix.XXXXXX)
if ! kvmffi matrix --strict --configs "$configs" --logs "$logs"; then
  for f in "$logs"/*.log; do echo "---- $f"; grep -E "^(FAILED|ERROR)|^E  " "$f" | head -40; done
  exit 1
fi

echo "== debug kernel: every tier and a $examples-sequence uAPI fuzz, strict [$(( $(date +%s) - start )) s]"
KVMFFI_FUZZ_EXAMPLES=$examples kvmffi run --strict --kernel 7.3-debug

echo "== all tiers passed in $(( $(date +%s) - start )) s"
