//! The context API over HTTP: documents, search, assembly, embeddings, bad input.

use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn with_model() -> TestApp {
    let dir = model_dir();
    assert!(dir.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", dir.display());
    spawn_with(|c| c.model_dir = dir).await
}

async fn post_doc(app: &TestApp, key: &str, path: &str, content: &str, metadata: Value) -> Value {
    let r = send(app.api(Method::POST, "/documents", key).json(&json!({"path": path, "content": content, "metadata": metadata}))).await;
    assert!(r.status().is_success(), "write {path}: {}", r.status());
    json_of(r).await
}

async fn search(app: &TestApp, key: &str, body: Value) -> Value {
    let r = send(app.api(Method::POST, "/search", key).json(&body)).await;
    assert_eq!(r.status(), 200, "search {body}");
    json_of(r).await
}

fn paths(v: &Value) -> Vec<String> {
    v["results"].as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn upsert_replaces_and_deleted_text_never_returns() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "free").await;
    let v = post_doc(&app, &t.key, "notes/a.md", "# Alpha\nThe zebra crossing is painted white.", json!({})).await;
    assert_eq!(v["path"], "notes/a.md");
    assert!(v["chunks"].as_u64().unwrap() >= 1 && v["tokens"].as_u64().unwrap() > 0, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    // Same path: replaced atomically, same id.
    let r =
        send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "notes/a.md", "content": "# Alpha\nNow about giraffes only."}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["id"], id.as_str());
    let kw = |q: &str| json!({"query": q, "mode": "keyword"});
    assert!(paths(&search(&app, &t.key, kw("zebra")).await).is_empty(), "replaced text must not come back");
    assert_eq!(paths(&search(&app, &t.key, kw("giraffes")).await), vec!["notes/a.md"]);
    let doc = json_of(send(app.api(Method::GET, &format!("/documents/{id}"), &t.key)).await).await;
    assert!(doc["content"].as_str().unwrap().contains("giraffes"));
    // Delete by id, then by prefix.
    post_doc(&app, &t.key, "notes/b.md", "giraffes again", json!({})).await;
    post_doc(&app, &t.key, "other/c.md", "giraffes elsewhere", json!({})).await;
    assert_eq!(send(app.api(Method::DELETE, &format!("/documents/{id}"), &t.key)).await.status(), 204);
    expect_error(send(app.api(Method::GET, &format!("/documents/{id}"), &t.key)).await, 404, "document_not_found").await;
    let r = json_of(send(app.api(Method::DELETE, "/documents?path_prefix=notes/", &t.key)).await).await;
    assert_eq!(r["deleted"], 1);
    assert_eq!(paths(&search(&app, &t.key, kw("giraffes")).await), vec!["other/c.md"]);
    // Tenants never see each other's documents.
    let other = app.create_tenant("globex", "free").await;
    assert!(paths(&search(&app, &other.key, kw("giraffes")).await).is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bulk_answers_per_item_and_lists_with_cursor() {
    let app = spawn_with(|c| c.docs.max_bulk_documents = 50).await;
    let t = app.create_tenant("acme", "free").await;
    let docs = json!({"documents": [
        {"path": "a/1.md", "content": "first document"},
        {"path": "a/2.md"},
        {"path": "a/3.md", "content": "nested metadata", "metadata": {"x": {"y": 1}}},
        "not an object",
        {"path": "", "content": "empty path"},
        {"path": "b/4.md", "content": "fourth document", "metadata": {"lang": "en", "rank": 2}}
    ]});
    let v = json_of(send(app.api(Method::POST, "/documents/bulk", &t.key).json(&docs)).await).await;
    let statuses: Vec<u64> = v["results"].as_array().unwrap().iter().map(|r| r["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![201, 400, 400, 400, 400, 201], "{v}");
    assert_eq!(v["succeeded"], 2);
    for r in &v["results"].as_array().unwrap()[1..5] {
        assert!(r["error"]["code"].is_string() && r["error"]["message"].is_string(), "{r}");
    }
    let too_many = json!({"documents": (0..51).map(|i| json!({"path": format!("x/{i}"), "content": "x"})).collect::<Vec<_>>()});
    expect_error(send(app.api(Method::POST, "/documents/bulk", &t.key).json(&too_many)).await, 400, "validation_failed").await;

    for i in 0..7 {
        post_doc(&app, &t.key, &format!("c/{i}.md"), "paged", json!({})).await;
    }
    let mut seen = Vec::new();
    let mut url = "/documents?limit=3&path_prefix=c/".to_string();
    loop {
        let v = json_of(send(app.api(Method::GET, &url, &t.key)).await).await;
        seen.extend(v["documents"].as_array().unwrap().iter().map(|d| d["path"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => url = format!("/documents?limit=3&path_prefix=c/&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("c/{i}.md")).collect::<Vec<_>>());
    // Metadata and prefix filters.
    let v = search(&app, &t.key, json!({"query": "document", "mode": "keyword", "filter": {"metadata": {"lang": "en"}}})).await;
    assert_eq!(paths(&v), vec!["b/4.md"]);
    let v = search(&app, &t.key, json!({"query": "document", "mode": "keyword", "filter": {"path_prefix": "a/"}})).await;
    assert_eq!(paths(&v), vec!["a/1.md"]);
    app.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_clearly() {
    let app = spawn_with(|c| c.docs.max_document_bytes = 1024 * 1024).await;
    let t = app.create_tenant("acme", "free").await;
    post_doc(&app, &t.key, "a.md", "something to find", json!({})).await;
    let s = |b: Value| app.api(Method::POST, "/search", &t.key).json(&b);
    expect_error(send(s(json!({"query": ""}))).await, 400, "validation_failed").await;
    expect_error(send(s(json!({"query": "x", "limit": 101}))).await, 400, "validation_failed").await;
    expect_error(send(s(json!({"query": "x", "mode": "fuzzy"}))).await, 400, "invalid_json").await;
    let a = |b: Value| app.api(Method::POST, "/context/assemble", &t.key).json(&b);
    expect_error(send(a(json!({"query": "x", "max_tokens": 0}))).await, 400, "validation_failed").await;
    expect_error(send(a(json!({"query": "x", "max_tokens": 100_000_000}))).await, 400, "validation_failed").await;
    expect_error(send(a(json!({"query": "", "max_tokens": 10}))).await, 400, "validation_failed").await;
    // A 10 MB document over the 1 MB limit.
    let big = "a".repeat(10 * 1024 * 1024);
    let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "big.txt", "content": big}))).await;
    expect_error(r, 413, "payload_too_large").await;
    // Invalid UTF-8 in the body, and binary content.
    let mut raw = br#"{"path": "bin", "content": "abc"#.to_vec();
    raw.extend([0xff, 0xfe, b'"', b'}']);
    let r = send(app.api(Method::POST, "/documents", &t.key).header("content-type", "application/json").body(raw)).await;
    expect_error(r, 400, "invalid_json").await;
    let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "bin", "content": "PK\u{3}\u{4}\u{0}\u{0}\u{0}binary"}))).await;
    expect_error(r, 400, "validation_failed").await;
    let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "m", "content": "x", "metadata": [1, 2]}))).await;
    expect_error(r, 400, "validation_failed").await;
    // Nothing of it was stored.
    let v = json_of(send(app.api(Method::GET, "/documents", &t.key)).await).await;
    assert_eq!(v["documents"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn without_a_model_keyword_works_and_semantic_is_503() {
    let app = spawn_app().await; // the test config points at a missing model dir
    let t = app.create_tenant("acme", "free").await;
    post_doc(&app, &t.key, "a.md", "keyword search keeps working", json!({})).await;
    assert_eq!(paths(&search(&app, &t.key, json!({"query": "keyword", "mode": "keyword"})).await), vec!["a.md"]);
    for mode in ["semantic", "hybrid"] {
        let r = send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "keyword", "mode": mode}))).await;
        assert!(r.headers().get("retry-after").is_some());
        expect_error(r, 503, "embeddings_unavailable").await;
    }
    let r = send(app.api(Method::POST, "/embeddings", &t.key).json(&json!({"input": "hello"}))).await;
    expect_error(r, 503, "embeddings_unavailable").await;
    // Assembly falls back to keyword matches.
    let v = json_of(send(app.api(Method::POST, "/context/assemble", &t.key).json(&json!({"query": "keyword search", "max_tokens": 50}))).await).await;
    assert!(v["context"].as_str().unwrap().contains("keyword search keeps working"), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn index_is_rebuilt_when_its_directory_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (key, id) = {
        let server = ServerProcess::start(dir.path(), &[]).await;
        let client = reqwest::Client::new();
        let v = server.create_tenant("acme", "free").await;
        let key = v["api_key"].as_str().unwrap().to_string();
        for i in 0..5 {
            let r = client
                .post(format!("{}/api/v1/documents", server.addr))
                .bearer_auth(&key)
                .json(&json!({"path": format!("d{i}.md"), "content": format!("rebuildable text number {i}")}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
        let mut server = server;
        assert!(server.terminate().success());
        (key, v["tenant"]["id"].as_str().unwrap().to_string())
    };
    let index = dir.path().join(&id).join("index");
    assert!(index.exists(), "the index lives in <tenant dir>/index");
    std::fs::remove_dir_all(&index).unwrap();
    let server = ServerProcess::start(dir.path(), &[]).await;
    let v: Value = reqwest::Client::new()
        .post(format!("{}/api/v1/search", server.addr))
        .bearer_auth(&key)
        .json(&json!({"query": "rebuildable", "mode": "keyword", "limit": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 5, "{v}");
    assert!(index.exists());
}

#[tokio::test]
async fn assembled_context_never_exceeds_the_budget() {
    let app = with_model().await;
    let t = app.create_tenant("acme", "free").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let words = ["warren", "tenant", "sqlite", "index", "search", "budget", "token", "context", "rust", "server", "chunk", "vector"];
    let docs: Vec<Value> = (0..40)
        .map(|i| {
            let body: Vec<&str> = (0..rng.random_range(20..200)).map(|_| words[rng.random_range(0..words.len())]).collect();
            json!({"path": format!("doc/{i}.md"), "content": format!("# Doc {i}\n\n{}", body.join(" "))})
        })
        .collect();
    let v = json_of(send(app.api(Method::POST, "/documents/bulk", &t.key).json(&json!({"documents": docs}))).await).await;
    assert_eq!(v["succeeded"], 40, "{v}");
    let bpe = tiktoken_rs::o200k_base().unwrap();
    for _ in 0..30 {
        let budget = rng.random_range(1..3000);
        let v = json_of(
            send(app.api(Method::POST, "/context/assemble", &t.key).json(&json!({"query": "tenant search budget", "max_tokens": budget}))).await,
        )
        .await;
        let ctx = v["context"].as_str().unwrap();
        let counted = bpe.encode_with_special_tokens(ctx).len();
        assert!(counted <= budget, "budget {budget}: context has {counted} tokens");
        assert_eq!(v["total_tokens"].as_u64().unwrap() as usize, counted, "total_tokens is exact");
        assert_eq!(v["token_counter"], "o200k_base");
        if budget > 200 {
            assert!(!v["documents"].as_array().unwrap().is_empty(), "budget {budget} selected nothing");
            assert!(ctx.contains("doc/"), "chunks are labelled with their path");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn hybrid_search_and_openai_embeddings_with_the_model() {
    let app = with_model().await;
    let t = app.create_tenant("acme", "free").await;
    post_doc(&app, &t.key, "pets/cats.md", "Cats are small domesticated felines that purr and chase mice.", json!({})).await;
    post_doc(&app, &t.key, "db/sqlite.md", "SQLite is an embedded relational database engine stored in one file.", json!({})).await;
    post_doc(&app, &t.key, "cook/bread.md", "Knead the dough, let it rise, then bake the loaf at high heat.", json!({})).await;
    // No keyword overlap: only the semantic side can find it.
    let v = search(&app, &t.key, json!({"query": "kitten", "mode": "semantic", "limit": 3})).await;
    assert_eq!(paths(&v)[0], "pets/cats.md", "{v}");
    let v = search(&app, &t.key, json!({"query": "a database in a single file", "mode": "hybrid"})).await;
    assert_eq!(paths(&v)[0], "db/sqlite.md", "{v}");
    let v = search(&app, &t.key, json!({"query": "baking bread", "hybrid": {"method": "rrf", "k": 60}})).await;
    assert_eq!(paths(&v)[0], "cook/bread.md", "{v}");
    assert!(v["query_time_ms"].as_f64().is_some());

    let r = send(app.api(Method::POST, "/embeddings", &t.key).json(&json!({"input": ["hello world", "bonjour"], "model": "all-MiniLM-L6-v2"}))).await;
    let v = json_of(r).await;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let e: Vec<f64> = serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(e.len(), 384);
    let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 4);
    // Usage recorded it all.
    let u = json_of(send(app.api(Method::GET, "/usage", &t.key)).await).await;
    assert_eq!(u["usage"]["search"]["calls"], 3, "{u}");
    assert_eq!(u["usage"]["document_write"]["calls"], 3, "{u}");
    assert_eq!(u["usage"]["queries"], 3, "{u}");
    app.stop().await;
}
