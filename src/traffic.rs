//! The request traffic of the last hour, minute by minute, for the operator console: requests,
//! client and server errors, and a latency histogram per minute.
//!
//! Bounded: 60 minute slots, each with a fixed histogram of [`BUCKETS`] log-spaced latency buckets
//! (each 20 % wider than the one before, from 50 µs), so memory does not grow with traffic and a
//! percentile is exact to within one bucket (≤ 20 %). A slot is reused when its minute comes round
//! again. Minutes come from the server's [`Clock`]; latency is measured by the caller.
//!
//! Counted: the API doors (REST, MCP, OpenAI-compatible, admin API, webhooks). Not counted: the
//! dashboards' own pages and assets, and the probes (`/health`, `/ready`, `/metrics`), so an
//! operator watching the console or a scraper does not show up as traffic.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use parking_lot::Mutex;
use serde::Serialize;

use crate::clock::Clock;

/// Latency buckets per minute.
pub const BUCKETS: usize = 96;
/// Upper bound of the first bucket, in microseconds.
const FIRST_US: f64 = 50.0;
/// Width ratio of successive buckets.
const GROWTH: f64 = 1.2;
/// Minutes kept.
pub const MINUTES: usize = 60;

#[derive(Clone, Copy)]
struct Slot {
    /// Minutes since the Unix epoch; `i64::MIN` when never used.
    minute: i64,
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    hist: [u32; BUCKETS],
}

impl Slot {
    const EMPTY: Slot = Slot { minute: i64::MIN, requests: 0, client_errors: 0, server_errors: 0, hist: [0; BUCKETS] };
}

/// The bucket of a latency: the first whose upper bound `FIRST_US × GROWTH^i` holds it.
fn bucket(latency: Duration) -> usize {
    let us = latency.as_secs_f64() * 1e6;
    if us <= FIRST_US {
        return 0;
    }
    ((us / FIRST_US).ln() / GROWTH.ln()).ceil().clamp(0.0, (BUCKETS - 1) as f64) as usize
}

/// Upper bound of bucket `i`, in milliseconds.
fn bucket_ms(i: usize) -> f64 {
    FIRST_US * GROWTH.powi(i as i32) / 1000.0
}

/// Whether requests to `route` (axum's matched path) count as traffic.
pub fn counts(route: &str) -> bool {
    let page = route == "/admin" || route.starts_with("/admin/") && !route.starts_with("/admin/v1");
    !(page || route.starts_with("/dashboard") || matches!(route, "/health" | "/ready" | "/metrics"))
}

/// The process-wide recorder.
pub struct Traffic {
    clock: Clock,
    started: DateTime<Utc>,
    slots: Mutex<Box<[Slot; MINUTES]>>,
}

/// One minute of traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Minute {
    pub start: DateTime<Utc>,
    pub requests: u64,
    pub server_errors: u64,
}

/// The last hour, as the console shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The 60 minutes up to now, oldest first (minutes without traffic are zeros).
    pub minutes: Vec<Minute>,
    pub requests: u64,
    /// 4xx answers (refusals of bad input, rate limits, missing credentials).
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Seconds the window covers: an hour, or less if the server started within it.
    pub window_secs: f64,
    pub requests_per_sec: f64,
    /// 5xx answers over all requests, in percent.
    pub error_rate_percent: f64,
    /// Latency percentiles over the hour (upper bound of the histogram bucket), when there was traffic.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Traffic {
    pub fn new(clock: Clock) -> Traffic {
        Traffic { started: clock.now(), clock, slots: Mutex::new(Box::new([Slot::EMPTY; MINUTES])) }
    }

    /// Records one answered request.
    pub fn record(&self, status: u16, latency: Duration) {
        let minute = self.clock.now().timestamp().div_euclid(60);
        let b = bucket(latency);
        let mut slots = self.slots.lock();
        let s = &mut slots[minute.rem_euclid(MINUTES as i64) as usize];
        if s.minute != minute {
            *s = Slot { minute, ..Slot::EMPTY };
        }
        s.requests += 1;
        match status {
            400..=499 => s.client_errors += 1,
            500..=599 => s.server_errors += 1,
            _ => {}
        }
        s.hist[b] = s.hist[b].saturating_add(1);
    }

    /// The last 60 minutes up to now.
    pub fn summary(&self) -> Summary {
        let now = self.clock.now();
        let current = now.timestamp().div_euclid(60);
        let first = current - (MINUTES as i64 - 1);
        let slots = self.slots.lock();
        let mut hist = [0u64; BUCKETS];
        let (mut requests, mut client_errors, mut server_errors) = (0, 0, 0);
        let mut minutes = Vec::with_capacity(MINUTES);
        for m in first..=current {
            let s = &slots[m.rem_euclid(MINUTES as i64) as usize];
            let live = s.minute == m;
            let start = Utc.timestamp_opt(m * 60, 0).single().unwrap_or(now);
            minutes.push(Minute { start, requests: if live { s.requests } else { 0 }, server_errors: if live { s.server_errors } else { 0 } });
            if live {
                requests += s.requests;
                client_errors += s.client_errors;
                server_errors += s.server_errors;
                for (h, n) in hist.iter_mut().zip(s.hist.iter()) {
                    *h += u64::from(*n);
                }
            }
        }
        drop(slots);
        let window_start = Utc.timestamp_opt(first * 60, 0).single().unwrap_or(now).max(self.started);
        let window_secs = ((now - window_start).num_milliseconds() as f64 / 1000.0).max(1.0);
        let pct = |q: f64| -> Option<f64> {
            let total: u64 = hist.iter().sum();
            if total == 0 {
                return None;
            }
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            hist.iter()
                .position(|n| {
                    seen += n;
                    seen >= rank
                })
                .map(|i| (bucket_ms(i) * 1000.0).round() / 1000.0)
        };
        Summary {
            minutes,
            requests,
            client_errors,
            server_errors,
            window_secs,
            requests_per_sec: requests as f64 / window_secs,
            error_rate_percent: if requests == 0 { 0.0 } else { server_errors as f64 * 100.0 / requests as f64 },
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_a_fifth_and_hold_their_latency() {
        assert_eq!(bucket(Duration::from_micros(10)), 0);
        for us in [51u64, 120, 999, 4_000, 250_000, 9_000_000] {
            let b = bucket(Duration::from_micros(us));
            assert!(bucket_ms(b) * 1000.0 >= us as f64 - 1e-6, "{us} µs in bucket {b} ({} ms)", bucket_ms(b));
            assert!(b == 0 || bucket_ms(b - 1) * 1000.0 < us as f64, "{us} µs: bucket {b} is not the first that holds it");
        }
        assert_eq!(bucket(Duration::from_secs(100_000)), BUCKETS - 1);
    }

    #[test]
    fn an_hour_of_minutes_with_errors_rates_and_percentiles() {
        let clock = Clock::default();
        let t = Traffic::new(clock.clone());
        // 98 fast answers, one slow one and one server error in this minute.
        for _ in 0..98 {
            t.record(200, Duration::from_millis(2));
        }
        t.record(200, Duration::from_millis(400));
        t.record(503, Duration::from_millis(2));
        clock.advance(chrono::Duration::minutes(1));
        t.record(429, Duration::from_millis(1));
        let s = t.summary();
        assert_eq!(s.minutes.len(), MINUTES);
        assert_eq!((s.requests, s.client_errors, s.server_errors), (101, 1, 1));
        assert_eq!(s.minutes.iter().map(|m| m.requests).sum::<u64>(), 101);
        assert_eq!(s.minutes.last().map(|m| m.requests), Some(1));
        assert!((s.error_rate_percent - 100.0 / 101.0).abs() < 1e-9);
        let p50 = s.p50_ms.expect("p50");
        assert!((2.0..=2.4).contains(&p50), "p50 {p50}");
        let p99 = s.p99_ms.expect("p99");
        assert!((2.0..=2.4).contains(&p99), "p99 {p99}: 99 of 101 answers took 2 ms or less");

        // An hour later the old minutes have left the window, and their slots are reused.
        clock.advance(chrono::Duration::minutes(60));
        t.record(200, Duration::from_millis(30));
        let s = t.summary();
        assert_eq!((s.requests, s.server_errors), (1, 0));
        let p99 = s.p99_ms.expect("p99");
        assert!((30.0..=36.0).contains(&p99), "p99 {p99}");
        assert!(s.window_secs >= 59.0 * 60.0, "the window is an hour once the server has run that long: {}", s.window_secs);
    }

    #[test]
    fn the_console_and_probes_are_not_traffic() {
        for r in ["/admin", "/admin/tenants", "/admin/login", "/dashboard", "/dashboard/assets/app.css", "/health", "/ready", "/metrics"] {
            assert!(!counts(r), "{r}");
        }
        for r in ["/api/v1/search", "/admin/v1/tenants", "/v1/embeddings", "/mcp", "/webhooks/stripe", "unmatched"] {
            assert!(counts(r), "{r}");
        }
    }
}
