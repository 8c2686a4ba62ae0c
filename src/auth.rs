//! Proving the tenant of a request.
//!
//! [`TenantCtx`] is an axum extractor. It resolves the tenant named by the host (subdomain of the base
//! domain, a registered custom domain, or `X-Tenant-Domain` from a trusted proxy) and the tenant of the
//! credentials (`X-API-Key`, `Authorization: Bearer <key | JWT>`), refuses any disagreement, and returns
//! a capability. Tenant storage is reachable only through [`TenantCtx::storage`]; there is no other
//! public way to lease a tenant handle from the request path.
//!
//! Lookups are cached in memory. The caches are dropped whenever `control.db` changes (a watcher polls
//! SQLite's `data_version` once a second, and in-process writes drop them at once), so revocations by the
//! CLI take effect within a second and those through the admin API immediately.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::control::{keys, tenants, ApiKey, ControlPlane, Scope, Status, Tenant};
use crate::error::Error;
use crate::plans::limiter::{RateInfo, Throttled};
use crate::plans::Entitlements;
use crate::state::AppState;
use crate::tenant::Lease;

/// How the credentials of a request were presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey { key_id: String },
    Jwt { subject: Option<String> },
}

/// A proven tenant: the request's credentials belong to this tenant, and the host agrees.
#[derive(Clone)]
pub struct TenantCtx {
    tenant: Arc<Tenant>,
    scopes: Vec<Scope>,
    credential: Credential,
    state: AppState,
    entitlements: Entitlements,
    rate: Option<RateSlot>,
}

impl TenantCtx {
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
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

    /// Fails with 403 `insufficient_scope` unless the credentials carry `scope` (or a broader one).
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if keys::allows(&self.scopes, scope) {
            Ok(())
        } else {
            Err(Error::forbidden("insufficient_scope", format!("this call needs the {:?} scope", scope.as_str())))
        }
    }

    /// Leases this tenant's storage (opening the handle if needed). The only door from a request to tenant data.
    pub async fn storage(&self) -> Result<Lease, Error> {
        self.state.registry.acquire(&self.tenant.id).await
    }

    /// What this tenant may do now: effective tier (after trial expiry), plan and overrides.
    pub fn entitlements(&self) -> &Entitlements {
        &self.entitlements
    }

    /// 403 `feature_not_in_plan` unless the tenant's plan has `feature`.
    pub fn require_feature(&self, feature: &str) -> Result<(), Error> {
        self.entitlements.require_feature(feature)
    }

    /// Charges `cells` more rate-limit cells for work known only in the handler (bulk: per document).
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
        let (_, _, resets_at) = crate::plans::period_of(now);
        let upgrade = crate::plans::TIERS.into_iter().find(|t| *t > ent.tier);
        let mut d = serde_json::Map::new();
        d.insert("limit".into(), limit.into());
        d.insert("used".into(), used.into());
        d.insert("resets_at".into(), serde_json::json!(resets_at));
        d.insert("upgrade_url".into(), ent.upgrade_url(upgrade, "queries").into());
        let wait = (resets_at - now).num_seconds().max(1) as u64;
        Err(Error::too_many("quota_exceeded", format!("the monthly quota of {limit} queries is used up"), wait, d))
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
            Error::forbidden_with("plan_limit_reached", format!("this write would pass the plan's {what} limit of {limit}"), d)
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
                let existing = lease
                    .blocking(move |h| {
                        h.with_reader(|c| {
                            let mut stmt = c.prepare_cached("SELECT 1 FROM documents WHERE path = ?1")?;
                            let mut n = 0u64;
                            for p in &paths {
                                if stmt.exists([p])? {
                                    n += 1;
                                }
                            }
                            Ok(n)
                        })
                    })
                    .await?;
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
        let (docs, size) = lease
            .blocking(|h| {
                h.with_reader(|c| {
                    Ok(c.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(content AS BLOB))), 0) FROM documents",
                        [],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                    )?)
                })
            })
            .await?;
        plans.set_stored(&self.tenant.id, docs.max(0) as u64, size.max(0) as u64);
        Ok(crate::plans::Stored { documents: docs.max(0) as u64, storage_bytes: size.max(0) as u64, measured_at: std::time::Instant::now() })
    }

    /// Notes a successful write for the storage limits (documents created, bytes written; deletes re-measure).
    pub fn wrote(&self, created: u64, bytes: u64) {
        self.state.plans.adjust_stored(&self.tenant.id, created as i64, bytes as i64);
    }
    pub fn deleted(&self) {
        self.state.plans.forget_stored(&self.tenant.id);
    }

    /// What the REST door does for one call, for calls that arrive another way (MCP tools): takes
    /// `cells` from the rate limiter and records an `api_call`.
    pub fn charge_call(&self, cells: u32) -> Result<(), Error> {
        self.charge(cells)?;
        if self.state.plans.enforce {
            self.state.meter.record(&self.tenant.id, crate::metering::Kind::ApiCall, 0);
        }
        Ok(())
    }

    /// The `[costs]` of this tenant's plan.
    pub fn costs(&self) -> &crate::plans::Costs {
        self.entitlements.costs()
    }
}

/// Set by the middleware before routing; filled by the extractor (and [`TenantCtx::charge`]) with
/// the state of the rate limiter, which the middleware reports as `RateLimit-*` headers.
#[derive(Clone, Default)]
pub struct RateSlot(pub Arc<Mutex<Option<RateInfo>>>);

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
    Error::too_many("rate_limited", msg, t.retry_after_secs, d)
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

/// Rate-limit cells of a call at the door (see `[costs]` in plans.toml).
fn door_cost(parts: &Parts, costs: &crate::plans::Costs) -> u32 {
    let path = parts.extensions.get::<MatchedPath>().map(|p| p.as_str()).unwrap_or_else(|| parts.uri.path());
    if path.ends_with("/search") {
        costs.search
    } else if path.ends_with("/context/assemble") {
        costs.assemble
    } else if path.ends_with("/embeddings") {
        costs.embeddings
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        costs.read
    } else {
        costs.write
    }
}

/// Writes a trial's expiry once (tier free + audit event) in the background.
fn expire_in_background(state: &AppState, tenant_id: &str) {
    if !state.plans.claim_expiry(tenant_id) {
        return;
    }
    let (s, id) = (state.clone(), tenant_id.to_string());
    tokio::spawn(async move {
        let now = s.plans.clock.now();
        let i = id.clone();
        match s.control.write(move |c| crate::plans::expire_trial(c, &i, now)).await {
            Ok(_) => s.auth.invalidate(),
            Err(e) => tracing::warn!(tenant = %id, error = %e, "recording trial expiry failed"),
        }
        s.plans.release_expiry(&id);
    });
}

/// Set by the metrics layer before routing; filled by the extractor so metrics can be labelled by tier.
#[derive(Clone, Default)]
pub struct TierSlot(pub Arc<OnceLock<&'static str>>);

impl FromRequestParts<AppState> for TenantCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let needed = if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) { Scope::Read } else { Scope::Write };
        TenantCtx::authenticate(parts, state, needed, true).await
    }
}

impl TenantCtx {
    /// Proves the tenant of a request: host and credentials agree, the tenant is active and the
    /// credentials carry `needed`. With `charge_door`, takes the call's rate-limit cells and records
    /// an `api_call` (REST); without, the caller charges per operation with [`TenantCtx::charge_call`] (MCP).
    pub async fn authenticate(parts: &mut Parts, state: &AppState, needed: Scope, charge_door: bool) -> Result<TenantCtx, Error> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let host_tenant = state.auth.host_tenant(&parts.headers, parts.uri.host(), peer, &state.config).await?;
        let (cred_tenant, scopes, credential) = state.auth.credential_tenant(&parts.headers).await?;
        if let Some(h) = &host_tenant {
            if h.id != cred_tenant.id {
                return Err(Error::forbidden("tenant_mismatch", "these credentials belong to another tenant than this host"));
            }
        }
        match cred_tenant.status {
            Status::Suspended => return Err(Error::forbidden("tenant_suspended", "this tenant is suspended")),
            Status::Cancelled => return Err(Error::forbidden("tenant_cancelled", "this tenant is cancelled")),
            Status::Trial | Status::Active => {}
        }
        if !keys::allows(&scopes, needed) {
            return Err(Error::forbidden("insufficient_scope", format!("this call needs the {:?} scope", needed.as_str())));
        }
        let entitlements = state.plans.entitlements(&cred_tenant);
        if entitlements.tier != cred_tenant.tier {
            expire_in_background(state, &cred_tenant.id);
        }
        if let Some(slot) = parts.extensions.get::<TierSlot>() {
            let _ = slot.0.set(entitlements.tier.as_str());
        }
        let rate = parts.extensions.get::<RateSlot>().cloned();
        if state.plans.enforce && charge_door {
            let (r, b) = entitlements.rate();
            let cost = door_cost(parts, entitlements.costs());
            let res = charge_cells(state, &cred_tenant.id, &credential, r, b, cost);
            if let Some(slot) = &rate {
                *slot.0.lock() = Some(match &res {
                    Ok(i) => *i,
                    Err(t) => t.info,
                });
            }
            res.map_err(|t| rate_limited(t, cost))?;
            state.meter.record(&cred_tenant.id, crate::metering::Kind::ApiCall, 0);
        }
        Ok(TenantCtx { tenant: cred_tenant, scopes, credential, state: state.clone(), entitlements, rate })
    }
}

/// Proof of the admin token.
pub struct AdminCtx;

impl FromRequestParts<AppState> for AdminCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(&parts.headers)?.ok_or_else(|| Error::unauthenticated("unauthorized", "send Authorization: Bearer <admin token>"))?;
        let presented = Sha256::digest(token.as_bytes());
        if bool::from(presented[..].ct_eq(&state.admin_token_hash)) {
            Ok(AdminCtx)
        } else {
            Err(Error::unauthenticated("invalid_credentials", "invalid admin token"))
        }
    }
}

/// The `Authorization: Bearer` value, if any. A non-UTF-8 header is a 400.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| Error::bad_request("invalid_header", "Authorization is not valid UTF-8 text"))?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
        return Err(Error::unauthenticated("invalid_credentials", "use Authorization: Bearer <API key or JWT>"));
    }
    Ok(Some(rest.trim()))
}

#[derive(Debug, Deserialize)]
struct Claims {
    tenant: String,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

pub struct Authenticator {
    control: ControlPlane,
    tenants: Cache<String, Option<Arc<Tenant>>>,
    keys: Cache<String, Option<Arc<ApiKey>>>,
    jwt: Option<(DecodingKey, Validation)>,
    /// Keys used since the last flush (id → time), written to control.db in batches.
    used: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Authenticator {
    pub fn new(control: ControlPlane, config: &Config) -> anyhow::Result<Authenticator> {
        let jwt = if let Some(secret) = &config.jwt.hs256_secret {
            let mut v = Validation::new(Algorithm::HS256);
            configure(&mut v, config);
            Some((DecodingKey::from_secret(secret.as_bytes()), v))
        } else if let Some(path) = &config.jwt.public_key_path {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading jwt public key {}: {e}", path.display()))?;
            let (key, alg) = match config.jwt.public_key_algorithm.as_deref() {
                Some("ES256") => (DecodingKey::from_ec_pem(&pem)?, Algorithm::ES256),
                _ => (DecodingKey::from_rsa_pem(&pem)?, Algorithm::RS256),
            };
            let mut v = Validation::new(alg);
            configure(&mut v, config);
            Some((key, v))
        } else {
            None
        };
        Ok(Authenticator { control, tenants: lookup_cache(), keys: lookup_cache(), jwt, used: Mutex::new(HashMap::new()) })
    }

    /// Drops every cached lookup (after any control-plane change).
    pub fn invalidate(&self) {
        self.tenants.invalidate_all();
        self.keys.invalidate_all();
    }

    async fn tenant_by(&self, kind: &'static str, value: &str) -> Result<Option<Arc<Tenant>>, Error> {
        let cache_key = format!("{kind}:{value}");
        if let Some(hit) = self.tenants.get(&cache_key) {
            return Ok(hit);
        }
        let v = value.to_string();
        let found = self
            .control
            .run(move |c| {
                Ok(match kind {
                    "slug" => tenants::get_by_slug(c, &v)?,
                    "id" => tenants::get_by_id(c, &v)?,
                    "domain" => tenants::get_by_domain(c, &v)?,
                    _ => tenants::get_by_slug_or_id(c, &v)?,
                })
            })
            .await?
            .map(Arc::new);
        self.tenants.insert(cache_key, found.clone());
        Ok(found)
    }

    /// The tenant the host names, if any. Unknown subdomains are 404.
    async fn host_tenant(
        &self,
        headers: &HeaderMap,
        uri_host: Option<&str>,
        peer: Option<IpAddr>,
        config: &Config,
    ) -> Result<Option<Arc<Tenant>>, Error> {
        let trusted = peer.is_some_and(|ip| config.trusted_proxies.iter().any(|n| n.contains(&ip)));
        let header_text = |name: &str| -> Result<Option<String>, Error> {
            headers
                .get(name)
                .map(|v| v.to_str().map(str::to_string).map_err(|_| Error::bad_request("invalid_header", format!("{name} is not valid text"))))
                .transpose()
        };
        let mut host = None;
        if trusted {
            host = header_text("x-tenant-domain")?;
            if host.is_none() {
                host = header_text("x-forwarded-host")?;
            }
        }
        if host.is_none() {
            host = header_text("host")?.or_else(|| uri_host.map(str::to_string));
        }
        let Some(host) = host else { return Ok(None) };
        match classify_host(&host, &config.base_domain) {
            HostKind::None => Ok(None),
            HostKind::Subdomain(label) => match crate::control::Slug::parse(&label) {
                Ok(slug) => self
                    .tenant_by("slug", slug.as_str())
                    .await?
                    .map(Some)
                    .ok_or_else(|| Error::not_found("tenant_not_found", format!("no tenant {:?}", slug.as_str()))),
                Err(e) if e.code() == "reserved_slug" => Ok(None),
                Err(_) => Err(Error::not_found("tenant_not_found", "no such tenant")),
            },
            HostKind::Other(domain) => self.tenant_by("domain", &domain).await,
        }
    }

    /// The tenant, scopes and kind of the presented credentials.
    async fn credential_tenant(&self, headers: &HeaderMap) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let api_key = headers
            .get("x-api-key")
            .map(|v| v.to_str().map_err(|_| Error::bad_request("invalid_header", "X-API-Key is not valid text")))
            .transpose()?;
        let token = match api_key {
            Some(k) => Some(k.trim()),
            None => bearer(headers)?,
        };
        let Some(token) = token else {
            return Err(Error::unauthenticated("unauthorized", "send X-API-Key: <key> or Authorization: Bearer <key or JWT>"));
        };
        if token.starts_with(keys::KEY_PREFIX) {
            self.key_tenant(token).await
        } else if token.split('.').count() == 3 {
            self.jwt_tenant(token).await
        } else {
            Err(Error::unauthenticated("invalid_credentials", "unrecognised credentials"))
        }
    }

    async fn key_tenant(&self, token: &str) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let invalid = || Error::unauthenticated("invalid_credentials", "invalid API key");
        let prefix = keys::lookup_prefix(token).ok_or_else(invalid)?.to_string();
        let key = match self.keys.get(&prefix) {
            Some(hit) => hit,
            None => {
                let p = prefix.clone();
                let found = self.control.run(move |c| Ok(keys::by_prefix(c, &p)?)).await?.map(Arc::new);
                self.keys.insert(prefix, found.clone());
                found
            }
        }
        .ok_or_else(invalid)?;
        if !keys::verify(token, &key.hash) {
            return Err(invalid());
        }
        let now = Utc::now();
        if key.revoked_at.is_some() {
            return Err(Error::unauthenticated("invalid_credentials", "this API key was revoked"));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::unauthenticated("token_expired", "this API key has expired"));
        }
        let tenant = self.tenant_by("id", &key.tenant_id).await?.ok_or_else(invalid)?;
        self.used.lock().insert(key.id.clone(), now);
        Ok((tenant, key.scopes.clone(), Credential::ApiKey { key_id: key.id.clone() }))
    }

    async fn jwt_tenant(&self, token: &str) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let (key, validation) =
            self.jwt.as_ref().ok_or_else(|| Error::unauthenticated("invalid_credentials", "JWTs are not accepted by this server"))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Error::unauthenticated("token_expired", "the JWT has expired"),
            _ => Error::unauthenticated("invalid_credentials", format!("invalid JWT: {e}")),
        })?;
        let claims = data.claims;
        let mut scopes: Vec<Scope> = match (&claims.scopes, &claims.scope) {
            (Some(list), _) => list.iter().filter_map(|s| Scope::parse(s)).collect(),
            (None, Some(s)) => s.split_whitespace().filter_map(Scope::parse).collect(),
            (None, None) => vec![Scope::Read],
        };
        scopes.sort();
        let tenant = self
            .tenant_by("slug_or_id", &claims.tenant)
            .await?
            .ok_or_else(|| Error::unauthenticated("invalid_credentials", "the JWT names an unknown tenant"))?;
        Ok((tenant, scopes, Credential::Jwt { subject: claims.sub }))
    }

    /// Writes the batched last-used times. Called by a periodic task and at shutdown.
    pub async fn flush_key_usage(&self) {
        let batch: Vec<(String, DateTime<Utc>)> = self.used.lock().drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.control.write(move |c| Ok(keys::touch_many(c, &batch)?)).await {
            tracing::warn!(error = %e, "could not record key last-used times");
        }
    }
}

fn lookup_cache<V: Clone + Send + Sync + 'static>() -> Cache<String, V> {
    Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build()
}

fn configure(v: &mut Validation, config: &Config) {
    v.set_required_spec_claims(&["exp"]);
    v.leeway = 30;
    if let Some(iss) = &config.jwt.issuer {
        v.set_issuer(&[iss]);
    }
    if let Some(aud) = &config.jwt.audience {
        v.set_audience(&[aud]);
    } else {
        v.validate_aud = false;
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum HostKind {
    /// The apex, an IP address, or a reserved subdomain: no tenant named.
    None,
    /// `<label>.<base domain>`.
    Subdomain(String),
    /// Any other host name: a possible custom domain.
    Other(String),
}

/// Classifies a Host header value against the base domain (port and trailing dot ignored).
pub fn classify_host(host: &str, base: &str) -> HostKind {
    let host = host.trim().to_ascii_lowercase();
    let host = if host.starts_with('[') {
        return HostKind::None; // IPv6 literal
    } else {
        host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host.as_str(), |(h, _)| h).to_string()
    };
    let host = host.trim_end_matches('.');
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host == base || host.parse::<IpAddr>().is_ok() || host == "localhost" {
        return HostKind::None;
    }
    if let Some(label) = host.strip_suffix(&format!(".{base}")) {
        if label.contains('.') {
            // Deeper names are never tenants: refuse rather than guess.
            return HostKind::Subdomain(String::new());
        }
        return HostKind::Subdomain(label.to_string());
    }
    HostKind::Other(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_classify() {
        assert_eq!(classify_host("acme.localhost:8080", "localhost"), HostKind::Subdomain("acme".into()));
        assert_eq!(classify_host("ACME.example.com.", "example.com"), HostKind::Subdomain("acme".into()));
        assert_eq!(classify_host("example.com", "example.com"), HostKind::None);
        assert_eq!(classify_host("127.0.0.1:3000", "localhost"), HostKind::None);
        assert_eq!(classify_host("[::1]:3000", "localhost"), HostKind::None);
        assert_eq!(classify_host("docs.acme.io", "example.com"), HostKind::Other("docs.acme.io".into()));
        assert_eq!(classify_host("a.b.example.com", "example.com"), HostKind::Subdomain(String::new()));
    }
}
