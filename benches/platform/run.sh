#!/usr/bin/env bash
# Platform benchmark: authenticated 2xx req/s (every other status counted and printed) and latency with wrk on loopback, spread over 1,000 tenants
# with the handle cap at 256; then cold-open latency and RSS per open tenant (examples/tenant_open.rs).
#
#   benches/platform/run.sh [TENANTS=1000] [CAP=256] [DURATION=20s]
#   ZIPF_TENANTS=10000 benches/platform/run.sh ...   also: the same request over 10,000 tenants, Zipf(1.0)
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TENANTS=${1:-1000}; CAP=${2:-256}; DURATION=${3:-20s}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bin warren --example tenant_open 2>&1 | tail -1

DATA=$(mktemp -d); PORT=18787; ADMIN=bench-admin-token-0123456789
KEYS=$DATA/keys.txt
WARREN_DATA_DIR=$DATA WARREN_LISTEN=127.0.0.1:$PORT WARREN_ADMIN_TOKEN=$ADMIN WARREN_MAX_OPEN_TENANTS=$CAP \
  WARREN_MODEL_DIR=$DATA/no-model RUST_LOG=warn $CARGO_TARGET_DIR/release/warren serve &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done

source benches/lib/tenants.sh
create_tenants bench "$TENANTS" "$KEYS"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# The warm path: the same storage-touching request over as many tenants as fit in the cap (every
# handle stays open after its first request), in the same run as the cold one.
WARM=$DATA/warm-keys.txt; head -n $(( CAP < TENANTS ? CAP * 3 / 4 : TENANTS )) "$KEYS" > "$WARM"
for run in "/api/v1/tenant $KEYS all" "/api/v1/documents?limit=1 $WARM warm" "/api/v1/documents?limit=1 $KEYS all"; do
  set -- $run
  echo "== wrk GET $1 over $(wc -l < "$2") tenants ($3), cap $CAP"
  WARREN_BENCH_KEYS=$2 WARREN_BENCH_PATH=$1 wrk -t2 -c64 -d"$DURATION" --latency -s benches/platform/keys.lua "http://127.0.0.1:$PORT" \
    | grep -E "^2xx:|^ +(50|99)%"
done
if [ -n "${ZIPF_TENANTS:-}" ]; then
  # Closer to production: many mostly idle tenants, traffic skewed by Zipf(1.0).
  create_tenants zipf "$ZIPF_TENANTS" "$DATA/zipf-keys.txt" "$KEYS"
  echo "== wrk GET /api/v1/documents?limit=1 over $ZIPF_TENANTS tenants, Zipf(1.0), cap $CAP"
  WARREN_BENCH_ZIPF=1.0 WARREN_BENCH_KEYS=$DATA/zipf-keys.txt WARREN_BENCH_PATH="/api/v1/documents?limit=1" \
    wrk -t2 -c64 -d"$DURATION" --latency -s benches/platform/keys.lua "http://127.0.0.1:$PORT" | grep -E "^2xx:|^ +(50|99)%"
fi
echo "== tenant opens during the runs (from /metrics: count, and mean seconds of the whole open, its blocking work, and its wait for a blocking thread)"
curl -s 127.0.0.1:$PORT/metrics > "$DATA/metrics.txt"
grep -E "^warren_tenant_open_(seconds|work_seconds|queue_seconds)_(sum|count)" "$DATA/metrics.txt" || true
# p50 and p99 of the whole open under the load above, as histogram bucket upper bounds.
awk -F'[{}" ]+' '/^warren_tenant_open_seconds_bucket/ { le[n] = $3; c[n++] = $NF }
  END { if (n) { t = c[n-1]; p50 = p99 = ""; for (i = 0; i < n; i++) { if (p50 == "" && c[i] >= 0.5 * t) p50 = le[i]; if (p99 == "" && c[i] >= 0.99 * t) p99 = le[i] }
        print "cold open under load (whole open, bucket bounds): p50 <= " p50 " s, p99 <= " p99 " s" } }' "$DATA/metrics.txt"
echo "== server RSS: $(grep VmRSS /proc/$PID/status | awk '{print $2, $3}')  fds: $(ls /proc/$PID/fd | wc -l)"
kill $PID; wait $PID 2>/dev/null || true

echo "== cold open and RSS per open tenant (in-process, $TENANTS tenants, cap $CAP)"
$CARGO_TARGET_DIR/release/examples/tenant_open "$TENANTS" "$CAP"
