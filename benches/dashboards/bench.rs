//! Dashboard render times (issue 14; see docs/BENCHMARKS.md).
//!
//! `dashboard_bench [REQUESTS=500] [TENANTS=10000]` starts the real server in-process on a temporary
//! data dir and measures, over HTTP on loopback, one request at a time:
//! - **portal overview** (`GET /dashboard`, session cookie) of a tenant with 90 days of usage
//!   history (24 flushes a day of every usage kind, as the meter writes them), side by side with its
//!   peer, the JSON `GET /api/v1/usage` of the same tenant, which reads the same month;
//! - **operator overview** (`GET /admin`, console session) with TENANTS tenants (rows written
//!   straight into control.db, each with this month's usage), side by side with its peer, the
//!   admin usage export `GET /admin/v1/usage`, which prices the same month for every tenant.
//!
//! Prints p50, p99 and max per endpoint, and the statuses seen: only 200s are counted.

use std::time::{Duration, Instant};

use rusqlite::params;
use warren::config::Config;

const ADMIN: &str = "bench-admin-token-0123456789";

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure(client: &reqwest::Client, label: &str, n: usize, mk: impl Fn() -> reqwest::RequestBuilder) {
    let mut ok = Vec::with_capacity(n);
    let mut other = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..n.min(20) {
        let _ = mk().send().await.and_then(|r| r.error_for_status()).map(|_| ());
        // warm up
    }
    for _ in 0..n {
        let t = Instant::now();
        let r = mk().send().await.expect("send");
        let status = r.status().as_u16();
        let _ = r.bytes().await.expect("body");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if status == 200 {
            ok.push(ms);
        } else {
            *other.entry(status).or_default() += 1;
        }
    }
    let _ = client;
    ok.sort_by(f64::total_cmp);
    if ok.is_empty() {
        println!("{label:<42} no 200s; other statuses {other:?}");
        return;
    }
    println!(
        "{label:<42} 200s {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  other statuses {other:?}",
        ok.len(),
        pct(&ok, 0.5),
        pct(&ok, 0.99),
        ok[ok.len() - 1]
    );
}

fn cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or_default().to_string())
        .expect("session cookie")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(500);
    let tenants: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(dir.path());
    config.admin_token = Some(ADMIN.into());
    config.model_dir = dir.path().join("no-model");
    // A first run creates control.db and the portal's tenant; the history is written while no
    // server runs, and the measured server starts on it, as after a restart.
    let app = warren::App::build(config.clone()).await?;
    let port = app.port();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(60)).build()?;

    // The portal's tenant, with 90 days of history; enterprise, so the measured requests never meet
    // its rate limit.
    let r = client
        .post(format!("{base}/admin/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"slug": "acme", "name": "Acme", "email": "a@acme.test", "tier": "enterprise"}))
        .send()
        .await?;
    let v: serde_json::Value = r.json().await?;
    let key = v["api_key"].as_str().expect("key").to_string();
    let acme = v["tenant"]["id"].as_str().expect("id").to_string();
    stop.cancel();
    server.await??;
    let now = chrono::Utc::now();
    {
        let mut c = rusqlite::Connection::open(dir.path().join("control.db"))?;
        c.busy_timeout(Duration::from_secs(10))?;
        let tx = c.transaction()?;
        {
            let mut st = tx.prepare("INSERT INTO usage_events (tenant_id, kind, count, tokens, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for day in 0..90 {
                for hour in 0..24 {
                    let at = warren::clock::ts(now - chrono::Duration::days(day) - chrono::Duration::hours(hour));
                    for kind in ["api_call", "search", "assemble", "embedding", "document_write", "recommendation"] {
                        st.execute(params![acme, kind, 7, 900, at])?;
                    }
                }
            }
            // The operator's tenants, each with this month's usage.
            let mut t = tx.prepare(
                "INSERT INTO tenants (id, slug, name, email, tier, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )?;
            let tiers = ["free", "free", "free", "starter", "starter", "pro", "enterprise"];
            let statuses = ["active", "active", "active", "trial", "suspended"];
            let at = warren::clock::ts(now);
            for i in 0..tenants {
                let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
                t.execute(params![
                    id,
                    format!("t{i:05}"),
                    format!("Tenant {i}"),
                    format!("o{i}@t.test"),
                    tiers[i % tiers.len()],
                    statuses[i % statuses.len()],
                    at
                ])?;
                st.execute(params![id, "search", (i % 500) as i64, 0, at])?;
                st.execute(params![id, "api_call", (i % 700) as i64, 0, at])?;
            }
        }
        tx.commit()?;
    }

    let app = warren::App::build(config).await?;
    let port = app.port();
    let stop = app.shutdown_token();
    let server = tokio::spawn(app.run_until_stopped());
    let base = format!("http://127.0.0.1:{port}");
    let r = client.post(format!("{base}/admin/v1/tenants/acme/dashboard-link")).bearer_auth(ADMIN).send().await?;
    let link: serde_json::Value = r.json().await?;
    let path = link["url"].as_str().expect("url").split_once(&format!(":{port}")).expect("port").1.to_string();
    let host = format!("acme.localhost:{port}");
    let r = client.get(format!("{base}{path}")).header("host", &host).send().await?;
    let portal = cookie(&r, "warren_portal");
    let form_token = {
        let r = client.get(format!("{base}/admin/login")).send().await?;
        let c = cookie(&r, "warren_login");
        (c.clone(), c.split_once('=').expect("cookie").1.to_string())
    };
    let r = client
        .post(format!("{base}/admin/login"))
        .header("cookie", &form_token.0)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}&token={ADMIN}", form_token.1))
        .send()
        .await?;
    let console = cookie(&r, "warren_console");

    println!("== {n} sequential requests per endpoint; portal tenant: 90 days of usage ({} rows); operator: {} tenants", 90 * 24 * 6, tenants + 1);
    measure(&client, "portal overview   GET /dashboard", n, || {
        client.get(format!("{base}/dashboard")).header("host", &host).header("cookie", &portal)
    })
    .await;
    measure(&client, "peer: JSON usage  GET /api/v1/usage", n, || client.get(format!("{base}/api/v1/usage")).header("host", &host).bearer_auth(&key))
        .await;
    let m = n.min(200);
    measure(&client, "operator overview GET /admin", m, || client.get(format!("{base}/admin")).header("cookie", &console)).await;
    measure(&client, "peer: usage export GET /admin/v1/usage", m, || client.get(format!("{base}/admin/v1/usage")).bearer_auth(ADMIN)).await;
    // The console saw the month the export prices: its MRR is the export's total.
    let page = client.get(format!("{base}/admin")).header("cookie", &console).send().await?.text().await?;
    let mrr: f64 = page
        .split("data-metric=\"mrr_usd\" data-value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|v| v.parse().ok())
        .expect("mrr_usd on the console");
    let export: serde_json::Value = client.get(format!("{base}/admin/v1/usage")).bearer_auth(ADMIN).send().await?.json().await?;
    let total = export["total_usd"].as_f64().expect("total_usd");
    println!("== console MRR {mrr:.2} USD; export total {total:.2} USD");
    assert!((mrr - total).abs() < 0.01, "the console's MRR differs from the export's total");
    stop.cancel();
    server.await??;
    Ok(())
}
