#!/usr/bin/env python3
"""sentence-transformers (PyTorch, CPU) half of the embedding benchmark.

Usage: st_bench.py MODEL_DIR SENTENCES_FILE [THREADS] [RUNS] [REFERENCE_JSONL]

Loads the same local model files warren uses (nothing is downloaded: offline mode), encodes
all sentences with batch_size=32 (sentence-transformers sorts by length itself), and prints a
RESULT line in the same format as the Rust side. Best of RUNS timed runs after a warm-up.
"""
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model_dir, path = sys.argv[1], sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    with open(path, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f]
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    tokens = sum(len(ids) for ids in model.tokenizer(sentences, truncation=True, max_length=256)["input_ids"])

    worst = float("nan")
    if len(sys.argv) > 5:  # the reference vectors were made on another machine: parity is measured here too
        import json
        import numpy as np
        refs = [json.loads(line) for line in open(sys.argv[5], encoding="utf-8")]
        got = model.encode([r["text"] for r in refs], batch_size=32, normalize_embeddings=True)
        worst = float(np.min(np.sum(got * np.array([r["embedding"] for r in refs], dtype=np.float32), axis=1)))
    model.encode(sentences[:64], batch_size=32)  # warm-up
    best = best_cpu = float("inf")
    for _ in range(max(runs, 1)):
        t, cpu = time.perf_counter(), time.process_time()
        out = model.encode(sentences, batch_size=32, normalize_embeddings=True)
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        assert len(out) == len(sentences)
    t = time.perf_counter()
    model.encode(sentences[:1])
    one_ms = (time.perf_counter() - t) * 1e3
    print(
        f"RESULT sentence-transformers sentences={len(sentences)} tokens={tokens} threads={threads} "
        f"seconds={best:.3f} sentences_per_s={len(sentences) / best:.1f} tokens_per_s={tokens / best:.0f} "
        f"one_sentence_ms={one_ms:.1f} cpu_seconds={best_cpu:.2f} sentences_per_cpu_s={len(sentences) / best_cpu:.1f} "
        f"min_cosine_vs_reference={worst:.6f} torch={torch.__version__}"
    )


if __name__ == "__main__":
    main()
