#!/usr/bin/env bash
# Fuzzing (issue 12): runs every cargo-fuzz target in fuzz/ for SECS seconds each (libFuzzer, nightly
# toolchain, address sanitizer), growing the corpus in fuzz/corpus/<target>. A crash leaves its input
# in fuzz/artifacts/<target>/; turn it into a regression test in the normal suite before fixing it.
#
#   benches/fuzz.sh [SECS=300] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-300}; shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || { echo "fuzz.sh needs the nightly toolchain (rustup toolchain install nightly)"; exit 1; }
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cd fuzz && cargo +nightly fuzz list)
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); ${SECS}s per target"
cd fuzz
cargo +nightly fuzz build 2>&1 | tail -1
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 > "/tmp/fuzz-$t.log" 2>&1; then
    result="no crash"
  else
    result="CRASH (see fuzz/artifacts/$t and /tmp/fuzz-$t.log)"; status=1
  fi
  runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "/tmp/fuzz-$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: $(( $(date +%s) - start )) s, $runs executions, corpus $(ls "corpus/$t" | wc -l) files: $result"
done
exit $status
