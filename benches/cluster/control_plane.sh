#!/usr/bin/env bash
# The control plane in PostgreSQL against the embedded SQLite control.db, side by side in one run:
# authenticated 2xx req/s (every other status counted and printed) and latency with wrk on loopback,
# on the cheap authenticated endpoint (GET /api/v1/tenant) over TENANTS tenants, and the time to
# create them through the admin API (a control-plane write each).
#
#   benches/cluster/control_plane.sh [TENANTS=1000] [DURATION=20s] [ROUNDS=2]
#
# Installs wrk and Debian's postgresql when missing; PostgreSQL is initdb'd into a temp dir with its
# defaults (fsync on), as the postgres user when run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."; export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TENANTS=${1:-1000}; DURATION=${2:-20s}; ROUNDS=${3:-2}
need=(); command -v wrk >/dev/null || need+=(wrk); dpkg -s postgresql >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; fi
cargo build --release --bin warren 2>&1 | tail -1

WORK=$(mktemp -d); chmod 755 "$WORK"; ADMIN=bench-admin-token-0123456789; PORT=18788; PGPORT=15439
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir "$WORK/pg"; [ "$(id -u)" = 0 ] && chown postgres "$WORK/pg"
as_pg "$PGBIN/initdb" -D "$WORK/pg/data" --auth=trust --username=warren -E UTF8 >/dev/null
as_pg "$PGBIN/postgres" -D "$WORK/pg/data" -p $PGPORT -k "$WORK/pg" -c listen_addresses=127.0.0.1 >"$WORK/pg.log" 2>&1 &
PGPID=$!
WPID=""
cleanup() { [ -n "$WPID" ] && kill "$WPID" 2>/dev/null; as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || kill $PGPID; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p $PGPORT && break; sleep 0.1; done

source benches/lib/tenants.sh

# run NAME [ENV=VALUE...]: a fresh warren with its own data dir; TENANTS enterprise tenants (no plan
# limit meets the load); then wrk.
run() {
  local name=$1; shift
  local data=$WORK/data-$name; mkdir -p "$data"
  env "$@" WARREN_DATA_DIR="$data" WARREN_LISTEN=127.0.0.1:$PORT WARREN_ADMIN_TOKEN=$ADMIN WARREN_MODEL_DIR="$data/no-model" \
    RUST_LOG=warn "$CARGO_TARGET_DIR/release/warren" serve &
  WPID=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
  local t0; t0=$(date +%s.%N)
  create_tenants bench "$TENANTS" "$data/keys.txt"
  echo "== $name: $TENANTS tenants created in $(echo "$(date +%s.%N) - $t0" | bc) s (8 concurrent admin calls)"
  echo "== $name: wrk GET /api/v1/tenant over $TENANTS tenants, -t2 -c64 -d$DURATION"
  WARREN_BENCH_KEYS=$data/keys.txt WARREN_BENCH_PATH=/api/v1/tenant wrk -t2 -c64 -d"$DURATION" --latency -s benches/platform/keys.lua \
    "http://127.0.0.1:$PORT" | grep -E "^2xx:|^other|^ +(50|99)%"
  kill "$WPID"; wait "$WPID" 2>/dev/null || true; WPID=""
}

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}')"
for r in $(seq "$ROUNDS"); do
  # ABBA: the order alternates between rounds, so neither backend always runs on a warmer machine.
  db=warren_$r; "$PGBIN/createdb" -h 127.0.0.1 -p $PGPORT -U warren "$db"
  if [ $((r % 2)) = 1 ]; then
    run "sqlite-$r"; run "postgres-$r" WARREN_CONTROL_URL="postgres://warren@127.0.0.1:$PGPORT/$db"
  else
    run "postgres-$r" WARREN_CONTROL_URL="postgres://warren@127.0.0.1:$PGPORT/$db"; run "sqlite-$r"
  fi
done
