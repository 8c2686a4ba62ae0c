"""Driver of benches/backup/run.sh. Plain stdlib HTTP; every number printed is measured here."""
import http.client, json, os, re, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

WARREN, VENV_BIN, TENANTS, WRITERS, RESTORE_MB = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
S3S_FS = os.environ.get("S3S_FS", "")   # the s3s-fs binary; run.sh installs it. S3_SERVER=moto uses moto instead.
ADMIN = "bench-admin-token-0123456789"
ENV_S3 = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_http(url, tries=300):
    for _ in range(tries):
        try:
            urllib.request.urlopen(url, timeout=1); return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def start_s3():
    """An S3-compatible server on loopback with a bucket named `bucket`: s3s-fs (Rust, files on disk)
    by default, moto with S3_SERVER=moto. Returns (process, port)."""
    port = free_port()
    if os.environ.get("S3_SERVER", "s3s-fs") == "moto":
        p = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/")
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/bucket", method="PUT"))
        return p, port
    root = tempfile.mkdtemp(prefix="warren-s3-")
    os.makedirs(os.path.join(root, "bucket"))
    p = subprocess.Popen([S3S_FS, "--host", "127.0.0.1", "--port", str(port), "--access-key", "test", "--secret-key", "test", root],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close(); break
        except OSError:
            time.sleep(0.1)
    p.root = root
    return p, port


def stop_s3(p):
    p.terminate(); p.wait()
    if getattr(p, "root", None): shutil.rmtree(p.root, ignore_errors=True)


def start_warren(data, backup_url=None, extra=None):
    port = free_port()
    env = dict(os.environ, WARREN_DATA_DIR=data, WARREN_LISTEN=f"127.0.0.1:{port}", WARREN_ADMIN_TOKEN=ADMIN,
               WARREN_MODEL_DIR=os.path.join(data, "no-model"), RUST_LOG="warn", **ENV_S3)
    env.pop("WARREN_BACKUP_URL", None)
    if backup_url:
        env["WARREN_BACKUP_URL"] = backup_url
    env.update(extra or {})
    # BENCH_LOG=FILE appends the server's log (warnings and errors) to FILE.
    log = open(os.environ["BENCH_LOG"], "a") if os.environ.get("BENCH_LOG") else subprocess.DEVNULL
    p = subprocess.Popen([WARREN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


class Client:
    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return c

    def req(self, method, path, body=None, token=ADMIN):
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode(); headers["Content-Type"] = "application/json"
        for attempt in range(3):
            try:
                c = self.conn(); c.request(method, path, data, headers)
                r = c.getresponse(); raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
            except (http.client.HTTPException, ConnectionError, OSError):
                self.local.c = None
                if attempt == 2: raise


def metric(port, name, labels=""):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + labels) and (line[len(name + labels)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total, text


def hist_quantiles(text, name, qs, before_text=""):
    """Quantiles (bucket upper bounds) of the observations made between before_text and text."""
    def parse(t):
        out = {}
        for line in t.splitlines():
            m = re.match(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', line)
            if m: out[float("inf") if m.group(1) == "+Inf" else float(m.group(1))] = float(m.group(2))
        return out
    now, then = parse(text), parse(before_text)
    buckets = [(le, c - then.get(le, 0.0)) for le, c in now.items()]
    buckets.sort(); total = buckets[-1][1] if buckets else 0
    print(f"  {name} histogram (le: count):", ", ".join(f"{le}: {int(c)}" for le, c in buckets if c > 0))
    out = []
    for q in qs:
        want = q * total
        out.append(next((le for le, c in buckets if c >= want), float("nan")))
    return out, int(total)


def cpu_secs(pid):
    """User + system CPU seconds a process has used so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_stats(pid):
    rss = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))
    return rss // 1024, len(os.listdir(f"/proc/{pid}/fd"))


S3_ROOT = [None]


def count_objects(port, url=""):
    if url.startswith("file://"):
        return sum(len(f) for _, _, f in os.walk(url[len("file://"):]))
    if S3_ROOT[0]:  # s3s-fs keeps each object as a file (and may keep metadata files beside it)
        return sum(1 for _, _, fs in os.walk(S3_ROOT[0]) for f in fs if f.endswith(".ltx"))
    n, token = 0, ""
    while True:
        q = f"/bucket?list-type=2&max-keys=1000" + (f"&continuation-token={urllib.request.quote(token)}" if token else "")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}{q}").read().decode()
        n += body.count("<Key>")
        m = re.search(r"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
        if not m: return n
        token = m.group(1)


def wait_caught_up(cl, port, slugs, timeout=600):
    t0 = time.time()
    for s in slugs:
        while True:
            st, v = cl.req("GET", f"/admin/v1/tenants/{s}/backup")
            if st == 200 and not v["backup"]["pending"] and v["backup"]["last_txid"]: break
            if time.time() - t0 > timeout: raise SystemExit(f"{s} not caught up: {v}")
            time.sleep(0.2)


def scale():
    s3srv, s3port = start_s3()
    S3_ROOT[0] = getattr(s3srv, "root", None)
    data = tempfile.mkdtemp(prefix="warren-bb-")
    url = f"s3://bucket/scale?endpoint=http://127.0.0.1:{s3port}&region=us-east-1"
    if os.environ.get("SCALE_BACKEND") == "file":
        url = "file://" + tempfile.mkdtemp(prefix="warren-bb-replica-")
    p, port = start_warren(data, url)
    cl = Client(port)
    t0 = time.time()
    def create(i):
        st, v = cl.req("POST", "/admin/v1/tenants", {"slug": f"t{i:05d}", "name": "b", "email": "b@b.co", "tier": "pro"})
        assert st == 201, (st, v); return v["api_key"]
    with ThreadPoolExecutor(8) as ex:
        keys = list(ex.map(create, range(TENANTS)))
    print(f"created {TENANTS} tenants in {time.time() - t0:.0f} s")
    # Every tenant ships its first snapshot right after creation; wait for the service to drain.
    t0 = time.time()
    while True:
        pending, _ = metric(port, "warren_backup_pending")
        if pending == 0 and count_objects(s3port, url) >= 2 * TENANTS: break
        if time.time() - t0 > 1800: raise SystemExit("initial snapshots did not finish")
        time.sleep(2)
    print(f"replica: {url.split('?')[0]}")
    print(f"initial snapshots of {TENANTS} tenants shipped {time.time() - t0:.0f} s after the last create; objects: {count_objects(s3port, url)}")
    rss, fds = proc_stats(p.pid)
    print(f"after creation: RSS {rss} MiB, fds {fds}")
    # Idle: no PUTs.
    time.sleep(5)
    puts0, _ = metric(port, "warren_backup_puts_total"); objs0 = count_objects(s3port, url)
    time.sleep(60)
    puts1, _ = metric(port, "warren_backup_puts_total"); objs1 = count_objects(s3port, url)
    rss, fds = proc_stats(p.pid)
    print(f"idle 60 s with {TENANTS} tenants: {puts1 - puts0:.0f} PUTs by warren, object count {objs0} -> {objs1}; RSS {rss} MiB, fds {fds}")
    # 100 tenants writing steadily (each ~2 commits/s) for 60 s.
    _, before_text = metric(port, "warren_backup_rpo_seconds_count")
    stop = time.time() + int(os.environ.get("WRITE_SECS", "60"))
    done = [0]; lock = threading.Lock(); errors = []
    peak = [0, 0]
    def writer(w):
        k = keys[w * (TENANTS // WRITERS)]
        i = 0
        while time.time() < stop:
            st, body = cl.req("POST", "/api/v1/documents", {"path": f"w/{i % 50}.md", "content": f"writer {w} revision {i} " + "lorem ipsum " * 40}, token=k)
            if st not in (200, 201):
                with lock: errors.append((st, json.dumps(body)[:300]))
                time.sleep(0.5); continue
            i += 1
            with lock: done[0] += 1
            time.sleep(0.5)
    def sampler():
        while time.time() < stop:
            r, f = proc_stats(p.pid); peak[0] = max(peak[0], r); peak[1] = max(peak[1], f); time.sleep(1)
    th = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)] + [threading.Thread(target=sampler)]
    for t in th: t.start()
    for t in th: t.join()
    time.sleep(3)
    _, text = metric(port, "warren_backup_rpo_seconds_count")
    (p50, p99), n = hist_quantiles(text, "warren_backup_rpo_seconds", [0.5, 0.99], before_text)
    # The parts of the RPO: waiting for a sync slot, and the ship itself (the rest is the wait for
    # the next round, at most backup.sync_interval_ms).
    (w50, w99), _ = hist_quantiles(text, "warren_backup_slot_wait_seconds", [0.5, 0.99], before_text)
    (s50, s99), _ = hist_quantiles(text, "warren_backup_ship_seconds", [0.5, 0.99], before_text)
    print(f"  parts: slot wait p50 <= {w50} s, p99 <= {w99} s; ship (slot -> level-0 object and position stored) p50 <= {s50} s, p99 <= {s99} s")
    puts, _ = metric(port, "warren_backup_puts_total")
    print(f"{WRITERS} writers x 60 s: {done[0]} acknowledged writes; RPO (first unshipped commit -> level-0 object) "
          f"p50 <= {p50} s, p99 <= {p99} s over {n} syncs (histogram bucket upper bounds); peak RSS {peak[0]} MiB, peak fds {peak[1]}")
    if errors:
        print(f"  {len(errors)} failed writes, e.g. {errors[:3]}")
    p.terminate(); p.wait(); stop_s3(s3srv)
    shutil.rmtree(data, ignore_errors=True)


def throughput():
    """Write throughput with backups on and off, alternating in one run (off on on off off on), on a
    write path that neither embeds nor indexes: one product upsert per request, one transaction each.
    The server runs without a model and with retraining pushed past the run, so only SQLite and the
    backups work. Tenants are on enterprise, whose limits this load does not reach."""
    s3srv, s3port = start_s3()
    results = {"on": [], "off": []}; other = {}; cpu = {"on": [], "off": []}
    secs = int(os.environ.get("TP_SECS", "20"))
    rounds = int(os.environ.get("TP_ROUNDS", "4"))   # runs per mode, in the order off on on off off on ...
    order = [("off", "on") if k % 2 == 0 else ("on", "off") for k in range(rounds)]
    order = [m for pair in order for m in pair]
    for rnd, mode in enumerate(order):
        data = tempfile.mkdtemp(prefix="warren-bt-")
        url = f"s3://bucket/tp{rnd}{mode}?endpoint=http://127.0.0.1:{s3port}&region=us-east-1" if mode == "on" else None
        p, port = start_warren(data, url, {"WARREN_RECS__DEBOUNCE_MS": "3600000", "WARREN_RECS__MAX_DELAY_SECS": "3600"})
        cl = Client(port)
        keys = []
        for i in range(8):
            st, v = cl.req("POST", "/admin/v1/tenants", {"slug": f"writer{i}", "name": "b", "email": "b@b.co", "tier": "enterprise"}); keys.append(v["api_key"])
        time.sleep(2)  # the new tenants' first snapshots ship before the clock starts
        c0, s0 = cpu_secs(p.pid), cpu_secs(s3srv.pid)
        stop = time.time() + secs; n = [0]; lock = threading.Lock()
        def w(k):
            i = 0
            while time.time() < stop:
                st, _ = cl.req("POST", "/api/v1/products", {"products": [{"id": f"p{i % 5000}", "name": f"Product {i} " + "fine words " * 10,
                                                                            "categories": ["Kitchen"], "price": 9.5 + i % 7}]}, token=k)
                with lock:
                    if st in (200, 201): n[0] += 1
                    else: other[st] = other.get(st, 0) + 1
                i += 1
        th = [threading.Thread(target=w, args=(k,)) for k in keys]
        for t in th: t.start()
        for t in th: t.join()
        results[mode].append(round(n[0] / secs, 1))
        # CPU per 1,000 acknowledged writes: warren's own, and the S3 server's (on the same cores here).
        cpu[mode].append((round(1000 * (cpu_secs(p.pid) - c0) / max(n[0], 1), 3), round(1000 * (cpu_secs(s3srv.pid) - s0) / max(n[0], 1), 3)))
        p.terminate(); p.wait(); shutil.rmtree(data, ignore_errors=True)
    on, off = sum(results["on"]) / len(results["on"]), sum(results["off"]) / len(results["off"])
    med = lambda v: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1:len(v) // 2 + 1]) / 2
    print(f"write throughput, 2xx only (8 enterprise tenants, 8 client threads, POST /products (1 product, 1 transaction), {secs} s per run, "
          f"order {' '.join(order)}): off {results['off']} -> mean {off:.1f}/s, median {med(results['off']):.1f}/s; "
          f"on {results['on']} -> mean {on:.1f}/s, median {med(results['on']):.1f}/s; "
          f"overhead {100 * (off - on) / off:.1f} % by the means, {100 * (med(results['off']) - med(results['on'])) / med(results['off']):.1f} % by the medians; "
          f"other statuses: {other or 'none'}")
    for mode in ("off", "on"):
        w = [c[0] for c in cpu[mode]]; srv = [c[1] for c in cpu[mode]]
        print(f"  CPU seconds per 1,000 writes, backups {mode}: warren {w} (median {med(w):.3f}), S3 server {srv} (median {med(srv):.3f})")
    w_on, w_off = med([c[0] for c in cpu["on"]]), med([c[0] for c in cpu["off"]])
    print(f"  warren's CPU per write with backups on vs off: {100 * (w_on - w_off) / w_off:+.1f} % (medians)")
    stop_s3(s3srv)


def restore_time():
    s3srv, s3port = start_s3()
    data = tempfile.mkdtemp(prefix="warren-br-")
    url = f"s3://bucket/restore?endpoint=http://127.0.0.1:{s3port}&region=us-east-1"
    p, port = start_warren(data, url, {"WARREN_DOCS__MAX_BULK_BYTES": str(64 << 20)})
    cl = Client(port)
    st, v = cl.req("POST", "/admin/v1/tenants", {"slug": "big", "name": "b", "email": "b@b.co", "tier": "pro"}); key = v["api_key"]; tid = v["tenant"]["id"]
    db = os.path.join(data, tid, "tenant.db")
    i = 0
    import random
    rnd = random.Random(7); words = [("".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 10)))) for _ in range(20000)]
    while os.path.getsize(db) + (os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0) < RESTORE_MB << 20 and i < 100000:
        docs = [{"path": f"big/{i + j}.md", "content": " ".join(rnd.choice(words) for _ in range(1500))} for j in range(50)]
        st, r = cl.req("POST", "/api/v1/documents/bulk", {"documents": docs}, token=key)
        assert st == 200, (st, r)
        i += 50
    wait_caught_up(cl, port, ["big"])
    p.terminate(); p.wait()
    size = os.path.getsize(db)
    turl = f"s3://bucket/restore/tenants/{tid}?endpoint=http://127.0.0.1:{s3port}&region=us-east-1"
    env = dict(os.environ, WARREN_DATA_DIR=data, WARREN_BACKUP_URL=url, **ENV_S3); env.pop("AWS_CA_BUNDLE", None)
    for tool in ("warren", "litestream", "warren", "litestream"):
        out = os.path.join(data, f"restored-{tool}-{time.time_ns()}.db")
        cmd = [WARREN, "restore", "big", "--to", out] if tool == "warren" else [os.path.join(VENV_BIN, "litestream"), "restore", "-o", out, turl]
        t0 = time.time(); subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); dt = time.time() - t0
        print(f"restore {size / 2**20:.0f} MiB tenant ({i} documents) from local S3 with {tool}: {dt:.2f} s")
    stop_s3(s3srv); shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    which = os.environ.get("BENCH", "scale,throughput,restore").split(",")
    if "throughput" in which: throughput()
    if "restore" in which: restore_time()
    if "scale" in which: scale()
