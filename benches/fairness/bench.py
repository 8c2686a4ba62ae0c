"""Driver of benches/fairness/run.sh. Plain stdlib HTTP; every number printed is measured here."""
import http.client, json, os, random, socket, subprocess, sys, tempfile, threading, time, urllib.request

WARREN, MODEL, IDLE, LOADED = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ADMIN = "bench-admin-token-0123456789"
rng = random.Random(7)
SYL = ["ka", "lo", "mer", "tin", "sa", "ver", "no", "pri", "dax", "el", "um", "qua", "ro", "zen", "fi", "tal", "gor", "bi", "esh", "wu"]
WORDS = ["".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
COMMON = "the of and to in is that for on with as by this from at are be it".split()


def text(n_bytes):
    out, size = [], 0
    while size < n_bytes:
        s = " ".join(rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(COMMON) for _ in range(rng.randint(8, 20))).capitalize() + "."
        out.append(s); size += len(s) + 1
        if rng.random() < 0.1:
            out.append("\n\n")
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


def start(data, extra):
    port = free_port()
    env = dict(os.environ, WARREN_DATA_DIR=data, WARREN_LISTEN=f"127.0.0.1:{port}", WARREN_ADMIN_TOKEN=ADMIN, WARREN_MODEL_DIR=MODEL, RUST_LOG="warn")
    env.pop("WARREN_BACKUP_URL", None)
    env.update(extra)
    p = subprocess.Popen([WARREN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1); return p, port
        except Exception:
            time.sleep(0.1)
    raise SystemExit("warren did not come up")


def settle(port, token, st, v):
    """A write answered 202 is a job: wait for it. Returns (status, result)."""
    if st != 202:
        return st, v
    while v["status"] in ("queued", "running"):
        time.sleep(0.2)
        _, v = req(port, "GET", f"/api/v1/jobs/{v['id']}", None, token)
    return (200 if v["status"] == "succeeded" else 500), v.get("result") or v.get("error")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def searches(port, key, secs, queries):
    """One closed-loop client: hybrid searches for `secs`; latencies of 200s and every status."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    lat, statuses, end, i = [], {}, time.time() + secs, 0
    while time.time() < end:
        body = json.dumps({"query": queries[i % len(queries)], "mode": "hybrid", "limit": 10}).encode(); i += 1
        t0 = time.perf_counter()
        c.request("POST", "/api/v1/search", body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        r = c.getresponse(); r.read()
        dt = (time.perf_counter() - t0) * 1000
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.status == 200:
            lat.append(dt)
        time.sleep(0.02)
    return lat, statuses


def run(name, extra):
    with tempfile.TemporaryDirectory() as data:
        p, port = start(data, extra)
        try:
            _, quiet = req(port, "POST", "/admin/v1/tenants", {"slug": "quiet", "name": "q", "email": "q@q.co", "tier": "pro"})
            _, noisy = req(port, "POST", "/admin/v1/tenants", {"slug": "noisy", "name": "n", "email": "n@n.co", "tier": "pro"})
            qk, nk = quiet["api_key"], noisy["api_key"]
            docs = [{"path": f"d{i}.md", "content": text(3000)} for i in range(60)]
            st, v = settle(port, qk, *req(port, "POST", "/api/v1/documents/bulk", {"documents": docs}, qk))
            assert st == 200 and v["failed"] == 0, (st, v)
            queries = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) for _ in range(500)]
            searches(port, qk, 3, queries)  # warm-up
            idle, idle_st = searches(port, qk, IDLE, queries)
            big = [text(1024 * 1024 - 2048) for _ in range(2)]
            stop, ingest = threading.Event(), {"docs": 0, "chunks": 0, "statuses": {}, "secs": 0.0}

            def ingester():
                i, t0 = 0, time.time()
                while not stop.is_set():
                  try:
                    st, v = req(port, "POST", "/api/v1/documents", {"path": f"big{i % 3}.md", "content": big[i % 2]}, nk)
                    ingest["statuses"][st] = ingest["statuses"].get(st, 0) + 1
                    st, v = settle(port, nk, st, v)
                    if st == 200:
                        ingest["docs"] += 1; ingest["chunks"] += v["chunks"]
                    i += 1
                  except (OSError, http.client.HTTPException):
                    break
                ingest["secs"] = time.time() - t0

            th = threading.Thread(target=ingester); th.start()
            time.sleep(3)  # the first document is chunked and in the embedding queue
            loaded, loaded_st = searches(port, qk, LOADED, queries)
            stop.set(); th.join()
            ratio = pct(loaded, 0.99) / pct(idle, 0.99)
            print(f"{name}: hybrid search of the quiet tenant (1 closed-loop client, 20 ms think time)")
            print(f"  idle:   n={len(idle)} p50 {pct(idle, 0.5):.1f} ms p99 {pct(idle, 0.99):.1f} ms statuses {idle_st}")
            print(f"  loaded: n={len(loaded)} p50 {pct(loaded, 0.5):.1f} ms p99 {pct(loaded, 0.99):.1f} ms statuses {loaded_st}")
            print(f"  p99 loaded / idle = {ratio:.2f}x (target <= 3x)")
            print(f"  noisy tenant meanwhile: {ingest['docs']} x 1 MiB documents finished, {ingest['chunks']} chunks in {ingest['secs']:.0f} s "
                  f"({ingest['chunks'] / max(ingest['secs'], 1):.0f} chunks/s), answers to its POSTs {ingest['statuses']} (202 = accepted as a job)")
            return ratio
        finally:
            p.terminate(); p.wait()


default = run("default (bulk lane at nice 10)", {})
flat = run("embed.bulk_nice = 0", {"WARREN_EMBED__BULK_NICE": "0"})
print(f"RESULT fairness p99 ratio: default {default:.2f}x, bulk_nice=0 {flat:.2f}x")
