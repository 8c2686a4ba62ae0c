//! Usage events: cheap to record, durable within `usage_flush_interval_ms`, never counted twice.
//!
//! Services call [`Meter::record_key`] (through `TenantCtx::meter`), which only adds to an in-memory buffer (aggregated per tenant,
//! API key, kind and month) and to the tenant's in-memory monthly counters. A single process-wide task
//! flushes the buffer every `usage_flush_interval_ms` (250 ms by default) into `usage_events` in
//! control.db, one transaction per flush, so a `kill -9` loses at most the last interval of counts
//! and a flush is either wholly applied or not at all.
//!
//! Quota checks read the in-memory counters ([`Meter::month`]): they are seeded once per tenant and
//! month from the events that were in control.db when this process started (`id <= boundary`), and
//! everything this process records is added in memory, so no check queries SQLite per request and
//! nothing is counted twice.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Utc};
use parking_lot::{Mutex, RwLock};

use crate::clock::ts;
use crate::clock::Clock;
use crate::control::{ControlPlane, UsageBatch, UsageRow};
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Search,
    Assemble,
    Embedding,
    DocumentWrite,
    DocumentDelete,
    /// Every authenticated tenant API call that passed the rate limiter.
    ApiCall,
    /// A recommendation request (personal, related, similar, trending, cart).
    Recommendation,
    /// What serving the tenant cost this node (operator-facing, never billed or shown to the
    /// tenant): CPU microseconds spent embedding its texts, in `count`.
    CpuEmbed,
    /// CPU microseconds of its searches and context assemblies (the SQLite and Tantivy part).
    CpuSearch,
    /// CPU microseconds of its recommendation trainings.
    CpuTrain,
    /// Objects its backups put into object storage: PUTs in `count`, bytes in `tokens`.
    StorePut,
}

pub const KINDS: usize = 11;

impl Kind {
    pub const ALL: [Kind; KINDS] = [
        Kind::Search,
        Kind::Assemble,
        Kind::Embedding,
        Kind::DocumentWrite,
        Kind::DocumentDelete,
        Kind::ApiCall,
        Kind::Recommendation,
        Kind::CpuEmbed,
        Kind::CpuSearch,
        Kind::CpuTrain,
        Kind::StorePut,
    ];
    /// The kinds a tenant is metered and billed by (and sees in `GET /api/v1/usage`): the first seven
    /// of [`Kind::ALL`]; the others are the operator's cost figures.
    pub const BILLED: &'static [Kind] = Kind::ALL.split_at(7).0;

    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Search => "search",
            Kind::Assemble => "assemble",
            Kind::Embedding => "embedding",
            Kind::DocumentWrite => "document_write",
            Kind::DocumentDelete => "document_delete",
            Kind::ApiCall => "api_call",
            Kind::Recommendation => "recommendation",
            Kind::CpuEmbed => "cpu_embed_us",
            Kind::CpuSearch => "cpu_search_us",
            Kind::CpuTrain => "cpu_train_us",
            Kind::StorePut => "store_put",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn index(&self) -> usize {
        match self {
            Kind::Search => 0,
            Kind::Assemble => 1,
            Kind::Embedding => 2,
            Kind::DocumentWrite => 3,
            Kind::DocumentDelete => 4,
            Kind::ApiCall => 5,
            Kind::Recommendation => 6,
            Kind::CpuEmbed => 7,
            Kind::CpuSearch => 8,
            Kind::CpuTrain => 9,
            Kind::StorePut => 10,
        }
    }
}

/// Counts and tokens by kind for one tenant and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MonthUsage {
    pub counts: [u64; KINDS],
    pub tokens: [u64; KINDS],
}

impl MonthUsage {
    pub fn count(&self, k: Kind) -> u64 {
        self.counts[k.index()]
    }
    pub fn tokens_of(&self, k: Kind) -> u64 {
        self.tokens[k.index()]
    }
    /// Searches and assembles.
    pub fn queries(&self) -> u64 {
        self.count(Kind::Search) + self.count(Kind::Assemble)
    }
    /// Tokens embedded: document chunks written plus `/embeddings` input.
    pub fn tokens_embedded(&self) -> u64 {
        self.tokens_of(Kind::DocumentWrite) + self.tokens_of(Kind::Embedding)
    }
    /// CPU seconds of a `Cpu*` kind (recorded in microseconds).
    pub fn cpu_seconds(&self, k: Kind) -> f64 {
        self.count(k) as f64 / 1e6
    }
    /// Tokens returned by context assembly.
    pub fn tokens_returned(&self) -> u64 {
        self.tokens_of(Kind::Assemble)
    }
    fn add(&mut self, k: Kind, count: u64, tokens: u64) {
        self.counts[k.index()] += count;
        self.tokens[k.index()] += tokens;
    }
    /// From `(kind, count, tokens)` rows; unknown kinds are ignored.
    pub fn from_rows(rows: &[(String, i64, i64)]) -> MonthUsage {
        let mut u = MonthUsage::default();
        for (kind, c, t) in rows {
            if let Some(k) = Kind::parse(kind) {
                u.add(k, (*c).max(0) as u64, (*t).max(0) as u64);
            }
        }
        u
    }
}

#[derive(Debug, Clone)]
struct Pending {
    count: u64,
    tokens: u64,
    at: String,
}

struct Month {
    ym: (i32, u32),
    delta: MonthUsage,
    seed: Option<MonthUsage>,
}

type BufKey = (String, Option<String>, Kind, (i32, u32));

#[derive(Clone)]
pub struct Meter {
    control: ControlPlane,
    clock: Clock,
    enabled: bool,
    /// Events of this process with id <= boundary were in control.db before it started.
    boundary: i64,
    /// Pending counts by (tenant, API key, kind, month).
    buffer: Arc<Mutex<HashMap<BufKey, Pending>>>,
    months: Arc<RwLock<HashMap<String, Arc<Mutex<Month>>>>>,
    /// One flush at a time, so the final flush at shutdown waits for one in progress. It holds the
    /// batch whose flush failed: the next flush stores it again under the same id, so a flush that
    /// was stored but whose answer was lost is not counted twice.
    flushing: Arc<tokio::sync::Mutex<Option<UsageBatch>>>,
    /// Every tenant's totals of the current month, kept once seeded ([`Meter::month_all`]).
    all: Arc<Mutex<Option<AllMonths>>>,
}

/// The current month's totals of every tenant: what control.db held when they were seeded, plus
/// everything recorded since (including what was still unflushed at that moment).
struct AllMonths {
    ym: (i32, u32),
    seed: Option<HashMap<String, MonthUsage>>,
    delta: HashMap<String, MonthUsage>,
}

impl Meter {
    /// A meter on `clock`; with `enabled = false` nothing is recorded (`billing.enforce = false`).
    pub async fn with(control: ControlPlane, clock: Clock, enabled: bool) -> Meter {
        let boundary = control.usage_mark().await.unwrap_or(i64::MAX);
        Meter {
            control,
            clock,
            enabled,
            boundary,
            buffer: Arc::new(Mutex::new(HashMap::new())),
            months: Arc::new(RwLock::new(HashMap::new())),
            flushing: Arc::new(tokio::sync::Mutex::new(None)),
            all: Arc::new(Mutex::new(None)),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn month_of(&self, tenant_id: &str) -> Arc<Mutex<Month>> {
        if let Some(m) = self.months.read().get(tenant_id) {
            return m.clone();
        }
        self.months
            .write()
            .entry(tenant_id.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(Month { ym: (0, 0), delta: MonthUsage::default(), seed: None })))
            .clone()
    }

    /// Records `count` units at once (e.g. documents of a bulk write).
    pub fn record_n(&self, tenant_id: &str, kind: Kind, count: u64, tokens: u64) {
        self.record_key(tenant_id, None, kind, count, tokens)
    }

    /// Records `count` units made with the API key `key_id` (None: a session, a webhook, a worker
    /// without a key, or the node's own work), so usage can be reported per key.
    pub fn record_key(&self, tenant_id: &str, key_id: Option<&str>, kind: Kind, count: u64, tokens: u64) {
        if !self.enabled || (count == 0 && tokens == 0) {
            return;
        }
        let now = self.clock.now();
        let ym = (now.year(), now.month());
        {
            let m = self.month_of(tenant_id);
            let mut m = m.lock();
            if m.ym != ym {
                *m = Month { ym, delta: MonthUsage::default(), seed: None };
            }
            m.delta.add(kind, count, tokens);
        }
        let mut buf = self.buffer.lock();
        let e =
            buf.entry((tenant_id.to_string(), key_id.map(str::to_string), kind, ym)).or_insert_with(|| Pending { count: 0, tokens: 0, at: ts(now) });
        e.count += count;
        e.tokens += tokens;
        // Under the buffer's lock, so a seeding of `all` sees each record either in the buffer or here.
        if let Some(all) = self.all.lock().as_mut().filter(|a| a.ym == ym) {
            all.delta.entry(tenant_id.to_string()).or_default().add(kind, count, tokens);
        }
    }

    fn all_snapshot(&self, ym: (i32, u32)) -> Option<HashMap<String, MonthUsage>> {
        let all = self.all.lock();
        let a = all.as_ref().filter(|a| a.ym == ym)?;
        let mut out = a.seed.clone()?;
        for (t, d) in &a.delta {
            let e = out.entry(t.clone()).or_default();
            *e = sum(*e, *d);
        }
        Some(out)
    }

    /// Every tenant's usage in the current month, exact, without re-reading the month's events: the
    /// first call (of a process or a month) reads control.db once, later calls add what was recorded
    /// since in memory. Tenants without usage are absent.
    ///
    /// With a control plane that other nodes share, other nodes' usage arrives there without passing
    /// through this meter: then this flushes and sums the month's events on every call.
    pub async fn month_all(&self) -> Result<HashMap<String, MonthUsage>, Error> {
        let now = self.clock.now();
        if self.control.shared() {
            self.flush().await;
            let (_, from, to) = crate::clock::period_of(now);
            return Ok(totals_by_tenant(self.control.usage_totals(None, ts(from), ts(to), None).await?));
        }
        let ym = (now.year(), now.month());
        if let Some(v) = self.all_snapshot(ym) {
            return Ok(v);
        }
        // No flush runs while seeding: what control.db holds and what the buffer holds stay apart.
        let one = self.flushing.lock().await;
        if let Some(v) = self.all_snapshot(ym) {
            return Ok(v);
        }
        {
            let buf = self.buffer.lock();
            let mut delta: HashMap<String, MonthUsage> = HashMap::new();
            for ((tenant, _, kind, m), p) in buf.iter() {
                if *m == ym {
                    delta.entry(tenant.clone()).or_default().add(*kind, p.count, p.tokens);
                }
            }
            // A batch that failed to flush is not stored (or its answer was lost: then it counts
            // here and there until the retry, which stores nothing).
            let month_start = ts(crate::clock::period_of(now).1);
            for r in one.iter().flat_map(|b| b.rows.iter()).filter(|r| r.at >= month_start) {
                if let Some(k) = Kind::parse(r.kind) {
                    delta.entry(r.tenant_id.clone()).or_default().add(k, r.count.max(0) as u64, r.tokens.max(0) as u64);
                }
            }
            *self.all.lock() = Some(AllMonths { ym, seed: None, delta });
        }
        let (_, from, to) = crate::clock::period_of(now);
        let (from, to) = (ts(from), ts(to));
        match self.control.usage_totals(None, from, to, None).await.map(totals_by_tenant) {
            Ok(seed) => {
                if let Some(a) = self.all.lock().as_mut().filter(|a| a.ym == ym) {
                    a.seed = Some(seed);
                }
            }
            Err(e) => {
                *self.all.lock() = None;
                return Err(e);
            }
        }
        drop(one);
        self.all_snapshot(ym).ok_or_else(|| Error::internal(anyhow::anyhow!("the month changed while its totals were read")))
    }

    /// Forgets every tenant's month totals, so the next [`Meter::month_all`] reads control.db again
    /// (after usage events were written other than through the meter: a tenant import).
    pub fn reset_all(&self) {
        *self.all.lock() = None;
    }

    /// This tenant's usage in the current month (seeding the counters from control.db once).
    pub async fn month(&self, tenant_id: &str) -> Result<MonthUsage, Error> {
        let now = self.clock.now();
        let ym = (now.year(), now.month());
        let m = self.month_of(tenant_id);
        {
            let mut g = m.lock();
            if g.ym != ym {
                *g = Month { ym, delta: MonthUsage::default(), seed: None };
            }
            if let Some(seed) = g.seed {
                return Ok(sum(seed, g.delta));
            }
        }
        let (_, from, to) = crate::clock::period_of(now);
        let rows = self.control.usage_totals(Some(tenant_id.to_string()), ts(from), ts(to), Some(self.boundary)).await?;
        let rows: Vec<(String, i64, i64)> = rows.into_iter().map(|(_, kind, c, t)| (kind, c, t)).collect();
        let seed = MonthUsage::from_rows(&rows);
        let mut g = m.lock();
        if g.ym == ym {
            g.seed = Some(seed);
            Ok(sum(seed, g.delta))
        } else {
            Ok(seed)
        }
    }

    /// The current month's usage if the counters are already seeded (no I/O).
    pub fn month_cached(&self, tenant_id: &str) -> Option<MonthUsage> {
        let now = self.clock.now();
        let m = self.months.read().get(tenant_id).cloned()?;
        let g = m.lock();
        (g.ym == (now.year(), now.month())).then_some(())?;
        g.seed.map(|s| sum(s, g.delta))
    }

    /// Drops a tenant's counters (after its deletion).
    pub fn forget(&self, tenant_id: &str) {
        self.months.write().remove(tenant_id);
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Writes the buffered counts in one transaction, as one batch with an id of its own. A batch
    /// that fails is kept and stored first, under the same id, by the next flush; the control plane
    /// stores a batch id once, so a retry never counts twice.
    pub async fn flush(&self) {
        let mut retry = self.flushing.lock().await;
        if let Some(batch) = retry.clone() {
            if let Err(e) = self.control.flush_usage(batch.clone()).await {
                tracing::warn!(error = %e, rows = batch.rows.len(), "usage flush failed; will retry");
                return;
            }
            crate::faults::point("usage.after_flush");
            *retry = None;
        }
        let rows: Vec<UsageRow> = std::mem::take(&mut *self.buffer.lock())
            .into_iter()
            .map(|((tenant_id, key_id, kind, _), p)| UsageRow {
                tenant_id,
                key_id,
                kind: kind.as_str(),
                count: p.count as i64,
                tokens: p.tokens as i64,
                at: p.at,
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let batch = UsageBatch { id: ulid::Ulid::new().to_string(), rows };
        match self.control.flush_usage(batch.clone()).await {
            Ok(()) => crate::faults::point("usage.after_flush"),
            Err(e) => {
                tracing::warn!(error = %e, rows = batch.rows.len(), "usage flush failed; will retry");
                *retry = Some(batch);
            }
        }
    }
}

fn sum(a: MonthUsage, b: MonthUsage) -> MonthUsage {
    let mut out = a;
    for i in 0..KINDS {
        out.counts[i] += b.counts[i];
        out.tokens[i] += b.tokens[i];
    }
    out
}

/// `(tenant, kind, calls, tokens)` rows ([`ControlStore::usage_totals`]) as usage by tenant.
///
/// [`ControlStore::usage_totals`]: crate::control::ControlStore::usage_totals
pub fn totals_by_tenant(rows: Vec<(String, String, i64, i64)>) -> HashMap<String, MonthUsage> {
    let mut out: HashMap<String, MonthUsage> = HashMap::new();
    for (t, kind, c, tok) in rows {
        if let Some(k) = Kind::parse(&kind) {
            out.entry(t).or_default().add(k, c.max(0) as u64, tok.max(0) as u64);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tenant's month as control.db sums it, after a flush.
    async fn from_db(meter: &Meter) -> HashMap<String, MonthUsage> {
        meter.flush().await;
        let (_, from, to) = crate::clock::period_of(meter.now());
        let (from, to) = (ts(from), ts(to));
        totals_by_tenant(meter.control.usage_totals(None, from, to, None).await.expect("totals"))
    }

    /// The month's totals kept in memory equal what control.db sums, whatever was flushed, unflushed
    /// or recorded while they were seeded, and after a reset; last month's usage does not count.
    #[tokio::test]
    async fn month_totals_in_memory_equal_the_events() {
        let dir = tempfile::tempdir().expect("dir");
        let control = ControlPlane::open(dir.path()).expect("control");
        let clock = Clock::default();
        // Events of a process that ran before this one.
        let before = Meter::with(control.clone(), clock.clone(), true).await;
        before.record_key("t1", Some("k1"), Kind::Search, 3, 0);
        before.record_key("t2", None, Kind::Assemble, 1, 50);
        before.flush().await;
        let meter = Meter::with(control.clone(), clock.clone(), true).await;
        meter.record_key("t1", Some("k2"), Kind::Search, 2, 0); // flushed before the seed
        meter.flush().await;
        meter.record_key("t3", None, Kind::Embedding, 1, 7); // in the buffer while seeding
        let seeded = meter.month_all().await.expect("seed");
        assert_eq!(seeded["t1"].count(Kind::Search), 5);
        assert_eq!(seeded["t3"].tokens_of(Kind::Embedding), 7);
        meter.record_key("t2", Some("k3"), Kind::Assemble, 1, 10); // after the seed
        meter.record_key("t4", None, Kind::ApiCall, 4, 0);
        let kept = meter.month_all().await.expect("kept");
        assert_eq!(kept["t2"].tokens_returned(), 60);
        assert_eq!(kept, from_db(&meter).await);
        // Nothing is counted twice once the buffer is flushed, or after a reset.
        assert_eq!(meter.month_all().await.expect("again"), from_db(&meter).await);
        meter.reset_all();
        assert_eq!(meter.month_all().await.expect("reset"), from_db(&meter).await);
        // A new month starts from nothing.
        let (_, _, next) = crate::clock::period_of(clock.now());
        clock.advance(next - clock.now() + chrono::Duration::seconds(1));
        assert!(meter.month_all().await.expect("next month").is_empty());
        meter.record_key("t1", None, Kind::Search, 1, 0);
        assert_eq!(meter.month_all().await.expect("next")["t1"].queries(), 1);
    }
}
