//! The dashboards' services: one-time links, sessions (tenant portal and operator console), and the
//! figures the pages show. Pages are a door (`crate::dashboard`): they call these and the other
//! services and render; they hold no orchestration of their own.
//!
//! A session is a random token in an HttpOnly cookie; the control plane stores only its SHA-256,
//! with the tenant (none for the console), the scopes, a CSRF token every form must echo, and the
//! expiry (`dashboard.session_ttl_secs`). A link is a random token valid once, for
//! `dashboard.link_ttl_secs`.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::audit::Operator;
use super::context::TenantCtx;
use super::ops::Op;
use crate::auth::{new_token, session_hash, AdminProof, RequestIdentity};
use crate::control::{keys, Change, DashboardSession, NewKey, Scope};
use crate::error::{Code, Error};
use crate::state::AppState;

/// A minted one-time link.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DashboardLink {
    /// Open it in a browser to log into the tenant's portal (once).
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// A session just opened: the cookie value (shown to the browser once) and the session.
pub struct Opened {
    pub token: String,
    pub session: DashboardSession,
}

impl Operator {
    /// Mints a one-time link into `slug`'s portal, valid `dashboard.link_ttl_secs`. Audited as
    /// `dashboard.link_created`.
    pub async fn dashboard_link(&self, slug: &str) -> Result<DashboardLink, Error> {
        let t = self.tenant(slug).await?;
        crate::auth::ensure_active(&t)?;
        let token = new_token();
        let expires_at = self.clock.now() + Duration::seconds(self.config.dashboard.link_ttl_secs as i64);
        let change = Change::MintDashboardLink { tenant_id: t.id.clone(), token_hash: session_hash(&token), expires_at };
        self.apply(Some(&t.id), "dashboard.link_created", json!({"expires_at": expires_at}), change).await?;
        Ok(DashboardLink { url: format!("{}/dashboard/login?token={token}", self.tenant_url(&t.slug)), expires_at })
    }
}

fn session_expiry(state: &AppState) -> (DateTime<Utc>, DateTime<Utc>) {
    let now = state.plans.clock.now();
    (now, now + Duration::seconds(state.config.dashboard.session_ttl_secs as i64))
}

async fn open(state: &AppState, tenant_id: Option<String>, scopes: Vec<Scope>, via: &str) -> Result<Opened, Error> {
    let token = new_token();
    let (now, expires_at) = session_expiry(state);
    let session = DashboardSession {
        token_hash: session_hash(&token),
        tenant_id,
        scopes,
        csrf: new_token(),
        via: via.to_string(),
        created_at: now,
        expires_at,
    };
    state.control.insert_session(session.clone(), now).await?;
    Ok(Opened { token, session })
}

/// Logs into the portal of the tenant a one-time link was minted for. The link is used up even when
/// the host names another tenant (then 403 `tenant_mismatch`); an unknown, used or expired link is
/// 401 `invalid_credentials`.
pub async fn login_with_link(state: &AppState, id: RequestIdentity<'_>, token: &str) -> Result<Opened, Error> {
    let now = state.plans.clock.now();
    let tenant_id = state
        .control
        .consume_dashboard_link(session_hash(token), now)
        .await?
        .ok_or_else(|| Error::unauthenticated(Code::InvalidCredentials, "this link is unknown, used or expired: ask for a new one"))?;
    if let Some(host) = state.auth.tenant_of_host(&id, &state.config).await? {
        if host.id != tenant_id {
            return Err(Error::forbidden(Code::TenantMismatch, "this link belongs to another tenant than this host"));
        }
    }
    let tenant = state.control.tenant_by_id(&tenant_id).await?.ok_or_else(|| Error::unauthenticated(Code::InvalidCredentials, "no such tenant"))?;
    crate::auth::ensure_active(&tenant)?;
    open(state, Some(tenant_id), vec![Scope::Admin], "link").await
}

/// Logs into the portal with an API key with the `admin` scope, or a JWT with it, proven exactly as
/// a REST call with that credential on this host would be.
pub async fn login_with_credential(state: &AppState, id: RequestIdentity<'_>, credential: &str) -> Result<Opened, Error> {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {}", credential.trim()))
        .map_err(|_| Error::unauthenticated(Code::InvalidCredentials, "unrecognised credentials"))?;
    headers.insert(axum::http::header::AUTHORIZATION, value);
    for name in ["host", "x-tenant-domain", "x-forwarded-host"] {
        if let Some(v) = id.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    let proven = state.auth.prove(RequestIdentity { headers: &headers, uri_host: id.uri_host, peer: id.peer }, &state.config).await?;
    if !keys::allows(&proven.scopes, Scope::Admin) {
        return Err(Error::forbidden(Code::InsufficientScope, "the dashboard needs a key with the admin scope"));
    }
    let via = match proven.credential {
        crate::auth::Credential::Jwt { .. } => "jwt",
        _ => "key",
    };
    open(state, Some(proven.tenant.id.clone()), proven.scopes.clone(), via).await
}

/// Logs into the operator console with the admin token.
pub async fn console_login(state: &AppState, admin_token: &str) -> Result<Opened, Error> {
    crate::auth::verify_admin_token(admin_token.trim(), &state.admin_token_hash)?;
    open(state, None, vec![Scope::Admin], "admin_token").await
}

/// The tenant of a portal request, proven by its session cookie, and the session.
pub async fn portal(state: &AppState, id: RequestIdentity<'_>, token: &str) -> Result<(TenantCtx, DashboardSession), Error> {
    TenantCtx::from_session(state, id, token).await
}

/// The operator of a console request, proven by its session cookie.
pub async fn console(state: &AppState, token: &str) -> Result<(Operator, AdminProof, DashboardSession), Error> {
    let (proof, session) = state.auth.console_session(token).await?;
    Ok((Operator::live(state, super::Actor::Admin), proof, session))
}

/// Ends a session (either kind).
pub async fn logout(state: &AppState, token: &str) -> Result<(), Error> {
    state.control.delete_session(session_hash(token)).await
}

/// Whether a form's CSRF token is the session's: 403 `csrf_failed` otherwise.
pub fn check_csrf(session: &DashboardSession, presented: Option<&str>) -> Result<(), Error> {
    match presented {
        Some(p) if crate::auth::same_secret(p, &session.csrf) => Ok(()),
        _ => Err(Error::forbidden(Code::CsrfFailed, "this form's CSRF token is missing or stale: reload the page")),
    }
}

/// Usage figures as the portal shows them (per day or per key).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Tally {
    pub api_calls: u64,
    pub queries: u64,
    pub tokens_embedded: u64,
    pub tokens_returned: u64,
    pub recommendations: u64,
}

impl Tally {
    /// Adds one `(kind, calls, tokens)` row of usage events; the operator's cost kinds are ignored.
    fn add(&mut self, kind: &str, calls: u64, tokens: u64) {
        use crate::metering::Kind;
        match Kind::parse(kind) {
            Some(Kind::ApiCall) => self.api_calls += calls,
            Some(Kind::Search) => self.queries += calls,
            Some(Kind::Assemble) => {
                self.queries += calls;
                self.tokens_returned += tokens
            }
            Some(Kind::Embedding) | Some(Kind::DocumentWrite) => self.tokens_embedded += tokens,
            Some(Kind::Recommendation) => self.recommendations += calls,
            _ => {}
        }
    }
}

/// One UTC day of a tenant's usage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayUsage {
    /// `YYYY-MM-DD`.
    pub day: String,
    #[serde(flatten)]
    pub usage: Tally,
}

fn since_days(state: &AppState, days: u32) -> (chrono::NaiveDate, DateTime<Utc>) {
    let today = state.plans.clock.now().date_naive();
    let first = today - Duration::days(days.saturating_sub(1) as i64);
    (first, first.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or_default())
}

/// The tenant's usage per UTC day for the last `days` days (today included), oldest first, with a
/// row for every day (zero where nothing happened).
pub async fn daily_usage(ctx: &TenantCtx, days: u32) -> Result<Vec<DayUsage>, Error> {
    ctx.authorize(Op::UsageRead)?;
    let state = ctx.state();
    state.meter.flush().await;
    let (first, since) = since_days(state, days);
    let rows = state.control.usage_by_day(ctx.id(), since).await?;
    let mut by_day: BTreeMap<String, DayUsage> = BTreeMap::new();
    for i in 0..days {
        let d = (first + Duration::days(i as i64)).format("%Y-%m-%d").to_string();
        by_day.insert(d.clone(), DayUsage { day: d, ..Default::default() });
    }
    for (day, kind, calls, tokens) in rows {
        if let Some(u) = by_day.get_mut(&day) {
            u.usage.add(&kind, calls, tokens);
        }
    }
    Ok(by_day.into_values().collect())
}

/// One API key's usage over a period (or, with no key, what portal sessions and webhooks did).
#[derive(Debug, Clone, Serialize)]
pub struct KeyUsage {
    /// `None`: usage made without an API key.
    pub key_id: Option<String>,
    pub name: String,
    pub prefix: Option<String>,
    pub revoked: bool,
    #[serde(flatten)]
    pub usage: Tally,
}

/// The tenant's usage per API key over the last `days` days: every key it has (live ones first,
/// then by name), then a row for usage without a key if there was any.
pub async fn key_usage(ctx: &TenantCtx, days: u32) -> Result<Vec<KeyUsage>, Error> {
    ctx.authorize(Op::UsageRead)?;
    let state = ctx.state();
    state.meter.flush().await;
    let (_, since) = since_days(state, days);
    let rows = state.control.usage_by_key(ctx.id(), since).await?;
    let mut keys = state.control.list_keys(ctx.id()).await?;
    keys.sort_by(|a, b| (a.revoked_at.is_some(), &a.name).cmp(&(b.revoked_at.is_some(), &b.name)));
    let mut out: Vec<KeyUsage> = keys
        .into_iter()
        .map(|k| KeyUsage { key_id: Some(k.id), name: k.name, prefix: Some(k.prefix), revoked: k.revoked_at.is_some(), usage: Tally::default() })
        .collect();
    let mut keyless = Tally::default();
    let mut any_keyless = false;
    for (key, kind, calls, tokens) in rows {
        match out.iter_mut().find(|k| k.key_id.is_some() && k.key_id == key) {
            Some(k) => k.usage.add(&kind, calls, tokens),
            // Usage made without a key, or by a key no longer listed.
            None => {
                keyless.add(&kind, calls, tokens);
                any_keyless = true;
            }
        }
    }
    if any_keyless {
        out.push(KeyUsage { key_id: None, name: "Without a key (portal, webhooks)".into(), prefix: None, revoked: false, usage: keyless });
    }
    Ok(out)
}

/// One step of the onboarding checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub key: &'static str,
    pub label: &'static str,
    pub done: bool,
    /// Progress as `(done, total)` while it runs (a sync against the store's declared totals).
    pub progress: Option<(u64, u64)>,
    /// What it says while it runs (training: its ETA).
    pub note: Option<String>,
}

/// The portal's onboarding checklist, from the tenant's own data: keys used, documents, usage of the
/// month, the store's sync against the totals it declared (`PUT /integrations/woocommerce/totals`),
/// and the recommendation model.
pub async fn onboarding(ctx: &TenantCtx, month: &Value) -> Result<Vec<Step>, Error> {
    ctx.authorize(Op::UsageRead)?;
    // Key use is written in batches: write the pending batch so "first key used" is current.
    ctx.state().auth.flush_key_usage().await;
    let keys = ctx.state().control.list_keys(ctx.id()).await?;
    let key_used = keys.iter().any(|k| k.last_used_at.is_some());
    let u = &month["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    let mut steps = vec![
        Step { key: "first_key_used", label: "Use your first API key", done: key_used, progress: None, note: None },
        Step { key: "first_document", label: "Add your first document", done: n("documents") > 0, progress: None, note: None },
        Step { key: "first_search", label: "Run your first search", done: n("queries") > 0, progress: None, note: None },
    ];
    if ctx.entitlements().has(super::recs::FEATURE) {
        let status = super::recs::status(ctx).await?;
        let sync = &status["sync"];
        for (kind, label) in [("products", "Sync products"), ("orders", "Sync orders")] {
            let stored = sync[kind]["synced"].as_u64().unwrap_or(0);
            let total = sync[kind]["total"].as_u64();
            let done = match total {
                Some(t) => stored >= t && stored > 0,
                None => stored > 0,
            };
            let key = if kind == "products" { "products_synced" } else { "orders_synced" };
            steps.push(Step { key, label, done, progress: total.map(|t| (stored.min(t), t)), note: None });
        }
        let training = status["training"].as_bool().unwrap_or(false);
        let trained = status["trained_at"].is_string();
        // The ETA is the last training's duration (the first training has none).
        let note = training.then(|| match status["training_ms"].as_u64().map(|ms| ms.div_ceil(1000)) {
            Some(s) if s >= 60 => format!("Training AI models… about {} min left", s.div_ceil(60)),
            Some(s) => format!("Training AI models… about {s} s left"),
            None => "Training AI models…".to_string(),
        });
        steps.push(Step { key: "model_trained", label: "Train the recommendation model", done: trained && !training, progress: None, note });
        steps.push(Step {
            key: "first_recommendation",
            label: "Serve your first recommendation",
            done: u["recommendation"]["calls"].as_u64().unwrap_or(0) > 0,
            progress: None,
            note: None,
        });
    }
    Ok(steps)
}

/// The tenant's keys, for its portal (admin scope).
pub async fn list_keys(ctx: &TenantCtx) -> Result<Vec<crate::control::ApiKey>, Error> {
    ctx.authorize(Op::KeysList)?;
    ctx.state().control.list_keys(ctx.id()).await
}

/// The tenant as the operator of its own keys, audited as the tenant.
fn self_operator(ctx: &TenantCtx) -> Operator {
    Operator::live(ctx.state(), super::Actor::Tenant(ctx.id().to_string()))
}

/// Creates a key of the tenant's own (admin scope); the plaintext is shown once.
pub async fn create_key(ctx: &TenantCtx, new: NewKey) -> Result<super::keys::IssuedKey, Error> {
    ctx.authorize(Op::KeyCreate)?;
    self_operator(ctx).create_key(&ctx.tenant().slug, new).await
}

/// Revokes one of the tenant's own keys.
pub async fn revoke_key(ctx: &TenantCtx, key_id: &str) -> Result<crate::control::ApiKey, Error> {
    ctx.authorize(Op::KeyRevoke)?;
    self_operator(ctx).revoke_key(&ctx.tenant().slug, key_id).await
}

/// Rotates one of the tenant's own keys.
pub async fn rotate_key(ctx: &TenantCtx, key_id: &str) -> Result<super::keys::RotatedKey, Error> {
    ctx.authorize(Op::KeyRotate)?;
    self_operator(ctx).rotate_key(&ctx.tenant().slug, key_id).await
}

/// The operator console's overview figures.
#[derive(Debug, Serialize)]
pub struct ConsoleOverview {
    pub period: String,
    /// Plan prices plus overage this month, over every tenant (the usage export's `total_usd`).
    pub mrr_usd: f64,
    /// Per tier: tenants and their MRR.
    pub by_tier: Vec<(String, u64, f64)>,
    /// Tenants per status.
    pub by_status: Vec<(String, u64)>,
    /// Trials ending within 7 days: slug, name, end.
    pub trials_ending: Vec<(String, String, DateTime<Utc>)>,
    pub open_handles: u64,
    pub handle_cap: u64,
    pub embed_queue: usize,
    /// Every tenant with its bill this month, for the tenants table.
    pub tenants: Vec<ConsoleTenant>,
    /// Requests, errors and latency over the last hour (this process).
    pub traffic: crate::traffic::Summary,
    /// Trial conversions, expiries and churn this month.
    pub lifecycle: crate::control::Lifecycle,
    /// Calls this month per tier and feature ([`FEATURES`] order), every tier listed.
    pub heatmap: Vec<(String, [u64; FEATURES.len()])>,
    /// The replicas furthest behind (empty when backups are off or nothing is behind).
    pub backup_lag: Vec<LagRow>,
    pub backups_on: bool,
}

/// The features of the console's heatmap, as the usage report counts them.
pub const FEATURES: [&str; 6] = ["search", "assemble", "embeddings", "document writes", "document deletes", "recommendations"];

fn feature_calls(r: &crate::billing::UsageRow) -> [u64; FEATURES.len()] {
    [r.searches, r.assembles, r.embedding_calls, r.document_writes, r.document_deletes, r.recommendations]
}

/// One replica behind its database, for the console.
#[derive(Debug, Serialize)]
pub struct LagRow {
    pub slug: String,
    pub lag_secs: f64,
    pub open: bool,
    pub consecutive_failures: u32,
}

/// One row of the console's tenants table.
#[derive(Debug, Serialize)]
pub struct ConsoleTenant {
    pub slug: String,
    pub name: String,
    pub tier: String,
    pub status: String,
    pub mrr_usd: f64,
    /// Queries used against the plan's monthly queries, in percent (none when unlimited).
    pub quota_percent: Option<f64>,
    pub storage_bytes: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// What the tenant cost this node this month (see [`Cost`]).
    pub cost: Cost,
}

/// A tenant's cost this month: measured figures and their price at the operator's unit prices
/// (`dashboard.cost_*`). CPU is thread CPU time measured around the work itself (embedding batches
/// shared by tokens, searches and assemblies, trainings); storage is the tenant's last measured
/// database and index size, priced for a whole month; PUTs are the objects its backups shipped.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    pub cpu_seconds_embed: f64,
    pub cpu_seconds_search: f64,
    pub cpu_seconds_train: f64,
    pub store_puts: u64,
    pub store_put_bytes: u64,
    pub estimated_usd: f64,
}

impl Cost {
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_seconds_embed + self.cpu_seconds_search + self.cpu_seconds_train
    }

    fn of(r: &crate::billing::UsageRow, prices: &crate::config::DashboardConfig) -> Cost {
        let mut c = Cost {
            cpu_seconds_embed: r.cpu_seconds_embed,
            cpu_seconds_search: r.cpu_seconds_search,
            cpu_seconds_train: r.cpu_seconds_train,
            store_puts: r.store_puts,
            store_put_bytes: r.store_put_bytes,
            estimated_usd: 0.0,
        };
        c.estimated_usd = c.cpu_seconds() / 3600.0 * prices.cost_cpu_hour_usd
            + r.storage_bytes.unwrap_or(0) as f64 / 1e9 * prices.cost_storage_gb_month_usd
            + c.store_puts as f64 / 1000.0 * prices.cost_put_per_1000_usd;
        c
    }
}

impl Operator {
    /// The console's tenants table alone: every tenant with its bill and cost this month.
    pub async fn console_tenants(&self, _proof: &AdminProof) -> Result<Vec<ConsoleTenant>, Error> {
        let (_, tenants, rows) = self.usage_report_with_tenants(None).await?;
        Ok(self.tenant_table(&tenants, &rows))
    }

    /// One row per tenant; `rows` is the usage report of `tenants`, in their order.
    fn tenant_table(&self, tenants: &[crate::control::Tenant], rows: &[crate::billing::UsageRow]) -> Vec<ConsoleTenant> {
        tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let bill = rows.get(i).filter(|b| b.tenant_id == t.id);
                ConsoleTenant {
                    slug: t.slug.clone(),
                    name: t.name.clone(),
                    tier: bill.map_or_else(|| t.tier.as_str().to_string(), |b| b.tier.as_str().to_string()),
                    status: t.status.as_str().to_string(),
                    mrr_usd: bill.map_or(0.0, |b| b.total_usd),
                    quota_percent: bill.and_then(|b| b.queries_limit.map(|l| if l == 0 { 100.0 } else { b.queries as f64 * 100.0 / l as f64 })),
                    storage_bytes: bill.and_then(|b| b.storage_bytes),
                    created_at: t.created_at,
                    cost: bill.map(|b| Cost::of(b, &self.config.dashboard)).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The console's overview: MRR by tier (the usage report of this month), tenants by status,
    /// trials ending, conversions and churn this month, open handles against the cap, the embedding
    /// queue, the last hour's traffic, the tier × feature heatmap and the replicas furthest behind.
    pub async fn console_overview(&self, _proof: &AdminProof) -> Result<ConsoleOverview, Error> {
        let (period, tenants, rows) = self.usage_report_with_tenants(None).await?;
        let now = self.clock.now();
        let mut by_tier: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for r in &rows {
            let e = by_tier.entry(r.tier.as_str().to_string()).or_default();
            e.0 += 1;
            e.1 += r.total_usd;
        }
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        let mut trials_ending = Vec::new();
        for t in &tenants {
            *by_status.entry(t.status.as_str().to_string()).or_default() += 1;
            if let Some(end) = t.trial_ends_at {
                if t.status == crate::control::Status::Trial && end > now && end <= now + Duration::days(7) {
                    trials_ending.push((t.slug.clone(), t.name.clone(), end));
                }
            }
        }
        let table = self.tenant_table(&tenants, &rows);
        trials_ending.sort_by_key(|t| t.2);
        let mrr: f64 = rows.iter().map(|r| r.total_usd).sum();
        let mut heatmap: Vec<(String, [u64; FEATURES.len()])> =
            crate::plans::TIERS.into_iter().map(|t| (t.as_str().to_string(), [0; FEATURES.len()])).collect();
        for r in &rows {
            if let Some((_, cells)) = heatmap.iter_mut().find(|(t, _)| t == r.tier.as_str()) {
                for (c, n) in cells.iter_mut().zip(feature_calls(r)) {
                    *c += n;
                }
            }
        }
        let (_, from, to) = crate::clock::period_of(now);
        let (from, to) = (crate::clock::ts(from), crate::clock::ts(to));
        let lifecycle = self.control.lifecycle(from, to).await?;
        let slugs: std::collections::HashMap<&str, &str> = tenants.iter().map(|t| (t.id.as_str(), t.slug.as_str())).collect();
        let backup = self.live.as_ref().and_then(|s| s.backup.clone());
        let backups_on = backup.is_some();
        let lagging = match backup {
            Some(b) => tokio::task::spawn_blocking(move || b.most_lagging(10)).await?,
            None => Vec::new(),
        };
        let backup_lag = lagging
            .into_iter()
            .map(|l| LagRow {
                slug: slugs.get(l.tenant_id.as_str()).map_or_else(|| l.tenant_id.clone(), |s| s.to_string()),
                lag_secs: (l.lag_secs * 10.0).round() / 10.0,
                open: l.open,
                consecutive_failures: l.consecutive_failures,
            })
            .collect();
        let traffic = match &self.live {
            Some(s) => s.traffic.summary(),
            None => crate::traffic::Traffic::new(self.clock.clone()).summary(),
        };
        let (open_handles, embed_queue) = match &self.live {
            Some(s) => (s.registry.open_count(), s.embed.queue_len()),
            None => (0, 0),
        };
        Ok(ConsoleOverview {
            period,
            mrr_usd: (mrr * 100.0).round() / 100.0,
            by_tier: by_tier.into_iter().map(|(k, (n, v))| (k, n, (v * 100.0).round() / 100.0)).collect(),
            by_status: by_status.into_iter().collect(),
            trials_ending,
            open_handles,
            handle_cap: self.config.max_open_tenants,
            embed_queue,
            tenants: table,
            traffic,
            lifecycle,
            heatmap,
            backup_lag,
            backups_on,
        })
    }
}

/// One month's statement of a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct Statement {
    /// `YYYY-MM`.
    pub period: String,
    pub api_calls: u64,
    pub queries: u64,
    pub tokens_embedded: u64,
    pub tokens_returned: u64,
    pub bill: crate::billing::Bill,
}

/// The tenant's statements for the current month and up to `months - 1` before it (not before the
/// tenant existed), newest first. Priced with the tenant's current plan.
pub async fn statements(ctx: &TenantCtx, months: u32) -> Result<Vec<Statement>, Error> {
    ctx.authorize(Op::UsageRead)?;
    let state = ctx.state();
    state.meter.flush().await;
    let now = state.plans.clock.now();
    let created = ctx.tenant().created_at;
    let mut periods = Vec::new();
    let (mut p, mut start, _) = crate::clock::period_of(now);
    for _ in 0..months.max(1) {
        let (_, s, e) = crate::clock::parse_period(&p).ok_or_else(|| Error::internal(anyhow::anyhow!("bad period {p}")))?;
        periods.push((p.clone(), crate::clock::ts(s), crate::clock::ts(e)));
        if start <= created {
            break;
        }
        let prev = start - Duration::days(1);
        (p, start, _) = crate::clock::period_of(prev);
    }
    let id = ctx.id().to_string();
    let mut rows = Vec::with_capacity(periods.len());
    for (p, from, to) in periods {
        let totals = state.control.usage_totals(Some(id.clone()), from, to, None).await?;
        rows.push((p, totals.into_iter().map(|(_, kind, c, t)| (kind, c, t)).collect::<Vec<_>>()));
    }
    let ent = ctx.entitlements();
    Ok(rows
        .into_iter()
        .map(|(period, rows)| {
            let u = crate::metering::MonthUsage::from_rows(&rows);
            Statement {
                period,
                api_calls: u.count(crate::metering::Kind::ApiCall),
                queries: u.queries(),
                tokens_embedded: u.tokens_embedded(),
                tokens_returned: u.tokens_returned(),
                bill: crate::billing::bill(ent, &u),
            }
        })
        .collect())
}

/// One tier of the plan comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOffer {
    pub tier: crate::control::Tier,
    pub plan: std::sync::Arc<crate::plans::Plan>,
    /// Where the upgrade button goes (the plans file's `upgrade_url`), for tiers above the tenant's.
    pub upgrade_url: Option<String>,
}

/// Every tier's plan, with an upgrade link for those above the tenant's tier.
pub fn plan_offers(ctx: &TenantCtx) -> Result<Vec<PlanOffer>, Error> {
    ctx.authorize(Op::UsageRead)?;
    let plans = ctx.state().plans.plans();
    let ent = ctx.entitlements();
    Ok(crate::plans::TIERS
        .into_iter()
        .map(|tier| PlanOffer { tier, plan: plans.plan(tier).clone(), upgrade_url: (tier > ent.tier).then(|| ent.upgrade_url(Some(tier), "plan")) })
        .collect())
}
