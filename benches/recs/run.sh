#!/usr/bin/env bash
# Recommendations benchmarks.
#
#   benches/recs/run.sh quality    # leave-last-out on MovieLens-100k over HTTP vs popularity, item-kNN, implicit ALS
#   benches/recs/run.sh train      # training time and peak RSS, synthetic 2k / 10k / 100k-product catalogs
#   benches/recs/run.sh latency    # GET /recommendations p50/p99 at concurrency 1 and 8, synthetic 10k-product tenant
#
# Python packages go into target/recs-venv (numpy, scipy, implicit, and the recbole wheel without
# its dependencies, only for the MovieLens-100k files it ships). WARREN_BIN overrides the server
# binary (default: a release build); WARREN_MODEL_DIR the embedding model (default models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
WHAT=${1:-quality}
VENV=$CARGO_TARGET_DIR/recs-venv
if [ "$WHAT" = quality ] && [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy scipy implicit threadpoolctl
  "$VENV/bin/pip" install -q --no-deps recbole
fi
if [ -z "${WARREN_BIN:-}" ]; then
  cargo build --release --bin warren --example recs_bench 2>&1 | tail -1
  WARREN_BIN=$CARGO_TARGET_DIR/release/warren; BENCH=$CARGO_TARGET_DIR/release/examples/recs_bench
else
  BENCH=${RECS_BENCH_BIN:-$(dirname "$WARREN_BIN")/examples/recs_bench}
fi
if [ "$WHAT" = train ]; then
  for n in 2000 10000 100000; do "$BENCH" train "$n"; done
  exit 0
fi

DATA=$(mktemp -d); PORT=${PORT:-18797}; ADMIN=bench-admin-token-0123456789
WARREN_DATA_DIR=$DATA WARREN_LISTEN=127.0.0.1:$PORT WARREN_ADMIN_TOKEN=$ADMIN WARREN_BILLING__ENFORCE=false \
  WARREN_MODEL_DIR=${WARREN_MODEL_DIR:-models/all-MiniLM-L6-v2} WARREN_RECS__DEBOUNCE_MS=60000 WARREN_RECS__MAX_DELAY_SECS=600 \
  RUST_LOG=warn "$WARREN_BIN" serve &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
case "$WHAT" in
  quality) "$VENV/bin/python" benches/recs/movielens_eval.py --url "http://127.0.0.1:$PORT" --admin "$ADMIN" ;;
  latency) "$BENCH" latency "http://127.0.0.1:$PORT" "$ADMIN" 10000 ;;
  *) echo "usage: $0 quality|train|latency" >&2; exit 2 ;;
esac
