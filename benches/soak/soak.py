"""Driver of benches/soak/run.sh: a long mixed load over many tenants, sampled over time.

Every number printed is measured here. Latencies count 200 responses only; every other status is
counted and reported. Plain stdlib: http.client keep-alive connections, one per client thread.
"""
import http.client, json, os, random, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

WARREN, MODEL, MOTO, SECS, TENANTS, CAP, CLIENTS, OUT = sys.argv[1:9]
SECS, TENANTS, CAP, CLIENTS = int(SECS), int(TENANTS), int(CAP), int(CLIENTS)
READ_POOL = 2                                      # the server's tenant_read_pool_size, set below
ADMIN = "soak-admin-token-0123456789"
SAMPLE_SECS = 15
WARMUP_SECS = min(300, SECS // 6)
HOT = 50          # 70% of requests go to these tenants, 30% to any of them: the LRU (cap) churns
SHOPS = 10        # tenants with a catalog and orders: recommendations are served and retrained
TRAIN_EVERY = 60  # seconds between training requests (rotating over the shops)
rng = random.Random(12)
SYL = ["ka", "lo", "mer", "tin", "sa", "ver", "no", "pri", "dax", "el", "um", "qua", "ro", "zen", "fi", "tal", "gor", "bi", "esh", "wu"]
WORDS = ["".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(2000)]


def text(r, n):
    return " ".join(r.choice(WORDS) for _ in range(n))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def req(port, method, path, body=None, token=ADMIN, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode(); headers["Content-Type"] = "application/json"
    c.request(method, path, data, headers)
    r = c.getresponse(); raw = r.read(); c.close()
    return r.status, (json.loads(raw) if raw else None)


def wait_http(url, what):
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=1); return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not come up")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def proc_stats(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd")), threads


def fd_kinds(pid):
    """Open descriptors by kind: SQLite database, WAL and shared-memory files, index files, sockets, other."""
    kinds = {"db": 0, "wal": 0, "shm": 0, "index": 0, "socket": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                                # closed between listdir and readlink
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.endswith(".db-wal"):
            kinds["wal"] += 1
        elif target.endswith(".db-shm"):
            kinds["shm"] += 1
        elif target.endswith(".db"):
            kinds["db"] += 1
        elif "/index/" in target:
            kinds["index"] += 1
        else:
            kinds["other"] += 1
    return kinds


class Window:
    """Latencies and statuses of the current sampling window (shared by the client threads)."""
    def __init__(self):
        self.lock = threading.Lock(); self.reset()

    def reset(self):
        self.lat, self.statuses = [], {}

    def add(self, status, ms):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200 or status == 201:
                self.lat.append(ms)

    def take(self):
        with self.lock:
            out = (self.lat, self.statuses); self.reset(); return out


def client(port, tenants, shops, window, stop, seed):
    r = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        hot = r.random() < 0.7
        t = tenants[r.randrange(HOT)] if hot else tenants[r.randrange(len(tenants))]
        x = r.random()
        if x < 0.45:
            m, p, b = "POST", "/api/v1/search", {"query": text(r, 3), "mode": "hybrid", "limit": 10}
        elif x < 0.55:
            m, p, b = "POST", "/api/v1/search", {"query": text(r, 2), "mode": "keyword", "limit": 10}
        elif x < 0.75:
            # Upserts of paths that exist (a hot tenant's 20 seeded documents; one document elsewhere), so
            # the data stays the same size and growth in RSS or descriptors would be the server's own.
            path = f"seed/{r.randrange(20)}.md" if hot else "seed/0.md"
            m, p, b = "POST", "/api/v1/documents", {"path": path, "content": text(r, 80)}
        elif x < 0.85:
            m, p, b = "POST", "/api/v1/context/assemble", {"query": text(r, 3), "max_tokens": 400}
        elif x < 0.95:
            m, p, b = "GET", "/api/v1/documents?limit=20", None
        else:
            t = shops[r.randrange(len(shops))]
            m, p, b = "GET", f"/api/v1/recommendations?customer_id=c{r.randrange(40)}&limit=5", None
        headers = {"Authorization": f"Bearer {t}"}
        data = None
        if b is not None:
            data = json.dumps(b).encode(); headers["Content-Type"] = "application/json"
        t0 = time.perf_counter()
        try:
            conn.request(m, p, data, headers)
            resp = conn.getresponse(); resp.read()
            window.add(resp.status, (time.perf_counter() - t0) * 1000)
        except Exception as e:
            window.add(f"error:{type(e).__name__}", 0)
            conn.close(); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        time.sleep(0.01)


def trainer(port, shops, window, stop):
    i = 0
    while not stop.wait(TRAIN_EVERY):
        try:
            st, _ = req(port, "POST", "/api/v1/recommendations/train", {}, shops[i % len(shops)])
        except Exception as e:
            st = f"error:{type(e).__name__}"
        if st not in (200, 202):
            window.add(f"train:{st}", 0)
        i += 1


def seed_shop(port, key, r):
    products = [{"id": f"p{k}", "name": f"{text(r, 2)} {k}", "categories": [f"cat{k % 5}"], "price": 5 + k} for k in range(60)]
    st, v = req(port, "POST", "/api/v1/products", {"products": products}, key)
    assert st == 200, (st, v)
    orders = []
    for u in range(40):
        for n in range(4):
            orders.append({"id": f"o{u}-{n}", "customer_id": f"c{u}", "created_at": 1_700_000_000 + u * 100 + n,
                           "lines": [{"product_id": f"p{(u * 3 + n * 7) % 60}"}]})
    st, v = req(port, "POST", "/api/v1/orders", {"orders": orders}, key)
    assert st == 200, (st, v)
    st, v = req(port, "POST", "/api/v1/recommendations/train", {}, key)
    assert st in (200, 202), (st, v)


def svg(samples, path):
    """Three stacked panels over time: RSS (MiB), open file descriptors, p99 latency (ms)."""
    W, H, L, PAD = 760, 170, 70, 28
    series = [("RSS (MiB)", [s["rss_mb"] for s in samples], "#1f77b4"),
              ("open file descriptors", [s["fds"] for s in samples], "#2ca02c"),
              ("p99 latency of 2xx (ms)", [s["p99"] for s in samples], "#d62728")]
    xs = [s["t"] for s in samples]
    tmax = max(xs) or 1
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * 3 + 30}" font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>']
    for i, (name, ys, color) in enumerate(series):
        top = i * H + 10
        ymax = max(max(ys) * 1.15, 1)
        out.append(f'<text x="{L}" y="{top + 10}" font-weight="bold">{name}</text>')
        x0, x1, y0, y1 = L, W - 10, top + H - PAD, top + 18
        out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#999"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#999"/>')
        for k in range(5):
            v = ymax * k / 4; y = y0 - (y0 - y1) * k / 4
            out.append(f'<text x="{x0 - 5}" y="{y + 4}" text-anchor="end">{v:.0f}</text><line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/>')
        for k in range(7):
            t = tmax * k / 6; x = x0 + (x1 - x0) * k / 6
            out.append(f'<text x="{x}" y="{y0 + 14}" text-anchor="middle">{t / 60:.0f} min</text>')
        pts = " ".join(f"{x0 + (x1 - x0) * t / tmax:.1f},{y0 - (y0 - y1) * min(v, ymax) / ymax:.1f}" for t, v in zip(xs, ys))
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    data = tempfile.mkdtemp(prefix="warren-soak-")
    moto_port, port = free_port(), free_port()
    moto = subprocess.Popen([MOTO, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{moto_port}/", "moto")
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{moto_port}/soak", method="PUT"))
    env = dict(os.environ, WARREN_DATA_DIR=data, WARREN_LISTEN=f"127.0.0.1:{port}", WARREN_ADMIN_TOKEN=ADMIN, WARREN_MODEL_DIR=MODEL,
               RUST_LOG="warn", WARREN_MAX_OPEN_TENANTS=str(CAP), WARREN_TENANT_READ_POOL_SIZE=str(READ_POOL), AWS_ACCESS_KEY_ID="soak", AWS_SECRET_ACCESS_KEY="soak",
               WARREN_BACKUP_URL=f"s3://soak/warren?endpoint=http://127.0.0.1:{moto_port}&region=us-east-1")
    log = open(os.path.join(OUT, "warren.log"), "w")
    srv = subprocess.Popen([WARREN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_http(f"http://127.0.0.1:{port}/health", "warren")
    t0 = time.time()
    tenants = []
    for i in range(TENANTS):
        st, v = req(port, "POST", "/admin/v1/tenants", {"slug": f"soak{i}", "name": f"soak {i}", "email": f"o@soak{i}.test", "tier": "pro"})
        assert st == 201, (st, v)
        tenants.append(v["api_key"])
    print(f"== {TENANTS} tenants created in {time.time() - t0:.0f} s", flush=True)
    r = random.Random(3)
    for key in tenants[:HOT]:
        docs = [{"path": f"seed/{k}.md", "content": text(r, 120)} for k in range(20)]
        st, v = req(port, "POST", "/api/v1/documents/bulk", {"documents": docs}, key)
        assert st == 200, (st, v)
    shops = tenants[HOT:HOT + SHOPS]
    for key in shops:
        seed_shop(port, key, r)
    print(f"== seeded {HOT} hot tenants (20 documents each) and {SHOPS} shops; load: {CLIENTS} clients for {SECS} s", flush=True)

    window, stop = Window(), threading.Event()
    threads = [threading.Thread(target=client, args=(port, tenants, shops, window, stop, 100 + k), daemon=True) for k in range(CLIENTS)]
    threads.append(threading.Thread(target=trainer, args=(port, shops, window, stop), daemon=True))
    for t in threads:
        t.start()
    start = time.time()
    samples, totals = [], {}
    while time.time() - start < SECS:
        time.sleep(SAMPLE_SECS)
        lat, statuses = window.take()
        rss, fds, nthreads = proc_stats(srv.pid)
        kinds = fd_kinds(srv.pid)
        for k, v in statuses.items():
            totals[k] = totals.get(k, 0) + v
        s = {"t": round(time.time() - start), "rss_mb": rss, "fds": fds, "threads": nthreads, "fd_kinds": kinds, "ok": len(lat),
             "p50": round(pct(lat, 0.5), 1), "p99": round(pct(lat, 0.99), 1), "statuses": statuses}
        samples.append(s)
        print(json.dumps(s), flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=70)
    srv.send_signal(signal.SIGTERM); srv.wait(timeout=120); moto.kill()

    with open(os.path.join(OUT, "series.csv"), "w") as f:
        f.write("t_secs,rss_mib,fds,fd_db,fd_wal,fd_shm,fd_index,fd_socket,fd_other,threads,ok,p50_ms,p99_ms,non_2xx\n")
        for s in samples:
            bad = sum(v for k, v in s["statuses"].items() if k not in (200, 201))
            k = s["fd_kinds"]
            f.write(f"{s['t']},{s['rss_mb']},{s['fds']},{k['db']},{k['wal']},{k['shm']},{k['index']},{k['socket']},{k['other']},"
                    f"{s['threads']},{s['ok']},{s['p50']},{s['p99']},{bad}\n")
    svg(samples, os.path.join(OUT, "soak.svg"))

    after = [s for s in samples if s["t"] > WARMUP_SECS]
    base = after[: max(1, len(after) // 6)]       # the first sixth after warm-up
    last = after[-max(1, len(after) // 6):]       # the last sixth
    avg = lambda xs, k: sum(x[k] for x in xs) / len(xs)
    rss_lo, rss_hi = min(s["rss_mb"] for s in after), max(s["rss_mb"] for s in after)
    fd_lo, fd_hi = min(s["fds"] for s in after), max(s["fds"] for s in after)
    p99_base, p99_last = avg(base, "p99"), avg(last, "p99")
    five = sum(v for k, v in totals.items() if (isinstance(k, int) and k >= 500) or str(k).startswith("train:5"))
    errors = sum(v for k, v in totals.items() if str(k).startswith(("error:", "train:error")))
    ok = sum(v for k, v in totals.items() if k in (200, 201))
    def slope(k):
        n = len(after); mt = sum(x["t"] for x in after) / n; my = sum(x[k] for x in after) / n
        den = sum((x["t"] - mt) ** 2 for x in after) or 1
        return sum((x["t"] - mt) * (x[k] - my) for x in after) / den * 3600
    print(f"== after warm-up, least-squares trend per hour: RSS {slope('rss_mb'):+.0f} MiB, descriptors {slope('fds'):+.0f}, p99 {slope('p99'):+.1f} ms")
    # The README's ceiling for SQLite: a handle holds a writer and READ_POOL readers, each with the
    # database and its WAL open, and one shared -shm; open and closing handles together hold at most
    # 2 x CAP permits.
    per_handle = 2 * (1 + READ_POOL) + 1
    sqlite_hi = max(s["fd_kinds"]["db"] + s["fd_kinds"]["wal"] + s["fd_kinds"]["shm"] for s in after)
    for kind in ("db", "wal", "shm", "index", "socket", "other"):
        print(f"== descriptors after warm-up, {kind}: {min(s['fd_kinds'][kind] for s in after)}-{max(s['fd_kinds'][kind] for s in after)}")
    checks = [
        (f"SQLite descriptors within 2 x cap x {per_handle} = {2 * CAP * per_handle}: at most {sqlite_hi}", sqlite_hi <= 2 * CAP * per_handle),
        (f"RSS after warm-up within 25% of its first value ({avg(base, 'rss_mb'):.0f} MiB): {rss_lo}-{rss_hi} MiB", rss_hi <= 1.25 * avg(base, "rss_mb")),
        (f"file descriptors after warm-up within +-64: {fd_lo}-{fd_hi}", fd_hi - fd_lo <= 64),
        (f"p99 does not drift: last sixth {p99_last:.1f} ms vs first sixth after warm-up {p99_base:.1f} ms (bound 1.5x)", p99_last <= 1.5 * p99_base),
        (f"0 5xx: {five}", five == 0),
        (f"0 connection errors: {errors}", errors == 0),
    ]
    print(f"== {SECS} s, {TENANTS} tenants, cap {CAP}, {CLIENTS} clients, backups to S3 (moto), recommendations retrained every {TRAIN_EVERY} s")
    print(f"== {ok} successful responses ({ok / SECS:.0f}/s); every status: {json.dumps({str(k): v for k, v in sorted(totals.items(), key=str)})}")
    for what, good in checks:
        print(("PASS " if good else "FAIL ") + what)
    print("SOAK OK" if all(g for _, g in checks) else "SOAK FAILED")
    sys.exit(0 if all(g for _, g in checks) else 1)


if __name__ == "__main__":
    main()
