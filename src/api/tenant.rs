//! Tenant self-service: who am I, my usage, and optional open signup.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{Datelike, Utc};
use serde::Deserialize;
use serde_json::json;

use super::admin::CreateTenant;
use super::ApiJson;
use crate::auth::TenantCtx;
use crate::control::{Slug, Tier};
use crate::error::Error;
use crate::lifecycle;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tenant", get(me))
        .route("/usage", get(usage))
        .route("/signup", post(signup))
}

async fn me(ctx: TenantCtx) -> Json<serde_json::Value> {
    let t = ctx.tenant();
    Json(json!({
        "id": t.id,
        "slug": t.slug,
        "name": t.name,
        "tier": t.tier,
        "status": t.status,
        "trial_ends_at": t.trial_ends_at,
        "custom_domain": t.custom_domain,
        "features": crate::plans::features(t.tier),
    }))
}

/// The current UTC calendar month: metered calls and tokens by kind. Limits come with the plans module.
async fn usage(ctx: TenantCtx, State(state): State<AppState>) -> Result<Json<serde_json::Value>, Error> {
    state.meter.flush().await;
    let now = Utc::now();
    let period = format!("{:04}-{:02}", now.year(), now.month());
    let from = format!("{period}-01T00:00:00.000Z");
    let (y, m) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let to = format!("{y:04}-{m:02}-01T00:00:00.000Z");
    let id = ctx.tenant().id.clone();
    let (f, t) = (from.clone(), to.clone());
    let rows = state.control.run(move |c| Ok(crate::metering::totals(c, &id, &f, &t)?)).await?;
    let mut usage = serde_json::Map::new();
    let mut queries = 0;
    for (kind, count, tokens) in rows {
        if kind == "search" || kind == "assemble" {
            queries += count;
        }
        usage.insert(kind, json!({"calls": count, "tokens": tokens}));
    }
    usage.insert("queries".into(), json!(queries));
    Ok(Json(json!({"period": period, "tier": ctx.tenant().tier, "usage": usage, "limits": {}, "resets_at": to})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signup {
    email: String,
    company: String,
}

/// Open signup: creates a free tenant whose slug derives from the company name. Off unless
/// `signup_enabled` is set.
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
