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

use axum::extract::{ConnectInfo, FromRequestParts};
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
}

impl TenantCtx {
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
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
}

/// Set by the metrics layer before routing; filled by the extractor so metrics can be labelled by tier.
#[derive(Clone, Default)]
pub struct TierSlot(pub Arc<OnceLock<&'static str>>);

impl FromRequestParts<AppState> for TenantCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
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
        let needed = if matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) { Scope::Read } else { Scope::Write };
        if !keys::allows(&scopes, needed) {
            return Err(Error::forbidden("insufficient_scope", format!("this call needs the {:?} scope", needed.as_str())));
        }
        if let Some(slot) = parts.extensions.get::<TierSlot>() {
            let _ = slot.0.set(cred_tenant.tier.as_str());
        }
        Ok(TenantCtx { tenant: cred_tenant, scopes, credential, state: state.clone() })
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
