//! The page shell (header, navigation, main) and the small components every page uses. maud
//! escapes every interpolated string, so tenant names, key names and document titles render as text.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::Brand;

/// Which console a page belongs to, for its navigation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Portal,
    Console,
}

const PORTAL_NAV: &[(&str, &str)] = &[
    ("/dashboard", "Overview"),
    ("/dashboard/usage", "Usage"),
    ("/dashboard/search", "Search"),
    ("/dashboard/keys", "API keys"),
    ("/dashboard/billing", "Billing"),
    ("/dashboard/recommendations", "Recommendations"),
    ("/dashboard/jobs", "Jobs"),
    ("/dashboard/backups", "Backups"),
    ("/dashboard/audit", "Audit log"),
];
const CONSOLE_NAV: &[(&str, &str)] = &[("/admin", "Overview"), ("/admin/tenants", "Tenants")];

fn head(brand: &Brand, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · " (brand.name) }
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/dashboard/assets/app.css";
            link rel="stylesheet" href="/dashboard/assets/theme.css";
            script src="/dashboard/assets/app.js" defer {}
        }
    }
}

fn mark(brand: &Brand) -> Markup {
    html! {
        span.brand {
            @if brand.has_logo {
                img.logo src="/dashboard/assets/logo" alt="";
            } @else {
                span.logo.initial aria-hidden="true" { (brand.name.chars().next().unwrap_or('w').to_uppercase().collect::<String>()) }
            }
            span.brand-name { (brand.name) }
        }
    }
}

/// A signed-in page: header with the brand, whose it is (`who`), navigation, a logout form, and `body`.
pub fn page(brand: &Brand, area: Area, current: &str, who: &str, csrf: &str, title: &str, body: Markup) -> Markup {
    let (nav, logout) = match area {
        Area::Portal => (PORTAL_NAV, "/dashboard/logout"),
        Area::Console => (CONSOLE_NAV, "/admin/logout"),
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(brand, title))
            body {
                header.top {
                    (mark(brand))
                    span.who data-metric="who" { (who) }
                    form.logout method="post" action=(logout) {
                        input type="hidden" name="csrf" value=(csrf);
                        button.link type="submit" { "Log out" }
                    }
                }
                nav.tabs aria-label="Sections" {
                    @for (href, label) in nav {
                        @if *href == current {
                            a href=(href) aria-current="page" { (label) }
                        } @else {
                            a href=(href) { (label) }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page outside a session (login, errors).
pub fn bare(brand: &Brand, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(brand, title))
            body.bare {
                header.top { (mark(brand)) }
                main { (body) }
            }
        }
    }
}

/// A figure with its raw value in `data-metric`/`data-value`, so tests compare it with the API.
pub fn metric(name: &str, value: impl std::fmt::Display, shown: &str) -> Markup {
    html! { span.metric data-metric=(name) data-value=(value.to_string()) { (shown) } }
}

/// A usage bar: `used` of `limit` (`None` = unlimited), with its percentage.
pub fn usage_bar(name: &str, label: &str, used: u64, limit: Option<u64>, unit: Unit, projection: Option<u64>) -> Markup {
    let pct = limit.map(|l| if l == 0 { 100.0 } else { (used as f64 / l as f64 * 100.0).min(999.0) });
    let level = match pct {
        Some(p) if p >= 100.0 => "over",
        Some(p) if p >= 80.0 => "near",
        _ => "ok",
    };
    html! {
        div.usage data-level=(level) {
            div.usage-head {
                span.usage-label id=(format!("label-{name}")) { (label) }
                span.usage-figure {
                    (metric(&format!("usage.{name}"), used, &unit.show(used)))
                    " / "
                    @match limit {
                        Some(l) => (metric(&format!("limit.{name}"), l, &unit.show(l))),
                        None => span.metric data-metric=(format!("limit.{name}")) data-value="" { "unlimited" },
                    }
                }
            }
            @if let (Some(l), Some(p)) = (limit, pct) {
                meter min="0" max=(l.max(1)) low=((l as f64 * 0.8) as u64) high=((l as f64 * 0.8) as u64 + 1) optimum="0" value=(used.min(l.max(1)))
                    aria-labelledby=(format!("label-{name}")) {}
                span.usage-pct { (metric(&format!("percent.{name}"), format!("{p:.1}"), &format!("{p:.1} %"))) " used" }
            }
            @if let Some(p) = projection {
                span.usage-projection { "Projected at month end: " (metric(&format!("projection.{name}"), p, &unit.show(p))) }
            }
        }
    }
}

/// How a figure is shown.
#[derive(Clone, Copy)]
pub enum Unit {
    Count,
    Bytes,
}

impl Unit {
    pub fn show(self, n: u64) -> String {
        match self {
            Unit::Count => group(n),
            Unit::Bytes => bytes(n),
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// US dollars with cents.
pub fn usd(v: f64) -> String {
    format!("${v:.2}")
}

/// A hidden CSRF field.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// A status pill.
pub fn pill(text: &str, kind: &str) -> Markup {
    html! { span.pill data-kind=(kind) { (text) } }
}

/// Text that is known to be safe markup (the SVG charts build their own escaped markup).
pub fn raw(s: String) -> PreEscaped<String> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(group(100), "100");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(usd(12.5), "$12.50");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let brand = Brand { name: "<b>x</b>".into(), has_logo: false };
        let html = bare(&brand, "<img src=x onerror=alert(1)>", html! { p { "<script>" } }).into_string();
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}
