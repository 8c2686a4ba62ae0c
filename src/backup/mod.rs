//! Continuous, Litestream-compatible backups of every tenant database and of the control plane.
//!
//! ```text
//!  commit ──► mark_dirty (once per batch: flag + marker file) ──► queue ──(≤ sync_interval)──► sync
//!  sync:  read new WAL frames ─► LTX level 0 ─► PUT ─► persist position ─► maybe compact / snapshot /
//!         retention / checkpoint (TRUNCATE, only after everything is shipped)
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
pub mod restore;
pub mod store;
pub mod wal;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
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
    wake: tokio::sync::Notify,
    /// Sources that live as long as the service (the control plane).
    held: Mutex<Vec<Arc<dyn Source>>>,
}

impl BackupService {
    pub fn new(url: &str, cfg: BackupSettings, data_dir: &Path) -> anyhow::Result<Arc<BackupService>> {
        let creds = store::S3Credentials {
            access_key_id: cfg.access_key_id.clone(),
            secret_access_key: cfg.secret_access_key.as_ref().map(|s| s.expose().to_string()),
        };
        let root = ReplicaRoot::parse(url, &creds, Duration::from_secs(cfg.request_timeout_secs.max(1)))?;
        std::fs::create_dir_all(data_dir.join(PENDING_DIR))?;
        Ok(Arc::new(BackupService {
            root,
            syncs: Arc::new(Semaphore::new(cfg.max_concurrent_syncs.max(1))),
            cfg,
            data_dir: data_dir.to_path_buf(),
            queue: Mutex::new(HashMap::new()),
            active: Mutex::new(HashMap::new()),
            orphans: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            held: Mutex::new(Vec::new()),
        }))
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
        Arc::new(DbReplica {
            replica: self.root.replica(&key.path()),
            key,
            db_path: db_path.to_path_buf(),
            svc: Arc::downgrade(self),
            dirty: Mutex::new(None),
            ship: tokio::sync::Mutex::new(None),
            source,
        })
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
        let interval = Duration::from_millis(self.cfg.sync_interval_ms.max(10));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.round(&reopen).await;
        }
    }

    /// One round: starts a sync for every queued database whose backoff has passed, and reopens
    /// closed tenants that still have changes.
    async fn round(self: &Arc<Self>, reopen: &Arc<dyn Reopen>) {
        let now = Instant::now();
        let due: Vec<Arc<DbReplica>> = {
            let health = self.health.lock();
            let mut q = self.queue.lock();
            let keys: Vec<ReplicaKey> = q.keys().filter(|k| health.get(*k).and_then(|h| h.retry_at).is_none_or(|t| t <= now)).cloned().collect();
            keys.into_iter().filter_map(|k| q.remove(&k)).collect()
        };
        // Oldest changes first; each waits for a sync slot (the semaphore is FIFO), so no database is
        // starved behind others however many are dirty at once.
        let mut due = due;
        due.sort_by_key(|r| r.dirty_since().unwrap_or(now));
        for r in due {
            let slots = self.syncs.clone();
            tokio::spawn(async move {
                let Ok(_permit) = slots.acquire_owned().await else { return };
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
        self.publish_metrics();
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

    /// Ships everything still queued (shutdown), each within the close timeout.
    pub async fn flush_all(&self) {
        let all: Vec<Arc<DbReplica>> = self.queue.lock().drain().map(|(_, r)| r).collect();
        let t = Duration::from_secs(self.cfg.close_timeout_secs.max(1));
        let _ = tokio::time::timeout(t, futures::future::join_all(all.iter().map(|r| r.sync()))).await;
    }

    /// Deletes a tenant's whole replica (after the grace period of a deleted tenant).
    pub async fn delete_replica(&self, key: &ReplicaKey) -> anyhow::Result<usize> {
        self.root.replica(&key.path()).delete_all().await
    }
}

/// The replication state of one database while it is open.
pub struct DbReplica {
    key: ReplicaKey,
    db_path: PathBuf,
    replica: Replica,
    svc: Weak<BackupService>,
    /// `Some(since)` while changes are waiting; guarded together with the marker file.
    dirty: Mutex<Option<Instant>>,
    /// Shipping state; loaded on the first sync in this process.
    ship: tokio::sync::Mutex<Option<ShipState>>,
    source: Weak<dyn Source>,
}

struct ShipState {
    pos: Position,
    files: Vec<FileInfo>,
    /// Force a full image at the next TXID (history broken or unknown).
    full: bool,
    last_compaction: [Instant; 4],
}

enum Batch {
    /// (TXID, L0 bytes, optional L9 bytes of the same image, new cursor, commit, pages, timestamp)
    Ready {
        l0: Bytes,
        l9: Option<Bytes>,
        cursor: wal::Cursor,
        commit: u32,
        ts: i64,
    },
    Nothing,
}

impl DbReplica {
    pub fn key(&self) -> &ReplicaKey {
        &self.key
    }

    fn dirty_since(&self) -> Option<Instant> {
        *self.dirty.lock()
    }

    fn lag(&self) -> Option<f64> {
        self.dirty.lock().map(|t| t.elapsed().as_secs_f64())
    }

    /// Called after every committed write (blocking context). Cheap after the first of a batch.
    pub fn mark_dirty(self: &Arc<Self>) {
        let mut d = self.dirty.lock();
        if d.is_some() {
            return;
        }
        *d = Some(Instant::now());
        let Some(svc) = self.svc.upgrade() else { return };
        // The marker is written under the flag's lock (sync removes it under the same lock).
        if let Err(e) = std::fs::File::create(svc.marker(&self.key)) {
            tracing::warn!(replica = %self.key, error = %e, "writing the backup marker failed");
        }
        drop(d); // never hold the flag while taking the service's locks (they take flags in turn)
        svc.enqueue(self.clone());
    }

    /// Ships everything committed so far. Also runs compaction, snapshots, retention and the checkpoint
    /// when due. Errors are recorded (status, metrics) and the database stays queued with backoff.
    pub async fn sync(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(svc) = self.svc.upgrade() else { return Ok(()) };
        if self.source.upgrade().is_none() && self.dirty.lock().is_none() {
            return Ok(()); // closed, and its close shipped everything
        }
        let since = self.dirty.lock().take();
        let result = self.sync_inner(&svc).await;
        match &result {
            Ok(()) => {
                svc.record_success(&self.key);
                if let Some(t) = since {
                    metrics::histogram!("warren_backup_rpo_seconds").record(t.elapsed().as_secs_f64());
                }
                let d = self.dirty.lock();
                if d.is_none() {
                    let _ = std::fs::remove_file(svc.marker(&self.key));
                }
            }
            Err(e) => {
                let backoff = svc.record_failure(&self.key, e);
                tracing::warn!(replica = %self.key, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "replication failed");
                let mut d = self.dirty.lock();
                let t = match (*d, since) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or_else(Instant::now),
                };
                *d = Some(t);
                drop(d);
                if self.source.upgrade().is_some() {
                    svc.enqueue(self.clone());
                } else if let Some(id) = self.key.tenant_id() {
                    // Closed meanwhile: catch up by reopening it later.
                    svc.orphans.lock().insert(id.to_string(), Instant::now() + backoff);
                }
            }
        }
        result
    }

    async fn sync_inner(self: &Arc<Self>, svc: &Arc<BackupService>) -> anyhow::Result<()> {
        let Some(source) = self.source.upgrade() else {
            anyhow::bail!("the database is closed");
        };
        let mut guard = self.ship.lock().await;
        if guard.is_none() {
            *guard = Some(self.load_state().await?);
        }
        let st = guard.as_mut().expect("loaded");
        let next = st.pos.txid + 1;
        let (db, pos, full) = (self.db_path.clone(), st.pos.clone(), st.full);
        let src = source.clone();
        let batch = tokio::task::spawn_blocking(move || build_batch(&db, &pos, full, next, &*src)).await??;
        if let Batch::Ready { l0, l9, cursor, commit, ts } = batch {
            let bytes = l0.len() as u64;
            self.replica.put(0, next, next, l0, ts).await.with_context(|| format!("uploading level-0 TXID {next:016x}"))?;
            st.files.push(FileInfo { level: 0, min: next, max: next, size: bytes, created_ms: ts });
            metrics::counter!("warren_backup_puts_total").increment(1);
            metrics::counter!("warren_backup_bytes_total").increment(bytes);
            if let Some(l9) = l9 {
                let n = l9.len() as u64;
                self.replica.put(9, 1, next, l9, ts).await.with_context(|| format!("uploading snapshot 1-{next:016x}"))?;
                st.files.push(FileInfo { level: 9, min: 1, max: next, size: n, created_ms: ts });
                st.pos.last_snapshot_ms = ts;
                metrics::counter!("warren_backup_puts_total").increment(1);
            }
            st.pos.txid = next;
            st.pos.cursor = cursor;
            st.pos.commit = commit;
            st.pos.replicated_at_ms = store::now_ms();
            st.full = false;
            let (db, pos) = (self.db_path.clone(), st.pos.clone());
            tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
        }
        self.maintain(svc, st, &source).await
    }

    /// Loads the persisted position and reconciles it with the replica's newest TXID.
    async fn load_state(&self) -> anyhow::Result<ShipState> {
        let db = self.db_path.clone();
        let mut pos = tokio::task::spawn_blocking(move || read_position(&db)).await?.unwrap_or_default();
        let files = self.replica.list().await.context("listing the replica")?;
        let newest = files.iter().map(|f| f.max).max().unwrap_or(0);
        // A replica that no longer restores (files lost or removed) gets a fresh full image too.
        let broken = !files.is_empty() && restore::plan(&files, restore::Target::Latest).is_err();
        let full = newest != pos.txid || pos.txid == 0 || broken;
        if full {
            if pos.txid != 0 || newest != 0 {
                tracing::info!(replica = %self.key, recorded = pos.txid, replica_newest = newest, "replica and position differ; shipping a full image next");
            }
            pos.txid = newest;
        }
        let now = Instant::now();
        Ok(ShipState { pos, files, full, last_compaction: [now; 4] })
    }

    /// Compaction, snapshots, retention and the checkpoint, each when due.
    async fn maintain(&self, svc: &Arc<BackupService>, st: &mut ShipState, source: &Arc<dyn Source>) -> anyhow::Result<()> {
        let cfg = &svc.cfg;
        let intervals = [0, cfg.l1_interval_secs, cfg.l2_interval_secs, cfg.l3_interval_secs];
        for level in 1..=3u8 {
            if st.last_compaction[level as usize].elapsed() >= Duration::from_secs(intervals[level as usize]) {
                self.compact(st, level).await?;
                st.last_compaction[level as usize] = Instant::now();
            }
        }
        let now = store::now_ms();
        if st.pos.txid > 0 && now - st.pos.last_snapshot_ms >= (cfg.snapshot_interval_secs as i64) * 1000 {
            let (db, pos, src) = (self.db_path.clone(), st.pos.clone(), source.clone());
            let snap = tokio::task::spawn_blocking(move || snapshot_at(&db, &pos, &*src)).await??;
            if let Some((bytes, ts)) = snap {
                let n = bytes.len() as u64;
                self.replica.put(9, 1, st.pos.txid, bytes, ts).await.context("uploading a snapshot")?;
                st.files.retain(|f| !(f.level == 9 && f.max == st.pos.txid));
                st.files.push(FileInfo { level: 9, min: 1, max: st.pos.txid, size: n, created_ms: ts });
                st.pos.last_snapshot_ms = ts;
                metrics::counter!("warren_backup_puts_total").increment(1);
                let (db, pos) = (self.db_path.clone(), st.pos.clone());
                tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
            }
        }
        self.retention(st, cfg).await?;
        // Checkpoint once the WAL is large and everything in it is shipped.
        let (db, pos, src, limit) = (self.db_path.clone(), st.pos.clone(), source.clone(), cfg.checkpoint_pages);
        let done = tokio::task::spawn_blocking(move || checkpoint_if_large(&db, &pos, &*src, limit)).await??;
        if done {
            st.pos.cursor.checkpointed = true;
            let (db, pos) = (self.db_path.clone(), st.pos.clone());
            tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
        }
        Ok(())
    }

    /// Merges the files of `level - 1` newer than everything at `level` into one file at `level`.
    async fn compact(&self, st: &mut ShipState, level: u8) -> anyhow::Result<()> {
        let floor = st.files.iter().filter(|f| f.level == level).map(|f| f.max).max().unwrap_or(0);
        let mut inputs: Vec<FileInfo> = st.files.iter().filter(|f| f.level == level - 1 && f.min > floor).copied().collect();
        inputs.sort_by_key(|f| (f.min, f.max));
        // Only a contiguous run can be merged. It starts right after `floor`, or, when retention removed
        // the files there, at a file that the oldest snapshot reaches (so no gap is ever exposed).
        let oldest_snap = st.files.iter().filter(|f| f.level == 9).map(|f| f.max).min().unwrap_or(0);
        let mut run: Vec<FileInfo> = Vec::new();
        for f in inputs {
            let ok = match run.last() {
                Some(l) => f.min == l.max + 1,
                None => floor == 0 || f.min == floor + 1 || f.min <= oldest_snap + 1,
            };
            if !ok {
                break;
            }
            run.push(f);
        }
        if run.is_empty() {
            return Ok(());
        }
        let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut header = None;
        for f in &run {
            let b = self.replica.get(f).await.with_context(|| format!("reading {} for compaction", ltx::file_name(f.min, f.max)))?;
            let d = tokio::task::spawn_blocking(move || ltx::decode(&b)).await??;
            pages.extend(d.pages);
            header = Some(d.header);
        }
        let last = header.expect("run is not empty");
        let (min, max) = (run[0].min, run[run.len() - 1].max);
        let h = ltx::Header { page_size: last.page_size, commit: last.commit, min_txid: min, max_txid: max, timestamp_ms: last.timestamp_ms };
        let bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let mut e = ltx::Encoder::new(h)?;
            for (p, data) in pages.range(..=h.commit) {
                e.push_page(*p, data)?;
            }
            Ok(e.finish())
        })
        .await??;
        let n = bytes.len() as u64;
        self.replica.put(level, min, max, bytes.into(), h.timestamp_ms).await.with_context(|| format!("uploading level-{level} compaction"))?;
        st.files.push(FileInfo { level, min, max, size: n, created_ms: h.timestamp_ms });
        metrics::counter!("warren_backup_puts_total").increment(1);
        metrics::counter!("warren_backup_compactions_total", "level" => level.to_string()).increment(1);
        Ok(())
    }

    /// Deletes files no restore within the retention window needs, never breaking the chain from the
    /// oldest kept snapshot to the newest TXID.
    async fn retention(&self, st: &mut ShipState, cfg: &BackupSettings) -> anyhow::Result<()> {
        let now = store::now_ms();
        let mut doomed: Vec<FileInfo> = Vec::new();
        let max_l1 = st.files.iter().filter(|f| f.level == 1).map(|f| f.max).max().unwrap_or(0);
        let newest_l0 = st.files.iter().filter(|f| f.level == 0).map(|f| f.max).max().unwrap_or(0);
        for f in st.files.iter().filter(|f| f.level == 0) {
            if f.max <= max_l1 && f.max != newest_l0 && now - f.created_ms >= (cfg.l0_retention_secs as i64) * 1000 {
                doomed.push(*f);
            }
        }
        let mut snaps: Vec<FileInfo> = st.files.iter().filter(|f| f.level == 9).copied().collect();
        snaps.sort_by_key(|f| f.max);
        if let Some(newest) = snaps.last().copied() {
            let keep: Vec<FileInfo> =
                snaps.iter().filter(|f| f.max == newest.max || now - f.created_ms < (cfg.retention_secs as i64) * 1000).copied().collect();
            for s in &snaps {
                if !keep.contains(s) {
                    doomed.push(*s);
                }
            }
            let oldest_kept = keep.iter().map(|f| f.max).min().unwrap_or(newest.max);
            for f in st.files.iter().filter(|f| (1..=8).contains(&f.level) && f.max < oldest_kept) {
                doomed.push(*f);
            }
            for f in st.files.iter().filter(|f| f.level == 0 && f.max < oldest_kept && f.max != newest_l0) {
                if !doomed.contains(f) {
                    doomed.push(*f);
                }
            }
        }
        for f in &doomed {
            self.replica.delete(f).await.with_context(|| format!("deleting {} (retention)", ltx::file_name(f.min, f.max)))?;
            metrics::counter!("warren_backup_deletes_total").increment(1);
        }
        st.files.retain(|f| !doomed.contains(f));
        Ok(())
    }

    /// Final ship before a handle closes. True when everything committed is in the replica.
    pub async fn ship_before_close(self: &Arc<Self>, timeout: Duration) -> bool {
        // Nothing written since open and no sync ever ran: nothing to ship, and no request to storage.
        // Otherwise sync, which waits for a sync in flight (the WAL must not be checkpointed under it).
        let pending = self.dirty.lock().is_some();
        if !pending && self.ship.try_lock().map(|g| g.is_none()).unwrap_or(false) {
            return true;
        }
        if let Some(svc) = self.svc.upgrade() {
            svc.queue.lock().remove(&self.key);
        }
        matches!(tokio::time::timeout(timeout, self.sync()).await, Ok(Ok(())))
    }

    /// The WAL was checkpointed (TRUNCATE) after everything was shipped: SQLite may restart it.
    pub fn note_checkpointed(&self) {
        if let Some(mut p) = read_position(&self.db_path) {
            if !p.cursor.checkpointed {
                p.cursor.checkpointed = true;
                if let Err(e) = write_position(&self.db_path, &p) {
                    tracing::warn!(replica = %self.key, error = %e, "recording the checkpoint failed");
                }
            }
        }
    }

    /// After a failed close: the service reopens the tenant later to ship what is left.
    pub fn defer_after_close(&self) {
        if let (Some(svc), Some(id)) = (self.svc.upgrade(), self.key.tenant_id()) {
            svc.queue.lock().remove(&self.key);
            svc.orphans.lock().insert(id.to_string(), Instant::now() + Duration::from_millis(svc.cfg.retry_min_ms));
        }
    }
}

/// Builds the next level-0 file: the frames committed since `pos`, or a full image when `full` is set
/// or the WAL no longer matches.
fn build_batch(db: &Path, pos: &Position, full: bool, txid: u64, src: &dyn Source) -> anyhow::Result<Batch> {
    let ts = store::now_ms();
    if !full {
        match wal::read_frames(db, &pos.cursor)? {
            wal::Read_::Nothing => return Ok(Batch::Nothing),
            wal::Read_::Frames(f) => {
                let h = ltx::Header { page_size: f.page_size, commit: f.commit, min_txid: txid, max_txid: txid, timestamp_ms: ts };
                let mut e = ltx::Encoder::new(h)?;
                // A grown database must carry every new page; SQLite writes them to the WAL, but fill
                // any that are missing from the database file as Litestream does.
                let lock = ltx::lock_pgno(f.page_size);
                let mut fill: Vec<u32> = Vec::new();
                if pos.commit > 0 && f.commit > pos.commit {
                    fill = ((pos.commit + 1)..=f.commit).filter(|p| !f.pages.contains_key(p) && *p != lock).collect();
                }
                let file = if fill.is_empty() { None } else { Some(std::fs::File::open(db)?) };
                let mut buf = vec![0u8; f.page_size as usize];
                let mut fill_iter = fill.into_iter().peekable();
                for (p, data) in &f.pages {
                    while let Some(q) = fill_iter.next_if(|q| q < p) {
                        wal::read_db_page(file.as_ref().expect("file"), f.page_size, q, &mut buf)?;
                        e.push_page(q, &buf)?;
                    }
                    if *p != lock {
                        e.push_page(*p, data)?;
                    }
                }
                for q in fill_iter {
                    wal::read_db_page(file.as_ref().expect("file"), f.page_size, q, &mut buf)?;
                    e.push_page(q, &buf)?;
                }
                return Ok(Batch::Ready { l0: e.finish().into(), l9: None, cursor: f.end, commit: f.commit, ts });
            }
            wal::Read_::Mismatch(why) => {
                tracing::warn!(db = %db.display(), reason = %why, "WAL history broken; shipping a full image");
            }
        }
    }
    let mut out = None;
    src.locked(&mut |_conn| {
        out = Some(full_image(db, txid, ts)?);
        Ok(())
    })?;
    let (l0, l9, cursor, commit) = out.expect("set under the lock");
    Ok(Batch::Ready { l0, l9: Some(l9), cursor, commit, ts })
}

/// A full image at `txid` (call with the write lock held): the database file overlaid with every
/// committed WAL frame. Returns the level-0 file `txid-txid`, the snapshot `1-txid`, and the cursor at
/// the end of the WAL.
fn full_image(db: &Path, txid: u64, ts: i64) -> anyhow::Result<(Bytes, Bytes, wal::Cursor, u32)> {
    let (mut page_size, mut commit) = wal::db_file_geometry(db)?;
    let mut overlay = BTreeMap::new();
    let mut cursor = wal::Cursor::default();
    if let wal::Read_::Frames(f) = wal::read_frames(db, &wal::Cursor::default())? {
        page_size = f.page_size;
        commit = f.commit;
        overlay = f.pages;
        cursor = f.end;
    } else {
        // Nothing committed in the WAL: continue from its current end (or a fresh WAL).
        cursor.checkpointed = true;
    }
    anyhow::ensure!(commit > 0, "{} is empty", db.display());
    let file = std::fs::File::open(db)?;
    let lock = ltx::lock_pgno(page_size);
    let mut l0 = ltx::Encoder::new(ltx::Header { page_size, commit, min_txid: txid, max_txid: txid, timestamp_ms: ts })?;
    let mut l9 = ltx::Encoder::new(ltx::Header { page_size, commit, min_txid: 1, max_txid: txid, timestamp_ms: ts })?;
    let mut buf = vec![0u8; page_size as usize];
    for p in 1..=commit {
        if p == lock {
            continue;
        }
        let data: &[u8] = match overlay.get(&p) {
            Some(d) => d,
            None => {
                wal::read_db_page(&file, page_size, p, &mut buf)?;
                &buf
            }
        };
        l0.push_page(p, data)?;
        l9.push_page(p, data)?;
    }
    let (a, b) = (l0.finish(), l9.finish());
    Ok((a.into(), b.into(), cursor, commit))
}

/// A snapshot `1-pos.txid`, if nothing was committed since `pos` (else the next round does it).
fn snapshot_at(db: &Path, pos: &Position, src: &dyn Source) -> anyhow::Result<Option<(Bytes, i64)>> {
    let mut out = None;
    src.locked(&mut |_conn| {
        if !matches!(wal::read_frames(db, &pos.cursor)?, wal::Read_::Nothing) {
            return Ok(());
        }
        let ts = store::now_ms();
        let (_, l9, _, _) = full_image(db, pos.txid, ts)?;
        out = Some((l9, ts));
        Ok(())
    })?;
    Ok(out)
}

/// TRUNCATE checkpoint once the WAL holds `limit` pages and everything in it is shipped.
fn checkpoint_if_large(db: &Path, pos: &Position, src: &dyn Source, limit: u64) -> anyhow::Result<bool> {
    let len = std::fs::metadata(wal::wal_path(db)).map(|m| m.len()).unwrap_or(0);
    let page = (pos.commit > 0).then(|| wal::db_file_geometry(db).map(|g| g.0).unwrap_or(4096)).unwrap_or(4096) as u64;
    if len < limit.saturating_mul(page + 24) {
        return Ok(false);
    }
    let mut done = false;
    src.locked(&mut |conn| {
        if !matches!(wal::read_frames(db, &pos.cursor)?, wal::Read_::Nothing) {
            return Ok(()); // new commits: ship them first, next round
        }
        conn.busy_timeout(Duration::from_millis(200))?;
        let r: (i64, i64, i64) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        conn.busy_timeout(Duration::from_millis(5000))?;
        done = r.0 == 0;
        Ok(())
    })?;
    if done {
        metrics::counter!("warren_backup_checkpoints_total").increment(1);
    }
    Ok(done)
}
