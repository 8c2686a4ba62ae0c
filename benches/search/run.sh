#!/usr/bin/env bash
# Search under concurrency (issue 16, item 4): hybrid search p50/p99 (query embedding included) on
# one 5,000-document tenant at concurrency 1, 8 and 32, closed loop, no think time, with the bounded
# search queue in place. Counts 200s only and reports every other status (503 `overloaded` is the
# expected answer beyond capacity).
#
#   benches/search/run.sh [DOCS=5000] [SECS=20]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
scripts/fetch-model.sh >/dev/null
cargo build --release --bin warren 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== benches/search/run.sh ${1:-5000} ${2:-20}"
exec python3 benches/search/bench.py "$CARGO_TARGET_DIR/release/warren" "$PWD/models/all-MiniLM-L6-v2" "${1:-5000}" "${2:-20}"
