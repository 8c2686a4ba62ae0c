//! Retention: usage and audit events older than the tenant plan's `retention_days` are deleted by a
//! background sweep (every `retention.sweep_secs`), in batches of `retention.batch_rows` rows per
//! transaction so a sweep never holds the control plane's write lock for long.
//!
//! **Billing exception:** usage events of the current and the previous calendar month (UTC) are kept
//! whatever the retention, because invoices and overage are computed from them. Stripe's event
//! records (`stripe_events`) are billing records and are not pruned. A plan without `retention_days`,
//! a deleted tenant's events and events of no tenant keep `retention.default_days`.

use chrono::{DateTime, Duration, Utc};

use super::audit::Operator;
use crate::error::Error;

/// What one sweep deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub usage_events: u64,
    pub audit_events: u64,
}

/// The start of the calendar month before the one `now` is in: usage from then on is kept for billing.
pub fn billing_floor(now: DateTime<Utc>) -> DateTime<Utc> {
    let (_, this_month, _) = crate::clock::period_of(now);
    crate::clock::period_of(this_month - Duration::seconds(1)).1
}

impl Operator {
    /// One retention sweep over every owner of events (see the module docs).
    pub async fn prune_retention(&self) -> Result<Pruned, Error> {
        let now = self.clock.now();
        let cfg = &self.config.retention;
        let floor = billing_floor(now);
        let mut total = Pruned::default();
        for owner in self.control.event_owners().await? {
            let days = match &owner {
                Some(id) => match (self.control.tenant_by_id(id).await?, &self.live) {
                    (Some(t), Some(s)) => s.plans.entitlements(&t).plan.retention_days.unwrap_or(cfg.default_days),
                    _ => cfg.default_days,
                },
                None => cfg.default_days,
            };
            let cutoff = now - Duration::days(i64::from(days));
            let usage_before = cutoff.min(floor);
            loop {
                let (u, a) = self.control.prune_events(owner.clone(), usage_before, cutoff, cfg.batch_rows).await?;
                total.usage_events += u;
                total.audit_events += a;
                if u < u64::from(cfg.batch_rows) && a < u64::from(cfg.batch_rows) {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        if total != Pruned::default() {
            tracing::info!(usage_events = total.usage_events, audit_events = total.audit_events, "retention: pruned old events");
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_billing_floor_is_the_start_of_the_previous_month() {
        let at = |y, m, d| Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap();
        assert_eq!(billing_floor(at(2026, 12, 2)), Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        assert_eq!(billing_floor(at(2026, 1, 31)), Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).unwrap());
        assert_eq!(billing_floor(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()), Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap());
    }
}
