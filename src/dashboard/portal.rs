//! The tenant portal at `/dashboard`: login (one-time link, admin key or JWT), overview, usage,
//! and API keys. Each handler calls the services and renders.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, NaiveDate, Utc};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, csrf_field, metric, page, pill, usage_bar, Area, Unit};
use super::{charts, cookie, error_page, over_https, set_cookie, Brand, Caller, FormFields, Portal, LOGIN_COOKIE, PORTAL_COOKIE};
use crate::control::{NewKey, Scope};
use crate::services::dashboard as svc;
use crate::services::usage;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard/login", get(login_page).post(login_post))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard", get(overview))
        .route("/dashboard/onboarding.json", get(onboarding_json))
        .route("/dashboard/usage", get(usage_page))
        .route("/dashboard/usage.csv", get(usage_csv))
        .route("/dashboard/usage-keys.csv", get(usage_keys_csv))
        .route("/dashboard/search", get(search_page))
        .route("/dashboard/billing", get(billing_page))
        .route("/dashboard/billing/{period}", get(statement_csv))
        .route("/dashboard/backups", get(backups_page).post(restore_post))
        .route("/dashboard/audit", get(audit_page))
        .route("/dashboard/jobs", get(jobs_page))
        .route("/dashboard/recommendations", get(recs_page).post(recs_train))
        .route("/dashboard/keys", get(keys_page).post(create_key))
        .route("/dashboard/keys/{id}/revoke", post(revoke_key))
        .route("/dashboard/keys/{id}/rotate", post(rotate_key))
}

#[derive(Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

/// The session cookie for a just-opened session.
fn session_cookie(state: &AppState, headers: &HeaderMap, opened: &svc::Opened) -> axum::http::HeaderValue {
    set_cookie(PORTAL_COOKIE, &opened.token, "/dashboard", state.config.dashboard.session_ttl_secs, over_https(headers, state))
}

/// `GET /dashboard/login`: the login form, or (with `?token=`) the use of a one-time link.
async fn login_page(State(state): State<AppState>, caller: Caller, Query(q): Query<LoginQuery>) -> Response {
    let headers = &caller.headers;
    let brand = Brand::of(&state);
    if let Some(token) = q.token {
        return match svc::login_with_link(&state, caller.identity(), &token).await {
            Ok(opened) => {
                // A page, not a redirect: a SameSite=Strict cookie set while following a link from
                // another site is not sent on the redirect, but is on this same-site refresh.
                let body = layout::bare(
                    &brand,
                    "Signed in",
                    html! {
                        meta http-equiv="refresh" content="0;url=/dashboard";
                        div.card.narrow { h1 { "Signed in" } p { a href="/dashboard" { "Continue to the dashboard" } } }
                    },
                );
                ([(header::SET_COOKIE, session_cookie(&state, headers, &opened))], body).into_response()
            }
            Err(e) => {
                login_form(&state, headers, Some(e.public_message()), StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::UNAUTHORIZED))
            }
        };
    }
    login_form(&state, headers, None, StatusCode::OK)
}

/// The login form, with a fresh pre-login CSRF token (cookie and field must agree on the post).
fn login_form(state: &AppState, headers: &HeaderMap, error: Option<String>, status: StatusCode) -> Response {
    let brand = Brand::of(state);
    let token = crate::auth::new_token();
    let body = layout::bare(
        &brand,
        "Log in",
        html! {
            div.card.narrow {
                h1 { "Log in to your dashboard" }
                @if let Some(e) = &error { p.alert role="alert" data-error="login" { (e) } }
                form method="post" action="/dashboard/login" {
                    input type="hidden" name="csrf" value=(token);
                    label for="credential" { "API key with the admin scope, or a JWT" }
                    input #credential type="password" name="credential" autocomplete="off" required;
                    button.primary type="submit" { "Log in" }
                }
                p.hint { "Or open the one-time link your operator sent you." }
            }
        },
    );
    let cookie = set_cookie(LOGIN_COOKIE, &token, "/dashboard/login", 3600, over_https(headers, state));
    (status, [(header::SET_COOKIE, cookie)], body).into_response()
}

/// `POST /dashboard/login`: an admin key or a JWT opens a session.
async fn login_post(State(state): State<AppState>, caller: Caller, form: FormFields) -> Response {
    let headers = &caller.headers;
    let brand = Brand::of(&state);
    if let Err(e) = super::check_login_csrf(headers, &form) {
        return error_page(&brand, e);
    }
    let credential = form.get("credential").unwrap_or_default();
    match svc::login_with_credential(&state, caller.identity(), credential).await {
        Ok(opened) => {
            let clear = set_cookie(LOGIN_COOKIE, "", "/dashboard/login", 0, over_https(headers, &state));
            let mut resp = Redirect::to("/dashboard").into_response();
            resp.headers_mut().append(header::SET_COOKIE, session_cookie(&state, headers, &opened));
            resp.headers_mut().append(header::SET_COOKIE, clear);
            resp
        }
        Err(e) => login_form(&state, headers, Some(e.public_message()), StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::UNAUTHORIZED)),
    }
}

/// `POST /dashboard/logout`.
async fn logout(State(state): State<AppState>, headers: HeaderMap, p: Portal, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    if let Some(token) = cookie(&headers, PORTAL_COOKIE) {
        if let Err(e) = svc::logout(&state, token).await {
            return error_page(&p.brand, e);
        }
    }
    let mut resp = Redirect::to("/dashboard/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(PORTAL_COOKIE, "", "/dashboard", 0, over_https(&headers, &state)));
    resp
}

fn who(p: &Portal) -> String {
    format!("{} · {}", p.ctx.tenant().name, p.ctx.tenant().slug)
}

fn render(p: &Portal, current: &str, title: &str, body: Markup) -> Response {
    page(&p.brand, Area::Portal, current, &who(p), &p.session.csrf, title, body).into_response()
}

/// The month's projection: `used` scaled from the elapsed part of the month to all of it.
fn projection(used: u64, now: DateTime<Utc>) -> u64 {
    let (_, start, end) = crate::clock::period_of(now);
    let elapsed = (now - start).num_seconds().max(1) as f64;
    let total = (end - start).num_seconds().max(1) as f64;
    (used as f64 * total / elapsed).round() as u64
}

/// `GET /dashboard`: plan, usage against every limit, requests per day, onboarding.
async fn overview(p: Portal) -> Response {
    match overview_body(&p).await {
        Ok(body) => render(&p, "/dashboard", "Overview", body),
        Err(e) => error_page(&p.brand, e),
    }
}

async fn overview_body(p: &Portal) -> Result<Markup, crate::error::Error> {
    let ctx = &p.ctx;
    let me = usage::me(ctx)?;
    let month = usage::month(ctx).await?;
    let days = svc::daily_usage(ctx, 30).await?;
    let steps = svc::onboarding(ctx, &month).await?;
    let now = ctx.state().plans.clock.now();
    let u = &month["usage"];
    let l = &month["limits"];
    let n = |v: &Value| v.as_u64();
    let trial_days = me["trial_ends_at"].as_str().and_then(|s| crate::clock::parse_ts(s).ok()).map(|t| (t - now).num_days().max(0));
    let bars = [
        ("queries", "Queries this month", n(&u["queries"]).unwrap_or(0), n(&l["queries"]), Unit::Count, true),
        ("documents", "Documents", n(&u["documents"]).unwrap_or(0), n(&l["documents"]), Unit::Count, false),
        ("storage_bytes", "Storage", n(&u["storage_bytes"]).unwrap_or(0), n(&l["storage_bytes"]), Unit::Bytes, false),
        ("products", "Products", n(&u["products"]).unwrap_or(0), n(&l["products"]), Unit::Count, false),
    ];
    let near: Vec<&str> = bars.iter().filter(|b| b.3.is_some_and(|lim| lim == 0 || b.2 * 100 >= lim * 80)).map(|b| b.0).collect();
    let ent = ctx.entitlements();
    let next = crate::plans::TIERS.into_iter().find(|t| *t > ent.tier);
    let points: Vec<(String, u64)> = days.iter().map(|d| (d.day.clone(), d.usage.api_calls)).collect();
    let running = steps.iter().any(|s| !s.done);
    Ok(html! {
        section.cards {
            div.card {
                h2 { "Plan" }
                p.big { (metric("tier", ent.tier.as_str(), ent.tier.as_str())) }
                p { "Status: " (pill(me["status"].as_str().unwrap_or(""), me["status"].as_str().unwrap_or(""))) }
                @if let Some(d) = trial_days { p { (metric("trial_days_left", d, &d.to_string())) " days left in your trial" } }
                p.hint { "Resets " (month["resets_at"].as_str().unwrap_or("").get(..10).unwrap_or("")) }
            }
            div.card {
                h2 { "This month" }
                p { "API calls: " (metric("usage.api_calls", n(&u["api_calls"]).unwrap_or(0), &layout::group(n(&u["api_calls"]).unwrap_or(0)))) }
                p { "Tokens embedded: " (metric("usage.tokens_embedded", n(&u["tokens_embedded"]).unwrap_or(0), &layout::group(n(&u["tokens_embedded"]).unwrap_or(0)))) }
                p { "Tokens returned: " (metric("usage.tokens_returned", n(&u["tokens_returned"]).unwrap_or(0), &layout::group(n(&u["tokens_returned"]).unwrap_or(0)))) }
                p { "Overage so far: " (metric("overage.amount_usd", month["overage"]["amount_usd"].as_f64().unwrap_or(0.0), &layout::usd(month["overage"]["amount_usd"].as_f64().unwrap_or(0.0)))) }
            }
        }
        @if !near.is_empty() {
            div.upgrade role="status" data-metric="upgrade_prompt" data-value=(near.join(",")) {
                strong { "You are close to your plan's limits" } " (" (near.join(", ")) "). "
                @if let Some(t) = next {
                    a.button href=(ent.upgrade_url(Some(t), near[0])) { "Upgrade to " (t.as_str()) }
                }
            }
        }
        section.card {
            h2 { "Usage against your plan" }
            @for b in &bars {
                (usage_bar(b.0, b.1, b.2, b.3, b.4, if b.5 { Some(projection(b.2, now)) } else { None }))
            }
        }
        section.card {
            h2 { "Requests per day" }
            (charts::bars("requests_per_day", "API requests per day, last 30 days (UTC)", "requests", &points))
        }
        section.card #onboarding data-poll=[running.then_some("/dashboard/onboarding.json")] {
            h2 { "Getting started" }
            (checklist(&steps))
        }
    })
}

fn checklist(steps: &[svc::Step]) -> Markup {
    html! {
        ol.checklist {
            @for s in steps {
                li data-step=(s.key) data-done=(s.done) {
                    span.check aria-hidden="true" { @if s.done { "✓" } @else { "○" } }
                    span.step-label { (s.label) }
                    @if let Some((done, total)) = s.progress {
                        span.step-progress {
                            progress max=(total.max(1)) value=(done) aria-label=(s.label) {}
                            " " (metric(&format!("onboarding.{}", s.key), done, &format!("{done} / {total}")))
                        }
                    }
                    @if let Some(note) = &s.note { span.step-note { (note) } }
                    @if s.done { span.visually-hidden { " (done)" } }
                }
            }
        }
    }
}

/// `GET /dashboard/onboarding.json`: the checklist, for the live progress script.
async fn onboarding_json(p: Portal) -> Response {
    let steps = async {
        let month = usage::month(&p.ctx).await?;
        svc::onboarding(&p.ctx, &month).await
    }
    .await;
    match steps {
        Ok(steps) => axum::Json(serde_json::json!({ "steps": steps })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /dashboard/usage`: per day and per API key, the last 30 days.
async fn usage_page(p: Portal) -> Response {
    let (days, keys) = match tokio::try_join!(svc::daily_usage(&p.ctx, 30), svc::key_usage(&p.ctx, 30)) {
        Ok(d) => d,
        Err(e) => return error_page(&p.brand, e),
    };
    let head = html! {
        th.num scope="col" { "API calls" } th.num scope="col" { "Queries" } th.num scope="col" { "Tokens embedded" } th.num scope="col" { "Tokens returned" } th.num scope="col" { "Recommendations" }
    };
    // One row's figures, each with its test hook `<id>.<figure>` (`key.<key id>` or `day.<date>`).
    let cells = |u: &svc::Tally, id: &str| {
        html! {
            td.num data-metric=(format!("{id}.api_calls")) data-value=(u.api_calls) { (layout::group(u.api_calls)) }
            td.num data-metric=(format!("{id}.queries")) data-value=(u.queries) { (layout::group(u.queries)) }
            td.num data-metric=(format!("{id}.tokens_embedded")) data-value=(u.tokens_embedded) { (layout::group(u.tokens_embedded)) }
            td.num data-metric=(format!("{id}.tokens_returned")) data-value=(u.tokens_returned) { (layout::group(u.tokens_returned)) }
            td.num data-metric=(format!("{id}.recommendations")) data-value=(u.recommendations) { (layout::group(u.recommendations)) }
        }
    };
    let body = html! {
        section.card {
            div.card-head {
                h2 { "Per API key, last 30 days" }
                a.button href="/dashboard/usage-keys.csv" download { "Download CSV" }
            }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Key" } (head) } }
                    tbody {
                        @for k in &keys {
                            tr {
                                th scope="row" {
                                    (k.name)
                                    @if let Some(prefix) = &k.prefix { " " code { (prefix) } }
                                    @if k.revoked { " " (pill("revoked", "off")) }
                                }
                                (cells(&k.usage, &format!("key.{}", k.key_id.as_deref().unwrap_or("none"))))
                            }
                        }
                    }
                }
            }
        }
        section.card {
            div.card-head {
                h2 { "Per day (UTC)" }
                a.button href="/dashboard/usage.csv" download { "Download CSV" }
            }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Day" } (head) } }
                    tbody {
                        @for d in days.iter().rev() {
                            tr data-day=(d.day) {
                                th scope="row" { (d.day) }
                                (cells(&d.usage, &format!("day.{}", d.day)))
                            }
                        }
                    }
                }
            }
        }
    };
    render(&p, "/dashboard/usage", "Usage", body)
}

fn csv_response(p: &Portal, name: &str, csv: String) -> Response {
    let name = format!("attachment; filename=\"{name}-{}.csv\"", p.ctx.tenant().slug);
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, name)], csv).into_response()
}

/// `GET /dashboard/usage.csv`.
async fn usage_csv(p: Portal) -> Response {
    let days = match svc::daily_usage(&p.ctx, 30).await {
        Ok(d) => d,
        Err(e) => return error_page(&p.brand, e),
    };
    let mut csv = String::from("day,api_calls,queries,tokens_embedded,tokens_returned,recommendations\n");
    for d in &days {
        let u = &d.usage;
        csv.push_str(&format!("{},{},{},{},{},{}\n", d.day, u.api_calls, u.queries, u.tokens_embedded, u.tokens_returned, u.recommendations));
    }
    csv_response(&p, "usage", csv)
}

/// `GET /dashboard/usage-keys.csv`: per API key, the last 30 days. Names are the tenant's own
/// text, so they are quoted and a leading formula character is defused.
async fn usage_keys_csv(p: Portal) -> Response {
    let keys = match svc::key_usage(&p.ctx, 30).await {
        Ok(k) => k,
        Err(e) => return error_page(&p.brand, e),
    };
    let mut csv = String::from("key_id,prefix,name,revoked,api_calls,queries,tokens_embedded,tokens_returned,recommendations\n");
    for k in &keys {
        let u = &k.usage;
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            k.key_id.as_deref().unwrap_or(""),
            k.prefix.as_deref().unwrap_or(""),
            csv_field(&k.name),
            k.revoked,
            u.api_calls,
            u.queries,
            u.tokens_embedded,
            u.tokens_returned,
            u.recommendations
        ));
    }
    csv_response(&p, "usage-keys", csv)
}

/// One CSV field: quoted, quotes doubled, and a leading `= + - @` (a spreadsheet formula) prefixed
/// with `'`.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_string() };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A key just issued (created or rotated), shown once.
struct Issued {
    name: String,
    plaintext: String,
}

async fn keys_body(p: &Portal, issued: Option<Issued>, error: Option<String>) -> Result<Markup, crate::error::Error> {
    let keys = svc::list_keys(&p.ctx).await?;
    let now = p.ctx.state().plans.clock.now();
    let csrf = &p.session.csrf;
    Ok(html! {
        @if let Some(i) = &issued {
            div.card.issued role="status" {
                h2 { "Your new key “" (i.name) "”" }
                p { "Copy it now: it is shown only once." }
                code.secret data-metric="new_key" data-value=(i.plaintext) { (i.plaintext) }
            }
        }
        @if let Some(e) = &error { p.alert role="alert" data-error="keys" { (e) } }
        section.card {
            h2 { "Create a key" }
            form.stack method="post" action="/dashboard/keys" {
                (csrf_field(csrf))
                label for="key-name" { "Name" }
                input #key-name name="name" required maxlength="100" placeholder="e.g. production";
                fieldset {
                    legend { "Scopes" }
                    @for s in [Scope::Read, Scope::Write, Scope::Admin] {
                        label.inline { input type="checkbox" name="scope" value=(s.as_str()) checked[s != Scope::Admin]; " " (s.as_str()) }
                    }
                }
                label for="key-expires" { "Expires (optional)" }
                input #key-expires type="date" name="expires";
                button.primary type="submit" { "Create key" }
            }
        }
        section.card {
            h2 { "Keys" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Key" } th scope="col" { "Scopes" } th scope="col" { "Created" } th scope="col" { "Last used" } th scope="col" { "Expires" } th scope="col" { "Status" } th scope="col" { span.visually-hidden { "Actions" } } } }
                    tbody {
                        @for k in &keys {
                            @let live = k.is_live(now);
                            tr data-key=(k.id) {
                                th scope="row" { (k.name) }
                                td { code { (k.prefix) "…" } }
                                td { (k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
                                td { (day(Some(k.created_at))) }
                                td data-metric=(format!("key.{}.last_used", k.id)) data-value=(k.last_used_at.map(crate::clock::ts).unwrap_or_default()) { (day(k.last_used_at)) }
                                td { (day(k.expires_at)) }
                                td { @if live { (pill("active", "ok")) } @else if k.revoked_at.is_some() { (pill("revoked", "off")) } @else { (pill("expired", "off")) } }
                                td.actions {
                                    @if live && k.revoked_at.is_none() {
                                        form method="post" action=(format!("/dashboard/keys/{}/rotate", k.id)) {
                                            (csrf_field(csrf))
                                            button.secondary type="submit" aria-label=(format!("Rotate {}", k.name)) { "Rotate" }
                                        }
                                        form method="post" action=(format!("/dashboard/keys/{}/revoke", k.id)) {
                                            (csrf_field(csrf))
                                            button.danger type="submit" aria-label=(format!("Revoke {}", k.name)) { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn day(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "—".to_string())
}

async fn keys_page(p: Portal) -> Response {
    keys_answer(&p, None, None, StatusCode::OK).await
}

async fn keys_answer(p: &Portal, issued: Option<Issued>, error: Option<String>, status: StatusCode) -> Response {
    match keys_body(p, issued, error).await {
        Ok(body) => (status, render(p, "/dashboard/keys", "API keys", body)).into_response(),
        Err(e) => error_page(&p.brand, e),
    }
}

/// `POST /dashboard/keys`: name, scopes, optional expiry date.
async fn create_key(p: Portal, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    let scopes: Vec<Scope> = form.all("scope").into_iter().filter_map(Scope::parse).collect();
    let expires_at = match form.get("expires").filter(|s| !s.is_empty()) {
        None => None,
        Some(d) => match NaiveDate::parse_from_str(d, "%Y-%m-%d") {
            Ok(d) => d.and_hms_opt(23, 59, 59).map(|t| t.and_utc()),
            Err(_) => return keys_answer(&p, None, Some("the expiry must be a date (YYYY-MM-DD)".into()), StatusCode::BAD_REQUEST).await,
        },
    };
    let new = NewKey { name: form.get("name").unwrap_or_default().to_string(), scopes, expires_at };
    match svc::create_key(&p.ctx, new).await {
        Ok(k) => keys_answer(&p, Some(Issued { name: k.key.name.clone(), plaintext: k.api_key.expose().to_string() }), None, StatusCode::OK).await,
        Err(e) if e.code().status() < 500 => {
            let status = StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::BAD_REQUEST);
            keys_answer(&p, None, Some(e.public_message()), status).await
        }
        Err(e) => error_page(&p.brand, e),
    }
}

async fn revoke_key(p: Portal, Path(id): Path<String>, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    match svc::revoke_key(&p.ctx, &id).await {
        Ok(_) => Redirect::to("/dashboard/keys").into_response(),
        Err(e) => error_page(&p.brand, e),
    }
}

async fn rotate_key(p: Portal, Path(id): Path<String>, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    match svc::rotate_key(&p.ctx, &id).await {
        Ok(k) => keys_answer(&p, Some(Issued { name: k.key.name.clone(), plaintext: k.api_key.expose().to_string() }), None, StatusCode::OK).await,
        Err(e) => error_page(&p.brand, e),
    }
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
    mode: Option<String>,
    budget: Option<usize>,
}

/// `GET /dashboard/search`: the search playground. A query runs the real search (charged and
/// metered as any search) and a context preview within the token budget.
async fn search_page(p: Portal, Query(q): Query<SearchQuery>) -> Response {
    use crate::search::{AssembleRequest, SearchMode, SearchRequest};
    let query = q.q.clone().unwrap_or_default();
    let mode_name = q.mode.clone().unwrap_or_else(|| "hybrid".into());
    let budget = q.budget.unwrap_or(500);
    let mut error = None;
    let mut found = None;
    let mut context = None;
    if !query.trim().is_empty() {
        let mode = match mode_name.as_str() {
            "keyword" => SearchMode::Keyword,
            "semantic" => SearchMode::Semantic,
            _ => SearchMode::Hybrid,
        };
        let run = async {
            p.ctx.begin(crate::services::Op::Search)?;
            let hits = crate::services::search::search(&p.ctx, SearchRequest::new(query.clone(), mode)).await?;
            p.ctx.begin(crate::services::Op::Assemble)?;
            let req = AssembleRequest { query: query.clone(), max_tokens: budget, max_documents: None, filter: None, include_metadata: None };
            let ctx = crate::services::search::assemble(&p.ctx, req).await?;
            Ok::<_, crate::error::Error>((hits, ctx))
        };
        match run.await {
            Ok((h, c)) => {
                found = Some(h);
                context = Some(c);
            }
            Err(e @ crate::error::Error::Internal(_)) => return error_page(&p.brand, e),
            Err(e) => error = Some(e.public_message()),
        }
    }
    let body = html! {
        section.card {
            form.stack method="get" action="/dashboard/search" role="search" {
                label for="q" { "Query" }
                input #q type="search" name="q" value=(query) required maxlength="1024";
                fieldset {
                    legend { "Mode" }
                    @for m in ["hybrid", "keyword", "semantic"] {
                        label.inline { input type="radio" name="mode" value=(m) checked[m == mode_name]; " " (m) }
                    }
                }
                label for="budget" { "Context budget (tokens)" }
                input #budget type="number" name="budget" min="1" max="200000" value=(budget);
                button.primary type="submit" { "Search" }
            }
        }
        @if let Some(e) = &error { p.alert role="alert" data-error="search" { (e) } }
        @if let Some(h) = &found {
            section.card {
                h2 { "Results " span.hint { "(" (metric("search.results", h.results.len(), &h.results.len().to_string())) ", " (format!("{:.1}", h.query_time_ms)) " ms)" } }
                @if h.results.is_empty() { p.hint { "No matches." } }
                ol.results {
                    @for r in &h.results {
                        li {
                            div.result-head { strong.result-path { (r.path) } span.hint { " score " (format!("{:.3}", r.score)) } }
                            p.result-text { (r.text.chars().take(300).collect::<String>()) }
                        }
                    }
                }
            }
        }
        @if let Some(c) = &context {
            section.card {
                h2 { "Context preview" }
                p { "Tokens used: " (metric("context.tokens", c.total_tokens, &c.total_tokens.to_string())) " / " (budget) " (" (c.token_counter) ")" }
                pre.context { (c.context) }
            }
        }
    };
    render(&p, "/dashboard/search", "Search playground", body)
}

/// `GET /dashboard/billing`: plan and price, overage so far, statements, the plan comparison.
async fn billing_page(p: Portal) -> Response {
    let data = async {
        let month = usage::month(&p.ctx).await?;
        let statements = svc::statements(&p.ctx, 12).await?;
        let offers = svc::plan_offers(&p.ctx)?;
        Ok::<_, crate::error::Error>((month, statements, offers))
    };
    let (month, statements, offers) = match data.await {
        Ok(d) => d,
        Err(e) => return error_page(&p.brand, e),
    };
    let ent = p.ctx.entitlements();
    let current = &statements[0];
    let pct = month["percent_used"].as_object().cloned().unwrap_or_default();
    let near: Vec<String> = pct.iter().filter(|(_, v)| v.as_f64().is_some_and(|x| x >= 80.0)).map(|(k, _)| k.clone()).collect();
    let next = offers.iter().find(|o| o.upgrade_url.is_some());
    let limit = |v: Option<u64>, unit: Unit| v.map_or_else(|| "unlimited".to_string(), |n| unit.show(n));
    let body = html! {
        @if !near.is_empty() {
            div.upgrade role="status" data-metric="upgrade_prompt" data-value=(near.join(",")) {
                strong { "You are close to your plan's limits" } " (" (near.join(", ")) "). "
                @if let Some(o) = next { a.button href=(o.upgrade_url.clone().unwrap_or_default()) { "Upgrade to " (o.tier.as_str()) } }
            }
        }
        section.cards {
            div.card {
                h2 { "Your plan" }
                p.big { (metric("tier", ent.tier.as_str(), ent.tier.as_str())) }
                p { (metric("price_usd", ent.plan.price_usd, &layout::usd(ent.plan.price_usd))) " per month" }
            }
            div.card {
                h2 { "This month so far" }
                p.big { (metric("bill.total_usd", current.bill.total_usd, &layout::usd(current.bill.total_usd))) }
                p { "Overage: " (metric("bill.overage_usd", current.bill.overage_usd, &layout::usd(current.bill.overage_usd))) " for " (layout::group(current.bill.overage_queries)) " queries over the quota" }
            }
        }
        section.card {
            h2 { "Statements" }
            div.table-wrap {
                table {
                    thead { tr { th scope="col" { "Month" } th.num scope="col" { "Queries" } th.num scope="col" { "Base" } th.num scope="col" { "Overage" } th.num scope="col" { "Total" } th scope="col" { span.visually-hidden { "Download" } } } }
                    tbody {
                        @for s in &statements {
                            tr data-period=(s.period) {
                                th scope="row" { (s.period) }
                                td.num { (layout::group(s.queries)) }
                                td.num { (layout::usd(s.bill.base_price_usd)) }
                                td.num { (layout::usd(s.bill.overage_usd)) }
                                td.num { (layout::usd(s.bill.total_usd)) }
                                td { a href=(format!("/dashboard/billing/{}", s.period)) download { "CSV" span.visually-hidden { " for " (s.period) } } }
                            }
                        }
                    }
                }
            }
            p.hint { "Statements are priced with your current plan." }
        }
        section.card {
            h2 { "Compare plans" }
            div.table-wrap {
                table.plans {
                    thead { tr { th scope="col" { "Plan" } th.num scope="col" { "Price" } th.num scope="col" { "Queries / month" } th.num scope="col" { "Documents" } th.num scope="col" { "Storage" } th scope="col" { "Features" } th scope="col" { span.visually-hidden { "Upgrade" } } } }
                    tbody {
                        @for o in &offers {
                            tr data-tier=(o.tier.as_str()) aria-current=[(o.tier == ent.tier).then_some("true")] {
                                th scope="row" { (o.tier.as_str()) @if o.tier == ent.tier { " " (pill("current", "ok")) } }
                                td.num { (layout::usd(o.plan.price_usd)) }
                                td.num { (limit(o.plan.queries_per_month, Unit::Count)) }
                                td.num { (limit(o.plan.documents, Unit::Count)) }
                                td.num { (limit(o.plan.storage_bytes, Unit::Bytes)) }
                                td { (o.plan.features.join(", ")) }
                                td { @if let Some(u) = &o.upgrade_url { a.button.small href=(u) { "Upgrade" span.visually-hidden { " to " (o.tier.as_str()) } } } }
                            }
                        }
                    }
                }
            }
        }
    };
    render(&p, "/dashboard/billing", "Billing", body)
}

/// `GET /dashboard/billing/{period}`: one month's statement as CSV.
async fn statement_csv(p: Portal, Path(period): Path<String>) -> Response {
    let statements = match svc::statements(&p.ctx, 12).await {
        Ok(s) => s,
        Err(e) => return error_page(&p.brand, e),
    };
    let Some(s) = statements.iter().find(|s| s.period == period) else {
        return error_page(&p.brand, crate::error::Error::not_found(crate::error::Code::NotFound, "no statement for that month"));
    };
    let csv = format!(
        "period,tier,api_calls,queries,tokens_embedded,tokens_returned,base_price_usd,overage_queries,overage_usd,total_usd\n{},{},{},{},{},{},{:.2},{},{:.2},{:.2}\n",
        s.period,
        p.ctx.entitlements().tier.as_str(),
        s.api_calls,
        s.queries,
        s.tokens_embedded,
        s.tokens_returned,
        s.bill.base_price_usd,
        s.bill.overage_queries,
        s.bill.overage_usd,
        s.bill.total_usd
    );
    let name = format!("attachment; filename=\"statement-{}-{}.csv\"", p.ctx.tenant().slug, s.period);
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, name)], csv).into_response()
}

async fn backups_body(p: &Portal, note: Option<Markup>) -> Result<Markup, crate::error::Error> {
    let status = crate::services::restore::backup_status(&p.ctx)?;
    let can_restore = p.ctx.entitlements().has("pitr_restore");
    let b = &status["backup"];
    let text = |v: &Value| match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(html! {
        @if let Some(n) = note { (n) }
        section.card {
            h2 { "Continuous backup" }
            @if status["enabled"].as_bool() != Some(true) {
                p data-metric="backup.enabled" data-value="false" { "Backups are not configured on this server." }
            } @else {
                dl.facts {
                    dt { "Last backup" } dd data-metric="backup.last_replicated_at" data-value=(text(&b["last_replicated_at"])) { (text(&b["last_replicated_at"])) }
                    dt { "Lag" } dd data-metric="backup.lag_secs" data-value=(text(&b["lag_secs"])) { (text(&b["lag_secs"])) " s" }
                    dt { "Replicated TXID" } dd { (text(&b["last_txid"])) }
                    dt { "Restore points" } dd { "Any time since the oldest snapshot the replica keeps (backup.retention_secs)" }
                    dt { "Replica" } dd { (text(&b["replica_url"])) }
                    dt { "Last error" } dd { (text(&b["last_error"])) }
                }
            }
        }
        section.card {
            h2 { "Point-in-time restore" }
            @if !can_restore {
                p { "Point-in-time restore is part of the pro plan." }
            } @else {
                form.stack method="post" action="/dashboard/backups" {
                    (csrf_field(&p.session.csrf))
                    label for="restore-at" { "Restore to (RFC 3339 time; empty for the latest backup)" }
                    input #restore-at name="timestamp" placeholder="2026-12-01T12:00:00Z";
                    label.inline { input type="checkbox" name="confirm" value="yes" required; " I understand this replaces the current data with the backup's" }
                    button.danger type="submit" { "Restore" }
                }
            }
        }
    })
}

/// `GET /dashboard/backups`: last backup, lag, restore points, and (on plans with `pitr_restore`) a
/// restore that asks for confirmation.
async fn backups_page(p: Portal) -> Response {
    match backups_body(&p, None).await {
        Ok(body) => render(&p, "/dashboard/backups", "Backups", body),
        Err(e) => error_page(&p.brand, e),
    }
}

async fn restore_post(p: Portal, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    let note = if form.get("confirm") != Some("yes") {
        html! { p.alert role="alert" { "Tick the confirmation to restore." } }
    } else {
        let req = crate::services::restore::RestoreRequest {
            txid: None,
            timestamp: form.get("timestamp").filter(|s| !s.trim().is_empty()).map(str::to_string),
        };
        match crate::services::restore::restore_own(&p.ctx, req).await {
            Ok(v) => {
                html! { div.card.issued role="status" { h2 { "Restored" } pre.context { (serde_json::to_string_pretty(&v["restored"]).unwrap_or_default()) } } }
            }
            Err(e @ crate::error::Error::Internal(_)) => return error_page(&p.brand, e),
            Err(e) => html! { p.alert role="alert" data-error="restore" { (e.public_message()) } },
        }
    };
    match backups_body(&p, Some(note)).await {
        Ok(body) => render(&p, "/dashboard/backups", "Backups", body),
        Err(e) => error_page(&p.brand, e),
    }
}

#[derive(Deserialize)]
struct RecsPreview {
    customer: Option<String>,
    product: Option<String>,
}

/// A preview for a customer (personal) or a product (related), run and charged as the REST call.
async fn recs_preview(p: &Portal, q: &RecsPreview) -> Option<Result<(String, Vec<crate::recs::Rec>), crate::error::Error>> {
    use crate::services::recs::{self, RecQuery};
    let customer = q.customer.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let product = q.product.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let label = match (customer, product) {
        (Some(c), _) => format!("For customer {c}"),
        (None, Some(id)) => format!("Related to product {id}"),
        (None, None) => return None,
    };
    let (customer, product) = (customer.map(str::to_string), product.filter(|_| customer.is_none()).map(str::to_string));
    let go = async {
        p.ctx.begin(crate::services::Op::Recommend)?;
        let q = RecQuery::new(customer, Some(10));
        let r = match product {
            Some(id) => recs::related_to(&p.ctx, id, q).await?,
            None => recs::recommend_for(&p.ctx, q).await?,
        };
        Ok((label, r.results))
    };
    Some(go.await)
}

/// `GET /dashboard/recommendations`: the model's status and last training (with a button to train
/// now), a preview for a customer or a product, and attribution (clicks and the orders that
/// followed, `recs::attribution`). Plans without `recommendations` see an upgrade prompt.
async fn recs_page(p: Portal, Query(q): Query<RecsPreview>) -> Response {
    use crate::services::recs;
    let data = async { Ok::<_, crate::error::Error>((recs::status(&p.ctx).await?, recs::attribution(&p.ctx, 30).await?)) }.await;
    let (status, attr) = match data {
        Ok(d) => d,
        Err(e) if e.code() == crate::error::Code::FeatureNotInPlan => {
            let body = html! {
                div.upgrade role="status" data-metric="recs.upgrade" data-value="recommendations" {
                    strong { "Recommendations are part of a higher plan." } " "
                    @if let Some(u) = e.details().and_then(|d| d.get("upgrade_url")).and_then(|v| v.as_str()) { a.button href=(u) { "Upgrade" } }
                }
            };
            return render(&p, "/dashboard/recommendations", "Recommendations", body);
        }
        Err(e) => return error_page(&p.brand, e),
    };
    let preview = recs_preview(&p, &q).await;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let version = n(&status["model_version"]);
    let training = status["training"].as_bool().unwrap_or(false);
    let state = if training {
        ("training", "trial")
    } else if version > 0 {
        ("trained", "ok")
    } else {
        ("not trained yet", "off")
    };
    let eval = &status["evaluation"];
    let body = html! {
        section.card {
            div.card-head {
                h2 { "Model" }
                form method="post" action="/dashboard/recommendations" {
                    (csrf_field(&p.session.csrf))
                    button type="submit" { "Train now" }
                }
            }
            dl.facts {
                dt { "Status" } dd { span data-metric="recs.state" data-value=(state.0) { (pill(state.0, state.1)) } }
                dt { "Version" } dd { (metric("recs.model_version", version, &version.to_string())) }
                dt { "Last training" } dd { (status["trained_at"].as_str().map(|t| t.get(..19).unwrap_or(t).replace('T', " ") + " UTC").unwrap_or_else(|| "never".into())) }
                @if let Some(ms) = status["training_ms"].as_u64() { dt { "Took" } dd { (format!("{:.1} s", ms as f64 / 1000.0)) } }
                @if let Some(m) = status["method"].as_str() { dt { "Method" } dd { (m) } }
                @if let Some(h) = eval["hr_at_10"].as_f64() { dt { "Hit rate @10" } dd { (metric("recs.hr_at_10", h, &format!("{:.3}", h))) " on " (n(&eval["users"])) " customers (leave-last-out)" } }
                dt { "Data" } dd {
                    (metric("recs.products", n(&status["data"]["products"]), &layout::group(n(&status["data"]["products"])))) " products · "
                    (layout::group(n(&status["data"]["customers"]))) " customers · "
                    (metric("recs.orders", n(&status["data"]["orders"]), &layout::group(n(&status["data"]["orders"])))) " orders · "
                    (layout::group(n(&status["data"]["events"]))) " events"
                }
                @if let Some(e) = status["last_error"].as_str() { dt { "Last error" } dd.alert { (e) } }
            }
        }
        section.card {
            h2 { "Preview" }
            form.stack method="get" action="/dashboard/recommendations" {
                label for="rec-customer" { "Customer id" }
                input #rec-customer type="text" name="customer" maxlength="256" value=(q.customer.clone().unwrap_or_default());
                label for="rec-product" { "or product id" }
                input #rec-product type="text" name="product" maxlength="256" value=(q.product.clone().unwrap_or_default());
                button.primary type="submit" { "Preview" }
            }
            @match &preview {
                Some(Ok((label, results))) => {
                    h3 { (label) }
                    @if results.is_empty() { p.hint data-metric="recs.preview" data-value="0" { "No recommendations." } }
                    @else {
                        div.table-wrap {
                            table data-metric="recs.preview" data-value=(results.len()) {
                                thead { tr { th scope="col" { "#" } th scope="col" { "Product" } th.num scope="col" { "Score" } th scope="col" { "Why" } } }
                                tbody {
                                    @for (i, r) in results.iter().enumerate() {
                                        tr data-product=(r.product_id) {
                                            td { (i + 1) }
                                            td { code { (r.product_id) } }
                                            td.num { (format!("{:.3}", r.score)) }
                                            td { (serde_json::to_value(r.reason).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Some(Err(e)) => { p.alert role="alert" data-error="recs" { (e.public_message()) } }
                None => {}
            }
        }
        section.card {
            h2 { "Attribution, last 30 days" }
            dl.facts {
                dt { "Recommendations served" } dd { (metric("attribution.recommendations_served", attr.recommendations_served, &layout::group(attr.recommendations_served))) }
                dt { "Clicks" } dd { (metric("attribution.clicks", attr.clicks, &layout::group(attr.clicks))) " by " (layout::group(attr.customers_clicked)) " customers" }
                dt { "Click-through" } dd {
                    @match attr.click_through_rate {
                        Some(r) => (metric("attribution.click_through_rate", r, &format!("{:.1} %", r * 100.0))),
                        None => "—",
                    }
                }
                dt { "Orders that followed" } dd { (metric("attribution.orders", attr.attributed_orders, &layout::group(attr.attributed_orders))) }
                dt { "Their revenue" } dd { (metric("attribution.revenue", attr.attributed_revenue, &format!("{:.2}", attr.attributed_revenue))) }
            }
            p.hint {
                "Send a click on a recommended product as an event of type " code { "rec_click" } " with the customer's id. An order counts when the same customer clicked one of its products at most "
                (attr.window_days) " days before it; its revenue is those lines' quantity × price."
            }
        }
    };
    render(&p, "/dashboard/recommendations", "Recommendations", body)
}

/// `POST /dashboard/recommendations`: train now.
async fn recs_train(p: Portal, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&p.session, form.get("csrf")) {
        return error_page(&p.brand, e);
    }
    let run = async {
        p.ctx.begin(crate::services::Op::RecsTrain)?;
        crate::services::recs::train(&p.ctx).await
    };
    match run.await {
        Ok(_) => Redirect::to("/dashboard/recommendations").into_response(),
        Err(e) => error_page(&p.brand, e),
    }
}

/// Background jobs (large documents and bulk uploads): status and chunks embedded. While one is
/// queued or running the page carries `data-live-jobs`, and app.js reloads it every two seconds.
async fn jobs_page(p: Portal) -> Response {
    let jobs = match crate::services::jobs::list(&p.ctx).await {
        Ok(j) => j,
        Err(e) => return error_page(&p.brand, e),
    };
    let live = jobs.iter().any(|j| matches!(j.status.as_str(), "queued" | "running"));
    let body = html! {
        section.card data-live-jobs[live] {
            p.hint { "Documents with more than " (p.ctx.state().config.docs.job_threshold_chunks) " chunks, and bulk uploads over it, are embedded in the background. "
                @if live { "This page refreshes while a job runs." } }
            @if jobs.is_empty() { p.hint data-metric="jobs.none" { "No jobs yet." } }
            @else {
                div.table-wrap {
                    table {
                        thead { tr { th scope="col" { "Job" } th scope="col" { "Kind" } th scope="col" { "Status" } th scope="col" { "Progress" } th.num scope="col" { "Documents" } th scope="col" { "Started" } th scope="col" { "Updated" } } }
                        tbody {
                            @for j in &jobs {
                                tr data-job=(j.id) {
                                    th scope="row" { code { (j.id) } }
                                    td { (j.kind) }
                                    td { (metric(&format!("job.{}.status", j.id), &j.status, "")) (pill(&j.status, &j.status)) }
                                    td {
                                        meter min="0" max=(j.chunks.max(1)) value=(j.chunks_embedded) aria-label=(format!("chunks embedded of job {}", j.id)) {}
                                        " " (metric(&format!("job.{}.chunks_embedded", j.id), j.chunks_embedded, &layout::group(j.chunks_embedded)))
                                        " / " (metric(&format!("job.{}.chunks", j.id), j.chunks, &layout::group(j.chunks))) " chunks"
                                        @if let Some(m) = j.error.as_ref().and_then(|e| e.get("message")).and_then(|m| m.as_str()) { br; small.alert { (m) } }
                                    }
                                    td.num { (j.documents) }
                                    td { (j.created_at.get(..19).unwrap_or(&j.created_at).replace('T', " ")) }
                                    td { (j.updated_at.get(..19).unwrap_or(&j.updated_at).replace('T', " ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    render(&p, "/dashboard/jobs", "Jobs", body)
}

/// `GET /dashboard/audit`: the tenant's audit log (plans with `audit_log`).
async fn audit_page(p: Portal) -> Response {
    let body = match usage::audit(&p.ctx).await {
        Ok(events) => html! {
            section.card {
                div.table-wrap {
                    table {
                        thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "What" } th scope="col" { "Detail" } } }
                        tbody {
                            @for e in &events {
                                tr { td { (e.at.get(..19).unwrap_or(&e.at).replace('T', " ")) } td { (e.actor) } td { code { (e.action) } } td.detail { (if e.detail.is_null() { String::new() } else { e.detail.to_string() }) } }
                            }
                        }
                    }
                }
                p.hint { (metric("audit.events", events.len(), &events.len().to_string())) " events (newest first, at most 200)" }
            }
        },
        Err(e) if e.code() == crate::error::Code::FeatureNotInPlan => html! {
            div.upgrade role="status" {
                strong { "The audit log is part of a higher plan." } " "
                @if let Some(u) = e.details().and_then(|d| d.get("upgrade_url")).and_then(|v| v.as_str()) { a.button href=(u) { "Upgrade" } }
            }
        },
        Err(e) => return error_page(&p.brand, e),
    };
    render(&p, "/dashboard/audit", "Audit log", body)
}
