//! The dashboards' door: the tenant portal at `/dashboard` on a tenant's host, and the operator
//! console at `/admin` on the apex. Pages are rendered on the server with maud (compile-time
//! checked, every interpolation escaped), charts are inline SVG, and the only script is
//! `assets/app.js` (live onboarding progress). Handlers parse, call the services
//! ([`crate::services::dashboard`] and the others) and render; like the REST door, they never touch
//! SQLite, Tantivy or control-plane SQL.
//!
//! Every page answers with a CSP without inline scripts or styles, `frame-ancestors 'none'`,
//! `Referrer-Policy: no-referrer` (a login link never leaks) and `Cache-Control: no-store`.

pub mod charts;
pub mod console;
pub mod layout;
pub mod portal;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::RequestIdentity;
use crate::control::DashboardSession;
use crate::error::{Code, Error};
use crate::services::TenantCtx;
use crate::state::AppState;

/// The portal's session cookie (path `/dashboard`).
pub const PORTAL_COOKIE: &str = "warren_portal";
/// The console's session cookie (path `/admin`).
pub const CONSOLE_COOKIE: &str = "warren_console";
/// The pre-login CSRF cookie of the login forms.
pub const LOGIN_COOKIE: &str = "warren_login";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(portal::routes())
        .merge(console::routes())
        .route("/dashboard/assets/app.css", get(css))
        .route("/dashboard/assets/theme.css", get(theme))
        .route("/dashboard/assets/app.js", get(js))
        .route("/dashboard/assets/logo", get(logo))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/app.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/app.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// The operator's accent colour (checked as `#rrggbb` at start).
async fn theme(State(state): State<AppState>) -> Response {
    let accent = &state.config.dashboard.accent_color;
    let body = format!(":root {{ --accent: {accent}; }}\n");
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

async fn logo(State(state): State<AppState>) -> Response {
    let Some(path) = state.config.dashboard.logo_path.clone() else { return StatusCode::NOT_FOUND.into_response() };
    let kind = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")) { "image/svg+xml" } else { "image/png" };
    match tokio::fs::read(&path).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "public, max-age=300")], bytes).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "dashboard.logo_path cannot be read");
            StatusCode::NOT_FOUND.into_response()
        }
    }
}

/// The value of cookie `name`, if the request sent it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request reached us over HTTPS (a proxy says so): the cookies are then `Secure`.
fn over_https(headers: &HeaderMap, state: &AppState) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
        || state.config.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, on `path`, `Secure` behind HTTPS; `max_age` 0 clears it.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A login form's post carries the pre-login token its `warren_login` cookie holds: 403 `csrf_failed` otherwise.
pub fn check_login_csrf(headers: &HeaderMap, form: &FormFields) -> Result<(), Error> {
    match (cookie(headers, LOGIN_COOKIE), form.get("csrf")) {
        (Some(a), Some(b)) if crate::auth::same_secret(a, b) => Ok(()),
        _ => Err(Error::forbidden(Code::CsrfFailed, "the login form's CSRF token is missing or stale: reload the page")),
    }
}

/// The identity the authenticator reads off a request.
fn identity(parts: &Parts) -> RequestIdentity<'_> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    RequestIdentity { headers: &parts.headers, uri_host: parts.uri.host(), peer }
}

/// What a login handler reads off its request for the authenticator: headers, URI host and peer.
pub struct Caller {
    pub headers: HeaderMap,
    host: Option<String>,
    peer: Option<std::net::IpAddr>,
}

impl Caller {
    pub fn identity(&self) -> RequestIdentity<'_> {
        RequestIdentity { headers: &self.headers, uri_host: self.host.as_deref(), peer: self.peer }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = identity(parts);
        let peer = id.peer;
        Ok(Caller { headers: parts.headers.clone(), host: parts.uri.host().map(str::to_string), peer })
    }
}

/// What every page needs to render: the operator's brand.
#[derive(Clone)]
pub struct Brand {
    pub name: String,
    pub has_logo: bool,
}

impl Brand {
    pub fn of(state: &AppState) -> Brand {
        Brand { name: state.config.dashboard.product_name.clone(), has_logo: state.config.dashboard.logo_path.is_some() }
    }
}

/// A portal request proven by its session cookie: the tenant, the session (its CSRF token).
/// Without a valid session for this host the answer is the login page (a redirect).
pub struct Portal {
    pub ctx: TenantCtx,
    pub session: DashboardSession,
    pub brand: Brand,
}

impl FromRequestParts<AppState> for Portal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let brand = Brand::of(state);
        let Some(token) = cookie(&parts.headers, PORTAL_COOKIE).map(str::to_string) else {
            return Err(Redirect::to("/dashboard/login").into_response());
        };
        match crate::services::dashboard::portal(state, identity(parts), &token).await {
            Ok((ctx, session)) => Ok(Portal { ctx, session, brand }),
            Err(e) if matches!(e.code(), Code::InvalidCredentials | Code::TenantMismatch | Code::Unauthorized) => {
                Err(Redirect::to("/dashboard/login").into_response())
            }
            Err(e) => Err(error_page(&brand, e)),
        }
    }
}

/// A console request proven by its session cookie.
pub struct Console {
    pub operator: crate::services::Operator,
    pub proof: crate::auth::AdminProof,
    pub session: DashboardSession,
    pub brand: Brand,
}

impl FromRequestParts<AppState> for Console {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let brand = Brand::of(state);
        let login = || Redirect::to("/admin/login").into_response();
        let Some(token) = cookie(&parts.headers, CONSOLE_COOKIE).map(str::to_string) else { return Err(login()) };
        match crate::services::dashboard::console(state, &token).await {
            Ok((operator, proof, session)) => Ok(Console { operator, proof, session, brand }),
            Err(e) if e.code() == Code::InvalidCredentials => Err(login()),
            Err(e) => Err(error_page(&brand, e)),
        }
    }
}

/// An error as a page: the status of the code table, the precise message for 4xx, a generic one
/// for 5xx (whose cause is logged once, here).
pub fn error_page(brand: &Brand, e: Error) -> Response {
    let status = StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Error::Internal(cause) = &e {
        tracing::error!(error = ?cause, "internal error (dashboard)");
    }
    let body = layout::bare(
        brand,
        "Something went wrong",
        maud::html! {
            div.card.narrow {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p data-code=(e.code().as_str()) { (e.public_message()) }
                p { a href="/dashboard" { "Back to the dashboard" } }
            }
        },
    );
    (status, body).into_response()
}

/// The fields of a form post (`application/x-www-form-urlencoded`), read leniently: an unreadable
/// body is a 400 page, not a JSON error.
pub struct FormFields(pub Vec<(String, String)>);

impl FormFields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormFields {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| (StatusCode::PAYLOAD_TOO_LARGE, e.body_text()).into_response())?;
        Ok(FormFields(url::form_urlencoded::parse(&bytes).into_owned().collect()))
    }
}
