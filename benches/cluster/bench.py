#!/usr/bin/env python3
"""Cluster benchmark (issue 17): three warren nodes on one PostgreSQL control plane and one S3 replica
bucket (moto), N tenants.

Measures, in one run:
  * forwarded-request overhead: GET /api/v1/tenant for tenants owned by node A, sent to A directly and
    to node B (which forwards to A), with wrk (2xx req/s, every other status reported) and latency;
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
