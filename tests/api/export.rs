//! Tenant export and import: export → import (CLI, another slug) → export gives identical JSON
//! Lines; the tenant's own admin key can export on plans with `export`; a damaged archive is refused
//! with nothing half-imported.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

/// The entries of an archive, by name.
fn entries(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let dec = zstd::stream::read::Decoder::new(archive).expect("zstd");
    let mut tar = tar::Archive::new(dec);
    let mut out = BTreeMap::new();
    for e in tar.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).expect("read entry");
        out.insert(name, bytes);
    }
    out
}

fn lines(b: &[u8]) -> Vec<Value> {
    std::str::from_utf8(b).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("json line")).collect()
}

async fn ok(app: &TestApp, m: Method, path: &str, key: &str, body: Value) -> Value {
    let r = send(app.api(m.clone(), path, key).json(&body)).await;
    assert!(r.status().is_success(), "{m} {path}: {}", r.status());
    json_of(r).await
}

async fn admin_export(app: &TestApp, slug: &str) -> Vec<u8> {
    let r = send(app.admin(Method::GET, &format!("/tenants/{slug}/export"))).await;
    assert_eq!(r.status(), 200, "export {slug}");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let cd = r.headers()["content-disposition"].to_str().unwrap().to_string();
    assert!(cd.starts_with(&format!("attachment; filename=\"{slug}-")) && cd.ends_with(".warren.tar.zst\""), "{cd}");
    r.bytes().await.expect("body").to_vec()
}

/// `warren tenant import` against the app's data dir (the server keeps running).
fn cli_import(data: &Path, archive: &Path, slug: &str) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["tenant", "import", &archive.display().to_string(), "--slug", slug])
        .env("WARREN_DATA_DIR", data)
        .env("WARREN_ADMIN_TOKEN", ADMIN)
        .env("WARREN_MODEL_DIR", data.join("no-model"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warren tenant import");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tenant_dirs(data: &Path) -> Vec<String> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("tenant.db").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_export_round_trips_and_damaged_archives_change_nothing() {
    let app = spawn_app().await;
    let t = app.create_tenant("origin", "starter").await;
    let k = &t.key;
    ok(
        &app,
        Method::POST,
        "/products",
        k,
        json!({"products": [{"id": "p1", "name": "Kettle", "categories": ["kitchen"], "price": 25.5}, {"id": "p2", "name": "Teapot"}]}),
    )
    .await;
    ok(&app, Method::POST, "/customers", k, json!({"customers": [{"id": "c1", "name": "Ada", "email": "ada@shop.test"}]})).await;
    ok(&app, Method::POST, "/orders", k, json!({"orders": [{"id": "o1", "customer_id": "c1", "created_at": 1_700_000_000, "lines": [{"product_id": "p1", "quantity": 2}, {"product_id": "p2"}]}]}))
        .await;
    ok(&app, Method::POST, "/events", k, json!({"events": [{"customer_id": "c1", "product_id": "p2", "type": "view", "at": 1_700_000_100}]})).await;
    let docs = json!({"documents": [
        {"path": "guide/kettle.md", "content": "# Kettle\nDescale the kettle monthly with citric acid.", "metadata": {"lang": "en"}},
        {"path": "guide/teapot.md", "title": "Teapot care", "content": "Warm the teapot before brewing."}]});
    ok(&app, Method::POST, "/documents/bulk", k, docs).await;

    let a = admin_export(&app, "origin").await;
    let ea = entries(&a);
    let names: Vec<&str> = ea.keys().map(String::as_str).collect();
    for want in [
        "manifest.json",
        "tenant.db",
        "documents.jsonl",
        "products.jsonl",
        "customers.jsonl",
        "orders.jsonl",
        "order_lines.jsonl",
        "events.jsonl",
        "usage.jsonl",
        "audit.jsonl",
        "keys.jsonl",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let manifest: Value = serde_json::from_slice(&ea["manifest.json"]).unwrap();
    assert_eq!(manifest["format"], "warren.tenant-archive");
    assert_eq!(manifest["tenant"]["slug"], "origin");
    let rows = |name: &str| manifest["files"].as_array().unwrap().iter().find(|f| f["name"] == name).and_then(|f| f["rows"].as_u64());
    assert_eq!(
        (rows("documents.jsonl"), rows("products.jsonl"), rows("order_lines.jsonl"), rows("events.jsonl")),
        (Some(2), Some(2), Some(2), Some(1)),
        "{manifest}"
    );
    let d = lines(&ea["documents.jsonl"]);
    assert_eq!(d[0]["path"], "guide/kettle.md");
    assert_eq!(d[0]["metadata"], json!({"lang": "en"}));
    let keys = String::from_utf8_lossy(&ea["keys.jsonl"]).into_owned();
    assert!(keys.contains(&t.key_id) && !keys.contains("hash") && !keys.contains(k.as_str()), "key metadata only: {keys}");
    assert!(!lines(&ea["usage.jsonl"]).is_empty(), "the usage history is exported");
    assert!(lines(&ea["audit.jsonl"]).iter().any(|e| e["action"] == "tenant.created"));

    // Import under another slug through the CLI, while the server runs on the data dir.
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("origin.warren.tar.zst");
    std::fs::write(&file, &a).unwrap();
    let data = app.dir.path().to_path_buf();
    let (success, imported, stderr) = cli_import(&data, &file, "copy");
    assert!(success, "import failed: {stderr}");
    assert_eq!(imported["tenant"]["slug"], "copy", "{imported}");
    assert_ne!(imported["tenant"]["id"], json!(t.id));
    assert_eq!(imported["counts"]["documents"], 2, "{imported}");
    let copy_key = imported["api_key"].as_str().expect("a new key").to_string();

    let b = admin_export(&app, "copy").await;
    let eb = entries(&b);
    for name in ["documents.jsonl", "products.jsonl", "customers.jsonl", "orders.jsonl", "order_lines.jsonl", "events.jsonl", "usage.jsonl"] {
        assert_eq!(String::from_utf8_lossy(&ea[name]), String::from_utf8_lossy(&eb[name]), "{name} differs after the round trip");
    }
    // The audit log carries over, followed by the import's own event.
    let (audit_a, audit_b) = (lines(&ea["audit.jsonl"]), lines(&eb["audit.jsonl"]));
    assert_eq!(audit_b.len(), audit_a.len() + 1, "{audit_b:?}");
    assert_eq!(audit_b[..audit_a.len()], audit_a[..]);
    assert_eq!(audit_b[audit_a.len()]["action"], "tenant.imported");

    // The copy serves: its documents, its search index (rebuilt on import), its catalog.
    let s = ok(&app, Method::POST, "/search", &copy_key, json!({"query": "descale citric", "mode": "keyword"})).await;
    assert_eq!(s["results"][0]["path"], "guide/kettle.md", "{s}");
    let p = json_of(send(app.api(Method::GET, "/products/p1", &copy_key)).await).await;
    assert_eq!(p["name"], "Kettle", "{p}");

    // Damaged archives: refused with a clear error, nothing imported, nothing left staged.
    let before = tenant_dirs(&data);
    let truncated = work.path().join("truncated.tar.zst");
    std::fs::write(&truncated, &a[..a.len() / 2]).unwrap();
    let mut flipped = a.clone();
    let mid = flipped.len() * 3 / 4;
    flipped[mid] ^= 0x55;
    let flipped_file = work.path().join("flipped.tar.zst");
    std::fs::write(&flipped_file, &flipped).unwrap();
    let not_archive = work.path().join("notes.txt");
    std::fs::write(&not_archive, b"just some notes").unwrap();
    for (f, what) in [(&truncated, "truncated"), (&flipped_file, "damaged"), (&not_archive, "damaged")] {
        let (success, _, stderr) = cli_import(&data, f, "copy2");
        assert!(!success, "{} was imported", f.display());
        assert!(stderr.contains("invalid_archive") && stderr.contains(what), "{}: {stderr}", f.display());
    }
    let (success, _, stderr) = cli_import(&data, &file, "copy");
    assert!(!success && stderr.contains("slug_taken"), "{stderr}");
    assert_eq!(tenant_dirs(&data), before, "a refused import left a tenant directory");
    let staged: Vec<_> = std::fs::read_dir(data.join(".imports")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(staged.is_empty(), "staging left behind: {staged:?}");
    let r = send(app.admin(Method::GET, "/tenants/copy2")).await;
    assert_eq!(r.status(), 404);

    // The tenant's own export: admin scope, and the plan's `export` feature.
    let r = send(app.api(Method::POST, "/export", k)).await;
    expect_error(r, 403, "insufficient_scope").await;
    let created =
        json_of(send(app.admin(Method::POST, "/tenants/origin/keys").json(&json!({"name": "owner", "scopes": ["read", "write", "admin"]}))).await)
            .await;
    let admin_key = created["api_key"].as_str().or(created["key"].as_str()).expect("admin key").to_string();
    let r = send(app.api(Method::POST, "/export", &admin_key)).await;
    assert_eq!(r.status(), 200);
    let own = entries(&r.bytes().await.unwrap());
    assert_eq!(own["documents.jsonl"], ea["documents.jsonl"]);
    let r = send(app.admin(Method::PUT, "/tenants/origin/overrides").json(&json!({"features": {"export": false}}))).await;
    assert!(r.status().is_success());
    let r = send(app.api(Method::POST, "/export", &admin_key)).await;
    expect_error(r, 403, "feature_not_in_plan").await;
    app.stop().await;
}
