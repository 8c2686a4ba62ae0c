//! The admin API under `/admin/v1` (admin bearer token), and Caddy's on-demand TLS `ask` endpoint.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{classify_host, AdminCtx, HostKind};
use crate::control::tenants::{self, NewTenant, TenantPatch};
use crate::control::{keys, ApiKey, NewKey, Slug, Status, Tenant, Tier};
use crate::error::Error;
use crate::lifecycle;
use crate::state::AppState;

/// The admin API's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_tenant, list_tenants, show_tenant, patch_tenant, delete_tenant, create_key, list_keys, revoke_key,
    rotate_key, audit_log, reindex, get_overrides, put_overrides, put_key_limit, usage_export))]
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
        .route("/tenants/{slug}/backup", get(backup_status))
        .route("/tenants/{slug}/restore", post(restore))
        .route("/tenants/{slug}/overrides", get(get_overrides).put(put_overrides))
        .route("/tenants/{slug}/keys/{key_id}/rate_limit", axum::routing::put(put_key_limit))
        .route("/usage", get(usage_export))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub slug: String,
    pub name: String,
    pub email: String,
    #[serde(default = "default_tier")]
    pub tier: Tier,
    /// `trial` makes the tenant a trial of `tier` for `trial_days` (default 14).
    pub status: Option<Status>,
    pub trial_days: Option<u32>,
}

fn default_tier() -> Tier {
    Tier::Free
}

#[derive(Serialize)]
pub struct Created {
    pub tenant: Tenant,
    pub api_key: String,
    pub key: ApiKey,
    pub quickstart: String,
}

#[utoipa::path(post, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])), request_body(content = Object, description = "{slug, name, email, tier?, status?, trial_days?}"),
    responses((status = 201, description = "{tenant, api_key, key, quickstart}", body = Object)))]
async fn create_tenant(_: AdminCtx, State(state): State<AppState>, ApiJson(req): ApiJson<CreateTenant>) -> Result<Response, Error> {
    let created = lifecycle::create_tenant(&state, req, "admin").await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/admin/v1/tenants", tag = "admin", security(("admin_token" = [])), params(("q" = Option<String>, Query, description = "Matches slug, name or email"), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, description = "{tenants, next_cursor, total}", body = Object)))]
async fn list_tenants(_: AdminCtx, State(state): State<AppState>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<serde_json::Value>, Error> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(Error::validation("limit must be between 1 and 500"));
    }
    let (search, after) = (q.q.clone(), q.cursor.clone());
    let (list, total) = state
        .control
        .run(move |c| Ok((tenants::list(c, search.as_deref(), after.as_deref(), limit + 1)?, tenants::count(c)?)))
        .await?;
    let more = list.len() > limit as usize;
    let page: Vec<Tenant> = list.into_iter().take(limit as usize).collect();
    let next = if more { page.last().map(|t| t.slug.clone()) } else { None };
    Ok(Json(json!({"tenants": page, "next_cursor": next, "total": total})))
}

/// Looks a tenant up by slug for admin routes (404 when absent, 400 when the slug is malformed).
pub(crate) async fn tenant_by_slug(state: &AppState, slug: &str) -> Result<Tenant, Error> {
    let slug = Slug::parse(slug).map_err(|e| if e.code() == "reserved_slug" { Error::not_found("tenant_not_found", "no such tenant") } else { e })?;
    state
        .control
        .run(move |c| Ok(tenants::get_by_slug(c, slug.as_str())?))
        .await?
        .ok_or_else(|| Error::not_found("tenant_not_found", "no such tenant"))
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "{tenant, keys, features}", body = Object)))]
async fn show_tenant(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let id = t.id.clone();
    let keys = state.control.run(move |c| Ok(keys::list(c, &id)?)).await?;
    let ent = state.plans.entitlements(&t);
    Ok(Json(json!({"tenant": t, "keys": keys, "features": ent.feature_list(), "effective_tier": ent.tier, "limits": ent.limits_json()})))
}

#[utoipa::path(patch, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body(content = Object, description = "{tier?, status?, custom_domain?, name?, email?, trial_ends_at?}"),
    responses((status = 200, description = "The tenant", body = Object)))]
async fn patch_tenant(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    ApiJson(patch): ApiJson<TenantPatch>,
) -> Result<Json<Tenant>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let id = t.id.clone();
    let detail = json!({"tier": patch.tier, "status": patch.status, "custom_domain": patch.custom_domain});
    let updated = state
        .control
        .write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let u = tenants::update(&tx, &id, &patch)?;
            crate::control::audit(&tx, "admin", Some(&id), "tenant.updated", &detail)?;
            tx.commit()?;
            Ok(u)
        })
        .await?;
    state.auth.invalidate();
    Ok(Json(updated))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 204, description = "Deleted")))]
async fn delete_tenant(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<StatusCode, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    lifecycle::delete_tenant(&state, &t, "admin").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/keys", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body(content = Object, description = "{name?, scopes?, expires_at?}"),
    responses((status = 201, description = "{key, api_key}", body = Object)))]
async fn create_key(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    // The body is optional: an empty one makes a read+write key named "default".
    let new: NewKey = if body.iter().all(u8::is_ascii_whitespace) {
        NewKey::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::bad_request("invalid_json", format!("invalid request body: {e}")))?
    };
    let id = t.id.clone();
    let (rec, key) = state
        .control
        .write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = keys::create(&tx, &id, &new)?;
            crate::control::audit(&tx, "admin", Some(&id), "key.created", &json!({"key_id": out.0.id, "name": out.0.name}))?;
            tx.commit()?;
            Ok(out)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"key": rec, "api_key": key}))).into_response())
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/keys", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "{keys}", body = Object)))]
async fn list_keys(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let keys = state.control.run(move |c| Ok(keys::list(c, &t.id)?)).await?;
    Ok(Json(json!({"keys": keys})))
}

#[utoipa::path(delete, path = "/admin/v1/tenants/{slug}/keys/{key_id}", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 200, description = "{key}", body = Object)))]
async fn revoke_key(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath((slug, key_id)): ApiPath<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let rec = state
        .control
        .write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let rec = keys::revoke(&tx, &t.id, &key_id)?;
            crate::control::audit(&tx, "admin", Some(&t.id), "key.revoked", &json!({"key_id": key_id}))?;
            tx.commit()?;
            Ok(rec)
        })
        .await?;
    state.auth.invalidate();
    Ok(Json(json!({"key": rec})))
}

#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/keys/{key_id}/rotate", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),
    responses((status = 201, description = "{key, api_key, old_key_valid_until}", body = Object)))]
async fn rotate_key(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath((slug, key_id)): ApiPath<(String, String)>,
) -> Result<Response, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let overlap = Duration::seconds(state.config.key_rotation_overlap_secs as i64);
    let (rec, key) = state
        .control
        .write(move |c| {
            let out = keys::rotate(c, &t.id, &key_id, overlap)?;
            crate::control::audit(c, "admin", Some(&t.id), "key.rotated", &json!({"old_key_id": key_id, "new_key_id": out.0.id}))?;
            Ok(out)
        })
        .await?;
    state.auth.invalidate();
    let old_expires_at = Utc::now() + overlap;
    Ok((StatusCode::CREATED, Json(json!({"key": rec, "api_key": key, "old_key_valid_until": old_expires_at}))).into_response())
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/audit", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "{events}", body = Object)))]
async fn audit_log(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let events = state.control.run(move |c| Ok(crate::control::list_audit(c, Some(&t.id), 200)?)).await?;
    Ok(Json(json!({"events": events})))
}

/// Rebuilds the tenant's search index from SQLite, through its open handle.
#[utoipa::path(post, path = "/admin/v1/tenants/{slug}/reindex", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "{reindexed, chunks}", body = Object)))]
async fn reindex(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let lease = state.registry.acquire(&t.id).await?;
    let n = lease
        .blocking(|h| {
            let search = h.extension(|| h.with_reader(|c| Ok(crate::search::TenantSearch::open(h.dir(), c)?)))?;
            h.with_reader(|c| Ok(search.rebuild(c)?))
        })
        .await?;
    Ok(Json(json!({"reindexed": t.slug, "chunks": n})))
}

/// Replication state of one tenant: replica URL, last replicated TXID and time, lag, last error.
async fn backup_status(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    Ok(Json(backup_status_json(&state, &t)))
}

pub(crate) fn backup_status_json(state: &AppState, t: &Tenant) -> serde_json::Value {
    match &state.backup {
        None => json!({"tenant": t.slug, "enabled": false}),
        Some(b) => {
            let db = crate::tenant::tenant_dir(&state.config.data_dir, &t.id).join(crate::tenant::DB_FILE);
            let st = b.status(&crate::backup::BackupService::tenant_key(&t.id), &db);
            json!({"tenant": t.slug, "enabled": true, "backup": st})
        }
    }
}

/// Body of a restore: at most one of `txid` (16 hex digits) and `timestamp` (RFC 3339); neither means latest.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreRequest {
    pub txid: Option<String>,
    pub timestamp: Option<String>,
}

/// Parses an optional restore body (empty means latest) into a target.
pub(crate) fn restore_target_from(body: &[u8]) -> Result<crate::backup::restore::Target, Error> {
    let req: RestoreRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestoreRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| Error::bad_request("invalid_json", format!("invalid JSON body: {e}")))?
    };
    restore_target(&req)
}

pub(crate) fn restore_target(req: &RestoreRequest) -> Result<crate::backup::restore::Target, Error> {
    crate::backup::restore::Target::parse(req.txid.as_deref(), req.timestamp.as_deref()).map_err(|e| Error::validation(format!("{e:#}")))
}

/// Restores one tenant in place (latest, a TXID or a time). Other tenants keep serving.
async fn restore(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>, body: axum::body::Bytes) -> Result<Json<serde_json::Value>, Error> {
    let target = restore_target_from(&body)?;
    let t = tenant_by_slug(&state, &slug).await?;
    let report = crate::lifecycle::restore_tenant(&state, &t, target, "admin").await?;
    Ok(Json(json!({"tenant": t.slug, "restored": report})))
}

#[derive(Deserialize)]
pub(crate) struct AskQuery {
    domain: String,
}

/// Caddy's on-demand TLS `ask`: 200 only for the apex, existing tenant subdomains and registered
/// custom domains; 404 otherwise, so Caddy never requests certificates for arbitrary names.
pub(crate) async fn tls_ask(State(state): State<AppState>, ApiQuery(q): ApiQuery<AskQuery>) -> Result<StatusCode, Error> {
    let domain = q.domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let found = match classify_host(&domain, &state.config.base_domain) {
        HostKind::None => domain == state.config.base_domain.to_ascii_lowercase(),
        HostKind::Subdomain(label) => match Slug::parse(&label) {
            Ok(slug) => state.control.run(move |c| Ok(tenants::get_by_slug(c, slug.as_str())?.is_some())).await?,
            Err(_) => false,
        },
        HostKind::Other(d) => state.control.run(move |c| Ok(tenants::get_by_domain(c, &d)?.is_some())).await?,
    };
    Ok(if found { StatusCode::OK } else { StatusCode::NOT_FOUND })
}

impl CreateTenant {
    pub(crate) fn into_new(self) -> Result<NewTenant, Error> {
        let slug = Slug::parse(&self.slug)?;
        tenants::validate_profile(&self.name, &self.email)?;
        let status = self.status.unwrap_or(Status::Active);
        let trial_ends_at = match status {
            Status::Trial => Some(Utc::now() + Duration::days(self.trial_days.unwrap_or(14).clamp(1, 365) as i64)),
            _ => None,
        };
        Ok(NewTenant { slug, name: self.name, email: self.email, tier: self.tier, status, trial_ends_at })
    }
}

#[utoipa::path(get, path = "/admin/v1/tenants/{slug}/overrides", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),
    responses((status = 200, description = "The overrides", body = Object)))]
async fn get_overrides(_: AdminCtx, State(state): State<AppState>, ApiPath(slug): ApiPath<String>) -> Result<Json<serde_json::Value>, Error> {
    let t = tenant_by_slug(&state, &slug).await?;
    let o = state.control.run(move |c| crate::plans::get_overrides(c, &t.id)).await?;
    Ok(Json(json!({"overrides": o})))
}

/// Sets a tenant's own limits and feature switches (`null` removes them). Applies on the next request.
#[utoipa::path(put, path = "/admin/v1/tenants/{slug}/overrides", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug")),request_body(content = Object, description = "{rate_per_sec?, burst?, queries_per_month?, queries_hard_limit?, documents?, storage_bytes?, products?, features?} or null"),
    responses((status = 200, description = "The overrides", body = Object)))]
async fn put_overrides(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath(slug): ApiPath<String>,
    ApiJson(o): ApiJson<Option<crate::plans::Overrides>>,
) -> Result<Json<serde_json::Value>, Error> {
    if let Some(o) = &o {
        o.validate()?;
    }
    let t = tenant_by_slug(&state, &slug).await?;
    let stored = o.clone();
    state
        .control
        .write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            crate::plans::put_overrides(&tx, &t.id, stored.as_ref())?;
            crate::control::audit(&tx, "admin", Some(&t.id), "plan.overrides", &json!({"overrides": stored}))?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    state.plans.refresh_overrides(&state.control).await?;
    Ok(Json(json!({"overrides": o})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLimit {
    rate_per_sec: u32,
    burst: u32,
}

/// Gives an API key its own (lower) rate limit; `null` removes it.
#[utoipa::path(put, path = "/admin/v1/tenants/{slug}/keys/{key_id}/rate_limit", tag = "admin", security(("admin_token" = [])), params(("slug" = String, Path, description = "Tenant slug"), ("key_id" = String, Path, description = "API key id")),request_body(content = Object, description = "{rate_per_sec, burst} or null"),
    responses((status = 200, description = "{key_id, rate_limit}", body = Object)))]
async fn put_key_limit(
    _: AdminCtx,
    State(state): State<AppState>,
    ApiPath((slug, key_id)): ApiPath<(String, String)>,
    ApiJson(limit): ApiJson<Option<KeyLimit>>,
) -> Result<Json<serde_json::Value>, Error> {
    if limit.as_ref().is_some_and(|l| l.rate_per_sec == 0 || l.burst == 0) {
        return Err(Error::validation("rate_per_sec and burst must be at least 1"));
    }
    let t = tenant_by_slug(&state, &slug).await?;
    let pair = limit.as_ref().map(|l| (l.rate_per_sec, l.burst));
    let kid = key_id.clone();
    state
        .control
        .write(move |c| {
            if !keys::list(c, &t.id)?.iter().any(|k| k.id == kid) {
                return Err(Error::not_found("key_not_found", "no such key for this tenant"));
            }
            crate::plans::put_key_limit(c, &kid, pair)?;
            crate::control::audit(c, "admin", Some(&t.id), "key.rate_limit", &json!({"key_id": kid, "limit": pair}))?;
            Ok(())
        })
        .await?;
    state.plans.refresh_overrides(&state.control).await?;
    Ok(Json(json!({"key_id": key_id, "rate_limit": pair.map(|(r, b)| json!({"rate_per_sec": r, "burst": b}))})))
}

#[derive(Deserialize)]
struct UsageQuery {
    period: Option<String>,
    format: Option<String>,
}

/// Every tenant's usage and bill for a month, as JSON or (`Accept: text/csv` or `format=csv`) CSV.
#[utoipa::path(get, path = "/admin/v1/usage", tag = "admin", security(("admin_token" = [])), params(("period" = Option<String>, Query, description = "YYYY-MM"), ("format" = Option<String>, Query, description = "json or csv")),
    responses((status = 200, description = "Every tenant's usage and bill", content((Object = "application/json"), (String = "text/csv")))))]
async fn usage_export(
    _: AdminCtx,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Response, Error> {
    let period = q.period.unwrap_or_else(|| crate::plans::period_of(state.plans.clock.now()).0);
    if crate::plans::parse_period(&period).is_none() {
        return Err(Error::bad_request("invalid_query", "period must be YYYY-MM"));
    }
    state.meter.flush().await;
    let store = state.plans.clone();
    let p = period.clone();
    let rows = state.control.run(move |c| crate::plans::usage_report(c, &store, &p)).await?;
    let wants_csv = q.format.as_deref() == Some("csv")
        || headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    if wants_csv {
        let mut out = String::from(crate::plans::USAGE_CSV_HEADER);
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
