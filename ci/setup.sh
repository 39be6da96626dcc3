#!/usr/bin/env bash
# Install what kvmffi needs on Debian 12 (as root) into ./.venv. Safe to run again.
#   KVMFFI_NO_KERNEL_DEPS=1  skip the test-kernel packages (QEMU, kernel source, build tools)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
want=(python3 python3-venv python3-dev gcc make libffi-dev)
if [ "${KVMFFI_NO_KERNEL_DEPS:-0}" != 1 ]; then
  want+=(qemu-system-x86 linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils kmod rsync uuid-dev)
fi
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "kvmffi setup: missing Debian packages: ${need_apt[*]}; run as root or: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  echo "kvmffi setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The distribution's interpreter, the one the packages above are for (python3-venv, python3-dev),
# not whichever python3 comes first on PATH (a pyenv build, say). Against a pyenv build without
# --enable-optimizations and with a shared libpython, Debian's (linked statically) started in
# about half the time and ran kvmffi's pytest processes in the test kernels, under TCG, about a
# quarter faster. PYTHON=... picks another.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ]; then
  PY=/usr/bin/python3
fi
if [ ! -x .venv/bin/python ]; then
  echo "kvmffi setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.kvmffi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "kvmffi setup: pip install -e .[test]"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
echo "kvmffi setup: ready ($(.venv/bin/python --version), $(.venv/bin/kvmffi --version 2>/dev/null || echo kvmffi))"
