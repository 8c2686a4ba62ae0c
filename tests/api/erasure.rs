//! Data rights: erasing one end customer leaves no byte of them in any file of the data dir, and a
//! plain customer delete removes only the profile.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const EMAIL: &str = "alice.example@mail.test";

/// Every file under `dir` holding `needle`, with its count.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let n = bytes.windows(needle.len()).filter(|w| *w == needle).count();
                if n > 0 {
                    found.push((p.display().to_string(), n));
                }
            }
        }
    }
    found
}

/// Tantivy's per-segment delete bitsets: present while deleted documents still sit in a segment.
fn delete_bitsets(index_dir: &Path) -> Vec<String> {
    std::fs::read_dir(index_dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".del")).collect())
        .unwrap_or_default()
}

async fn call(app: &TestApp, m: Method, path: &str, key: &str, body: Option<Value>) -> Value {
    let mut rb = app.api(m.clone(), path, key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = send(rb).await;
    assert!(r.status().is_success(), "{m} {path}: {}", r.status());
    json_of(r).await
}

#[tokio::test]
async fn erasing_a_customer_leaves_none_of_their_bytes_in_any_file() {
    let app = spawn_with(|c| c.recs.debounce_ms = 100).await;
    let t = app.create_tenant("shop", "starter").await;
    let k = &t.key;
    call(&app, Method::POST, "/products", k, Some(json!({"products": [{"id": "p1", "name": "Kettle"}, {"id": "p2", "name": "Teapot"}]}))).await;
    let alice = json!({"id": "c-alice", "name": "Alice Example", "email": EMAIL, "address": "1 Example Street, Testville"});
    call(&app, Method::POST, "/customers", k, Some(json!({"customers": [alice, {"id": "c-bob", "name": "Bob Other"}]}))).await;
    let orders = json!({"orders": [
        {"id": "o1", "customer_id": "c-alice", "created_at": 1_700_000_000, "lines": [{"product_id": "p1"}, {"product_id": "p2"}]},
        {"id": "o2", "customer_id": "c-alice", "created_at": 1_700_000_100, "lines": [{"product_id": "p9"}]},
        {"id": "o3", "customer_id": "c-bob", "created_at": 1_700_000_200, "lines": [{"product_id": "p2"}]}]});
    call(&app, Method::POST, "/orders", k, Some(orders)).await;
    let events = json!({"events": [
        {"customer_id": "c-alice", "product_id": "p1", "type": "view", "at": 1_700_000_300},
        {"customer_id": "c-alice", "product_id": "p2", "type": "cart", "at": 1_700_000_301},
        {"customer_id": "c-bob", "product_id": "p1", "type": "view", "at": 1_700_000_302}]});
    call(&app, Method::POST, "/events", k, Some(events)).await;
    // Support tickets mention her; both land in one index segment, so deleting hers leaves a
    // segment with a deleted document in it (what the expunge must rewrite).
    let docs = json!({"documents": [
        {"path": "support/alice.md", "content": format!("Ticket from Alice Example <{EMAIL}>: the kettle leaks. Reply to {EMAIL}.")},
        {"path": "support/bob.md", "content": "Ticket from Bob: the teapot is fine."}]});
    call(&app, Method::POST, "/documents/bulk", k, Some(docs)).await;

    let data = app.dir.path();
    let before = files_holding(data, EMAIL.as_bytes());
    assert!(!before.is_empty(), "before the erasure her email is on disk (else this test proves nothing)");

    // Her documents, by path, then her.
    let d = call(&app, Method::DELETE, "/documents?path_prefix=support/alice", k, None).await;
    assert_eq!(d["deleted"], 1, "{d}");
    let index_dir = data.join(&t.id).join("index");
    assert!(!delete_bitsets(&index_dir).is_empty(), "right after the delete the segment still holds the dead document");
    let r = call(&app, Method::DELETE, "/customers/c-alice?erase=true", k, None).await;
    assert_eq!(r["mode"], "erased", "{r}");
    assert_eq!(r["removed"], json!({"customers": 1, "orders": 2, "order_lines": 3, "events": 2, "unknown_product_refs": 1}), "{r}");
    assert_eq!(r["wal_checkpointed"], true, "{r}");
    assert_eq!(r["retrain_scheduled"], true, "{r}");
    assert_eq!(r["backups_may_hold_until"], Value::Null, "no backups here: {r}");

    // Within the 60 s (the index writer retires after 5 s idle), nothing of her is left.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = files_holding(data, EMAIL.as_bytes());
        let del = delete_bitsets(&index_dir);
        if left.is_empty() && del.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "60 s after the erasure: email in {left:?}, delete bitsets {del:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for needle in ["Alice Example", "1 Example Street", "the kettle leaks"] {
        let left = files_holding(data, needle.as_bytes());
        assert!(left.is_empty(), "{needle:?} is gone too: {left:?}");
    }

    // Bob and the catalog stay; the audit log records the erasure without naming her.
    let s = call(&app, Method::GET, "/recommendations/status", k, None).await;
    assert_eq!((s["data"]["customers"].as_u64(), s["data"]["orders"].as_u64(), s["data"]["events"].as_u64()), (Some(1), Some(1), Some(1)), "{s}");
    let bob = call(&app, Method::GET, "/documents?path_prefix=support/", k, None).await;
    assert_eq!(bob["documents"].as_array().map(Vec::len), Some(1), "{bob}");
    let audit = json_of(send(app.admin(Method::GET, "/tenants/shop/audit")).await).await;
    let text = audit.to_string();
    assert!(text.contains("customer.erased"), "{text}");
    assert!(!text.contains("alice") && !text.contains(EMAIL), "the audit event names no one: {text}");

    // Erasing again answers zeros (a data-protection request can be repeated), and a plain delete
    // removes only the profile.
    let again = call(&app, Method::DELETE, "/customers/c-alice?erase=true", k, None).await;
    assert_eq!(again["removed"]["customers"], 0, "{again}");
    let plain = call(&app, Method::DELETE, "/customers/c-bob", k, None).await;
    assert_eq!(
        (plain["mode"].as_str(), plain["removed"]["customers"].as_u64(), plain["removed"]["orders"].as_u64()),
        (Some("deleted"), Some(1), Some(0))
    );
    let s = call(&app, Method::GET, "/recommendations/status", k, None).await;
    assert_eq!((s["data"]["customers"].as_u64(), s["data"]["orders"].as_u64()), (Some(0), Some(1)), "{s}");
}

fn cli_erase(data: &Path, slug: &str, id: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["customer", "erase", slug, id, "--yes"])
        .env("WARREN_DATA_DIR", data)
        .env("WARREN_ADMIN_TOKEN", ADMIN)
        .env("WARREN_MODEL_DIR", data.join("no-model"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warren customer erase")
}

/// The CLI twin: `warren customer erase` does the same erasure with the server stopped (and refuses,
/// naming the API call, while one runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_erases_a_customer_like_the_api() {
    let mut app = spawn_app().await;
    let t = app.create_tenant("cli-shop", "starter").await;
    let k = &t.key;
    call(&app, Method::POST, "/products", k, Some(json!({"products": [{"id": "p1", "name": "Kettle"}]}))).await;
    call(
        &app,
        Method::POST,
        "/customers",
        k,
        Some(json!({"customers": [{"id": "c-alice", "name": "Alice Example", "email": EMAIL}, {"id": "c-bob"}]})),
    )
    .await;
    let orders = json!({"orders": [
        {"id": "o1", "customer_id": "c-alice", "created_at": 1_700_000_000, "lines": [{"product_id": "p1"}]},
        {"id": "o2", "customer_id": "c-bob", "created_at": 1_700_000_100, "lines": [{"product_id": "p1"}]}]});
    call(&app, Method::POST, "/orders", k, Some(orders)).await;
    call(
        &app,
        Method::POST,
        "/events",
        k,
        Some(json!({"events": [{"customer_id": "c-alice", "product_id": "p1", "type": "view", "at": 1_700_000_300}]})),
    )
    .await;
    let data = app.dir.path().to_path_buf();
    assert!(!files_holding(&data.join(&t.id), EMAIL.as_bytes()).is_empty(), "her email is on disk before the erasure");

    let out = cli_erase(&data, "cli-shop", "c-alice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("server_running") && stderr.contains("/api/v1/customers/c-alice?erase=true"), "{stderr}");

    app.shutdown.cancel();
    app.task.take().expect("running").await.expect("join").expect("stopped cleanly");
    let out = cli_erase(&data, "cli-shop", "c-alice");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("receipt");
    assert_eq!(receipt["mode"], "erased", "{receipt}");
    assert_eq!(receipt["removed"], json!({"customers": 1, "orders": 1, "order_lines": 1, "events": 1, "unknown_product_refs": 0}), "{receipt}");
    assert_eq!(receipt["wal_checkpointed"], true, "{receipt}");
    let left = files_holding(&data.join(&t.id), EMAIL.as_bytes());
    assert!(left.is_empty(), "her email is still on disk after the CLI erasure: {left:?}");
    let left = files_holding(&data.join(&t.id), b"Alice Example");
    assert!(left.is_empty(), "her name is still on disk: {left:?}");
}

/// Occurrences of `needle` in every replica object under `root`: raw, and in the decoded LTX pages.
fn replica_holding(root: &Path, needle: &[u8]) -> (usize, Vec<String>) {
    // The replica's directories appear with its first object: `walk` skips what is not there yet.
    let mut objects = 0;
    let mut found = Vec::new();
    for p in walk(root).into_iter().filter(|p| p.is_file()) {
        let Ok(bytes) = std::fs::read(&p) else { continue };
        objects += 1;
        let mut n = bytes.windows(needle.len()).filter(|w| *w == needle).count();
        if p.extension().is_some_and(|x| x == "ltx") {
            let d = warren::backup::ltx::decode(&bytes).expect("a replica object decodes");
            n += d.pages.values().map(|page| page.windows(needle.len()).filter(|w| *w == needle).count()).sum::<usize>();
        }
        if n > 0 {
            found.push(format!("{} ({n})", p.display()));
        }
    }
    (objects, found)
}

/// Backups and erasure: after an erasure a fresh snapshot ships, a restore to before it is refused,
/// and once `erasure_grace` has passed no replica object holds the erased bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_grace_no_replica_object_holds_an_erased_customer() {
    let replica = tempfile::tempdir().unwrap();
    let url = format!("file://{}", replica.path().display());
    let app = spawn_with(|c| {
        c.backup_url = Some(url.clone());
        c.backup.sync_interval_ms = 100;
        c.backup.erasure_grace_secs = 2;
        c.recs.debounce_ms = 100;
    })
    .await;
    let t = app.create_tenant("shop", "pro").await;
    let k = &t.key;
    call(&app, Method::POST, "/products", k, Some(json!({"products": [{"id": "p1", "name": "Kettle"}]}))).await;
    call(
        &app,
        Method::POST,
        "/customers",
        k,
        Some(json!({"customers": [{"id": "c-alice", "name": "Alice Example", "email": EMAIL}, {"id": "c-bob"}]})),
    )
    .await;
    call(
        &app,
        Method::POST,
        "/orders",
        k,
        Some(json!({"orders": [{"id": "o1", "customer_id": "c-alice", "created_at": 1_700_000_000, "lines": [{"product_id": "p1"}]}]})),
    )
    .await;
    let doc = json!({"path": "support/alice.md", "content": format!("Ticket from Alice Example <{EMAIL}>.")});
    call(&app, Method::POST, "/documents", k, Some(doc)).await;
    let tenant_replica = replica.path().join("tenants").join(&t.id);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, found) = replica_holding(&tenant_replica, EMAIL.as_bytes());
        if !found.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "her email never reached the replica (else this test proves nothing)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before_erasure = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;

    call(&app, Method::DELETE, "/documents?path_prefix=support/alice", k, None).await;
    let r = call(&app, Method::DELETE, "/customers/c-alice?erase=true", k, None).await;
    assert!(r["backups_may_hold_until"].is_string(), "{r}");

    // A restore to before the erasure is refused, naming it, from the admin door.
    let body = json!({"timestamp": before_erasure});
    let r = send(app.admin(Method::POST, "/tenants/shop/restore").json(&body)).await;
    let v = expect_error(r, 400, "restore_before_erasure").await;
    assert!(v.to_string().contains("customer.erased"), "{v}");

    // Within the grace (2 s) plus a sync, every object older than the erasure's snapshot is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (objects, found) = replica_holding(&tenant_replica, EMAIL.as_bytes());
        let local = files_holding(&app.dir.path().join(&t.id), EMAIL.as_bytes());
        if found.is_empty() && local.is_empty() && objects > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "30 s after the erasure: replica objects {found:?}, local files {local:?} ({objects} objects)");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The replica still restores: its chain now starts at the erasure's snapshot.
    let r = send(app.admin(Method::POST, "/tenants/shop/restore").json(&json!({}))).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let s = call(&app, Method::GET, "/recommendations/status", k, None).await;
    assert_eq!(s["data"]["customers"].as_u64(), Some(1), "{s}");
    app.stop().await;
}
