//! Retention of usage and audit events by plan (`retention_days`), with the billing months kept.

use chrono::Duration;
use reqwest::Method;
use serde_json::json;
use warren::services::retention::billing_floor;
use warren::services::{Actor, Operator};

use crate::helpers::*;

async fn count(state: &warren::state::AppState, table: &'static str, tenant: &str) -> i64 {
    let id = tenant.to_string();
    state
        .control
        .sqlite()
        .expect("the embedded control plane")
        .run(move |c| Ok(c.query_row(&format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = ?1"), [&id], |r| r.get::<_, i64>(0))?))
        .await
        .expect("count")
}

#[tokio::test]
async fn old_events_are_pruned_by_plan_in_batches_and_billing_months_stay() {
    // Two rows per batch, so a sweep needs several transactions; sweeps only when the test asks.
    let (app, state) = spawn_state(None, |c| {
        c.retention.batch_rows = 2;
        c.retention.sweep_secs = 1_000_000;
    })
    .await;
    let free = app.create_tenant("short", "free").await;
    let pro = app.create_tenant("long", "pro").await;
    for t in [&free, &pro] {
        for k in 0..3 {
            // Each flush writes its own usage rows.
            let r = send(app.api(Method::POST, "/search", &t.key).json(&json!({"query": format!("q{k}"), "mode": "keyword"}))).await;
            assert_eq!(r.status(), 200);
            state.meter.flush().await;
        }
        let r = send(
            app.admin(Method::POST, &format!("/tenants/{}/keys", if t.id == free.id { "short" } else { "long" })).json(&json!({"name": "extra"})),
        )
        .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    let written_at = state.plans.clock.now();
    let (usage_free, audit_free) = (count(&state, "usage_events", &free.id).await, count(&state, "audit_events", &free.id).await);
    assert!(usage_free >= 3 && audit_free >= 2, "usage {usage_free}, audit {audit_free}");
    let (usage_pro, audit_pro) = (count(&state, "usage_events", &pro.id).await, count(&state, "audit_events", &pro.id).await);
    let sweep = || async { Operator::live(&state, Actor::System).prune_retention().await.expect("sweep") };

    // Nothing is old yet.
    assert_eq!(sweep().await, Default::default());

    // 40 days on: past free's 30 days, so its audit events go; its usage stays if it falls in the
    // previous or current calendar month (billing). Pro keeps 365 days of both.
    state.plans.clock.advance(Duration::days(40));
    let now = state.plans.clock.now();
    let usage_kept = written_at >= billing_floor(now);
    let p = sweep().await;
    assert_eq!(count(&state, "audit_events", &free.id).await, 0);
    assert_eq!(count(&state, "usage_events", &free.id).await, if usage_kept { usage_free } else { 0 }, "billing floor {}", billing_floor(now));
    assert_eq!(p.audit_events, audit_free as u64, "{p:?}");
    assert_eq!((count(&state, "usage_events", &pro.id).await, count(&state, "audit_events", &pro.id).await), (usage_pro, audit_pro));

    // 70 days on, the usage has left the billing months too.
    state.plans.clock.advance(Duration::days(30));
    sweep().await;
    assert_eq!(count(&state, "usage_events", &free.id).await, 0);
    assert_eq!((count(&state, "usage_events", &pro.id).await, count(&state, "audit_events", &pro.id).await), (usage_pro, audit_pro));
}
