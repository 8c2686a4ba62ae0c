//! Usage: the tenant's own month (usage, limits, percent used, overage), its audit log, and the
//! operator's export of every tenant's bill.

use serde_json::{json, Value};

use super::audit::Operator;
use super::context::TenantCtx;
use super::ops::Op;
use crate::error::{Code, Error};
use crate::metering::Kind;

fn percent(used: u64, limit: Option<u64>) -> Value {
    match limit {
        Some(0) => json!(if used > 0 { 100.0 } else { 0.0 }),
        Some(l) => json!(((used as f64 / l as f64) * 1000.0).round() / 10.0),
        None => Value::Null,
    }
}

/// The tenant itself: id, slug, name, effective tier, status, trial end, domain, features.
pub fn me(ctx: &TenantCtx) -> Result<Value, Error> {
    ctx.authorize(Op::TenantInfo)?;
    let t = ctx.tenant();
    let ent = ctx.entitlements();
    Ok(json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "tier": ent.tier,
        "status": t.status,
        "trial_ends_at": t.trial_ends_at,
        "custom_domain": t.custom_domain,
        "features": ent.feature_list(),
    }))
}

/// The current UTC calendar month: usage, limits, percent used, overage so far and the reset date.
pub async fn month(ctx: &TenantCtx) -> Result<Value, Error> {
    ctx.authorize(Op::UsageRead)?;
    let state = ctx.state();
    let now = state.plans.clock.now();
    let (period, _, resets_at) = crate::clock::period_of(now);
    let month = state.meter.month(ctx.id()).await?;
    let stored = ctx.stored().await?;
    let ent = ctx.entitlements();
    let mut usage = serde_json::Map::new();
    for &k in Kind::BILLED {
        usage.insert(k.as_str().into(), json!({"calls": month.count(k), "tokens": month.tokens_of(k)}));
    }
    usage.insert("api_calls".into(), json!(month.count(Kind::ApiCall)));
    usage.insert("queries".into(), json!(month.queries()));
    usage.insert("tokens_embedded".into(), json!(month.tokens_embedded()));
    usage.insert("tokens_returned".into(), json!(month.tokens_returned()));
    usage.insert("documents".into(), json!(stored.documents));
    usage.insert("storage_bytes".into(), json!(stored.storage_bytes));
    let lease = ctx.storage().await?;
    let products = lease.blocking(|h| h.with_reader(crate::recs::store::product_count)).await?;
    usage.insert("products".into(), json!(products));
    let bill = crate::billing::bill(ent, &month);
    Ok(json!({
        "period": period,
        "tier": ent.tier,
        "usage": usage,
        "limits": ent.limits_json(),
        "percent_used": {
            "queries": percent(month.queries(), ent.queries_limit()),
            "documents": percent(stored.documents, ent.documents_limit()),
            "storage_bytes": percent(stored.storage_bytes, ent.storage_limit()),
            "products": percent(products, ent.products_limit()),
        },
        "overage": {"queries": bill.overage_queries, "amount_usd": bill.overage_usd},
        "resets_at": resets_at,
    }))
}

/// The tenant's own audit log (feature `audit_log`, admin scope).
pub async fn audit(ctx: &TenantCtx) -> Result<Vec<crate::control::AuditEvent>, Error> {
    ctx.authorize(Op::AuditRead)?;
    ctx.require_feature("audit_log")?;
    ctx.state().control.audit_events(Some(ctx.id().to_string()), 200).await
}

/// Whether the control plane answers and the data dir takes a write (for `/ready`).
pub async fn readiness(state: &crate::state::AppState) -> (bool, bool) {
    let dir = state.config.data_dir.clone();
    let writable = tokio::task::spawn_blocking(move || {
        let probe = dir.join(".ready-probe");
        std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)).is_ok()
    });
    let control = state.control.ping().await.unwrap_or(false);
    (control, writable.await.unwrap_or(false))
}

/// Brings the process gauges up to date before `/metrics` renders them.
pub async fn refresh_gauges(state: &crate::state::AppState) {
    state.registry.maintain().await;
    metrics::gauge!("warren_embed_queue_len").set(state.embed.queue_len() as f64);
    metrics::gauge!("warren_search_queue_waiting").set(state.search_cpu.waiting() as f64);
}

impl Operator {
    /// A tenant's audit log, for the operator.
    pub async fn audit_log(&self, slug: &str) -> Result<Vec<crate::control::AuditEvent>, Error> {
        let t = self.tenant(slug).await?;
        self.control.audit_events(Some(t.id), 200).await
    }

    /// Every tenant's usage and bill for `period` (YYYY-MM; default the current month).
    pub async fn usage_report(&self, period: Option<String>) -> Result<(String, Vec<crate::billing::UsageRow>), Error> {
        let (period, _, rows) = self.usage_report_with_tenants(period).await?;
        Ok((period, rows))
    }

    /// [`usage_report`](Self::usage_report) and the tenants it covers, in one read.
    pub async fn usage_report_with_tenants(
        &self,
        period: Option<String>,
    ) -> Result<(String, Vec<crate::control::Tenant>, Vec<crate::billing::UsageRow>), Error> {
        let period = period.unwrap_or_else(|| crate::clock::period_of(self.clock.now()).0);
        if crate::clock::parse_period(&period).is_none() {
            return Err(Error::bad_request(Code::InvalidQuery, "period must be YYYY-MM"));
        }
        let current = period == crate::clock::period_of(self.clock.now()).0;
        let mut totals = None;
        let store = match &self.live {
            Some(s) => {
                if current && s.meter.enabled() {
                    // The meter keeps this month's totals of every tenant: no re-aggregation.
                    totals = Some(s.meter.month_all().await?);
                } else {
                    s.meter.flush().await;
                }
                s.plans.clone()
            }
            None => {
                let plans = crate::plans::Plans::load(self.config.plans.as_deref()).map_err(Error::Internal)?;
                let store = std::sync::Arc::new(crate::plans::PlanStore::new(plans, self.config.plans.clone(), true, self.clock.clone()));
                store.refresh_overrides(&self.control).await?;
                store
            }
        };
        let totals = match totals {
            Some(t) => t,
            None => {
                let (_, from, to) =
                    crate::clock::parse_period(&period).ok_or_else(|| Error::bad_request(Code::InvalidQuery, "period must be YYYY-MM"))?;
                let rows = self.control.usage_totals(None, crate::clock::ts(from), crate::clock::ts(to), None).await?;
                crate::metering::totals_by_tenant(rows)
            }
        };
        let (tenants, _) = self.control.list_tenants(None, None, u32::MAX).await?;
        let rows = crate::billing::usage_report_with_tenants(&tenants, &store, &period, &totals);
        Ok((period, tenants, rows))
    }
}
