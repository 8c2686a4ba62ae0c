#!/usr/bin/env bash
# Runs warren's whole test suite on a fresh machine: installs what the tests need (Caddy, curl, the
# embedding model), then runs every unit and integration test. `.ci/run` calls exactly this.
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

apt_install caddy curl ca-certificates
echo "==> embedding model"
scripts/fetch-model.sh

echo "==> cargo test"
export CARGO_TERM_COLOR=never
cargo test --no-fail-fast "$@"
