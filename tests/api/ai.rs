//! AI-tool integration (issue 7): OpenAPI (validator + fuzzer), MCP (official Python client and
//! raw HTTP), and `warren import` / `warren export` (the real binary).

use std::path::Path;
use std::process::Command;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn with_model(tweak: impl FnOnce(&mut warren::config::Config)) -> TestApp {
    let dir = model_dir();
    assert!(dir.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", dir.display());
    spawn_with(|c| {
        c.model_dir = dir;
        tweak(c)
    })
    .await
}

// ---- OpenAPI ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_is_valid_and_survives_the_fuzzer() {
    let app = with_model(|_| {}).await;
    let t = app.create_tenant("fuzzed", "enterprise").await;
    for (p, c) in [("guides/install.md", "# Install\nRun scripts/serve.sh."), ("notes/a.txt", "warrens and burrows")] {
        let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": p, "content": c}))).await;
        assert!(r.status().is_success());
    }
    // The docs page is served from embedded assets and points at the spec.
    let page = send(app.req(Method::GET, "/docs/")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("cdn") && !html.contains("unpkg"), "the docs page must not load assets from elsewhere");
    let init = send(app.req(Method::GET, "/docs/swagger-initializer.js")).await;
    assert_eq!(init.status(), 200);
    assert!(init.text().await.unwrap().contains("/openapi.json"));
    let spec = json_of(send(app.req(Method::GET, "/openapi.json")).await).await;
    assert!(spec["paths"]["/api/v1/search"]["post"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());

    let out = run_python("openapi_check.py", vec![app.addr.clone(), t.key.clone(), ADMIN.into(), "150".into()]).await;
    assert!(out.contains("openapi: valid 3.1"), "{out}");
    app.stop().await;
}

/// A client generated from the served document by openapi-python-client, used unmodified: every
/// answer parses into its generated classes (tenant creation, a typed error, documents, search,
/// assemble, usage).
#[tokio::test]
async fn a_generated_openapi_client_works_unmodified() {
    let app = spawn_app().await;
    let out = run_python("generated_client.py", vec![app.addr.clone(), ADMIN.into()]).await;
    let last: Value = serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|_| panic!("{out}"));
    assert_eq!((last["tenant"].as_str(), last["documents"].as_u64()), (Some("gen-client"), Some(1)), "{out}");
    app.stop().await;
}

// ---- MCP ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mcp_with_the_official_python_client() {
    let app = with_model(|_| {}).await;
    let a = app.create_tenant("mcp-a", "starter").await;
    let b = app.create_tenant("mcp-b", "starter").await;
    let free = app.create_tenant("mcp-free", "free").await;
    let out = run_python("mcp_check.py", vec![app.addr.clone(), a.key, b.key, free.key]).await;
    assert!(out.contains("\"isolated\": true") && out.contains("\"free_refused\": true"), "{out}");
    app.stop().await;
}

/// One JSON-RPC message over Streamable HTTP; returns status, headers and the first JSON message
/// of the answer (plain JSON, or the first `data:` of an SSE stream).
pub(crate) async fn mcp_post(app: &TestApp, key: &str, session: Option<&str>, body: Value, extra: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let mut rb = app
        .req(Method::POST, "/mcp")
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(s) = session {
        rb = rb.header("mcp-session-id", s);
    }
    for (k, v) in extra {
        rb = rb.header(*k, *v);
    }
    let r = send(rb).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).ok().or_else(|| {
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).filter(|l| !l.is_empty()).find_map(|l| serde_json::from_str(l).ok())
    });
    (status, headers, v.unwrap_or(Value::Null))
}

pub(crate) fn init_msg() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "warren-tests", "version": "1"}}})
}

pub(crate) async fn open_session(app: &TestApp, key: &str) -> String {
    let (status, headers, v) = mcp_post(app, key, None, init_msg(), &[]).await;
    assert_eq!(status, 200, "{v}");
    let sid = headers.get("mcp-session-id").expect("session id").to_str().unwrap().to_string();
    let (s, _, _) = mcp_post(app, key, Some(&sid), json!({"jsonrpc": "2.0", "method": "notifications/initialized"}), &[]).await;
    assert_eq!(s, 202);
    sid
}

async fn usage_of(state: &warren::state::AppState, tenant_id: &str) -> (u64, u64) {
    let m = state.meter.month(tenant_id).await.expect("usage");
    (m.count(warren::metering::Kind::ApiCall), m.count(warren::metering::Kind::Search))
}

#[tokio::test]
async fn mcp_door_auth_origin_sessions_and_metering() {
    let (app, state) = spawn_state(None, |c| {
        c.mcp.max_sessions_per_tenant = 2;
        c.mcp.allowed_origins = vec!["https://app.example.test".into()];
    })
    .await;
    let a = app.create_tenant("door-a", "starter").await;
    let b = app.create_tenant("door-b", "starter").await;

    // No credentials: 401 with the error body, like REST.
    let r = send(app.req(Method::POST, "/mcp").json(&init_msg())).await;
    expect_error(r, 401, "unauthorized").await;
    // A foreign browser Origin is refused (DNS rebinding); the same host and listed origins pass.
    let (s, _, v) = mcp_post(&app, &a.key, None, init_msg(), &[("origin", "http://evil.test")]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("origin_not_allowed")), "{v}");
    let (s, _, _) = mcp_post(&app, &a.key, None, init_msg(), &[("origin", "https://app.example.test")]).await;
    assert_eq!(s, 200);
    // An unknown host name (a rebinding attacker's domain) is refused even without Origin.
    let (s, _, v) = mcp_post(&app, &a.key, None, init_msg(), &[("host", "attacker.example")]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("origin_not_allowed")), "{v}");

    // A session is bound to its tenant: B's key on A's session is refused.
    let sid = open_session(&app, &a.key).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (s, _, v) = mcp_post(&app, &b.key, Some(&sid), list.clone(), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("tenant_mismatch")), "{v}");
    let (s, _, v) = mcp_post(&app, &a.key, Some(&sid), list, &[]).await;
    assert_eq!(s, 200);
    let names: Vec<&str> = v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"search") && names.contains(&"recommend"), "{names:?}");
    // Sessions are bounded per tenant (two are open now).
    let (s, _, v) = mcp_post(&app, &a.key, None, init_msg(), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("overloaded")), "{v}");
    // An unknown session id is 404 session_not_found.
    let (s, _, v) = mcp_post(&app, &a.key, Some("nope"), json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("session_not_found")), "{v}");

    // A tool call is charged and metered like the REST call: one api_call and one search.
    let (calls0, searches0) = usage_of(&state, &a.id).await;
    let call = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "search", "arguments": {"query": "anything", "mode": "keyword"}}});
    let (s, _, v) = mcp_post(&app, &a.key, Some(&sid), call, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["isError"], false, "{v}");
    let (calls1, searches1) = usage_of(&state, &a.id).await;
    assert_eq!((calls1 - calls0, searches1 - searches0), (1, 1));
    // Writes need the write scope, exactly as over REST.
    let ro = json_of(send(app.admin(Method::POST, "/tenants/door-a/keys").json(&json!({"name": "ro", "scopes": ["read"]}))).await).await;
    let ro_key = ro["api_key"].as_str().unwrap();
    let ro_sid = {
        let (status, headers, _) = mcp_post(&app, ro_key, None, init_msg(), &[]).await;
        assert_eq!(status, 503, "the per-tenant bound counts sessions of every key");
        let _ = headers;
        // Close A's first session to make room.
        let r = send(app.req(Method::DELETE, "/mcp").bearer_auth(&a.key).header("mcp-session-id", &sid)).await;
        assert!(r.status().is_success(), "{}", r.status());
        open_session(&app, ro_key).await
    };
    let add = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "add_document", "arguments": {"path": "x.md", "content": "x"}}});
    let (s, _, v) = mcp_post(&app, ro_key, Some(&ro_sid), add, &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("insufficient_scope"), "{v}");
    app.stop().await;
}

/// The official `openai` client, default arguments (base64 vectors), with a read-only key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_openai_client_embeds_with_its_defaults() {
    let app = with_model(|_| {}).await;
    app.create_tenant("oai", "starter").await;
    let r = send(app.admin(Method::POST, "/tenants/oai/keys").json(&json!({"name": "agent", "scopes": ["read"]}))).await;
    assert_eq!(r.status(), 201);
    let key = json_of(r).await["api_key"].as_str().unwrap().to_string();
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings/reference.jsonl");
    let out = run_python("openai_check.py", vec![format!("{}/api/v1", app.addr), key, reference.display().to_string()]).await;
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert!(v["worst_cosine"].as_f64().unwrap() >= 0.9999, "{v}");
    app.stop().await;
}

/// Every line of the quickstart a new tenant gets runs as pasted (curl, Python, Node, `warren import` and
/// `export`), against a server on a port other than the default, with no DNS for subdomains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_quickstart_runs_as_pasted_on_a_non_default_port() {
    let app = with_model(|_| {}).await;
    assert_ne!(app.port, 8080);
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "paste", "name": "P", "email": "p@p.test", "tier": "starter"}))).await;
    let qs = json_of(r).await["quickstart"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("docs")).unwrap();
    std::fs::write(work.path().join("docs/guide.md"), "# Guide\nwarren imports whole folders.").unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_warren")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let dir = work.path().to_path_buf();
    let script = qs.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash").args(["-euo", "pipefail", "-c", &script]).current_dir(&dir).env("PATH", path).output().expect("bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the quickstart failed:\n{qs}\n--- stdout\n{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"slug\":\"paste\""), "{stdout}");
    assert!(stdout.matches("notes/hello.md").count() >= 3, "curl, Python and Node all found the document: {stdout}");
    let exported = std::fs::read_to_string(work.path().join("documents.jsonl")).unwrap();
    assert!(exported.contains("notes/hello.md") && exported.contains("guide.md"), "{exported}");
    app.stop().await;
}

/// The cl100k_base vocabulary the tiktoken-rs crate ships (brought in by cargo with the build).
fn cl100k_vocabulary() -> std::path::PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiktoken-rs")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("tiktoken-rs is a dependency");
    let file = Path::new(manifest).parent().unwrap().join("assets/cl100k_base.tiktoken");
    assert!(file.exists(), "{} is missing", file.display());
    file
}

/// LangChain's OpenAIEmbeddings sends token-id arrays (cl100k_base); warren decodes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn langchain_openai_embeddings_work_with_token_arrays() {
    let app = with_model(|_| {}).await;
    let t = app.create_tenant("lang-chain", "starter").await;
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings/reference.jsonl");
    let args = vec![format!("{}/api/v1", app.addr), t.key, reference.display().to_string(), cl100k_vocabulary().display().to_string()];
    let out = run_python("langchain_check.py", args).await;
    let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert!(v["worst_cosine"].as_f64().unwrap() >= 0.9999 && v["token_batches"].as_u64().unwrap() >= 1, "{v}");
    app.stop().await;
}

#[tokio::test]
async fn mcp_hides_recommend_without_the_feature_and_expires_sessions() {
    let (app, state) = spawn_state(None, |c| c.mcp.session_max_secs = 3).await;
    // The admin quickstart carries the MCP snippet, filled in with the tenant's URL.
    let created = json_of(
        send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "qs-snip", "name": "Q", "email": "q@q.test", "tier": "starter"}))).await,
    )
    .await;
    let qs = created["quickstart"].as_str().unwrap();
    // Key-only URLs on the server's own address: they work without DNS for the subdomains.
    let url = format!("http://127.0.0.1:{}", app.port);
    assert!(qs.contains(&format!("export WARREN_URL={url}\n")), "{qs}");
    assert!(qs.contains("claude mcp add --transport http warren $WARREN_URL/mcp"), "{qs}");
    assert!(qs.contains(&format!("\"url\": \"{url}/mcp\"")) && qs.contains("warren import qs-snip ./docs"), "{qs}");
    assert!(qs.contains(&format!("http://qs-snip.localhost:{}", app.port)), "the subdomain form is shown as the alternative: {qs}");
    let t = app.create_tenant("no-recs", "starter").await;
    send(app.admin(Method::PUT, "/tenants/no-recs/overrides").json(&json!({"features": {"recommendations": false}}))).await;
    let sid = open_session(&app, &t.key).await;
    let (_, _, v) = mcp_post(&app, &t.key, Some(&sid), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}), &[]).await;
    let names: Vec<&str> = v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"recommend") && names.contains(&"assemble_context"), "{names:?}");
    // A gated tool that is not listed still answers, with warren's error code.
    let call = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "recommend", "arguments": {"customer_id": "c1"}}});
    let (_, _, v) = mcp_post(&app, &t.key, Some(&sid), call, &[]).await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("feature_not_in_plan"), "{v}");
    // Terminating a session answers 200, as the Streamable HTTP transport expects; it is gone after.
    let other = open_session(&app, &t.key).await;
    let r = send(app.req(Method::DELETE, "/mcp").bearer_auth(&t.key).header("mcp-session-id", &other)).await;
    assert_eq!(r.status(), 200);
    let (s, _, v) = mcp_post(&app, &t.key, Some(&other), json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"}), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("session_not_found")), "{v}");
    // The session's lifetime is judged by the server's clock: move it past the limit, no sleeping.
    state.plans.clock.advance(chrono::Duration::seconds(4));
    let (s, _, v) = mcp_post(&app, &t.key, Some(&sid), json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}), &[]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("session_not_found")), "{v}");
    app.stop().await;
}

// ---- import / export ----

fn warren(data_dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_DATA_DIR", data_dir)
        .env("WARREN_MODEL_DIR", data_dir.join("no-model"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warren")
}

fn ok_json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "warren failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

/// 1,000 files: 600 Markdown, 398 Rust, one binary, one .gitignored.
fn make_tree(root: &Path) {
    for i in 0..600 {
        let dir = root.join(format!("docs/section-{}", i % 10));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("page-{i}.md")), format!("# Page {i}\n\nBurrow number {i} has {} entrances.\n", i % 7)).unwrap();
    }
    for i in 0..398 {
        let dir = root.join(format!("src/mod{}", i % 5));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.rs")), format!("/// Digs tunnel {i}.\npub fn dig_{i}() -> u32 {{ {i} }}\n")).unwrap();
    }
    std::fs::write(root.join("docs/logo.png"), [0x89, b'P', b'N', b'G', 0, 0, 0, 13, 1, 2, 3]).unwrap();
    std::fs::write(root.join("docs/secret.md"), "# not for import\n").unwrap();
    std::fs::write(root.join(".gitignore"), "secret.md\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_a_folder_then_resume_then_export_round_trips() {
    let app = spawn_app().await;
    let t = app.create_tenant("importer", "enterprise").await;
    let tree = tempfile::tempdir().unwrap();
    make_tree(tree.path());
    let data = app.dir.path().to_path_buf();
    let (src, addr, key) = (tree.path().to_str().unwrap().to_string(), app.addr.clone(), t.key.clone());

    let run = |args: Vec<String>| {
        let data = data.clone();
        tokio::task::spawn_blocking(move || warren(&data, &args.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    // Offline mode refuses while a server holds the data dir, and says how to go through it.
    let refused = run(vec!["import".into(), "importer".into(), src.clone()]).await.unwrap();
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("--server"));
    let first = ok_json(
        &run(vec!["import".into(), "importer".into(), src.clone(), "--server".into(), addr.clone(), "--key".into(), key.clone()]).await.unwrap(),
    );
    assert_eq!(first["imported"], 998, "{first}");
    assert_eq!(first["skipped_binary"], json!(["docs/logo.png"]), "{first}");
    assert_eq!(first["failed"], json!([]));
    let listed = json_of(send(app.api(Method::GET, "/documents?path_prefix=docs/secret", &t.key)).await).await;
    assert_eq!(listed["documents"], json!([]), "the .gitignored file was imported");
    let one = json_of(send(app.api(Method::GET, "/documents?path_prefix=src/mod3/f3.rs", &t.key)).await).await;
    assert_eq!(one["documents"][0]["path"], "src/mod3/f3.rs");

    // Resumable: a second run finds every file unchanged.
    let second = ok_json(
        &run(vec!["import".into(), "importer".into(), src.clone(), "--server".into(), addr.clone(), "--key".into(), key.clone()]).await.unwrap(),
    );
    assert_eq!((second["imported"].as_u64(), second["unchanged"].as_u64()), (Some(0), Some(998)), "{second}");
    // --glob narrows the walk.
    std::fs::write(tree.path().join("docs/section-0/page-0.md"), "# Page 0, edited\n").unwrap();
    let third = ok_json(
        &run(vec![
            "import".into(),
            "importer".into(),
            src.clone(),
            "--glob".into(),
            "**/*.md".into(),
            "--server".into(),
            addr.clone(),
            "--key".into(),
            key.clone(),
        ])
        .await
        .unwrap(),
    );
    assert_eq!((third["imported"].as_u64(), third["unchanged"].as_u64()), (Some(1), Some(599)), "{third}");

    // Export → import into another tenant → export: the same bytes.
    let out = run(vec!["export".into(), "importer".into(), "--server".into(), addr.clone(), "--key".into(), key.clone()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = out.stdout;
    assert_eq!(exported.iter().filter(|b| **b == b'\n').count(), 998);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("export.jsonl");
    std::fs::write(&file, &exported).unwrap();
    let t2 = app.create_tenant("importer-two", "enterprise").await;
    let back = ok_json(
        &run(vec![
            "import".into(),
            "importer-two".into(),
            file.to_str().unwrap().into(),
            "--server".into(),
            addr.clone(),
            "--key".into(),
            t2.key.clone(),
        ])
        .await
        .unwrap(),
    );
    assert_eq!(back["imported"], 998, "{back}");
    let again = run(vec!["export".into(), "importer-two".into(), "--server".into(), addr.clone(), "--key".into(), t2.key.clone()]).await.unwrap();
    assert!(exported == again.stdout, "export → import → export changed the data");
    app.stop().await;

    // Offline (no server on the data dir): import the JSONL straight into it, export from it.
    let dir = tempfile::tempdir().unwrap();
    let ctl = warren(dir.path(), &["tenant", "create", "offline", "--name", "Offline", "--email", "o@offline.test", "--tier", "enterprise"]);
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    let off = ok_json(&warren(dir.path(), &["import", "offline", file.to_str().unwrap()]));
    assert_eq!(off["imported"], 998, "{off}");
    let offline_export = warren(dir.path(), &["export", "offline"]);
    assert!(offline_export.status.success());
    assert!(offline_export.stdout == exported, "offline export differs");
}

#[test]
fn metadata_and_titles_round_trip_through_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = warren(dir.path(), &["tenant", "create", "meta", "--name", "Meta", "--email", "m@meta.test", "--tier", "starter"]);
    assert!(ctl.status.success(), "{}", String::from_utf8_lossy(&ctl.stderr));
    let lines = [
        json!({"path": "a.md", "content": "alpha\r\nwith CRLF  \n", "title": "Alpha", "metadata": {"lang": "en", "n": 3, "ok": true}}),
        json!({"path": "b/ü.txt", "content": "ünïcödé ✓", "metadata": {}}),
    ];
    let file = dir.path().join("in.jsonl");
    std::fs::write(&file, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    let r = ok_json(&warren(dir.path(), &["import", "meta", file.to_str().unwrap()]));
    assert_eq!(r["imported"], 2, "{r}");
    let out = warren(dir.path(), &["export", "meta"]);
    assert!(out.status.success());
    let got: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got, lines.to_vec());
}

#[tokio::test]
async fn mcp_accepts_jwts_and_open_streams_do_not_hold_shutdown() {
    let app = spawn_with(|c| c.jwt.hs256_secret = Some("a-test-secret-of-enough-length-0123".into())).await;
    app.create_tenant("jwt-mcp", "starter").await;
    let exp = chrono::Utc::now().timestamp() + 600;
    let claims = json!({"tenant": "jwt-mcp", "exp": exp, "scopes": ["read", "write"]});
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"a-test-secret-of-enough-length-0123"),
    )
    .unwrap();
    let sid = open_session(&app, &jwt).await;
    // A client's standalone SSE stream stays open until the server shuts down.
    let stream = send(
        app.req(Method::GET, "/mcp")
            .bearer_auth(&jwt)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18"),
    )
    .await;
    assert_eq!(stream.status(), 200);
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "shutdown waited {:?} for an MCP stream", started.elapsed());
    drop(stream);
}

#[tokio::test]
async fn mcp_tool_calls_take_cells_from_the_rest_limiter() {
    let app = spawn_app().await;
    let t = app.create_tenant("mcp-rl", "starter").await;
    let r = send(app.admin(Method::PUT, "/tenants/mcp-rl/overrides").json(&json!({"rate_per_sec": 1, "burst": 3}))).await;
    assert!(r.status().is_success());
    let sid = open_session(&app, &t.key).await;
    // Initialising took nothing; two searches take 2 cells, the REST call the last one.
    let started = std::time::Instant::now();
    for i in 0..2 {
        let call = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
            "params": {"name": "search", "arguments": {"query": "x", "mode": "keyword"}}});
        let (_, _, v) = mcp_post(&app, &t.key, Some(&sid), call, &[]).await;
        assert_eq!(v["result"]["isError"], false, "{v}");
    }
    // The REST door sees the cells MCP took (one refills per second).
    let r = send(app.api(Method::GET, "/tenant", &t.key)).await;
    let remaining: u32 = r.headers()["ratelimit-remaining"].to_str().unwrap().parse().unwrap();
    if started.elapsed() < std::time::Duration::from_millis(900) {
        assert_eq!(remaining, 0, "MCP calls and REST calls share the bucket");
    }
    // Rapid calls soon hit the limit, answered as a tool error with the REST body.
    let mut v = Value::Null;
    for i in 0..10 {
        let call = json!({"jsonrpc": "2.0", "id": 20 + i, "method": "tools/call",
            "params": {"name": "search", "arguments": {"query": "x", "mode": "keyword"}}});
        v = mcp_post(&app, &t.key, Some(&sid), call, &[]).await.2;
        if v["result"]["isError"] == true {
            break;
        }
    }
    assert_eq!(v["result"]["isError"], true, "{v}");
    let body: Value = serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    app.stop().await;
}

#[tokio::test]
async fn mcp_recommend_serves_the_trained_model_like_rest() {
    let (app, state) = spawn_state(None, |c| {
        c.recs.debounce_ms = 100;
        c.recs.max_delay_secs = 2;
    })
    .await;
    let t = app.create_tenant("mcp-recs", "starter").await;
    // Two product families; customers buy within one family.
    let mut products = Vec::new();
    for k in 1..=4 {
        products.push(json!({"id": format!("a{k}"), "name": format!("Kitchen knife model {k}"), "categories": ["Kitchen"]}));
        products.push(json!({"id": format!("b{k}"), "name": format!("Garden hose type {k}"), "categories": ["Garden"]}));
    }
    let r = send(app.api(Method::POST, "/products", &t.key).json(&json!({"products": products}))).await;
    assert_eq!(r.status(), 200);
    let orders = two_family_orders();
    let v = json_of(send(app.api(Method::POST, "/orders", &t.key).json(&json!({"orders": orders}))).await).await;
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(send(app.api(Method::POST, "/recommendations/train", &t.key)).await.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = json_of(send(app.api(Method::GET, "/recommendations/status", &t.key)).await).await;
        if s["model_version"].as_u64().unwrap_or(0) >= 1 && s["training"] == false && s["pending_changes"] == false {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no model in time: {s}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let sid = open_session(&app, &t.key).await;
    let recs_of = |m: &warren::metering::MonthUsage| m.count(warren::metering::Kind::Recommendation);
    let call = |id: u64, args: Value| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "recommend", "arguments": args}});
    // customer_id: the personalised list, exactly what REST answers, metered as one recommendation and one api_call.
    let before = state.meter.month(&t.id).await.unwrap();
    let (s, _, v) = mcp_post(&app, &t.key, Some(&sid), call(2, json!({"customer_id": "c0", "limit": 3})), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["result"]["isError"], false, "{v}");
    let after = state.meter.month(&t.id).await.unwrap();
    assert_eq!(
        (recs_of(&after) - recs_of(&before), after.count(warren::metering::Kind::ApiCall) - before.count(warren::metering::Kind::ApiCall)),
        (1, 1)
    );
    let got = &v["result"]["structuredContent"];
    let results = got["results"].as_array().unwrap_or_else(|| panic!("no results: {v}"));
    assert!(!results.is_empty() && results.len() <= 3, "{got}");
    for r in results {
        assert!(r["product_id"].is_string() && r["score"].is_number() && r["reason"].is_string(), "{got}");
    }
    let rest = json_of(send(app.api(Method::GET, "/recommendations?customer_id=c0&limit=3", &t.key)).await).await;
    assert_eq!(got, &rest);
    // product_id: related products, as GET /products/{id}/related.
    let (_, _, v) = mcp_post(&app, &t.key, Some(&sid), call(3, json!({"product_id": "b1"})), &[]).await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    let rest = json_of(send(app.api(Method::GET, "/products/b1/related", &t.key)).await).await;
    assert!(!rest["results"].as_array().unwrap().is_empty(), "{rest}");
    assert_eq!(v["result"]["structuredContent"], rest);
    // Bad input is a tool error with the REST error body.
    let (_, _, v) = mcp_post(&app, &t.key, Some(&sid), call(4, json!({"customer_id": "c0", "limit": 1000})), &[]).await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(v["result"]["content"][0]["text"].as_str().unwrap().contains("validation_failed"), "{v}");
    app.stop().await;
}

/// Hybrid scores are on a fixed 0–1 scale and come with the parts they were made of: a single hit
/// is not 0, and the same document scores the same whatever else the query finds.
#[tokio::test]
async fn hybrid_scores_are_on_a_fixed_scale_with_their_parts() {
    let app = with_model(|_| {}).await;
    let t = app.create_tenant("scores", "starter").await;
    let add = |path: &'static str, content: &'static str| {
        let r = app.api(Method::POST, "/documents", &t.key).json(&json!({"path": path, "content": content}));
        async move { assert!(send(r).await.status().is_success()) }
    };
    add("restore.md", "To restore a tenant from its replica, run warren restore with the tenant's slug.").await;
    let search = |query: &'static str| {
        let r = app.api(Method::POST, "/search", &t.key).json(&json!({"query": query, "mode": "hybrid", "limit": 5}));
        async move { json_of(send(r).await).await }
    };
    let v = search("restore a tenant").await;
    let only = &v["results"][0];
    let score = only["score"].as_f64().unwrap();
    let (kw, sem) = (only["keyword_score"].as_f64().expect("keyword part"), only["semantic_score"].as_f64().expect("semantic part"));
    assert!(score > 0.3 && score <= 1.0, "a single good hit scores well on the 0–1 scale: {v}");
    // score = 0.5 · cosine + 0.5 · bm25 / (bm25 + 20)
    let expected = 0.5 * sem.clamp(0.0, 1.0) + 0.5 * kw / (kw + 20.0);
    assert!((score - expected).abs() < 1e-4, "{score} vs {expected}: {v}");
    // What else a query finds does not move a result's score (a relative normalisation would).
    add("garden.md", "Water tomatoes in the morning; a tenant of the allotment may restore the hedge.").await;
    let v2 = search("restore a tenant").await;
    assert_eq!(v2["results"].as_array().unwrap().len(), 2, "{v2}");
    let first = |v: &Value| v["results"].as_array().unwrap().iter().find(|r| r["path"] == "restore.md").expect("found")["score"].as_f64().unwrap();
    let alone =
        json_of(send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "restore a tenant", "mode": "hybrid", "limit": 1}))).await).await;
    assert_eq!(alone["results"].as_array().unwrap().len(), 1);
    assert!((first(&alone) - first(&v2)).abs() < 1e-6, "{alone} vs {v2}");
    for r in v2["results"].as_array().unwrap() {
        assert!((0.0..=1.0).contains(&r["score"].as_f64().unwrap()), "{v2}");
    }
    // Keyword and semantic modes show their own part on the same scale.
    let k = json_of(send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "restore a tenant", "mode": "keyword"}))).await).await;
    let top = &k["results"][0];
    let bm25 = top["keyword_score"].as_f64().unwrap();
    assert!((top["score"].as_f64().unwrap() - bm25 / (bm25 + 20.0)).abs() < 1e-4, "{k}");
    app.stop().await;
}

/// A document with more chunks than the embedding queue holds is embedded in slices (it used to be
/// a 500: "exceeds the queue capacity"); so is a bulk upload.
#[tokio::test]
async fn documents_larger_than_the_embedding_queue_are_embedded_in_slices() {
    let app = with_model(|c| {
        c.embed.queue_capacity = 8;
        c.embed.max_batch = 2;
        // What is tested is the slicing, not the speed: a debug build on a busy machine may take
        // longer than the default 30 s for this document.
        c.request_timeout_secs = 120;
    })
    .await;
    let t = app.create_tenant("big-doc", "starter").await;
    let topics = ["glaciers", "volcanoes", "coral reefs", "deserts", "rainforests", "tundra", "wetlands", "savannas"];
    let para = |i: usize| {
        let topic = topics[i % topics.len()];
        format!(
            "Section {i} is about {topic}. {}\n\n",
            format!("Field notes on {topic} number {i} describe the landscape, its climate and its animals. ").repeat(12)
        )
    };
    let content: String = (0..24).map(para).collect();
    let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "atlas.md", "content": content}))).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let v = json_of(send(app.api(Method::GET, "/documents?limit=10", &t.key)).await).await;
    assert_eq!(v["documents"].as_array().map(Vec::len), Some(1), "{v}");
    let found =
        json_of(send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "volcanoes", "mode": "semantic", "limit": 20}))).await).await;
    let n = found["results"].as_array().unwrap().len();
    assert!(n > 8, "every chunk has a vector: {n} found: {found}");
    let bulk: Vec<Value> = (0..6).map(|i| json!({"path": format!("b{i}.md"), "content": para(i).repeat(3)})).collect();
    let r = send(app.api(Method::POST, "/documents/bulk", &t.key).json(&json!({"documents": bulk}))).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    app.stop().await;
}
