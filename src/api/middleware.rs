//! The layers every request passes: panic guard, request id + tracing span, header-size check,
//! timeout, body limit, and request metrics by route, status and tier. (CPU-heavy work is bounded
//! where it runs: the embedding queue and the search queue answer 503 `overloaded` when full.)

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::{Code, Error};
use crate::services::{RateSlot, TierSlot};
use crate::state::AppState;

/// Wraps the router in the common layers (applied per route by axum, so `MatchedPath` is known).
pub fn apply(router: Router, state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    router
        .layer(axum::middleware::from_fn_with_state(state, guard))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(CatchPanicLayer::custom(on_panic as fn(Box<dyn std::any::Any + Send + 'static>) -> Response))
}

fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    Error::internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Refusals made by the framework rather than by warren (a body over a route's limit read as raw
/// bytes: `413 length limit exceeded` in plain text) get the JSON error body too.
fn json_refusal(response: Response) -> Response {
    let json = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|c| c.starts_with("application/json"));
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE if !json => Error::too_large().into_response(),
        _ => response,
    }
}

/// Header limit, timeout and metrics in one pass.
async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let header_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let tier = TierSlot::default();
    req.extensions_mut().insert(tier.clone());
    let rate = RateSlot::default();
    req.extensions_mut().insert(rate.clone());
    let has_body = req.headers().get(header::TRANSFER_ENCODING).is_some()
        || req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > 0);

    let response = if header_bytes > state.config.max_header_bytes {
        super::error::headers_too_large().into_response()
    } else {
        // Bulk ingest embeds up to `max_bulk_documents` documents: it gets its own, longer limit.
        let secs = if route == "/api/v1/documents/bulk" { state.config.docs.bulk_timeout_secs } else { state.config.request_timeout_secs };
        let timeout = Duration::from_secs(secs);
        match tokio::time::timeout(timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => Error::unavailable(Code::Timeout, "the request timed out", 1).into_response(),
        }
    };

    let mut response = json_refusal(response);
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        // A refusal may come before the body was read: say the connection ends, so the client does
        // not send its next request on a connection the server is about to drop.
        response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    if let Some(info) = *rate.0.lock() {
        // Tenant responses report the rate limiter (IETF RateLimit header fields).
        let h = response.headers_mut();
        h.insert("ratelimit-limit", info.limit.into());
        h.insert("ratelimit-remaining", info.remaining.into());
        h.insert("ratelimit-reset", info.reset_secs.into());
    }
    if crate::traffic::counts(&route) {
        state.traffic.record(response.status().as_u16(), started.elapsed());
    }
    let status = response.status().as_u16().to_string();
    let tier = tier.0.get().copied().unwrap_or("none");
    let labels = [("route", route), ("method", method), ("status", status), ("tier", tier.to_string())];
    metrics::counter!("warren_http_requests_total", &labels).increment(1);
    metrics::histogram!("warren_http_request_duration_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
    response
}
