//! Tenant self-service: who am I, my usage, and optional open signup.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::admin::CreateTenant;
use super::ApiJson;
use crate::auth::TenantCtx;
use crate::control::{Slug, Tier};
use crate::error::Error;
use crate::lifecycle;
use crate::metering::Kind;
use crate::state::AppState;

/// Tenant self-service in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(me, usage, audit, signup))]
pub struct TenantApi;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenant", get(me))
        .route("/usage", get(usage))
        .route("/audit", get(audit))
        .route("/signup", post(signup))
        .route("/backup", get(backup))
        .route("/restore", post(restore))
}

/// The tenant's own replication state (admin-scoped key).
async fn backup(ctx: TenantCtx) -> Result<Json<serde_json::Value>, Error> {
    ctx.require(crate::control::Scope::Admin)?;
    Ok(Json(crate::api::admin::backup_status_json(ctx.state(), ctx.tenant())))
}

/// Point-in-time restore of the tenant's own data: needs an admin-scoped key and `pitr_restore` in the plan.
async fn restore(ctx: TenantCtx, body: axum::body::Bytes) -> Result<Json<serde_json::Value>, Error> {
    ctx.require(crate::control::Scope::Admin)?;
    ctx.require_feature("pitr_restore")?;
    let target = crate::api::admin::restore_target_from(&body)?;
    let t = ctx.tenant().clone();
    let report = crate::lifecycle::restore_tenant(ctx.state(), &t, target, &format!("tenant:{}", t.id)).await?;
    Ok(Json(serde_json::json!({"tenant": t.slug, "restored": report})))
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenant", 
    responses((status = 200, description = "{id, slug, name, tier, status, trial_ends_at, custom_domain, features}", body = Object)))]
async fn me(ctx: TenantCtx) -> Json<serde_json::Value> {
    let t = ctx.tenant();
    let ent = ctx.entitlements();
    Json(json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "tier": ent.tier,
        "status": t.status,
        "trial_ends_at": t.trial_ends_at,
        "custom_domain": t.custom_domain,
        "features": ent.feature_list(),
    }))
}

fn percent(used: u64, limit: Option<u64>) -> serde_json::Value {
    match limit {
        Some(0) => json!(if used > 0 { 100.0 } else { 0.0 }),
        Some(l) => json!(((used as f64 / l as f64) * 1000.0).round() / 10.0),
        None => serde_json::Value::Null,
    }
}

/// The current UTC calendar month: usage, limits, percent used, overage so far and the reset date.
#[utoipa::path(get, path = "/api/v1/usage", tag = "tenant", 
    responses((status = 200, description = "{period, tier, usage, limits, percent_used, overage, resets_at}", body = Object)))]
async fn usage(ctx: TenantCtx, State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    let now = state.plans.clock.now();
    let (period, _, resets_at) = crate::plans::period_of(now);
    let month = state.meter.month(&ctx.tenant().id).await?;
    let stored = ctx.stored().await?;
    let ent = ctx.entitlements();
    let mut usage = serde_json::Map::new();
    for k in Kind::ALL {
        usage.insert(k.as_str().into(), json!({"calls": month.count(k), "tokens": month.tokens_of(k)}));
    }
    usage.insert("api_calls".into(), json!(month.count(Kind::ApiCall)));
    usage.insert("queries".into(), json!(month.queries()));
    usage.insert("tokens_embedded".into(), json!(month.tokens_embedded()));
    usage.insert("tokens_returned".into(), json!(month.tokens_returned()));
    usage.insert("documents".into(), json!(stored.documents));
    usage.insert("storage_bytes".into(), json!(stored.storage_bytes));
    usage.insert("products".into(), json!(0));
    let bill = crate::plans::bill(ent, &month);
    Ok(Json(json!({
        "period": period,
        "tier": ent.tier,
        "usage": usage,
        "limits": ent.limits_json(),
        "percent_used": {
            "queries": percent(month.queries(), ent.queries_limit()),
            "documents": percent(stored.documents, ent.documents_limit()),
            "storage_bytes": percent(stored.storage_bytes, ent.storage_limit()),
        },
        "overage": {"queries": bill.overage_queries, "amount_usd": bill.overage_usd},
        "resets_at": resets_at,
    })))
}

/// The tenant's own audit log (feature `audit_log`).
#[utoipa::path(get, path = "/api/v1/audit", tag = "tenant", 
    responses((status = 200, description = "{events}", body = Object)))]
async fn audit(ctx: TenantCtx, State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    ctx.require_feature("audit_log")?;
    let id = ctx.tenant().id.clone();
    let events = state.control.run(move |c| Ok(crate::control::list_audit(c, Some(&id), 200)?)).await?;
    Ok(Json(json!({"events": events})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signup {
    email: String,
    company: String,
}

/// Open signup: creates a free tenant whose slug derives from the company name. Off unless
/// `signup_enabled` is set.
#[utoipa::path(post, path = "/api/v1/signup", tag = "tenant", security(()), request_body(content = Object, description = "{email, company}"),
    responses((status = 201, description = "{tenant, api_key, key, quickstart}", body = Object)))]
async fn signup(State(state): State<AppState>, ApiJson(req): ApiJson<Signup>) -> Result<Response, Error> {
    if !state.config.signup_enabled {
        return Err(Error::forbidden("signup_disabled", "open signup is switched off on this server"));
    }
    let base = slugify(&req.company);
    let mut last_err = None;
    for attempt in 0..5 {
        let slug = if attempt == 0 && Slug::parse(&base).is_ok() {
            base.clone()
        } else {
            let suffix: u32 = rand::random::<u32>() % 100_000;
            format!("{}-{suffix}", &base[..base.len().min(50)]).trim_matches('-').to_string()
        };
        let create = CreateTenant { slug, name: req.company.clone(), email: req.email.clone(), tier: Tier::Free, status: None, trial_days: None };
        match lifecycle::create_tenant(&state, create, "signup").await {
            Ok(created) => return Ok((StatusCode::CREATED, Json(created)).into_response()),
            Err(e) if matches!(e.code(), "slug_taken" | "reserved_slug" | "invalid_slug") => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::validation("could not derive a slug from company")))
}

/// Lowercase a-z0-9 runs joined by single hyphens, at least 3 characters.
fn slugify(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out = out.trim_matches('-').chars().take(50).collect::<String>().trim_end_matches('-').to_string();
    while out.len() < 3 {
        out.push('x');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugify_makes_labels() {
        assert_eq!(super::slugify("Acme, Inc."), "acme-inc");
        assert_eq!(super::slugify("Ü"), "xxx");
        assert!(crate::control::Slug::parse(&super::slugify("  The   Big -- Co  ")).is_ok());
    }
}
