#!/usr/bin/env bash
# Reproduce the SciFact quality figures of docs/BENCHMARKS.md ("Search quality and latency").
#
# Usage: benches/scifact/run.sh SCIFACT_DIR
#   SCIFACT_DIR: a BEIR-format SciFact folder (corpus.jsonl, queries.jsonl, qrels/train.tsv,
#                score.py), e.g. ../shared/eval/scifact-dev. It is only read, never copied.
# Environment:
#   WARREN_MODEL_DIR  model directory (default models/all-MiniLM-L6-v2; fetched if missing)
#   SCIFACT_OUT       output directory for runs/ and summary.json (default target/scifact)
#   SCIFACT_SWEEP=1   also print nDCG@10 over a grid of fusion settings
#   SCIFACT_PRECISION=fp16  embed with the fp16 path (give it its own SCIFACT_OUT: embeddings are cached)
#
# The harness (benches/scifact/harness.rs, an ignored test of the library) loads the corpus
# through the domain layer into a temporary tenant, runs the queries in keyword, semantic and
# hybrid mode (limit 100, group_by document) and writes one run file per mode, which score.py
# then scores. It runs in the release profile: in the dev profile the dependencies keep their debug
# assertions and overflow checks, which made the fp32 matrix products (the `gemm` crate) 4-6x slower
# and a whole-corpus run take hours.
set -euo pipefail

die() { echo "run.sh: error: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 SCIFACT_DIR"
[ -f "$1/corpus.jsonl" ] || die "$1/corpus.jsonl not found"
scifact_dir="$(cd "$1" && pwd)"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${SCIFACT_OUT:-$repo_root/target/scifact}"
model_dir="${WARREN_MODEL_DIR:-$repo_root/models/all-MiniLM-L6-v2}"

"$repo_root/scripts/fetch-model.sh" "$model_dir"

cd "$repo_root"
SCIFACT_DIR="$scifact_dir" SCIFACT_OUT="$out" WARREN_MODEL_DIR="$model_dir" SCIFACT_PRECISION="${SCIFACT_PRECISION:-fp32}" \
  cargo test --release --lib scifact_harness -- --ignored --nocapture

qrels="$scifact_dir/qrels/train.tsv"
for mode in keyword semantic hybrid; do
  echo "== $mode"
  python3 "$scifact_dir/score.py" "$out/runs/$mode.jsonl" --qrels "$qrels"
done
echo "summary (ingest, latency, sweep): $out/summary.json"
