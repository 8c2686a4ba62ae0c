//! Platform rules over HTTP: tenant lifecycle, resolution, auth, bad input.

use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = spawn_app().await;
    let r = send(app.req(Method::GET, "/health")).await;
    assert_eq!(r.status(), 200);
    let r = send(app.req(Method::GET, "/ready")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["data_dir_writable"], true);
    let t = app.create_tenant("acme", "free").await;
    assert_eq!(send(app.api(Method::GET, "/tenant", &t.key)).await.status(), 200);
    let text = send(app.req(Method::GET, "/metrics")).await.text().await.unwrap();
    for m in ["warren_http_requests_total", "warren_http_request_duration_seconds", "warren_tenant_handles_open"] {
        assert!(text.contains(m), "metrics lack {m}");
    }
    assert!(text.contains("tier=\"free\""), "requests are labelled by tier");
    app.stop().await;
}

#[tokio::test]
async fn create_tenant_returns_key_and_quickstart() {
    let app = spawn_app().await;
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "acme", "name": "Acme", "email": "a@acme.test", "tier": "pro"}))).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = json_of(r).await;
    let key = v["api_key"].as_str().unwrap();
    assert!(key.starts_with("wk_live_"), "{key}");
    assert_eq!(v["tenant"]["slug"], "acme");
    assert_eq!(v["tenant"]["tier"], "pro");
    let qs = v["quickstart"].as_str().unwrap();
    assert!(qs.contains(key) && qs.contains(&format!("acme.localhost:{}", app.port)), "{qs}");
    // The key is shown once: the admin view has only its prefix.
    let shown = json_of(send(app.admin(Method::GET, "/tenants/acme")).await).await;
    assert!(!shown.to_string().contains(key));
    assert_eq!(shown["keys"][0]["prefix"], &key[..16]);
    // The on-disk directory is named by id.
    let id = v["tenant"]["id"].as_str().unwrap();
    assert!(app.dir.path().join(id).join("tenant.db").exists());
    assert!(!app.dir.path().join("acme").exists());
    app.stop().await;
}

#[tokio::test]
async fn slugs_are_validated() {
    let app = spawn_app().await;
    for (slug, code) in [
        ("ab", "invalid_slug"),
        ("-acme", "invalid_slug"),
        ("Acme", "invalid_slug"),
        ("../etc", "invalid_slug"),
        ("a/b/c", "invalid_slug"),
        ("www", "reserved_slug"),
        ("admin", "reserved_slug"),
    ] {
        let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": slug, "name": "x", "email": "a@b.co"}))).await;
        expect_error(r, 400, code).await;
    }
    app.create_tenant("acme", "free").await;
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "acme", "name": "x", "email": "a@b.co"}))).await;
    expect_error(r, 409, "slug_taken").await;
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "okay", "name": "x", "email": "nope"}))).await;
    expect_error(r, 400, "validation_failed").await;
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": "okay", "name": "x", "email": "a@b.co", "tier": "platinum"}))).await;
    expect_error(r, 400, "invalid_json").await;
    // Path tricks on admin routes never reach the disk.
    let r = send(app.admin(Method::GET, "/tenants/..%2F..%2Fetc")).await;
    expect_error(r, 400, "invalid_slug").await;
    app.stop().await;
}

#[tokio::test]
async fn credentials_and_hosts_are_checked() {
    let app = spawn_app().await;
    let acme = app.create_tenant("acme", "free").await;
    let globex = app.create_tenant("globex", "starter").await;

    // Key alone, either header.
    let v = json_of(send(app.api(Method::GET, "/tenant", &acme.key)).await).await;
    assert_eq!(v["slug"], "acme");
    assert_eq!(v["features"], json!(["search", "context", "export"]));
    let r = send(app.req(Method::GET, "/api/v1/tenant").header("X-API-Key", &globex.key)).await;
    assert_eq!(json_of(r).await["slug"], "globex");

    // Host names the tenant: matching key is fine, the other tenant's key is refused.
    let r = send(app.api(Method::GET, "/tenant", &acme.key).header("Host", "acme.localhost")).await;
    assert_eq!(r.status(), 200);
    let r = send(app.api(Method::GET, "/tenant", &globex.key).header("Host", "acme.localhost")).await;
    expect_error(r, 403, "tenant_mismatch").await;

    // No credentials: 401 with WWW-Authenticate.
    let r = send(app.req(Method::GET, "/api/v1/tenant").header("Host", "acme.localhost")).await;
    assert!(r.headers().get("www-authenticate").is_some());
    expect_error(r, 401, "unauthorized").await;

    // Without credentials an unknown host is 401 too: slugs cannot be enumerated by trying hosts.
    let r = send(app.req(Method::GET, "/api/v1/tenant").header("Host", "nosuch.localhost")).await;
    expect_error(r, 401, "unauthorized").await;
    let r = send(app.api(Method::GET, "/tenant", "wk_live_guess").header("Host", "nosuch.localhost")).await;
    expect_error(r, 401, "invalid_credentials").await;

    // Unknown tenant host with valid credentials: 404. Garbage key: 401.
    let r = send(app.api(Method::GET, "/tenant", &acme.key).header("Host", "nosuch.localhost")).await;
    expect_error(r, 404, "tenant_not_found").await;
    let forged = format!("{}{}", &acme.key[..acme.key.len() - 4], "AAAA");
    expect_error(send(app.api(Method::GET, "/tenant", &forged)).await, 401, "invalid_credentials").await;
    expect_error(send(app.api(Method::GET, "/tenant", "hello")).await, 401, "invalid_credentials").await;

    // Admin routes want the admin token, not a tenant key.
    expect_error(send(app.req(Method::GET, "/admin/v1/tenants")).await, 401, "unauthorized").await;
    expect_error(send(app.req(Method::GET, "/admin/v1/tenants").bearer_auth(&acme.key)).await, 401, "invalid_credentials").await;
    app.stop().await;
}

#[tokio::test]
async fn trusted_proxy_and_custom_domains() {
    let app = spawn_with(|c| c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let acme = app.create_tenant("acme", "pro").await;
    let globex = app.create_tenant("globex", "pro").await;
    // From a trusted proxy, X-Tenant-Domain names the tenant.
    let r = send(app.api(Method::GET, "/tenant", &globex.key).header("X-Tenant-Domain", "acme.localhost")).await;
    expect_error(r, 403, "tenant_mismatch").await;
    // A custom domain routes to its tenant.
    let r = send(app.admin(Method::PATCH, "/tenants/acme").json(&json!({"custom_domain": "docs.acme.test"}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(send(app.api(Method::GET, "/tenant", &acme.key).header("Host", "docs.acme.test")).await.status(), 200);
    let r = send(app.api(Method::GET, "/tenant", &globex.key).header("Host", "docs.acme.test")).await;
    expect_error(r, 403, "tenant_mismatch").await;
    let r = send(app.admin(Method::PATCH, "/tenants/globex").json(&json!({"custom_domain": "docs.acme.test"}))).await;
    expect_error(r, 409, "domain_taken").await;
    // Caddy's ask approves registered names only.
    for (d, s) in [("acme.localhost", 200), ("docs.acme.test", 200), ("nosuch.localhost", 404), ("evil.test", 404)] {
        assert_eq!(send(app.req(Method::GET, &format!("/tls/ask?domain={d}"))).await.status(), s, "{d}");
    }
    app.stop().await;

    // Without trust, the header is ignored (the key alone decides).
    let app = spawn_app().await;
    let _acme = app.create_tenant("acme", "free").await;
    let globex = app.create_tenant("globex", "free").await;
    let r = send(app.api(Method::GET, "/tenant", &globex.key).header("X-Tenant-Domain", "acme.localhost")).await;
    assert_eq!(json_of(r).await["slug"], "globex");
    app.stop().await;
}

#[tokio::test]
async fn lifecycle_rotate_revoke_suspend_delete() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "starter").await;

    // Rotate: both keys work during the overlap.
    let r = send(app.admin(Method::POST, &format!("/tenants/acme/keys/{}/rotate", t.key_id))).await;
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    let new_key = v["api_key"].as_str().unwrap().to_string();
    assert_eq!(send(app.api(Method::GET, "/tenant", &t.key)).await.status(), 200);
    assert_eq!(send(app.api(Method::GET, "/tenant", &new_key)).await.status(), 200);

    // Revoke the old one: refused at once.
    let r = send(app.admin(Method::DELETE, &format!("/tenants/acme/keys/{}", t.key_id))).await;
    assert_eq!(r.status(), 200);
    expect_error(send(app.api(Method::GET, "/tenant", &t.key)).await, 401, "invalid_credentials").await;
    assert_eq!(send(app.api(Method::GET, "/tenant", &new_key)).await.status(), 200);
    expect_error(send(app.admin(Method::DELETE, "/tenants/acme/keys/nope")).await, 404, "key_not_found").await;

    // A read-only key with an expiry.
    let r = send(app.admin(Method::POST, "/tenants/acme/keys").json(&json!({"name": "ci", "scopes": ["read"]}))).await;
    assert_eq!(r.status(), 201);
    let ro = json_of(r).await["api_key"].as_str().unwrap().to_string();
    assert_eq!(send(app.api(Method::GET, "/tenant", &ro)).await.status(), 200);

    // Suspend, then reactivate.
    send(app.admin(Method::PATCH, "/tenants/acme").json(&json!({"status": "suspended"}))).await;
    expect_error(send(app.api(Method::GET, "/tenant", &new_key)).await, 403, "tenant_suspended").await;
    send(app.admin(Method::PATCH, "/tenants/acme").json(&json!({"status": "active", "tier": "pro"}))).await;
    let v = json_of(send(app.api(Method::GET, "/tenant", &new_key)).await).await;
    assert_eq!(v["tier"], "pro");

    // The audit log recorded it all.
    let v = json_of(send(app.admin(Method::GET, "/tenants/acme/audit")).await).await;
    let actions: Vec<&str> = v["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["tenant.created", "key.rotated", "key.revoked", "key.created", "tenant.updated"] {
        assert!(actions.contains(&a), "{a} missing in {actions:?}");
    }

    // Delete: the key dies with it, the files go, the slug is free again.
    let dir = app.dir.path().join(&t.id);
    assert!(dir.exists());
    assert_eq!(send(app.admin(Method::DELETE, "/tenants/acme")).await.status(), 204);
    expect_error(send(app.api(Method::GET, "/tenant", &new_key)).await, 401, "invalid_credentials").await;
    expect_error(send(app.admin(Method::GET, "/tenants/acme")).await, 404, "tenant_not_found").await;
    assert!(!dir.exists(), "tenant files removed");
    let again = app.create_tenant("acme", "free").await;
    assert_ne!(again.id, t.id);
    app.stop().await;
}

#[tokio::test]
async fn listing_is_paginated_and_searchable() {
    let app = spawn_app().await;
    for s in ["alpha", "bravo", "charlie", "delta", "echo"] {
        app.create_tenant(s, "free").await;
    }
    let v = json_of(send(app.admin(Method::GET, "/tenants?limit=2")).await).await;
    assert_eq!(v["tenants"].as_array().unwrap().len(), 2);
    assert_eq!(v["next_cursor"], "bravo");
    let v = json_of(send(app.admin(Method::GET, "/tenants?limit=2&cursor=bravo")).await).await;
    assert_eq!(v["tenants"][0]["slug"], "charlie");
    let v = json_of(send(app.admin(Method::GET, "/tenants?q=ech")).await).await;
    assert_eq!(v["tenants"].as_array().unwrap().len(), 1);
    expect_error(send(app.admin(Method::GET, "/tenants?limit=0")).await, 400, "validation_failed").await;
    expect_error(send(app.admin(Method::GET, "/tenants?limit=abc")).await, 400, "invalid_query").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let app = spawn_with(|c| c.max_body_bytes = 4096).await;
    let r = send(app.admin(Method::POST, "/tenants").header("content-type", "application/json").body("{\"slug\": ")).await;
    expect_error(r, 400, "invalid_json").await;
    let r = send(app.admin(Method::POST, "/tenants").body("slug=acme")).await;
    expect_error(r, 415, "unsupported_media_type").await;
    let big = json!({"slug": "acme", "name": "x".repeat(10_000), "email": "a@b.co"});
    let r = send(app.admin(Method::POST, "/tenants").json(&big)).await;
    expect_error(r, 413, "payload_too_large").await;
    // Non-UTF-8 credentials.
    let r = send(app.req(Method::GET, "/api/v1/tenant").header("X-API-Key", reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap())).await;
    expect_error(r, 400, "invalid_header").await;
    // Huge headers.
    let r = send(app.req(Method::GET, "/api/v1/tenant").header("X-Filler", "a".repeat(100_000))).await;
    expect_error(r, 431, "header_too_large").await;
    // Unknown routes and methods are JSON too.
    expect_error(send(app.req(Method::GET, "/nope")).await, 404, "not_found").await;
    expect_error(send(app.req(Method::DELETE, "/health")).await, 405, "method_not_allowed").await;
    // Nothing was created by any of it.
    let v = json_of(send(app.admin(Method::GET, "/tenants")).await).await;
    assert_eq!(v["total"], 0);
    app.stop().await;
}

#[tokio::test]
async fn jwts_are_verified() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let secret = "jwt-secret-for-tests-0123456789";
    let app = spawn_with(|c| c.jwt.hs256_secret = Some(secret.into())).await;
    app.create_tenant("acme", "free").await;
    app.create_tenant("globex", "free").await;
    let now = chrono::Utc::now().timestamp();
    let token = |claims: Value, alg: jsonwebtoken::Algorithm, key: &str| {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
    };
    let good = token(json!({"tenant": "acme", "exp": now + 600, "scopes": ["read"]}), jsonwebtoken::Algorithm::HS256, secret);
    let v = json_of(send(app.api(Method::GET, "/tenant", &good)).await).await;
    assert_eq!(v["slug"], "acme");
    let r = send(app.api(Method::GET, "/tenant", &good).header("Host", "globex.localhost")).await;
    expect_error(r, 403, "tenant_mismatch").await;
    let expired = token(json!({"tenant": "acme", "exp": now - 3600}), jsonwebtoken::Algorithm::HS256, secret);
    expect_error(send(app.api(Method::GET, "/tenant", &expired)).await, 401, "token_expired").await;
    let wrong_alg = token(json!({"tenant": "acme", "exp": now + 600}), jsonwebtoken::Algorithm::HS384, secret);
    expect_error(send(app.api(Method::GET, "/tenant", &wrong_alg)).await, 401, "invalid_credentials").await;
    let wrong_key = token(json!({"tenant": "acme", "exp": now + 600}), jsonwebtoken::Algorithm::HS256, "another-secret-entirely-123");
    expect_error(send(app.api(Method::GET, "/tenant", &wrong_key)).await, 401, "invalid_credentials").await;
    let unknown = token(json!({"tenant": "nobody", "exp": now + 600}), jsonwebtoken::Algorithm::HS256, secret);
    expect_error(send(app.api(Method::GET, "/tenant", &unknown)).await, 401, "invalid_credentials").await;
    // A token that is not valid yet (nbf in the future, beyond the 30 s leeway) is refused.
    let early = token(json!({"tenant": "acme", "exp": now + 600, "nbf": now + 300}), jsonwebtoken::Algorithm::HS256, secret);
    expect_error(send(app.api(Method::GET, "/tenant", &early)).await, 401, "invalid_credentials").await;
    // alg=none is refused.
    let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&json!({"tenant": "acme", "exp": now + 600}).to_string()));
    expect_error(send(app.api(Method::GET, "/tenant", &none)).await, 401, "invalid_credentials").await;
    app.stop().await;
}

/// A slug may never be another tenant's id: ids and slugs live in disjoint namespaces, so a JWT
/// naming a tenant by id reaches that tenant and no impostor.
#[tokio::test]
async fn ids_and_slugs_never_collide() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let secret = "jwt-secret-for-tests-0123456789";
    let app = spawn_with(|c| c.jwt.hs256_secret = Some(secret.into())).await;
    let victim = app.create_tenant("victim", "free").await;
    for slug in [victim.id.to_ascii_lowercase(), victim.id.clone(), ulid::Ulid::new().to_string().to_ascii_lowercase()] {
        let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": slug, "name": "I", "email": "i@i.test"}))).await;
        expect_error(r, 400, "invalid_slug").await;
    }
    let now = chrono::Utc::now().timestamp();
    let by_id = encode(&Header::default(), &json!({"tenant": victim.id, "exp": now + 600}), &EncodingKey::from_secret(secret.as_bytes())).unwrap();
    let v = json_of(send(app.api(Method::GET, "/tenant", &by_id)).await).await;
    assert_eq!((v["id"].as_str(), v["slug"].as_str()), (Some(victim.id.as_str()), Some("victim")), "{v}");
    app.stop().await;
}

/// Data files are private to the server's user (0600, directories 0700), whatever its umask.
#[cfg(unix)]
#[tokio::test]
async fn data_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let replica = tempfile::tempdir().unwrap();
    // The test process's umask is usually 022; the child inherits it.
    let envs = [("WARREN_BACKUP_URL", format!("file://{}", replica.path().display())), ("WARREN_BACKUP__SYNC_INTERVAL_MS", "100".to_string())];
    let mut server = ServerProcess::start(dir.path(), &envs).await;
    let created = server.create_tenant("private", "free").await;
    let key = created["api_key"].as_str().unwrap().to_string();
    let r = Client::new()
        .post(format!("{}/api/v1/documents", server.addr))
        .bearer_auth(&key)
        .json(&json!({"path": "a.md", "content": "# A\nsecret notes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Wait until the replica holds files too.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !walk(replica.path()).iter().any(|p| p.is_file()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.terminate();
    // Listed once the server has stopped: while it runs, a file seen in one moment (an upload's
    // temporary file, a level-0 file that compaction replaces) can be gone the next.
    let mut files = walk(dir.path());
    files.extend(walk(replica.path()));
    assert!(files.iter().any(|p| p.ends_with("tenant.db")) && files.iter().any(|p| p.ends_with("control.db")), "{files:?}");
    let mut open = Vec::new();
    for p in files.iter().chain([dir.path().to_path_buf()].iter()) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{} {mode:o}", p.display()));
        }
    }
    assert!(open.is_empty(), "readable by others: {open:?}");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn signup_is_off_by_default() {
    let app = spawn_app().await;
    let r = send(app.req(Method::POST, "/api/v1/signup").json(&json!({"email": "a@b.co", "company": "Acme"}))).await;
    expect_error(r, 403, "signup_disabled").await;
    app.stop().await;
    let app = spawn_with(|c| c.signup_enabled = true).await;
    let r = send(app.req(Method::POST, "/api/v1/signup").json(&json!({"email": "a@b.co", "company": "Acme, Inc."}))).await;
    assert_eq!(r.status(), 201);
    let v = json_of(r).await;
    assert_eq!(v["tenant"]["slug"], "acme-inc");
    assert_eq!(v["tenant"]["tier"], "free");
    let r = send(app.req(Method::POST, "/api/v1/signup").json(&json!({"email": "b@b.co", "company": "Acme Inc"}))).await;
    assert_eq!(r.status(), 201, "a taken slug gets a suffix");
    app.stop().await;
}

#[tokio::test]
async fn generated_admin_token_is_stored_privately() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admin_token = None;
    let app = warren::App::build(config).await.unwrap();
    let port = app.port();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());
    let path = dir.path().join(warren::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let r = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/admin/v1/tenants")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Only its hash is in control.db.
    let mut db = std::fs::read(dir.path().join("control.db")).unwrap();
    db.extend(std::fs::read(dir.path().join("control.db-wal")).unwrap_or_default());
    assert!(!db.windows(token.len()).any(|w| w == token.as_bytes()));
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn scopes_and_expiry_are_enforced() {
    let app = spawn_app().await;
    app.create_tenant("acme", "free").await;
    let r = send(app.admin(Method::POST, "/tenants/acme/keys").json(&json!({"name": "ro", "scopes": ["read"]}))).await;
    let ro = json_of(r).await["api_key"].as_str().unwrap().to_string();
    assert_eq!(send(app.api(Method::GET, "/documents", &ro)).await.status(), 200);
    let r = send(app.api(Method::POST, "/documents", &ro).json(&json!({"path": "a", "content": "b"}))).await;
    expect_error(r, 403, "insufficient_scope").await;
    let r = send(app.admin(Method::POST, "/tenants/acme/keys").json(&json!({"scopes": []}))).await;
    expect_error(r, 400, "validation_failed").await;
    let r = send(app.admin(Method::POST, "/tenants/acme/keys").json(&json!({"expires_at": "2001-01-01T00:00:00Z"}))).await;
    expect_error(r, 400, "validation_failed").await;
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let r = send(app.admin(Method::POST, "/tenants/acme/keys").json(&json!({"name": "short", "expires_at": soon}))).await;
    let short = json_of(r).await["api_key"].as_str().unwrap().to_string();
    assert_eq!(send(app.api(Method::GET, "/tenant", &short)).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    expect_error(send(app.api(Method::GET, "/tenant", &short)).await, 401, "token_expired").await;
    app.stop().await;
}

/// Framework refusals are JSON like the rest, and a refusal that comes before the body is read says
/// `Connection: close`, so a client's next request on a pooled connection still works.
#[tokio::test]
async fn early_refusals_are_json_and_close_the_connection() {
    let app = spawn_with(|c| c.max_body_bytes = 64 * 1024).await;
    let big = vec![b'a'; 200 * 1024];
    // Raw-bytes routes (webhooks, key creation) used to answer 413 in plain text.
    for (m, path, admin) in [(Method::POST, "/webhooks/stripe", false), (Method::POST, "/admin/v1/tenants/x/keys", true)] {
        let rb = if admin { app.admin(m, path.trim_start_matches("/admin/v1")) } else { app.req(m, path) };
        let r = send(rb.body(big.clone())).await;
        assert_eq!(r.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"), "{path}");
        expect_error(r, 413, "payload_too_large").await;
    }
    // Refused on its credentials before its 200 KiB body is read; the same pooled client goes on.
    for _ in 0..3 {
        let r = send(app.api(Method::POST, "/documents", "wk_live_not_a_key").header("content-type", "application/json").body(big.clone())).await;
        assert_eq!(r.headers().get("connection").and_then(|v| v.to_str().ok()), Some("close"));
        expect_error(r, 401, "invalid_credentials").await;
        assert_eq!(send(app.req(Method::GET, "/health")).await.status(), 200);
    }
    app.stop().await;
}

/// A tenant whose `tenant.db` is missing or is not a database answers 503 `tenant_damaged` (it used
/// to be 404 for a missing file and 500 for garbage), and the other tenants keep serving.
#[tokio::test]
async fn a_damaged_tenant_is_a_clear_503_and_the_others_keep_serving() {
    let app = spawn_app().await;
    let (gone, junk, fine) =
        (app.create_tenant("gone", "starter").await, app.create_tenant("junk", "starter").await, app.create_tenant("fine", "starter").await);
    for t in [&gone, &junk, &fine] {
        let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "a.md", "content": "hello there"}))).await;
        assert_eq!(r.status(), 201);
    }
    let mut app = app;
    app.shutdown.cancel();
    app.task.take().unwrap().await.unwrap().unwrap();
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    for (t, write) in [(&gone, None), (&junk, Some(vec![b'x'; 8192]))] {
        let db = dir.path().join(&t.id).join("tenant.db");
        for side in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{side}", db.display()));
        }
        match write {
            None => std::fs::remove_file(&db).unwrap(),
            Some(bytes) => std::fs::write(&db, bytes).unwrap(),
        }
    }
    let (app, _) = spawn_state(Some(dir), |_| {}).await;
    for t in [&gone, &junk] {
        let r = send(app.api(Method::GET, "/documents", &t.key)).await;
        let e = expect_error(r, 503, "tenant_damaged").await;
        assert!(e["error"]["message"].as_str().unwrap().contains("restore"), "{e}");
        let r = send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "hello", "mode": "keyword"}))).await;
        expect_error(r, 503, "tenant_damaged").await;
    }
    let r = send(app.api(Method::POST, "/search", &fine.key).json(&json!({"query": "hello", "mode": "keyword"}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["results"].as_array().map(Vec::len), Some(1));
    let metrics = send(app.req(Method::GET, "/metrics")).await.text().await.unwrap();
    assert!(metrics.contains("warren_tenant_damaged_total"), "the operator sees it in metrics");
    app.stop().await;
}

/// The `sqlite3` CLI on a closed database; panics unless it succeeds.
fn sqlite3_cli(db: &std::path::Path, sql: &str) -> String {
    let out = std::process::Command::new("sqlite3").arg(db).arg(sql).output().expect("run sqlite3 (apt-get install sqlite3)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A database that opens but whose pages fail `quick_check`: the first request that meets the damage
/// is a 503 `tenant_damaged` (not a 500), the tenant is quarantined (a marker that survives restarts,
/// an error log, a metric), and other tenants keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_failing_quick_check_after_open_is_quarantined() {
    let app = spawn_app().await;
    let (rotten, fine) = (app.create_tenant("rotten", "starter").await, app.create_tenant("fine", "starter").await);
    for t in [&rotten, &fine] {
        let docs: Vec<Value> =
            (0..40).map(|i| json!({"path": format!("d{i}.md"), "content": format!("document {i} {}", "words ".repeat(400))})).collect();
        let r = send(app.api(Method::POST, "/documents/bulk", &t.key).json(&json!({"documents": docs}))).await;
        assert_eq!(r.status(), 200);
    }
    let mut app = app;
    app.shutdown.cancel();
    app.task.take().unwrap().await.unwrap().unwrap();
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    let db = dir.path().join(&rotten.id).join("tenant.db");
    sqlite3_cli(&db, "PRAGMA wal_checkpoint(TRUNCATE);");
    let pages: Vec<u64> =
        sqlite3_cli(&db, "SELECT pageno FROM dbstat WHERE name = 'documents' AND pagetype = 'leaf';").lines().map(|l| l.parse().unwrap()).collect();
    assert!(pages.len() >= 3, "documents spans {pages:?}");
    let page_size: u64 = sqlite3_cli(&db, "PRAGMA page_size;").trim().parse().unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        for p in &pages {
            f.seek(SeekFrom::Start((p - 1) * page_size)).unwrap();
            f.write_all(&vec![0xA5; page_size as usize]).unwrap();
        }
    }
    let (app, _) = spawn_state(Some(dir), |_| {}).await;
    let marker = app.dir.path().join(&rotten.id).join("QUARANTINED");
    let r = send(app.api(Method::GET, "/documents", &rotten.key)).await;
    expect_error(r, 503, "tenant_damaged").await;
    let why = std::fs::read_to_string(&marker).expect("the quarantine marker is written");
    assert!(why.contains("quick_check"), "{why}");
    let metrics = send(app.req(Method::GET, "/metrics")).await.text().await.unwrap();
    assert!(metrics.contains("warren_tenant_quarantined_total"), "the operator sees it in metrics");
    for (m, path, body) in [(Method::GET, "/documents", None), (Method::POST, "/search", Some(json!({"query": "document", "mode": "keyword"})))] {
        let mut rb = app.api(m, path, &rotten.key);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let e = expect_error(send(rb).await, 503, "tenant_damaged").await;
        assert!(e["error"]["message"].as_str().unwrap().contains("restore"), "{e}");
    }
    let r = send(app.api(Method::POST, "/search", &fine.key).json(&json!({"query": "document", "mode": "keyword", "limit": 50}))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["results"].as_array().map(Vec::len), Some(40));
    // The quarantine survives a restart: the damaged file is not reopened.
    let mut app = app;
    app.shutdown.cancel();
    app.task.take().unwrap().await.unwrap().unwrap();
    let dir = std::mem::replace(&mut app.dir, tempfile::tempdir().unwrap());
    let (app, _) = spawn_state(Some(dir), |_| {}).await;
    expect_error(send(app.api(Method::GET, "/documents", &rotten.key)).await, 503, "tenant_damaged").await;
    assert!(marker.exists() || app.dir.path().join(&rotten.id).join("QUARANTINED").exists());
    app.stop().await;
}
