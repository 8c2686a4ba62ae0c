//! Plans: what each tier may use and how fast.
//!
//! Plans are configuration (`config/plans.toml`, or the file named by `plans` / `WARREN_PLANS`),
//! loaded at start and swapped atomically on SIGHUP ([`PlanStore::reload`]). A tenant may carry
//! overrides of its own (custom limits, features switched on or off) and an API key may carry a lower
//! rate limit; both live in control.db and are mirrored in memory, refreshed whenever control.db changes.
//!
//! Every tenant request passes [`crate::services::TenantCtx`], which resolves the tenant's
//! [`Entitlements`] (tier after trial expiry + plan + overrides), charges the rate limiter
//! ([`limiter`]) and counts the call. Handlers call [`Entitlements::require_feature`] and the quota
//! checks of [`PlanStore`].

pub mod limiter;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use arc_swap::ArcSwap;
use figment::providers::{Format, Toml};
use figment::Figment;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::control::{ControlPlane, Tenant, Tier};
use crate::error::{Code, Error};

/// The plans shipped with warren (the same text as `config/plans.toml`).
pub const DEFAULT_PLANS: &str = include_str!("../../config/plans.toml");
/// Read when no plans file is configured and it exists.
pub const DEFAULT_PLANS_FILE: &str = "config/plans.toml";

pub const TIERS: [Tier; 4] = [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise];

/// One tier's limits, features and prices. A limit that is `None` is unlimited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Monthly base price in USD.
    #[serde(default)]
    pub price_usd: f64,
    pub rate_per_sec: u32,
    pub burst: u32,
    #[serde(default)]
    pub queries_per_month: Option<u64>,
    /// Hard: refused with 429 `quota_exceeded` at the limit. Soft: served, the excess is overage.
    #[serde(default)]
    pub queries_hard_limit: bool,
    #[serde(default)]
    pub overage_usd_per_1000_queries: f64,
    #[serde(default)]
    pub documents: Option<u64>,
    #[serde(default)]
    pub storage_bytes: Option<u64>,
    #[serde(default)]
    pub products: Option<u64>,
    /// Feature names; `"*"` means every feature.
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Stripe price ids that mean this tier (webhooks map subscriptions through them).
    #[serde(default)]
    pub stripe_price_ids: Vec<String>,
    /// Share of the embedding workers when tenants compete (weighted round-robin); unset: 1, 2, 4
    /// and 8 for free, starter, pro and enterprise.
    #[serde(default)]
    pub cpu_weight: Option<u32>,
    /// When a write is acknowledged: `async` (default: once committed on the node; shipped to the
    /// replica within `backup.sync_interval_ms`) or `sync` (once its LTX is in object storage).
    #[serde(default)]
    pub durability: Durability,
}

/// When a write is acknowledged (see [`Plan::durability`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Committed on the node; lost only if the node's disk is lost before the next ship.
    #[default]
    Async,
    /// In object storage (the replica) before the answer; concurrent writes share one ship.
    Sync,
}

impl Plan {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature || f == "*")
    }
}

/// Rate-limit cells per call kind (see `[costs]` in plans.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Costs {
    pub read: u32,
    pub write: u32,
    pub search: u32,
    pub assemble: u32,
    pub embeddings: u32,
    pub bulk_document: u32,
    /// A tenant export (`POST /export`): it reads the whole tenant.
    pub export: u32,
    /// One more cell per this many chunks (or embeddings inputs) embedded, rounded up, so a call's
    /// cost grows with the CPU it takes; 0 = no per-chunk cost.
    pub chunks_per_cell: u32,
}

impl Costs {
    /// Cells for embedding `chunks` texts.
    pub fn for_chunks(&self, chunks: usize) -> u32 {
        if self.chunks_per_cell == 0 {
            return 0;
        }
        u32::try_from(chunks.div_ceil(self.chunks_per_cell as usize)).unwrap_or(u32::MAX)
    }
}

impl Default for Costs {
    fn default() -> Self {
        Costs { read: 1, write: 1, search: 1, assemble: 2, embeddings: 1, bulk_document: 1, export: 10, chunks_per_cell: 16 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    upgrade_url: String,
    #[serde(default)]
    costs: Costs,
    tiers: BTreeMap<String, Plan>,
}

/// A validated set of plans, one per tier.
#[derive(Debug, Clone)]
pub struct Plans {
    tiers: [Arc<Plan>; 4],
    pub upgrade_url: String,
    pub costs: Costs,
}

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Free => 0,
        Tier::Starter => 1,
        Tier::Pro => 2,
        Tier::Enterprise => 3,
    }
}

impl Plans {
    pub fn parse(text: &str) -> anyhow::Result<Plans> {
        let file: PlansFile = Figment::from(Toml::string(text)).extract().map_err(|e| anyhow::anyhow!("invalid plans: {e}"))?;
        for name in file.tiers.keys() {
            anyhow::ensure!(Tier::parse(name).is_some(), "invalid plans: unknown tier {name:?} (tiers are {:?})", Tier::ALL);
        }
        let get = |t: Tier| -> anyhow::Result<Arc<Plan>> {
            let p = file.tiers.get(t.as_str()).ok_or_else(|| anyhow::anyhow!("invalid plans: tier {t} is missing"))?;
            anyhow::ensure!(p.rate_per_sec >= 1 && p.burst >= 1, "invalid plans: {t}: rate_per_sec and burst must be at least 1");
            anyhow::ensure!(p.price_usd >= 0.0 && p.overage_usd_per_1000_queries >= 0.0, "invalid plans: {t}: prices must not be negative");
            Ok(Arc::new(p.clone()))
        };
        let c = &file.costs;
        anyhow::ensure!(
            [c.read, c.write, c.search, c.assemble, c.embeddings].iter().all(|&x| x >= 1),
            "invalid plans: costs must be at least 1 (bulk_document may be 0)"
        );
        Ok(Plans {
            tiers: [get(Tier::Free)?, get(Tier::Starter)?, get(Tier::Pro)?, get(Tier::Enterprise)?],
            upgrade_url: file.upgrade_url,
            costs: file.costs,
        })
    }

    /// `path`, else `config/plans.toml` when present, else the compiled-in defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Plans> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("reading plans {}: {e}", p.display()))?,
            None if Path::new(DEFAULT_PLANS_FILE).exists() => std::fs::read_to_string(DEFAULT_PLANS_FILE)?,
            None => DEFAULT_PLANS.to_string(),
        };
        Plans::parse(&text)
    }

    pub fn plan(&self, tier: Tier) -> &Arc<Plan> {
        &self.tiers[tier_index(tier)]
    }

    /// The cheapest tier whose plan has `feature`.
    pub fn required_tier(&self, feature: &str) -> Option<Tier> {
        TIERS.into_iter().find(|t| self.plan(*t).has(feature))
    }

    /// The tier a Stripe price id stands for.
    pub fn tier_for_price(&self, price_id: &str) -> Option<Tier> {
        TIERS.into_iter().find(|t| self.plan(*t).stripe_price_ids.iter().any(|p| p == price_id))
    }

    pub fn upgrade_url(&self, slug: &str, tier: Option<Tier>, feature: &str) -> String {
        self.upgrade_url.replace("{slug}", slug).replace("{tier}", tier.map(|t| t.as_str()).unwrap_or("")).replace("{feature}", feature)
    }
}

/// Features of a tier under the default plans (cumulative: each tier has everything below it).
pub fn features(tier: Tier) -> Vec<&'static str> {
    let mut f = vec!["search", "context", "export"];
    if tier >= Tier::Starter {
        f.extend(["recommendations", "mcp"]);
    }
    if tier >= Tier::Pro {
        f.extend(["custom_domain", "audit_log", "pitr_restore"]);
    }
    if tier >= Tier::Enterprise {
        f.push("sso");
    }
    f
}

/// The cheapest tier that has `feature` under the default feature sets.
pub fn required_tier(feature: &str) -> Option<Tier> {
    TIERS.into_iter().find(|t| features(*t).contains(&feature))
}

/// A tenant's own deviations from its tier's plan (stored in control.db `plan_overrides`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Overrides {
    pub rate_per_sec: Option<u32>,
    pub burst: Option<u32>,
    pub queries_per_month: Option<u64>,
    pub queries_hard_limit: Option<bool>,
    pub documents: Option<u64>,
    pub storage_bytes: Option<u64>,
    pub products: Option<u64>,
    /// Feature name → on/off.
    pub features: BTreeMap<String, bool>,
    /// `async` or `sync` for this tenant, whatever its plan says.
    pub durability: Option<Durability>,
}

impl Overrides {
    pub fn validate(&self) -> Result<(), Error> {
        if self.rate_per_sec == Some(0) || self.burst == Some(0) {
            return Err(Error::validation("rate_per_sec and burst must be at least 1"));
        }
        if self.features.keys().any(|k| k.is_empty() || k.len() > 64) {
            return Err(Error::validation("feature names must be 1-64 characters"));
        }
        Ok(())
    }
}

/// What one tenant may do right now: its effective tier, that tier's plan and its overrides.
#[derive(Clone)]
pub struct Entitlements {
    pub tier: Tier,
    pub plan: Arc<Plan>,
    pub overrides: Option<Arc<Overrides>>,
    pub slug: String,
    plans: Arc<Plans>,
}

impl Entitlements {
    /// Weight of this tenant in the embedding workers' round-robin.
    pub fn cpu_weight(&self) -> u32 {
        self.plan.cpu_weight.unwrap_or(match self.tier {
            Tier::Free => 1,
            Tier::Starter => 2,
            Tier::Pro => 4,
            Tier::Enterprise => 8,
        })
    }
    pub fn rate(&self) -> (u32, u32) {
        let o = self.overrides.as_deref();
        (o.and_then(|o| o.rate_per_sec).unwrap_or(self.plan.rate_per_sec), o.and_then(|o| o.burst).unwrap_or(self.plan.burst))
    }
    pub fn has(&self, feature: &str) -> bool {
        match self.overrides.as_deref().and_then(|o| o.features.get(feature)) {
            Some(on) => *on,
            None => self.plan.has(feature),
        }
    }
    pub fn queries_limit(&self) -> Option<u64> {
        self.overrides.as_deref().and_then(|o| o.queries_per_month).or(self.plan.queries_per_month)
    }
    pub fn queries_hard(&self) -> bool {
        self.overrides.as_deref().and_then(|o| o.queries_hard_limit).unwrap_or(self.plan.queries_hard_limit)
    }
    pub fn documents_limit(&self) -> Option<u64> {
        self.overrides.as_deref().and_then(|o| o.documents).or(self.plan.documents)
    }
    pub fn storage_limit(&self) -> Option<u64> {
        self.overrides.as_deref().and_then(|o| o.storage_bytes).or(self.plan.storage_bytes)
    }
    /// When this tenant's writes are acknowledged.
    pub fn durability(&self) -> Durability {
        self.overrides.as_deref().and_then(|o| o.durability).unwrap_or(self.plan.durability)
    }
    pub fn products_limit(&self) -> Option<u64> {
        self.overrides.as_deref().and_then(|o| o.products).or(self.plan.products)
    }
    pub fn costs(&self) -> &Costs {
        &self.plans.costs
    }
    pub fn upgrade_url(&self, tier: Option<Tier>, feature: &str) -> String {
        self.plans.upgrade_url(&self.slug, tier, feature)
    }

    /// The feature gate: 403 `feature_not_in_plan` with `{feature, required_tier, upgrade_url}` unless
    /// the plan (or an override) grants `feature`. Every gated endpoint calls this.
    pub fn require_feature(&self, feature: &str) -> Result<(), Error> {
        if self.has(feature) {
            return Ok(());
        }
        let required = self.plans.required_tier(feature).filter(|t| *t > self.tier);
        let mut d = Map::new();
        d.insert("feature".into(), json!(feature));
        d.insert("required_tier".into(), json!(required));
        d.insert("upgrade_url".into(), json!(self.upgrade_url(required, feature)));
        let message = match required {
            Some(t) => format!("the {feature:?} feature needs the {t} plan"),
            None => format!("the {feature:?} feature is not enabled for this tenant"),
        };
        Err(Error::forbidden_with(Code::FeatureNotInPlan, message, d))
    }

    /// The limits as JSON (`null` = unlimited).
    pub fn limits_json(&self) -> Value {
        let (rate, burst) = self.rate();
        json!({
            "queries": self.queries_limit(),
            "queries_hard_limit": self.queries_hard(),
            "documents": self.documents_limit(),
            "storage_bytes": self.storage_limit(),
            "products": self.products_limit(),
            "rate_per_sec": rate,
            "burst": burst,
            "retention_days": self.plan.retention_days,
            "durability": self.durability(),
        })
    }

    /// Every feature name this tenant has (the plan's list, with overrides applied; `*` kept as is).
    pub fn feature_list(&self) -> Vec<String> {
        let mut out: Vec<String> = self.plan.features.clone();
        if let Some(o) = self.overrides.as_deref() {
            for (f, on) in &o.features {
                if *on && !out.contains(f) {
                    out.push(f.clone());
                } else if !on {
                    out.retain(|x| x != f);
                }
            }
        }
        out
    }
}

pub use crate::clock::{parse_period, period_of, Clock};

/// Documents and storage of one tenant, measured from its SQLite file now and then and adjusted on writes.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    pub documents: u64,
    pub storage_bytes: u64,
    pub measured_at: std::time::Instant,
}

/// How long a measurement of documents/storage is trusted before the next write re-measures.
pub const STORED_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// The live plans, overrides and limiters of the server.
pub struct PlanStore {
    plans: ArcSwap<Plans>,
    overrides: ArcSwap<HashMap<String, Arc<Overrides>>>,
    key_limits: ArcSwap<HashMap<String, (u32, u32)>>,
    source: Option<PathBuf>,
    /// Rate limits, quotas and metering on (`billing.enforce`).
    pub enforce: bool,
    pub tenant_limiter: limiter::RateLimits,
    pub key_limiter: limiter::RateLimits,
    pub clock: Clock,
    stored: Mutex<HashMap<String, Stored>>,
    expiring: Mutex<HashSet<String>>,
}

impl PlanStore {
    pub fn new(plans: Plans, source: Option<PathBuf>, enforce: bool, clock: Clock) -> PlanStore {
        PlanStore {
            plans: ArcSwap::from_pointee(plans),
            overrides: ArcSwap::from_pointee(HashMap::new()),
            key_limits: ArcSwap::from_pointee(HashMap::new()),
            source,
            enforce,
            tenant_limiter: limiter::RateLimits::default(),
            key_limiter: limiter::RateLimits::default(),
            clock,
            stored: Mutex::new(HashMap::new()),
            expiring: Mutex::new(HashSet::new()),
        }
    }

    pub fn plans(&self) -> Arc<Plans> {
        self.plans.load_full()
    }

    /// Re-reads the plans file (SIGHUP). On error the current plans stay.
    pub fn reload(&self) -> anyhow::Result<()> {
        let p = Plans::load(self.source.as_deref())?;
        self.plans.store(Arc::new(p));
        Ok(())
    }

    /// Reloads tenant overrides and key limits from the control plane.
    pub async fn refresh_overrides(&self, control: &ControlPlane) -> Result<(), Error> {
        let limits = control.limits().await?;
        self.overrides.store(Arc::new(parse_overrides(limits.overrides)));
        self.key_limits.store(Arc::new(parse_key_limits(limits.key_limits)));
        Ok(())
    }

    pub fn key_limit(&self, key_id: &str) -> Option<(u32, u32)> {
        self.key_limits.load().get(key_id).copied()
    }

    /// The tier a tenant has right now: a trial past `trial_ends_at` is free.
    pub fn effective_tier(&self, t: &Tenant) -> Tier {
        if trial_expired(t, self.clock.now()) {
            Tier::Free
        } else {
            t.tier
        }
    }

    pub fn entitlements(&self, t: &Tenant) -> Entitlements {
        let plans = self.plans.load_full();
        let tier = self.effective_tier(t);
        Entitlements { tier, plan: plans.plan(tier).clone(), overrides: self.overrides.load().get(&t.id).cloned(), slug: t.slug.clone(), plans }
    }

    /// Claims the one-time job of recording a tenant's trial expiry (false when already claimed).
    pub fn claim_expiry(&self, tenant_id: &str) -> bool {
        self.expiring.lock().insert(tenant_id.to_string())
    }
    pub fn release_expiry(&self, tenant_id: &str) {
        self.expiring.lock().remove(tenant_id);
    }

    /// The last measurement of a tenant's documents and storage, if still fresh.
    pub fn stored(&self, tenant_id: &str) -> Option<Stored> {
        self.stored.lock().get(tenant_id).copied().filter(|s| s.measured_at.elapsed() < STORED_TTL)
    }
    /// The last measurement, however old (for reports).
    pub fn stored_any(&self, tenant_id: &str) -> Option<Stored> {
        self.stored.lock().get(tenant_id).copied()
    }
    pub fn set_stored(&self, tenant_id: &str, documents: u64, storage_bytes: u64) {
        self.stored.lock().insert(tenant_id.to_string(), Stored { documents, storage_bytes, measured_at: std::time::Instant::now() });
    }
    /// Adjusts the measurement after a write (documents created, bytes written) or a delete (negative).
    pub fn adjust_stored(&self, tenant_id: &str, documents: i64, bytes: i64) {
        if let Some(s) = self.stored.lock().get_mut(tenant_id) {
            s.documents = s.documents.saturating_add_signed(documents);
            s.storage_bytes = s.storage_bytes.saturating_add_signed(bytes);
        }
    }
    pub fn forget_stored(&self, tenant_id: &str) {
        self.stored.lock().remove(tenant_id);
    }

    /// Drops idle limiter keys (called once a second).
    pub fn prune(&self) {
        self.tenant_limiter.prune();
        self.key_limiter.prune();
    }
}

pub use crate::control::tenants::trial_expired;

fn parse_overrides(rows: Vec<(String, String)>) -> HashMap<String, Arc<Overrides>> {
    let mut out = HashMap::new();
    for (id, text) in rows {
        match serde_json::from_str::<Overrides>(&text) {
            Ok(o) => {
                out.insert(id, Arc::new(o));
            }
            Err(e) => tracing::warn!(tenant = %id, error = %e, "ignoring unreadable plan overrides"),
        }
    }
    out
}

fn parse_key_limits(rows: Vec<(String, i64, i64)>) -> HashMap<String, (u32, u32)> {
    rows.into_iter().map(|(id, rate, burst)| (id, (rate.clamp(1, u32::MAX as i64) as u32, burst.clamp(1, u32::MAX as i64) as u32))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_cumulative() {
        assert!(!features(Tier::Free).contains(&"mcp"));
        assert!(features(Tier::Starter).contains(&"recommendations"));
        assert!(features(Tier::Enterprise).contains(&"pitr_restore"));
        assert_eq!(required_tier("pitr_restore"), Some(Tier::Pro));
        assert_eq!(required_tier("nope"), None);
    }

    #[test]
    fn default_plans_parse_and_match_the_pricing() {
        let p = Plans::parse(DEFAULT_PLANS).expect("default plans");
        let free = p.plan(Tier::Free);
        assert_eq!((free.rate_per_sec, free.burst), (10, 100));
        assert_eq!(free.queries_per_month, Some(1000));
        assert!(free.queries_hard_limit);
        assert_eq!(p.plan(Tier::Starter).queries_per_month, Some(100_000));
        assert!(!p.plan(Tier::Starter).queries_hard_limit);
        assert_eq!(p.plan(Tier::Pro).queries_per_month, None);
        assert_eq!(p.plan(Tier::Enterprise).storage_bytes, Some(100_000_000_000));
        assert_eq!(p.required_tier("recommendations"), Some(Tier::Starter));
        assert_eq!(p.required_tier("audit_log"), Some(Tier::Pro));
        assert_eq!(p.required_tier("sso"), Some(Tier::Enterprise));
        for t in TIERS {
            for f in features(t) {
                assert!(p.plan(t).has(f), "{t} lacks {f}");
            }
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(Plans::parse("upgrade_url = \"x\"\n[tiers.free]\nrate_per_sec = 1\nburst = 1\n").is_err(), "missing tiers");
        let bad = DEFAULT_PLANS.replace("rate_per_sec = 10\n", "rate_per_sec = 0\n");
        assert!(Plans::parse(&bad).is_err());
        let unknown = format!("{DEFAULT_PLANS}\n[tiers.gold]\nrate_per_sec = 1\nburst = 1\n");
        assert!(Plans::parse(&unknown).is_err());
    }

    #[test]
    fn periods() {
        let (p, s, e) = parse_period("2024-12").unwrap();
        assert_eq!(p, "2024-12");
        assert_eq!(s.to_rfc3339(), "2024-12-01T00:00:00+00:00");
        assert_eq!(e.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert!(parse_period("2024-13").is_none());
        assert!(parse_period("24-01").is_none());
        assert!(parse_period("garbage").is_none());
    }
}
