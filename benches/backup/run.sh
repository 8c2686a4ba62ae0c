#!/usr/bin/env bash
# Backup benchmark (issues 5 and 16), against an S3-compatible server on loopback and the release binary.
# The server is s3s-fs (a Rust S3 server over the file system, installed from crates.io into
# target/bench-tools on first use); S3_SERVER=moto uses moto (Python) from the test virtualenv instead.
#   1. 10,000 tenants with backups on, 100 of them writing: RSS, fds, object PUTs/min while idle,
#      RPO p50/p99 (commit acknowledged -> level-0 file in S3);
#   2. write throughput with backups on vs off, alternating in one run (3 runs each, no embeddings);
#   3. restore time of a ~100 MB tenant: `warren restore --to` vs `litestream restore`, same replica.
#
#   benches/backup/run.sh [TENANTS=10000] [WRITERS=100] [RESTORE_MB=100]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TENANTS=${1:-10000}; WRITERS=${2:-100}; RESTORE_MB=${3:-100}
PY=$(scripts/test-venv.sh)            # moto_server and litestream live in the test virtualenv
cargo build --release --bin warren 2>&1 | tail -1
TOOLS=$CARGO_TARGET_DIR/bench-tools
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  cargo install s3s-fs@0.14.1 --features binary --locked --root "$TOOLS" 2>&1 | tail -1
fi
export S3S_FS=$TOOLS/bin/s3s-fs
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
exec "$PY" benches/backup/bench.py "$CARGO_TARGET_DIR/release/warren" "$(dirname "$PY")" "$TENANTS" "$WRITERS" "$RESTORE_MB"
