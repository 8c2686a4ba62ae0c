//! The cluster door: a request for a tenant is served by the node holding the tenant's lease. This
//! layer names the tenant (by the request's credentials on `/api/v1` and `/mcp`, by the slug on the
//! admin API's tenant routes), asks [`Cluster::route`] where it is served, and either lets the
//! request through or forwards it. A write that succeeded here while the lease was lost or changed
//! hands is not acknowledged: it answers 503 `owner_changed` (the fencing rule of `crate::cluster`).
//! Requests it cannot attribute to a tenant pass through (the handlers answer 401/404 as usual).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::RequestIdentity;
use crate::cluster::{forward::Failed, Route, HOPS_HEADER};
use crate::error::{Code, Error};
use crate::state::AppState;

/// The tenant a request is for, if this layer can tell (from its parts: the body stays unread).
async fn tenant_of(state: &AppState, path: &str, headers: &HeaderMap, host: Option<&str>, peer: Option<IpAddr>) -> Option<String> {
    if path.starts_with("/api/v1/") || path == "/mcp" || path.starts_with("/mcp/") {
        let id = RequestIdentity { headers, uri_host: host, peer };
        return state.auth.prove(id, &state.config).await.ok().map(|p| p.tenant.id.clone());
    }
    let rest = path.strip_prefix("/admin/v1/tenants/")?;
    let slug = rest.split('/').next().filter(|s| !s.is_empty())?;
    crate::auth::verify_admin(headers, &state.admin_token_hash).ok()?;
    match state.auth.tenant_by_slug(slug).await {
        Ok(Some(t)) => Some(t.id.clone()),
        _ => state.auth.tenant_by_id(slug).await.ok().flatten().map(|t| t.id.clone()),
    }
}

pub async fn route(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else { return next.run(req).await };
    let (path, headers, host) = (req.uri().path().to_string(), req.headers().clone(), req.uri().host().map(str::to_string));
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let Some(tenant) = tenant_of(&state, &path, &headers, host.as_deref(), peer).await else { return next.run(req).await };
    let hops: u32 = req.headers().get(HOPS_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let route = match cluster.route(&tenant, hops).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match route {
        Route::Local(epoch) => {
            let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
            let mut answer = next.run(req).await;
            // Which node served it, and under which epoch (for operators and the failover tests).
            if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{} {epoch}", cluster.id())) {
                answer.headers_mut().insert("x-warren-node", v);
            }
            if writes && answer.status().is_success() && cluster.holds(&tenant) != Some(epoch) {
                metrics::counter!("warren_cluster_fenced_writes_total").increment(1);
                tracing::warn!(tenant = %tenant, epoch, "a write finished after this node lost the tenant: not acknowledged");
                return Error::unavailable(
                    Code::OwnerChanged,
                    "this node lost the tenant while the request ran; the write is not acknowledged, retry",
                    1,
                )
                .into_response();
            }
            answer
        }
        Route::Forward(url) => match cluster.forward(&url, req, hops + 1, state.config.max_body_bytes).await {
            Ok(answer) => answer,
            // The owner is gone before its lease ran out: the client retries, and once the lease
            // has lapsed the tenant is taken over.
            Err(Failed::Unreachable(e)) | Err(Failed::Other(e)) => e.into_response(),
        },
    }
}
