#!/usr/bin/env bash
# Issue 15's write benchmark: tenant writes with PRAGMA secure_delete OFF against ON, one run.
#
#   benches/erasure/run.sh [DOCS=2000] [ROUNDS=6]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --example secure_delete_bench 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== benches/erasure/run.sh ${1:-2000} ${2:-6} (data dir on $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2{print $2}'))"
exec "$CARGO_TARGET_DIR/release/examples/secure_delete_bench" "${1:-2000}" "${2:-6}"
