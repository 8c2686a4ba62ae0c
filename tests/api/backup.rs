//! Continuous backups (issue 5), checked against real parts: moto's S3 server on loopback, the real
//! `litestream` 0.5.17 binary (scripts/litestream-compat.sh), and the real `warren` binary for
//! kill -9 and `warren restore`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};
use warren::backup::{FileInfo, ReplicaRoot};

use crate::helpers::*;

pub(crate) const KEY_ID: &str = "test";
pub(crate) const SECRET: &str = "test";

/// moto's S3 server on 127.0.0.1 with one bucket. Killed on drop.
pub(crate) struct Moto {
    child: Child,
    pub(crate) port: u16,
}

impl Moto {
    pub(crate) async fn start() -> Moto {
        let py = test_python();
        let port = free_port();
        let mut child = Command::new(py.parent().unwrap().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let client = Client::new();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if client.get(format!("{base}/")).send().await.is_ok() {
                let r = client.put(format!("{base}/bucket")).send().await.expect("create bucket");
                assert!(r.status().is_success(), "create bucket: {}", r.status());
                return Moto { child, port };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not start");
    }

    pub(crate) fn url(&self, prefix: &str) -> String {
        format!("s3://bucket/{prefix}?endpoint=http://127.0.0.1:{}&region=us-east-1", self.port)
    }

    pub(crate) fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fast_backup(c: &mut warren::config::Config, url: &str) {
    c.backup_url = Some(url.to_string());
    c.backup.sync_interval_ms = 200;
    c.backup.access_key_id = Some(KEY_ID.into());
    c.backup.secret_access_key = Some(SECRET.into());
    c.backup.request_timeout_secs = 2;
    c.backup.retry_min_ms = 200;
    c.backup.retry_max_ms = 2000;
}

pub(crate) fn backup_envs(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("WARREN_BACKUP_URL", url.to_string()),
        ("WARREN_BACKUP__SYNC_INTERVAL_MS", "200".into()),
        ("WARREN_BACKUP__REQUEST_TIMEOUT_SECS", "2".into()),
        ("WARREN_BACKUP__RETRY_MAX_MS", "2000".into()),
        ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
    ]
}

/// `.sha3sum --schema` of a database, as the compat script computes it.
pub(crate) fn sha3(db: &Path) -> String {
    let out = Command::new("sqlite3").arg("-readonly").arg(db).arg(".sha3sum --schema").output().expect("run sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs scripts/litestream-compat.sh (the real litestream binary) and asserts COMPAT OK.
pub(crate) fn compat(url: &str, mode: &str, arg: &Path) {
    test_python(); // the venv holds litestream
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/litestream-compat.sh");
    let out = Command::new(script)
        .args([url, mode])
        .arg(arg)
        .env("AWS_ACCESS_KEY_ID", KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .output()
        .expect("run litestream-compat.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("COMPAT OK"), "litestream compat {mode} failed:\n{text}");
}

pub(crate) async fn backup_status(addr: &str, slug: &str) -> Value {
    let r = Client::new().get(format!("{addr}/admin/v1/tenants/{slug}/backup")).bearer_auth(ADMIN).send().await.expect("backup status");
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until the tenant's replica is caught up and stable; returns its last TXID.
pub(crate) async fn wait_replicated(addr: &str, slug: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        let v = backup_status(addr, slug).await;
        let b = &v["backup"];
        let txid = b["last_txid"].as_str().map(str::to_string);
        if let Some(t) = txid.as_ref().filter(|_| b["pending"] == false && txid == last) {
            return t.clone();
        }
        last = txid;
        assert!(Instant::now() < deadline, "replication did not catch up: {v}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Waits (at most 10 s) until the tenant has nothing pending and its last TXID is no longer `before`
/// (the status's `last_txid` before a commit). `what` names the commit.
async fn wait_shipped(addr: &str, slug: &str, before: &Value, what: &str) {
    let t0 = Instant::now();
    loop {
        let v = backup_status(addr, slug).await;
        if v["backup"]["pending"] == false && v["backup"]["last_txid"] != *before {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{what} was not shipped: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn add_doc(client: &Client, addr: &str, key: &str, path: &str, content: &str) {
    let r = client
        .post(format!("{addr}/api/v1/documents"))
        .bearer_auth(key)
        .json(&json!({"path": path, "content": content}))
        .send()
        .await
        .expect("add doc");
    assert!(r.status().is_success(), "add {path}: {}", r.status());
}

async fn doc_paths(client: &Client, addr: &str, key: &str) -> Vec<String> {
    let r = client.get(format!("{addr}/api/v1/documents?limit=100")).bearer_auth(key).send().await.expect("list");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let mut p: Vec<String> = v["documents"].as_array().expect("documents").iter().map(|d| d["path"].as_str().unwrap().to_string()).collect();
    p.sort();
    p
}

pub(crate) fn tenant_db(dir: &Path, id: &str) -> PathBuf {
    dir.join(id).join("tenant.db")
}

/// The replica `sub` under the backup URL `url`, with the test server's credentials.
pub(crate) fn replica_at(url: &str, sub: &str) -> warren::backup::Replica {
    let creds = warren::backup::store::S3Credentials { access_key_id: Some(KEY_ID.into()), secret_access_key: Some(SECRET.into()) };
    ReplicaRoot::parse(url, &creds, Duration::from_secs(5)).unwrap().replica(sub)
}

pub(crate) async fn list_replica(url: &str, sub: &str) -> Vec<FileInfo> {
    replica_at(url, sub).list().await.unwrap()
}

/// Every object of a replica with its bytes, sorted.
pub(crate) async fn replica_objects(url: &str, sub: &str) -> Vec<(FileInfo, bytes::Bytes)> {
    let replica = replica_at(url, sub);
    let mut out = Vec::new();
    for f in replica.list().await.unwrap() {
        out.push((f, replica.get(&f).await.unwrap()));
    }
    out
}

/// TXIDs at which `litestream restore -txid` lands exactly: those where Litestream's file choice
/// (mirrored by warren's planner) ends on a file whose last TXID is that one.
fn restore_points(files: &[FileInfo]) -> Vec<u64> {
    use warren::backup::restore::{plan, Target};
    let mut v: Vec<u64> = files.iter().map(|f| f.max).collect();
    v.sort();
    v.dedup();
    v.retain(|t| plan(files, Target::Txid(*t)).is_ok_and(|chain| chain.last().is_some_and(|f| f.max == *t)));
    v
}

fn write_expect(path: &Path, log: &[(u64, String)], points: &[u64]) -> usize {
    let lines: Vec<String> = log.iter().filter(|(t, _)| points.contains(t)).map(|(t, h)| format!("{t:016x} {h}")).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    lines.len()
}

/// Many transactions to S3, each TXID logged with its sha3; the real binary restores the latest state
/// and every logged TXID, before and after compaction and retention have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_replica_restores_with_litestream_before_and_after_compaction() {
    let moto = Moto::start().await;
    let url = moto.url("node");
    let app = spawn_with(|c| {
        fast_backup(c, &url);
        c.backup.l1_interval_secs = 2;
        c.backup.l2_interval_secs = 4;
        c.backup.l3_interval_secs = 6;
        c.backup.l0_retention_secs = 1;
        c.backup.snapshot_interval_secs = 5;
        c.backup.retention_secs = 8;
    })
    .await;
    let t = app.create_tenant("acme", "pro").await;
    let db = tenant_db(app.dir.path(), &t.id);
    let sub = format!("tenants/{}", t.id);
    let replica_url = moto.url(&format!("node/{sub}"));
    let st = backup_status(&app.addr, "acme").await;
    assert_eq!(st["backup"]["replica_url"], replica_url, "{st}");

    let mut log: Vec<(u64, String)> = Vec::new();
    let started = Instant::now();
    for i in 0..12 {
        add_doc(&app.client, &app.addr, &t.key, &format!("notes/{i}.md"), &format!("# Note {i}\nbody {i} {}", "word ".repeat(i * 40))).await;
        let txid = wait_replicated(&app.addr, "acme").await;
        log.push((u64::from_str_radix(&txid, 16).unwrap(), sha3(&db)));
    }
    let files = list_replica(&url, &sub).await;
    let expect = app.dir.path().join("expect-1.txt");
    let n = write_expect(&expect, &log, &restore_points(&files));
    assert!(n >= 2, "too few restore points survived: {files:?}");
    compat(&replica_url, "--source", &db);
    compat(&replica_url, "--expect", &expect);

    // Keep writing until compaction (levels 1-3) and retention (snapshots, level 0) have run.
    let mut i = 100;
    while started.elapsed() < Duration::from_secs(25) || i < 110 {
        add_doc(&app.client, &app.addr, &t.key, &format!("later/{i}.md"), &format!("later note {i}")).await;
        i += 1;
        let txid = wait_replicated(&app.addr, "acme").await;
        log.push((u64::from_str_radix(&txid, 16).unwrap(), sha3(&db)));
    }
    let files = list_replica(&url, &sub).await;
    for level in [1u8, 9] {
        assert!(files.iter().any(|f| f.level == level), "no level-{level} file: {files:?}");
    }
    let metrics = app.req(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
    for level in 1..=3 {
        assert!(metrics.contains(&format!("warren_backup_compactions_total{{level=\"{level}\"}}")), "no level-{level} compaction ran");
    }
    assert!(metrics.contains("warren_backup_deletes_total"), "retention deleted nothing");
    let snaps = files.iter().filter(|f| f.level == 9).count();
    assert!(files.iter().filter(|f| f.level == 0).all(|f| f.min > 3), "old level-0 files were not removed: {files:?}");
    assert!(snaps >= 1 && !files.iter().any(|f| f.level == 9 && f.max == 1), "the first snapshot should have expired: {files:?}");
    let expect = app.dir.path().join("expect-2.txt");
    let n = write_expect(&expect, &log, &restore_points(&files));
    assert!(n >= 2, "too few restore points after retention: {files:?}");
    compat(&replica_url, "--source", &db);
    compat(&replica_url, "--expect", &expect);
    // The control plane is replicated too.
    let control_files = list_replica(&url, "control").await;
    assert!(control_files.iter().any(|f| f.min == 1), "control plane has no snapshot: {control_files:?}");
    app.stop().await;
}

/// Restore through warren on a file:// replica: a point in time and the latest, one tenant while the
/// other keeps serving; corrupt objects are refused; `warren restore --all` rebuilds an empty node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_replica_point_in_time_restore_corruption_and_disaster_recovery() {
    let backups = tempfile::tempdir().unwrap();
    let url = format!("file://{}", backups.path().display());
    let app = spawn_with(|c| fast_backup(c, &url)).await;
    let a = app.create_tenant("alpha", "pro").await;
    let b = app.create_tenant("beta", "pro").await;
    add_doc(&app.client, &app.addr, &a.key, "one.md", "the first alpha note about otters").await;
    let t1 = wait_replicated(&app.addr, "alpha").await;
    add_doc(&app.client, &app.addr, &a.key, "two.md", "the second alpha note").await;
    add_doc(&app.client, &app.addr, &a.key, "three.md", "the third alpha note").await;
    add_doc(&app.client, &app.addr, &b.key, "beta.md", "beta data").await;
    wait_replicated(&app.addr, "alpha").await;
    wait_replicated(&app.addr, "beta").await;
    compat(&format!("{url}/tenants/{}", a.id), "--source", &tenant_db(app.dir.path(), &a.id));

    // Beta keeps serving while alpha is restored to T1.
    let (addr, key, client) = (app.addr.clone(), b.key.clone(), app.client.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let beta = tokio::spawn(async move {
        let mut ok = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = client.get(format!("{addr}/api/v1/documents")).bearer_auth(&key).send().await.unwrap();
            assert_eq!(r.status(), 200, "beta failed during alpha's restore");
            ok += 1;
        }
        ok
    });
    let r = app.admin(Method::POST, "/tenants/alpha/restore").json(&json!({"txid": t1})).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["restored"]["txid"], t1);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(beta.await.unwrap() > 0);
    assert_eq!(doc_paths(&app.client, &app.addr, &a.key).await, vec!["one.md"]);
    // The derived index was rebuilt from the restored file.
    let r = app.api(Method::POST, "/search", &a.key).json(&json!({"query": "otters", "mode": "keyword"})).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["results"][0]["path"], "one.md", "{v}");
    assert_eq!(doc_paths(&app.client, &app.addr, &b.key).await, vec!["beta.md"]);

    // The restored state becomes the new latest, and later writes continue the chain.
    add_doc(&app.client, &app.addr, &a.key, "four.md", "written after the restore").await;
    wait_replicated(&app.addr, "alpha").await;
    compat(&format!("{url}/tenants/{}", a.id), "--source", &tenant_db(app.dir.path(), &a.id));

    // Bad requests lose nothing.
    expect_error(app.admin(Method::POST, "/tenants/alpha/restore").json(&json!({"txid": "xyz"})).send().await.unwrap(), 400, "validation_failed")
        .await;
    expect_error(
        app.admin(Method::POST, "/tenants/alpha/restore").json(&json!({"txid": "0000000000000000"})).send().await.unwrap(),
        400,
        "restore_point_unavailable",
    )
    .await;
    expect_error(app.admin(Method::POST, "/tenants/nobody/restore").json(&json!({})).send().await.unwrap(), 404, "tenant_not_found").await;

    // A corrupt object in beta's replica: the restore is refused with its name, and beta keeps its data.
    add_doc(&app.client, &app.addr, &b.key, "beta2.md", "more beta data").await;
    wait_replicated(&app.addr, "beta").await;
    let l0 = backups.path().join(format!("tenants/{}/ltx/0", b.id));
    let mut newest: Vec<PathBuf> = std::fs::read_dir(&l0).unwrap().map(|e| e.unwrap().path()).collect();
    newest.sort();
    let victim = newest.last().unwrap().clone();
    let original = std::fs::read(&victim).unwrap();
    let mut bytes = original.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, &bytes).unwrap();
    let v = expect_error(app.admin(Method::POST, "/tenants/beta/restore").json(&json!({})).send().await.unwrap(), 400, "restore_failed").await;
    assert!(v["error"]["message"].as_str().unwrap().contains("corrupt"), "{v}");
    assert_eq!(doc_paths(&app.client, &app.addr, &b.key).await, vec!["beta.md", "beta2.md"]);
    // The CLI says so too, for a truncated object.
    std::fs::write(&victim, &original[..original.len() / 3]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["restore", "beta", "--to"])
        .arg(app.dir.path().join("beta-copy.db"))
        .env("WARREN_DATA_DIR", app.dir.path())
        .env("WARREN_BACKUP_URL", &url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupt or truncated"), "CLI restore of a truncated object: {err}");
    assert!(!app.dir.path().join("beta-copy.db").exists());
    // The operator puts the object back (e.g. from bucket versioning); the replica restores again.
    std::fs::write(&victim, &original).unwrap();

    // Disaster recovery: stop, then restore the whole node into an empty data dir.
    let dir = app.dir.path().to_path_buf();
    let (a_id, b_id) = (a.id.clone(), b.id.clone());
    let want_a = sha3(&tenant_db(&dir, &a_id));
    app.stop().await;
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["restore", "--all"])
        .env("WARREN_DATA_DIR", fresh.path())
        .env("WARREN_BACKUP_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore --all: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(sha3(&tenant_db(fresh.path(), &a_id)), want_a);
    let server = ServerProcess::start(fresh.path(), &[]).await;
    let client = Client::new();
    assert_eq!(doc_paths(&client, &server.addr, &a.key).await, vec!["four.md", "one.md"]);
    assert_eq!(doc_paths(&client, &server.addr, &b.key).await, vec!["beta.md", "beta2.md"]);
    assert!(tenant_db(fresh.path(), &b_id).exists());
}

/// kill -9 in a write burst, then restart: no TXID gap or duplicate, the chain restores; then S3 hangs
/// for 30 s during writes: requests keep succeeding, the lag grows and recovers, the chain restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_and_storage_outage_keep_the_chain_restorable() {
    let _heavy = crate::helpers::HEAVY.lock().await;
    let moto = Moto::start().await;
    let url = moto.url("faults");
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    let (id, key) = server.create_tenant_key("crashy", "pro").await;
    let client = Client::new();
    let sub = format!("tenants/{id}");

    // A burst of concurrent writes, killed in the middle (once some writes were acknowledged).
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (c, addr, key, acked) = (client.clone(), server.addr.clone(), key.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..1000 {
                let r = c
                    .post(format!("{addr}/api/v1/documents"))
                    .bearer_auth(&key)
                    .json(&json!({"path": format!("w{w}/{i}.md"), "content": format!("burst {w} {i}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                    _ => break,
                };
            }
        }));
    }
    let t0 = Instant::now();
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the burst did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.load(std::sync::atomic::Ordering::SeqCst);
    let before = list_replica(&url, &sub).await;
    let mut server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    wait_replicated(&server.addr, "crashy").await;
    let after = list_replica(&url, &sub).await;
    let max_before = before.iter().map(|f| f.max).max().unwrap_or(0);
    let max_after = after.iter().map(|f| f.max).max().unwrap();
    assert!(max_after >= max_before, "the replica went backwards ({max_before} -> {max_after})");
    // Every acknowledged write survived the crash (the compat check below proves the replica has them).
    let mut stored = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            None => format!("{}/api/v1/documents?limit=1000", server.addr),
            Some(c) => format!("{}/api/v1/documents?limit=1000&cursor={c}", server.addr),
        };
        let v: Value = client.get(url).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
        stored += v["documents"].as_array().unwrap().len();
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert!(stored >= acked, "{acked} writes were acknowledged but only {stored} documents survived");
    // No gap and no duplicate: every TXID from 1 to the newest is in exactly one level-0 file or covered.
    let mut l0: Vec<u64> = after.iter().filter(|f| f.level == 0).map(|f| f.min).collect();
    l0.sort();
    let dupes = l0.windows(2).filter(|w| w[0] == w[1]).count();
    assert_eq!(dupes, 0, "duplicate TXIDs: {after:?}");
    for txid in 1..=max_after {
        assert!(after.iter().any(|f| f.level <= 8 && f.min <= txid && txid <= f.max), "TXID {txid:x} missing: {after:?}");
    }
    compat(&moto.url(&format!("faults/{sub}")), "--source", &tenant_db(dir.path(), &id));

    // Storage hangs for 30 s during writes.
    moto.signal(libc::SIGSTOP);
    let outage = Instant::now();
    let mut max_lag = 0.0f64;
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(30) {
        let r = client
            .post(format!("{}/api/v1/documents", server.addr))
            .bearer_auth(&key)
            .json(&json!({"path": format!("outage/{n}.md"), "content": format!("during the outage {n}")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "a write failed during the storage outage: {}", r.status());
        n += 1;
        let st = backup_status(&server.addr, "crashy").await;
        max_lag = max_lag.max(st["backup"]["lag_secs"].as_f64().unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let st = backup_status(&server.addr, "crashy").await;
    assert!(max_lag > 10.0, "lag did not grow during the outage (max {max_lag}): {st}");
    assert!(st["backup"]["last_error"].is_string(), "no error reported: {st}");
    let metrics = client.get(format!("{}/metrics", server.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("warren_backup_errors_total"), "no backup error metric");
    moto.signal(libc::SIGCONT);
    let recovered = Instant::now();
    wait_replicated(&server.addr, "crashy").await;
    let st = backup_status(&server.addr, "crashy").await;
    assert_eq!(st["backup"]["lag_secs"], 0.0, "{st}");
    assert!(recovered.elapsed() < Duration::from_secs(45), "catch-up took {:?}", recovered.elapsed());
    server.terminate();
    compat(&moto.url(&format!("faults/{sub}")), "--source", &tenant_db(dir.path(), &id));
}

/// An upload in flight when the server is killed can reach the store after the restarted server has
/// listed the replica and shipped the same TXID with more in it (everything the crashed process had
/// committed). The late upload must not replace that object: if it did, the commits only the restarted
/// server's file holds would vanish from the chain, and the restored database would be a mix of two
/// states ("wrong # of entries in index", or a snapshot missing a page), which is what the crash test
/// above met now and then under load. Replica writes are create-only, so the late upload is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_of_a_killed_server_that_lands_after_the_restart_replaces_nothing() {
    let _heavy = crate::helpers::HEAVY.lock().await;
    let (moto, proxy, url) = proxied("late-crash").await;
    let dir = tempfile::tempdir().unwrap();
    let mut envs = backup_envs(&url);
    envs.push(("WARREN_BACKUP__REQUEST_TIMEOUT_SECS", "30".into())); // the held upload is not retried
    let mut server = ServerProcess::start(dir.path(), &envs).await;
    let (id, key) = server.create_tenant_key("latecrash", "pro").await;
    let client = Client::new();
    add_doc(&client, &server.addr, &key, "one.md", "the first document").await;
    wait_replicated(&server.addr, "latecrash").await;

    // The next upload is held on the wire. While it is, another write commits (its ship waits for
    // the held one), and the server is killed.
    proxy.hold_puts(&format!("tenants/{id}/"));
    add_doc(&client, &server.addr, &key, "two.md", "in the held upload").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while proxy.held() == 0 {
        assert!(Instant::now() < deadline, "the write was never uploaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Large, so its pages (the database grows) are in no later file but the restarted server's.
    let three: String = (0..3000).map(|i| format!("committed, not in the held upload {i}. ")).collect();
    add_doc(&client, &server.addr, &key, "three.md", &three).await;
    server.kill9();
    assert_eq!(proxy.held(), 1, "exactly the one upload is held");

    // The restarted server ships the same TXID with both writes, and then one more.
    proxy.stop_holding();
    let mut server = ServerProcess::start(dir.path(), &envs).await;
    wait_replicated(&server.addr, "latecrash").await;
    add_doc(&client, &server.addr, &key, "four.md", "after the restart").await;
    wait_replicated(&server.addr, "latecrash").await;

    // The killed process's upload arrives now: refused, and nothing in the replica changes.
    let sub = format!("tenants/{id}");
    let before = replica_objects(&moto.url("late-crash"), &sub).await;
    let answers = proxy.release_held().await;
    assert_eq!(answers, [412], "the late upload was answered {answers:?} (412 expected)");
    assert!(before == replica_objects(&moto.url("late-crash"), &sub).await, "the late upload changed the replica");
    server.terminate();
    compat(&moto.url(&format!("late-crash/{sub}")), "--source", &tenant_db(dir.path(), &id));
}

/// Each database is paced on its own (issue 16): one that has not shipped for an interval ships within
/// an eighth of an interval after its commit, instead of waiting for a process-wide tick (up to a whole
/// interval); and one written to all the time still ships at most once per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_database_ships_right_after_a_commit_and_a_busy_one_at_most_once_per_interval() {
    let backups = tempfile::tempdir().unwrap();
    let url = format!("file://{}", backups.path().display());
    let app = spawn_with(|c| {
        fast_backup(c, &url);
        c.backup.sync_interval_ms = 2000;
    })
    .await;
    let t = app.create_tenant("paced", "pro").await;
    add_doc(&app.client, &app.addr, &t.key, "first.md", "the first").await;
    wait_replicated(&app.addr, "paced").await;
    let txid = |v: &Value| u64::from_str_radix(v["backup"]["last_txid"].as_str().unwrap_or("0"), 16).unwrap();

    // Quiet: each commit comes more than an interval after the last ship. With one tick every 2 s for
    // everyone, the wait would be uniform over 0-2 s (five waits all under 0.9 s: about 2 % likely).
    let mut waits = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let before = backup_status(&app.addr, "paced").await["backup"]["last_txid"].clone();
        let t0 = Instant::now();
        add_doc(&app.client, &app.addr, &t.key, &format!("quiet{i}.md"), "a quiet commit").await;
        wait_shipped(&app.addr, "paced", &before, &format!("quiet commit {i}")).await;
        waits.push(t0.elapsed());
    }
    let worst = *waits.iter().max().unwrap();
    assert!(worst < Duration::from_millis(900), "a quiet database waited for a tick to ship: {waits:?}");

    // Busy: a commit every 100 ms for 6 s ships at most once per 2 s interval (one more for the edges).
    let before = txid(&backup_status(&app.addr, "paced").await);
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        add_doc(&app.client, &app.addr, &t.key, &format!("busy{n}.md"), "a busy commit").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ships_during = txid(&backup_status(&app.addr, "paced").await) - before;
    assert!((2..=4).contains(&ships_during), "{ships_during} ships for {n} commits in 6 s at one interval of 2 s");
    wait_replicated(&app.addr, "paced").await;
    app.stop().await;
}

/// Idle tenants cost nothing: after the first snapshot, no object is written while nobody writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tenants_write_no_objects() {
    let backups = tempfile::tempdir().unwrap();
    let url = format!("file://{}", backups.path().display());
    let app = spawn_with(|c| {
        fast_backup(c, &url);
        c.backup.l1_interval_secs = 1;
        c.backup.snapshot_interval_secs = 1;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let t = app.create_tenant(&format!("idle{i}"), "free").await;
        add_doc(&app.client, &app.addr, &t.key, "a.md", "hello").await;
        ids.push(t.id);
    }
    for i in 0..5 {
        wait_replicated(&app.addr, &format!("idle{i}")).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let control-plane usage flushes settle
    let snapshot = |p: &Path| -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut v = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    v.push((e.path(), e.metadata().unwrap().modified().unwrap()));
                }
            }
        }
        v.sort();
        v
    };
    let tenants = backups.path().join("tenants");
    let before = snapshot(&tenants);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(snapshot(&tenants), before, "idle tenants wrote replica objects");
    app.stop().await;
}

/// moto behind the fault-injecting proxy (passing everything through at first), and a backup URL for
/// `prefix` through the proxy.
async fn proxied(prefix: &str) -> (Moto, crate::s3proxy::FaultProxy, String) {
    let moto = Moto::start().await;
    let proxy = crate::s3proxy::FaultProxy::start(moto.port).await;
    let url = proxy.url(prefix);
    (moto, proxy, url)
}

/// Object storage that fails, is slow or hangs, through the fault-injecting proxy: every write keeps
/// succeeding while it lasts, the failures are reported, and the replica catches up afterwards and
/// restores with litestream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_errors_slowness_and_timeouts_never_fail_a_write_and_the_replica_catches_up() {
    use crate::s3proxy::Mode;
    use std::sync::atomic::Ordering;
    let (moto, proxy, url) = proxied("proxied").await;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    let (id, key) = server.create_tenant_key("shaky", "pro").await;
    wait_replicated(&server.addr, "shaky").await;
    let client = Client::new();
    let mut n = 0;
    for mode in [Mode::Fail500 { one_in: 2 }, Mode::Slow(Duration::from_millis(1500)), Mode::Hang] {
        proxy.set(mode);
        let (injected0, requests0) = (proxy.state.injected.load(Ordering::SeqCst), proxy.state.requests.load(Ordering::SeqCst));
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(6) {
            let r = client
                .post(format!("{}/api/v1/documents", server.addr))
                .bearer_auth(&key)
                .json(&json!({"path": format!("faults/{n}.md"), "content": format!("written while storage is {mode:?}")}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "a write failed while storage was {mode:?}: {}", r.status());
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let requests = proxy.state.requests.load(Ordering::SeqCst) - requests0;
        assert!(requests > 0, "warren sent storage no request while it was {mode:?}");
        if mode != Mode::Slow(Duration::from_millis(1500)) {
            assert!(proxy.state.injected.load(Ordering::SeqCst) > injected0, "no fault was injected in {mode:?}");
        }
    }
    let st = backup_status(&server.addr, "shaky").await;
    assert!(st["backup"]["last_error"].is_string(), "the failures are reported: {st}");
    proxy.set(Mode::Pass);
    wait_replicated(&server.addr, "shaky").await;
    let st = backup_status(&server.addr, "shaky").await;
    assert_eq!(st["backup"]["pending"], false, "{st}");
    let mut server = server;
    assert!(server.terminate().success());
    compat(&moto.url(&format!("proxied/tenants/{id}")), "--source", &tenant_db(dir.path(), &id));
    // Nothing acknowledged is missing from the restored copy: compat compared every table's rows.
    assert!(n >= 30, "only {n} writes were made");
}

/// Compaction runs beside shipping, not inside it: while every compaction hangs on its reads, new
/// commits still reach the replica at once, and the replica restores with litestream afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_compaction_does_not_hold_back_shipping() {
    use crate::s3proxy::Mode;
    use std::sync::atomic::Ordering;
    let (moto, proxy, url) = proxied("compacting").await;
    let dir = tempfile::tempdir().unwrap();
    let mut envs = backup_envs(&url);
    envs.retain(|(k, _)| *k != "WARREN_BACKUP__REQUEST_TIMEOUT_SECS");
    // A hung read lasts 60 s: far longer than any ship below may take.
    envs.push(("WARREN_BACKUP__REQUEST_TIMEOUT_SECS", "60".into()));
    envs.push(("WARREN_BACKUP__L1_INTERVAL_SECS", "1".into()));
    let server = ServerProcess::start(dir.path(), &envs).await;
    let (id, key) = server.create_tenant_key("compacting", "pro").await;
    wait_replicated(&server.addr, "compacting").await;
    proxy.set(Mode::HangGets);
    let client = Client::new();
    // Write until a compaction is stuck on a read.
    let t0 = Instant::now();
    let mut n = 0;
    while proxy.state.injected.load(Ordering::SeqCst) == 0 {
        add_doc(&client, &server.addr, &key, &format!("c/{n}.md"), &format!("before the hang {n}")).await;
        n += 1;
        assert!(t0.elapsed() < Duration::from_secs(30), "no compaction read was made");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every later commit is shipped within a few sync intervals, though the compaction still hangs.
    for i in 0..5 {
        add_doc(&client, &server.addr, &key, &format!("after/{i}.md"), &format!("after the hang {i}")).await;
        let before = backup_status(&server.addr, "compacting").await["backup"]["last_txid"].clone();
        wait_shipped(&server.addr, "compacting", &before, &format!("commit {i}, made while a compaction hung,")).await;
    }
    assert!(proxy.state.injected.load(Ordering::SeqCst) >= 1);
    proxy.set(Mode::Pass);
    wait_replicated(&server.addr, "compacting").await;
    let mut server = server;
    assert!(server.terminate().success());
    compat(&moto.url(&format!("compacting/tenants/{id}")), "--source", &tenant_db(dir.path(), &id));
}

/// A tenant created under a new id has nothing in its replica, so its first sync ships a full image
/// without listing storage. A tenant closed and reopened in the same process reuses the list it
/// closed with; one reopened by a new process lists once. The replica restores with litestream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_tenants_ship_without_listing_and_reopened_ones_list_once() {
    use std::sync::atomic::Ordering;
    let (moto, proxy, url) = proxied("lists").await;
    let dir = tempfile::tempdir().unwrap();
    // One open tenant at a time: every switch closes the other tenant's handle.
    let mut envs = backup_envs(&url);
    envs.push(("WARREN_MAX_OPEN_TENANTS", "1".into()));
    let server = ServerProcess::start(dir.path(), &envs).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the control plane's first sync (it lists)
    let lists0 = proxy.state.lists.load(Ordering::SeqCst);
    let mut tenants = Vec::new();
    for i in 0..3 {
        tenants.push(server.create_tenant_key(&format!("fresh{i}"), "pro").await);
    }
    let client = Client::new();
    for round in 0..2 {
        for (i, (_, key)) in tenants.iter().enumerate() {
            add_doc(&client, &server.addr, key, &format!("{round}.md"), "written by the first process").await;
            wait_replicated(&server.addr, &format!("fresh{i}")).await;
        }
    }
    assert_eq!(proxy.state.lists.load(Ordering::SeqCst), lists0, "new or reopened tenants listed their replicas");
    let mut server = server;
    assert!(server.terminate().success());
    // A new process knows nothing of the replicas: the first sync of each reopened tenant lists.
    let server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    let lists1 = proxy.state.lists.load(Ordering::SeqCst);
    let (id, key) = &tenants[0];
    add_doc(&client, &server.addr, key, "b.md", "written by the second process").await;
    wait_replicated(&server.addr, "fresh0").await;
    assert!(proxy.state.lists.load(Ordering::SeqCst) > lists1, "a tenant reopened by a new process did not list its replica");
    let mut server = server;
    assert!(server.terminate().success());
    compat(&moto.url(&format!("lists/tenants/{id}")), "--source", &tenant_db(dir.path(), id));
}

/// A tenant created while backups were off is shipped when backups are turned on and it is next
/// opened, whether or not it is written to again (its position says only that it was never shipped).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_created_with_backups_off_is_shipped_once_they_are_on() {
    let moto = Moto::start().await;
    let url = moto.url("later");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let (id, key) = server.create_tenant_key("early", "pro").await;
    add_doc(&Client::new(), &server.addr, &key, "a.md", "written before backups were on").await;
    let mut server = server;
    assert!(server.terminate().success());
    let server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    // A read opens the tenant; nothing is written.
    let r = Client::new().get(format!("{}/api/v1/documents", server.addr)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    wait_replicated(&server.addr, "early").await;
    let mut server = server;
    assert!(server.terminate().success());
    compat(&moto.url(&format!("later/tenants/{id}")), "--source", &tenant_db(dir.path(), &id));
}

/// `sync` durability (a tenant override): a write is answered only once its LTX is in object
/// storage. With background shipping a minute apart, eight concurrent writes (one group commit or a
/// few) and a `kill -9` right after the last answer, the replica restores with litestream to exactly
/// the node's database.
#[tokio::test]
async fn sync_durability_acknowledges_only_what_the_replica_holds() {
    let moto = Moto::start().await;
    let url = moto.url("durable");
    let dir = tempfile::tempdir().unwrap();
    let mut envs = backup_envs(&url);
    envs.retain(|(k, _)| *k != "WARREN_BACKUP__SYNC_INTERVAL_MS");
    envs.push(("WARREN_BACKUP__SYNC_INTERVAL_MS", "60000".into()));
    let mut server = ServerProcess::start(dir.path(), &envs).await;
    let (id, key) = server.create_tenant_key("durable", "pro").await;
    let client = Client::new();
    let r = client
        .put(format!("{}/admin/v1/tenants/durable/overrides", server.addr))
        .bearer_auth(ADMIN)
        .json(&json!({"durability": "sync"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let v: Value = client.get(format!("{}/api/v1/usage", server.addr)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["limits"]["durability"], "sync", "{v}");
    let writes = (0..8).map(|i| {
        let (c, addr, key) = (client.clone(), server.addr.clone(), key.clone());
        tokio::spawn(async move {
            let r = c
                .post(format!("{addr}/api/v1/documents"))
                .bearer_auth(&key)
                .json(&json!({"path": format!("d{i}.md"), "content": format!("kept {i}")}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            assert_eq!(r.headers().get("x-warren-durability").and_then(|v| v.to_str().ok()), Some("sync"));
        })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap();
    }
    server.kill9();
    let db = dir.path().join(&id).join("tenant.db");
    compat(&moto.url(&format!("durable/tenants/{id}")), "--source", &db);
}

/// Another writer's level-0 file at the TXID this node ships next (what a node that held the tenant
/// before could leave behind, its upload landing late): replica writes are create-only, so warren
/// never replaces it. Its own PUT of that TXID is refused, counted in
/// `warren_backup_conflicts_total`, and the next sync ships a full image after it, so litestream
/// restores the tenant to exactly this node's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_writers_object_is_never_replaced_and_the_owner_ships_past_it() {
    use warren::backup::{ltx, store::Put};
    let moto = Moto::start().await;
    let url = moto.url("clash");
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &backup_envs(&url)).await;
    let (id, key) = server.create_tenant_key("clash", "pro").await;
    let client = Client::new();
    add_doc(&client, &server.addr, &key, "a.md", "written by this node").await;
    wait_replicated(&server.addr, "clash").await;

    // The foreign file: the newest level-0 file's pages again, under the next TXID.
    let replica = replica_at(&url, &format!("tenants/{id}"));
    let files = replica.list().await.unwrap();
    let newest = *files.iter().filter(|f| f.level == 0).max_by_key(|f| f.max).expect("a level-0 file");
    let next = newest.max + 1;
    let d = ltx::decode(&replica.get(&newest).await.unwrap()).unwrap();
    let mut e = ltx::Encoder::new(ltx::Header { min_txid: next, max_txid: next, ..d.header }).unwrap();
    for (p, data) in &d.pages {
        e.push_page(*p, data).unwrap();
    }
    let foreign = bytes::Bytes::from(e.finish());
    let put = replica.put(0, next, next, foreign.clone(), warren::backup::store::now_ms()).await.unwrap();
    assert!(matches!(put, Put::Written), "{put:?}");

    add_doc(&client, &server.addr, &key, "b.md", "written after the foreign file").await;
    let last = u64::from_str_radix(&wait_replicated(&server.addr, "clash").await, 16).unwrap();
    assert!(last > next, "shipped up to {last}, not past the foreign TXID {next}");
    let metrics = client.get(format!("{}/metrics", server.addr)).send().await.unwrap().text().await.unwrap();
    let conflicts: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_backup_conflicts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no warren_backup_conflicts_total in /metrics"));
    assert!(conflicts >= 1.0, "{conflicts}");
    let at = files.iter().find(|f| f.level == 0).copied().map(|f| warren::backup::FileInfo { min: next, max: next, ..f }).unwrap();
    assert_eq!(replica.get(&at).await.unwrap(), foreign, "the foreign file was replaced");
    assert_eq!(doc_paths(&client, &server.addr, &key).await, ["a.md", "b.md"]);
    let mut server = server;
    assert!(server.terminate().success());
    compat(&moto.url(&format!("clash/tenants/{id}")), "--source", &tenant_db(dir.path(), &id));
}
