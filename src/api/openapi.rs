//! `GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (Swagger UI with assets embedded at build time).
//!
//! The document is generated from the handlers' `#[utoipa::path]` annotations, one `#[derive(OpenApi)]`
//! struct per module, merged here: **a new module adds its paths with one line in [`MODULES`]**.
//! What every operation shares is added once, by [`finish`], instead of on each handler: the error
//! responses (all with the [`error_schema`] body), the `RateLimit-*` headers on tenant calls, and
//! the security schemes (API key header, bearer API key or JWT, admin token).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use crate::state::AppState;

/// Every module's part of the document. Add one line per new module.
pub const MODULES: &[fn() -> utoipa::openapi::OpenApi] = &[
    OpsApi::openapi,
    super::tenant::TenantApi::openapi,
    super::context::ContextApi::openapi,
    super::admin::AdminApi::openapi,
    super::recs::RecsApi::openapi,
    super::webhooks::WebhooksApi::openapi,
];

/// Health and readiness (no credentials).
#[derive(OpenApi)]
#[openapi(paths(super::health, super::ready, super::metrics))]
struct OpsApi;

/// The error statuses any operation may answer; each carries the error body.
const ERROR_STATUSES: &[(&str, &str)] = &[
    ("400", "Malformed or invalid input (`invalid_json`, `validation_failed`, ...)."),
    ("401", "Missing, unknown or expired credentials (`unauthorized`, `invalid_credentials`, `token_expired`)."),
    ("403", "Not allowed (`tenant_mismatch`, `insufficient_scope`, `feature_not_in_plan`, `plan_limit_reached`, ...)."),
    ("404", "No such tenant, route or resource."),
    ("405", "The route exists but not with this method."),
    ("409", "Conflicts with the current state (`slug_taken`, `domain_taken`, `backups_disabled`, ...)."),
    ("413", "The body is over the configured limit."),
    ("415", "The body must be application/json."),
    ("429", "Rate limited (`rate_limited`) or a hard quota is used up (`quota_exceeded`); see `Retry-After`."),
    ("431", "Request headers over the configured limit."),
    ("500", "Unexpected; the cause is in the server log."),
    ("503", "Temporarily unavailable (`overloaded`, `timeout`, `embeddings_unavailable`, ...); see `Retry-After`."),
];

/// The JSON body of every error: `{"error": {"code", "message", ...details}}`.
pub fn error_schema() -> Value {
    let codes: Vec<String> = crate::error::Code::ALL.iter().map(|c| format!("`{c}` ({})", c.status())).collect();
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": format!("Stable machine-readable code: {}.", codes.join(", "))},
                    "message": {"type": "string", "description": "Human-readable explanation."}
                },
                "additionalProperties": true,
                "description": "Some codes add details, e.g. `feature_not_in_plan`: feature, required_tier, upgrade_url."
            }
        },
        "additionalProperties": false
    })
}

fn rate_limit_headers() -> Value {
    let h = |d: &str| json!({"description": d, "schema": {"type": "integer", "minimum": 0}});
    json!({
        "RateLimit-Limit": h("The tenant's burst (rate-limit cells)."),
        "RateLimit-Remaining": h("Cells left now."),
        "RateLimit-Reset": h("Seconds until the bucket is full again."),
    })
}

/// Merges the modules and adds what every operation shares. Pure: tested without a server.
pub fn document() -> Value {
    let mut doc = MODULES[0]();
    for m in &MODULES[1..] {
        doc.merge(m());
    }
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("warren")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Multi-tenant context API: documents, hybrid search and token-budgeted context assembly per tenant. \
             The tenant is proven by the credentials (and the host, when it names one). MCP is served at `/mcp`.",
        ))
        .build();
    let mut v = serde_json::to_value(&doc).expect("the OpenAPI document serialises");
    finish(&mut v);
    v
}

fn finish(v: &mut Value) {
    let components = v.as_object_mut().expect("object").entry("components").or_insert_with(|| json!({}));
    let c = components.as_object_mut().expect("components object");
    c.entry("schemas").or_insert_with(|| json!({})).as_object_mut().expect("schemas").insert("Error".into(), error_schema());
    c.insert(
        "securitySchemes".into(),
        json!({
            "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "A tenant API key (wk_live_...)."},
            "bearer": {"type": "http", "scheme": "bearer", "description": "A tenant API key or a JWT (claims: tenant, exp, scopes)."},
            "bearer_jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "A JWT signed with the configured key."},
            "admin_token": {"type": "http", "scheme": "bearer", "description": "The server's admin token."}
        }),
    );
    let obj = v.as_object_mut().expect("object");
    obj.insert("security".into(), json!([{"api_key": []}, {"bearer": []}, {"bearer_jwt": []}]));
    let Some(paths) = obj.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let tenant_call = path.starts_with("/api/v1/");
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            let responses = op.as_object_mut().expect("operation").entry("responses").or_insert_with(|| json!({}));
            let responses = responses.as_object_mut().expect("responses");
            for (status, description) in ERROR_STATUSES {
                responses.entry(status.to_string()).or_insert_with(
                    || json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
                );
            }
            if tenant_call {
                for (status, r) in responses.iter_mut() {
                    if status == "401" {
                        continue; // refused before the limiter
                    }
                    let headers = r.as_object_mut().expect("response").entry("headers").or_insert_with(|| json!({}));
                    let headers: &mut Map<String, Value> = headers.as_object_mut().expect("headers");
                    for (k, h) in rate_limit_headers().as_object().expect("headers") {
                        headers.entry(k.clone()).or_insert_with(|| h.clone());
                    }
                }
            }
        }
    }
}

fn rendered() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| document().to_string())
}

async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], rendered())
}

/// `/openapi.json` and `/docs` (Swagger UI, served from assets compiled into the binary).
pub fn routes() -> Router<AppState> {
    let ui = utoipa_swagger_ui::SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json"));
    Router::new().route("/openapi.json", axum::routing::get(openapi_json)).merge(ui)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes that are not REST operations: the document itself, its UI, and MCP (JSON-RPC over
    /// Streamable HTTP, described by its own protocol and listed by `tools/list`).
    const NOT_OPERATIONS: &[&str] = &["/openapi.json", "/docs", "/mcp"];

    /// Every `.route("…", …)` in the REST door's sources, with the prefix its router is nested under.
    fn routes_in_source() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let prefix = |file: &str| match file {
            "tenant.rs" | "context.rs" | "recs.rs" => "/api/v1",
            "admin.rs" => "/admin/v1",
            _ => "",
        };
        let mut out = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
        files.extend(std::fs::read_dir(dir.join("mcp")).unwrap().flatten().map(|e| e.path()));
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
            let text = std::fs::read_to_string(&f).unwrap();
            // Routes are declared above the tests (this scan would otherwise find itself).
            let text = text.split("#[cfg(test)]").next().unwrap();
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            for (i, _) in text.match_indices(".route(") {
                let rest = text[i + 7..].trim_start();
                let Some(rest) = rest.strip_prefix('"') else { continue };
                let path = &rest[..rest.find('"').unwrap()];
                out.push(format!("{}{path}", prefix(&name)));
            }
        }
        out
    }

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        let paths = doc["paths"].as_object().unwrap();
        let routes = routes_in_source();
        assert!(routes.len() > 40, "the route scan found too few routes: {routes:?}");
        let missing: Vec<_> = routes.iter().filter(|r| !paths.contains_key(r.as_str()) && !NOT_OPERATIONS.contains(&r.as_str())).collect();
        assert!(missing.is_empty(), "routes missing from the OpenAPI document: {missing:?}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut seen = std::collections::HashSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(seen.insert(id.to_string()), "operationId {id} is used twice ({method} {path})");
            }
        }
    }

    #[test]
    fn every_success_answer_is_typed() {
        let doc = document();
        let mut untyped = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, r) in op["responses"].as_object().unwrap() {
                    if !status.starts_with('2') {
                        continue;
                    }
                    for (ctype, media) in r["content"].as_object().into_iter().flatten() {
                        let schema = &media["schema"];
                        let bare_object = schema.get("$ref").is_none() && schema["type"] == "object" && schema.get("properties").is_none();
                        if ctype.contains("json") && bare_object {
                            untyped.push(format!("{method} {path} {status}"));
                        }
                    }
                }
            }
        }
        assert!(untyped.is_empty(), "untyped success answers: {untyped:?}");
    }

    #[test]
    fn every_operation_documents_the_error_body() {
        let doc = document();
        assert_eq!(doc["openapi"].as_str().map(|s| s.starts_with("3.1")), Some(true));
        let paths = doc["paths"].as_object().unwrap();
        for p in ["/api/v1/documents", "/api/v1/search", "/api/v1/context/assemble", "/admin/v1/tenants", "/health", "/api/v1/recommendations"] {
            assert!(paths.contains_key(p), "{p} missing");
        }
        for (_, item) in paths {
            for (_, op) in item.as_object().unwrap() {
                assert_eq!(op["responses"]["429"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error");
            }
        }
        assert!(doc["paths"]["/api/v1/search"]["post"]["responses"]["200"]["headers"]["RateLimit-Remaining"].is_object());
    }
}
