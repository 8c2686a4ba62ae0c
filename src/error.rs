//! The domain error and the one table of stable error codes.
//!
//! Services and the domain return [`Error`]: either a [`Code`] with a message (and optional details or
//! a retry hint), or an unexpected internal cause. [`Code`] is generated from one table of
//! (code, HTTP status, meaning); the doors map it to their own shapes (`api::error` to HTTP, MCP to
//! JSON-RPC errors, the CLI to a message), and the README's error table is checked against it by a test.
//! Internal causes are never shown to a client: the edge logs them once and answers opaquely.

use serde_json::{Map, Value};

/// Result alias used by services, the domain and the doors.
pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! codes {
    ($($variant:ident = ($code:literal, $status:literal, $meaning:literal),)*) => {
        /// A stable, machine-readable error code (see the README's error table).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code, in the README's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The code as clients see it, e.g. `insufficient_scope`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The HTTP status the REST door answers with.
            pub const fn status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// What the code means, for the README and the OpenAPI document.
            pub const fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }

            /// The Rust name of the variant (lets a test find where each code is produced).
            pub const fn variant_name(self) -> &'static str {
                match self { $(Code::$variant => stringify!($variant),)* }
            }

            pub fn parse(s: &str) -> Option<Code> {
                Code::ALL.iter().copied().find(|c| c.as_str() == s)
            }
        }
    };
}

codes! {
    InvalidJson = ("invalid_json", 400, "The body is not valid JSON or does not match the expected shape."),
    InvalidBody = ("invalid_body", 400, "The body could not be read."),
    InvalidPath = ("invalid_path", 400, "A path parameter is malformed."),
    InvalidQuery = ("invalid_query", 400, "A query-string parameter is malformed."),
    InvalidHeader = ("invalid_header", 400, "A header is malformed (e.g. not UTF-8)."),
    InvalidSlug = ("invalid_slug", 400, "A slug is not a DNS label of 3-63 characters a-z0-9- without edge hyphens."),
    ReservedSlug = ("reserved_slug", 400, "The slug is reserved (www, api, admin, ...)."),
    ValidationFailed = ("validation_failed", 400, "A field has an invalid value; the message names it."),
    Unauthorized = ("unauthorized", 401, "No credentials were sent."),
    InvalidCredentials = ("invalid_credentials", 401, "The API key, JWT or admin token is unknown, revoked or malformed."),
    TokenExpired = ("token_expired", 401, "The API key or JWT has expired."),
    TenantMismatch = ("tenant_mismatch", 403, "The credentials belong to another tenant than the host names."),
    InsufficientScope = ("insufficient_scope", 403, "The key lacks the scope this call needs."),
    CsrfFailed = ("csrf_failed", 403, "A dashboard form was posted without its session's CSRF token."),
    TenantSuspended = ("tenant_suspended", 403, "The tenant is suspended."),
    TenantCancelled = ("tenant_cancelled", 403, "The tenant is cancelled."),
    SignupDisabled = ("signup_disabled", 403, "Open signup is switched off."),
    FeatureNotInPlan = ("feature_not_in_plan", 403, "The tenant's plan lacks this feature; details: feature, required_tier, upgrade_url."),
    PlanLimitReached = ("plan_limit_reached", 403, "A write over the plan's document or storage limit; details: limit, limit_value, used, upgrade_url."),
    TenantNotFound = ("tenant_not_found", 404, "No such tenant."),
    KeyNotFound = ("key_not_found", 404, "No such API key for this tenant."),
    NotFound = ("not_found", 404, "No such route or resource."),
    ProductNotFound = ("product_not_found", 404, "No such product in this tenant's catalog."),
    MethodNotAllowed = ("method_not_allowed", 405, "The route exists but not with this method."),
    SlugTaken = ("slug_taken", 409, "Another tenant has this slug."),
    DomainTaken = ("domain_taken", 409, "Another tenant has this custom domain."),
    PayloadTooLarge = ("payload_too_large", 413, "The body is over the configured limit."),
    UnsupportedMediaType = ("unsupported_media_type", 415, "The body must be application/json."),
    HeaderTooLarge = ("header_too_large", 431, "Request headers are over the configured limit."),
    RateLimited = ("rate_limited", 429, "The tenant's (or key's) rate limit is used up; retry after Retry-After."),
    QuotaExceeded = ("quota_exceeded", 429, "A hard monthly quota is used up; details: limit, used, resets_at, upgrade_url."),
    WebhookSignatureInvalid = ("webhook_signature_invalid", 401, "A WooCommerce delivery's X-WC-Webhook-Signature is missing or does not match the tenant's webhook secret; nothing was applied."),
    InvalidSignature = ("invalid_signature", 400, "A webhook's signature is missing, wrong or outside the tolerance window."),
    RestorePointUnavailable = ("restore_point_unavailable", 400, "No backup exists at or before the requested TXID or time."),
    RestoreFailed = ("restore_failed", 400, "A replica object is corrupt or truncated (named in the message); nothing was changed."),
    InvalidArchive = ("invalid_archive", 400, "An import's archive is truncated, damaged, or not a warren tenant archive (the message says what is wrong); nothing was imported."),
    RestoreBeforeErasure = ("restore_before_erasure", 400, "The restore point is before an erasure (named in the message): restoring it would bring erased data back; choose a later point."),
    ServerRunning = ("server_running", 409, "CLI: a server holds this data dir; the message names the admin API call to use instead."),
    BackupsDisabled = ("backups_disabled", 409, "A restore was asked for but backup_url is not set."),
    BackupUnavailable = ("backup_unavailable", 503, "The replica could not be listed (object storage down); retry after Retry-After."),
    Timeout = ("timeout", 503, "The request took longer than the configured timeout."),
    TenantUnavailable = ("tenant_unavailable", 503, "The tenant could not be opened within `tenant_open_timeout_ms`; retry after Retry-After."),
    TenantRestoring = ("tenant_restoring", 503, "The tenant is being restored or closed; retry after Retry-After."),
    TenantDamaged = ("tenant_damaged", 503, "The tenant's database file is missing, is not a valid SQLite database, or failed `quick_check` (the tenant is then quarantined); nothing was changed, other tenants are unaffected, and the operator restores it from its backup (README: Backups)."),
    Overloaded = ("overloaded", 503, "The server is at a configured capacity limit; retry after Retry-After."),
    OwnerUnavailable = ("owner_unavailable", 503, "Cluster: the node that owns this tenant did not answer, or the tenant is moving between nodes; retry after Retry-After."),
    NotClustered = ("not_clustered", 409, "A cluster command was given but the control plane is not shared (`control.url` unset)."),
    NodeNotFound = ("node_not_found", 404, "No node with this id is registered in the cluster."),
    NotReplicated = ("not_replicated", 503, "`sync` durability: the write is committed on the node but did not reach object storage in time, so it is not acknowledged; retry."),
    OwnerChanged = ("owner_changed", 503, "Cluster: this node lost the tenant to another node while the request ran, so the write is not acknowledged (it may not be kept); retry."),
    EmbeddingsUnavailable = ("embeddings_unavailable", 503, "The embedding model is not loaded on this server; keyword search still works."),
    OriginNotAllowed = ("origin_not_allowed", 403, "MCP: the Host is not served here or the browser Origin is not allowed (DNS rebinding guard)."),
    SessionNotFound = ("session_not_found", 404, "MCP: the session is unknown, closed or past its time limit; initialise a new one."),
    DocumentNotFound = ("document_not_found", 404, "No such document."),
    InsufficientStorage = ("insufficient_storage", 507, "The data dir's disk is full or below `min_free_disk_bytes`; nothing was written, reads and deletes still work, and the operator frees or adds space."),
    JobNotFound = ("job_not_found", 404, "No such job for this tenant (finished jobs are kept for `docs.job_retention_days`)."),
    Internal = ("internal", 500, "An unexpected error; the cause is in the server log."),
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An expected failure: a stable code, a precise message, optional details and retry hint.
    #[error("{message}")]
    Coded { code: Code, message: String, details: Option<Box<Map<String, Value>>>, retry_after_secs: Option<u64> },
    /// Anything unexpected. Logged once at the edge; never shown to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error::Coded { code, message: message.into(), details: None, retry_after_secs: None }
    }
    fn of(status: u16, code: Code, message: impl Into<String>) -> Self {
        debug_assert_eq!(code.status(), status, "{code} is not a {status}");
        Error::new(code, message)
    }
    pub fn bad_request(code: Code, message: impl Into<String>) -> Self {
        Self::of(400, code, message)
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Error::new(Code::ValidationFailed, message)
    }
    pub fn forbidden(code: Code, message: impl Into<String>) -> Self {
        Self::of(403, code, message)
    }
    pub fn not_found(code: Code, message: impl Into<String>) -> Self {
        Self::of(404, code, message)
    }
    pub fn conflict(code: Code, message: impl Into<String>) -> Self {
        Self::of(409, code, message)
    }
    pub fn unauthenticated(code: Code, message: impl Into<String>) -> Self {
        Self::of(401, code, message)
    }
    pub fn unavailable(code: Code, message: impl Into<String>, retry_after_secs: u64) -> Self {
        debug_assert_eq!(code.status(), 503, "{code} is not a 503");
        Error::Coded { code, message: message.into(), details: None, retry_after_secs: Some(retry_after_secs) }
    }
    pub fn too_large() -> Self {
        Error::new(Code::PayloadTooLarge, "request body is larger than the configured limit")
    }
    /// 403 with details (`plan_limit_reached`, `feature_not_in_plan`).
    pub fn forbidden_with(code: Code, message: impl Into<String>, details: Map<String, Value>) -> Self {
        debug_assert_eq!(code.status(), 403, "{code} is not a 403");
        Error::Coded { code, message: message.into(), details: Some(Box::new(details)), retry_after_secs: None }
    }
    /// 429 with `Retry-After` and details (`rate_limited`, `quota_exceeded`).
    pub fn too_many(code: Code, message: impl Into<String>, retry_after_secs: u64, details: Map<String, Value>) -> Self {
        debug_assert_eq!(code.status(), 429, "{code} is not a 429");
        Error::Coded { code, message: message.into(), details: Some(Box::new(details)), retry_after_secs: Some(retry_after_secs) }
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Coded { code, .. } => *code,
            Error::Internal(_) => Code::Internal,
        }
    }

    pub fn details(&self) -> Option<&Map<String, Value>> {
        match self {
            Error::Coded { details, .. } => details.as_deref(),
            Error::Internal(_) => None,
        }
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::Coded { retry_after_secs, .. } => *retry_after_secs,
            Error::Internal(_) => None,
        }
    }

    /// The message a client may see: the precise one for coded errors, a generic one for internal ones.
    pub fn public_message(&self) -> String {
        match self {
            Error::Coded { message, .. } => message.clone(),
            Error::Internal(_) => "internal server error".to_string(),
        }
    }

    /// A copy for fan-out (a shared open failing for several waiters); an internal cause is copied as text.
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Coded { code, message, details, retry_after_secs } => {
                Error::Coded { code: *code, message: message.clone(), details: details.clone(), retry_after_secs: *retry_after_secs }
            }
            Error::Internal(e) => Error::Internal(anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            // The transaction was rolled back: nothing half-written. Logged once, like every 5xx.
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
                tracing::error!(error = %e, "the data dir's disk is full; writes answer 507 until space is freed");
                metrics::counter!("warren_disk_full_total").increment(1);
                Error::insufficient_storage()
            }
            // A damaged file: the caller (the tenant's lease) checks it and quarantines the tenant.
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                tracing::error!(error = %e, "SQLite reports a damaged database");
                Error::damaged()
            }
            _ => Error::Internal(e.into()),
        }
    }
}

impl Error {
    /// 503 `tenant_damaged`: the tenant's database failed SQLite's checks; restore it from its backup.
    pub fn damaged() -> Error {
        Error::unavailable(Code::TenantDamaged, "this tenant's database is damaged or missing; the operator has to restore it from its backup", 60)
    }

    /// 507 `insufficient_storage`.
    pub fn insufficient_storage() -> Error {
        Error::Coded {
            code: Code::InsufficientStorage,
            message: "the server's disk is full: nothing was written; reads and deletes still work".into(),
            details: None,
            retry_after_secs: None,
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// The README's error table is exactly the code table: same codes, statuses and meanings, same order.
    #[test]
    fn readme_error_table_matches_the_codes() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));
        let start = readme.find("<!-- error-codes:start -->").expect("README marks its error table with <!-- error-codes:start -->");
        let end = readme.find("<!-- error-codes:end -->").expect("README marks the end of its error table");
        let rows: Vec<(String, u16, String)> = readme[start..end]
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                assert_eq!(cells.len(), 3, "README error row {l:?} has three cells");
                (cells[0].trim_matches('`').to_string(), cells[1].parse().expect("a status"), cells[2].to_string())
            })
            .collect();
        let want: Vec<(String, u16, String)> = Code::ALL.iter().map(|c| (c.as_str().to_string(), c.status(), c.meaning().to_string())).collect();
        assert_eq!(rows, want, "regenerate the README table from src/error.rs (cargo test prints the expected rows)");
    }

    #[test]
    fn codes_are_unique_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {c}");
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            assert!((400..600).contains(&c.status()));
        }
    }

    /// Every documented code is produced somewhere outside this table (or it would be removed).
    #[test]
    fn every_code_is_produced() {
        let mut sources = String::new();
        let mut stack = vec![std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let p = entry.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") && !p.ends_with("src/error.rs") {
                    sources.push_str(&std::fs::read_to_string(&p).expect("source is text"));
                }
            }
        }
        for c in Code::ALL {
            let needle = format!("Code::{}", c.variant_name());
            assert!(sources.contains(&needle), "{c} is in the table but nothing produces {needle}");
        }
    }
}
