"""Driver of benches/search/run.sh. Plain stdlib HTTP; every number printed is measured here."""
import http.client, json, os, random, socket, subprocess, sys, tempfile, threading, time, urllib.request

WARREN, MODEL, DOCS, SECS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ADMIN = "bench-admin-token-0123456789"
rng = random.Random(11)
SYL = ["ka", "lo", "mer", "tin", "sa", "ver", "no", "pri", "dax", "el", "um", "qua", "ro", "zen", "fi", "tal", "gor", "bi", "esh", "wu"]
WORDS = ["".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
COMMON = "the of and to in is that for on with as by this from at are be it".split()


def text(n_bytes):
    out, size = [], 0
    while size < n_bytes:
        s = " ".join(rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(COMMON) for _ in range(rng.randint(8, 20))).capitalize() + "."
        out.append(s); size += len(s) + 1
    return " ".join(out)[:n_bytes]


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def req(port, method, path, body=None, token=ADMIN, timeout=900):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode(); headers["Content-Type"] = "application/json"
    c.request(method, path, data, headers)
    r = c.getresponse(); raw = r.read(); c.close()
    return r.status, (json.loads(raw) if raw else None)


def settle(port, token, st, v):
    """A write answered 202 is a job: wait for it."""
    if st != 202:
        return st, v
    while v["status"] in ("queued", "running"):
        time.sleep(0.5)
        _, v = req(port, "GET", f"/api/v1/jobs/{v['id']}", None, token)
    return (200 if v["status"] == "succeeded" else 500), v.get("result") or v.get("error")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def client(port, key, until, queries, seed, out):
    """One closed-loop client with no think time: latencies of 200s and the count of every status."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    r_ = random.Random(seed)
    while time.time() < until:
        body = json.dumps({"query": r_.choice(queries), "mode": "hybrid", "limit": 10}).encode()
        t0 = time.perf_counter()
        c.request("POST", "/api/v1/search", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        dt = (time.perf_counter() - t0) * 1000
        out["statuses"][r.status] = out["statuses"].get(r.status, 0) + 1
        if r.status == 200:
            out["lat"].append(dt)
        elif r.status == 503:
            time.sleep(0.01)  # honour the refusal briefly, as a client would


def level(port, key, n, queries):
    until = time.time() + SECS
    outs = [{"lat": [], "statuses": {}} for _ in range(n)]
    ths = [threading.Thread(target=client, args=(port, key, until, queries, i, outs[i])) for i in range(n)]
    for t in ths: t.start()
    for t in ths: t.join()
    lat = [x for o in outs for x in o["lat"]]
    statuses = {}
    for o in outs:
        for k, v in o["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return lat, statuses


def start(data, extra=None):
    port = free_port()
    env = dict(os.environ, WARREN_DATA_DIR=data, WARREN_LISTEN=f"127.0.0.1:{port}", WARREN_ADMIN_TOKEN=ADMIN, WARREN_MODEL_DIR=MODEL, RUST_LOG="warn")
    env.pop("WARREN_BACKUP_URL", None)
    env.update(extra or {})
    p = subprocess.Popen([WARREN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); break
        except Exception:
            time.sleep(0.1)
    return p, port


with tempfile.TemporaryDirectory() as data:
    p, port = start(data)
    try:
        # enterprise: the load meets no rate limit or quota of the plan (only the search queue)
        _, t = req(port, "POST", "/admin/v1/tenants", {"slug": "corpus", "name": "c", "email": "c@c.co", "tier": "enterprise"})
        key = t["api_key"]
        t0 = time.time()
        for start_ in range(0, DOCS, 500):
            docs = [{"path": f"d{i:05}.md", "content": text(rng.randint(300, 900))} for i in range(start_, min(DOCS, start_ + 500))]
            st, v = settle(port, key, *req(port, "POST", "/api/v1/documents/bulk", {"documents": docs}, key))
            assert st == 200 and v["failed"] == 0, (st, v)
        print(f"== ingested {DOCS} documents in {time.time() - t0:.0f} s")
        queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(2000)]
        level(port, key, 2, queries[:50])  # warm-up
        base = None
        for n in (1, 8, 32):
            lat, statuses = level(port, key, n, queries)
            p99 = pct(lat, 0.99)
            base = base or p99
            others = {k: v for k, v in statuses.items() if k != 200}
            print(f"concurrency {n:>2}: 200s {len(lat):>6} ({len(lat) / SECS:6.1f}/s)  p50 {pct(lat, 0.5):7.1f} ms  p99 {p99:7.1f} ms  "
                  f"p99 / p99@1 {p99 / base:5.2f}x  other statuses {others or 'none'}")
    finally:
        p.terminate(); p.wait()
    # Beyond capacity: the same tenant on a server whose search queue holds only CAP_QUEUE searches.
    # 32 clients then exceed it, and the excess must be refused at once with 503 `overloaded`,
    # not queued without bound.
    cap = int(os.environ.get("CAP_QUEUE", "8"))
    p, port = start(data, {"WARREN_SEARCH__QUEUE_CAPACITY": str(cap)})
    try:
        level(port, key, 2, queries[:50])  # warm-up
        lat, statuses = level(port, key, 32, queries)
        others = {k: v for k, v in statuses.items() if k != 200}
        print(f"concurrency 32, search.queue_capacity={cap}: 200s {len(lat):>6} ({len(lat) / SECS:6.1f}/s)  p50 {pct(lat, 0.5):7.1f} ms  "
              f"p99 {pct(lat, 0.99):7.1f} ms  other statuses {others or 'none'}")
        if not statuses.get(503):
            sys.exit("beyond capacity no request was refused with 503")
        if any(k >= 500 and k != 503 for k in statuses):
            sys.exit(f"beyond capacity a request failed with another 5xx: {others}")
    finally:
        p.terminate(); p.wait()
