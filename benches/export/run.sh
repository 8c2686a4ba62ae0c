#!/usr/bin/env bash
# Issue 15's export benchmark: warren tenant export and import of a ~MB tenant, side by side with
# sqlite3 .backup + tar | zstd -3 on the same database, in one run.
#
#   benches/export/run.sh [MB=100] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
command -v sqlite3 >/dev/null && command -v zstd >/dev/null || sudo apt-get install -y sqlite3 zstd
cargo build --release --example export_bench 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== benches/export/run.sh ${1:-100} ${2:-3} (temp dir on $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2{print $2}'))"
exec "$CARGO_TARGET_DIR/release/examples/export_bench" "${1:-100}" "${2:-3}"
