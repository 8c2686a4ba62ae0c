#!/usr/bin/env python3
"""SciFact through warren's HTTP API: bulk ingest, 809 queries per mode, nDCG@10 via score.py,
ingest throughput, and search/assemble latency at concurrency 1 and 8.

usage: benches/scifact/http_eval.py SCIFACT_DIR [--url http://127.0.0.1:8080] [--admin-token T]
                                    [--out target/scifact-http] [--modes hybrid,keyword,semantic]

Start a release server first (scripts/serve.sh, or target/release/warren serve). The SciFact folder
is only read. The tenant is created on the enterprise tier so no quota interferes.
"""
import argparse, json, os, statistics, subprocess, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url, method="GET", body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=900) as r:
        return json.load(r)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scifact")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--admin-token", default=os.environ.get("WARREN_ADMIN_TOKEN"))
    ap.add_argument("--out", default="target/scifact-http")
    ap.add_argument("--modes", default="hybrid,keyword,semantic")
    ap.add_argument("--slug", default=f"scifact{int(time.time()) % 100000}")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    created = call(f"{a.url}/admin/v1/tenants", "POST",
                   {"slug": a.slug, "name": "SciFact", "email": "eval@example.com", "tier": "enterprise"}, a.admin_token)
    key = created["api_key"]
    docs = [json.loads(l) for l in open(os.path.join(a.scifact, "corpus.jsonl"), encoding="utf-8")]
    items = [{"path": d["_id"], "title": d.get("title") or None, "content": d["text"] or d.get("title") or "-"} for d in docs]
    t0, tokens = time.time(), 0
    for i in range(0, len(items), 64):
        r = call(f"{a.url}/api/v1/documents/bulk", "POST", {"documents": items[i:i + 64]}, key)
        tokens += sum(x["result"]["tokens"] for x in r["results"] if x.get("result"))
        bad = [x for x in r["results"] if x.get("error")]
        if bad:
            print("ingest errors:", bad[:3], file=sys.stderr)
    dt = time.time() - t0
    print(f"ingest: {len(items)} docs in {dt:.1f}s = {len(items)/dt:.1f} docs/s, {tokens/dt:.0f} tokens/s (o200k)")
    queries = [json.loads(l) for l in open(os.path.join(a.scifact, "queries.jsonl"), encoding="utf-8")]
    score = os.path.join(a.scifact, "score.py")
    for mode in a.modes.split(","):
        run = os.path.join(a.out, f"{mode}.jsonl")
        with open(run, "w") as f:
            for q in queries:
                r = call(f"{a.url}/api/v1/search", "POST",
                         {"query": q["text"], "mode": mode, "limit": 100, "group_by": "document"}, key)
                f.write(json.dumps({"qid": q["_id"], "docids": [x["path"] for x in r["results"]]}) + "\n")
        print(f"== {mode}")
        subprocess.run([sys.executable, score, run], check=True)
    sample = queries[:200]
    for what, path, body in [("search hybrid", "/api/v1/search", lambda q: {"query": q["text"], "limit": 10}),
                             ("assemble 1000", "/api/v1/context/assemble", lambda q: {"query": q["text"], "max_tokens": 1000})]:
        for conc in (1, 8):
            def one(q):
                t = time.time()
                call(f"{a.url}{path}", "POST", body(q), key)
                return (time.time() - t) * 1000
            with ThreadPoolExecutor(conc) as ex:
                lat = list(ex.map(one, sample))
            print(f"{what} concurrency {conc}: p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms over {len(lat)} queries")


if __name__ == "__main__":
    main()
