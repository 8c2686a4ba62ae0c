#!/usr/bin/env bash
# Cluster benchmark: forwarded-request overhead and failover time over three nodes (see bench.py).
#   benches/cluster/run.sh [TENANTS=200] [DURATION=10s]
# Needs the test virtualenv (moto): scripts/test-venv.sh. Installs wrk and postgresql when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
need=(); command -v wrk >/dev/null || need+=(wrk); dpkg -s postgresql >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
scripts/test-venv.sh >/dev/null
cargo build --release --bin warren 2>&1 | tail -1
exec python3 benches/cluster/bench.py "$CARGO_TARGET_DIR/release/warren" "${1:-200}" "${2:-10s}"
