//! Several warren nodes on one PostgreSQL control plane (issue 17, first part): tenants, keys and
//! usage are shared, and usage totals over all nodes equal the calls made, exactly.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::Value;

use super::helpers::{ServerProcess, ADMIN};
use super::pg::Postgres;

async fn get(client: &Client, node: &ServerProcess, path: &str, key: &str) -> StatusCode {
    client.get(format!("{}{path}", node.addr)).bearer_auth(key).send().await.expect("request").status()
}

async fn slugs(client: &Client, node: &ServerProcess) -> Vec<String> {
    let v: Value = client.get(format!("{}/admin/v1/tenants", node.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let mut s: Vec<String> = v["tenants"].as_array().expect("tenants").iter().map(|t| t["slug"].as_str().unwrap().to_string()).collect();
    s.sort();
    s
}

#[tokio::test]
async fn nodes_share_a_postgres_control_plane_and_count_usage_exactly() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let pg = Postgres::start().await;
    let url = pg.database("cluster").await;
    let env = [("WARREN_CONTROL_URL", url.clone()), ("WARREN_USAGE_FLUSH_INTERVAL_MS", "100".to_string())];
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = ServerProcess::start(dir_a.path(), &env).await;
    let mut b = ServerProcess::start(dir_b.path(), &env).await;
    assert!(!dir_a.path().join("control.db").exists(), "with control.url set there is no control.db");
    let client = Client::new();

    // One set of tenants: created on either node, seen by both, slugs unique across them.
    let (_, key_a) = a.create_tenant_key("north", "starter").await;
    let created_b = b.create_tenant("south", "starter").await;
    let (_, key_b) = super::helpers::id_and_key(&created_b);
    assert_eq!(slugs(&client, &a).await, ["north", "south"]);
    assert_eq!(slugs(&client, &b).await, ["north", "south"]);
    let dup = client
        .post(format!("{}/admin/v1/tenants", b.addr))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "north", "name": "n", "email": "ops@n.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT, "a slug taken on another node");

    // Calls on both nodes, each to its own tenant.
    let (n_a, mut n_b) = (23u64, 17u64);
    for _ in 0..n_a {
        assert_eq!(get(&client, &a, "/api/v1/tenant", &key_a).await, StatusCode::OK);
    }
    for _ in 0..n_b {
        assert_eq!(get(&client, &b, "/api/v1/tenant", &key_b).await, StatusCode::OK);
    }

    // A key revoked through node A stops working on node B: B drops its credential cache when the
    // shared control plane's version moves.
    let key_id = created_b["key"]["id"].as_str().expect("key id").to_string();
    let r = client.delete(format!("{}/admin/v1/tenants/south/keys/{key_id}", a.addr)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(&client, &b, "/api/v1/tenant", &key_b).await {
            StatusCode::OK => n_b += 1,
            StatusCode::UNAUTHORIZED => break,
            other => panic!("unexpected {other}"),
        }
        assert!(Instant::now() < deadline, "node B still accepts a key revoked through node A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node B stops (its last flush); node A's usage export then sums both nodes' calls exactly.
    assert!(b.terminate().success());
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let v: Value = client.get(format!("{}/admin/v1/usage?period={period}", a.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let calls = |v: &Value, slug: &str| v["tenants"].as_array().unwrap().iter().find(|r| r["slug"] == slug).expect(slug)["api_calls"].as_u64();
    assert_eq!((calls(&v, "north"), calls(&v, "south")), (Some(n_a), Some(n_b)), "{v}");

    // And with every node stopped, the CLI reads the same totals from PostgreSQL.
    assert!(a.terminate().success());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["usage", "export", "--period", &period, "--format", "json"])
        .env("WARREN_CONTROL_URL", &url)
        .env("WARREN_DATA_DIR", dir_a.path())
        .output()
        .expect("warren usage export");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((calls(&v, "north"), calls(&v, "south")), (Some(n_a), Some(n_b)), "{v}");
}

async fn cluster_view(client: &Client, node: &ServerProcess) -> Value {
    client.get(format!("{}/admin/v1/cluster", node.addr)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

/// Polls `node`'s cluster view until `ok` holds (heartbeats are real time), at most 15 s.
async fn cluster_until(client: &Client, node: &ServerProcess, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = cluster_view(client, node).await;
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live(v: &Value) -> Vec<String> {
    v["nodes"].as_array().unwrap().iter().filter(|n| n["live"] == true).map(|n| n["id"].as_str().unwrap().to_string()).collect()
}

fn preferred(v: &Value, id: &str) -> u64 {
    v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).map_or(0, |n| n["preferred_tenants"].as_u64().unwrap())
}

/// Nodes named by WARREN_NODE_ID and WARREN_NODE_URL register and heartbeat in PostgreSQL; the
/// cluster view lists them with the tenants the rendezvous hash gives each, and a node killed with
/// `kill -9` stops being live (by PostgreSQL's clock) and is given no tenant.
#[tokio::test]
async fn nodes_register_heartbeat_and_share_the_tenants() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let shared = Shared::start("members").await;
    let client = Client::new();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(shared.node(name).await);
    }
    for i in 0..60 {
        nodes[i % 3].server().create_tenant(&format!("shop{i:02}"), "free").await;
    }
    let v = cluster_until(&client, nodes[1].server(), "three live nodes", |v| live(v).len() == 3).await;
    assert_eq!((v["node"].as_str(), v["control_plane"].as_str(), v["tenants"].as_u64()), (Some("n2"), Some("postgres"), Some(60)));
    let counts: Vec<u64> = ["n1", "n2", "n3"].iter().map(|n| preferred(&v, n)).collect();
    assert_eq!(counts.iter().sum::<u64>(), 60, "{v}");
    assert!(counts.iter().all(|&c| c >= 8), "every node is preferred for some tenants: {counts:?}");

    // n3 dies: it stops being live and the others are preferred for all 60.
    nodes[2].kill9();
    let v = cluster_until(&client, nodes[0].server(), "n3 no longer live", |v| live(v) == ["n1", "n2"]).await;
    assert_eq!(preferred(&v, "n3"), 0);
    assert_eq!(preferred(&v, "n1") + preferred(&v, "n2"), 60, "{v}");
    // n1 and n2 keep the tenants they had: only n3's moved.
    assert!(preferred(&v, "n1") >= counts[0] && preferred(&v, "n2") >= counts[1], "{v}");
}

/// One node of a failover test: its process, data dir and port.
struct Node {
    name: String,
    dir: tempfile::TempDir,
    proc: Option<ServerProcess>,
}

async fn start_node(name: &str, pg_url: &str, backup_url: &str) -> Node {
    let port = super::helpers::free_port();
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(&str, String)> = [
        ("WARREN_CONTROL_URL", pg_url.to_string()),
        ("WARREN_LISTEN", format!("127.0.0.1:{port}")),
        ("WARREN_NODE_URL", format!("http://127.0.0.1:{port}")),
        ("WARREN_NODE_ID", name.to_string()),
        ("WARREN_CLUSTER__HEARTBEAT_MS", "200".to_string()),
        ("WARREN_CLUSTER__NODE_TIMEOUT_MS", "1000".to_string()),
        ("WARREN_CLUSTER__LEASE_MS", "1500".to_string()),
        ("WARREN_CLUSTER__REBALANCE_PER_BEAT", "4".to_string()),
        ("WARREN_TRUSTED_PROXIES", "127.0.0.1/32".to_string()),
    ]
    .into_iter()
    .chain(super::backup::backup_envs(backup_url))
    .collect();
    let proc = ServerProcess::start(dir.path(), &env).await;
    Node { name: name.to_string(), dir, proc: Some(proc) }
}

impl Node {
    fn server(&self) -> &ServerProcess {
        self.proc.as_ref().expect("running")
    }

    fn addr(&self) -> &str {
        &self.server().addr
    }

    /// SIGKILL; the node is gone (its data dir stays unless the test deletes it).
    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// What a test's nodes share: a PostgreSQL database and an S3 bucket prefix, both named `name`.
struct Shared {
    url: String,
    backup_url: String,
    moto: super::backup::Moto,
    _pg: Postgres,
}

impl Shared {
    async fn start(name: &str) -> Shared {
        let pg = Postgres::start().await;
        let url = pg.database(name).await;
        let moto = super::backup::Moto::start().await;
        let backup_url = moto.url(name);
        Shared { url, backup_url, moto, _pg: pg }
    }

    async fn node(&self, id: &str) -> Node {
        start_node(id, &self.url, &self.backup_url).await
    }
}

/// `x-warren-node` of an answer: the node that served it.
fn served_by(r: &reqwest::Response) -> String {
    r.headers().get("x-warren-node").and_then(|v| v.to_str().ok()).and_then(|v| v.split(' ').next()).unwrap_or("").to_string()
}

/// The epoch under which it was served.
fn served_epoch(r: &reqwest::Response) -> i64 {
    r.headers().get("x-warren-node").and_then(|v| v.to_str().ok()).and_then(|v| v.split(' ').nth(1)).and_then(|e| e.parse().ok()).unwrap_or(0)
}

/// Retries a request through `addr` while the tenant moves (503), for at most `secs`.
async fn until_ok(client: &Client, secs: u64, what: &str, make: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match make().send().await {
            Ok(r) if r.status().is_success() => return r,
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {}
            Ok(r) => panic!("{what}: {} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "{what}: no success within {secs} s");
        let _ = client;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn paths_of(client: &Client, addr: &str, key: &str) -> (Vec<String>, String) {
    let r = until_ok(client, 30, "list documents", || client.get(format!("{addr}/api/v1/documents?limit=100")).bearer_auth(key)).await;
    let node = served_by(&r);
    let v: Value = r.json().await.unwrap();
    let mut p: Vec<String> = v["documents"].as_array().expect("documents").iter().map(|d| d["path"].as_str().unwrap().to_string()).collect();
    p.sort();
    (p, node)
}

/// Tenants spread over three nodes by their leases; requests through any node reach the owner. A
/// node killed with `kill -9`, its data dir deleted, has its tenants served again by the others
/// from their replicas, with every write acknowledged before its last replication; a node paused
/// with SIGSTOP until its leases move answers nothing for those tenants after it resumes and writes
/// nothing into their replicas (the real litestream restores each to the new owner's state); a
/// fourth node takes over about a quarter of the tenants.
#[tokio::test]
async fn tenants_fail_over_and_a_paused_owner_is_fenced() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let shared = Shared::start("fleet").await;
    let client = Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(shared.node(name).await);
    }
    // 200 tenants (the share that moves to a fourth node is measured over all of them); the
    // failover checks use the first 24.
    let mut all = Vec::new();
    for i in 0..200 {
        all.push(nodes[0].server().create_tenant_key(&format!("fleet{i:03}"), "pro").await);
    }
    let tenants: Vec<(String, String)> = all[..24].to_vec();

    // Three documents per tenant, each written through a different node.
    let mut written: Vec<Vec<String>> = vec![Vec::new(); tenants.len()];
    for round in 0..3 {
        for (i, (_, key)) in tenants.iter().enumerate() {
            let via = nodes[(i + round) % 3].addr().to_string();
            let path = format!("doc{round}.md");
            until_ok(&client, 30, "write", || {
                client
                    .post(format!("{via}/api/v1/documents"))
                    .bearer_auth(key)
                    .json(&serde_json::json!({"path": path, "content": format!("tides {round}")}))
            })
            .await;
            written[i].push(path);
        }
    }
    // Every node answers for every tenant, from one owner each.
    let mut owner: Vec<String> = Vec::new();
    for (i, (_, key)) in tenants.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for n in &nodes {
            let (paths, node) = paths_of(&client, n.addr(), key).await;
            assert_eq!(paths, written[i], "tenant {i} through {}", n.name);
            seen.insert(node);
        }
        assert_eq!(seen.len(), 1, "tenant {i} served by {seen:?}");
        owner.push(seen.into_iter().next().unwrap());
    }
    for n in ["n1", "n2", "n3"] {
        assert!(owner.iter().any(|o| o == n), "{n} owns no tenant: {owner:?}");
    }
    // The admin API shows a tenant's lease (asked through any node, answered by the owner).
    let detail: Value =
        client.get(format!("{}/admin/v1/tenants/fleet000", nodes[2].addr())).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    let lease = &detail["cluster"];
    assert_eq!(
        (lease["owner"].as_str(), lease["valid"].as_bool(), lease["held_here"].as_bool()),
        (Some(owner[0].as_str()), Some(true), Some(true)),
        "{detail}"
    );
    assert!(lease["epoch"].as_i64().unwrap() >= 1 && lease["expires_in_ms"].as_i64().unwrap() > 0, "{detail}");

    // Half of the tenants acknowledge writes only once they are in object storage (`sync`).
    for i in (0..tenants.len()).filter(|i| i % 2 == 0) {
        let r = client
            .put(format!("{}/admin/v1/tenants/fleet{i:03}/overrides", nodes[0].addr()))
            .bearer_auth(ADMIN)
            .json(&serde_json::json!({"durability": "sync"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Kill -9 the owner of tenant 0 and delete its data dir: its earlier writes were shipped long
    // before (2 s, against a 200 ms sync interval); one last write per tenant right before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = nodes.iter().position(|n| n.name == owner[0]).unwrap();
    let victim_addr = nodes[victim].addr().to_string();
    let mut last_acked = Vec::new();
    for i in (0..tenants.len()).filter(|i| owner[*i] == nodes[victim].name) {
        let r = client
            .post(format!("{victim_addr}/api/v1/documents"))
            .bearer_auth(&tenants[i].1)
            .json(&serde_json::json!({"path": "last.md", "content": "right before the kill"}))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            last_acked.push(i);
        }
    }
    let mut dead = nodes.remove(victim);
    dead.kill9();
    let killed = Instant::now();
    std::fs::remove_dir_all(dead.dir.path()).unwrap();
    let mut failover = Vec::new();
    let mut kept_last = Vec::new();
    let orphans: Vec<usize> = (0..tenants.len()).filter(|i| owner[*i] == dead.name).collect();
    for i in orphans {
        let key = &tenants[i].1;
        let (mut paths, node) = paths_of(&client, nodes[i % 2].addr(), key).await;
        failover.push(killed.elapsed());
        if last_acked.contains(&i) {
            match paths.iter().position(|p| p == "last.md") {
                Some(at) => {
                    paths.remove(at);
                    kept_last.push(i);
                }
                None => assert!(i % 2 == 1, "tenant {i} (sync durability) lost an acknowledged write"),
            }
        }
        assert_eq!(paths, written[i], "tenant {i} after the failover");
        assert_ne!(node, dead.name);
        owner[i] = node;
    }
    failover.sort();
    let worst = *failover.last().unwrap();
    eprintln!("failover of {} tenants: first {:?}, last {:?}", failover.len(), failover[0], worst);
    let (sync_acked, async_acked) = last_acked.iter().partition::<Vec<usize>, _>(|i| *i % 2 == 0);
    let async_kept = kept_last.iter().filter(|i| *i % 2 == 1).count();
    eprintln!(
        "writes acknowledged right before the kill: sync {} (all kept), async {} ({} lost)",
        sync_acked.len(),
        async_acked.len(),
        async_acked.len() - async_kept
    );
    // The last writes stay in the tenants' state from here on.
    for i in kept_last {
        written[i].push("last.md".into());
        written[i].sort();
    }
    assert!(worst < Duration::from_secs(10), "failover took {worst:?}");

    // Pause the owner of some tenant with SIGSTOP until its leases move, write through the others,
    // then resume it.
    // The owners as they are now (hand-overs to preferred nodes go on in the background), and
    // the epochs they serve under.
    let mut now_owner = Vec::new();
    for (_, key) in &tenants {
        let r = until_ok(&client, 30, "read", || client.get(format!("{}/api/v1/documents?limit=1", nodes[0].addr())).bearer_auth(key)).await;
        now_owner.push((served_by(&r), served_epoch(&r)));
    }
    let paused = (0..nodes.len()).max_by_key(|n| now_owner.iter().filter(|o| o.0 == nodes[*n].name).count()).unwrap();
    nodes.swap(0, paused);
    let paused_name = nodes[0].name.clone();
    let moved: Vec<usize> = (0..tenants.len()).filter(|i| now_owner[*i].0 == paused_name).collect();
    assert!(!moved.is_empty(), "{paused_name} owns nothing");
    let old_epoch: std::collections::HashMap<usize, i64> = moved.iter().map(|&i| (i, now_owner[i].1)).collect();
    let paused_pid = nodes[0].server().pid() as i32;
    unsafe { libc::kill(paused_pid, libc::SIGSTOP) };
    let other = nodes[1].addr().to_string();
    for &i in &moved {
        let key = &tenants[i].1;
        let r = until_ok(&client, 30, "write while the owner is paused", || {
            client.post(format!("{other}/api/v1/documents")).bearer_auth(key).json(&serde_json::json!({"path": "after.md", "content": "moved"}))
        })
        .await;
        assert_ne!(served_by(&r), paused_name);
        written[i].push("after.md".into());
        written[i].sort();
    }
    unsafe { libc::kill(paused_pid, libc::SIGCONT) };
    let resumed = nodes[0].addr().to_string();
    for &i in &moved {
        let key = &tenants[i].1;
        // Through the resumed node: served by the new owner, or by the resumed node only once it
        // has taken the tenant back under a new epoch (its preferred node again), never under the
        // lease it lost.
        let r = until_ok(&client, 30, "write through the resumed node", || {
            client.post(format!("{resumed}/api/v1/documents")).bearer_auth(key).json(&serde_json::json!({"path": "later.md", "content": "x"}))
        })
        .await;
        if served_by(&r) == paused_name {
            assert!(served_epoch(&r) > old_epoch[&i], "the paused node answered under the lease it lost");
        }
        written[i].push("later.md".into());
        written[i].sort();
    }
    // Its replicas hold exactly the new owners' states: litestream restores each to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &i in &moved {
        let (paths, node) = paths_of(&client, &other, &tenants[i].1).await;
        assert_eq!(paths, written[i]);
        let holder = nodes.iter().find(|n| n.name == node).expect("owner");
        let db = holder.dir.path().join(&tenants[i].0).join("tenant.db");
        super::backup::compat(&shared.moto.url(&format!("fleet/tenants/{}", tenants[i].0)), "--source", &db);
    }

    // The dead machine is replaced (same name, empty disk), then a fourth node joins: about a
    // quarter of the tenants move to it, and only to it (rendezvous; unit-tested), so the share
    // that moves is the share it is preferred for.
    nodes.push(shared.node(&dead.name).await);
    cluster_until(&client, nodes[0].server(), "three live nodes again", |v| live(v).len() == 3).await;
    nodes.push(shared.node("n4").await);
    let v = cluster_until(&client, nodes[0].server(), "four live nodes", |v| live(v).len() == 4).await;
    let share = preferred(&v, "n4") as f64 / all.len() as f64;
    eprintln!("n4 is preferred for {share:.3} of the tenants");
    assert!((share - 0.25).abs() <= 0.1, "share {share}: {v}");
}

/// A late upload of a paused owner. Node a's uploads go through a proxy that holds them back (a
/// network that delays a packet); a is paused (SIGSTOP) while one of its level-0 uploads is held,
/// node b takes the tenant over from the replica, writes and ships the same TXID, and only then
/// does the held upload arrive. The store refuses it (replica writes are create-only), and the real
/// litestream restores the tenant to exactly b's state, before and after a resumes. With
/// overwriting PUTs the late upload would replace b's file.
#[tokio::test]
async fn a_paused_owners_late_upload_is_refused_by_the_store() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let shared = Shared::start("late").await;
    let proxy = super::s3proxy::FaultProxy::start(shared.moto.port).await;
    let a = start_node("a", &shared.url, &proxy.url("late")).await;
    let client = Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let (id, key) = a.server().create_tenant_key("late0", "pro").await;
    let write = |addr: &str, path: &str| {
        client.post(format!("{addr}/api/v1/documents")).bearer_auth(&key).json(&serde_json::json!({"path": path, "content": path}))
    };
    assert!(write(a.addr(), "one.md").send().await.unwrap().status().is_success());
    super::backup::wait_replicated(a.addr(), "late0").await;

    // The next upload of a's is held; a acknowledges the write (async durability) and is paused.
    proxy.hold_puts(&format!("tenants/{id}/"));
    assert!(write(a.addr(), "two.md").send().await.unwrap().status().is_success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.held() == 0 {
        assert!(Instant::now() < deadline, "a never uploaded the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_pid = a.server().pid() as i32;
    unsafe { libc::kill(a_pid, libc::SIGSTOP) };

    // b joins, takes the tenant over once a's lease lapses, and writes the TXID a's held upload has.
    let b = shared.node("b").await;
    let (paths, node) = paths_of(&client, b.addr(), &key).await;
    assert_eq!((paths, node.as_str()), (vec!["one.md".to_string()], "b"), "b restores the replica as it is: without the held write");
    assert!(write(b.addr(), "three.md").send().await.unwrap().status().is_success());
    super::backup::wait_replicated(b.addr(), "late0").await;

    // Now the held upload arrives: refused, no object changes, and the replica restores to b's state.
    let sub = format!("tenants/{id}");
    let before = super::backup::replica_objects(&shared.backup_url, &sub).await;
    let answers = proxy.release_held().await;
    assert!(!answers.is_empty() && answers.iter().all(|s| *s == 412), "late uploads answered {answers:?} (412 expected)");
    assert!(before == super::backup::replica_objects(&shared.backup_url, &sub).await, "the late upload changed the replica");
    let replica = shared.moto.url(&format!("late/tenants/{id}"));
    super::backup::compat(&replica, "--source", &b.dir.path().join(&id).join("tenant.db"));

    // Resumed, a writes nothing into the replica under the lease it lost.
    unsafe { libc::kill(a_pid, libc::SIGCONT) };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (paths, node) = paths_of(&client, b.addr(), &key).await;
    assert_eq!(paths, ["one.md", "three.md"]);
    let holder = if node == "a" { &a } else { &b };
    super::backup::compat(&replica, "--source", &holder.dir.path().join(&id).join("tenant.db"));
}

/// The real Caddy with deploy/cluster/Caddyfile in front of three nodes. Every tenant's subdomain
/// answers through it; mixed writes and searches through it are metered exactly once each over all
/// nodes (Caddy's pick is often not the owner, so many are forwarded); and after a node is killed
/// with `kill -9` and its data dir deleted, every tenant answers again through Caddy with all its
/// documents.
#[tokio::test]
async fn caddy_spreads_tenants_over_the_nodes_and_routes_around_a_dead_one() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let shared = Shared::start("caddy").await;
    let mut nodes = Vec::new();
    for name in ["c1", "c2", "c3"] {
        nodes.push(shared.node(name).await);
    }
    let first = nodes[0].server();
    let mut keys = Vec::new();
    for i in 0..12 {
        keys.push((format!("shop{i:02}"), first.create_tenant_key(&format!("shop{i:02}"), "pro").await.1));
    }
    let upstreams: Vec<String> = nodes.iter().map(|n| n.addr().trim_start_matches("http://").to_string()).collect();
    let home = tempfile::tempdir().unwrap();
    let envs = [("WARREN_BASE_DOMAIN", "localhost".to_string()), ("WARREN_NODES", upstreams.join(" ")), ("WARREN_ASK", upstreams[0].clone())];
    let (_caddy, port) = super::caddy::start("deploy/cluster/Caddyfile", &envs, home.path()).await;
    // One HTTPS client for every subdomain, each resolved to Caddy (its certificates are its own).
    let mut builder = Client::builder().timeout(Duration::from_secs(20)).danger_accept_invalid_certs(true);
    for (slug, _) in &keys {
        builder = builder.resolve(&format!("{slug}.localhost"), std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let caddy = builder.build().unwrap();
    let url = |slug: &str, path: &str| format!("https://{slug}.localhost:{port}{path}");
    for (slug, key) in &keys {
        let r = until_ok(&caddy, 15, "through Caddy", || caddy.get(url(slug, "/api/v1/tenant")).bearer_auth(key)).await;
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["slug"].as_str(), Some(slug.as_str()));
    }
    // The node that created the tenants hands the others' over (releasing their leases); then a
    // call that opens each tenant's storage has its preferred node take it. After that every
    // tenant is held by its preferred node, and nothing moves while the calls are counted.
    let direct = Client::new();
    let owned = |v: &Value, ok: fn(u64, u64) -> bool| {
        live(v).len() == 3
            && v["nodes"].as_array().unwrap().iter().all(|n| ok(n["owned_tenants"].as_u64().unwrap(), n["preferred_tenants"].as_u64().unwrap()))
    };
    cluster_until(&direct, nodes[0].server(), "hand-overs done", |v| owned(v, |o, p| o <= p)).await;
    for (slug, key) in &keys {
        until_ok(&caddy, 15, "documents through Caddy", || caddy.get(url(slug, "/api/v1/documents?limit=1")).bearer_auth(key)).await;
    }
    cluster_until(&direct, nodes[0].server(), "tenants on their preferred nodes", |v| owned(v, |o, p| o == p)).await;
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let usage = |v: &Value, slug: &str, field: &str| {
        v["tenants"].as_array().unwrap().iter().find(|r| r["slug"] == slug).map_or(0, |r| r[field].as_u64().unwrap_or(0))
    };
    let export = || async {
        tokio::time::sleep(Duration::from_millis(1000)).await; // every node flushes every 250 ms
        let r = direct.get(format!("{}/admin/v1/usage?period={period}", nodes[0].addr())).bearer_auth(ADMIN).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    };
    let before = export().await;

    // Mixed writes and searches through Caddy, each answered on the first try.
    let mut served = std::collections::BTreeSet::new();
    for round in 0..3 {
        for (slug, key) in &keys {
            let body = serde_json::json!({"path": format!("doc{round}.md"), "content": format!("harbour tides {slug} {round}")});
            let r = caddy.post(url(slug, "/api/v1/documents")).bearer_auth(key).json(&body).send().await.unwrap();
            assert!(r.status().is_success(), "write {slug}: {}", r.status());
            served.insert(served_by(&r));
            let r = caddy
                .post(url(slug, "/api/v1/search"))
                .bearer_auth(key)
                .json(&serde_json::json!({"query": "harbour tides", "mode": "keyword"}))
                .send()
                .await
                .unwrap();
            let status = r.status();
            assert!(status.is_success(), "search {slug}: {status} {}", r.text().await.unwrap_or_default());
            let hits = r.json::<Value>().await.unwrap()["results"].as_array().map_or(0, |a| a.len());
            assert_eq!(hits, round + 1, "{slug} finds every document written so far");
        }
    }
    assert_eq!(served.len(), 3, "owners {served:?}");
    let after = export().await;
    for (slug, _) in &keys {
        let delta = |field: &str| usage(&after, slug, field) - usage(&before, slug, field);
        assert_eq!((delta("api_calls"), delta("document_writes"), delta("searches")), (6, 3, 3), "{slug}: {after}");
    }

    // A node dies with its disk: Caddy's health checks and retries send its tenants elsewhere, and
    // the cluster takes them over from their replicas with every document.
    tokio::time::sleep(Duration::from_secs(2)).await; // shipped (200 ms sync interval)
    nodes[1].kill9();
    std::fs::remove_dir_all(nodes[1].dir.path()).unwrap();
    for (slug, key) in &keys {
        let r = until_ok(&caddy, 30, "after the kill", || caddy.get(url(slug, "/api/v1/documents?limit=10")).bearer_auth(key)).await;
        assert_ne!(served_by(&r), "c2");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["documents"].as_array().map_or(0, |a| a.len()), 3, "{slug}: {v}");
    }
}

/// `warren node drain` moves every tenant off a node gracefully: it ships, closes and releases
/// them, the other node restores them on their next request, and nothing written is lost. The
/// drained node forwards the REST API, the tenant portal and WooCommerce deliveries to the owner.
#[tokio::test]
async fn a_drained_node_hands_its_tenants_over() {
    let _heavy = super::helpers::HEAVY.lock().await;
    let shared = Shared::start("drain").await;
    let client = Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let nodes = [shared.node("d1").await, shared.node("d2").await];
    let mut keys = Vec::new();
    for i in 0..8 {
        let key = nodes[0].server().create_tenant_key(&format!("shop{i}"), "pro").await.1;
        until_ok(&client, 30, "write", || {
            client
                .post(format!("{}/api/v1/documents", nodes[0].addr()))
                .bearer_auth(&key)
                .json(&serde_json::json!({"path": "a.md", "content": "kept"}))
        })
        .await;
        keys.push(key);
    }
    let drain = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(args)
            .env("WARREN_CONTROL_URL", &shared.url)
            .env("WARREN_DATA_DIR", nodes[0].dir.path())
            .output()
            .expect("warren node")
    };
    let out = drain(&["node", "drain", "d1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!drain(&["node", "drain", "nope"]).status.success(), "an unknown node is refused");
    let v = cluster_until(&client, nodes[1].server(), "d1 holds nothing", |v| {
        v["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "d1" && n["owned_tenants"] == 0 && n["draining"] == true)
    })
    .await;
    // Every tenant answers (through either node) from d2, with its document.
    for key in &keys {
        let (paths, node) = paths_of(&client, nodes[0].addr(), key).await;
        assert_eq!((paths, node.as_str()), (vec!["a.md".to_string()], "d2"));
    }
    assert_eq!(preferred(&v, "d1"), 0);
    // The tenant portal is forwarded to the owner too: a session opened on d1 shows shop0's pages,
    // served by d2.
    let no_redirects = Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.post(format!("{}/admin/v1/tenants/shop0/dashboard-link", nodes[0].addr())).bearer_auth(ADMIN).send().await.unwrap();
    let link: Value = r.json().await.unwrap();
    let path = link["url"].as_str().expect("url").split_once("/dashboard/").expect("path").1.to_string();
    let r = no_redirects.get(format!("{}/dashboard/{path}", nodes[0].addr())).send().await.unwrap();
    let session = super::dashboard::cookie_of(&r, "warren_portal").expect("a portal session cookie");
    let r = until_ok(&client, 30, "portal", || no_redirects.get(format!("{}/dashboard", nodes[0].addr())).header("cookie", &session)).await;
    assert_eq!(served_by(&r), "d2", "the portal page was served by its tenant's owner");
    assert!(r.text().await.unwrap().contains("shop0"));
    // So are WooCommerce deliveries: one signed for shop1 reaches d1, is checked and applied by d2.
    let r = client
        .put(format!("{}/admin/v1/tenants/shop1/integrations/woocommerce", nodes[0].addr()))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"webhook_secret": super::woocommerce::SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let product = super::woocommerce::fixture("product.json");
    let raw = serde_json::to_vec(&product).unwrap();
    let deliver = |signature: String| {
        client
            .post(format!("{}/webhooks/woocommerce/shop1", nodes[0].addr()))
            .header("content-type", "application/json")
            .header("x-wc-webhook-topic", "product.created")
            .header("x-wc-webhook-resource", "product")
            .header("x-wc-webhook-event", "created")
            .header("x-wc-webhook-delivery-id", "cluster-1")
            .header("x-wc-webhook-signature", signature)
            .body(raw.clone())
    };
    let r = deliver(super::woocommerce::sign(b"another body", super::woocommerce::SECRET)).send().await.unwrap();
    assert_eq!((r.status(), served_by(&r)), (StatusCode::UNAUTHORIZED, "d2".to_string()), "a bad signature is refused by the owner");
    let r = until_ok(&client, 30, "webhook", || deliver(super::woocommerce::sign(&raw, super::woocommerce::SECRET))).await;
    assert_eq!(served_by(&r), "d2", "the delivery was applied by shop1's owner");
    let r = until_ok(&client, 30, "product", || client.get(format!("{}/api/v1/products/794", nodes[0].addr())).bearer_auth(&keys[1])).await;
    assert_eq!(r.json::<Value>().await.unwrap()["name"], "Premium Quality");
    let listed = drain(&["node", "list"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("node list json");
    assert_eq!(listed["nodes"].as_array().map(|n| n.len()), Some(2));
}
