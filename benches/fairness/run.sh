#!/usr/bin/env bash
# Fairness benchmark (issue 12): while one tenant ingests 1 MiB documents back to back, another
# tenant's hybrid-search latency is measured and set against the same tenant's latency on an idle
# server, in one run. Two configurations side by side: the default (bulk lane at nice 10) and
# `embed.bulk_nice = 0` (round-robin lanes only, no OS priority), to show what each part buys.
#
#   benches/fairness/run.sh [IDLE_SECS=20] [LOADED_SECS=60]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
scripts/fetch-model.sh >/dev/null
cargo build --release --bin warren 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
exec python3 benches/fairness/bench.py "$CARGO_TARGET_DIR/release/warren" "$PWD/models/all-MiniLM-L6-v2" "${1:-20}" "${2:-60}"
