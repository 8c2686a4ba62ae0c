//! Cold-open latency of a tenant handle and RSS per open tenant, measured in-process through the
//! real registry (the same code path a request takes after authentication).
//!
//! cargo run --release --example tenant_open -- [TENANTS=1000] [CAP=256]

use std::time::Instant;

use warren::config::Config;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (n, cap) = (args.first().copied().unwrap_or(1000), args.get(1).copied().unwrap_or(256));
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_tests(dir.path());
    config.admin_token = Some("bench-admin-token-0123456789".into());
    config.max_open_tenants = cap as u64;
    config.model_dir = dir.path().join("no-model");
    let app = warren::App::build(config).await?;
    let state = app.state().clone();
    let ops = warren::services::Operator::live(&state, warren::services::Actor::Admin);
    // The benchmark acts as the local operator: that proof lets it lease any tenant's storage.
    let operator = warren::auth::AdminProof::local_operator();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let req = serde_json::from_value(serde_json::json!({"slug": format!("bench{i:05}"), "name": "b", "email": "b@b.co"}))?;
        let created = ops.create_tenant(req).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        ids.push(created.tenant.id);
    }
    // Cold opens: every tenant once (the cache holds `cap`, so most of these open and evict).
    let rss0 = rss_kib();
    let mut times = Vec::with_capacity(n);
    for id in &ids {
        let t = Instant::now();
        let lease = state.registry.cap_for_admin(&operator, id).lease().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        drop(lease);
    }
    state.registry.maintain().await;
    let open = state.registry.open_count();
    let rss1 = rss_kib();
    times.sort_by(|a, b| a.total_cmp(b));
    println!("tenants={n} cap={cap} open_after={open}");
    println!("cold open ms: p50={:.3} p90={:.3} p99={:.3} max={:.3}", pct(&times, 0.5), pct(&times, 0.9), pct(&times, 0.99), pct(&times, 1.0));
    println!("rss before opens={rss0} KiB after={rss1} KiB => {:.1} KiB per open tenant", (rss1.saturating_sub(rss0)) as f64 / open.max(1) as f64);
    Ok(())
}
