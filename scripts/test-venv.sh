#!/usr/bin/env bash
# Creates (or reuses) the Python virtualenv the test suite drives real peers from: moto's S3 server,
# the litestream binary, the official MCP client, the OpenAPI validator and schemathesis.
# Prints the venv's python path on stdout. Idempotent: reinstalls only when tests/python/requirements.txt
# changes. The venv lives in target/ so `cargo clean` removes it and a fresh clone always installs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${WARREN_TEST_VENV:-$root/target/test-venv}"
req="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
mkdir -p "$(dirname "$venv")"
exec 9>"${venv}.lock"
flock 9
if [[ ! -x $venv/bin/python || ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "test-venv: installing $(grep -cv '^\s*\(#\|$\)' "$req") packages into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$req" >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
