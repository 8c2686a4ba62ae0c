//! Proving who is asking: the tenant of a request, or the operator.
//!
//! [`Authenticator::prove`] resolves the tenant named by the host (subdomain of the base domain, a
//! registered custom domain, or `X-Tenant-Domain` from a trusted proxy) and the tenant of the
//! credentials (`X-API-Key`, `Authorization: Bearer <key | JWT>`), refuses any disagreement and any
//! tenant that is not active, and returns a [`Proven`] holding a [`RequestProof`]. [`verify_admin`]
//! checks the admin token and returns an [`AdminProof`]. Both proofs have private constructors, and
//! a tenant capability (`crate::tenant::TenantCap`) can only be made from one of them.
//!
//! Lookups are cached in memory. The caches are dropped whenever `control.db` changes (a watcher polls
//! SQLite's `data_version` once a second, and in-process writes drop them at once), so revocations by the
//! CLI take effect within a second and those through the admin API immediately.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use moka::sync::Cache;
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::config::Config;
use crate::control::{keys, ApiKey, ControlPlane, DashboardSession, Scope, Status, Tenant};
use crate::error::{Code, Error};

/// How the credentials of a request were presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    ApiKey {
        key_id: String,
    },
    Jwt {
        subject: Option<String>,
    },
    /// A signed webhook delivery (`source`: `woocommerce`).
    Webhook {
        source: &'static str,
    },
    /// A background worker resuming work the tenant's own credentials started (a document job).
    Worker {
        worker: &'static str,
    },
    /// A tenant-portal session cookie (opened with a dashboard link, an admin key or a JWT).
    Session {
        via: String,
    },
}

/// Proof that host and credentials of a request agree on one active tenant. Only [`Authenticator::prove`] makes one.
#[derive(Debug)]
pub struct RequestProof {
    _private: (),
}

/// Proof that a webhook delivery was signed with the secret of the tenant its host names. Only
/// [`verify_woocommerce`] makes one.
#[derive(Debug)]
pub struct WebhookProof {
    _private: (),
}

/// Checks WooCommerce's `X-WC-Webhook-Signature`: base64 of the HMAC-SHA256 of the raw body, keyed
/// with the tenant's webhook secret, compared in constant time.
pub fn verify_woocommerce(secret: &str, body: &[u8], signature: Option<&str>) -> Result<WebhookProof, Error> {
    use base64::Engine;
    use hmac::Mac;
    let refuse = |m: &str| Error::unauthenticated(Code::WebhookSignatureInvalid, m.to_string());
    let sig = signature.ok_or_else(|| refuse("X-WC-Webhook-Signature is missing"))?;
    let given = base64::engine::general_purpose::STANDARD.decode(sig.trim()).map_err(|_| refuse("X-WC-Webhook-Signature is not base64"))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| refuse("unusable webhook secret"))?;
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| refuse("X-WC-Webhook-Signature does not match the tenant's webhook secret"))?;
    Ok(WebhookProof { _private: () })
}

/// 403 unless the tenant is active or in its trial.
pub fn ensure_active(tenant: &Tenant) -> Result<(), Error> {
    match tenant.status {
        Status::Suspended => Err(Error::forbidden(Code::TenantSuspended, "this tenant is suspended")),
        Status::Cancelled => Err(Error::forbidden(Code::TenantCancelled, "this tenant is cancelled")),
        Status::Trial | Status::Active => Ok(()),
    }
}

/// Proof of the operator: the admin token was presented, or the local operator runs the CLI on the data dir.
#[derive(Debug, Clone, Copy)]
pub struct AdminProof {
    _private: (),
}

impl AdminProof {
    /// The CLI acts as the operator: whoever can run it can read the data dir anyway.
    pub fn local_operator() -> AdminProof {
        AdminProof { _private: () }
    }
}

/// Checks `Authorization: Bearer <admin token>` against the stored SHA-256 in constant time.
pub fn verify_admin(headers: &HeaderMap, token_hash: &[u8]) -> Result<AdminProof, Error> {
    let token = bearer(headers)?.ok_or_else(|| Error::unauthenticated(Code::Unauthorized, "send Authorization: Bearer <admin token>"))?;
    verify_admin_token(token, token_hash)
}

/// Checks a presented admin token (the console's login form) against the stored SHA-256 in constant time.
pub fn verify_admin_token(token: &str, token_hash: &[u8]) -> Result<AdminProof, Error> {
    let presented = Sha256::digest(token.as_bytes());
    if bool::from(presented[..].ct_eq(token_hash)) {
        Ok(AdminProof { _private: () })
    } else {
        Err(Error::unauthenticated(Code::InvalidCredentials, "invalid admin token"))
    }
}

/// The outcome of [`Authenticator::prove`].
pub struct Proven {
    pub tenant: Arc<Tenant>,
    pub scopes: Vec<Scope>,
    pub credential: Credential,
    pub proof: RequestProof,
}

/// What the door read off a request for authentication.
pub struct RequestIdentity<'a> {
    pub headers: &'a HeaderMap,
    pub uri_host: Option<&'a str>,
    pub peer: Option<IpAddr>,
}

/// The `Authorization: Bearer` value, if any. A non-UTF-8 header is a 400.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| Error::bad_request(Code::InvalidHeader, "Authorization is not valid UTF-8 text"))?;
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || rest.trim().is_empty() {
        return Err(Error::unauthenticated(Code::InvalidCredentials, "use Authorization: Bearer <API key or JWT>"));
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

/// What a verified JWT says: the tenant it names (slug or id), its scopes and its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub subject: Option<String>,
}

/// Verifies a JWT (signature, `exp`, `nbf`, and `iss`/`aud` where configured) and reads its claims.
/// Scopes come from `scopes` (a list) or `scope` (space-separated); neither means `read`. Any token
/// an attacker sends ends in a 401, never a panic (fuzzed: `fuzz/fuzz_targets/tenant_resolver.rs`).
pub fn parse_jwt(token: &str, key: &jsonwebtoken::DecodingKey, validation: &jsonwebtoken::Validation) -> Result<JwtClaims, Error> {
    let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => Error::unauthenticated(Code::TokenExpired, "the JWT has expired"),
        _ => Error::unauthenticated(Code::InvalidCredentials, format!("invalid JWT: {e}")),
    })?;
    let claims = data.claims;
    let mut scopes: Vec<Scope> = match (&claims.scopes, &claims.scope) {
        (Some(list), _) => list.iter().filter_map(|s| Scope::parse(s)).collect(),
        (None, Some(s)) => s.split_whitespace().filter_map(Scope::parse).collect(),
        (None, None) => vec![Scope::Read],
    };
    scopes.sort();
    Ok(JwtClaims { tenant: claims.tenant, scopes, subject: claims.sub })
}

pub struct Authenticator {
    control: ControlPlane,
    tenants: Cache<String, Option<Arc<Tenant>>>,
    keys: Cache<String, Option<Arc<ApiKey>>>,
    jwt: Option<(DecodingKey, Validation)>,
    /// Keys used since the last flush (id → time), written to control.db in batches.
    used: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Key expiry is judged against this clock.
    clock: Clock,
}

impl Authenticator {
    pub fn new(control: ControlPlane, config: &Config, clock: Clock) -> anyhow::Result<Authenticator> {
        let jwt = if let Some(secret) = &config.jwt.hs256_secret {
            let mut v = Validation::new(Algorithm::HS256);
            configure(&mut v, config);
            Some((DecodingKey::from_secret(secret.expose().as_bytes()), v))
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
        Ok(Authenticator { control, tenants: lookup_cache(), keys: lookup_cache(), jwt, used: Mutex::new(HashMap::new()), clock })
    }

    /// Proves the tenant of a request: host and credentials agree and the tenant is active. Scopes
    /// are checked per operation by the caller (`services::TenantCtx::authorize`).
    pub async fn prove(&self, req: RequestIdentity<'_>, config: &Config) -> Result<Proven, Error> {
        // Credentials first: without valid ones the answer is 401 whatever the host names, so tenant
        // slugs cannot be enumerated by trying hosts.
        let (tenant, scopes, credential) = self.credential_tenant(req.headers).await?;
        let host_tenant = self.host_tenant(req.headers, req.uri_host, req.peer, config).await?;
        if let Some(h) = &host_tenant {
            if h.id != tenant.id {
                return Err(Error::forbidden(Code::TenantMismatch, "these credentials belong to another tenant than this host"));
            }
        }
        ensure_active(&tenant)?;
        Ok(Proven { tenant, scopes, credential, proof: RequestProof { _private: () } })
    }

    /// Proves the tenant of a tenant-portal request by its session cookie: the session exists, has
    /// not expired, belongs to a tenant, and the host names no other tenant. Answers the proof and
    /// the session (its CSRF token).
    pub async fn prove_session(&self, req: RequestIdentity<'_>, config: &Config, token: &str) -> Result<(Proven, DashboardSession), Error> {
        let invalid = || Error::unauthenticated(Code::InvalidCredentials, "no such session, or it has expired");
        let session = self.control.session(session_hash(token), self.clock.now()).await?.ok_or_else(invalid)?;
        let tenant_id = session.tenant_id.clone().ok_or_else(invalid)?;
        let tenant = self.tenant_by("id", &tenant_id).await?.ok_or_else(invalid)?;
        let host_tenant = self.host_tenant(req.headers, req.uri_host, req.peer, config).await?;
        if host_tenant.is_some_and(|h| h.id != tenant.id) {
            return Err(Error::forbidden(Code::TenantMismatch, "this session belongs to another tenant than this host"));
        }
        ensure_active(&tenant)?;
        let proven = Proven {
            tenant,
            scopes: session.scopes.clone(),
            credential: Credential::Session { via: session.via.clone() },
            proof: RequestProof { _private: () },
        };
        Ok((proven, session))
    }

    /// Proves the operator by an operator-console session cookie (opened with the admin token).
    pub async fn console_session(&self, token: &str) -> Result<(AdminProof, DashboardSession), Error> {
        let invalid = || Error::unauthenticated(Code::InvalidCredentials, "no such session, or it has expired");
        let session = self.control.session(session_hash(token), self.clock.now()).await?.ok_or_else(invalid)?;
        if session.tenant_id.is_some() || session.via != "admin_token" {
            return Err(invalid());
        }
        Ok((AdminProof { _private: () }, session))
    }

    /// The tenant a request's host names (subdomain, custom domain, or `X-Tenant-Domain` from a
    /// trusted proxy), for doors that authenticate otherwise (webhooks).
    pub async fn tenant_of_host(&self, req: &RequestIdentity<'_>, config: &Config) -> Result<Option<Arc<Tenant>>, Error> {
        self.host_tenant(req.headers, req.uri_host, req.peer, config).await
    }

    /// The tenant a host names, if any (for the MCP door's DNS-rebinding guard and Caddy's `ask`).
    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Option<Arc<Tenant>>, Error> {
        self.tenant_by("domain", domain).await
    }

    /// The tenant with this slug, if any.
    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Arc<Tenant>>, Error> {
        self.tenant_by("slug", slug).await
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
        let found = match kind {
            "slug" => self.control.tenant_by_slug(value).await?,
            "id" => self.control.tenant_by_id(value).await?,
            _ => self.control.tenant_by_domain(value).await?,
        }
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
                .map(|v| v.to_str().map(str::to_string).map_err(|_| Error::bad_request(Code::InvalidHeader, format!("{name} is not valid text"))))
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
                    .ok_or_else(|| Error::not_found(Code::TenantNotFound, format!("no tenant {:?}", slug.as_str()))),
                Err(e) if e.code() == Code::ReservedSlug => Ok(None),
                Err(_) => Err(Error::not_found(Code::TenantNotFound, "no such tenant")),
            },
            HostKind::Other(domain) => self.tenant_by("domain", &domain).await,
        }
    }

    /// The tenant, scopes and kind of the presented credentials.
    async fn credential_tenant(&self, headers: &HeaderMap) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let api_key = headers
            .get("x-api-key")
            .map(|v| v.to_str().map_err(|_| Error::bad_request(Code::InvalidHeader, "X-API-Key is not valid text")))
            .transpose()?;
        let token = match api_key {
            Some(k) => Some(k.trim()),
            None => bearer(headers)?,
        };
        let Some(token) = token else {
            return Err(Error::unauthenticated(Code::Unauthorized, "send X-API-Key: <key> or Authorization: Bearer <key or JWT>"));
        };
        if token.starts_with(keys::KEY_PREFIX) {
            self.key_tenant(token).await
        } else if token.split('.').count() == 3 {
            self.jwt_tenant(token).await
        } else {
            Err(Error::unauthenticated(Code::InvalidCredentials, "unrecognised credentials"))
        }
    }

    async fn key_tenant(&self, token: &str) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let invalid = || Error::unauthenticated(Code::InvalidCredentials, "invalid API key");
        let prefix = keys::lookup_prefix(token).ok_or_else(invalid)?.to_string();
        let key = match self.keys.get(&prefix) {
            Some(hit) => hit,
            None => {
                let p = prefix.clone();
                let found = self.control.key_by_prefix(&p).await?.map(Arc::new);
                self.keys.insert(prefix, found.clone());
                found
            }
        }
        .ok_or_else(invalid)?;
        if !keys::verify(token, &key.hash) {
            return Err(invalid());
        }
        let now = self.clock.now();
        if key.revoked_at.is_some() {
            return Err(Error::unauthenticated(Code::InvalidCredentials, "this API key was revoked"));
        }
        if key.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::unauthenticated(Code::TokenExpired, "this API key has expired"));
        }
        let tenant = self.tenant_by("id", &key.tenant_id).await?.ok_or_else(invalid)?;
        self.used.lock().insert(key.id.clone(), now);
        Ok((tenant, key.scopes.clone(), Credential::ApiKey { key_id: key.id.clone() }))
    }

    async fn jwt_tenant(&self, token: &str) -> Result<(Arc<Tenant>, Vec<Scope>, Credential), Error> {
        let (key, validation) =
            self.jwt.as_ref().ok_or_else(|| Error::unauthenticated(Code::InvalidCredentials, "JWTs are not accepted by this server"))?;
        let claims = parse_jwt(token, key, validation)?;
        let scopes = claims.scopes.clone();
        let tenant = self
            .tenant_by(if crate::control::slug::is_id_shaped(&claims.tenant) { "id" } else { "slug" }, &claims.tenant)
            .await?
            .ok_or_else(|| Error::unauthenticated(Code::InvalidCredentials, "the JWT names an unknown tenant"))?;
        Ok((tenant, scopes, Credential::Jwt { subject: claims.subject }))
    }

    /// Writes the batched last-used times. Called by a periodic task and at shutdown.
    pub async fn flush_key_usage(&self) {
        let batch: Vec<(String, DateTime<Utc>)> = self.used.lock().drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.control.touch_keys(batch).await {
            tracing::warn!(error = %e, "could not record key last-used times");
        }
    }
}

/// A fresh random token (32 bytes, URL-safe base64): session cookies, dashboard links, CSRF tokens.
pub fn new_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the control plane stores of a session or link token: its SHA-256.
pub fn session_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Compares two secrets (CSRF tokens) in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn lookup_cache<V: Clone + Send + Sync + 'static>() -> Cache<String, V> {
    Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build()
}

fn configure(v: &mut Validation, config: &Config) {
    v.set_required_spec_claims(&["exp"]);
    v.validate_nbf = true;
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
