//! Plans over HTTP: rate limits per tier, quotas, feature gates, trials, usage metering, exports and
//! Stripe webhooks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::{json, Value};
use warren::plans::DEFAULT_PLANS;

use crate::helpers::*;

/// Stops the server but keeps its data dir.
async fn stop_keep(mut app: TestApp) -> tempfile::TempDir {
    app.shutdown.cancel();
    if let Some(t) = app.task.take() {
        t.await.expect("join").expect("stopped cleanly");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::mem::replace(&mut app.dir, dir)
}

/// The default plans with textual replacements, written to `<dir>/plans.toml`.
fn plans_file(dir: &std::path::Path, edits: &[(&str, &str)]) -> std::path::PathBuf {
    let mut text = DEFAULT_PLANS.to_string();
    for (from, to) in edits {
        assert!(text.contains(from), "plans.toml has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let path = dir.join("plans.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

/// Sends GET /tenant at `per_sec` for `secs`; returns (accepted, throttled, retry-after values).
async fn drive(app: &TestApp, key: &str, per_sec: u32, secs: u32) -> (usize, usize, Vec<u64>) {
    let start = tokio::time::Instant::now();
    let n = per_sec * secs;
    let mut tasks = Vec::new();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / per_sec as f64);
        let rb = app.api(Method::GET, "/tenant", key);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let r = rb.send().await.expect("request");
            for h in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
                assert!(r.headers().get(h).is_some(), "{h} missing on {}", r.status());
            }
            let ra = header(&r, "retry-after");
            let status = r.status().as_u16();
            if status == 429 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["code"], "rate_limited", "{v}");
            }
            (status, ra)
        }));
    }
    let (mut ok, mut throttled, mut retry) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, ra) => {
                throttled += 1;
                retry.push(ra.expect("429 carries Retry-After"));
            }
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    (ok, throttled, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free_tenant_is_held_to_its_rate_and_starter_is_not() {
    let app = spawn_app().await;
    let free = app.create_tenant("freebie", "free").await;
    let starter = app.create_tenant("paying", "starter").await;
    let (f, s) = tokio::join!(drive(&app, &free.key, 50, 4), drive(&app, &starter.key, 50, 4));
    // Free: 10/s with a burst of 100 → 100 + 10 × 4 s accepted, within 10 %.
    let expected = 100.0 + 10.0 * 4.0;
    assert!((f.0 as f64 - expected).abs() <= expected * 0.10, "free accepted {} of 200, expected ~{expected}", f.0);
    assert_eq!(f.0 + f.1, 200);
    // One cell refills in 0.1 s: Retry-After (whole seconds, rounded up) is 1.
    assert!(f.2.iter().all(|&s| s == 1), "Retry-After values: {:?}", f.2);
    // Starter (50/s, burst 500) on the same server never sees a 429.
    assert_eq!((s.0, s.1), (200, 0), "starter throttled");

    // Still throttled right now; a tier change lifts the limit on the next request.
    let r = send(app.api(Method::GET, "/tenant", &free.key)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    let r = send(app.admin(Method::PATCH, "/tenants/freebie").json(&json!({"tier": "pro"}))).await;
    assert_eq!(r.status(), 200);
    let r = send(app.api(Method::GET, "/tenant", &free.key)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-limit"), Some(2000));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(1999));
    assert_eq!(json_of(r).await["tier"], "pro");
    app.stop().await;
}

#[tokio::test]
async fn an_api_key_may_carry_a_lower_limit_and_bulk_costs_per_document() {
    let app = spawn_app().await;
    let t = app.create_tenant("acme", "starter").await;
    let r = send(app.admin(Method::PUT, &format!("/tenants/acme/keys/{}/rate_limit", t.key_id)).json(&json!({"rate_per_sec": 1, "burst": 3}))).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    for i in 0..3 {
        let r = send(app.api(Method::GET, "/tenant", &t.key)).await;
        assert_eq!(r.status(), 200, "call {i}");
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
    }
    expect_error(send(app.api(Method::GET, "/tenant", &t.key)).await, 429, "rate_limited").await;
    // A bulk costs one cell per document: 600 documents never fit a starter burst of 500.
    let r = send(app.admin(Method::PUT, &format!("/tenants/acme/keys/{}/rate_limit", t.key_id)).json(&json!(null))).await;
    assert_eq!(r.status(), 200);
    let docs: Vec<Value> = (0..600).map(|i| json!({"path": format!("d{i}.md"), "content": "x"})).collect();
    let v = expect_error(send(app.api(Method::POST, "/documents/bulk", &t.key).json(&json!({"documents": docs}))).await, 429, "rate_limited").await;
    assert_eq!(v["error"]["cost"], 600);
    app.stop().await;
}

/// A document's rate-limit cost grows with the chunks it embeds: one more cell per 16 chunks.
#[tokio::test]
async fn a_document_costs_one_more_cell_per_sixteen_chunks() {
    let app = spawn_app().await;
    let t = app.create_tenant("chunky", "starter").await;
    let content: String = (0..120).map(|i| format!("Paragraph {i} talks about subject number {i} at some length. ").repeat(12) + "\n\n").collect();
    let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "a.md", "content": content}))).await;
    assert_eq!(r.status(), 201);
    let chunks = json_of(r).await["chunks"].as_u64().expect("chunks");
    assert!(chunks > 32, "the document should have many chunks, got {chunks}");
    // With a key burst of 3, the same document no longer fits, and nothing of it is written.
    let r =
        send(app.admin(Method::PUT, &format!("/tenants/chunky/keys/{}/rate_limit", t.key_id)).json(&json!({"rate_per_sec": 1, "burst": 3}))).await;
    assert_eq!(r.status(), 200);
    let v =
        expect_error(send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": "b.md", "content": content}))).await, 429, "rate_limited")
            .await;
    assert_eq!(v["error"]["cost"], chunks.div_ceil(16), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("smaller"), "{v}");
    let r = send(app.admin(Method::PUT, &format!("/tenants/chunky/keys/{}/rate_limit", t.key_id)).json(&json!(null))).await;
    assert_eq!(r.status(), 200);
    let listed = json_of(send(app.api(Method::GET, "/documents?path_prefix=b", &t.key)).await).await;
    assert_eq!(listed["documents"].as_array().map(Vec::len), Some(0), "a refused write stores nothing: {listed}");
    app.stop().await;
}

#[tokio::test]
async fn hard_quota_refuses_and_soft_quota_records_overage() {
    let dir = tempfile::tempdir().unwrap();
    let plans = plans_file(
        dir.path(),
        &[("queries_per_month = 1000\n", "queries_per_month = 5\n"), ("queries_per_month = 100_000\n", "queries_per_month = 3\n")],
    );
    let app = spawn_with(|c| c.plans = Some(plans)).await;
    let free = app.create_tenant("freebie", "free").await;
    let starter = app.create_tenant("paying", "starter").await;
    let query = json!({"query": "anything", "mode": "keyword"});
    let body = |path: &str| if path == "/search" { query.clone() } else { json!({"query": "anything", "max_tokens": 100}) };
    for i in 0..5 {
        let path = if i % 2 == 0 { "/search" } else { "/context/assemble" };
        let r = send(app.api(Method::POST, path, &free.key).json(&body(path))).await;
        assert_eq!(r.status(), 200, "query {i}: {:?}", r.text().await);
    }
    for path in ["/search", "/context/assemble"] {
        let r = send(app.api(Method::POST, path, &free.key).json(&body(path))).await;
        assert!(header(&r, "retry-after").is_some_and(|s| s >= 1));
        let v = expect_error(r, 429, "quota_exceeded").await;
        assert_eq!(v["error"]["limit"], 5);
        assert_eq!(v["error"]["used"], 5);
        assert!(v["error"]["resets_at"].as_str().unwrap().ends_with("-01T00:00:00Z"), "{v}");
        assert!(v["error"]["upgrade_url"].as_str().unwrap().contains("freebie"), "{v}");
    }
    // Reads other than queries still work.
    assert_eq!(send(app.api(Method::GET, "/tenant", &free.key)).await.status(), 200);

    for _ in 0..5 {
        assert_eq!(send(app.api(Method::POST, "/search", &starter.key).json(&query)).await.status(), 200);
    }
    let u = json_of(send(app.api(Method::GET, "/usage", &starter.key)).await).await;
    assert_eq!(u["usage"]["queries"], 5, "{u}");
    assert_eq!(u["limits"]["queries"], 3);
    assert_eq!(u["overage"]["queries"], 2, "{u}");
    assert_eq!(u["overage"]["amount_usd"], 1.0, "a started block of 1,000 at $1");
    assert_eq!(u["percent_used"]["queries"], 166.7);
    let u = json_of(send(app.api(Method::GET, "/usage", &free.key)).await).await;
    assert_eq!(u["usage"]["queries"], 5, "refused queries are not counted: {u}");
    assert_eq!(u["overage"]["queries"], 0);
    app.stop().await;
}

#[tokio::test]
async fn features_outside_the_plan_are_403() {
    let (app, state) = spawn_state(None, |_| {}).await;
    let free = app.create_tenant("freebie", "free").await;
    app.create_tenant("bigco", "pro").await;
    // The audit log needs an admin-scoped key; the plan's gate applies on top of the scope.
    let admin_key = admin_scoped_key(&app, "freebie").await;
    expect_error(send(app.api(Method::GET, "/audit", &free.key)).await, 403, "insufficient_scope").await;
    let v = expect_error(send(app.api(Method::GET, "/audit", &admin_key)).await, 403, "feature_not_in_plan").await;
    assert_eq!(v["error"]["feature"], "audit_log");
    assert_eq!(v["error"]["required_tier"], "pro");
    assert!(v["error"]["upgrade_url"].as_str().unwrap().contains("tenant=freebie&tier=pro&feature=audit_log"), "{v}");

    // The reusable gate (what the recommendations endpoints call): free lacks "recommendations".
    let tenant = state.control.tenant_by_slug("freebie").await.unwrap().unwrap();
    let err = state.plans.entitlements(&tenant).require_feature("recommendations").unwrap_err();
    let v = expect_error(reqwest::Response::from(http_response(err)), 403, "feature_not_in_plan").await;
    assert_eq!(v["error"]["required_tier"], "starter");
    let bigco = state.control.tenant_by_slug("bigco").await.unwrap().unwrap();
    assert!(state.plans.entitlements(&bigco).require_feature("recommendations").is_ok());

    // Overrides switch features per tenant, on the next request.
    let r = send(app.admin(Method::PUT, "/tenants/freebie/overrides").json(&json!({"features": {"audit_log": true, "search": false}}))).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(send(app.api(Method::GET, "/audit", &admin_key)).await.status(), 200);
    let r = send(app.api(Method::POST, "/search", &free.key).json(&json!({"query": "x", "mode": "keyword"}))).await;
    let v = expect_error(r, 403, "feature_not_in_plan").await;
    assert_eq!(v["error"]["feature"], "search");
    let me = json_of(send(app.api(Method::GET, "/tenant", &free.key)).await).await;
    assert_eq!(me["features"], json!(["context", "export", "audit_log"]));
    app.stop().await;
}

/// A new key with the `admin` scope for `slug` (its plaintext).
async fn admin_scoped_key(app: &TestApp, slug: &str) -> String {
    let r = send(app.admin(Method::POST, &format!("/tenants/{slug}/keys")).json(&json!({"name": "ops", "scopes": ["admin"]}))).await;
    assert_eq!(r.status(), 201);
    json_of(r).await["api_key"].as_str().expect("a key").to_string()
}

/// An `Error` as the HTTP response the server would send, readable by `expect_error`.
fn http_response(e: warren::error::Error) -> http::Response<reqwest::Body> {
    use axum::response::IntoResponse;
    let resp = e.into_response();
    let (parts, body) = resp.into_parts();
    let bytes = futures::executor::block_on(axum::body::to_bytes(body, usize::MAX)).unwrap();
    http::Response::from_parts(parts, reqwest::Body::from(bytes))
}

#[tokio::test]
async fn an_ended_trial_drops_to_free_and_over_limit_data_turns_read_only() {
    let pdir = tempfile::tempdir().unwrap();
    let plans = plans_file(pdir.path(), &[("documents = 1000\n", "documents = 2\n")]);
    let (app, state) = spawn_state(None, |c| c.plans = Some(plans)).await;
    let r = send(
        app.admin(Method::POST, "/tenants")
            .json(&json!({"slug": "trialco", "name": "T", "email": "t@t.co", "tier": "pro", "status": "trial", "trial_days": 14})),
    )
    .await;
    let v = json_of(r).await;
    let key = v["api_key"].as_str().unwrap().to_string();
    let admin_key = admin_scoped_key(&app, "trialco").await;
    assert_eq!(send(app.api(Method::GET, "/audit", &admin_key)).await.status(), 200, "a pro trial has pro features");
    for i in 0..3 {
        let r = send(app.api(Method::POST, "/documents", &key).json(&json!({"path": format!("d{i}.md"), "content": format!("doc {i}")}))).await;
        assert_eq!(r.status(), 201);
    }
    state.plans.clock.advance(chrono::Duration::days(13));
    assert_eq!(json_of(send(app.api(Method::GET, "/tenant", &key)).await).await["tier"], "pro", "trial still running");

    state.plans.clock.advance(chrono::Duration::days(2));
    let me = json_of(send(app.api(Method::GET, "/tenant", &key)).await).await;
    assert_eq!(me["tier"], "free", "{me}");
    expect_error(send(app.api(Method::GET, "/audit", &admin_key)).await, 403, "feature_not_in_plan").await;
    // The change is recorded once, with an audit event.
    let mut recorded = false;
    for _ in 0..50 {
        let t = json_of(send(app.admin(Method::GET, "/tenants/trialco")).await).await;
        if t["tenant"]["tier"] == "free" && t["tenant"]["status"] == "active" {
            recorded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recorded, "tier change not written");
    let events = json_of(send(app.admin(Method::GET, "/tenants/trialco/audit")).await).await;
    let expiries = events["events"].as_array().unwrap().iter().filter(|e| e["action"] == "tenant.trial_expired").count();
    assert_eq!(expiries, 1, "{events}");
    // Nothing was deleted; over the free limit the data is read-only until trimmed.
    let list = json_of(send(app.api(Method::GET, "/documents", &key)).await).await;
    assert_eq!(list["documents"].as_array().map(|d| d.len()), Some(3), "{list}");
    let r = send(app.api(Method::POST, "/documents", &key).json(&json!({"path": "d0.md", "content": "changed"}))).await;
    let v = expect_error(r, 403, "plan_limit_reached").await;
    assert_eq!(v["error"]["limit"], "documents");
    assert_eq!(v["error"]["used"], 3);
    assert_eq!(send(app.api(Method::DELETE, "/documents?path_prefix=d2", &key)).await.status(), 200);
    let r = send(app.api(Method::POST, "/documents", &key).json(&json!({"path": "d0.md", "content": "changed"}))).await;
    assert_eq!(r.status(), 200, "at the limit an update is fine: {:?}", r.text().await);
    let r = send(app.api(Method::POST, "/documents", &key).json(&json!({"path": "new.md", "content": "new"}))).await;
    expect_error(r, 403, "plan_limit_reached").await;
    app.stop().await;
}

#[tokio::test]
async fn usage_counts_equal_the_requests_and_the_export_bills_them() {
    let (app, _) = spawn_state(None, |_| {}).await;
    let t = app.create_tenant("acme", "starter").await;
    let other = app.create_tenant("other", "pro").await;
    for _ in 0..7 {
        assert_eq!(send(app.api(Method::GET, "/tenant", &t.key)).await.status(), 200);
    }
    for i in 0..2 {
        let r = send(app.api(Method::POST, "/documents", &t.key).json(&json!({"path": format!("a{i}.md"), "content": "metered words here"}))).await;
        assert_eq!(r.status(), 201);
    }
    let bulk = json!({"documents": [{"path": "b0.md", "content": "more words"}, {"path": "b1.md", "content": "and more"}]});
    assert_eq!(send(app.api(Method::POST, "/documents/bulk", &t.key).json(&bulk)).await.status(), 200);
    for _ in 0..3 {
        assert_eq!(send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": "words", "mode": "keyword"}))).await.status(), 200);
    }
    let mut returned = 0;
    for _ in 0..2 {
        let v = json_of(send(app.api(Method::POST, "/context/assemble", &t.key).json(&json!({"query": "words", "max_tokens": 100}))).await).await;
        returned += v["total_tokens"].as_u64().unwrap();
    }
    assert_eq!(send(app.api(Method::DELETE, "/documents?path_prefix=b1", &t.key)).await.status(), 200);
    assert_eq!(send(app.api(Method::GET, "/tenant", &other.key)).await.status(), 200);

    let calls = 7 + 2 + 1 + 3 + 2 + 1;
    let u = json_of(send(app.api(Method::GET, "/usage", &t.key)).await).await;
    assert_eq!(u["usage"]["api_calls"], calls + 1, "the usage call counts itself: {u}");
    assert_eq!(u["usage"]["queries"], 5);
    assert_eq!(u["usage"]["search"]["calls"], 3);
    assert_eq!(u["usage"]["assemble"]["calls"], 2);
    assert_eq!(u["usage"]["tokens_returned"], returned);
    assert_eq!(u["usage"]["document_write"]["calls"], 4);
    assert_eq!(u["usage"]["document_delete"]["calls"], 1);
    assert_eq!(u["usage"]["documents"], 3);
    assert!(u["usage"]["storage_bytes"].as_u64().unwrap() > 0);
    assert_eq!(u["tier"], "starter");
    assert_eq!(u["limits"]["documents"], 10_000);
    let period = u["period"].as_str().unwrap().to_string();

    // Restart on the same data: the counts come back from control.db, not counted twice.
    let dir = stop_keep(app).await;
    let (app, _) = spawn_state(Some(dir), |_| {}).await;
    let u = json_of(send(app.api(Method::GET, "/usage", &t.key)).await).await;
    assert_eq!(u["usage"]["api_calls"], calls + 2, "{u}");
    assert_eq!(u["usage"]["queries"], 5);

    let v = json_of(send(app.admin(Method::GET, &format!("/usage?period={period}"))).await).await;
    let row = v["tenants"].as_array().unwrap().iter().find(|r| r["slug"] == "acme").unwrap().clone();
    assert_eq!(row["api_calls"], calls + 2);
    assert_eq!(row["queries"], 5);
    assert_eq!(row["base_price_usd"], 49.0);
    assert_eq!(row["total_usd"], 49.0);
    let csv_text = send(app.admin(Method::GET, &format!("/usage?period={period}")).header("Accept", "text/csv")).await.text().await.unwrap();
    let mut rdr = csv::Reader::from_reader(csv_text.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    assert_eq!(headers.iter().collect::<Vec<_>>().join(","), warren::billing::USAGE_CSV_HEADER);
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("CSV row parses")).collect();
    assert_eq!(rows.len(), 2);
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let acme = rows.iter().find(|r| &r[col("slug")] == "acme").unwrap();
    assert_eq!(&acme[col("queries")], "5");
    assert_eq!(&acme[col("total_usd")], "49.00");
    let pro = rows.iter().find(|r| &r[col("slug")] == "other").unwrap();
    assert_eq!((&pro[col("api_calls")], &pro[col("total_usd")]), ("1", "99.00"));
    expect_error(send(app.admin(Method::GET, "/usage?period=2024-13")).await, 400, "invalid_query").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_dash_nine_loses_at_most_the_last_second_of_usage() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[]).await;
    let client = Client::new();
    let v = server.create_tenant("busy", "enterprise").await;
    let key = v["api_key"].as_str().unwrap().to_string();
    let acks = Arc::new(parking_lot::Mutex::new(Vec::<Instant>::new()));
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, addr, key, acks, sent, stop) = (client.clone(), server.addr.clone(), key.clone(), acks.clone(), sent.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match client.get(format!("{addr}/api/v1/tenant")).bearer_auth(&key).send().await {
                    Ok(r) if r.status() == 200 => acks.lock().push(Instant::now()),
                    // The loop can outrun even the enterprise burst; a refused call is not acknowledged.
                    Ok(r) if r.status() == 429 => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(r) => panic!("status {} {:?}", r.status(), r.text().await),
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let killed_at = Instant::now();
    server.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acks = acks.lock().clone();
    let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
    let older = acks.iter().filter(|t| killed_at.duration_since(**t) > Duration::from_millis(1100)).count();
    assert!(older >= 50, "too few calls to prove anything: {older}");

    let server = ServerProcess::start(dir.path(), &[]).await;
    let u: Value = client.get(format!("{}/api/v1/usage", server.addr)).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    let counted = u["usage"]["api_calls"].as_u64().unwrap() as usize - 1; // minus this usage call
    assert!(counted <= sent, "counted {counted} > sent {sent}: something was counted twice");
    assert!(
        counted >= older,
        "lost more than the last second: counted {counted}, acknowledged over 1.1 s before the kill {older} (all acked {})",
        acks.len()
    );
}

fn stripe_event(id: &str, kind: &str, object: Value) -> String {
    json!({"id": id, "object": "event", "type": kind, "data": {"object": object}}).to_string()
}

#[tokio::test]
async fn stripe_webhooks_apply_once_and_only_when_signed() {
    const SECRET: &str = "whsec_test_secret";
    let pdir = tempfile::tempdir().unwrap();
    let plans = plans_file(pdir.path(), &[("stripe_price_ids = []", "stripe_price_ids = [\"price_starter_monthly\"]")]);
    let (app, state) = spawn_state(None, |c| {
        c.plans = Some(plans);
        c.stripe_webhook_secret = Some(SECRET.into());
        c.billing.suspend_on_payment_failure = true;
    })
    .await;
    let t = app.create_tenant("acme", "free").await;
    let now = || state.plans.clock.now().timestamp();
    let post = |body: String, sig: String| {
        app.req(Method::POST, "/webhooks/stripe").header("Stripe-Signature", sig).header("Content-Type", "application/json").body(body)
    };
    let tier = || async { json_of(send(app.admin(Method::GET, "/tenants/acme")).await).await["tenant"].clone() };

    let created = stripe_event(
        "evt_1",
        "customer.subscription.created",
        json!({"id": "sub_1", "customer": "cus_42", "status": "active", "metadata": {"tenant_id": t.id}, "items": {"data": [{"price": {"id": "price_starter_monthly"}}]}}),
    );
    let r = send(post(created.clone(), warren::api::webhooks::sign(created.as_bytes(), SECRET, now()))).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let tt = tier().await;
    assert_eq!((tt["tier"].as_str(), tt["stripe_customer_id"].as_str()), (Some("starter"), Some("cus_42")));

    // Bad signature, tampered body, stale timestamp: 400, nothing applied.
    let upgrade =
        stripe_event("evt_2", "customer.subscription.updated", json!({"customer": "cus_42", "status": "active", "metadata": {"tier": "pro"}}));
    let r = send(post(upgrade.clone(), warren::api::webhooks::sign(upgrade.as_bytes(), "whsec_wrong", now()))).await;
    expect_error(r, 400, "invalid_signature").await;
    let r = send(post(upgrade.replace("pro", "enterprise"), warren::api::webhooks::sign(upgrade.as_bytes(), SECRET, now()))).await;
    expect_error(r, 400, "invalid_signature").await;
    let r = send(post(upgrade.clone(), warren::api::webhooks::sign(upgrade.as_bytes(), SECRET, now() - 600))).await;
    expect_error(r, 400, "invalid_signature").await;
    expect_error(send(app.req(Method::POST, "/webhooks/stripe").body(upgrade.clone())).await, 400, "invalid_signature").await;
    assert_eq!(tier().await["tier"], "starter");
    // Several v1 signatures: one matching is enough. Found by the stored customer id.
    let good = warren::api::webhooks::sign(upgrade.as_bytes(), SECRET, now());
    let several = format!("{},v1={}", good, "ab".repeat(32));
    assert_eq!(send(post(upgrade.clone(), several)).await.status(), 200);
    assert_eq!(tier().await["tier"], "pro");

    // A replay changes nothing, even after the tier moved on.
    send(app.admin(Method::PATCH, "/tenants/acme").json(&json!({"tier": "enterprise"}))).await;
    let r = json_of(send(post(created.clone(), warren::api::webhooks::sign(created.as_bytes(), SECRET, now()))).await).await;
    assert_eq!(r["duplicate"], true, "{r}");
    assert_eq!(tier().await["tier"], "enterprise");

    let failed = stripe_event("evt_3", "invoice.payment_failed", json!({"customer": "cus_42"}));
    assert_eq!(send(post(failed.clone(), warren::api::webhooks::sign(failed.as_bytes(), SECRET, now()))).await.status(), 200);
    assert_eq!(tier().await["status"], "suspended");
    expect_error(send(app.api(Method::GET, "/tenant", &t.key)).await, 403, "tenant_suspended").await;
    let deleted = stripe_event("evt_4", "customer.subscription.deleted", json!({"customer": "cus_42", "status": "canceled"}));
    assert_eq!(send(post(deleted.clone(), warren::api::webhooks::sign(deleted.as_bytes(), SECRET, now()))).await.status(), 200);
    assert_eq!(tier().await["tier"], "free");
    let events = json_of(send(app.admin(Method::GET, "/tenants/acme/audit")).await).await;
    let stripe_events = events["events"].as_array().unwrap().iter().filter(|e| e["actor"] == "stripe").count();
    assert_eq!(stripe_events, 4, "{events}");
    app.stop().await;
}

#[tokio::test]
async fn plans_reload_on_sighup_and_the_cli_exports_meter_events() {
    let dir = tempfile::tempdir().unwrap();
    let plans = plans_file(dir.path(), &[]);
    let server = ServerProcess::start(dir.path(), &[("WARREN_PLANS", plans.display().to_string())]).await;
    let client = Client::new();
    let v = server.create_tenant("acme", "free").await;
    let key = v["api_key"].as_str().unwrap().to_string();
    let id = v["tenant"]["id"].as_str().unwrap().to_string();
    let burst = || async {
        let r = client.get(format!("{}/api/v1/tenant", server.addr)).bearer_auth(&key).send().await.unwrap();
        header(&r, "ratelimit-limit")
    };
    assert_eq!(burst().await, Some(100));
    plans_file(dir.path(), &[("burst = 100\n", "burst = 150\n")]);
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    let mut reloaded = false;
    for _ in 0..50 {
        if burst().await == Some(150) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "SIGHUP did not reload the plans");
    for _ in 0..3 {
        client.post(format!("{}/api/v1/search", server.addr)).bearer_auth(&key).json(&json!({"query": "x", "mode": "keyword"})).send().await.unwrap();
    }
    let mut server = server;
    assert!(server.terminate().success());
    // Map the tenant to a Stripe customer, then export with the CLI.
    let db = rusqlite::Connection::open(dir.path().join("control.db")).unwrap();
    db.execute("UPDATE tenants SET stripe_customer_id = 'cus_9' WHERE id = ?1", [&id]).unwrap();
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["usage", "export", "--period", &period, "--format", "stripe"])
        .env("WARREN_DATA_DIR", dir.path())
        .env("WARREN_PLANS", &plans)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let queries = lines.iter().find(|l| l["event_name"] == "warren_queries").expect("queries meter event");
    assert_eq!(queries["payload"]["stripe_customer_id"], "cus_9");
    assert_eq!(queries["payload"]["value"], "3");
    assert!(queries["identifier"].as_str().unwrap().contains(&period));
}
