//! The door in front of the MCP service: Host/Origin checks, authentication, the `mcp` feature,
//! and sessions bound to one tenant with caps and lifetimes (see the parent module's docs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::ServiceExt;

use super::{WarrenMcp, SESSION_HEADER};
use crate::auth::{classify_host, HostKind};
use crate::config::McpConfig;
use crate::error::{Code, Error};
use crate::services::{Op, TenantCtx};
use crate::state::AppState;

/// Mounts `/mcp`.
pub fn routes(state: &AppState) -> Router<AppState> {
    let cfg = state.config.mcp.clone();
    let mut manager = LocalSessionManager::default();
    manager.session_config.keep_alive = Some(Duration::from_secs(cfg.session_idle_secs.max(1)));
    let manager = Arc::new(manager);
    let s = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(WarrenMcp::new(s.clone())),
        manager.clone(),
        // Host and Origin are checked by `door` against the tenants' own names.
        // Sessions and their streams end when the server stops, so they do not hold the drain.
        StreamableHttpServerConfig::default().disable_allowed_hosts().disable_allowed_origins().with_cancellation_token(state.shutdown.child_token()),
    );
    let clock = state.plans.clock.clone();
    let door_state = Arc::new(Door { service, manager, sessions: Mutex::new(HashMap::new()), last_sweep: Mutex::new(Instant::now()), cfg, clock });
    Router::new().route(
        "/mcp",
        axum::routing::any(move |State(state): State<AppState>, req: Request| {
            let d = door_state.clone();
            async move { door(d, state, req).await }
        }),
    )
}

struct Binding {
    tenant_id: String,
    /// When the session began, by the server's clock (its lifetime is a rule: tests move the clock).
    started: chrono::DateTime<chrono::Utc>,
}

struct Door {
    service: StreamableHttpService<WarrenMcp, LocalSessionManager>,
    manager: Arc<LocalSessionManager>,
    /// Session id → the tenant that opened it.
    sessions: Mutex<HashMap<String, Binding>>,
    /// Sweeps run at most once a second (sessionless POSTs of the newest protocol would otherwise sweep each time).
    last_sweep: Mutex<Instant>,
    clock: crate::clock::Clock,
    cfg: McpConfig,
}

impl Door {
    /// Forgets bindings of sessions the SDK closed (idle) and closes those past their lifetime.
    async fn sweep(&self) {
        {
            let mut last = self.last_sweep.lock();
            if last.elapsed() < Duration::from_secs(1) {
                return;
            }
            *last = Instant::now();
        }
        let max = chrono::Duration::seconds(self.cfg.session_max_secs.max(1) as i64);
        let now = self.clock.now();
        let ids: Vec<(String, bool)> = self.sessions.lock().iter().map(|(id, b)| (id.clone(), now - b.started > max)).collect();
        for (id, expired) in ids {
            let sid: Arc<str> = id.as_str().into();
            let alive = self.manager.has_session(&sid).await.unwrap_or(false);
            if expired && alive {
                let _ = self.manager.close_session(&sid).await;
            }
            if expired || !alive {
                self.sessions.lock().remove(&id);
            }
        }
    }
}

/// Refusals an MCP client should show as warren's error: answered to a JSON-RPC request as a
/// JSON-RPC error (HTTP 200), so the official client raises it with warren's code and message
/// instead of a bare "Server returned an error response". Transport-level refusals (401, the
/// rebinding guard, unknown sessions, another tenant's session, and the session cap's 503 with
/// `Retry-After`, which clients back off on) stay HTTP errors.
fn as_jsonrpc(code: Code) -> bool {
    matches!(code, Code::FeatureNotInPlan | Code::InsufficientScope | Code::RateLimited | Code::QuotaExceeded)
}

/// The JSON-RPC error for `e`: `code` -32001 (refused) or -32002 (rate-limited: see `Retry-After`), `message`
/// `"<warren code>: <message>"`, and `data` the REST error object (code, message, details).
pub(super) fn jsonrpc_error(id: serde_json::Value, e: &Error) -> serde_json::Value {
    let body = crate::api::error::public_body(e);
    let rpc_code = if e.code().status() == 429 { -32002 } else { -32001 };
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": rpc_code, "message": format!("{}: {}", e.code(), e.public_message()), "data": body["error"]},
    })
}

async fn door(d: Arc<Door>, state: AppState, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // The rebinding guard and the credentials first, from the headers alone: nothing is read from a
    // client before it is authenticated.
    if let Err(e) = check_origin(&state, &parts.headers, &d.cfg).await {
        return e.into_response();
    }
    let ctx = match crate::api::extract::authenticate(&parts, &state).await {
        Ok(ctx) => ctx,
        Err(e) => return e.into_response(),
    };
    if parts.method != Method::POST {
        return guarded(d, ctx, parts, axum::body::Body::new(body)).await.unwrap_or_else(IntoResponse::into_response);
    }
    // A POST carries one JSON-RPC message: keep it to answer a refusal in kind. It may hold a whole
    // document (`add_document`), so it gets the documents route's limit.
    let limit = state.config.max_body_bytes.max(state.config.docs.max_document_bytes.saturating_mul(2).saturating_add(64 * 1024));
    let bytes = match axum::body::to_bytes(axum::body::Body::new(body), limit).await {
        Ok(b) => b,
        Err(e) if e.to_string().contains("length limit") => return Error::too_large().into_response(),
        Err(e) => return Error::bad_request(Code::InvalidBody, format!("the request body could not be read: {e}")).into_response(),
    };
    let id = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v.get("id").cloned());
    match guarded(d, ctx, parts, axum::body::Body::from(bytes)).await {
        Ok(r) => r,
        Err(e) => match id {
            Some(id) if as_jsonrpc(e.code()) => {
                let mut resp = axum::Json(jsonrpc_error(id, &e)).into_response();
                if let Some(secs) = e.retry_after_secs() {
                    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
                }
                resp
            }
            _ => e.into_response(),
        },
    }
}

async fn guarded(d: Arc<Door>, ctx: TenantCtx, mut parts: axum::http::request::Parts, body: axum::body::Body) -> Result<Response, Error> {
    ctx.authorize(Op::McpSession)?;
    ctx.require_feature("mcp")?;
    let tenant_id = ctx.tenant().id.clone();
    let session = parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    match &session {
        Some(id) => {
            let max = chrono::Duration::seconds(d.cfg.session_max_secs.max(1) as i64);
            let expired = {
                let sessions = d.sessions.lock();
                match sessions.get(id) {
                    None => return Err(Error::not_found(Code::SessionNotFound, "no such MCP session (expired or closed): initialise a new one")),
                    Some(b) if b.tenant_id != tenant_id => {
                        return Err(Error::forbidden(Code::TenantMismatch, "this MCP session belongs to another tenant"))
                    }
                    Some(b) => d.clock.now() - b.started > max,
                }
            };
            let sid: Arc<str> = id.as_str().into();
            if expired {
                let _ = d.manager.close_session(&sid).await;
                d.sessions.lock().remove(id);
                return Err(Error::not_found(Code::SessionNotFound, "this MCP session reached its time limit: initialise a new one"));
            }
            // Closed by the SDK (idle): answer in our error shape rather than the transport's.
            if !d.manager.has_session(&sid).await.unwrap_or(false) {
                d.sessions.lock().remove(id);
                return Err(Error::not_found(Code::SessionNotFound, "this MCP session was closed (idle): initialise a new one"));
            }
        }
        None if parts.method == Method::POST => {
            d.sweep().await;
            let (total, mine) = {
                let s = d.sessions.lock();
                (s.len(), s.values().filter(|b| b.tenant_id == tenant_id).count())
            };
            if total >= d.cfg.max_sessions || mine >= d.cfg.max_sessions_per_tenant {
                return Err(Error::unavailable(Code::Overloaded, "too many open MCP sessions; close one or retry later", 5));
            }
        }
        None => {}
    }
    let method = parts.method.clone();
    parts.extensions.insert(ctx);
    let resp = match d.service.clone().oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (mut resp_parts, resp_body) = resp.into_parts();
    // Streamable HTTP: a terminated session answers 200 (the SDK's 202 reads as a failure to clients).
    if method == Method::DELETE && resp_parts.status == axum::http::StatusCode::ACCEPTED {
        resp_parts.status = axum::http::StatusCode::OK;
    }
    if session.is_none() {
        if let Some(id) = resp_parts.headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
            d.sessions.lock().insert(id.to_string(), Binding { tenant_id, started: d.clock.now() });
        }
    } else if method == Method::DELETE && resp_parts.status.is_success() {
        d.sessions.lock().remove(session.as_deref().unwrap_or_default());
    }
    Ok(Response::from_parts(resp_parts, axum::body::Body::new(resp_body)))
}

/// DNS-rebinding guard: the Host must name something warren serves, and a browser Origin must be
/// that same host (any scheme/port) or be listed in `mcp.allowed_origins`.
async fn check_origin(state: &AppState, headers: &HeaderMap, cfg: &McpConfig) -> Result<(), Error> {
    let refuse = |m: &str| Error::forbidden(Code::OriginNotAllowed, m.to_string());
    let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
    if let HostKind::Other(domain) = classify_host(&host, &state.config.base_domain) {
        let d = domain.clone();
        let known = state.auth.tenant_by_domain(&d).await?.is_some();
        if !known {
            return Err(refuse("this host is not served by warren (DNS rebinding guard)"));
        }
    }
    let Some(origin) = headers.get("origin") else { return Ok(()) };
    let origin = origin.to_str().map_err(|_| refuse("Origin is not valid text"))?.trim().trim_end_matches('/');
    if cfg.allowed_origins.iter().any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin)) {
        return Ok(());
    }
    let origin_host = url::Url::parse(origin).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let host_name = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host.as_str(), |(h, _)| h);
    match origin_host {
        Some(h) if h == host_name.trim_end_matches('.') => Ok(()),
        _ => Err(refuse("this Origin may not use the MCP endpoint (set mcp.allowed_origins)")),
    }
}
