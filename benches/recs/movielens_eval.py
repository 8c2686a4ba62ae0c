#!/usr/bin/env python3
"""Leave-last-out evaluation of warren's recommendations on MovieLens-100k treated as implicit feedback.

Protocol (the one issue 6 scores with): every rating is an interaction; each user's chronologically
last interaction (ties: the later line of the file) is the test item; every earlier interaction is
an order `{id, customer_id, created_at, lines: [{product_id}]}` sent through the API. Then
`GET /api/v1/recommendations?customer_id=U&limit=10&exclude_purchased=true` is scored by HR@10 and
NDCG@10. The same split scores the baselines in-process: popularity, item-kNN (cosine, k=100) and
implicit's ALS (64 factors), all with already-seen items excluded.

Data: MovieLens-100k as shipped inside the `recbole` wheel (recbole/dataset_example/ml-100k,
atomic files with timestamps); pass --data DIR to use another copy of those files.

    python movielens_eval.py --url http://127.0.0.1:PORT --admin TOKEN [--data DIR] [--skip-server]
"""
import argparse
import json
import math
import os
import sys
import time
import urllib.request

import numpy as np
import scipy.sparse as sp


def find_data(arg):
    if arg:
        return arg
    import importlib.util
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("recbole is not installed: pip install --no-deps recbole, or pass --data DIR")
    return os.path.join(list(spec.submodule_search_locations)[0], "dataset_example", "ml-100k")


def load(data_dir):
    rows = []
    with open(os.path.join(data_dir, "ml-100k.inter")) as f:
        next(f)
        for line in f:
            u, i, _r, t = line.rstrip("\n").split("\t")
            rows.append((u, i, int(float(t))))
    items = {}
    with open(os.path.join(data_dir, "ml-100k.item"), encoding="latin-1") as f:
        header = next(f).rstrip("\n").split("\t")
        for line in f:
            parts = dict(zip(header, line.rstrip("\n").split("\t")))
            iid = parts["item_id:token"]
            title = parts.get("movie_title:token_seq", iid)
            genres = parts.get("class:token_seq", "").split()
            items[iid] = (title, genres)
    return rows, items


def split(rows):
    """Per user: interactions sorted by time (stable: file order breaks ties); last one is the test item."""
    by_user = {}
    for pos, (u, i, t) in enumerate(rows):
        by_user.setdefault(u, []).append((t, pos, i))
    train, test = [], {}
    for u, evs in by_user.items():
        evs.sort()
        if len(evs) < 2:
            continue
        test[u] = evs[-1][2]
        train.extend((u, i, t) for t, _p, i in evs[:-1])
    return train, test


def metrics(recs, test):
    hr = ndcg = 0.0
    for u, target in test.items():
        r = recs.get(u, [])[:10]
        if target in r:
            hr += 1
            ndcg += 1 / math.log2(r.index(target) + 2)
    n = len(test)
    return hr / n, ndcg / n


def matrix(train, test):
    users = sorted({u for u, _, _ in train} | set(test))
    items = sorted({i for _, i, _ in train} | set(test.values()))
    uidx = {u: k for k, u in enumerate(users)}
    iidx = {i: k for k, i in enumerate(items)}
    r = np.array([uidx[u] for u, _, _ in train])
    c = np.array([iidx[i] for _, i, _ in train])
    X = sp.csr_matrix((np.ones(len(train), dtype=np.float32), (r, c)), shape=(len(users), len(items)))
    X.data[:] = 1.0  # duplicates → binary
    return X, users, items, uidx


def topn(scores, seen, n=10):
    scores = scores.copy()
    scores[seen] = -np.inf
    idx = np.argpartition(-scores, n)[:n]
    return idx[np.argsort(-scores[idx])]


def baselines(train, test, als=True):
    X, users, items, uidx = matrix(train, test)
    out = {}
    pop = np.asarray(X.sum(axis=0)).ravel()
    t0 = time.time()
    out["popularity"] = ({u: [items[k] for k in topn(pop, X[uidx[u]].indices)] for u in test}, time.time() - t0)
    # Item-kNN: cosine similarity, 100 neighbours per item.
    t0 = time.time()
    Xc = X.tocsc()
    norms = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=0)).ravel()) + 1e-9
    S = (X.T @ X).toarray() / np.outer(norms, norms)
    np.fill_diagonal(S, 0)
    k = 100
    thr = -np.partition(-S, k, axis=1)[:, k][:, None]
    S[S < thr] = 0
    recs = {}
    for u in test:
        row = X[uidx[u]]
        recs[u] = [items[j] for j in topn(np.asarray(row @ S).ravel(), row.indices)]
    out["item-kNN (cosine, k=100)"] = (recs, time.time() - t0)
    # EASE in numpy, as a reference for the server's implementation.
    t0 = time.time()
    G = (X.T @ X).toarray().astype(np.float64)
    G[np.diag_indices_from(G)] += 200.0
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0)
    recs = {}
    for u in test:
        row = X[uidx[u]]
        recs[u] = [items[j] for j in topn(np.asarray(row @ B).ravel(), row.indices)]
    out["EASE λ=200 (numpy reference, binary, no decay)"] = (recs, time.time() - t0)
    if als:
        try:
            import implicit
            from threadpoolctl import threadpool_limits
        except ImportError as e:
            print(f"implicit ALS skipped: {e}", file=sys.stderr)
            return out
        t0 = time.time()
        with threadpool_limits(1, "blas"):
            model = implicit.als.AlternatingLeastSquares(factors=64, regularization=0.01, iterations=15, random_state=42)
            model.fit(X, show_progress=False)
            ids = np.array([uidx[u] for u in test])
            rec_ids, _ = model.recommend(ids, X[ids], N=10, filter_already_liked_items=True)
        out[f"implicit ALS (64 factors, implicit {implicit.__version__})"] = (
            {u: [items[j] for j in rec_ids[k]] for k, u in enumerate(test)}, time.time() - t0)
    return out


def call(url, method, path, key=None, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read() or b"null")


def server(url, admin, train, test, items):
    slug = f"ml{int(time.time()) % 100000}"
    t = call(url, "POST", "/admin/v1/tenants", admin, {"slug": slug, "name": "ml-100k", "email": "ml@example.com", "tier": "enterprise"})
    key = t["api_key"]
    products = [{"id": i, "name": title, "categories": genres} for i, (title, genres) in items.items()]
    for k in range(0, len(products), 1000):
        call(url, "POST", "/api/v1/products", key, {"products": products[k:k + 1000]})
    orders = [{"id": f"o{n}", "customer_id": u, "created_at": ts, "lines": [{"product_id": i}]} for n, (u, i, ts) in enumerate(train)]
    t0 = time.time()
    for k in range(0, len(orders), 1000):
        r = call(url, "POST", "/api/v1/orders", key, {"orders": orders[k:k + 1000]})
        assert r["failed"] == 0, r
    ingest = time.time() - t0
    call(url, "POST", "/api/v1/recommendations/train", key)
    time.sleep(0.5)
    while True:
        s = call(url, "GET", "/api/v1/recommendations/status", key)
        if not s["training"] and not s["pending_changes"] and s["model_version"] > 0:
            break
        time.sleep(0.5)
    t0 = time.time()
    recs = {}
    for u in test:
        r = call(url, "GET", f"/api/v1/recommendations?customer_id={u}&limit=10&exclude_purchased=true", key)
        recs[u] = [x["product_id"] for x in r["results"]]
    return recs, s, ingest, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data")
    ap.add_argument("--url")
    ap.add_argument("--admin")
    ap.add_argument("--no-als", action="store_true")
    a = ap.parse_args()
    rows, items = load(find_data(a.data))
    train, test = split(rows)
    print(f"ml-100k: {len(rows)} interactions, {len({u for u, _, _ in rows})} users, {len(items)} items; "
          f"{len(train)} train orders, {len(test)} test users")
    print(f"{'method':58} {'HR@10':>7} {'NDCG@10':>8}  time")
    for name, (recs, secs) in baselines(train, test, als=not a.no_als).items():
        hr, nd = metrics(recs, test)
        print(f"{name:58} {hr:7.4f} {nd:8.4f}  {secs:.1f}s")
    if a.url:
        recs, status, ingest, serve = server(a.url, a.admin, train, test, items)
        hr, nd = metrics(recs, test)
        name = f"warren ({status['method']}, over HTTP)"
        print(f"{name:58} {hr:7.4f} {nd:8.4f}  train {status['training_ms']} ms")
        print(f"  ingest {len(train)} orders: {ingest:.1f}s; {len(test)} recommendation calls: {serve:.1f}s; "
              f"status evaluation: {json.dumps(status['evaluation'])}")


if __name__ == "__main__":
    main()
