//! The REST door: routers and thin handlers. Handlers parse, call one service
//! ([`crate::services`]), and shape JSON; they never touch SQLite, Tantivy or control-plane SQL.

pub mod admin;
pub mod context;
pub mod error;
pub mod extract;
pub mod mcp;
pub mod middleware;
pub mod openapi;
pub mod recs;
pub mod route;
pub mod schemas;
pub mod tenant;
pub mod webhooks;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::Error;
use crate::state::AppState;

/// `Json<T>` whose rejections are our JSON errors (400 `invalid_json`, 413, 415).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await.map_err(error::from_json_rejection)?;
        Ok(ApiJson(v))
    }
}

/// Query-string extractor with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await.map_err(error::from_query_rejection)?;
        Ok(ApiQuery(v))
    }
}

/// Path extractor with JSON errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Error> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await.map_err(error::from_path_rejection)?;
        Ok(ApiPath(v))
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new().merge(tenant::routes()).merge(context::routes(&state.config)).merge(recs::routes(&state.config));
    let router = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/tls/ask", get(admin::tls_ask))
        .nest("/admin/v1", admin::routes())
        .nest("/api/v1", api)
        .merge(webhooks::routes(&state.config))
        .merge(openapi::routes())
        .merge(mcp::routes(&state))
        .merge(crate::dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { error::method_not_allowed() })
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(state.clone(), route::route));
    middleware::apply(router, state)
}

async fn not_found() -> Error {
    Error::not_found(crate::error::Code::NotFound, "no such route")
}

/// Liveness.
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses((status = 200, description = "Alive", body = schemas::Health)))]
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready when the control plane answers and the data dir takes a write.
#[utoipa::path(get, path = "/ready", tag = "operations", security(()), responses((status = 200, description = "Ready", body = schemas::Ready)))]
async fn ready(State(state): State<AppState>) -> Response {
    let checks = crate::services::usage::readiness(&state).await;
    let ok = checks.0 && checks.1;
    let body = json!({"status": if ok {"ready"} else {"not_ready"}, "control_plane": checks.0, "data_dir_writable": checks.1});
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

/// Prometheus metrics (text exposition format): requests, latencies, queues, handles, backups.
#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    crate::services::usage::refresh_gauges(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
