//! Time: the server's [`Clock`] and the timestamp and billing-period helpers.
//!
//! Every "now" that a rule depends on (key expiry, trials, sessions, retention, replica deletion,
//! usage periods) comes from a [`Clock`], so tests move time forward instead of sleeping. This module
//! depends on nothing else in the crate.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};

/// The server's notion of "now". Tests move it forward; production leaves the offset at zero.
/// Clones share the offset, so one `advance` moves every component that holds a clone.
#[derive(Clone, Default, Debug)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        let off = self.offset_ms.load(Ordering::Relaxed);
        if off == 0 {
            Utc::now()
        } else {
            Utc::now() + chrono::Duration::milliseconds(off)
        }
    }

    /// Moves the clock forward (or back) by `d` (tests).
    pub fn advance(&self, d: chrono::Duration) {
        self.offset_ms.fetch_add(d.num_milliseconds(), Ordering::Relaxed);
    }

    /// `now` in the stored text form ([`ts`]).
    pub fn stamp(&self) -> String {
        ts(self.now())
    }
}

/// RFC 3339 with milliseconds in UTC: sorts lexicographically in SQLite.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_ts(s: &str) -> anyhow::Result<DateTime<Utc>> {
    Ok(DateTime::parse_from_rfc3339(s).with_context(|| format!("bad timestamp {s:?}"))?.with_timezone(&Utc))
}

/// `YYYY-MM` of `t`, and the bounds `[start, end)` of that month.
pub fn period_of(t: DateTime<Utc>) -> (String, DateTime<Utc>, DateTime<Utc>) {
    let start = Utc.with_ymd_and_hms(t.year(), t.month(), 1, 0, 0, 0).single().unwrap_or(t);
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    let end = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t);
    (format!("{:04}-{:02}", t.year(), t.month()), start, end)
}

/// Parses `YYYY-MM` into its bounds.
pub fn parse_period(p: &str) -> Option<(String, DateTime<Utc>, DateTime<Utc>)> {
    let (y, m) = p.split_once('-')?;
    if y.len() != 4 || m.len() != 2 {
        return None;
    }
    let (y, m): (i32, u32) = (y.parse().ok()?, m.parse().ok()?);
    let t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
    Some(period_of(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_offset() {
        let a = Clock::default();
        let b = a.clone();
        let before = b.now();
        a.advance(chrono::Duration::days(40));
        assert!(b.now() - before >= chrono::Duration::days(40));
    }

    #[test]
    fn periods() {
        let (p, s, e) = parse_period("2026-12").expect("valid");
        assert_eq!(p, "2026-12");
        assert_eq!(ts(s), "2026-12-01T00:00:00.000Z");
        assert_eq!(ts(e), "2027-01-01T00:00:00.000Z");
        assert!(parse_period("2026-1").is_none());
        assert!(parse_period("20x6-01").is_none());
    }
}
