#!/usr/bin/env bash
# Plans overhead: throughput of GET /api/v1/tenant (authenticated, cheap) with rate limits, quotas and
# usage metering on (default) against all three off (`billing.enforce = false`), in one run.
# Two servers run side by side on identical data shapes; wrk alternates between them (off, on, off,
# on, ...) so drift of the machine hits both equally. Tenants are enterprise with a bench plans file
# whose limits are never reached, so every request does the full check and is served (no 429s).
#
#   benches/platform/plans_overhead.sh [TENANTS=100] [DURATION=10s] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
TENANTS=${1:-100}; DURATION=${2:-10s}; ROUNDS=${3:-3}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bin warren 2>&1 | tail -1

WORK=$(mktemp -d); ADMIN=bench-admin-token-0123456789
PLANS=$WORK/plans.toml
sed -e 's/^rate_per_sec = 1000$/rate_per_sec = 100000000/' -e 's/^burst = 10_000$/burst = 100000000/' config/plans.toml > "$PLANS"
grep -q 'rate_per_sec = 100000000' "$PLANS" || { echo "could not raise the enterprise limits"; exit 1; }
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

start() { # name port enforce
  mkdir -p "$WORK/$1"
  WARREN_DATA_DIR=$WORK/$1 WARREN_LISTEN=127.0.0.1:$2 WARREN_ADMIN_TOKEN=$ADMIN WARREN_PLANS=$PLANS \
    WARREN_BILLING__ENFORCE=$3 WARREN_MODEL_DIR=$WORK/no-model RUST_LOG=error target/release/warren serve &
  PIDS+=($!)
  for _ in $(seq 300); do curl -sf 127.0.0.1:$2/health >/dev/null && break; sleep 0.1; done
  python3 - "$2" "$ADMIN" "$TENANTS" "$WORK/$1.keys" <<'PY'
import json, sys, urllib.request
port, admin, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
keys = []
for i in range(n):
    body = json.dumps({"slug": f"bench{i:05d}", "name": "b", "email": "b@b.co", "tier": "enterprise"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/admin/v1/tenants", body,
        {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    keys.append(json.load(urllib.request.urlopen(req))["api_key"])
open(out, "w").write("\n".join(keys) + "\n")
PY
}
start off 18801 false
start on 18802 true

run() { # name port → req/s
  WARREN_BENCH_KEYS=$WORK/$1.keys WARREN_BENCH_PATH=/api/v1/tenant wrk -t2 -c64 -d"$DURATION" -s benches/platform/keys.lua \
    "http://127.0.0.1:$2" > "$WORK/wrk.txt"
  if grep -q "Non-2xx" "$WORK/wrk.txt"; then echo "non-2xx answers on $1:" >&2; cat "$WORK/wrk.txt" >&2; exit 1; fi
  grep Requests/sec "$WORK/wrk.txt" | awk '{print $2}'
}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== GET /api/v1/tenant over $TENANTS enterprise tenants, wrk -t2 -c64 -d$DURATION, $ROUNDS rounds"
run off 18801 >/dev/null; run on 18802 >/dev/null  # warm-up
OFF=(); ON=()
for r in $(seq "$ROUNDS"); do
  o=$(run off 18801); n=$(run on 18802)
  OFF+=("$o"); ON+=("$n")
  echo "round $r: off $o req/s, on $n req/s"
done
python3 - "${OFF[*]}" "${ON[*]}" <<'PY'
import sys, statistics
off = [float(x) for x in sys.argv[1].split()]; on = [float(x) for x in sys.argv[2].split()]
mo, mn = statistics.mean(off), statistics.mean(on)
print(f"== mean: off {mo:.0f} req/s, on {mn:.0f} req/s, overhead {100*(mo-mn)/mo:.1f} %")
PY
echo "== usage rows metered by the 'on' server: $(curl -s -H "Authorization: Bearer $ADMIN" 127.0.0.1:18802/admin/v1/usage | python3 -c 'import json,sys; print(sum(t["api_calls"] for t in json.load(sys.stdin)["tenants"]))') calls"
