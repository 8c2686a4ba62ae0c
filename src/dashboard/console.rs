//! The operator console at `/admin`: login with the admin token, an overview (MRR by tier, tenants
//! by status, trials ending, conversions and churn, handles against the cap, the embedding queue,
//! the last hour's traffic, backup lag, a tier × feature heatmap) and the tenants table.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde::Deserialize;

use super::charts;
use super::layout::{self, metric, page, pill, Area};
use super::{cookie, error_page, over_https, set_cookie, Brand, Console, FormFields, CONSOLE_COOKIE, LOGIN_COOKIE};
use crate::services::dashboard as svc;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(overview))
        .route("/admin/login", get(login_page).post(login_post))
        .route("/admin/logout", post(logout))
        .route("/admin/tenants", get(tenants))
        .route("/admin/tenants/{slug}", get(tenant_page).post(tenant_post))
}

fn login_form(state: &AppState, headers: &HeaderMap, error: Option<String>, status: StatusCode) -> Response {
    let brand = Brand::of(state);
    let token = crate::auth::new_token();
    let body = layout::bare(
        &brand,
        "Operator login",
        html! {
            div.card.narrow {
                h1 { "Operator console" }
                @if let Some(e) = &error { p.alert role="alert" data-error="login" { (e) } }
                form method="post" action="/admin/login" {
                    input type="hidden" name="csrf" value=(token);
                    label for="admin-token" { "Admin token" }
                    input #admin-token type="password" name="token" autocomplete="off" required;
                    button.primary type="submit" { "Log in" }
                }
            }
        },
    );
    let cookie = set_cookie(LOGIN_COOKIE, &token, "/admin/login", 3600, over_https(headers, state));
    (status, [(header::SET_COOKIE, cookie)], body).into_response()
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    login_form(&state, &headers, None, StatusCode::OK)
}

async fn login_post(State(state): State<AppState>, headers: HeaderMap, form: FormFields) -> Response {
    let brand = Brand::of(&state);
    if let Err(e) = super::check_login_csrf(&headers, &form) {
        return error_page(&brand, e);
    }
    match svc::console_login(&state, form.get("token").unwrap_or_default()).await {
        Ok(opened) => {
            let secure = over_https(&headers, &state);
            let mut resp = Redirect::to("/admin").into_response();
            resp.headers_mut()
                .append(header::SET_COOKIE, set_cookie(CONSOLE_COOKIE, &opened.token, "/admin", state.config.dashboard.session_ttl_secs, secure));
            resp.headers_mut().append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", "/admin/login", 0, secure));
            resp
        }
        Err(e) => login_form(&state, &headers, Some(e.public_message()), StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::UNAUTHORIZED)),
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, c: Console, form: FormFields) -> Response {
    if let Err(e) = svc::check_csrf(&c.session, form.get("csrf")) {
        return error_page(&c.brand, e);
    }
    if let Some(token) = cookie(&headers, CONSOLE_COOKIE) {
        if let Err(e) = svc::logout(&state, token).await {
            return error_page(&c.brand, e);
        }
    }
    let mut resp = Redirect::to("/admin/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, set_cookie(CONSOLE_COOKIE, "", "/admin", 0, over_https(&headers, &state)));
    resp
}

/// A latency figure, or a dash without traffic.
fn latency(name: &str, ms: Option<f64>) -> maud::Markup {
    match ms {
        Some(v) => metric(name, v, &format!("≤ {v:.1} ms")),
        None => metric(name, "", "—"),
    }
}

/// The heat class (0–5) of a heatmap cell, relative to the busiest cell.
fn heat(n: u64, hottest: u64) -> u64 {
    if n == 0 || hottest == 0 {
        0
    } else {
        1 + (n.saturating_mul(4) / hottest).min(4)
    }
}

async fn overview(c: Console) -> Response {
    let o = match c.operator.console_overview(&c.proof).await {
        Ok(o) => o,
        Err(e) => return error_page(&c.brand, e),
    };
    let t = &o.traffic;
    let per_minute: Vec<(String, u64)> = t.minutes.iter().map(|m| (m.start.format("%H:%M").to_string(), m.requests)).collect();
    let lc = &o.lifecycle;
    let decided = lc.trials_converted + lc.trials_expired;
    let conversion = if decided == 0 {
        metric("lifecycle.conversion_percent", "", "—")
    } else {
        let p = lc.trials_converted as f64 * 100.0 / decided as f64;
        metric("lifecycle.conversion_percent", format!("{p:.1}"), &format!("{p:.1} %"))
    };
    let churn = if lc.at_start == 0 {
        metric("lifecycle.churn_percent", "", "—")
    } else {
        let p = lc.churned as f64 * 100.0 / lc.at_start as f64;
        metric("lifecycle.churn_percent", format!("{p:.2}"), &format!("{p:.2} % of {}", lc.at_start))
    };
    let hottest = o.heatmap.iter().flat_map(|(_, c)| c.iter().copied()).max().unwrap_or(0);
    let mut costly: Vec<&svc::ConsoleTenant> = o.tenants.iter().filter(|t| t.cost.estimated_usd > 0.0 || t.cost.store_puts > 0).collect();
    costly.sort_by(|a, b| b.cost.estimated_usd.total_cmp(&a.cost.estimated_usd).then_with(|| a.slug.cmp(&b.slug)));
    costly.truncate(10);
    let body = html! {
        section.cards {
            div.card {
                h2 { "MRR (" (o.period) ")" }
                p.big { (metric("mrr_usd", o.mrr_usd, &layout::usd(o.mrr_usd))) }
                p.hint { "Plan prices plus overage so far this month." }
            }
            div.card {
                h2 { "Tenant handles" }
                p.big { (metric("open_handles", o.open_handles, &o.open_handles.to_string())) " / " (metric("handle_cap", o.handle_cap, &o.handle_cap.to_string())) }
                p.hint { "Open tenant databases against the cap." }
            }
            div.card {
                h2 { "Embedding queue" }
                p.big { (metric("embed_queue", o.embed_queue, &o.embed_queue.to_string())) }
                p.hint { "Texts waiting for the model." }
            }
        }
        section.card aria-labelledby="traffic-title" {
            div.card-head {
                h2 #traffic-title { "Traffic, last hour" }
                p.hint { "API requests (REST, MCP, embeddings, admin API, webhooks) answered by this node; the dashboards and probes are not counted." }
            }
            dl.figures {
                div { dt { "Requests per second" } dd { (metric("traffic.rps", format!("{:.3}", t.requests_per_sec), &format!("{:.2}", t.requests_per_sec))) } }
                div { dt { "Requests" } dd { (metric("traffic.requests", t.requests, &layout::group(t.requests))) } }
                div { dt { "Server errors (5xx)" } dd { (metric("traffic.server_errors", t.server_errors, &layout::group(t.server_errors))) " (" (metric("traffic.error_rate", format!("{:.3}", t.error_rate_percent), &format!("{:.2} %", t.error_rate_percent))) ")" } }
                div { dt { "Client errors (4xx)" } dd { (metric("traffic.client_errors", t.client_errors, &layout::group(t.client_errors))) } }
                div { dt { "Latency p50" } dd { (latency("traffic.p50_ms", t.p50_ms)) } }
                div { dt { "Latency p99" } dd { (latency("traffic.p99_ms", t.p99_ms)) } }
            }
            (charts::bars("traffic-per-minute", "Requests per minute, last hour", "requests", &per_minute))
        }
        section.cards {
            div.card {
                h2 { "Trials and churn (" (o.period) ")" }
                table {
                    tbody {
                        tr { th scope="row" { "Trials converted" } td.num { (metric("lifecycle.trials_converted", lc.trials_converted, &lc.trials_converted.to_string())) } }
                        tr { th scope="row" { "Trials expired" } td.num { (metric("lifecycle.trials_expired", lc.trials_expired, &lc.trials_expired.to_string())) } }
                        tr { th scope="row" { "Trial conversion" } td.num { (conversion) } }
                        tr { th scope="row" { "Churned tenants" } td.num { (metric("lifecycle.churned", lc.churned, &lc.churned.to_string())) } }
                        tr { th scope="row" { "Churn rate" } td.num { (churn) } }
                    }
                }
                p.hint { "Churn: tenants deleted, cancelled or whose subscription ended this month, over the tenants there when it began." }
            }
            div.card {
                h2 { "Backup lag" }
                @if !o.backups_on {
                    p.hint data-metric="backup_lag.off" { "Backups are off (no backup_url)." }
                } @else if o.backup_lag.is_empty() {
                    p.hint data-metric="backup_lag.none" { "Every replica is up to date." }
                } @else {
                    table {
                        thead { tr { th scope="col" { "Tenant" } th.num scope="col" { "Lag" } th.num scope="col" { "Failures" } } }
                        tbody {
                            @for l in &o.backup_lag {
                                tr {
                                    th scope="row" { a href=(format!("/admin/tenants/{}", l.slug)) { (l.slug) } @if !l.open { " " (pill("waiting", "closed")) } }
                                    td.num { (metric(&format!("backup_lag.{}", l.slug), l.lag_secs, &format!("{:.1} s", l.lag_secs))) }
                                    td.num { (l.consecutive_failures) }
                                }
                            }
                        }
                    }
                    p.hint { "The 10 tenants furthest behind their replica." }
                }
            }
        }
        section.card aria-labelledby="cost-title" {
            div.card-head {
                h2 #cost-title { "Cost per tenant (" (o.period) ")" }
                p.hint { "The 10 most expensive tenants this month, at your unit prices (dashboard.cost_*): CPU measured around each tenant's work, storage priced for the month, object-store PUTs of its backups." }
            }
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { "Tenant" }
                        th.num scope="col" { "CPU embed" } th.num scope="col" { "CPU search" } th.num scope="col" { "CPU train" }
                        th.num scope="col" { "Storage" } th.num scope="col" { "PUTs" } th.num scope="col" { "PUT bytes" } th.num scope="col" { "Est. cost" }
                    } }
                    tbody {
                        @for t in &costly {
                            tr {
                                th scope="row" { a href=(format!("/admin/tenants/{}", t.slug)) { (t.slug) } }
                                td.num { (metric(&format!("cost.{}.cpu_seconds_embed", t.slug), t.cost.cpu_seconds_embed, &format!("{:.2} s", t.cost.cpu_seconds_embed))) }
                                td.num { (metric(&format!("cost.{}.cpu_seconds_search", t.slug), t.cost.cpu_seconds_search, &format!("{:.2} s", t.cost.cpu_seconds_search))) }
                                td.num { (metric(&format!("cost.{}.cpu_seconds_train", t.slug), t.cost.cpu_seconds_train, &format!("{:.2} s", t.cost.cpu_seconds_train))) }
                                td.num { @match t.storage_bytes { Some(b) => (layout::bytes(b)), None => "—" } }
                                td.num { (metric(&format!("cost.{}.store_puts", t.slug), t.cost.store_puts, &layout::group(t.cost.store_puts))) }
                                td.num { (metric(&format!("cost.{}.store_put_bytes", t.slug), t.cost.store_put_bytes, &layout::bytes(t.cost.store_put_bytes))) }
                                td.num { (metric(&format!("cost.{}.estimated_usd", t.slug), format!("{:.6}", t.cost.estimated_usd), &format!("${:.4}", t.cost.estimated_usd))) }
                            }
                        }
                    }
                }
            }
        }
        section.card aria-labelledby="heatmap-title" {
            h2 #heatmap-title { "Feature usage by tier (" (o.period) ")" }
            div.table-wrap {
                table.heatmap {
                    caption.hint { "Calls this month; darker cells are busier, relative to the busiest cell." }
                    thead { tr { th scope="col" { "Tier" } @for f in svc::FEATURES { th.num scope="col" { (f) } } } }
                    tbody {
                        @for (tier, cells) in &o.heatmap {
                            tr {
                                th scope="row" { (tier) }
                                @for (f, n) in svc::FEATURES.iter().zip(cells.iter()) {
                                    td.num class=(format!("heat-{}", heat(*n, hottest))) { (metric(&format!("heatmap.{tier}.{}", f.replace(' ', "_")), n, &layout::group(*n))) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section.cards {
            div.card {
                h2 { "MRR by tier" }
                table {
                    thead { tr { th scope="col" { "Tier" } th.num scope="col" { "Tenants" } th.num scope="col" { "MRR" } } }
                    tbody {
                        @for (tier, n, usd) in &o.by_tier {
                            tr { th scope="row" { (tier) } td.num { (n) } td.num { (metric(&format!("mrr.{tier}"), usd, &layout::usd(*usd))) } }
                        }
                    }
                }
            }
            div.card {
                h2 { "Tenants by status" }
                table {
                    thead { tr { th scope="col" { "Status" } th.num scope="col" { "Tenants" } } }
                    tbody {
                        @for (status, n) in &o.by_status {
                            tr { th scope="row" { (pill(status, status)) } td.num { (metric(&format!("status.{status}"), n, &n.to_string())) } }
                        }
                    }
                }
            }
            div.card {
                h2 { "Trials ending this week" }
                @if o.trials_ending.is_empty() { p.hint { "None." } }
                ul {
                    @for (slug, name, end) in &o.trials_ending {
                        li { (name) " (" (slug) ") — " (end.format("%Y-%m-%d")) }
                    }
                }
            }
        }
    };
    page(&c.brand, Area::Console, "/admin", "Operator", &c.session.csrf, "Overview", body).into_response()
}

/// Rows of the tenants table rendered at most.
const MAX_ROWS: usize = 500;

#[derive(Deserialize)]
struct TenantsQuery {
    q: Option<String>,
    sort: Option<String>,
}

async fn tenants(c: Console, Query(q): Query<TenantsQuery>) -> Response {
    let all = match c.operator.console_tenants(&c.proof).await {
        Ok(t) => t,
        Err(e) => return error_page(&c.brand, e),
    };
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let mut rows: Vec<&svc::ConsoleTenant> =
        all.iter().filter(|t| needle.is_empty() || t.slug.contains(&needle) || t.name.to_lowercase().contains(&needle)).collect();
    match q.sort.as_deref() {
        Some("mrr") => rows.sort_by(|a, b| b.mrr_usd.total_cmp(&a.mrr_usd)),
        Some("quota") => rows.sort_by(|a, b| b.quota_percent.unwrap_or(-1.0).total_cmp(&a.quota_percent.unwrap_or(-1.0))),
        Some("storage") => rows.sort_by_key(|t| std::cmp::Reverse(t.storage_bytes.unwrap_or(0))),
        Some("created") => rows.sort_by_key(|t| std::cmp::Reverse(t.created_at)),
        Some("cost") => rows.sort_by(|a, b| b.cost.estimated_usd.total_cmp(&a.cost.estimated_usd)),
        _ => {}
    }
    let sort_link =
        |key: &str| format!("/admin/tenants?sort={key}&q={}", url::form_urlencoded::byte_serialize(needle.as_bytes()).collect::<String>());
    let body = html! {
        section.card {
            form.search method="get" action="/admin/tenants" role="search" {
                label for="tenant-q" { "Search tenants" }
                input #tenant-q type="search" name="q" value=(q.q.clone().unwrap_or_default()) placeholder="slug or name";
                button.secondary type="submit" { "Search" }
            }
            p.hint {
                (metric("tenant_count", rows.len(), &rows.len().to_string())) " tenants"
                @if rows.len() > MAX_ROWS { " (the first " (MAX_ROWS) " shown: search to narrow)" }
            }
            div.table-wrap {
                table {
                    thead { tr {
                        th scope="col" { a href=(sort_link("slug")) { "Tenant" } }
                        th scope="col" { "Tier" }
                        th scope="col" { "Status" }
                        th.num scope="col" { a href=(sort_link("mrr")) { "MRR" } }
                        th.num scope="col" { a href=(sort_link("quota")) { "% of quota" } }
                        th.num scope="col" { a href=(sort_link("storage")) { "Storage" } }
                        th scope="col" { a href=(sort_link("created")) { "Created" } }
                        th.num scope="col" { a href=(sort_link("cost")) { "Est. cost" } }
                    } }
                    tbody {
                        @for t in rows.iter().take(MAX_ROWS) {
                            tr data-tenant=(t.slug) {
                                th scope="row" { a href=(format!("/admin/tenants/{}", t.slug)) { (t.name) } br; small { (t.slug) } }
                                td { (t.tier) }
                                td { (pill(&t.status, &t.status)) }
                                td.num { (layout::usd(t.mrr_usd)) }
                                td.num { @match t.quota_percent { Some(p) => (format!("{p:.1} %")), None => "—" } }
                                td.num { @match t.storage_bytes { Some(b) => (layout::bytes(b)), None => "—" } }
                                td { (t.created_at.format("%Y-%m-%d")) }
                                td.num { (format!("${:.4}", t.cost.estimated_usd)) }
                            }
                        }
                    }
                }
            }
        }
    };
    page(&c.brand, Area::Console, "/admin/tenants", "Operator", &c.session.csrf, "Tenants", body).into_response()
}

async fn tenant_body(c: &Console, slug: &str, note: Option<maud::Markup>) -> Result<maud::Markup, crate::error::Error> {
    use crate::control::{Status, Tier};
    let t = c.operator.tenant(slug).await?;
    let keys = c.operator.list_keys(slug).await?;
    let csrf = &c.session.csrf;
    Ok(html! {
        @if let Some(n) = note { (n) }
        section.cards {
            div.card {
                h2 { "Tenant" }
                dl.facts {
                    dt { "Name" } dd { (t.name) }
                    dt { "Slug" } dd { (t.slug) }
                    dt { "Email" } dd { (t.email) }
                    dt { "Tier" } dd data-metric="tenant.tier" data-value=(t.tier.as_str()) { (t.tier.as_str()) }
                    dt { "Status" } dd data-metric="tenant.status" data-value=(t.status.as_str()) { (pill(t.status.as_str(), t.status.as_str())) }
                    dt { "Created" } dd { (t.created_at.format("%Y-%m-%d")) }
                    dt { "Keys" } dd { (keys.len()) }
                }
            }
            div.card {
                h2 { "Change" }
                form.stack method="post" action=(format!("/admin/tenants/{}", t.slug)) {
                    (layout::csrf_field(csrf))
                    input type="hidden" name="action" value="tier";
                    label for="tier" { "Tier" }
                    select #tier name="tier" {
                        @for tier in [Tier::Free, Tier::Starter, Tier::Pro, Tier::Enterprise] {
                            option value=(tier.as_str()) selected[tier == t.tier] { (tier.as_str()) }
                        }
                    }
                    button.primary type="submit" { "Change tier" }
                }
                form method="post" action=(format!("/admin/tenants/{}", t.slug)) {
                    (layout::csrf_field(csrf))
                    @if t.status == Status::Suspended {
                        input type="hidden" name="action" value="resume";
                        button.secondary type="submit" { "Resume" }
                    } @else {
                        input type="hidden" name="action" value="suspend";
                        button.danger type="submit" { "Suspend" }
                    }
                }
                form method="post" action=(format!("/admin/tenants/{}", t.slug)) {
                    (layout::csrf_field(csrf))
                    input type="hidden" name="action" value="link";
                    button.secondary type="submit" { "Mint a dashboard link" }
                }
            }
        }
    })
}

async fn tenant_page(c: Console, axum::extract::Path(slug): axum::extract::Path<String>) -> Response {
    match tenant_body(&c, &slug, None).await {
        Ok(body) => page(&c.brand, Area::Console, "/admin/tenants", "Operator", &c.session.csrf, "Tenant", body).into_response(),
        Err(e) => error_page(&c.brand, e),
    }
}

/// `POST /admin/tenants/{slug}`: `action` = `tier` (with `tier`), `suspend`, `resume` or `link`.
async fn tenant_post(c: Console, axum::extract::Path(slug): axum::extract::Path<String>, form: FormFields) -> Response {
    use crate::control::{Status, Tier};
    if let Err(e) = svc::check_csrf(&c.session, form.get("csrf")) {
        return error_page(&c.brand, e);
    }
    let done = match form.get("action") {
        Some("tier") => match form.get("tier").and_then(Tier::parse) {
            Some(tier) => {
                let patch = crate::control::tenants::TenantPatch { tier: Some(tier), ..Default::default() };
                c.operator.update_tenant(&slug, patch).await.map(|t| html! { p.alert.ok role="status" { "Tier changed to " (t.tier.as_str()) "." } })
            }
            None => Err(crate::error::Error::validation("tier must be free, starter, pro or enterprise")),
        },
        Some("suspend") => c.operator.set_status(&slug, Status::Suspended).await.map(|_| html! { p.alert.ok role="status" { "Suspended." } }),
        Some("resume") => c.operator.set_status(&slug, Status::Active).await.map(|_| html! { p.alert.ok role="status" { "Resumed." } }),
        Some("link") => c.operator.dashboard_link(&slug).await.map(|l| {
            html! {
                div.card.issued role="status" {
                    h2 { "Dashboard link" }
                    p { "Valid once, until " (l.expires_at.format("%Y-%m-%d %H:%M UTC")) "." }
                    code.secret data-metric="dashboard_link" data-value=(l.url) { (l.url) }
                }
            }
        }),
        _ => Err(crate::error::Error::validation("unknown action")),
    };
    let (note, status) = match done {
        Ok(n) => (n, StatusCode::OK),
        Err(e @ crate::error::Error::Internal(_)) => return error_page(&c.brand, e),
        Err(e) => {
            (html! { p.alert role="alert" { (e.public_message()) } }, StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::BAD_REQUEST))
        }
    };
    match tenant_body(&c, &slug, Some(note)).await {
        Ok(body) => (status, page(&c.brand, Area::Console, "/admin/tenants", "Operator", &c.session.csrf, "Tenant", body)).into_response(),
        Err(e) => error_page(&c.brand, e),
    }
}
