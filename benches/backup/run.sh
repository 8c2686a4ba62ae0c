#!/usr/bin/env bash
# Backup benchmark (issue 5), against moto's S3 server on loopback and the release binary:
#   1. 10,000 tenants with backups on, 100 of them writing: RSS, fds, object PUTs/min while idle,
#      RPO p50/p99 (commit acknowledged -> level-0 file in S3);
#   2. write throughput with backups on vs off, alternating in one run;
#   3. restore time of a ~100 MB tenant: `warren restore --to` vs `litestream restore`, same replica.
#
#   benches/backup/run.sh [TENANTS=10000] [WRITERS=100] [RESTORE_MB=100]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TENANTS=${1:-10000}; WRITERS=${2:-100}; RESTORE_MB=${3:-100}
PY=$(scripts/test-venv.sh)            # moto_server and litestream live in the test virtualenv
cargo build --release --bin warren 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
exec "$PY" benches/backup/bench.py "$CARGO_TARGET_DIR/release/warren" "$(dirname "$PY")" "$TENANTS" "$WRITERS" "$RESTORE_MB"
