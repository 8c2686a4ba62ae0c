//! The dashboards: the tenant portal and the operator console, driven in Debian's Chromium through
//! playwright-core (`tests/browser/dashboard.mjs`, installed by scripts/test.sh), plus the session
//! and CSRF rules over plain HTTP. Screenshots of every page at 1280×800 and 390×844 go to
//! `target/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

const XSS: &str = "<img src=x onerror=alert(1)>";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shots_dir() -> PathBuf {
    root().join("target/dashboard-screenshots")
}

/// Runs one scenario of the browser driver and answers what it saw. Fails (never skips) when
/// Chromium or the driver's packages are missing: scripts/test.sh installs both.
async fn browser(scenario: &str, args: Value) -> Value {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: scripts/test.sh installs Debian's chromium");
    let dir = root().join("tests/browser");
    assert!(dir.join("node_modules/playwright-core").exists(), "tests/browser/node_modules is missing: scripts/test.sh runs npm ci there");
    let out = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(scenario)
        .arg(args.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out).await.expect("the browser finished within 3 minutes").expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no result from the browser: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let v: Value = serde_json::from_str(line).expect("browser result is JSON");
    assert!(v.get("failure").is_none(), "the browser failed: {}\nstderr: {}", v["failure"], String::from_utf8_lossy(&out.stderr));
    v
}

async fn tenant_with_name(app: &TestApp, slug: &str, name: &str, tier: &str) -> String {
    let r = send(app.admin(Method::POST, "/tenants").json(&json!({"slug": slug, "name": name, "email": format!("owner@{slug}.test"), "tier": tier})))
        .await;
    assert_eq!(r.status(), 201);
    let r = send(app.admin(Method::POST, &format!("/tenants/{slug}/keys")).json(&json!({"name": "owner", "scopes": ["admin"]}))).await;
    assert_eq!(r.status(), 201);
    json_of(r).await["api_key"].as_str().expect("key").to_string()
}

async fn link(app: &TestApp, slug: &str) -> String {
    let r = send(app.admin(Method::POST, &format!("/tenants/{slug}/dashboard-link"))).await;
    assert_eq!(r.status(), 200);
    let v = json_of(r).await;
    let url = v["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&format!("http://{slug}.localhost:{}/dashboard/login?token=", app.port)), "{url}");
    url
}

fn metric(v: &Value, name: &str) -> String {
    v[name].as_str().unwrap_or_else(|| panic!("no figure {name} in {v}")).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_portal_and_console_work_in_a_real_browser() {
    let app = spawn_app().await;
    let name = format!("Acme {XSS}");
    let admin_key = tenant_with_name(&app, "acme", &name, "starter").await;
    tenant_with_name(&app, "other", "Other", "pro").await;

    // Some usage: a document whose path and text are attacker-controlled, and two searches.
    let doc = json!({"path": format!("{XSS}.md"), "content": format!("# {XSS}\n\nThe dashboards render every string as text, never as markup.")});
    assert_eq!(send(app.api(Method::POST, "/documents", &admin_key).json(&doc)).await.status(), 201);
    for q in ["dashboards", "markup"] {
        let r = send(app.api(Method::POST, "/search", &admin_key).json(&json!({"query": q, "mode": "keyword"}))).await;
        assert_eq!(r.status(), 200);
    }
    let usage = json_of(send(app.api(Method::GET, "/usage", &admin_key)).await).await;
    let url = link(&app, "acme").await;
    let _ = std::fs::remove_dir_all(shots_dir());

    let seen = browser(
        "tour",
        json!({
            "link": url,
            "shots": shots_dir(),
            "query": "markup",
            "key_name": format!("ui {XSS}"),
            "admin_key": admin_key,
            "tenant_origin": format!("http://acme.localhost:{}", app.port),
            "apex": app.addr,
            "admin_token": ADMIN,
        }),
    )
    .await;

    // Logged in by the link; every figure of the overview equals GET /api/v1/usage.
    assert_eq!(seen["after_link"], "/dashboard");
    let o = &seen["overview"];
    assert_eq!(metric(o, "tier"), usage["tier"].as_str().expect("tier"));
    for k in ["queries", "documents", "storage_bytes", "products"] {
        assert_eq!(metric(o, &format!("usage.{k}")), usage["usage"][k].to_string(), "usage.{k}: {o}");
        let limit = match &usage["limits"][k] {
            Value::Null => String::new(),
            v => v.to_string(),
        };
        assert_eq!(metric(o, &format!("limit.{k}")), limit, "limit.{k}");
        if let Some(p) = usage["percent_used"][k].as_f64() {
            let shown: f64 = metric(o, &format!("percent.{k}")).parse().expect("percent");
            assert!((shown - p).abs() < 0.051, "percent.{k}: {shown} against {p}");
        }
    }
    for k in ["api_calls", "tokens_embedded", "tokens_returned"] {
        assert_eq!(metric(o, &format!("usage.{k}")), usage["usage"][k].to_string(), "usage.{k}");
    }
    assert_eq!(metric(o, "usage.queries"), "2");
    // The chart's total is the requests of the last 30 days: this month's, as all happened today.
    assert_eq!(metric(o, "requests_per_day"), usage["usage"]["api_calls"].to_string());
    assert!(seen["onboarding_text"].as_str().expect("text").contains("Add your first document"));

    // Attacker-controlled strings render as text: no dialog, no injected image.
    assert!(seen["header_text"].as_str().expect("header").contains(&name), "{}", seen["header_text"]);
    assert_eq!(seen["search_paths"], json!([format!("{XSS}.md")]), "{seen}");
    assert_eq!(seen["injected_images"], 0);
    assert_eq!(seen["dialogs"], json!([]));
    assert_eq!(seen["errors"], json!([]), "console errors (CSP violations show here)");
    assert_eq!(metric(&seen["search"], "search.results"), "1");

    // A key made in the UI works over REST, and is the tenant's.
    let new_key = seen["new_key"].as_str().expect("new key");
    assert!(new_key.starts_with("wk_live_"));
    let r = send(app.api(Method::GET, "/tenant", new_key)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json_of(r).await["slug"], "acme");
    let keys = json_of(send(app.admin(Method::GET, "/tenants/acme/keys")).await).await;
    assert!(
        keys.to_string().contains(&format!("ui {XSS}").replace('<', "\\u003c").replace('>', "\\u003e"))
            || keys.to_string().contains(&format!("ui {XSS}")),
        "{keys}"
    );

    // Billing: the plan's price, this month's bill as the usage export has it, statements; the
    // starter plan has no audit log, so that page offers the upgrade.
    let row = json_of(send(app.admin(Method::GET, "/usage")).await).await["tenants"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["slug"] == "acme")
        .cloned()
        .expect("acme's row");
    assert_eq!(metric(&seen["billing"], "price_usd"), "49");
    let total: f64 = metric(&seen["billing"], "bill.total_usd").parse().expect("total");
    assert_eq!(total, row["total_usd"].as_f64().expect("total_usd"));
    assert_eq!(seen["statement_links"], 1, "a tenant of this month has one statement");
    assert_eq!(metric(&seen["backups"], "backup.enabled"), "false");
    assert!(seen["audit_text"].as_str().expect("audit").contains("part of a higher plan"), "{}", seen["audit_text"]);

    // Logout ends the session.
    assert_eq!(seen["after_logout"], "/dashboard/login");
    assert_eq!(seen["after_logout_visit"], "/dashboard/login");
    // Login with the admin key.
    assert_eq!(seen["key_login_start"], "/dashboard/login");
    assert_eq!(metric(&seen["key_login"], "tier"), "starter");

    // The operator's MRR is the usage export's total.
    assert_eq!(seen["console_start"], "/admin/login");
    let export = json_of(send(app.admin(Method::GET, "/usage")).await).await;
    let mrr: f64 = metric(&seen["console"], "mrr_usd").parse().expect("mrr");
    assert!((mrr - export["total_usd"].as_f64().expect("total")).abs() < 0.005, "{mrr} against {export}");
    assert_eq!(mrr, 49.0 + 99.0, "starter + pro list prices");
    assert_eq!(metric(&seen["console_tenants"], "tenant_count"), "2");
    assert_eq!(seen["console_errors"], json!([]));
    assert_eq!(metric(&seen["console_tenant"], "tenant.tier"), "starter");

    // No serious or critical accessibility violations.
    for page in ["axe_overview", "axe_keys", "axe_billing", "axe_recommendations", "axe_console"] {
        assert_eq!(seen[page], json!([]), "{page}");
    }

    // Every page was photographed at both sizes.
    for page in [
        "portal-overview",
        "portal-usage",
        "portal-search",
        "portal-keys",
        "portal-billing",
        "portal-backups",
        "portal-audit",
        "portal-recommendations",
        "portal-jobs",
        "portal-login",
        "console-overview",
        "console-tenants",
        "console-tenant",
    ] {
        for size in ["1280x800", "390x844"] {
            let f = shots_dir().join(format!("{page}-{size}.png"));
            let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} missing or empty", f.display());
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn onboarding_progress_advances_live_during_a_product_sync() {
    let app = spawn_app().await;
    let key = tenant_with_name(&app, "shop", "Shop", "starter").await;
    let total = 60;
    let r = send(app.api(Method::PUT, "/integrations/woocommerce/totals", &key).json(&json!({"products": total}))).await;
    assert_eq!(r.status(), 200);
    let url = link(&app, "shop").await;
    let ready = app.dir.path().join("page-ready");
    let watcher = tokio::spawn(browser("watch", json!({"link": url, "total": total, "timeout_ms": 90000, "ready": ready.display().to_string()})));
    // The sync starts once the page shows its first figure (on a loaded machine that can take a
    // while), then runs in batches slower than the page polls.
    let until = std::time::Instant::now() + Duration::from_secs(90);
    while !ready.exists() {
        assert!(std::time::Instant::now() < until, "the page did not load within 90 s");
        assert!(!watcher.is_finished(), "the browser ended before the page loaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for batch in 0..6 {
        let products: Vec<Value> =
            (0..10).map(|i| json!({"id": format!("p{}", batch * 10 + i), "name": format!("Product {}", batch * 10 + i)})).collect();
        let r = send(app.api(Method::POST, "/products", &key).json(&json!({"products": products}))).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let seen = watcher.await.expect("join");
    let values: Vec<u64> = seen["values"].as_array().expect("values").iter().map(|v| v.as_u64().expect("n")).collect();
    assert_eq!(values.first(), Some(&0), "{values:?}");
    assert_eq!(values.last(), Some(&(total as u64)), "{values:?}");
    assert!(values.len() >= 4, "the page showed intermediate progress: {values:?}");
    assert!(values.windows(2).all(|w| w[0] < w[1]), "progress only advances: {values:?}");
    assert_eq!(seen["done"], "true");
    app.stop().await;
}

/// `name=value` of the cookie `name` an answer sets.
pub(crate) fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
}

#[tokio::test]
async fn sessions_links_and_csrf_hold() {
    let (app, state) = spawn_state(None, |_| {}).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    tenant_with_name(&app, "alpha", "Alpha", "starter").await;
    tenant_with_name(&app, "beta", "Beta", "starter").await;
    let host = |slug: &str| format!("{slug}.localhost:{}", app.port);
    let get = |path: &str, slug: &str, cookie: Option<&str>| {
        let mut rb = client.get(format!("{}{path}", app.addr)).header("host", host(slug));
        if let Some(c) = cookie {
            rb = rb.header("cookie", c);
        }
        rb
    };

    // A link opens a session: HttpOnly, SameSite=Strict, with an expiry; the page is locked down.
    let url = link(&app, "alpha").await;
    let path = url.split_once(&format!(":{}", app.port)).expect("port").1.to_string();
    let r = send(get(&path, "alpha", None)).await;
    assert_eq!(r.status(), 200);
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("warren_portal="))
        .expect("cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/dashboard"] {
        assert!(set.contains(attr), "{set}");
    }
    let csp = r.headers()["content-security-policy"].to_str().expect("csp").to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let session = cookie_of(&r, "warren_portal").expect("session");

    // The link works once.
    let r = send(get(&path, "alpha", None)).await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.expect("body").contains("unknown, used or expired"));

    // The CLI mints the same kind of link (on the same data dir, while the server runs).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["tenant", "dashboard-link", "alpha"])
        .env("WARREN_DATA_DIR", app.dir.path())
        .output()
        .expect("cli");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("cli json");
    let cli_path =
        printed["url"].as_str().expect("url").split_once("/dashboard/login").map(|(_, rest)| format!("/dashboard/login{rest}")).expect("path");
    assert!(printed["expires_at"].is_string());
    let r = send(get(&cli_path, "alpha", None)).await;
    assert_eq!(r.status(), 200);
    assert!(cookie_of(&r, "warren_portal").is_some());

    // The session shows the portal on its own host, and the login page on another tenant's.
    let r = send(get("/dashboard", "alpha", Some(&session))).await;
    assert_eq!(r.status(), 200);
    let page = r.text().await.expect("page");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).expect("csrf field").to_string();
    let r = send(get("/dashboard", "beta", Some(&session))).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard/login");
    // Nor is it an operator session.
    let r = send(client.get(format!("{}/admin", app.addr)).header("cookie", session.replace("warren_portal", "warren_console"))).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/login");

    // A form post without its token, or with another, is 403; with it, it works.
    let post = |body: String| {
        client
            .post(format!("{}/dashboard/keys", app.addr))
            .header("host", host("alpha"))
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let r = send(post("name=k1&scope=read".into())).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.expect("body").contains("csrf_failed"));
    let r = send(post("name=k1&scope=read&csrf=forged".into())).await;
    assert_eq!(r.status(), 403);
    let r = send(post(format!("name=k1&scope=read&csrf={csrf}"))).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("page").contains("shown only once"));
    // The login form needs its pre-login token too.
    let r = send(
        client
            .post(format!("{}/dashboard/login", app.addr))
            .header("host", host("alpha"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("credential=wk_live_x"),
    )
    .await;
    assert_eq!(r.status(), 403);

    // A link of alpha's is refused on beta's host (and used up).
    let other = link(&app, "alpha").await;
    let other_path = other.split_once(&format!(":{}", app.port)).expect("port").1.to_string();
    let r = send(get(&other_path, "beta", None)).await;
    assert_eq!(r.status(), 403);
    assert!(cookie_of(&r, "warren_portal").is_none());

    // An expired link is refused; an expired session shows the login page.
    let late = link(&app, "alpha").await;
    let late_path = late.split_once(&format!(":{}", app.port)).expect("port").1.to_string();
    state.plans.clock.advance(chrono::Duration::minutes(16));
    let r = send(get(&late_path, "alpha", None)).await;
    assert_eq!(r.status(), 401);
    assert!(cookie_of(&r, "warren_portal").is_none());
    state.plans.clock.advance(chrono::Duration::hours(8));
    let r = send(get("/dashboard", "alpha", Some(&session))).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/dashboard/login");

    // The console: the admin token opens a session; its forms change the tier and suspend, with
    // the CSRF token, and not without it.
    let r = send(client.get(format!("{}/admin/login", app.addr))).await;
    let pre = cookie_of(&r, "warren_login").expect("pre-login cookie");
    let pre_token = pre.split_once('=').expect("kv").1.to_string();
    let form = |body: String, cookie: &str| {
        client
            .post(format!("{}/admin/login", app.addr))
            .header("cookie", cookie.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let r = send(form(format!("csrf={pre_token}&token=wrong-token-0123456789"), &pre)).await;
    assert_eq!(r.status(), 401);
    let r = send(form(format!("csrf={pre_token}&token={ADMIN}"), &pre)).await;
    assert_eq!(r.status(), 303);
    let console = cookie_of(&r, "warren_console").expect("console session");
    let page = send(client.get(format!("{}/admin/tenants/beta", app.addr)).header("cookie", &console)).await.text().await.expect("page");
    let ccsrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).expect("csrf").to_string();
    let act = |body: String| {
        client
            .post(format!("{}/admin/tenants/beta", app.addr))
            .header("cookie", &console)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    assert_eq!(send(act("action=tier&tier=pro".into())).await.status(), 403);
    assert_eq!(send(act(format!("csrf={ccsrf}&action=tier&tier=pro"))).await.status(), 200);
    assert_eq!(send(act(format!("csrf={ccsrf}&action=suspend"))).await.status(), 200);
    let beta = json_of(send(app.admin(Method::GET, "/tenants/beta")).await).await;
    assert_eq!((beta["tenant"]["tier"].as_str(), beta["tenant"]["status"].as_str()), (Some("pro"), Some("suspended")), "{beta}");

    // The audit log records each link minted.
    let audit = json_of(send(app.admin(Method::GET, "/tenants/alpha/audit")).await).await;
    assert_eq!(audit.to_string().matches("dashboard.link_created").count(), 4, "{audit}");
    app.stop().await;
}

/// Logs into the operator console with the admin token (through the login form and its pre-login
/// CSRF cookie); returns the session cookie.
async fn console_session(client: &reqwest::Client, app: &TestApp) -> String {
    let r = send(client.get(format!("{}/admin/login", app.addr))).await;
    let pre = cookie_of(&r, "warren_login").expect("pre-login cookie");
    let pre_token = pre.split_once('=').expect("kv").1.to_string();
    let r = send(
        client
            .post(format!("{}/admin/login", app.addr))
            .header("cookie", &pre)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={pre_token}&token={ADMIN}")),
    )
    .await;
    assert_eq!(r.status(), 303);
    cookie_of(&r, "warren_console").expect("console session")
}

/// Logs into `slug`'s portal with a one-time link; returns the tenant's host and the session cookie.
async fn portal_session(client: &reqwest::Client, app: &TestApp, slug: &str) -> (String, String) {
    let url = link(app, slug).await;
    let path = url.split_once(&format!(":{}", app.port)).expect("port").1.to_string();
    let host = format!("{slug}.localhost:{}", app.port);
    let r = send(client.get(format!("{}{path}", app.addr)).header("host", &host)).await;
    (host, cookie_of(&r, "warren_portal").expect("portal session"))
}

/// The `data-value` of every `data-metric` on a page.
fn figures(page: &str) -> std::collections::HashMap<String, String> {
    page.split("data-metric=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, after) = rest.split_once('"')?;
            let value = after.strip_prefix(" data-value=\"")?.split('"').next()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn the_console_shows_traffic_trials_churn_feature_usage_and_backup_lag() {
    let replica = tempfile::tempdir().expect("replica dir");
    let url = format!("file://{}", replica.path().display());
    // Backups to a directory, shipped only every 10 minutes: a write stays behind its replica.
    let (app, state) = spawn_state(None, move |c| {
        c.backup_url = Some(url);
        c.backup.sync_interval_ms = 600_000;
    })
    .await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let alpha = tenant_with_name(&app, "alpha", "Alpha", "starter").await;
    tenant_with_name(&app, "beta", "Beta", "pro").await;
    tenant_with_name(&app, "delta", "Delta", "free").await;
    let r = send(
        app.admin(Method::POST, "/tenants")
            .json(&json!({"slug": "gamma", "name": "Gamma", "email": "g@gamma.test", "tier": "starter", "status": "trial", "trial_days": 90})),
    )
    .await;
    assert_eq!(r.status(), 201);

    // A month later: one trial converts, one tenant is deleted and one cancelled.
    state.plans.clock.advance(chrono::Duration::days(32));
    let r = send(app.admin(Method::PATCH, "/tenants/gamma").json(&json!({"status": "active"}))).await;
    assert_eq!(r.status(), 200);
    let r = send(app.admin(Method::PATCH, "/tenants/beta").json(&json!({"status": "cancelled"}))).await;
    assert_eq!(r.status(), 200);
    let r = send(app.admin(Method::DELETE, "/tenants/delta")).await;
    assert_eq!(r.status(), 204);

    // The console.
    let console = console_session(&client, &app).await;
    let overview = || async {
        let r = send(client.get(format!("{}/admin", app.addr)).header("cookie", &console)).await;
        assert_eq!(r.status(), 200);
        figures(&r.text().await.expect("page"))
    };

    // The console also serves on admin.<base domain>.
    let r = send(client.get(format!("{}/admin", app.addr)).header("host", format!("admin.localhost:{}", app.port)).header("cookie", &console)).await;
    assert_eq!(r.status(), 200);
    assert!(figures(&r.text().await.expect("page")).contains_key("mrr_usd"));

    let before = overview().await;
    assert_eq!(before["lifecycle.trials_converted"], "1");
    assert_eq!(before["lifecycle.trials_expired"], "0");
    assert_eq!(before["lifecycle.conversion_percent"], "100.0");
    assert_eq!(before["lifecycle.churned"], "2", "beta cancelled, delta deleted");
    assert_eq!(before["lifecycle.churn_percent"], "50.00", "2 of the 4 tenants there when the month began");

    // Traffic: 5 answered calls, 3 refused ones, 2 searches; probes and console pages do not count.
    for _ in 0..5 {
        assert_eq!(send(app.api(Method::GET, "/tenant", &alpha)).await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(send(app.api(Method::GET, "/tenant", "wk_not_a_key")).await.status(), 401);
    }
    for q in ["first", "second"] {
        let r = send(app.api(Method::POST, "/search", &alpha).json(&json!({"query": q, "mode": "keyword"}))).await;
        assert_eq!(r.status(), 200);
    }
    let r = send(app.api(Method::POST, "/documents", &alpha).json(&json!({"path": "a.md", "content": "Behind its replica."}))).await;
    assert!(r.status().is_success(), "{}", r.status());
    for p in ["/health", "/metrics"] {
        send(app.req(Method::GET, p)).await;
    }
    let after = overview().await;
    let n = |m: &std::collections::HashMap<String, String>, k: &str| -> u64 { m[k].parse().unwrap_or_else(|_| panic!("{k}: {}", m[k])) };
    assert_eq!(n(&after, "traffic.requests") - n(&before, "traffic.requests"), 5 + 3 + 2 + 1);
    assert_eq!(n(&after, "traffic.client_errors") - n(&before, "traffic.client_errors"), 3);
    assert_eq!(n(&after, "traffic.server_errors"), 0);
    assert_eq!(after["traffic-per-minute"], after["traffic.requests"], "the chart's minutes add up to the hour");
    let p50: f64 = after["traffic.p50_ms"].parse().expect("p50");
    let p99: f64 = after["traffic.p99_ms"].parse().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{p50} {p99}");
    assert!(after["traffic.rps"].parse::<f64>().expect("rps") > 0.0);

    // Feature usage this month, per tier: alpha's two searches and one write, under starter.
    assert_eq!(after["heatmap.starter.search"], "2");
    assert_eq!(after["heatmap.starter.document_writes"], "1");
    assert_eq!(after["heatmap.pro.search"], "0");
    assert_eq!(after["heatmap.enterprise.recommendations"], "0");

    // alpha's write waits for the next ship: it is among the replicas furthest behind.
    let lag: f64 = after.get("backup_lag.alpha").unwrap_or_else(|| panic!("alpha not listed: {after:?}")).parse().expect("lag");
    assert!(lag >= 0.0);
    assert!(!after.contains_key("backup_lag.off"));
    app.stop().await;
}

/// What each tenant costs is measured where the work happens (embedding, search, training CPU;
/// backup PUTs), recorded with its usage, hidden from the tenant, exported to the operator and
/// priced in the console.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn costs_are_measured_per_tenant_and_priced_in_the_console() {
    let model = model_dir();
    assert!(model.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", model.display());
    let replica = tempfile::tempdir().expect("replica dir");
    let url = format!("file://{}", replica.path().display());
    let (app, _state) = spawn_state(None, move |c| {
        c.model_dir = model;
        c.backup_url = Some(url);
        c.backup.sync_interval_ms = 100;
        c.recs.debounce_ms = 100;
        c.recs.max_delay_secs = 2;
    })
    .await;
    let alpha = tenant_with_name(&app, "alpha", "Alpha", "pro").await;
    let beta = tenant_with_name(&app, "beta", "Beta", "pro").await;

    // alpha works: documents (embedded), searches and an assembly, a catalog and a training.
    for i in 0..3 {
        let r = send(
            app.api(Method::POST, "/documents", &alpha)
                .json(&json!({"path": format!("d{i}.md"), "content": format!("Glaciers and volcanoes, part {i}. The ice moves slowly downhill.")})),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    for q in ["glaciers", "volcanoes", "ice"] {
        let r = send(app.api(Method::POST, "/search", &alpha).json(&json!({"query": q, "mode": "hybrid"}))).await;
        assert_eq!(r.status(), 200);
    }
    let r = send(app.api(Method::POST, "/context/assemble", &alpha).json(&json!({"query": "how does ice move", "max_tokens": 200}))).await;
    assert_eq!(r.status(), 200);
    let products: Vec<Value> =
        (1..=6).map(|k| json!({"id": format!("p{k}"), "name": format!("Kitchen knife model {k}"), "categories": ["Kitchen"]})).collect();
    assert!(send(app.api(Method::POST, "/products", &alpha).json(&json!({"products": products}))).await.status().is_success());
    let orders: Vec<Value> = (0..12)
        .flat_map(|u| {
            (0..2).map(move |n| {
                json!({"id": format!("o{u}-{n}"), "customer_id": format!("c{u}"), "created_at": 1_700_000_000 + u * 100 + n * 10,
                    "lines": [{"product_id": format!("p{}", (u + n) % 6 + 1)}]})
            })
        })
        .collect();
    assert!(send(app.api(Method::POST, "/orders", &alpha).json(&json!({"orders": orders}))).await.status().is_success());
    assert!(send(app.api(Method::POST, "/recommendations/train", &alpha)).await.status().is_success());
    let until = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = json_of(send(app.api(Method::GET, "/recommendations/status", &alpha)).await).await;
        if s["model_version"].as_u64().unwrap_or(0) >= 1 && s["training"] == false && s["pending_changes"] == false {
            break;
        }
        assert!(std::time::Instant::now() < until, "no model in time: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // beta only reads.
    assert_eq!(send(app.api(Method::GET, "/documents", &beta)).await.status(), 200);

    // The operator's export, once alpha's backup has shipped.
    let row = |v: &Value, slug: &str| v["tenants"].as_array().expect("tenants").iter().find(|r| r["slug"] == slug).cloned().expect("row");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let export = loop {
        let v = json_of(send(app.admin(Method::GET, "/usage")).await).await;
        if row(&v, "alpha")["store_puts"].as_u64().unwrap_or(0) >= 1 {
            break v;
        }
        assert!(std::time::Instant::now() < until, "alpha's backup never shipped: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = row(&export, "alpha");
    let b = row(&export, "beta");
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    for k in ["cpu_seconds_embed", "cpu_seconds_search", "cpu_seconds_train", "store_put_bytes"] {
        assert!(f(&a, k) > 0.0, "alpha's {k}: {a}");
    }
    for k in ["cpu_seconds_embed", "cpu_seconds_search", "cpu_seconds_train"] {
        assert_eq!(f(&b, k), 0.0, "beta did no such work: {b}");
    }
    assert!(f(&a, "cpu_seconds_embed") < 120.0 && f(&a, "cpu_seconds_search") < 30.0, "CPU seconds, not microseconds: {a}");

    // The tenant is not shown its cost figures.
    let mine = json_of(send(app.api(Method::GET, "/usage", &alpha)).await).await;
    assert!(mine["usage"].get("cpu_embed_us").is_none() && mine["usage"].get("store_put").is_none(), "{mine}");
    assert!(mine["usage"].get("search").is_some());

    // The console prices them at the configured unit prices.
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let console = console_session(&client, &app).await;
    let page = send(client.get(format!("{}/admin", app.addr)).header("cookie", &console)).await.text().await.expect("page");
    let seen = figures(&page);
    let g = |k: &str| -> f64 { seen.get(k).unwrap_or_else(|| panic!("no {k} on the console")).parse().expect("number") };
    for k in ["cpu_seconds_embed", "cpu_seconds_search", "cpu_seconds_train"] {
        assert!((g(&format!("cost.alpha.{k}")) - f(&a, k)).abs() < 1e-9, "{k}: console against export");
    }
    let cpu = g("cost.alpha.cpu_seconds_embed") + g("cost.alpha.cpu_seconds_search") + g("cost.alpha.cpu_seconds_train");
    let storage = a["storage_bytes"].as_f64().unwrap_or(0.0);
    let want = cpu / 3600.0 * 0.04 + storage / 1e9 * 0.10 + g("cost.alpha.store_puts") / 1000.0 * 0.005;
    assert!((g("cost.alpha.estimated_usd") - want).abs() < 1e-6, "estimated {} against {want}", g("cost.alpha.estimated_usd"));
    assert!(!seen.contains_key("cost.beta.cpu_seconds_embed") || g("cost.alpha.estimated_usd") >= g("cost.beta.estimated_usd"));
    app.stop().await;
}

/// The portal's overview and billing pages prompt an upgrade once a limit is at 80 % or more, and
/// not before.
#[tokio::test]
async fn an_upgrade_prompt_appears_at_eighty_percent_of_a_limit() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let key = tenant_with_name(&app, "small", "Small", "starter").await;
    let r = send(app.admin(Method::PUT, "/tenants/small/overrides").json(&json!({"queries_per_month": 10}))).await;
    assert!(r.status().is_success(), "{}", r.status());
    let (host, session) = portal_session(&client, &app, "small").await;
    let page = |p: &'static str| {
        let (client, session, host, addr) = (client.clone(), session.clone(), host.clone(), app.addr.clone());
        async move {
            let r = send(client.get(format!("{addr}{p}")).header("host", host).header("cookie", session)).await;
            assert_eq!(r.status(), 200);
            figures(&r.text().await.expect("page"))
        }
    };
    let search = || send(app.api(Method::POST, "/search", &key).json(&json!({"query": "x", "mode": "keyword"})));
    for _ in 0..7 {
        assert_eq!(search().await.status(), 200);
    }
    for p in ["/dashboard", "/dashboard/billing"] {
        assert!(!page(p).await.contains_key("upgrade_prompt"), "{p} prompts at 70 %");
    }
    assert_eq!(search().await.status(), 200);
    for p in ["/dashboard", "/dashboard/billing"] {
        let seen = page(p).await;
        let near = seen.get("upgrade_prompt").unwrap_or_else(|| panic!("{p} has no prompt at 80 %: {seen:?}"));
        assert!(near.contains("queries"), "{p}: {near}");
    }
    app.stop().await;
}

/// A large document becomes a background job; the portal's Jobs page shows it with its progress
/// (and marks itself live while it runs), and shows it done with every chunk embedded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_portal_shows_background_jobs_and_their_progress() {
    let model = model_dir();
    assert!(model.join("model.safetensors").exists(), "model missing in {}: run scripts/fetch-model.sh", model.display());
    let (app, _state) = spawn_state(None, move |c| {
        c.model_dir = model;
        c.docs.job_threshold_chunks = 8;
    })
    .await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let key = tenant_with_name(&app, "jobs", "Jobs", "pro").await;
    let (host, session) = portal_session(&client, &app, "jobs").await;
    let jobs_page = || {
        let (client, session, host, addr) = (client.clone(), session.clone(), host.clone(), app.addr.clone());
        async move {
            let r = send(client.get(format!("{addr}/dashboard/jobs")).header("host", host).header("cookie", session)).await;
            assert_eq!(r.status(), 200);
            r.text().await.expect("page")
        }
    };
    assert!(jobs_page().await.contains("data-metric=\"jobs.none\""), "no jobs yet");

    let content: String = (0..48)
        .map(|i| format!("Section {i} on tides: ") + &"the tides of part {i} are described here in some detail. ".repeat(25) + "\n\n")
        .collect();
    let r = send(app.api(Method::POST, "/documents", &key).json(&json!({"path": "big.md", "content": content}))).await;
    assert_eq!(r.status(), 202);
    let job = json_of(r).await;
    let id = job["id"].as_str().expect("id").to_string();
    let chunks = job["chunks"].as_u64().expect("chunks");

    let until = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen_live = false;
    loop {
        let page = jobs_page().await;
        let f = figures(&page);
        let status = f.get(&format!("job.{id}.status")).unwrap_or_else(|| panic!("job {id} not on the page")).clone();
        assert_eq!(f[&format!("job.{id}.chunks")], chunks.to_string());
        let embedded: u64 = f[&format!("job.{id}.chunks_embedded")].parse().expect("embedded");
        assert!(embedded <= chunks);
        if matches!(status.as_str(), "queued" | "running") {
            assert!(page.contains("data-live-jobs"), "a running job makes the page live");
            seen_live = true;
        } else {
            assert_eq!(status, "succeeded");
            assert_eq!(embedded, chunks);
            assert!(!page.contains("data-live-jobs"), "a finished page stops reloading");
            break;
        }
        assert!(std::time::Instant::now() < until, "job {id} did not finish: {f:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_live, "the page showed the job before it finished");
    app.stop().await;
}

/// Usage is counted per API key: each key's calls and queries appear on its own row (and in the
/// per-key CSV), and what the portal's own playground ran appears on the row without a key.
#[tokio::test]
async fn usage_is_shown_per_api_key() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    tenant_with_name(&app, "keyed", "Keyed", "pro").await;
    let mut keys = Vec::new();
    for name in ["agent", "=cmd|' /C calc'!A0"] {
        let r = send(app.admin(Method::POST, "/tenants/keyed/keys").json(&json!({"name": name, "scopes": ["read"]}))).await;
        assert_eq!(r.status(), 201);
        let v = json_of(r).await;
        keys.push((v["key"]["id"].as_str().expect("id").to_string(), v["api_key"].as_str().expect("key").to_string()));
    }
    let search = |key: &str| send(app.api(Method::POST, "/search", key).json(&json!({"query": "tides", "mode": "keyword"})));
    for _ in 0..3 {
        assert_eq!(search(&keys[0].1).await.status(), 200);
    }
    assert_eq!(search(&keys[1].1).await.status(), 200);
    assert_eq!(send(app.api(Method::GET, "/documents", &keys[1].1)).await.status(), 200);

    let (host, session) = portal_session(&client, &app, "keyed").await;
    let get = |path: &str| client.get(format!("{}{path}", app.addr)).header("host", &host).header("cookie", &session);
    // The playground's search and context preview: two queries made without a key.
    assert_eq!(send(get("/dashboard/search?q=tides&mode=keyword&budget=100")).await.status(), 200);

    let r = send(get("/dashboard/usage")).await;
    assert_eq!(r.status(), 200);
    let f = figures(&r.text().await.expect("page"));
    let (a, b) = (&keys[0].0, &keys[1].0);
    let fig = |id: &str, what: &str| f.get(&format!("key.{id}.{what}")).cloned().unwrap_or_else(|| panic!("no key.{id}.{what} in {f:?}"));
    assert_eq!((fig(a, "api_calls"), fig(a, "queries")), ("3".into(), "3".into()));
    assert_eq!((fig(b, "api_calls"), fig(b, "queries")), ("2".into(), "1".into()));
    assert_eq!(fig("none", "queries"), "2");

    let r = send(get("/dashboard/usage-keys.csv")).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-disposition"].to_str().expect("cd").contains("usage-keys-keyed.csv"));
    let csv = r.text().await.expect("csv");
    let row = |id: &str| csv.lines().find(|l| l.starts_with(id)).unwrap_or_else(|| panic!("no row for {id}:\n{csv}")).to_string();
    assert!(row(a).contains(",\"agent\",false,3,3,"), "{csv}");
    // A key name that looks like a spreadsheet formula is quoted and defused.
    assert!(row(b).contains(",\"'=cmd|' /C calc'!A0\",false,2,1,"), "{csv}");
    app.stop().await;
}

/// Where JWTs are configured, a JWT with the admin scope opens a portal session (through the
/// login form and its CSRF token); one without the admin scope, or of another tenant, does not.
#[tokio::test]
async fn a_jwt_logs_into_the_portal() {
    const SECRET: &str = "a-test-secret-of-enough-length-0123";
    let (app, _state) = spawn_state(None, |c| c.jwt.hs256_secret = Some(SECRET.into())).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    tenant_with_name(&app, "jwt-a", "A", "starter").await;
    tenant_with_name(&app, "jwt-b", "B", "starter").await;
    let jwt = |tenant: &str, scopes: &[&str]| {
        let claims = json!({"tenant": tenant, "exp": chrono::Utc::now().timestamp() + 600, "scopes": scopes});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("jwt")
    };
    let host = format!("jwt-a.localhost:{}", app.port);
    let login = |credential: String| {
        let (client, host, addr) = (client.clone(), host.clone(), app.addr.clone());
        async move {
            let r = send(client.get(format!("{addr}/dashboard/login")).header("host", &host)).await;
            let pre = cookie_of(&r, "warren_login").expect("pre-login cookie");
            let token = pre.split_once('=').expect("kv").1.to_string();
            send(
                client
                    .post(format!("{addr}/dashboard/login"))
                    .header("host", &host)
                    .header("cookie", &pre)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!("csrf={token}&credential={credential}")),
            )
            .await
        }
    };
    let r = login(jwt("jwt-a", &["read"])).await;
    assert_eq!(r.status(), 403, "a JWT without the admin scope");
    assert!(cookie_of(&r, "warren_portal").is_none());
    let r = login(jwt("jwt-b", &["admin"])).await;
    assert!(r.status().is_client_error(), "another tenant's JWT on this host: {}", r.status());
    assert!(cookie_of(&r, "warren_portal").is_none());
    let r = login(jwt("jwt-a", &["admin"])).await;
    assert_eq!(r.status(), 303);
    let session = cookie_of(&r, "warren_portal").filter(|c| c.len() > "warren_portal=".len()).expect("session");
    let r = send(client.get(format!("{}/dashboard", app.addr)).header("host", &host).header("cookie", &session)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("page").contains("jwt-a"));
    app.stop().await;
}

/// The Recommendations page: the model's status (equal to `GET /recommendations/status`), training
/// from the page, a preview equal to the REST answer, and attribution equal to
/// `GET /recommendations/attribution`: only a purchase of a product the same customer clicked as a
/// recommendation within the window counts. A plan without recommendations gets an upgrade prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_recommendations_page_shows_the_model_a_preview_and_attribution() {
    let app = spawn_app().await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let key = tenant_with_name(&app, "shop", "Shop", "pro").await;
    let products: Vec<Value> =
        (1..=6).map(|i| json!({"id": format!("p{i}"), "name": format!("Product {i}"), "price": 10.0 * i as f64, "categories": ["c"]})).collect();
    assert_eq!(send(app.api(Method::POST, "/products", &key).json(&json!({"products": products}))).await.status(), 200);
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    let order = |id: &str, customer: &str, at: i64, lines: Value| json!({"id": id, "customer_id": customer, "created_at": at, "lines": lines});
    let mut orders = Vec::new();
    for c in 0..12 {
        orders.push(order(
            &format!("h{c}"),
            &format!("c{c}"),
            now - 20 * day,
            json!([{"product_id": "p1"}, {"product_id": format!("p{}", 2 + c % 4)}]),
        ));
    }
    // c1 clicked p2 a day before buying two of it (and p6, not clicked): attributed, revenue 2 × 20.
    orders.push(order("a1", "c1", now - 3600, json!([{"product_id": "p2", "quantity": 2, "price": 20.0}, {"product_id": "p6", "price": 60.0}])));
    // c2 bought p3 without a click; c3 clicked p4 ten days before buying it (outside 7 days).
    orders.push(order("n1", "c2", now - 3600, json!([{"product_id": "p3", "price": 30.0}])));
    orders.push(order("n2", "c3", now - 3600, json!([{"product_id": "p4", "price": 40.0}])));
    assert_eq!(send(app.api(Method::POST, "/orders", &key).json(&json!({"orders": orders}))).await.status(), 200);
    let events = json!({"events": [
        {"customer_id": "c1", "product_id": "p2", "type": "rec_click", "at": now - day},
        {"customer_id": "c3", "product_id": "p4", "type": "rec_click", "at": now - 10 * day - 3600},
        {"session_id": "s9", "product_id": "p5", "type": "rec_click", "at": now - 7200},
        {"customer_id": "c2", "product_id": "p3", "type": "view", "at": now - day},
    ]});
    assert_eq!(send(app.api(Method::POST, "/events", &key).json(&events)).await.status(), 200);
    for _ in 0..4 {
        assert_eq!(send(app.api(Method::GET, "/recommendations/trending", &key)).await.status(), 200);
    }

    let (host, session) = portal_session(&client, &app, "shop").await;
    let get = |path: String| client.get(format!("{}{path}", app.addr)).header("host", &host).header("cookie", &session);
    // Train from the page, with its CSRF token, and wait for the model.
    let page = send(get("/dashboard/recommendations".into())).await.text().await.expect("page");
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|s| s.split('"').next()).expect("csrf").to_string();
    let r = send(
        client
            .post(format!("{}/dashboard/recommendations", app.addr))
            .header("host", &host)
            .header("cookie", &session)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}")),
    )
    .await;
    assert_eq!(r.status(), 303);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = json_of(send(app.api(Method::GET, "/recommendations/status", &key)).await).await;
        if s["training"] == false && s["model_version"].as_u64().unwrap_or(0) > 0 {
            break s;
        }
        assert!(std::time::Instant::now() < until, "no model: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let attr = json_of(send(app.api(Method::GET, "/recommendations/attribution", &key)).await).await;
    assert_eq!(
        (&attr["clicks"], &attr["customers_clicked"], &attr["attributed_orders"], &attr["attributed_revenue"], &attr["recommendations_served"]),
        (&json!(3), &json!(2), &json!(1), &json!(40.0), &json!(4)),
        "{attr}"
    );
    let r = send(get("/dashboard/recommendations".into())).await;
    assert_eq!(r.status(), 200);
    let f = figures(&r.text().await.expect("page"));
    assert_eq!(f["recs.state"], "trained");
    assert_eq!(f["recs.model_version"], status["model_version"].to_string());
    assert_eq!(f["recs.products"], "6");
    assert_eq!(f["recs.orders"], status["data"]["orders"].to_string());
    for (metric, field) in [("clicks", "clicks"), ("orders", "attributed_orders"), ("recommendations_served", "recommendations_served")] {
        assert_eq!(f[&format!("attribution.{metric}")], attr[field].to_string(), "{metric}");
    }
    assert_eq!(f["attribution.revenue"].parse::<f64>().expect("revenue"), 40.0);
    assert_eq!(f["attribution.click_through_rate"].parse::<f64>().expect("ctr"), 0.75);

    // The preview is the REST answer, in its order.
    let rest = json_of(send(app.api(Method::GET, "/recommendations?customer_id=c5&limit=10", &key)).await).await;
    let want: Vec<&str> = rest["results"].as_array().expect("results").iter().map(|r| r["product_id"].as_str().expect("id")).collect();
    assert!(!want.is_empty(), "{rest}");
    let page = send(get("/dashboard/recommendations?customer=c5".into())).await.text().await.expect("page");
    let shown: Vec<&str> = page.split("data-product=\"").skip(1).filter_map(|s| s.split('"').next()).collect();
    assert_eq!(shown, want);
    assert_eq!(figures(&page)["recs.preview"], want.len().to_string());
    let page = send(get("/dashboard/recommendations?product=p1".into())).await.text().await.expect("page");
    assert!(page.contains("Related to product p1") && page.contains("data-product=\""), "related preview");
    // Both previews were served (and metered) as recommendations.
    let attr = json_of(send(app.api(Method::GET, "/recommendations/attribution", &key)).await).await;
    assert_eq!(attr["recommendations_served"], 7, "{attr}");

    // A bad period is a 400; a plan without recommendations sees an upgrade prompt.
    let r = send(app.api(Method::GET, "/recommendations/attribution?days=0", &key)).await;
    assert_eq!(r.status(), 400);
    tenant_with_name(&app, "freebie", "Free", "free").await;
    let (fhost, fsession) = portal_session(&client, &app, "freebie").await;
    let r = send(client.get(format!("{}/dashboard/recommendations", app.addr)).header("host", &fhost).header("cookie", &fsession)).await;
    assert_eq!(r.status(), 200);
    assert!(figures(&r.text().await.expect("page")).contains_key("recs.upgrade"));
    app.stop().await;
}
