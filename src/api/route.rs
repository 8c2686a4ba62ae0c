//! The cluster door: a request for a tenant is served by the node holding the tenant's lease. This
//! layer names the tenant (by the request's credentials on `/api/v1` and `/mcp`, by the portal's
//! session cookie on `/dashboard`, by the slug or host of a WooCommerce delivery, by the slug on the
//! admin API's tenant routes, as those doors name it), asks [`Cluster::route`] where it is served, and either lets the
//! request through or forwards it. A write that succeeded here while the lease was lost or changed
//! hands is not acknowledged: it answers 503 `owner_changed` (the fencing rule of `crate::cluster`).
//! Requests it cannot attribute to a tenant pass through (the handlers answer 401/404 as usual).
//!
//! It also keeps the `sync` durability (a plan's or a tenant's `durability`): a successful write of
//! such a tenant is answered only once the backup service has shipped it to the replica, and 503
//! `not_replicated` otherwise. Concurrent writes of one tenant share their ships (group commit).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::RequestIdentity;
use crate::cluster::{forward::Failed, Route, HOPS_HEADER};
use crate::control::Tenant;
use crate::error::{Code, Error};
use crate::plans::Durability;
use crate::state::AppState;

/// The tenant a request is for, if this layer can tell (from its parts: the body stays unread).
async fn tenant_of(state: &AppState, path: &str, headers: &HeaderMap, host: Option<&str>, peer: Option<IpAddr>) -> Option<Arc<Tenant>> {
    let id = RequestIdentity { headers, uri_host: host, peer };
    if path.starts_with("/api/v1/") || path == "/mcp" || path.starts_with("/mcp/") {
        return state.auth.prove(id, &state.config).await.ok().map(|p| p.tenant.clone());
    }
    // The tenant portal, by its session cookie (the console's pages are no tenant's).
    if path.starts_with("/dashboard") && !path.starts_with("/dashboard/assets/") {
        let token = crate::dashboard::cookie(headers, crate::dashboard::PORTAL_COOKIE)?;
        return state.auth.prove_session(id, &state.config, token).await.ok().map(|(p, _)| p.tenant.clone());
    }
    // WooCommerce deliveries, by the tenant in the path or the host; the owner checks the signature.
    if let Some(rest) = path.strip_prefix("/webhooks/woocommerce") {
        return match rest.strip_prefix('/').filter(|r| !r.is_empty()) {
            Some(slug) => state.auth.tenant_by_slug(slug).await.ok().flatten(),
            None => state.auth.tenant_of_host(&id, &state.config).await.ok().flatten(),
        };
    }
    let rest = path.strip_prefix("/admin/v1/tenants/")?;
    let slug = rest.split('/').next().filter(|s| !s.is_empty())?;
    crate::auth::verify_admin(headers, &state.admin_token_hash).ok()?;
    state.auth.tenant_by_slug(slug).await.ok().flatten()
}

pub async fn route(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // Outside a cluster only writes can need this layer (the `sync` durability).
    if state.cluster.is_none() && !(writes && state.backup.is_some()) {
        return next.run(req).await;
    }
    let (path, headers, host) = (req.uri().path().to_string(), req.headers().clone(), req.uri().host().map(str::to_string));
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let Some(tenant) = tenant_of(&state, &path, &headers, host.as_deref(), peer).await else { return next.run(req).await };
    let mut epoch = None;
    if let Some(cluster) = state.cluster.clone() {
        let hops: u32 = headers.get(HOPS_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        match cluster.route(&tenant.id, hops).await {
            Ok(Route::Local(e)) => epoch = Some((cluster, e)),
            Ok(Route::Forward(url)) => {
                return match cluster.forward(&url, req, hops + 1, state.config.max_body_bytes).await {
                    Ok(answer) => answer,
                    // The owner is gone before its lease ran out: the client retries, and once the
                    // lease has lapsed the tenant is taken over.
                    Err(Failed::Unreachable(e)) | Err(Failed::Other(e)) => e.into_response(),
                };
            }
            Err(e) => return e.into_response(),
        }
    }
    let mut answer = next.run(req).await;
    if let Some((cluster, e)) = &epoch {
        // Which node served it, and under which epoch (for operators and the failover tests).
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("{} {e}", cluster.id())) {
            answer.headers_mut().insert("x-warren-node", v);
        }
    }
    if !writes || !answer.status().is_success() {
        return answer;
    }
    if let Some((cluster, e)) = &epoch {
        if cluster.holds(&tenant.id) != Some(*e) {
            metrics::counter!("warren_cluster_fenced_writes_total").increment(1);
            tracing::warn!(tenant = %tenant.id, epoch = e, "a write finished after this node lost the tenant: not acknowledged");
            return Error::unavailable(
                Code::OwnerChanged,
                "this node lost the tenant while the request ran; the write is not acknowledged, retry",
                1,
            )
            .into_response();
        }
    }
    if let Some(backup) = &state.backup {
        if state.plans.entitlements(&tenant).durability() == Durability::Sync {
            if let Err(e) = backup.ship_now(&tenant.id).await {
                tracing::warn!(tenant = %tenant.id, error = %format!("{e:#}"), "a sync-durability write did not reach the replica: not acknowledged");
                return Error::unavailable(
                    Code::NotReplicated,
                    "the write is committed here but did not reach object storage in time; it is not acknowledged, retry",
                    1,
                )
                .into_response();
            }
            answer.headers_mut().insert("x-warren-durability", axum::http::HeaderValue::from_static("sync"));
        }
    }
    answer
}
