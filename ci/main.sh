#!/usr/bin/env bash
# The main job: install, report this host's KVM, run the suites it can run, with a report.
# Extra arguments go to `kvmffi run` (e.g. -k guest_memfd, --format ktap).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh >&2
export PATH="$PWD/.venv/bin:$PATH"
kvmffi caps >&2
echo >&2
exec kvmffi run "$@"
