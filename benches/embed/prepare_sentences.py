#!/usr/bin/env python3
"""Write N benchmark sentences (20-40 words each), one per line, deterministically.

Usage: prepare_sentences.py OUT [CORPUS.jsonl] [N]

With a BEIR-style corpus (JSON lines with "title"/"text", e.g. SciFact's corpus.jsonl) the
sentences are the first N sentences of 20-40 words found in document order. Without one,
sentences are generated from a fixed vocabulary with a fixed seed. The corpus itself is never
copied into the repository; only the derived file OUT is written (put it under target/).
"""
import json
import random
import re
import sys

MIN_WORDS, MAX_WORDS = 20, 40


def from_corpus(path, n):
    out = []
    split = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")
    with open(path, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            for s in split.split(" ".join((doc.get("text") or "").split())):
                if MIN_WORDS <= len(s.split()) <= MAX_WORDS:
                    out.append(s)
                    if len(out) == n:
                        return out
    return out


def synthetic(n):
    rng = random.Random(20261121)
    words = (
        "the a of and to in is was for on that with as by at from this be are it an which "
        "study results patients cells protein expression analysis data model increased "
        "significant effect treatment clinical risk levels associated response human "
        "gene function disease between during after however these both using than "
        "server request latency tenant index search query embedding vector storage cache"
    ).split()
    out = []
    for _ in range(n):
        k = rng.randint(MIN_WORDS, MAX_WORDS)
        s = " ".join(rng.choice(words) for _ in range(k))
        out.append(s[0].upper() + s[1:] + ".")
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out_path = sys.argv[1]
    corpus = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    sentences = from_corpus(corpus, n) if corpus else []
    source = corpus
    if len(sentences) < n:
        sentences, source = synthetic(n), "synthetic (seed 20261121)"
    with open(out_path, "w", encoding="utf-8") as f:
        for s in sentences:
            f.write(s.replace("\n", " ") + "\n")
    print(f"{len(sentences)} sentences from {source} -> {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
