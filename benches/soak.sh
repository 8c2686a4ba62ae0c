#!/usr/bin/env bash
# Soak (issue 12): a long mixed load over many tenants with backups on (to moto's S3 server on
# loopback) and recommendations retrained every minute, sampling the server's RSS, open file
# descriptors, threads and the latency of successful responses every 15 s. Checks that RSS and file
# descriptors stay flat after warm-up, that p99 does not drift, and that no request gets a 5xx.
# Writes target/soak/series.csv, target/soak/soak.svg (the plot) and target/soak/warren.log.
#
#   benches/soak.sh [SECS=1800] [TENANTS=1000] [CAP=64] [CLIENTS=4]
set -euo pipefail
cd "$(dirname "$0")/.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
scripts/fetch-model.sh >/dev/null
py=$(scripts/test-venv.sh)   # moto_server
cargo build --release --bin warren 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== benches/soak.sh ${1:-1800} ${2:-1000} ${3:-64} ${4:-4}"
exec python3 benches/soak/soak.py "$CARGO_TARGET_DIR/release/warren" "$PWD/models/all-MiniLM-L6-v2" "$(dirname "$py")/moto_server" \
  "${1:-1800}" "${2:-1000}" "${3:-64}" "${4:-4}" "$CARGO_TARGET_DIR/soak"
