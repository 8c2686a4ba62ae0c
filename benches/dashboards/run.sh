#!/usr/bin/env bash
# Issue 14's dashboard benchmark: the portal overview of a tenant with 90 days of usage, and the
# operator overview over 10,000 tenants, each side by side with the JSON endpoint reading the same data.
#
#   benches/dashboards/run.sh [REQUESTS=500] [TENANTS=10000]
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --example dashboard_bench 2>&1 | tail -1
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
echo "== benches/dashboards/run.sh ${1:-500} ${2:-10000}"
exec "$CARGO_TARGET_DIR/release/examples/dashboard_bench" "${1:-500}" "${2:-10000}"
