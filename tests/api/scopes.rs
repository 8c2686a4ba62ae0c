//! Key scopes (issue 11): a `read` key reads everything a tenant has (including the reads that are
//! POSTs: search, context assembly, embeddings, cart recommendations) and writes nothing, over REST
//! and over MCP; and `warren tenant delete` (the CLI, server stopped) schedules the replica deletion
//! exactly like `DELETE /admin/v1/tenants/{slug}`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};

use crate::helpers::*;

/// The real model, and trainings that follow writes quickly.
async fn with_model() -> TestApp {
    let dir = model_dir();
    assert!(dir.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", dir.display());
    spawn_with(|c| {
        c.model_dir = dir;
        c.recs.debounce_ms = 100;
        c.recs.max_delay_secs = 2;
    })
    .await
}

/// A key with only the `read` scope, made through the admin API.
async fn read_key(app: &TestApp, slug: &str) -> String {
    let r = send(app.admin(Method::POST, &format!("/tenants/{slug}/keys")).json(&json!({"name": "agent", "scopes": ["read"]}))).await;
    assert_eq!(r.status(), 201, "create the read key");
    let v = json_of(r).await;
    assert_eq!(v["key"]["scopes"], json!(["read"]), "{v}");
    v["api_key"].as_str().expect("api_key").to_string()
}

async fn add_doc(app: &TestApp, key: &str, path: &str, content: &str) -> String {
    let r = send(app.api(Method::POST, "/documents", key).json(&json!({"path": path, "content": content}))).await;
    assert_eq!(r.status(), 201, "write {path}");
    json_of(r).await["id"].as_str().expect("id").to_string()
}

/// One call; the status and the JSON body (Null when there is none).
async fn call(app: &TestApp, key: &str, method: &Method, path: &str, body: &Option<Value>) -> (u16, Value) {
    let mut rb = app.api(method.clone(), path, key);
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let r = send(rb).await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A read with the read key: 200 and its body.
async fn read_ok(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(app, key, &method, path, &body).await;
    assert_eq!(status, 200, "the read key was refused {method} /api/v1{path}: {v}");
    v
}

/// Waits until a model of at least `version` is in and nothing is pending.
async fn trained(app: &TestApp, key: &str, version: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = call(app, key, &Method::GET, "/recommendations/status", &None).await;
        if s["model_version"].as_u64().unwrap_or(0) >= version && s["training"] == false && s["pending_changes"] == false {
            return s;
        }
        assert!(Instant::now() < deadline, "no model v{version} in time: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a write could change: the documents (id, path), the commerce counts and product a1.
async fn tenant_state(app: &TestApp, key: &str) -> (Vec<(String, String)>, Value, Value, Value) {
    let (s, list) = call(app, key, &Method::GET, "/documents?limit=100", &None).await;
    assert_eq!(s, 200, "{list}");
    let docs = list["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d["path"].as_str().unwrap().to_string()))
        .collect();
    let (s, status) = call(app, key, &Method::GET, "/recommendations/status", &None).await;
    assert_eq!(s, 200, "{status}");
    let mut data = status["data"].clone();
    data.as_object_mut().expect("data counts").remove("products_embedded"); // filled in by training, not by writes
    let (s, product) = call(app, key, &Method::GET, "/products/a1", &None).await;
    assert_eq!(s, 200, "product a1: {product}");
    (docs, data, product, status["model_version"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_key_reads_everything_and_writes_nothing() {
    let app = with_model().await;
    let t = app.create_tenant("ro-rest", "starter").await;

    // Seed with the tenant's read+write key: documents, a catalog, customers, orders, events, a model.
    let burrow = add_doc(&app, &t.key, "guides/burrow.md", "# Burrows\nRabbits dig warrens: networks of burrows with many entrances.").await;
    add_doc(&app, &t.key, "notes/keep.md", "Notes about otters and their holts.").await;
    let mut products = Vec::new();
    for k in 1..=4 {
        products.push(json!({"id": format!("a{k}"), "name": format!("Kitchen knife model {k}"), "categories": ["Kitchen"], "price": 10 + k}));
        products.push(json!({"id": format!("b{k}"), "name": format!("Garden hose type {k}"), "categories": ["Garden"], "price": 20 + k}));
    }
    let (s, v) = call(&app, &t.key, &Method::POST, "/products", &Some(json!({"products": products}))).await;
    assert_eq!((s, v["failed"].as_u64()), (200, Some(0)), "{v}");
    let orders = two_family_orders();
    let (s, v) = call(&app, &t.key, &Method::POST, "/orders", &Some(json!({"orders": orders}))).await;
    assert_eq!((s, v["failed"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) = call(&app, &t.key, &Method::POST, "/customers", &Some(json!({"customers": [{"id": "c0", "segment": "vip"}]}))).await;
    assert_eq!((s, v["failed"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) =
        call(&app, &t.key, &Method::POST, "/events", &Some(json!({"events": [{"customer_id": "c0", "product_id": "a1", "type": "view"}]}))).await;
    assert_eq!((s, v["failed"].as_u64()), (200, Some(0)), "{v}");
    let (s, v) = call(&app, &t.key, &Method::POST, "/recommendations/train", &None).await;
    assert_eq!(s, 202, "{v}");
    trained(&app, &t.key, 1).await;

    let ro = read_key(&app, "ro-rest").await;

    // Every read answers 200 with the read key, the POST-shaped reads included.
    let v = read_ok(&app, &ro, Method::POST, "/search", Some(json!({"query": "rabbits dig burrows", "limit": 5}))).await;
    assert!(v["results"].as_array().unwrap().iter().any(|r| r["path"] == "guides/burrow.md"), "hybrid search: {v}");
    let v = read_ok(&app, &ro, Method::POST, "/search", Some(json!({"query": "otters", "mode": "keyword"}))).await;
    assert_eq!(v["results"][0]["path"], "notes/keep.md", "keyword search: {v}");
    let v = read_ok(&app, &ro, Method::POST, "/context/assemble", Some(json!({"query": "what do rabbits dig?", "max_tokens": 60}))).await;
    assert!(v["context"].as_str().unwrap().contains("warrens") && v["total_tokens"].as_u64().unwrap() <= 60, "{v}");
    let v = read_ok(&app, &ro, Method::POST, "/embeddings", Some(json!({"input": ["hello world"], "model": "all-MiniLM-L6-v2"}))).await;
    assert_eq!(v["data"][0]["embedding"].as_array().map(Vec::len), Some(384), "embeddings");
    let v = read_ok(&app, &ro, Method::GET, "/recommendations?customer_id=c0&limit=3", None).await;
    assert!(!v["results"].as_array().unwrap().is_empty(), "no recommendations for c0: {v}");
    let v = read_ok(&app, &ro, Method::POST, "/recommendations/cart", Some(json!({"product_ids": ["a1"], "limit": 3}))).await;
    assert!(v["results"].is_array(), "{v}");
    for path in ["/products/a1/related", "/products/a1/similar", "/recommendations/trending", "/recommendations/status"] {
        read_ok(&app, &ro, Method::GET, path, None).await;
    }
    let v = read_ok(&app, &ro, Method::GET, "/products/a1", None).await;
    assert_eq!(v["name"], "Kitchen knife model 1", "{v}");
    let v = read_ok(&app, &ro, Method::GET, "/documents", None).await;
    assert_eq!(v["documents"].as_array().unwrap().len(), 2, "{v}");
    let v = read_ok(&app, &ro, Method::GET, &format!("/documents/{burrow}"), None).await;
    assert!(v["content"].as_str().unwrap().contains("warrens"), "{v}");
    let v = read_ok(&app, &ro, Method::GET, "/usage", None).await;
    assert!(v["usage"].is_object(), "{v}");
    let v = read_ok(&app, &ro, Method::GET, "/tenant", None).await;
    assert_eq!(v["slug"], "ro-rest", "{v}");

    // Every write is refused with insufficient_scope. The bodies are valid (replayed below with the
    // read+write key, which succeeds), so only the scope can refuse them.
    let before = tenant_state(&app, &t.key).await;
    let woo_product = json!({"id": 799, "name": "Ship Your Idea", "type": "simple", "status": "publish",
        "description": "<p>A shirt.</p>", "price": "21.99", "stock_status": "instock",
        "categories": [{"id": 9, "name": "Clothing", "slug": "clothing"}]});
    let woo_order = json!({"id": 727, "status": "processing", "currency": "USD", "customer_id": 5,
        "date_created_gmt": "2017-03-22T19:28:02", "line_items": [{"id": 315, "product_id": 799, "quantity": 2, "price": 3}]});
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/documents".into(), Some(json!({"path": "guides/new.md", "content": "# New\nA document the read key may not add."}))),
        (
            Method::POST,
            "/documents/bulk".into(),
            Some(json!({"documents": [{"path": "bulk/one.md", "content": "first"}, {"path": "bulk/two.md", "content": "second"}]})),
        ),
        (
            Method::POST,
            "/products".into(),
            Some(json!({"products": [{"id": "p-new", "name": "Copper pan", "categories": ["Kitchen"], "price": 30}]})),
        ),
        (Method::POST, "/customers".into(), Some(json!({"customers": [{"id": "c-new", "segment": "new"}]}))),
        (
            Method::POST,
            "/orders".into(),
            Some(json!({"orders": [{"id": "o-new", "customer_id": "c0", "created_at": 1_700_500_000, "lines": [{"product_id": "a2"}]}]})),
        ),
        (Method::POST, "/events".into(), Some(json!({"events": [{"customer_id": "c1", "product_id": "b2", "type": "cart"}]}))),
        (Method::POST, "/integrations/woocommerce/products".into(), Some(woo_product)),
        (Method::POST, "/integrations/woocommerce/orders".into(), Some(json!([woo_order]))),
        (Method::POST, "/recommendations/train".into(), None),
        // The deletes come last, so the replay below finds what they delete.
        (Method::DELETE, format!("/documents/{burrow}"), None),
        (Method::DELETE, "/documents?path_prefix=notes/".into(), None),
        (Method::DELETE, "/products/a1".into(), None),
    ];
    for (method, path, body) in &writes {
        let (status, v) = call(&app, &ro, method, path, body).await;
        assert_eq!((status, v["error"]["code"].as_str()), (403, Some("insufficient_scope")), "{method} /api/v1{path} with the read key: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // Nothing changed: the same documents, the same commerce data, product a1, the same model.
    let after = tenant_state(&app, &t.key).await;
    assert_eq!(after.0, before.0, "documents changed after refused writes");
    assert_eq!(after.1, before.1, "commerce data changed after refused writes");
    assert_eq!(after.2, before.2, "product a1 changed after refused writes");
    assert_eq!(after.3, before.3, "the model changed after a refused train");
    let (s, v) = call(&app, &t.key, &Method::GET, "/recommendations/status", &None).await;
    assert_eq!((s, &v["training"]), (200, &json!(false)), "a refused train started a training: {v}");

    // The same requests with the read+write key succeed: the bodies were valid.
    for (method, path, body) in &writes {
        let (status, v) = call(&app, &t.key, method, path, body).await;
        assert!((200..300).contains(&status), "{method} /api/v1{path} with the read+write key answered {status}: {v}");
        assert!(v["failed"].is_null() || v["failed"] == 0, "{method} /api/v1{path}: an item of the body is invalid: {v}");
    }
    let (s, v) = call(&app, &t.key, &Method::GET, "/products/a1", &None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("product_not_found")), "{v}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_key_over_mcp() {
    let app = with_model().await;
    let t = app.create_tenant("ro-mcp", "starter").await;
    let id = add_doc(&app, &t.key, "guides/burrow.md", "# Burrows\nRabbits dig warrens: networks of burrows with many entrances.").await;
    let ro = read_key(&app, "ro-mcp").await;
    let out = run_python("mcp_scopes.py", vec![format!("{}/mcp", app.addr), ro, id.clone(), "guides/burrow.md".into()]).await;
    let summary: Value = serde_json::from_str(out.trim().lines().last().unwrap_or_default()).unwrap_or_else(|_| panic!("no summary: {out}"));
    assert_eq!(summary["reads"], json!(["assemble_context", "get_document", "list_documents", "search"]), "{summary}");
    assert_eq!(summary["refused"], json!({"add_document": "insufficient_scope", "delete_document": "insufficient_scope"}), "{summary}");
    // Over REST too: the document is still there and nothing was added.
    let v = json_of(send(app.api(Method::GET, "/documents", &t.key)).await).await;
    let paths: Vec<&str> = v["documents"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec!["guides/burrow.md"], "{v}");
    app.stop().await;
}

/// Files under a tenant's replica (`<backup dir>/tenants/<id>`), recursively; 0 when the directory is gone.
fn replica_files(backups: &Path, tenant_id: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![backups.join("tenants").join(tenant_id)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Whether anything of the tenant is left in the data dir: its directory, or one in `.trash/`.
fn tenant_dir_left(data: &Path, tenant_id: &str) -> bool {
    let trashed = std::fs::read_dir(data.join(".trash"))
        .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().starts_with(tenant_id)))
        .unwrap_or(false);
    data.join(tenant_id).exists() || trashed
}

/// Waits until the tenant's replica holds objects and has caught up with its writes.
async fn wait_replicated(addr: &str, slug: &str, backups: &Path, tenant_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = Client::new().get(format!("{addr}/admin/v1/tenants/{slug}/backup")).bearer_auth(ADMIN).send().await.expect("backup status");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        if v["backup"]["pending"] == false && v["backup"]["last_txid"].is_string() && replica_files(backups, tenant_id) > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{slug}'s replica did not catch up: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_delete_schedules_replica_deletion_like_admin_delete() {
    let backups = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let envs: Vec<(&str, String)> = vec![
        ("WARREN_BACKUP_URL", format!("file://{}", backups.path().display())),
        ("WARREN_BACKUP__SYNC_INTERVAL_MS", "200".into()),
        ("WARREN_BACKUP__DELETE_GRACE_SECS", "1".into()),
        ("WARREN_BACKUP__DELETE_SWEEP_SECS", "1".into()),
    ];
    let mut server = ServerProcess::start(data.path(), &envs).await;
    let client = Client::new();
    let mut ids = Vec::new();
    for slug in ["del-admin", "del-cli"] {
        let created = server.create_tenant(slug, "pro").await;
        let (id, key) = id_and_key(&created);
        let r = client
            .post(format!("{}/api/v1/documents", server.addr))
            .bearer_auth(&key)
            .json(&json!({"path": "a.md", "content": format!("{slug} data")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "write to {slug}");
        wait_replicated(&server.addr, slug, backups.path(), &id).await;
        ids.push(id);
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    for id in [&a, &b] {
        assert!(replica_files(backups.path(), id) > 0, "no replica objects for {id} before the deletion");
        assert!(data.path().join(id).is_dir(), "no directory for {id} before the deletion");
    }

    // A through the admin API, the server running.
    let r = client.delete(format!("{}/admin/v1/tenants/del-admin", server.addr)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(server.terminate().success(), "the server did not stop cleanly");

    // B through the CLI, the server stopped, with the same data dir and settings.
    let mut cli = Command::new(env!("CARGO_BIN_EXE_warren"));
    cli.args(["tenant", "delete", "del-cli", "--yes"])
        .env("WARREN_DATA_DIR", data.path())
        .env("WARREN_ADMIN_TOKEN", ADMIN)
        .env("WARREN_MODEL_DIR", data.path().join("no-model"))
        .env("RUST_LOG", "warn");
    for (k, v) in &envs {
        cli.env(k, v);
    }
    let out = cli.output().expect("run warren tenant delete");
    assert!(out.status.success(), "warren tenant delete: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // Started again, the server deletes both replicas once their grace has passed.
    let mut server = ServerProcess::start(data.path(), &envs).await;
    let r = client.get(format!("{}/admin/v1/tenants/del-cli", server.addr)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 404, "the CLI-deleted tenant is still in the control plane");
    let left = || {
        [("A (admin delete)", &a), ("B (CLI delete)", &b)]
            .into_iter()
            .filter_map(|(name, id)| {
                let files = replica_files(backups.path(), id);
                let dir = tenant_dir_left(data.path(), id);
                (files > 0 || dir).then(|| format!("{name} {id}: {files} replica objects, tenant directory left: {dir}"))
            })
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let remaining = left();
        if remaining.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "not deleted within 20 s of the restart:\n{}", remaining.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And they stay deleted (nothing ships a deleted tenant's database again), for a few sweeps.
    let stable = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < stable {
        let remaining = left();
        assert!(remaining.is_empty(), "a deleted replica came back:\n{}", remaining.join("\n"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.terminate().success(), "the server did not stop cleanly");
}
