//! Continuous, Litestream-compatible backups of every tenant database and of the control plane.
//!
//! ```text
//!  commit ──► mark_dirty (once per batch: flag + marker file) ──► queue ──(paced: ≤ 1 sync per sync_interval)──► sync
//!  sync:  read new WAL frames ─► LTX level 0 ─► PUT ─► persist position (the recovery point) ─► maybe
//!         snapshot / checkpoint (TRUNCATE, only after everything is shipped)
//!  then, in its own task and slot when due: compaction ─► retention ─► purge after an erasure
//! ```
//!
//! * **Capture.** warren owns every connection, turns automatic checkpoints off on all of them and asks
//!   SQLite not to checkpoint on close. The WAL is therefore only checkpointed here, after its frames
//!   are shipped; the WAL reader continues from the shipped position while the salts and the last
//!   shipped frame still match, and otherwise ships a full image at the next TXID.
//! * **Idle costs nothing.** There is one process-wide loop. A database enters its queue only when a
//!   transaction commits; an idle tenant has no timer, no open handle and causes no object request.
//! * **Crash safety.** The shipped position (TXID, WAL offset, salts, running checksum) is persisted
//!   after each PUT, beside the database. The first sync of a database in a process lists its replica;
//!   if the replica's newest TXID differs from the recorded one (a crash between PUT and persist), the
//!   next TXID is a full snapshot, so the chain never has a gap or a duplicate. Databases with changes
//!   not yet shipped have a marker file in `<data dir>/.backup-pending/`; on start-up each is opened and
//!   caught up.
//! * **Faults.** A failed sync keeps the database queued with exponential backoff; the WAL simply grows
//!   until storage returns. Lag and the last error are in `/metrics` and the admin backup endpoint.

pub mod ltx;
mod replica;
pub mod restore;
pub mod store;
pub mod wal;

pub use replica::DbReplica;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::BackupSettings;
pub use store::{FileInfo, Replica, ReplicaRoot};

/// Directory of marker files, one per database with changes not yet shipped.
pub const PENDING_DIR: &str = ".backup-pending";
/// Which database a replica belongs to. Its objects live under [`ReplicaKey::path`] of the replica
/// root, and its pending-marker file is named by [`ReplicaKey::marker_name`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplicaKey {
    /// `control.db`: `<url>/control`.
    Control,
    /// A tenant's `tenant.db`: `<url>/tenants/<id>`.
    Tenant(String),
}

impl ReplicaKey {
    pub fn tenant(id: &str) -> ReplicaKey {
        ReplicaKey::Tenant(id.to_string())
    }

    /// The replica's folder under the root URL.
    pub fn path(&self) -> String {
        match self {
            ReplicaKey::Control => "control".into(),
            ReplicaKey::Tenant(id) => format!("tenants/{id}"),
        }
    }

    pub fn tenant_id(&self) -> Option<&str> {
        match self {
            ReplicaKey::Control => None,
            ReplicaKey::Tenant(id) => Some(id),
        }
    }

    fn marker_name(&self) -> &str {
        match self {
            ReplicaKey::Control => "control",
            ReplicaKey::Tenant(id) => id,
        }
    }

    fn from_marker(name: &str) -> ReplicaKey {
        if name == "control" {
            ReplicaKey::Control
        } else {
            ReplicaKey::Tenant(name.to_string())
        }
    }
}

impl std::fmt::Display for ReplicaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path())
    }
}

/// How the service reopens a closed tenant that still has changes to ship (the registry does).
pub trait Reopen: Send + Sync {
    fn reopen(&self, tenant_id: String) -> futures::future::BoxFuture<'static, anyhow::Result<()>>;
}

/// A database whose writer lock the shipper can take (to read a consistent full image and to checkpoint).
pub trait Source: Send + Sync {
    /// Runs `f` with the writer connection while holding the database's write lock.
    fn locked(&self, f: &mut dyn FnMut(&Connection) -> anyhow::Result<()>) -> anyhow::Result<()>;
}

/// Sets the connection up for replication: no automatic checkpoints, none on close either.
pub fn prepare_connection(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA wal_autocheckpoint=0;")?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(())
}

/// The shipped position of one database, persisted beside it as `<db>.backup.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Position {
    pub txid: u64,
    pub cursor: wal::Cursor,
    pub commit: u32,
    pub replicated_at_ms: i64,
    pub last_snapshot_ms: i64,
    /// An erasure asked for a fresh snapshot that has not been shipped yet (set by the CLI's offline
    /// erasure; a running server uses [`DbReplica::erasure`]).
    #[serde(default)]
    pub erasure_requested: bool,
    /// The snapshot shipped after the latest erasure: objects older than it are deleted once
    /// `backup.erasure_grace_secs` has passed since `at_ms`.
    #[serde(default)]
    pub erasure: Option<ErasureMark>,
    /// The database was created here under a new id and has never been shipped, so its replica is
    /// known to be empty: the first sync ships a full image without listing the replica (a LIST per
    /// new tenant is what made creating thousands of tenants slow). Cleared by the first ship. A
    /// restore or import removes the position, so those list as before.
    #[serde(default)]
    pub new_replica: bool,
}

/// The fresh snapshot of an erasure, persisted with the position until the older objects are gone.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ErasureMark {
    pub at_ms: i64,
    pub snapshot_txid: u64,
}

/// Records that a database just created under a new id has an empty replica (see
/// [`Position::new_replica`]).
pub fn mark_new_replica(db: &Path) -> anyhow::Result<()> {
    write_position(db, &Position { new_replica: true, ..Position::default() })
}

/// Records, with no server running, that an erasure needs a fresh snapshot at the next sync.
pub fn request_erasure_snapshot(db: &Path) -> anyhow::Result<()> {
    let mut p = read_position(db).unwrap_or_default();
    p.erasure_requested = true;
    write_position(db, &p)
}

fn position_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".backup.json");
    PathBuf::from(s)
}

pub fn read_position(db: &Path) -> Option<Position> {
    std::fs::read(position_path(db)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn write_position(db: &Path, p: &Position) -> anyhow::Result<()> {
    let path = position_path(db);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(p)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Whether a database has something to ship: never replicated, or WAL frames after the shipped position
/// (e.g. migrations run at open, or commits left by a crash).
pub fn needs_sync(db: &Path) -> bool {
    match read_position(db) {
        None => true,
        // Never shipped (a new tenant's position says only that its replica is empty): ship it.
        Some(p) if p.txid == 0 => true,
        Some(p) => !matches!(wal::read_frames(db, &p.cursor), Ok(wal::Read_::Nothing)),
    }
}

/// Forgets the shipped position (after a restore replaced the file): the next sync ships a full image.
pub fn reset_position(db: &Path) {
    let _ = std::fs::remove_file(position_path(db));
}

/// What the admin endpoint shows for one replica.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub replica_url: String,
    /// Newest replicated TXID as Litestream prints it (16 hex digits), if any.
    pub last_txid: Option<String>,
    pub last_replicated_at: Option<String>,
    /// Seconds since the oldest change that is not yet replicated (0 when caught up).
    pub lag_secs: f64,
    pub pending: bool,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

#[derive(Default)]
struct Health {
    last_error: Option<String>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A replica behind its database (see [`BackupService::most_lagging`]).
#[derive(Debug, Clone, Serialize)]
pub struct Lagging {
    pub tenant_id: String,
    pub lag_secs: f64,
    /// Whether the database is open (else it waits, closed, for a catch-up).
    pub open: bool,
    pub consecutive_failures: u32,
}

/// Where a tenant's object-store PUTs are reported: `(tenant id, bytes put)`, one call per object.
/// Whether this node may write a tenant's replica (see [`BackupService::set_fence`]).
pub type Fence = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub type PutSink = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The backup service: one per process.
pub struct BackupService {
    root: ReplicaRoot,
    cfg: BackupSettings,
    data_dir: PathBuf,
    queue: Mutex<HashMap<ReplicaKey, Arc<DbReplica>>>,
    /// Every replica that was queued in this process and is still open (for lag and status).
    active: Mutex<HashMap<ReplicaKey, Weak<DbReplica>>>,
    /// Replicas whose database is closed but has unshipped changes: reopened by `reopen`.
    orphans: Mutex<HashMap<String, Instant>>,
    health: Mutex<HashMap<ReplicaKey, Health>>,
    syncs: Arc<Semaphore>,
    /// Slots of maintenance passes (compaction, retention), apart from the sync slots.
    maintenance: Arc<Semaphore>,
    wake: tokio::sync::Notify,
    /// Sources that live as long as the service (the control plane).
    held: Mutex<Vec<Arc<dyn Source>>>,
    /// Where each tenant's PUTs and their bytes are reported (set once by the server).
    costs: std::sync::OnceLock<PutSink>,
    /// In a cluster: whether this node may still write a tenant's replica (it holds the lease).
    pub(crate) fence: std::sync::OnceLock<Fence>,
    /// The object list of each replica whose database closed in this process, with the TXID it
    /// ended at: a reopen whose position still says that TXID needs no LIST (bounded by
    /// `backup.listing_cache_entries`). A list is not kept when a level-0 PUT may have landed without
    /// its position (a failed or cancelled ship), and an entry is taken out when used; a new process
    /// lists once per database.
    listings: moka::sync::Cache<ReplicaKey, Arc<(u64, Vec<FileInfo>)>>,
}

impl BackupService {
    pub fn new(url: &str, cfg: BackupSettings, data_dir: &Path) -> anyhow::Result<Arc<BackupService>> {
        let creds = store::S3Credentials {
            access_key_id: cfg.access_key_id.clone(),
            secret_access_key: cfg.secret_access_key.as_ref().map(|s| s.expose().to_string()),
        };
        let root = ReplicaRoot::parse(url, &creds, Duration::from_secs(cfg.request_timeout_secs.max(1)))?.with_create_only(cfg.conditional_writes);
        std::fs::create_dir_all(data_dir.join(PENDING_DIR))?;
        Ok(Arc::new(BackupService {
            root,
            listings: moka::sync::Cache::new(cfg.listing_cache_entries),
            syncs: Arc::new(Semaphore::new(cfg.max_concurrent_syncs.max(1))),
            maintenance: Arc::new(Semaphore::new(cfg.max_concurrent_maintenance.max(1))),
            cfg,
            data_dir: data_dir.to_path_buf(),
            queue: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            held: Mutex::new(Vec::new()),
            costs: std::sync::OnceLock::new(),
            fence: std::sync::OnceLock::new(),
        }))
    }

    /// Reports every object put into a tenant's replica (1 PUT, its bytes). Set once.
    pub fn set_cost_sink(&self, sink: PutSink) {
        let _ = self.costs.set(sink);
    }

    /// In a cluster: a tenant's objects are put only while `fence` says this node holds its lease.
    pub fn set_fence(&self, fence: Fence) {
        let _ = self.fence.set(fence);
    }

    pub fn root(&self) -> &ReplicaRoot {
        &self.root
    }

    pub fn settings(&self) -> &BackupSettings {
        &self.cfg
    }

    /// The replica handle for a database, created when the database is opened. `source` is the
    /// database's owner (its handle), through which the shipper takes the writer lock.
    pub fn replica_for(self: &Arc<Self>, key: ReplicaKey, db_path: &Path, source: Weak<dyn Source>) -> Arc<DbReplica> {
        DbReplica::new(self, key, db_path, source)
    }

    /// Keeps a source alive for the service's lifetime.
    pub fn hold(&self, s: Arc<dyn Source>) {
        self.held.lock().push(s);
    }

    fn marker(&self, key: &ReplicaKey) -> PathBuf {
        self.data_dir.join(PENDING_DIR).join(key.marker_name())
    }

    fn enqueue(&self, r: Arc<DbReplica>) {
        self.active.lock().insert(r.key.clone(), Arc::downgrade(&r));
        self.queue.lock().insert(r.key.clone(), r);
    }

    /// Databases with changes not yet shipped, from the marker files.
    pub fn pending_markers(&self) -> Vec<ReplicaKey> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.data_dir.join(PENDING_DIR)) {
            for e in rd.flatten() {
                out.push(ReplicaKey::from_marker(&e.file_name().to_string_lossy()));
            }
        }
        out
    }

    /// Queues a closed tenant for catch-up (start-up after a crash, a failed ship on close, a restore).
    pub fn catch_up_tenant(&self, tenant_id: &str) {
        self.orphans.lock().insert(tenant_id.to_string(), Instant::now());
        let _ = std::fs::File::create(self.marker(&ReplicaKey::tenant(tenant_id)));
        self.wake.notify_one();
    }

    /// The process-wide replication loop. Runs until `stop`, then returns (shutdown ships the rest).
    pub async fn run(self: Arc<Self>, stop: CancellationToken, reopen: Arc<dyn Reopen>) {
        for m in self.pending_markers() {
            if let ReplicaKey::Tenant(id) = m {
                self.orphans.lock().insert(id, Instant::now());
            }
        }
        // Each database is paced on its own: it syncs at most once per `sync_interval_ms`, counted
        // from the start of its previous sync, and the loop looks every eighth of that. A database
        // that has not synced for an interval ships within an eighth of one after its commit, and
        // the databases that write all the time are spread over the interval instead of all
        // starting at one tick and queueing for the sync slots together.
        let interval = Duration::from_millis(self.cfg.sync_interval_ms.max(10));
        let mut tick = tokio::time::interval((interval / 8).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut published = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.round(&reopen, interval).await;
            if published.elapsed() >= interval {
                self.publish_metrics();
                published = Instant::now();
            }
        }
    }

    /// One round: starts a sync for every queued database whose backoff has passed and whose last
    /// sync started at least `interval` ago, and reopens closed tenants that still have changes.
    async fn round(self: &Arc<Self>, reopen: &Arc<dyn Reopen>, interval: Duration) {
        let now = Instant::now();
        let due: Vec<Arc<DbReplica>> = {
            let health = self.health.lock();
            let mut q = self.queue.lock();
            let keys: Vec<ReplicaKey> = q
                .iter()
                .filter(|(k, r)| health.get(*k).and_then(|h| h.retry_at).is_none_or(|t| t <= now) && r.paced_due(interval, now))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| q.remove(&k)).collect()
        };
        // Oldest changes first; each waits for a sync slot (the semaphore is FIFO), so no database is
        // starved behind others however many are dirty at once.
        let mut due = due;
        due.sort_by_key(|r| r.dirty_since().unwrap_or(now));
        for r in due {
            let slots = self.syncs.clone();
            tokio::spawn(async move {
                let queued = Instant::now();
                let Ok(_permit) = slots.acquire_owned().await else { return };
                metrics::histogram!("warren_backup_slot_wait_seconds").record(queued.elapsed().as_secs_f64());
                let _ = r.sync().await;
            });
        }
        let orphans: Vec<String> = {
            let health = self.health.lock();
            let mut o = self.orphans.lock();
            let ids: Vec<String> = o
                .iter()
                .filter(|(id, t)| **t <= now && health.get(&ReplicaKey::tenant(id)).and_then(|h| h.retry_at).is_none_or(|t| t <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                o.remove(id);
            }
            ids
        };
        for id in orphans {
            // Reopen only as many as can sync now: a storm of catch-ups (thousands of new tenants, a
            // restart after a crash) must not fill the handle cache with tenants waiting to ship.
            if self.syncs.available_permits() == 0 {
                self.orphans.lock().insert(id, now);
                continue;
            }
            if let Err(e) = reopen.reopen(id.clone()).await {
                tracing::warn!(tenant = %id, error = %e, "reopening a tenant for backup catch-up failed");
                let key = ReplicaKey::tenant(&id);
                if !self.data_dir.join(&id).exists() {
                    // The tenant is gone (deleted): nothing left to ship.
                    let _ = std::fs::remove_file(self.marker(&key));
                    continue;
                }
                let backoff = self.record_failure(&key, &e);
                self.orphans.lock().insert(id, Instant::now() + backoff);
            }
        }
    }

    fn record_failure(&self, key: &ReplicaKey, e: &anyhow::Error) -> Duration {
        let mut h = self.health.lock();
        let h = h.entry(key.clone()).or_default();
        h.failures += 1;
        h.last_error = Some(format!("{e:#}"));
        let exp = (h.failures - 1).min(16);
        let backoff = Duration::from_millis((self.cfg.retry_min_ms.max(1) << exp).min(self.cfg.retry_max_ms.max(1)));
        h.retry_at = Some(Instant::now() + backoff);
        metrics::counter!("warren_backup_errors_total").increment(1);
        backoff
    }

    fn record_success(&self, key: &ReplicaKey) {
        let mut h = self.health.lock();
        if let Some(x) = h.get_mut(key) {
            if x.failures > 0 {
                tracing::info!(replica = %key, after_failures = x.failures, "replication recovered");
            }
            x.failures = 0;
            x.retry_at = None;
        }
    }

    fn publish_metrics(&self) {
        let live: Vec<Arc<DbReplica>> = {
            let mut active = self.active.lock();
            active.retain(|_, w| w.strong_count() > 0);
            active.values().filter_map(Weak::upgrade).collect()
        };
        let queued = live.iter().filter_map(|r| r.lag()).fold(0.0f64, f64::max);
        metrics::gauge!("warren_backup_lag_seconds").set(queued);
        metrics::gauge!("warren_backup_pending").set(self.queue.lock().len() as f64 + self.orphans.lock().len() as f64);
        let failing = self.health.lock().values().filter(|h| h.failures > 0).count();
        metrics::gauge!("warren_backup_failing_replicas").set(failing as f64);
    }

    /// Status of one replica, from memory when its database is active, else from its position file.
    pub fn status(&self, key: &ReplicaKey, db_path: &Path) -> Status {
        let pos = read_position(db_path);
        let active = self.active.lock().get(key).and_then(Weak::upgrade);
        let lag = active.as_ref().and_then(|r| r.lag());
        let pending = lag.is_some() || self.marker(key).exists();
        let h = self.health.lock();
        let h = h.get(key);
        Status {
            replica_url: self.root.replica(&key.path()).url(),
            last_txid: pos.as_ref().filter(|p| p.txid > 0).map(|p| format!("{:016x}", p.txid)),
            last_replicated_at: pos
                .as_ref()
                .filter(|p| p.txid > 0)
                .map(|p| crate::clock::ts(chrono::DateTime::from_timestamp_millis(p.replicated_at_ms).unwrap_or_default())),
            lag_secs: lag.unwrap_or(0.0),
            pending,
            last_error: h.and_then(|h| h.last_error.clone()),
            consecutive_failures: h.map(|h| h.failures).unwrap_or(0),
        }
    }

    /// The `n` tenant replicas furthest behind: open databases with unshipped changes (lag since
    /// the oldest of them) and closed ones waiting for a catch-up (lag since their first unshipped
    /// change), with the consecutive failures of each, most lag first. Blocking (stats files).
    pub fn most_lagging(&self, n: usize) -> Vec<Lagging> {
        let mut out: Vec<Lagging> = Vec::new();
        let active: Vec<Arc<DbReplica>> = self.active.lock().values().filter_map(Weak::upgrade).collect();
        for r in active {
            if let (Some(lag), Some(id)) = (r.lag(), r.key.tenant_id()) {
                out.push(Lagging { tenant_id: id.to_string(), lag_secs: lag, open: true, consecutive_failures: 0 });
            }
        }
        // A closed database waiting for its catch-up has been behind since its pending marker was
        // written (at its first unshipped change). Blocking: a stat per waiting tenant.
        let orphans: Vec<String> = self.orphans.lock().keys().filter(|id| !out.iter().any(|l| &l.tenant_id == *id)).cloned().collect();
        let now = std::time::SystemTime::now();
        for id in orphans {
            let since = std::fs::metadata(self.marker(&ReplicaKey::tenant(&id))).and_then(|m| m.modified()).ok();
            let lag = since.and_then(|t| now.duration_since(t).ok()).map_or(0.0, |d| d.as_secs_f64());
            out.push(Lagging { tenant_id: id, lag_secs: lag, open: false, consecutive_failures: 0 });
        }
        let health = self.health.lock();
        for l in &mut out {
            l.consecutive_failures = health.get(&ReplicaKey::tenant(&l.tenant_id)).map_or(0, |h| h.failures);
        }
        drop(health);
        out.sort_by(|a, b| b.lag_secs.total_cmp(&a.lag_secs).then_with(|| a.tenant_id.cmp(&b.tenant_id)));
        out.truncate(n);
        out
    }

    /// Ships everything still queued (shutdown), each within the close timeout.
    pub async fn flush_all(&self) {
        let all: Vec<Arc<DbReplica>> = self.queue.lock().drain().map(|(_, r)| r).collect();
        let t = Duration::from_secs(self.cfg.close_timeout_secs.max(1));
        let _ = tokio::time::timeout(t, futures::future::join_all(all.iter().map(|r| r.sync()))).await;
    }

    /// Ships what `tenant_id` has committed and waits until it is in the replica, within
    /// `backup.sync_ack_timeout_ms` (the `sync` durability). Concurrent callers share the ships:
    /// one ship covers every commit made before it read the WAL (group commit).
    pub async fn ship_now(&self, tenant_id: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let key = ReplicaKey::tenant(tenant_id);
        let replica = self.active.lock().get(&key).and_then(Weak::upgrade);
        let Some(r) = replica else {
            // Never queued in this process: nothing was written here since it opened.
            return Ok(());
        };
        let t = Duration::from_millis(self.cfg.sync_ack_timeout_ms.max(1));
        let shipped = tokio::time::timeout(t, r.sync()).await.map_err(|_| anyhow::anyhow!("the replica did not take the write within {t:?}"))?;
        metrics::histogram!("warren_backup_sync_ack_seconds").record(started.elapsed().as_secs_f64());
        shipped
    }

    /// Deletes a tenant's whole replica (after the grace period of a deleted tenant).
    pub async fn delete_replica(&self, key: &ReplicaKey) -> anyhow::Result<usize> {
        self.root.replica(&key.path()).delete_all().await
    }
}
