#!/usr/bin/env bash
# A worked `git bisect run kvmffi bisect`: a local git repository of the test kernel's source
# with a few commits, one of which makes KVM_CREATE_GUEST_MEMFD accept size 0. The bisect
# names that commit. Takes one cold kernel build (4-8 minutes on 2 cores) plus one
# incremental rebuild per step. Usage: bash ci/worked-bisect.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
work=${1:-/var/tmp/kvmffi-worked-bisect}
src=$(python -c 'from kvmffi.testkernel.sources import kernel_source; print(kernel_source("6.12").tree)')
tree="$work/linux"
rm -rf "$work" && mkdir -p "$work"
echo "== copying $src to $tree"
cp -a "$src" "$tree"
cd "$tree"
git init -q -b main
git config user.email bisect@kvmffi.invalid
git config user.name "kvmffi worked bisect"
# Debian's source package ships a .gitignore that ignores everything: add by force
git add -f -A . >/dev/null && git commit -qm "base: Debian linux-source-6.12"

sed -i '1a /* kvmffi worked bisect: a harmless change */' virt/kvm/kvm_main.c
git commit -qam "kvm: harmless comment in kvm_main.c"
sed -i '1a /* kvmffi worked bisect: another harmless change */' virt/kvm/guest_memfd.c
git commit -qam "kvm: harmless comment in guest_memfd.c"
# the regression: size 0 no longer refused by KVM_CREATE_GUEST_MEMFD
grep -n 'if (size <= 0 || !PAGE_ALIGNED(size))' virt/kvm/guest_memfd.c >/dev/null
sed -i 's/if (size <= 0 || !PAGE_ALIGNED(size))/if (size < 0 || !PAGE_ALIGNED(size))/' virt/kvm/guest_memfd.c
git commit -qam "kvm: guest_memfd: simplify the size check (breaks size 0)"
bad_commit=$(git rev-parse HEAD)
sed -i '1a /* kvmffi worked bisect: a later harmless change */' arch/x86/kvm/x86.c
git commit -qam "kvm: x86: harmless comment"
git log --oneline | cat

echo "== git bisect run kvmffi bisect --tree . -k test_zero_size_fails host/test_guest_memfd_create.py"
git bisect start HEAD HEAD~4 >/dev/null
git bisect run kvmffi bisect --tree . -k test_zero_size_fails host/test_guest_memfd_create.py 2>&1 \
  | grep -E "^kvmffi bisect:|is the first bad commit|^commit |^    kvm|running" || true
found=$(git rev-parse refs/bisect/bad)
git bisect reset >/dev/null 2>&1 || true
echo "== the bisect named $found; the breaking commit is $bad_commit"
[ "$found" = "$bad_commit" ]
