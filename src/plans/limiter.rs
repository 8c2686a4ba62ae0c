//! Keyed GCRA rate limiters (governor), one per distinct `(rate, burst)` quota.
//!
//! A tenant is keyed by its id in the limiter of its current quota, so a tier change (or an override)
//! moves it to another limiter on its very next request. Idle keys are pruned by [`RateLimits::prune`]
//! (governor's `retain_recent`), and limiters left without keys are dropped, so memory stays bounded by
//! the tenants active within a burst window.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use parking_lot::RwLock;

type Limiter = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// What the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    /// Cells available at most (the burst).
    pub limit: u32,
    /// Cells left now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A refused charge: retry after this many seconds.
#[derive(Debug, Clone, Copy)]
pub struct Throttled {
    pub info: RateInfo,
    pub retry_after_secs: u64,
}

#[derive(Default)]
pub struct RateLimits {
    limiters: RwLock<HashMap<(u32, u32), Arc<Limiter>>>,
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 {
        s + 1
    } else {
        s
    }
}

impl RateLimits {
    fn limiter(&self, rate: u32, burst: u32) -> Arc<Limiter> {
        if let Some(l) = self.limiters.read().get(&(rate, burst)) {
            return l.clone();
        }
        let mut w = self.limiters.write();
        w.entry((rate, burst))
            .or_insert_with(|| {
                let quota = Quota::per_second(NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN))
                    .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN));
                Arc::new(RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>())
            })
            .clone()
    }

    /// Takes `cost` cells from `key`'s bucket under quota `(rate, burst)`.
    pub fn check(&self, key: &String, rate: u32, burst: u32, cost: u32) -> Result<RateInfo, Throttled> {
        let burst = burst.max(1);
        let rate = rate.max(1);
        let per_cell = Duration::from_secs_f64(1.0 / rate as f64);
        let limiter = self.limiter(rate, burst);
        let Some(n) = NonZeroU32::new(cost) else {
            return Ok(RateInfo { limit: burst, remaining: burst, reset_secs: 0 });
        };
        match limiter.check_key_n(key, n) {
            Ok(Ok(snap)) => {
                let remaining = snap.remaining_burst_capacity();
                Ok(RateInfo { limit: burst, remaining, reset_secs: ceil_secs(per_cell * (burst - remaining.min(burst))) })
            }
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // The earliest time one cell conforms; a charge of `cost` cells needs cost-1 more.
                let wait = wait + per_cell * (cost.min(burst) - 1);
                let info = RateInfo { limit: burst, remaining: 0, reset_secs: ceil_secs(per_cell * burst) };
                Err(Throttled { info, retry_after_secs: ceil_secs(wait).max(1) })
            }
            Err(_insufficient) => {
                // More cells than the burst: this call can never pass under this quota.
                let info = RateInfo { limit: burst, remaining: 0, reset_secs: ceil_secs(per_cell * burst) };
                Err(Throttled { info, retry_after_secs: ceil_secs(per_cell * burst).max(1) })
            }
        }
    }

    /// Drops keys whose buckets are full again, and limiters without keys.
    pub fn prune(&self) {
        let mut w = self.limiters.write();
        for l in w.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        w.retain(|_, l| !l.is_empty());
    }

    /// Keys held across all limiters (for tests and metrics).
    pub fn len(&self) -> usize {
        self.limiters.read().values().map(|l| l.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_prune() {
        let l = RateLimits::default();
        let k = "t1".to_string();
        for i in 0..5 {
            let info = l.check(&k, 10, 5, 1).expect("within burst");
            assert_eq!(info.remaining, 4 - i);
            assert_eq!(info.limit, 5);
        }
        let t = l.check(&k, 10, 5, 1).expect_err("burst used up");
        assert_eq!(t.retry_after_secs, 1);
        assert!(l.check(&k, 10, 5, 6).is_err(), "more than the burst never passes");
        // Another tenant is unaffected; another quota is a fresh bucket.
        assert!(l.check(&"t2".to_string(), 10, 5, 5).is_ok());
        assert!(l.check(&k, 100, 50, 1).is_ok());
        assert_eq!(l.len(), 3);
        // Buckets refill in at most 0.5 s; the limiter keeps its own monotonic clock, so poll (a loaded
        // machine may take longer) rather than sleep a fixed time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            l.prune();
            if l.is_empty() || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(l.len(), 0, "idle buckets are pruned");
    }
}
