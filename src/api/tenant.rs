//! Tenant self-service: who am I, my usage, my audit log, my backups, and optional open signup.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::Authorized;
use super::ApiJson;
use crate::control::{Slug, Tier};
use crate::error::{Code, Error};
use crate::services::restore::{self, RestoreRequest};
use crate::services::tenants::CreateTenant;
use crate::services::{op, usage, Actor, Operator};
use crate::state::AppState;

/// Tenant self-service in the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(me, usage, audit, signup, backup, restore, export))]
pub struct TenantApi;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenant", get(me))
        .route("/usage", get(usage))
        .route("/audit", get(audit))
        .route("/signup", post(signup))
        .route("/backup", get(backup))
        .route("/restore", post(restore))
        .route("/export", post(export))
}

/// The tenant's whole archive (tar + zstd, format in the README's "Data rights"): needs an
/// admin-scoped key and `export` in the plan.
#[utoipa::path(post, path = "/api/v1/export", tag = "tenant", operation_id = "export_own",
    responses((status = 200, description = "The archive (tar + zstd), streamed", content_type = "application/octet-stream", body = super::schemas::Archive)))]
async fn export(ctx: Authorized<op::Export>) -> Result<Response, Error> {
    Ok(archive_response(crate::services::export::export_own(&ctx).await?))
}

/// A prepared export as a streamed attachment; its manifest's checksums ride in headers too.
pub(crate) fn archive_response(export: crate::services::export::Export) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", export.filename);
    let bytes = export.manifest().bytes().to_string();
    let body = axum::body::Body::from_stream(export.stream());
    (
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
            (axum::http::HeaderName::from_static("x-warren-export-bytes"), bytes),
        ],
        body,
    )
        .into_response()
}

/// The tenant's own replication state (admin-scoped key).
#[utoipa::path(get, path = "/api/v1/backup", tag = "backups", operation_id = "own_backup_status",
    responses((status = 200, description = "Replication state", body = super::schemas::BackupStatus)))]
async fn backup(ctx: Authorized<op::BackupStatus>) -> Result<Json<Value>, Error> {
    Ok(Json(restore::backup_status(&ctx)?))
}

/// Point-in-time restore of the tenant's own data: needs an admin-scoped key and `pitr_restore` in the plan.
/// An empty body restores the latest state.
#[utoipa::path(post, path = "/api/v1/restore", tag = "backups", operation_id = "restore_own", request_body(content = Option<RestoreRequest>, description = "At most one of txid and timestamp; empty: latest"),
    responses((status = 200, description = "Restored", body = super::schemas::Restored)))]
async fn restore(ctx: Authorized<op::Restore>, body: axum::body::Bytes) -> Result<Json<Value>, Error> {
    Ok(Json(restore::restore_own(&ctx, RestoreRequest::from_body(&body)?).await?))
}

#[utoipa::path(get, path = "/api/v1/tenant", tag = "tenant",
    responses((status = 200, description = "The tenant and its features", body = super::schemas::Me)))]
async fn me(ctx: Authorized<op::TenantInfo>) -> Result<Json<Value>, Error> {
    Ok(Json(usage::me(&ctx)?))
}

/// The current UTC calendar month: usage, limits, percent used, overage so far and the reset date.
#[utoipa::path(get, path = "/api/v1/usage", tag = "tenant",
    responses((status = 200, description = "This month's usage against the plan", body = super::schemas::MonthUsage)))]
async fn usage(ctx: Authorized<op::UsageRead>) -> Result<Json<Value>, Error> {
    Ok(Json(usage::month(&ctx).await?))
}

/// The tenant's own audit log (feature `audit_log`, admin-scoped key).
#[utoipa::path(get, path = "/api/v1/audit", tag = "tenant",
    responses((status = 200, description = "The audit log", body = super::schemas::AuditLog)))]
async fn audit(ctx: Authorized<op::AuditRead>) -> Result<Json<Value>, Error> {
    Ok(Json(json!({"events": usage::audit(&ctx).await?})))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Signup {
    email: String,
    company: String,
}

/// Open signup: creates a free tenant whose slug derives from the company name. Off unless
/// `signup_enabled` is set.
#[utoipa::path(post, path = "/api/v1/signup", tag = "tenant", security(()), request_body = Signup,
    responses((status = 201, description = "The new free tenant, its first key (shown once) and a quickstart", body = crate::services::tenants::Created)))]
async fn signup(State(state): State<AppState>, ApiJson(req): ApiJson<Signup>) -> Result<Response, Error> {
    if !state.config.signup_enabled {
        return Err(Error::forbidden(Code::SignupDisabled, "open signup is switched off on this server"));
    }
    let ops = Operator::live(&state, Actor::Signup);
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
        match ops.create_tenant(create).await {
            Ok(created) => return Ok((StatusCode::CREATED, Json(created)).into_response()),
            Err(e) if matches!(e.code(), Code::SlugTaken | Code::ReservedSlug | Code::InvalidSlug) => last_err = Some(e),
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
