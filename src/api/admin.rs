//! The admin API under `/admin/v1` (admin bearer token), and Caddy's on-demand TLS `ask` endpoint.
//! Each handler calls [`Operator`] (the control-plane services) with the admin proof.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::AdminCtx;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{classify_host, HostKind};
use crate::control::tenants::TenantPatch;
use crate::control::{NewKey, Slug, Tenant};
use crate::error::{Code, Error};
use crate::services::restore::RestoreRequest;
use crate::services::tenants::CreateTenant;
use crate::services::webhooks::{WooSettingsAnswer, WooSettingsRequest};
use crate::services::{Actor, Operator};
use crate::state::AppState;

/// The admin API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_tenant,
    list_tenants,
    show_tenant,
    patch_tenant,
    delete_tenant,
    create_key,
    list_keys,
    revoke_key,
    rotate_key,
    audit_log,
    reindex,
    dashboard_link,
    export,
    backup_status,
    restore,
    tls_ask,
    get_overrides,
    put_overrides,
    put_key_limit,
    put_woocommerce,
    usage_export,
    cluster
))]
pub struct AdminApi;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{slug}", get(show_tenant).patch(patch_tenant).delete(delete_tenant))
        .route("/tenants/{slug}/keys", post(create_key).get(list_keys))
        .route("/tenants/{slug}/keys/{key_id}", axum::routing::delete(revoke_key))
        .route("/tenants/{slug}/keys/{key_id}/rotate", post(rotate_key))
        .route("/tenants/{slug}/audit", get(audit_log))
        .route("/tenants/{slug}/reindex", post(reindex))
        .route("/tenants/{slug}/dashboard-link", post(dashboard_link))
        .route("/tenants/{slug}/export", get(export))
        .route("/tenants/{slug}/backup", get(backup_status))
        .route("/tenants/{slug}/restore", post(restore))
        .route("/tenants/{slug}/overrides", get(get_overrides).put(put_overrides))
        .route("/tenants/{slug}/integrations/woocommerce", axum::routing::put(put_woocommerce))
        .route("/tenants/{slug}/keys/{key_id}/rate_limit", axum::routing::put(put_key_limit))
        .route("/usage", get(usage_export))
        .route("/cluster", get(cluster))
}

fn ops(state: &AppState) -> Operator {
    Operator::live(state, Actor::Admin)
}

/// The cluster's nodes (liveness by the control plane's clock) and the tenants each is preferred for.
#[utoipa::path(get, path = "/admin/v1/cluster", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "The nodes and their tenant counts", body = crate::services::cluster::ClusterView)))]
async fn cluster(_: AdminCtx, State(state): State<AppState>) -> Result<Response, Error> {
    Ok(Json(ops(&state).cluster().await?).into_response())
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])), request_body = CreateTenant,
    responses((status = 201, description = "The tenant, its first key (shown once) and a quickstart", body = crate::services::tenants::Created)))]
async fn create_tenant(_: AdminCtx, State(state): State<AppState>, ApiJson(req): ApiJson<CreateTenant>) -> Result<Response, Error> {
    let created = ops(&state).create_tenant(req).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])), params(("q" = Option<String>, Query, description = "Matches slug, name or email"), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "One page of tenants", body = crate::services::tenants::TenantPage)))]
async fn list_tenants(_: AdminCtx, State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<Value>, Error> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::validation("limit must be between 1 and 500"));
    }
    let page = ops(&state).list_tenants(q.q, q.cursor, limit).await?;
    Ok(Json(json!(page)))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The tenant, its keys, features and effective limits", body = super::schemas::TenantDetail)))]
async fn show_tenant(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    let o = ops(&state);
    let t = o.tenant(&slug).await?;
    let keys = o.list_keys(&slug).await?;
    let ent = state.plans.entitlements(&t);
    let mut detail = json!({"tenant": t, "keys": keys, "features": ent.feature_list(), "effective_tier": ent.tier, "limits": ent.limits_json()});
    if let Some(lease) = o.tenant_lease(&t.id).await? {
        detail["cluster"] = json!(lease);
    }
    Ok(Json(detail))
}

#[utoipa::path(patch, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body = TenantPatch,
    responses((status = 200, description = "The tenant", body = Tenant)))]
async fn patch_tenant(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    ApiJson(patch): ApiJson<TenantPatch>,
) -> Result<Json<Tenant>, Error> {
    Ok(Json(ops(&state).update_tenant(&slug, patch).await?))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 204, description = "Deleted")))]
async fn delete_tenant(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<StatusCode, Error> {
    ops(&state).delete_tenant(&slug).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/keys", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body(content = Option<NewKey>, description = "Empty: a read+write key named default"),
    responses((status = 201, description = "The key and its plaintext (shown once)", body = crate::services::keys::IssuedKey)))]
async fn create_key(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>, body: axum::body::Bytes) -> Result<Response, Error> {
    // The body is optional: an empty one makes a read+write key named "default".
    let new: NewKey = if body.iter().all(u8::is_ascii_whitespace) {
        NewKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::bad_request(Code::InvalidJson, format!("invalid request body: {e}")))?
    };
    let issued = ops(&state).create_key(&slug, new).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/keys", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The keys", body = super::schemas::KeyList)))]
async fn list_keys(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    Ok(Json(json!({"keys": ops(&state).list_keys(&slug).await?})))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}/keys/{key_id}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 200, description = "The revoked key", body = super::schemas::KeyAnswer)))]
async fn revoke_key(_: AdminCtx, State(state): State<AppState>, ApiPath((slug, key_id)): ApiPath<(String, String)>) -> Result<Json<Value>, Error> {
    Ok(Json(json!({"key": ops(&state).revoke_key(&slug, &key_id).await?})))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/keys/{key_id}/rotate", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 201, description = "The replacement, and until when the old key works", body = crate::services::keys::RotatedKey)))]
async fn rotate_key(_: AdminCtx, State(state): State<AppState>, ApiPath((slug, key_id)): ApiPath<(String, String)>) -> Result<Response, Error> {
    let rotated = ops(&state).rotate_key(&slug, &key_id).await?;
    Ok((StatusCode::CREATED, Json(rotated)).into_response())
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/audit", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The audit log", body = super::schemas::AuditLog)))]
async fn audit_log(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    Ok(Json(json!({"events": ops(&state).audit_log(&slug).await?})))
}

/// Rebuilds the tenant's search index from SQLite, through its open handle.
/// A tenant's whole archive (tar + zstd, format in the README's "Data rights"), streamed.
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/export", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The archive (tar + zstd), streamed", content_type = "application/octet-stream", body = super::schemas::Archive)))]
async fn export(AdminCtx(proof): AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<axum::response::Response, Error> {
    Ok(super::tenant::archive_response(ops(&state).export_tenant(&proof, &slug).await?))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/reindex", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Reindexed", body = super::schemas::Reindexed)))]
async fn reindex(AdminCtx(proof): AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    let (slug, n) = ops(&state).reindex(&proof, &slug).await?;
    Ok(Json(json!({"reindexed": slug, "chunks": n})))
}

/// A one-time link into the tenant's dashboard, valid `dashboard.link_ttl_secs` (15 minutes) and once.
#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/dashboard-link", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The link", body = crate::services::dashboard::DashboardLink)))]
async fn dashboard_link(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
) -> Result<Json<crate::services::dashboard::DashboardLink>, Error> {
    Ok(Json(ops(&state).dashboard_link(&slug).await?))
}

/// Replication state of one tenant: replica URL, last replicated TXID and time, lag, last error.
#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/backup", tag = "backups", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "Replication state", body = super::schemas::BackupStatus)))]
async fn backup_status(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    Ok(Json(ops(&state).backup_status(&slug).await?))
}

/// Restores one tenant in place (latest, a TXID or a time). Other tenants keep serving.
#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/restore", tag = "backups", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    request_body(content = Option<RestoreRequest>, description = "At most one of txid and timestamp; empty: latest"),
    responses((status = 200, description = "Restored", body = super::schemas::Restored)))]
async fn restore(
    AdminCtx(proof): AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    let req = RestoreRequest::from_body(&body)?;
    Ok(Json(ops(&state).restore(&proof, &slug, req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AskQuery {
    /// The name Caddy wants a certificate for.
    domain: String,
}

/// Caddy's on-demand TLS `ask`: 200 only for the apex, existing tenant subdomains and registered
/// custom domains; 404 otherwise, so Caddy never requests certificates for arbitrary names.
#[utoipa::path(get, path = "/tls/ask", tag = "operations", security(()), params(AskQuery),
    responses((status = 200, description = "A certificate may be issued for this name"), (status = 404, description = "Not a name this server serves")))]
pub(crate) async fn tls_ask(State(state): State<AppState>, ApiQuery(q): ApiQuery<AskQuery>) -> Result<StatusCode, Error> {
    let domain = q.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let found = match classify_host(&domain, &state.config.base_domain) {
        HostKind::None => domain == state.config.base_domain.to_ascii_lowercase(),
        HostKind::Subdomain(label) => match Slug::parse(&label) {
            Ok(slug) => state.auth.tenant_by_slug(slug.as_str()).await?.is_some(),
            Err(_) => false,
        },
        HostKind::Other(d) => state.auth.tenant_by_domain(&d).await?.is_some(),
    };
    Ok(if found { StatusCode::OK } else { StatusCode::NOT_FOUND })
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/overrides", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The overrides", body = super::schemas::OverridesAnswer)))]
async fn get_overrides(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<Value>, Error> {
    let o: Option<crate::plans::Overrides> = ops(&state).overrides(&slug).await?;
    Ok(Json(json!({"overrides": o})))
}

/// Sets the tenant's WooCommerce webhook secret (the one entered in WooCommerce's webhook settings).
/// The answer names the delivery URL to enter there; the secret is never echoed or audited.
#[utoipa::path(put, path = "/admin/v1/tenants/{slug}/integrations/woocommerce", tag = "admin", security(("admin_token" = [])),
    params(("slug" = String, Path, description = "Tenant slug")), request_body = WooSettingsRequest,
    responses((status = 200, description = "The integration is set", body = WooSettingsAnswer)))]
async fn put_woocommerce(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    ApiJson(req): ApiJson<WooSettingsRequest>,
) -> Result<Json<WooSettingsAnswer>, Error> {
    Ok(Json(ops(&state).set_woocommerce(&slug, req).await?))
}

/// Sets a tenant's own limits and feature switches (`null` removes them). Applies on the next request.
#[utoipa::path(put, path = "/admin/v1/tenants/{slug}/overrides", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body(content = Option<crate::plans::Overrides>, description = "The overrides, or null to remove them"),
    responses((status = 200, description = "The overrides", body = super::schemas::OverridesAnswer)))]
async fn put_overrides(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    ApiJson(o): ApiJson<Option<crate::plans::Overrides>>,
) -> Result<Json<Value>, Error> {
    ops(&state).put_overrides(&slug, o.clone()).await?;
    Ok(Json(json!({"overrides": o})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyLimit {
    rate_per_sec: u32,
    burst: u32,
}

/// Gives an API key its own (lower) rate limit; `null` removes it.
#[utoipa::path(put, path = "/admin/v1/tenants/{slug}/keys/{key_id}/rate_limit", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),request_body(content = Option<KeyLimit>, description = "The key's own limit, or null to remove it"),
    responses((status = 200, description = "The key's own limit", body = super::schemas::KeyLimitAnswer)))]
async fn put_key_limit(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath((slug, key_id)): ApiPath<(String, String)>,
    ApiJson(limit): ApiJson<Option<KeyLimit>>,
) -> Result<Json<Value>, Error> {
    let pair = limit.as_ref().map(|l| (l.rate_per_sec, l.burst));
    ops(&state).set_key_limit(&slug, &key_id, pair).await?;
    Ok(Json(json!({"key_id": key_id, "rate_limit": pair.map(|(r, b)| json!({"rate_per_sec": r, "burst": b}))})))
}

#[derive(Deserialize)]
struct UsageQuery {
    period: Option<String>,
    format: Option<String>,
}

/// Every tenant's usage and bill for a month, as JSON or (`Accept: text/csv` or `format=csv`) CSV.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "admin", security(("admin_token" = [])), params(("period" = Option<String>, Query, description = "YYYY-MM"), ("format" = Option<String>, Query, description = "json or csv")),
    responses((status = 200, description = "Every tenant's usage and bill", content((super::schemas::UsageExport = "application/json"), (String = "text/csv")))))]
async fn usage_export(
    _: AdminCtx,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Response, Error> {
    let (period, rows) = ops(&state).usage_report(q.period).await?;
    let wants_csv = q.format.as_deref() == Some("csv")
        || headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let mut out = String::from(crate::billing::USAGE_CSV_HEADER);
        out.push('\n');
        for r in &rows {
            out.push_str(&r.csv_line());
            out.push('\n');
        }
        return Ok(([(axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response());
    }
    let total: f64 = rows.iter().map(|r| r.total_usd).sum();
    Ok(Json(json!({"period": period, "tenants": rows, "total_usd": (total * 100.0).round() / 100.0})).into_response())
}
