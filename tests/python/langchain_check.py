"""Drives warren's OpenAI-compatible embeddings with LangChain's OpenAIEmbeddings (run by tests/api/ai.rs).

usage: langchain_check.py BASE_URL KEY REFERENCE_JSONL CL100K_BPE_FILE
LangChain pre-tokenises with tiktoken's cl100k_base and sends token-id arrays. tiktoken fetches its vocabulary
file at run time, which this machine cannot, so the file is served from CL100K_BPE_FILE (the copy the
tiktoken-rs crate ships) after checking it has the sha256 tiktoken expects. Vectors must match the
sentence-transformers reference vectors (cosine >= 0.9999). Prints one JSON summary line on success.
"""

import hashlib
import json
import math
import sys

import tiktoken.load


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def serve_vocabulary(path):
    original = tiktoken.load.read_file_cached
    served = []

    def read_file_cached(blobpath, expected_hash=None):
        if not blobpath.endswith("cl100k_base.tiktoken"):
            return original(blobpath, expected_hash)
        data = open(path, "rb").read()
        if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
            fail(f"{path} is not the cl100k_base vocabulary tiktoken expects")
        served.append(blobpath)
        return data

    tiktoken.load.read_file_cached = read_file_cached
    return served


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def main(base_url, key, reference, bpe):
    served = serve_vocabulary(bpe)
    from langchain_openai import OpenAIEmbeddings

    refs = [json.loads(line) for line in open(reference, encoding="utf-8") if line.strip()]
    refs = [r for r in refs if r["text"].strip()][:24]
    sent = []
    emb = OpenAIEmbeddings(model="all-MiniLM-L6-v2", base_url=base_url, api_key=key)
    original_create = emb.client.create

    def create(**kwargs):
        sent.append(kwargs.get("input"))
        return original_create(**kwargs)

    emb.client.create = create
    vectors = emb.embed_documents([r["text"] for r in refs])
    if not served:
        fail("LangChain did not tokenise with cl100k_base")
    if not sent or not all(isinstance(batch, list) and batch and isinstance(batch[0], list) for batch in sent):
        fail(f"LangChain did not send token-id arrays: {str(sent)[:200]}")
    worst = min(cosine(v, r["embedding"]) for v, r in zip(vectors, refs))
    if len(vectors) != len(refs) or worst < 0.9999:
        fail(f"{len(vectors)} vectors, worst cosine {worst}")
    query = emb.embed_query(refs[0]["text"])
    if cosine(query, refs[0]["embedding"]) < 0.9999:
        fail("embed_query disagrees with the reference")
    print(json.dumps({"inputs": len(refs), "worst_cosine": worst, "token_batches": len(sent)}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
