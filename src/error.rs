//! One error type for the HTTP surface, with an exhaustive mapping to status, headers and a stable
//! JSON body: `{"error": {"code": "...", "message": "...", ...details}}`.
//!
//! 5xx answers are opaque: the client sees a generic message and the cause is logged once here,
//! at the edge. 4xx answers carry a precise message and are logged at DEBUG only.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Result alias used by handlers and the domain glue.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: malformed or invalid input. `code` is e.g. `invalid_json`, `invalid_slug`, `validation_failed`.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401 with `WWW-Authenticate`: missing, unknown, expired or malformed credentials.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// 403: authenticated but not allowed (`tenant_mismatch`, `insufficient_scope`, `tenant_suspended`, ...).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String, details: Option<Map<String, Value>> },
    /// 404.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: e.g. `slug_taken`, `domain_taken`.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: body over the configured limit.
    #[error("{message}")]
    PayloadTooLarge { message: String },
    /// 431: request headers over `max_header_bytes`.
    #[error("request headers are larger than the configured limit")]
    HeadersTooLarge,
    /// 415: a body that is not `application/json` where JSON is required.
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 429 with `Retry-After`: throttled, or a hard quota reached.
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after_secs: u64, details: Option<Map<String, Value>> },
    /// 503 with `Retry-After`: temporarily unavailable (`tenant_restoring`, `overloaded`, `embeddings_unavailable`, ...).
    #[error("{message}")]
    Unavailable { code: &'static str, message: String, retry_after_secs: u64 },
    /// 500: anything unexpected. Logged once; never shown to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Error {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest { code, message: message.into() }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Error::BadRequest { code: "validation_failed", message: message.into() }
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Error::Forbidden { code, message: message.into(), details: None }
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::NotFound { code, message: message.into() }
    }
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unauthenticated { code, message: message.into() }
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_secs: u64) -> Self {
        Error::Unavailable { code, message: message.into(), retry_after_secs }
    }
    pub fn too_large() -> Self {
        Error::PayloadTooLarge { message: "request body is larger than the configured limit".into() }
    }
    /// 403 with details (`plan_limit_reached`, `feature_not_in_plan`).
    pub fn forbidden_with(code: &'static str, message: impl Into<String>, details: Map<String, Value>) -> Self {
        Error::Forbidden { code, message: message.into(), details: Some(details) }
    }
    /// 429 with `Retry-After` and details (`rate_limited`, `quota_exceeded`).
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after_secs: u64, details: Map<String, Value>) -> Self {
        Error::TooManyRequests { code, message: message.into(), retry_after_secs, details: Some(details) }
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::Unauthenticated { code, .. }
            | Error::Forbidden { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::TooManyRequests { code, .. }
            | Error::Unavailable { code, .. } => code,
            Error::MethodNotAllowed => "method_not_allowed",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::HeadersTooLarge => "header_too_large",
            Error::Internal(_) => "internal",
        }
    }
}

fn body(code: &str, message: &str, details: Option<&Map<String, Value>>) -> Value {
    let mut err = Map::new();
    err.insert("code".into(), Value::from(code));
    err.insert("message".into(), Value::from(message));
    if let Some(d) = details {
        for (k, v) in d {
            err.insert(k.clone(), v.clone());
        }
    }
    json!({ "error": err })
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        // Exhaustive on purpose: a new variant must choose its status and headers.
        let (status, message, details, retry_after, www_auth) = match &self {
            Error::BadRequest { message, .. } => (StatusCode::BAD_REQUEST, message.clone(), None, None, false),
            Error::Unauthenticated { message, .. } => (StatusCode::UNAUTHORIZED, message.clone(), None, None, true),
            Error::Forbidden { message, details, .. } => (StatusCode::FORBIDDEN, message.clone(), details.as_ref(), None, false),
            Error::NotFound { message, .. } => (StatusCode::NOT_FOUND, message.clone(), None, None, false),
            Error::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, self.to_string(), None, None, false),
            Error::Conflict { message, .. } => (StatusCode::CONFLICT, message.clone(), None, None, false),
            Error::PayloadTooLarge { message } => (StatusCode::PAYLOAD_TOO_LARGE, message.clone(), None, None, false),
            Error::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, self.to_string(), None, None, false),
            Error::HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, self.to_string(), None, None, false),
            Error::TooManyRequests { message, retry_after_secs, details, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, message.clone(), details.as_ref(), Some(*retry_after_secs), false)
            }
            Error::Unavailable { message, retry_after_secs, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, message.clone(), None, Some(*retry_after_secs), false)
            }
            Error::Internal(cause) => {
                tracing::error!(error = ?cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal server error".to_string(), None, None, false)
            }
        };
        if status.is_client_error() {
            tracing::debug!(code, %message, "client error");
        }
        let mut resp = (status, axum::Json(body(code, &message, details))).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if www_auth {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warren\", charset=\"UTF-8\""),
            );
        }
        resp
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Error::UnsupportedMediaType,
            JsonRejection::JsonSyntaxError(e) => Error::bad_request("invalid_json", format!("malformed JSON: {}", e.body_text())),
            JsonRejection::JsonDataError(e) => Error::bad_request("invalid_json", format!("invalid request body: {}", e.body_text())),
            JsonRejection::BytesRejection(e) => {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::too_large()
                } else {
                    Error::bad_request("invalid_body", e.body_text())
                }
            }
            other => Error::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::bad_request("invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::bad_request("invalid_query", r.body_text())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(e.into())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

/// The stable error codes, with their HTTP status, for the README and tests.
pub const CODES: &[(&str, u16, &str)] = &[
    ("invalid_json", 400, "The body is not valid JSON or does not match the expected shape."),
    ("invalid_body", 400, "The body could not be read."),
    ("invalid_path", 400, "A path parameter is malformed."),
    ("invalid_query", 400, "A query-string parameter is malformed."),
    ("invalid_header", 400, "A header is malformed (e.g. not UTF-8)."),
    ("invalid_slug", 400, "A slug is not a DNS label of 3-63 characters a-z0-9- without edge hyphens."),
    ("reserved_slug", 400, "The slug is reserved (www, api, admin, ...)."),
    ("validation_failed", 400, "A field has an invalid value; the message names it."),
    ("unauthorized", 401, "No credentials were sent."),
    ("invalid_credentials", 401, "The API key, JWT or admin token is unknown, revoked or malformed."),
    ("token_expired", 401, "The API key or JWT has expired."),
    ("tenant_mismatch", 403, "The credentials belong to another tenant than the host names."),
    ("insufficient_scope", 403, "The key lacks the scope this call needs."),
    ("tenant_suspended", 403, "The tenant is suspended."),
    ("tenant_cancelled", 403, "The tenant is cancelled."),
    ("signup_disabled", 403, "Open signup is switched off."),
    ("feature_not_in_plan", 403, "The tenant's plan lacks this feature; details: feature, required_tier, upgrade_url."),
    ("plan_limit_reached", 403, "A write over the plan's document or storage limit; details: limit, limit_value, used, upgrade_url."),
    ("tenant_not_found", 404, "No such tenant."),
    ("key_not_found", 404, "No such API key for this tenant."),
    ("not_found", 404, "No such route or resource."),
    ("product_not_found", 404, "No such product in this tenant's catalog."),
    ("method_not_allowed", 405, "The route exists but not with this method."),
    ("slug_taken", 409, "Another tenant has this slug."),
    ("domain_taken", 409, "Another tenant has this custom domain."),
    ("payload_too_large", 413, "The body is over the configured limit."),
    ("unsupported_media_type", 415, "The body must be application/json."),
    ("header_too_large", 431, "Request headers are over the configured limit."),
    ("rate_limited", 429, "The tenant's (or key's) rate limit is used up; retry after Retry-After."),
    ("quota_exceeded", 429, "A hard monthly quota is used up; details: limit, used, resets_at, upgrade_url."),
    ("invalid_signature", 400, "A webhook's signature is missing, wrong or outside the tolerance window."),
    ("restore_point_unavailable", 400, "No backup exists at or before the requested TXID or time."),
    ("restore_failed", 400, "A replica object is corrupt or truncated (named in the message); nothing was changed."),
    ("backups_disabled", 409, "A restore was asked for but backup_url is not set."),
    ("backup_unavailable", 503, "The replica could not be listed (object storage down); retry after Retry-After."),
    ("timeout", 503, "The request took longer than the configured timeout."),
    ("tenant_unavailable", 503, "The tenant could not be opened in time; retry after Retry-After."),
    ("tenant_restoring", 503, "The tenant is being restored or closed; retry after Retry-After."),
    ("overloaded", 503, "The server is at a configured capacity limit; retry after Retry-After."),
    ("origin_not_allowed", 403, "MCP: the Host is not served here or the browser Origin is not allowed (DNS rebinding guard)."),
    ("session_not_found", 404, "MCP: the session is unknown, closed or past its time limit; initialise a new one."),
    ("document_not_found", 404, "No such document."),
    ("internal", 500, "An unexpected error; the cause is in the server log."),
];
