//! A data dir on a small tmpfs that fills up: writes answer 507 `insufficient_storage` with nothing
//! half-written, while reads, searches and deletes keep working. Needs root for `mount` (the test
//! machine runs as root); it fails, never skips, without it.

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mounting a tmpfs needs root: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

fn paths(v: &Value) -> Vec<String> {
    v["documents"].as_array().map(|a| a.iter().filter_map(|d| d["path"].as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Writes ~200 KB documents until the server refuses one; returns (stored paths, the refusal).
async fn fill(app: &TestApp, key: &str) -> (Vec<String>, u16, Value) {
    let mut stored = Vec::new();
    for i in 0..400 {
        let path = format!("fill/{i:03}.md");
        let content: String = (0..2000).map(|j| format!("w{i}x{j} ")).collect::<String>().repeat(10);
        let r = send(app.api(Method::POST, "/documents", key).json(&json!({"path": path, "content": content}))).await;
        let status = r.status().as_u16();
        if status == 201 {
            stored.push(path);
            continue;
        }
        let body: Value = r.json().await.unwrap_or(Value::Null);
        return (stored, status, body);
    }
    panic!("400 documents fitted on a small tmpfs");
}

async fn still_serves(app: &TestApp, key: &str, stored: &[String], refused_path: &str, index_has_room: bool) {
    // Reads and searches are served; the refused document left nothing behind.
    let r = send(app.api(Method::GET, "/documents?path_prefix=fill/&limit=1000", key)).await;
    assert_eq!(r.status(), 200);
    let listed = paths(&json_of(r).await);
    assert_eq!(listed, stored, "exactly the acknowledged documents are stored");
    assert!(!listed.iter().any(|p| p == refused_path));
    let r = send(app.api(Method::POST, "/search", key).json(&json!({"query": "w1x5", "mode": "keyword"}))).await;
    if index_has_room {
        assert_eq!(r.status(), 200, "search below the threshold");
    } else {
        // With no room at all, the derived index may be unable to catch up with SQLite: search then
        // says so clearly instead of answering from a stale index.
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status == 200 || (status == 507 && v["error"]["code"] == "insufficient_storage"), "search on a full disk: {status} {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_writes_but_serves_reads_and_deletes() {
    let fs = Tmpfs::mount(24);
    let dir = tempfile::tempdir_in(fs.dir.path()).expect("data dir on the tmpfs");
    let (app, _) = spawn_state(Some(dir), |c| c.min_free_disk_bytes = 8 * 1024 * 1024).await;
    let t = app.create_tenant("filler", "enterprise").await;
    let (stored, status, body) = fill(&app, &t.key).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    assert!(stored.len() >= 5, "some documents fitted before the threshold: {}", stored.len());
    still_serves(&app, &t.key, &stored, &format!("fill/{:03}.md", stored.len()), true).await;
    // Other writes are refused the same way; deletes still run.
    let r = send(app.api(Method::POST, "/products", &t.key).json(&json!({"products": [{"id": "p1", "name": "lamp"}]}))).await;
    assert_eq!(r.status(), 507);
    let listed = json_of(send(app.api(Method::GET, "/documents?path_prefix=fill/000.md", &t.key)).await).await;
    let id = listed["documents"][0]["id"].as_str().expect("id").to_string();
    let r = send(app.api(Method::DELETE, &format!("/documents/{id}"), &t.key)).await;
    assert!(r.status().is_success(), "delete on a nearly full disk: {}", r.status());
    let metrics = send(app.req(Method::GET, "/metrics")).await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("warren_disk_low") && l.ends_with(" 1")), "the operator sees it in /metrics");
    app.stop().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_inside_a_write_rolls_it_back_with_507() {
    let fs = Tmpfs::mount(12);
    let data = fs.path();
    std::fs::create_dir_all(&data).unwrap();
    let dir = tempfile::tempdir_in(&data).expect("data dir on the tmpfs");
    // No threshold: SQLite itself hits the full disk in the middle of a transaction.
    let (app, _) = spawn_state(Some(dir), |c| c.min_free_disk_bytes = 0).await;
    let t = app.create_tenant("full", "enterprise").await;
    let (stored, status, body) = fill(&app, &t.key).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    still_serves(&app, &t.key, &stored, &format!("fill/{:03}.md", stored.len()), false).await;
    app.stop().await;
    drop(fs);
}
