#!/usr/bin/env bash
# Runs warren's whole test suite on a fresh machine: installs what the tests need (Caddy, PostgreSQL, curl, the
# embedding model, the Python peers, Chromium and the browser driver), checks formatting and clippy (warnings are errors), then runs
# every unit and integration test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

apt_install caddy curl ca-certificates sqlite3 nodejs chromium postgresql
echo "==> python test peers"
scripts/test-venv.sh >/dev/null
echo "==> browser test driver (playwright-core, axe-core)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
echo "==> embedding model"
scripts/fetch-model.sh

export CARGO_TERM_COLOR=never
echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

echo "==> cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Library unit tests, the binary, and every integration test (there are no doc tests). The ignored
# tests are the benchmark harnesses, run by benches/*/run.sh.
set +e
cargo test --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
echo "tests: ${passed} passed, ${failed} failed"
exit "$status"
