//! The REST door's mapping of domain errors to HTTP: status from the code table, `Retry-After`,
//! `WWW-Authenticate`, and the JSON body `{"error": {"code", "message", ...details}}`.
//!
//! 5xx answers are opaque: the client sees a generic message and the cause is logged once, here.
//! 4xx answers carry a precise message and are logged at DEBUG only, without request content.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::{Code, Error};

/// The JSON body of an error answer.
pub fn body(code: Code, message: &str, details: Option<&Map<String, Value>>) -> Value {
    let mut err = Map::new();
    err.insert("code".into(), Value::from(code.as_str()));
    err.insert("message".into(), Value::from(message));
    if let Some(d) = details {
        for (k, v) in d {
            err.insert(k.clone(), v.clone());
        }
    }
    json!({ "error": err })
}

/// The body a client sees for `e` (internal causes logged once and hidden).
pub fn public_body(e: &Error) -> Value {
    if let Error::Internal(cause) = e {
        tracing::error!(error = ?cause, "internal error");
    }
    body(e.code(), &e.public_message(), e.details())
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let payload = public_body(&self);
        if status.is_client_error() {
            tracing::debug!(code = code.as_str(), "client error");
        }
        let mut resp = (status, axum::Json(payload)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"warren\", charset=\"UTF-8\""));
        }
        resp
    }
}

/// 405 for a route that exists with other methods.
pub fn method_not_allowed() -> Error {
    Error::new(Code::MethodNotAllowed, "method not allowed")
}

/// 431 for request headers over `max_header_bytes`.
pub fn headers_too_large() -> Error {
    Error::new(Code::HeaderTooLarge, "request headers are larger than the configured limit")
}

/// 415 for a body that is not `application/json` where JSON is required.
pub fn unsupported_media_type() -> Error {
    Error::new(Code::UnsupportedMediaType, "expected a JSON body with Content-Type: application/json")
}

/// Maps a JSON extraction failure to our codes.
pub fn from_json_rejection(r: JsonRejection) -> Error {
    match r {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::JsonSyntaxError(e) => Error::bad_request(Code::InvalidJson, format!("malformed JSON: {}", e.body_text())),
        JsonRejection::JsonDataError(e) => Error::bad_request(Code::InvalidJson, format!("invalid request body: {}", e.body_text())),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::too_large()
            } else {
                Error::bad_request(Code::InvalidBody, e.body_text())
            }
        }
        other => Error::bad_request(Code::InvalidBody, other.body_text()),
    }
}

pub fn from_path_rejection(r: PathRejection) -> Error {
    Error::bad_request(Code::InvalidPath, r.body_text())
}

pub fn from_query_rejection(r: QueryRejection) -> Error {
    Error::bad_request(Code::InvalidQuery, r.body_text())
}
