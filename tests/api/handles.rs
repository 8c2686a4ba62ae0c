//! The handle cache is bounded: 1,000 tenants through a cap of 16, file descriptors bounded by the
//! cap, every acknowledged write kept; and a `kill -9` during a write burst loses nothing acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use rand::seq::SliceRandom;
use reqwest::Client;
use serde_json::{json, Value};

use crate::helpers::*;

/// The documented bound (README, "Bounded resources"): a base for the process (listener, control.db,
/// logs, runtime) plus, per handle, the writer and reader connections and the index files, for up to
/// twice the cap (open + closing).
fn fd_bound(cap: usize) -> usize {
    96 + 2 * cap * 12
}

async fn create_tenants(client: &Client, addr: &str, n: usize) -> Vec<(String, String)> {
    stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let addr = addr.to_string();
            async move {
                let slug = format!("t{i:04}");
                let r = client
                    .post(format!("{addr}/admin/v1/tenants"))
                    .bearer_auth(ADMIN)
                    .json(&json!({"slug": slug, "name": slug, "email": "ops@example.com"}))
                    .send()
                    .await
                    .expect("create");
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                (slug, v["api_key"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_tenants_through_a_cap_of_sixteen() {
    const CAP: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[("WARREN_MAX_OPEN_TENANTS", CAP.to_string())]).await;
    let client = Client::builder().pool_max_idle_per_host(32).build().unwrap();
    let tenants = create_tenants(&client, &server.addr, 1000).await;

    // Sample the server's descriptors while the load runs.
    let max_fds = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let pid = server.pid();
    let sampler = {
        let (max_fds, done) = (max_fds.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
                max_fds.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Each tenant: three reads of its SQLite file; every tenth also writes. All shuffled, 32 at a time.
    let mut work: Vec<(usize, &'static str)> = Vec::new();
    for i in 0..tenants.len() {
        work.extend([(i, "read"), (i, "read"), (i, "read")]);
        if i % 10 == 0 {
            work.push((i, "write"));
        }
    }
    work.shuffle(&mut rand::rng());
    let written: HashMap<usize, usize> = stream::iter(work)
        .map(|(i, op)| {
            let client = client.clone();
            let addr = server.addr.clone();
            let key = tenants[i].1.clone();
            async move {
                let r = if op == "write" {
                    client
                        .post(format!("{addr}/api/v1/documents"))
                        .bearer_auth(&key)
                        .json(&json!({"path": format!("doc-{i}.md"), "content": format!("# Tenant {i}\nbody of tenant {i}")}))
                        .send()
                        .await
                } else {
                    client.get(format!("{addr}/api/v1/documents")).bearer_auth(&key).send().await
                }
                .expect("request");
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                assert!(status.is_success(), "{op} for tenant {i}: {status} {body}");
                (i, usize::from(op == "write"))
            }
        })
        .buffer_unordered(32)
        .fold(HashMap::new(), |mut m, (i, w)| async move {
            *m.entry(i).or_insert(0) += w;
            m
        })
        .await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak = max_fds.load(Ordering::Relaxed);
    eprintln!("peak fds with cap {CAP} over 1000 tenants: {peak} (bound {})", fd_bound(CAP));
    assert!(peak <= fd_bound(CAP), "peak fds {peak} over the bound {}", fd_bound(CAP));

    let metrics = client.get(format!("{}/metrics", server.addr)).send().await.unwrap().text().await.unwrap();
    let open: f64 = metrics
        .lines()
        .find(|l| l.starts_with("warren_tenant_handles_open "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("open gauge");
    assert!(open <= CAP as f64, "open handles {open} over the cap");

    // Graceful stop, restart: every acknowledged write is there.
    assert!(server.terminate().success(), "SIGTERM exits cleanly");
    let server = ServerProcess::start(dir.path(), &[("WARREN_MAX_OPEN_TENANTS", CAP.to_string())]).await;
    let missing: Vec<usize> = stream::iter(written.into_iter())
        .map(|(i, n)| {
            let client = client.clone();
            let addr = server.addr.clone();
            let key = tenants[i].1.clone();
            async move {
                let v: Value = client.get(format!("{addr}/api/v1/documents")).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
                (i, v["documents"].as_array().map_or(0, Vec::len) == n)
            }
        })
        .buffer_unordered(16)
        .filter_map(|(i, ok)| async move { (!ok).then_some(i) })
        .collect()
        .await;
    assert!(missing.is_empty(), "tenants missing acknowledged writes: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]).await;
    let client = Client::new();
    let tenants = create_tenants(&client, &server.addr, 4).await;
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<(usize, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (t, (_, key)) in tenants.iter().enumerate() {
        let (client, addr, key, acked, stop) = (client.clone(), server.addr.clone(), key.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let path = format!("burst/{n}.md");
                let r = client
                    .post(format!("{addr}/api/v1/documents"))
                    .bearer_auth(&key)
                    .json(&json!({"path": path, "content": format!("write {n} of tenant {t}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => acked.lock().push((t, path)),
                    Ok(r) => panic!("write failed before the kill: {} {}", r.status(), r.text().await.unwrap_or_default()),
                    Err(_) => break, // the server died mid-request: not acknowledged
                }
                n += 1;
            }
        }));
    }
    // Kill mid-burst once enough writes are acknowledged (a loaded machine may need longer than 3 s).
    let started = std::time::Instant::now();
    while acked.lock().len() < 12 || started.elapsed() < Duration::from_millis(1500) {
        assert!(started.elapsed() < Duration::from_secs(120), "the burst did not get going: {}", acked.lock().len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(acked.len() >= 8, "the burst wrote too little to prove anything: {}", acked.len());

    let server = ServerProcess::start(dir.path(), &[]).await;
    for (t, (_, key)) in tenants.iter().enumerate() {
        let mut have = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{}/api/v1/documents?limit=1000", server.addr);
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let v: Value = client.get(url).bearer_auth(key).send().await.unwrap().json().await.unwrap();
            for d in v["documents"].as_array().unwrap() {
                have.insert(d["path"].as_str().unwrap().to_string());
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        for (_, p) in acked.iter().filter(|(tt, _)| *tt == t) {
            assert!(have.contains(p), "tenant {t} lost acknowledged {p}");
        }
    }
}
