//! The monthly bill: plan prices, quotas and overage applied to metered usage, and the usage export
//! (JSON, CSV, Stripe meter events) built from it.

use serde::Serialize;

use crate::control::Tier;
use crate::plans::{Entitlements, PlanStore};

/// What a tenant owes for a month: the plan's base price plus overage of soft query quotas.

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bill {
    pub base_price_usd: f64,
    pub overage_queries: u64,
    pub overage_usd: f64,
    pub total_usd: f64,
}

/// Overage is charged per started block of 1,000 queries over a soft quota, at the plan's rate.
pub fn bill(ent: &Entitlements, usage: &crate::metering::MonthUsage) -> Bill {
    let overage_queries = match ent.queries_limit() {
        Some(limit) if !ent.queries_hard() => usage.queries().saturating_sub(limit),
        _ => 0,
    };
    let cents = |usd: f64| (usd * 100.0).round() / 100.0;
    let overage_usd = cents(overage_queries.div_ceil(1000) as f64 * ent.plan.overage_usd_per_1000_queries);
    let base = cents(ent.plan.price_usd);
    Bill { base_price_usd: base, overage_queries, overage_usd, total_usd: cents(base + overage_usd) }
}

/// One tenant's line of a monthly usage export (admin API, CSV, CLI).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    pub period: String,
    pub tenant_id: String,
    pub slug: String,
    #[schema(value_type = String)]
    pub tier: Tier,
    pub stripe_customer_id: Option<String>,
    pub api_calls: u64,
    pub queries: u64,
    pub searches: u64,
    pub assembles: u64,
    pub embedding_calls: u64,
    pub tokens_embedded: u64,
    pub tokens_returned: u64,
    pub document_writes: u64,
    pub document_deletes: u64,
    pub recommendations: u64,
    /// What the tenant cost this node this month (not billed): CPU seconds spent embedding its
    /// texts, on its searches and assemblies, and on its recommendation trainings.
    pub cpu_seconds_embed: f64,
    pub cpu_seconds_search: f64,
    pub cpu_seconds_train: f64,
    /// Objects its backups put into object storage this month, and their bytes.
    pub store_puts: u64,
    pub store_put_bytes: u64,
    /// Last measured by this server (empty when the tenant was not measured since start).
    pub documents: Option<u64>,
    pub storage_bytes: Option<u64>,
    pub queries_limit: Option<u64>,
    pub base_price_usd: f64,
    pub overage_queries: u64,
    pub overage_usd: f64,
    pub total_usd: f64,
}

pub const USAGE_CSV_HEADER: &str = "period,tenant_id,slug,tier,stripe_customer_id,api_calls,queries,searches,assembles,embedding_calls,tokens_embedded,tokens_returned,document_writes,document_deletes,recommendations,cpu_seconds_embed,cpu_seconds_search,cpu_seconds_train,store_puts,store_put_bytes,documents,storage_bytes,queries_limit,base_price_usd,overage_queries,overage_usd,total_usd";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl UsageRow {
    pub fn csv_line(&self) -> String {
        let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
        [
            csv_field(&self.period),
            csv_field(&self.tenant_id),
            csv_field(&self.slug),
            self.tier.to_string(),
            csv_field(self.stripe_customer_id.as_deref().unwrap_or("")),
            self.api_calls.to_string(),
            self.queries.to_string(),
            self.searches.to_string(),
            self.assembles.to_string(),
            self.embedding_calls.to_string(),
            self.tokens_embedded.to_string(),
            self.tokens_returned.to_string(),
            self.document_writes.to_string(),
            self.document_deletes.to_string(),
            self.recommendations.to_string(),
            format!("{:.3}", self.cpu_seconds_embed),
            format!("{:.3}", self.cpu_seconds_search),
            format!("{:.3}", self.cpu_seconds_train),
            self.store_puts.to_string(),
            self.store_put_bytes.to_string(),
            opt(self.documents),
            opt(self.storage_bytes),
            opt(self.queries_limit),
            format!("{:.2}", self.base_price_usd),
            self.overage_queries.to_string(),
            format!("{:.2}", self.overage_usd),
            format!("{:.2}", self.total_usd),
        ]
        .join(",")
    }
}

/// Every tenant's usage and bill for `period` (`YYYY-MM`): one row per tenant of `tenants` (in
/// their order), from `totals`, the period's usage by tenant. Tiers and overrides are the tenants'
/// current ones.
pub fn usage_report_with_tenants(
    tenants: &[crate::control::Tenant],
    store: &PlanStore,
    period: &str,
    totals: &std::collections::HashMap<String, crate::metering::MonthUsage>,
) -> Vec<UsageRow> {
    use crate::metering::Kind;
    let period = period.to_string();
    tenants
        .iter()
        .map(|t| {
            let u = totals.get(&t.id).copied().unwrap_or_default();
            let ent = store.entitlements(t);
            let b = bill(&ent, &u);
            let stored = store.stored_any(&t.id);
            UsageRow {
                period: period.clone(),
                tenant_id: t.id.clone(),
                slug: t.slug.clone(),
                tier: ent.tier,
                stripe_customer_id: t.stripe_customer_id.clone(),
                api_calls: u.count(Kind::ApiCall),
                queries: u.queries(),
                searches: u.count(Kind::Search),
                assembles: u.count(Kind::Assemble),
                embedding_calls: u.count(Kind::Embedding),
                tokens_embedded: u.tokens_embedded(),
                tokens_returned: u.tokens_returned(),
                document_writes: u.count(Kind::DocumentWrite),
                document_deletes: u.count(Kind::DocumentDelete),
                recommendations: u.count(Kind::Recommendation),
                cpu_seconds_embed: u.cpu_seconds(Kind::CpuEmbed),
                cpu_seconds_search: u.cpu_seconds(Kind::CpuSearch),
                cpu_seconds_train: u.cpu_seconds(Kind::CpuTrain),
                store_puts: u.count(Kind::StorePut),
                store_put_bytes: u.tokens_of(Kind::StorePut),
                documents: stored.map(|s| s.documents),
                storage_bytes: stored.map(|s| s.storage_bytes),
                queries_limit: ent.queries_limit(),
                base_price_usd: b.base_price_usd,
                overage_queries: b.overage_queries,
                overage_usd: b.overage_usd,
                total_usd: b.total_usd,
            }
        })
        .collect()
}
