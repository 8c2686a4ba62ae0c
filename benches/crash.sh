#!/usr/bin/env bash
# The long crash-point run (issue 12): the suite's harness (tests/api/crash.rs) over SEEDS seeds.
# Each seed kills the real binary (a debug build: crash points exist only there) once at each of the
# 12 crash points, varying which hit of the point kills and how many writers run, then checks the
# oracle: every acknowledged write present, integrity_check ok, litestream restores each replica to
# the same state, usage never double-counted. Prints the figure recorded in docs/RELIABILITY.md.
#
#   benches/crash.sh [SEEDS=10] [FIRST_SEED=1]     (seed 0 is the one the suite runs)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10}; first=${2:-1}
scripts/test-venv.sh >/dev/null   # moto (the S3 server) and litestream
command -v sqlite3 >/dev/null || { echo "needs the sqlite3 CLI (apt-get install sqlite3)" >&2; exit 2; }
report=$(mktemp); trap 'rm -f "$report"' EXIT
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== $seeds seeds from $first: WARREN_CRASH_SEEDS=$seeds cargo test --test api crash::kill_9"
WARREN_CRASH_SEEDS=$seeds WARREN_CRASH_FIRST_SEED=$first WARREN_CRASH_REPORT=$report \
  cargo test --test api crash::kill_9 -- --nocapture 2>&1 | grep -E "crash point .* reached|panicked|test result" || true
[[ -s $report ]] || { echo "the crash run failed (no report)" >&2; exit 1; }
cat "$report"
