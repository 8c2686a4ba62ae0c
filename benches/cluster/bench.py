#!/usr/bin/env python3
"""Cluster benchmark (issue 17): three warren nodes on one PostgreSQL control plane and one S3 replica
bucket (moto), N tenants.

Measures, in one run:
  * forwarded-request overhead: GET /api/v1/tenant for tenants owned by node A, sent to A directly and
    to node B (which forwards to A), with wrk (2xx req/s, every other status reported) and latency;
  * async against sync durability: write latency and throughput on two tenants of A, concurrency 1
    and 8, alternating;
  * failover time: node A is killed with SIGKILL and its data dir deleted; each of its tenants is then
    polled through the surviving nodes until it answers with all its documents; p50/p99/max from the
    kill.

  benches/cluster/run.sh [TENANTS=200] [DURATION=10s]
"""
import json, os, random, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARREN = sys.argv[1]
TENANTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
DURATION = sys.argv[3] if len(sys.argv) > 3 else "10s"
VENV = os.path.join(ROOT, "target", "test-venv", "bin")
ADMIN = "bench-admin-token-0123456789"


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def req(method, url, key=None, body=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url, data=data, method=method)
    if key: r.add_header("Authorization", f"Bearer {key}")
    if data: r.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(r, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()
    except Exception:
        return 0, {}, b""


def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


work = tempfile.mkdtemp(); os.chmod(work, 0o755)
procs = []
def cleanup():
    for p in procs:
        try: p.kill()
        except Exception: pass
    subprocess.run(["pkill", "-f", f"{work}/pg/data"], check=False)
    shutil.rmtree(work, ignore_errors=True)

try:
    # PostgreSQL: initdb into the temp dir (as the postgres user when root), defaults (fsync on).
    pgbin = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
    pgbin = f"/usr/lib/postgresql/{pgbin}/bin"
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    os.makedirs(f"{work}/pg")
    if os.geteuid() == 0: shutil.chown(f"{work}/pg", "postgres")
    subprocess.run(as_pg + [f"{pgbin}/initdb", "-D", f"{work}/pg/data", "--auth=trust", "--username=warren", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
    pgport = free_port()
    procs.append(subprocess.Popen(as_pg + [f"{pgbin}/postgres", "-D", f"{work}/pg/data", "-p", str(pgport), "-k", f"{work}/pg", "-c", "listen_addresses=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(100):
        if subprocess.run([f"{pgbin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(pgport)]).returncode == 0: break
        time.sleep(0.1)
    subprocess.run([f"{pgbin}/createdb", "-h", "127.0.0.1", "-p", str(pgport), "-U", "warren", "warren"], check=True)
    # moto's S3 server (from the test virtualenv).
    s3port = free_port()
    procs.append(subprocess.Popen([f"{VENV}/moto_server", "-H", "127.0.0.1", "-p", str(s3port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(100):
        if req("PUT", f"http://127.0.0.1:{s3port}/bucket")[0] == 200: break
        time.sleep(0.1)

    nodes = {}
    def start(name):
        port = free_port(); data = f"{work}/{name}"; os.makedirs(data, exist_ok=True)
        env = dict(os.environ, WARREN_CONTROL_URL=f"postgres://warren@127.0.0.1:{pgport}/warren", WARREN_LISTEN=f"127.0.0.1:{port}",
                   WARREN_NODE_URL=f"http://127.0.0.1:{port}", WARREN_NODE_ID=name, WARREN_DATA_DIR=data, WARREN_ADMIN_TOKEN=ADMIN,
                   WARREN_MODEL_DIR=f"{data}/no-model", WARREN_BACKUP_URL=f"s3://bucket/bench?endpoint=http://127.0.0.1:{s3port}&region=us-east-1",
                   AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", RUST_LOG="error")
        p = subprocess.Popen([WARREN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if req("GET", base + "/health")[0] == 200: break
            time.sleep(0.05)
        nodes[name] = {"proc": p, "base": base, "data": data}
    for n in ["n1", "n2", "n3"]: start(n)
    print(f"== machine: {os.cpu_count()} cores; 3 nodes (defaults: heartbeat 1 s, lease 5 s, node timeout 5 s); {TENANTS} tenants", flush=True)

    keys = []
    for i in range(TENANTS):
        st, _, body = req("POST", nodes["n1"]["base"] + "/admin/v1/tenants", ADMIN, {"slug": f"t{i:04d}", "name": "b", "email": "b@b.co", "tier": "enterprise"})
        assert st == 201, (st, body)
        keys.append(json.loads(body)["api_key"])
    # One document per tenant, through a random node; then where each tenant is served.
    def until_ok(method, url, key, body=None, secs=60):
        end = time.time() + secs
        while True:
            st, h, b = req(method, url, key, body)
            if 200 <= st < 300: return h, b
            if time.time() > end: raise SystemExit(f"{method} {url}: {st} {b[:200]}")
            time.sleep(0.05)
    bases = [n["base"] for n in nodes.values()]
    for k in keys:
        until_ok("POST", random.choice(bases) + "/api/v1/documents", k, {"path": "a.md", "content": "tides and currents"})
    time.sleep(6)  # hand-overs to preferred nodes settle
    owner = {}
    for k in keys:
        h, _ = until_ok("GET", bases[0] + "/api/v1/tenant", k)
        owner[k] = h.get("x-warren-node", "").split(" ")[0]
    counts = {n: sum(1 for o in owner.values() if o == n) for n in nodes}
    print(f"== owners: {counts}", flush=True)

    # Forwarded-request overhead: tenants owned by A, direct to A and through B.
    a = max(counts, key=counts.get); b = [n for n in nodes if n != a][0]
    akeys = [k for k, o in owner.items() if o == a]
    kf = f"{work}/akeys.txt"; open(kf, "w").write("\n".join(akeys) + "\n")
    for label, base in [("direct to the owner", nodes[a]["base"]), ("through another node (forwarded)", nodes[b]["base"])]:
        out = subprocess.run(["wrk", "-t2", "-c16", f"-d{DURATION}", "--latency", "-s", f"{ROOT}/benches/platform/keys.lua", base],
                             env=dict(os.environ, WARREN_BENCH_KEYS=kf, WARREN_BENCH_PATH="/api/v1/tenant"), capture_output=True, text=True).stdout
        lines = [l for l in out.splitlines() if l.startswith("2xx:") or l.strip().startswith(("50%", "99%"))]
        print(f"== GET /api/v1/tenant over {len(akeys)} tenants of {a}, {label}: " + " | ".join(l.strip() for l in lines), flush=True)

    # Durability: async against sync writes, side by side (ABBA), on two tenants owned by A, sent
    # to A directly: small documents (no embedding model), concurrency 1 and 8.
    t_async, t_sync = akeys[0], akeys[1]
    slug_of = {}
    for k in (t_async, t_sync):
        _, _, b = req("GET", nodes[a]["base"] + "/api/v1/tenant", k)
        slug_of[k] = json.loads(b)["slug"]
    st, _, b = req("PUT", nodes[a]["base"] + f"/admin/v1/tenants/{slug_of[t_sync]}/overrides", ADMIN, {"durability": "sync"})
    assert st == 200, (st, b)
    def writes(key, conc, n, tag):
        lat = []; codes = {}; lk = threading.Lock(); seq = iter(range(n * conc))
        def worker():
            while True:
                with lk:
                    i = next(seq, None)
                if i is None: return
                t = time.time()
                st, h, _ = req("POST", nodes[a]["base"] + "/api/v1/documents", key, {"path": f"{tag}/{i}.md", "content": f"write {i} of {tag}"})
                with lk:
                    codes[st] = codes.get(st, 0) + 1
                    if 200 <= st < 300: lat.append(time.time() - t)
        t0 = time.time(); ts = [threading.Thread(target=worker) for _ in range(conc)]
        for t in ts: t.start()
        for t in ts: t.join()
        secs = time.time() - t0
        return len(lat) / secs, pct(lat, 50) * 1000, pct(lat, 99) * 1000, {c: v for c, v in codes.items() if not 200 <= c < 300}
    for conc, n in [(1, 200), (8, 50)]:
        res = {"async": [], "sync": []}
        for rnd, order in enumerate([("async", "sync"), ("sync", "async")]):
            for mode in order:
                key = t_async if mode == "async" else t_sync
                res[mode].append(writes(key, conc, n, f"{mode}-c{conc}-r{rnd}"))
        for mode in ("async", "sync"):
            runs = res[mode]
            print(f"== {mode} writes, concurrency {conc}, {n * conc} per round, 2 rounds: " +
                  "; ".join(f"{r[0]:.0f} writes/s, p50 {r[1]:.1f} ms, p99 {r[2]:.1f} ms, other statuses {r[3] or 'none'}" for r in runs), flush=True)

    # Failover: kill -9 the owner of the most tenants, delete its data dir, poll its tenants.
    victims = akeys
    time.sleep(2)
    nodes[a]["proc"].send_signal(signal.SIGKILL); nodes[a]["proc"].wait()
    killed = time.time()
    shutil.rmtree(nodes[a]["data"])
    survivors = [nodes[n]["base"] for n in nodes if n != a]
    times = {}; lock = threading.Lock()
    def poll(k):
        while time.time() - killed < 60:
            st, h, body = req("GET", random.choice(survivors) + "/api/v1/documents?limit=10", k, timeout=10)
            if st == 200 and b'"a.md"' in body:
                with lock: times[k] = time.time() - killed
                return
            time.sleep(0.05)
    ts = [threading.Thread(target=poll, args=(k,)) for k in victims]
    for t in ts: t.start()
    for t in ts: t.join()
    failed = len(victims) - len(times)
    d = sorted(times.values())
    print(f"== failover after kill -9 of {a} (data dir deleted): {len(d)} of {len(victims)} tenants back with their document; "
          f"p50 {pct(d, 50):.2f} s, p99 {pct(d, 99):.2f} s, max {d[-1]:.2f} s; not back within 60 s: {failed}", flush=True)
finally:
    cleanup()
