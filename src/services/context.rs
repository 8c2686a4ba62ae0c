//! [`TenantCtx`]: a proven tenant with what it may do (scopes, plan), the one value every tenant
//! service takes. The request extractor (`api::extract`) and the MCP door make it from a
//! [`crate::auth::RequestProof`]; nothing else can, and tenant storage is reachable only through
//! its [`TenantCap`].

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use super::ops::Op;
use crate::auth::{Credential, RequestIdentity};
use crate::control::{keys, Scope, Tenant};
use crate::error::{Code, Error};
use crate::plans::limiter::{RateInfo, Throttled};
use crate::plans::Entitlements;
use crate::state::AppState;
use crate::tenant::{Lease, TenantCap};

/// Filled with the state of the rate limiter, which the REST door reports as `RateLimit-*` headers.
#[derive(Clone, Default)]
pub struct RateSlot(pub Arc<Mutex<Option<RateInfo>>>);

/// Filled with the tenant's tier so request metrics can be labelled by it.
#[derive(Clone, Default)]
pub struct TierSlot(pub Arc<OnceLock<&'static str>>);

/// A proven tenant: the request's credentials belong to this tenant, and the host agrees.
#[derive(Clone)]
pub struct TenantCtx {
    tenant: Arc<Tenant>,
    scopes: Vec<Scope>,
    credential: Credential,
    state: AppState,
    entitlements: Entitlements,
    rate: Option<RateSlot>,
    cap: TenantCap,
}

impl TenantCtx {
    /// Proves the tenant of a request (host and credentials agree, the tenant is active) and resolves
    /// its plan. Charges nothing: each operation does that with [`begin`](Self::begin).
    pub async fn authenticate(
        state: &AppState,
        id: RequestIdentity<'_>,
        rate: Option<RateSlot>,
        tier: Option<&TierSlot>,
    ) -> Result<TenantCtx, Error> {
        let proven = state.auth.prove(id, &state.config).await?;
        let entitlements = state.plans.entitlements(&proven.tenant);
        if entitlements.tier != proven.tenant.tier {
            super::billing::expire_trial_in_background(state, &proven.tenant.id);
        }
        if let Some(slot) = tier {
            let _ = slot.0.set(entitlements.tier.as_str());
        }
        let cap = state.registry.cap_for_request(&proven.proof, &proven.tenant.id);
        Ok(TenantCtx { tenant: proven.tenant, scopes: proven.scopes, credential: proven.credential, state: state.clone(), entitlements, rate, cap })
    }

    /// A tenant proven by a portal session cookie (`services::dashboard`): the session's scopes,
    /// and the host must not name another tenant.
    pub(crate) async fn from_session(
        state: &AppState,
        id: RequestIdentity<'_>,
        token: &str,
    ) -> Result<(TenantCtx, crate::control::DashboardSession), Error> {
        let (proven, session) = state.auth.prove_session(id, &state.config, token).await?;
        let entitlements = state.plans.entitlements(&proven.tenant);
        let cap = state.registry.cap_for_request(&proven.proof, &proven.tenant.id);
        let ctx = TenantCtx {
            tenant: proven.tenant,
            scopes: proven.scopes,
            credential: proven.credential,
            state: state.clone(),
            entitlements,
            rate: None,
            cap,
        };
        Ok((ctx, session))
    }

    /// A tenant proven by a webhook delivery signed with its secret: it may write commerce data
    /// (each operation still checks its scope, cost and the plan's features).
    pub fn for_webhook(state: &AppState, tenant: Arc<Tenant>, proof: &crate::auth::WebhookProof, source: &'static str) -> TenantCtx {
        let entitlements = state.plans.entitlements(&tenant);
        let cap = state.registry.cap_for_webhook(proof, &tenant.id);
        TenantCtx {
            tenant,
            scopes: vec![Scope::Write],
            credential: Credential::Webhook { source },
            state: state.clone(),
            entitlements,
            rate: None,
            cap,
        }
    }

    /// The same tenant, continuing in a background worker work this context started and paid for (a
    /// document job): same scopes and plan, storage through a worker capability.
    pub fn for_worker(&self, worker: &'static str) -> TenantCtx {
        TenantCtx { cap: self.cap.for_worker(worker), rate: None, ..self.clone() }
    }

    /// A tenant whose pending work a background worker found in the control plane (a job accepted
    /// before a restart). It may only write, as the accepted job does.
    pub(crate) fn resumed(state: &AppState, tenant: Arc<Tenant>, worker: &'static str) -> TenantCtx {
        let entitlements = state.plans.entitlements(&tenant);
        let cap = state.registry.cap_for_worker(crate::tenant::WorkerProof::new(worker), &tenant.id);
        TenantCtx {
            tenant,
            scopes: vec![Scope::Write],
            credential: Credential::Worker { worker },
            state: state.clone(),
            entitlements,
            rate: None,
            cap,
        }
    }

    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }
    pub fn id(&self) -> &str {
        &self.tenant.id
    }
    pub fn state(&self) -> &AppState {
        &self.state
    }
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
    /// The API key this request was made with, if it was made with one.
    pub fn key_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey { key_id } => Some(key_id),
            _ => None,
        }
    }

    /// Meters `count` units of `kind` (and `tokens`) to this tenant and its API key.
    pub fn meter(&self, kind: crate::metering::Kind, count: u64, tokens: u64) {
        self.state.meter.record_key(&self.tenant.id, self.key_id(), kind, count, tokens);
    }

    /// The capability to this tenant's storage.
    pub fn cap(&self) -> &TenantCap {
        &self.cap
    }

    /// Leases this tenant's storage (opening the handle if needed).
    pub async fn storage(&self) -> Result<Lease, Error> {
        self.cap.lease().await
    }

    /// What this tenant may do now: effective tier (after trial expiry), plan and overrides.
    pub fn entitlements(&self) -> &Entitlements {
        &self.entitlements
    }

    /// 403 `insufficient_scope` unless the credentials carry the scope `op` needs (or a broader one).
    pub fn authorize(&self, op: Op) -> Result<(), Error> {
        let needed = op.scope();
        if keys::allows(&self.scopes, needed) {
            Ok(())
        } else {
            Err(Error::forbidden(Code::InsufficientScope, format!("this call needs the {:?} scope", needed.as_str())))
        }
    }

    /// Whether the credentials may run `op` (MCP lists only the tools the key can call).
    pub fn may(&self, op: Op) -> bool {
        keys::allows(&self.scopes, op.scope())
    }

    /// Starts one operation, as every door does: checks its scope, takes its rate-limit cells and
    /// records an `api_call`.
    pub fn begin(&self, op: Op) -> Result<(), Error> {
        self.authorize(op)?;
        if op.adds_data() && self.state.disk.low() {
            return Err(Error::insufficient_storage());
        }
        self.charge(op.cost(self.entitlements.costs()))?;
        if self.state.plans.enforce {
            self.meter(crate::metering::Kind::ApiCall, 1, 0);
        }
        Ok(())
    }

    /// 403 `feature_not_in_plan` unless the tenant's plan has `feature`.
    pub fn require_feature(&self, feature: &str) -> Result<(), Error> {
        self.entitlements.require_feature(feature)
    }

    /// Charges `cells` more rate-limit cells for work known only in the service (bulk: per document).
    pub fn charge(&self, cells: u32) -> Result<(), Error> {
        if !self.state.plans.enforce || cells == 0 {
            return Ok(());
        }
        let (rate, burst) = self.entitlements.rate();
        let info = charge_cells(&self.state, &self.tenant.id, &self.credential, rate, burst, cells);
        if let Some(slot) = &self.rate {
            *slot.0.lock() = Some(match &info {
                Ok(i) => *i,
                Err(t) => t.info,
            });
        }
        info.map(|_| ()).map_err(|t| rate_limited(t, cells))
    }

    /// 429 `quota_exceeded` when a hard monthly query quota is used up (search, assemble).
    pub async fn check_query_quota(&self) -> Result<(), Error> {
        let ent = &self.entitlements;
        let Some(limit) = ent.queries_limit() else { return Ok(()) };
        if !self.state.plans.enforce || !ent.queries_hard() {
            return Ok(());
        }
        let used = self.state.meter.month(&self.tenant.id).await?.queries();
        if used < limit {
            return Ok(());
        }
        let now = self.state.plans.clock.now();
        let (_, _, resets_at) = crate::clock::period_of(now);
        let upgrade = crate::plans::TIERS.into_iter().find(|t| *t > ent.tier);
        let mut d = serde_json::Map::new();
        d.insert("limit".into(), limit.into());
        d.insert("used".into(), used.into());
        d.insert("resets_at".into(), serde_json::json!(resets_at));
        d.insert("upgrade_url".into(), ent.upgrade_url(upgrade, "queries").into());
        let wait = resets_at.signed_duration_since(now).num_seconds().max(1) as u64;
        Err(Error::too_many(Code::QuotaExceeded, format!("the monthly quota of {limit} queries is used up"), wait, d))
    }

    /// 403 `plan_limit_reached` when writing documents at `paths` with `bytes` of content would pass
    /// the plan's document or storage limit. Documents that already exist at those paths do not count
    /// as new; a tenant already over a limit (e.g. after a trial ended) may only delete.
    pub async fn check_storage(&self, paths: Vec<String>, bytes: u64) -> Result<(), Error> {
        let ent = &self.entitlements;
        let (doc_limit, byte_limit) = (ent.documents_limit(), ent.storage_limit());
        if doc_limit.is_none() && byte_limit.is_none() {
            return Ok(());
        }
        let stored = self.stored().await?;
        let refuse = |what: &str, limit: u64, used: u64| {
            let upgrade = crate::plans::TIERS.into_iter().find(|t| *t > ent.tier);
            let mut d = serde_json::Map::new();
            d.insert("limit".into(), what.into());
            d.insert("limit_value".into(), limit.into());
            d.insert("used".into(), used.into());
            d.insert("upgrade_url".into(), ent.upgrade_url(upgrade, what).into());
            Error::forbidden_with(Code::PlanLimitReached, format!("this write would pass the plan's {what} limit of {limit}"), d)
        };
        if let Some(limit) = byte_limit {
            if stored.storage_bytes.saturating_add(bytes) > limit {
                return Err(refuse("storage_bytes", limit, stored.storage_bytes));
            }
        }
        if let Some(limit) = doc_limit {
            let mut new = paths.len() as u64;
            if stored.documents.saturating_add(new) > limit && !paths.is_empty() {
                // Only now look which paths exist (updates do not add documents).
                let lease = self.storage().await?;
                let existing = lease.blocking(move |h| h.with_reader(|c| Ok(crate::docs::store::count_existing(c, &paths)?))).await?;
                new -= existing.min(new);
            }
            if stored.documents.saturating_add(new) > limit {
                return Err(refuse("documents", limit, stored.documents));
            }
        }
        Ok(())
    }

    /// The tenant's documents and storage bytes (measured from its SQLite file at most every 30 s).
    pub async fn stored(&self) -> Result<crate::plans::Stored, Error> {
        let plans = &self.state.plans;
        if let Some(s) = plans.stored(&self.tenant.id) {
            return Ok(s);
        }
        let lease = self.storage().await?;
        let (docs, size) = lease.blocking(|h| h.with_reader(|c| Ok(crate::docs::store::totals(c)?))).await?;
        plans.set_stored(&self.tenant.id, docs, size);
        Ok(crate::plans::Stored { documents: docs, storage_bytes: size, measured_at: std::time::Instant::now() })
    }

    /// Notes a successful write for the storage limits (documents created, bytes written; deletes re-measure).
    pub fn wrote(&self, created: u64, bytes: u64) {
        self.state.plans.adjust_stored(&self.tenant.id, created as i64, bytes as i64);
    }
    pub fn deleted(&self) {
        self.state.plans.forget_stored(&self.tenant.id);
    }

    /// The `[costs]` of this tenant's plan.
    pub fn costs(&self) -> &crate::plans::Costs {
        self.entitlements.costs()
    }

    /// This tenant as a caller of the embedding workers: its own fair-share flow, weighted by plan.
    pub fn embed_caller(&self, lane: crate::embed::Lane) -> crate::embed::Caller {
        crate::embed::Caller::new(self.tenant.id.as_str(), self.entitlements.cpu_weight(), lane)
    }
}

fn rate_limited(t: Throttled, cells: u32) -> Error {
    let mut d = serde_json::Map::new();
    d.insert("limit".into(), t.info.limit.into());
    d.insert("cost".into(), cells.into());
    d.insert("retry_after".into(), t.retry_after_secs.into());
    let msg = if cells > t.info.limit {
        format!("this call costs {cells} rate-limit cells, more than the burst of {}: send smaller batches", t.info.limit)
    } else {
        "rate limit reached; retry after Retry-After".to_string()
    };
    Error::too_many(Code::RateLimited, msg, t.retry_after_secs, d)
}

/// Takes cells from the tenant's bucket and, if the key has its own lower limit, from the key's.
fn charge_cells(state: &AppState, tenant_id: &String, cred: &Credential, rate: u32, burst: u32, cells: u32) -> Result<RateInfo, Throttled> {
    let info = state.plans.tenant_limiter.check(tenant_id, rate, burst, cells)?;
    if let Credential::ApiKey { key_id } = cred {
        if let Some((kr, kb)) = state.plans.key_limit(key_id) {
            let k = state.plans.key_limiter.check(key_id, kr, kb, cells)?;
            if k.remaining < info.remaining {
                return Ok(k);
            }
        }
    }
    Ok(info)
}
