"""Drives warren's OpenAI-compatible embeddings with the official `openai` Python client, default arguments
(run by tests/api/ai.rs).

usage: openai_check.py BASE_URL KEY REFERENCE_JSONL
BASE_URL is the server's /api/v1. The client's default call sends encoding_format=base64; the vectors it
decodes must match sentence-transformers' reference vectors (cosine >= 0.9999). Exits non-zero with a
message on the first failed expectation; prints one JSON summary line on success.
"""

import json
import math
import sys

import openai
from openai import OpenAI


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb)


def main(base_url, key, reference):
    refs = [json.loads(line) for line in open(reference, encoding="utf-8") if line.strip()]
    refs = [r for r in refs if r["text"].strip()][:24]
    client = OpenAI(base_url=base_url, api_key=key)
    texts = [r["text"] for r in refs]
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    if len(got.data) != len(texts):
        fail(f"{len(got.data)} embeddings for {len(texts)} inputs")
    worst = min(cosine(d.embedding, r["embedding"]) for d, r in zip(got.data, refs))
    if worst < 0.9999:
        fail(f"worst cosine {worst} < 0.9999")
    one = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0], dimensions=384, user="agent-7", encoding_format="float")
    if len(one.data[0].embedding) != 384 or cosine(one.data[0].embedding, refs[0]["embedding"]) < 0.9999:
        fail("a float request with dimensions=384 disagrees with the reference")
    try:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="x", dimensions=256)
        fail("dimensions=256 was accepted")
    except openai.BadRequestError as e:
        # The SDK reads warren's {"error": {"code", "message"}} as OpenAI's own error shape.
        body = e.body if isinstance(e.body, dict) else {}
        code = getattr(e, "code", None) or body.get("code") or body.get("error", {}).get("code")
        if "Matryoshka" not in str(e) or code != "validation_failed":
            fail(f"dimensions=256 refused without a clear error: code={code!r} {e}")
    models = [m.id for m in client.models.list()]
    if "all-MiniLM-L6-v2" not in models:
        fail(f"GET /models lacks the model: {models}")
    print(json.dumps({"inputs": len(texts), "worst_cosine": worst, "models": models}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
