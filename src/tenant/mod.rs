//! The tenant registry: a bounded cache of open tenant handles with an explicit close lifecycle.
//!
//! * **Bounded.** Open handles live in a moka cache of `max_open_tenants` entries with idle expiry.
//!   Every handle, open or closing, holds one permit of a semaphore of `2 × max_open_tenants`, so the
//!   number of SQLite files open at once — and so the file descriptors — is bounded by the cap, never by
//!   the tenant count.
//! * **Single-flight open.** Concurrent first requests for a tenant share one open (`try_get_with`).
//! * **Evicted is not closed.** Eviction moves a handle to Closing; it closes (checkpoint, drop
//!   connections) only after the last in-flight lease is released. An open that races with a close
//!   waits for the close to finish, then opens afresh.
//! * **Never created on the request path.** Opening requires the tenant's database to exist; tenants are
//!   created explicitly by the control plane. Blocked tenants (being deleted or restored) never reopen.

mod cap;
mod handle;
mod readers;
pub mod schema;

pub use cap::{Origin, TenantCap, WorkerProof};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use moka::future::Cache;
use parking_lot::Mutex;
use tokio::sync::{watch, Semaphore};
use tokio_util::task::TaskTracker;

pub use handle::{create_storage, migrations, open_offline_writer, Lease, TenantHandle, DB_FILE};

use crate::error::{Code, Error};

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub data_dir: PathBuf,
    pub max_open: u64,
    pub idle: Duration,
    pub read_pool_size: u32,
    pub open_timeout: Duration,
}

/// Why a tenant is refused while blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Deleting,
    Restoring,
}

#[derive(Clone)]
pub struct TenantRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RegistryConfig,
    cache: Cache<String, Arc<TenantHandle>>,
    /// Tenants whose handle is closing; the watch flips to true when the close is done.
    closing: Mutex<HashMap<String, watch::Receiver<bool>>>,
    blocked: Mutex<HashMap<String, Block>>,
    permits: Arc<Semaphore>,
    closers: TaskTracker,
    backup: Option<Arc<crate::backup::BackupService>>,
    /// In a cluster: whether this node holds a tenant's lease. Storage of tenants it does not hold
    /// cannot be opened here.
    owner: std::sync::OnceLock<OwnerCheck>,
}

/// Whether this node may open a tenant's storage (see [`TenantRegistry::set_owner_check`]).
pub type OwnerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The directory of a tenant: derived from its id alone, never from user input.
pub fn tenant_dir(data_dir: &Path, tenant_id: &str) -> PathBuf {
    debug_assert!(tenant_id.bytes().all(|b| b.is_ascii_alphanumeric()));
    data_dir.join(tenant_id)
}

/// 503 `tenant_damaged`, logged and counted once per attempt to open the tenant.
fn damaged(id: &str, why: &str) -> Error {
    tracing::error!(tenant = %id, reason = %why, "tenant database damaged: restore it from its backup");
    metrics::counter!("warren_tenant_damaged_total").increment(1);
    Error::damaged()
}

/// The marker of a quarantined tenant (`<tenant dir>/QUARANTINED`, holding the reason): a database
/// that failed `PRAGMA quick_check` after it was opened. The tenant answers 503 `tenant_damaged`
/// without being reopened, across restarts, until a restore replaces the file and removes the marker.
pub const QUARANTINE_FILE: &str = "QUARANTINED";

/// Whether opening failed because the file is not a (sound) SQLite database.
fn is_corrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _)) if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
        )
    })
}

impl TenantRegistry {
    pub fn new(cfg: RegistryConfig) -> TenantRegistry {
        Self::with_backup(cfg, None)
    }

    /// A registry whose tenants are continuously backed up by `backup`.
    pub fn with_backup(cfg: RegistryConfig, backup: Option<Arc<crate::backup::BackupService>>) -> TenantRegistry {
        let rt = tokio::runtime::Handle::current();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            let cache = Cache::builder()
                .max_capacity(cfg.max_open)
                .time_to_idle(cfg.idle)
                .eviction_listener(move |id: Arc<String>, handle: Arc<TenantHandle>, cause| {
                    if let Some(inner) = weak.upgrade() {
                        tracing::debug!(tenant = %id, ?cause, "tenant handle evicted");
                        metrics::counter!("warren_tenant_evictions_total").increment(1);
                        Inner::begin_close(&inner, &rt, handle);
                    }
                })
                .build();
            Inner {
                permits: Arc::new(Semaphore::new((cfg.max_open * 2) as usize)),
                cfg,
                cache,
                closing: Mutex::new(HashMap::new()),
                blocked: Mutex::new(HashMap::new()),
                closers: TaskTracker::new(),
                backup,
                owner: std::sync::OnceLock::new(),
            }
        });
        TenantRegistry { inner }
    }

    /// In a cluster: only tenants for which `check` holds can be opened (set once, at start).
    pub fn set_owner_check(&self, check: OwnerCheck) {
        let _ = self.inner.owner.set(check);
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// Leases the open handle of `tenant_id`, opening it (once, for all concurrent callers) if needed.
    /// Private: the only door is [`TenantCap::lease`], and a capability needs a proof.
    async fn acquire(&self, tenant_id: &str) -> Result<Lease, Error> {
        if let Some(owns) = self.inner.owner.get() {
            if !owns(tenant_id) {
                return Err(Error::unavailable(Code::OwnerUnavailable, "this tenant is served by another node of the cluster; retry shortly", 1));
            }
        }
        let deadline = Instant::now() + self.inner.cfg.open_timeout;
        loop {
            self.check_blocked(tenant_id)?;
            self.wait_closed(tenant_id, deadline).await?;
            let inner = self.inner.clone();
            let id = tenant_id.to_string();
            let opened = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = opened.clone();
            let handle = self
                .inner
                .cache
                .try_get_with(id.clone(), async move {
                    flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    inner.open(&id, deadline).await
                })
                .await
                .map_err(|e: Arc<Error>| match &*e {
                    Error::Internal(cause) => Error::internal(anyhow::anyhow!("opening tenant {tenant_id}: {cause:#}")),
                    coded => coded.duplicate(),
                })?;
            if handle.is_quarantined() {
                // The marker is written: drop the handle, so every later request is refused at open.
                self.inner.cache.invalidate(tenant_id).await;
                return Err(Error::damaged());
            }
            if let Some(lease) = handle.lease() {
                if opened.load(std::sync::atomic::Ordering::Relaxed) {
                    // moka evicts lazily, in its housekeeping: run it now (with this handle leased,
                    // so even if the cache's admission policy turns it away this request still uses
                    // it), so a handle starts closing as another opens and the open count stays at
                    // the cap instead of overshooting it until the next maintenance tick.
                    self.inner.cache.run_pending_tasks().await;
                }
                return Ok(lease);
            }
            // It began closing between lookup and lease: wait for that close, then open afresh.
            tokio::task::yield_now().await;
        }
    }

    fn check_blocked(&self, tenant_id: &str) -> Result<(), Error> {
        match self.inner.blocked.lock().get(tenant_id) {
            None => Ok(()),
            Some(Block::Deleting) => Err(Error::not_found(Code::TenantNotFound, "no such tenant")),
            Some(Block::Restoring) => Err(Error::unavailable(Code::TenantRestoring, "the tenant is being restored", 5)),
        }
    }

    async fn wait_closed(&self, tenant_id: &str, deadline: Instant) -> Result<(), Error> {
        let rx = self.inner.closing.lock().get(tenant_id).cloned();
        if let Some(mut rx) = rx {
            let wait = rx.wait_for(|done| *done);
            if tokio::time::timeout_at(deadline.into(), wait).await.is_err() {
                return Err(Error::unavailable(
                    Code::TenantUnavailable,
                    "the tenant could not be opened in time (it is still closing); retry shortly",
                    1,
                ));
            }
        }
        Ok(())
    }

    /// Blocks the tenant (no request can reopen it), closes its handle and waits for the close.
    /// Used by delete and restore. Call [`unblock`](Self::unblock) after a restore.
    pub async fn block_and_close(&self, tenant_id: &str, why: Block) {
        self.inner.blocked.lock().insert(tenant_id.to_string(), why);
        self.close_blocked(tenant_id).await;
    }

    /// Blocks the tenant unless it already is (a restore or delete under way): false then.
    pub fn try_block(&self, tenant_id: &str, why: Block) -> bool {
        let mut blocked = self.inner.blocked.lock();
        if blocked.contains_key(tenant_id) {
            return false;
        }
        blocked.insert(tenant_id.to_string(), why);
        true
    }

    /// Closes a blocked tenant's handle and waits for the close.
    pub async fn close_blocked(&self, tenant_id: &str) {
        self.inner.cache.invalidate(tenant_id).await;
        self.inner.cache.run_pending_tasks().await;
        let rx = self.inner.closing.lock().get(tenant_id).cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    pub fn unblock(&self, tenant_id: &str) {
        self.inner.blocked.lock().remove(tenant_id);
    }

    /// Opens a tenant that has changes left to ship (backup catch-up) and queues it. The handle then
    /// closes through the cache like any other. The backup service names the tenant from its own
    /// pending markers: it acts as a worker.
    pub async fn open_for_backup(&self, tenant_id: &str) -> anyhow::Result<()> {
        let lease = self.cap_for_worker(WorkerProof::new("backup-catch-up"), tenant_id).lease().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(r) = lease.replica().cloned() {
            tokio::task::spawn_blocking(move || r.mark_dirty()).await?;
        }
        Ok(())
    }

    /// Number of handles in the cache (open, not closing).
    pub fn open_count(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Handles open or closing, i.e. permits in use.
    pub fn live_count(&self) -> usize {
        (self.inner.cfg.max_open * 2) as usize - self.inner.permits.available_permits()
    }

    /// Runs moka's housekeeping so idle handles expire even without traffic. Called by a single
    /// process-wide timer; there are no per-tenant timers.
    pub async fn maintain(&self) {
        self.inner.cache.run_pending_tasks().await;
        metrics::gauge!("warren_tenant_handles_open").set(self.inner.cache.entry_count() as f64);
        metrics::gauge!("warren_tenant_handles_live").set(self.live_count() as f64);
    }

    /// Closes every handle and waits for all closes (shutdown).
    pub async fn close_all(&self) {
        self.inner.cache.invalidate_all();
        self.inner.cache.run_pending_tasks().await;
        self.inner.closers.close();
        self.inner.closers.wait().await;
        self.inner.closers.reopen();
    }
}

impl crate::backup::Reopen for TenantRegistry {
    fn reopen(&self, tenant_id: String) -> futures::future::BoxFuture<'static, anyhow::Result<()>> {
        let reg = self.clone();
        Box::pin(async move { reg.open_for_backup(&tenant_id).await })
    }
}

impl Inner {
    async fn open(self: Arc<Self>, id: &str, deadline: Instant) -> Result<Arc<TenantHandle>, Error> {
        let started = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Closing handles hold permits until their last request ends: let housekeeping run
                // and wait for one to free up, within the open timeout.
                self.cache.run_pending_tasks().await;
                match tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => return Err(Error::unavailable(Code::Overloaded, "too many tenants are open or closing; retry shortly", 1)),
                }
            }
        };
        metrics::histogram!("warren_tenant_open_permit_wait_seconds").record(started.elapsed().as_secs_f64());
        let dir = tenant_dir(&self.cfg.data_dir, id);
        if !dir.join(DB_FILE).exists() {
            return Err(damaged(id, "its database file is missing"));
        }
        if let Ok(why) = std::fs::read_to_string(dir.join(QUARANTINE_FILE)) {
            return Err(damaged(id, &format!("quarantined: {}", why.trim())));
        }
        let (pool_size, owned_id, backup) = (self.cfg.read_pool_size, id.to_string(), self.backup.clone());
        let queued = Instant::now();
        let handle = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let h = TenantHandle::open(&owned_id, dir, pool_size, permit, backup.as_ref());
            metrics::histogram!("warren_tenant_open_work_seconds").record(began.elapsed().as_secs_f64());
            metrics::histogram!("warren_tenant_open_queue_seconds").record((began - queued).as_secs_f64());
            h
        })
        .await?
        .map_err(|e| if is_corrupt(&e) { damaged(id, &format!("{e:#}")) } else { Error::Internal(e) })?;
        if let Some(r) = handle.replica() {
            // Never replicated (new tenant, backups just turned on) or changed since the last ship
            // (migrations at open, a crash): queue it.
            let db = handle.dir().join(DB_FILE);
            if tokio::task::spawn_blocking(move || crate::backup::needs_sync(&db)).await.unwrap_or(true) {
                let r = r.clone();
                let _ = tokio::task::spawn_blocking(move || r.mark_dirty()).await;
            }
        }
        metrics::counter!("warren_tenant_opens_total").increment(1);
        metrics::histogram!("warren_tenant_open_seconds").record(started.elapsed().as_secs_f64());
        Ok(handle)
    }

    /// Called from the eviction listener: registers the close and runs it once the handle drains.
    fn begin_close(self: &Arc<Self>, rt: &tokio::runtime::Handle, handle: Arc<TenantHandle>) {
        let (tx, rx) = watch::channel(false);
        let id = handle.id().to_string();
        self.closing.lock().insert(id.clone(), rx);
        let inner = self.clone();
        self.closers.spawn_on(
            async move {
                handle.drain().await;
                let blocking = |what: &'static str, f: Box<dyn FnOnce() + Send>| {
                    let id = id.clone();
                    async move {
                        if let Err(e) = tokio::task::spawn_blocking(f).await {
                            tracing::error!(tenant = %id, error = %e, "{what} failed");
                        }
                    }
                };
                let h = handle.clone();
                match handle.replica().cloned().zip(inner.backup.clone()) {
                    // Nothing to ship: release the readers and close in one blocking task.
                    None => {
                        blocking(
                            "closing",
                            Box::new(move || {
                                h.release_readers();
                                h.close_blocking(true)
                            }),
                        )
                        .await
                    }
                    Some((r, b)) => {
                        // The readers and derived state go first: shipping may take seconds against
                        // slow storage, and a closing handle should hold only what the ship and
                        // checkpoint need.
                        blocking("releasing readers", Box::new(move || h.release_readers())).await;
                        // Ship the last changes before the files close; if storage is unreachable,
                        // keep the WAL and let the backup service reopen the tenant later.
                        let shipped = r.ship_before_close(Duration::from_secs(b.settings().close_timeout_secs.max(1))).await;
                        if !shipped {
                            r.defer_after_close();
                        }
                        let h = handle.clone();
                        blocking("closing", Box::new(move || h.close_blocking(shipped))).await;
                    }
                }
                drop(handle); // releases the SQLite files and the permit
                {
                    let mut closing = inner.closing.lock();
                    // Only remove our own entry (a newer close may have replaced it).
                    if closing.get(&id).is_some_and(|r| r.same_channel(&tx.subscribe())) {
                        closing.remove(&id);
                    }
                }
                let _ = tx.send(true);
                tracing::debug!(tenant = %id, "tenant handle closed");
            },
            rt,
        );
    }
}

/// Puts a restored database (`staged`, in the tenant's directory) in place of the tenant's file: checks
/// that it belongs to the tenant, drops the old WAL and shared memory, renames it atomically, forgets the
/// shipped position (the next TXID is a full image) and removes the derived index (rebuilt on open).
/// The tenant must be closed (blocked, or no server running).
pub fn install_restored(dir: &Path, staged: &Path, tenant_id: &str) -> anyhow::Result<()> {
    let db = dir.join(DB_FILE);
    {
        let c = rusqlite::Connection::open(staged)?;
        let owner: Option<String> =
            rusqlite::OptionalExtension::optional(c.query_row("SELECT value FROM meta WHERE key='tenant_id'", [], |r| r.get(0)))?;
        anyhow::ensure!(owner.as_deref() == Some(tenant_id), "the replica belongs to tenant {owner:?}, not {tenant_id}");
    }
    // A kill -9 anywhere below leaves the old state or the restored one, never a mix: the old WAL is
    // folded into the old file before it is removed (so removing it loses nothing), and the shipped
    // position is forgotten before the swap (a full image of either state is always right).
    if db.exists() {
        let folded = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)))
            .map_err(anyhow::Error::from)
            .and_then(|busy| if busy == 0 { Ok(()) } else { Err(anyhow::anyhow!("the checkpoint was blocked")) });
        if let Err(e) = folded {
            // A damaged file may not checkpoint; it is being replaced, so go on.
            tracing::warn!(tenant = %tenant_id, error = %format!("{e:#}"), "could not fold the old WAL before the restore swap");
        }
    }
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", staged.display()));
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    crate::backup::reset_position(&db);
    crate::faults::point("restore.swap");
    std::fs::rename(staged, &db)?;
    let _ = std::fs::remove_file(dir.join(QUARANTINE_FILE));
    let _ = std::fs::remove_dir_all(dir.join("index"));
    Ok(())
}

/// The core of an in-place restore, for a tenant the caller has blocked: closes its handle,
/// restores `target` from `replica` into `<tenant dir>/tenant.db.restoring` and swaps it in
/// ([`install_restored`]). The inner error is a restore or swap that failed (the old state stays);
/// the outer one a task that failed.
pub async fn restore_blocked(
    registry: &TenantRegistry,
    tenant_id: &str,
    replica: &crate::backup::Replica,
    target: crate::backup::restore::Target,
) -> Result<anyhow::Result<crate::backup::restore::Report>, Error> {
    registry.close_blocked(tenant_id).await;
    let dir = tenant_dir(registry.data_dir(), tenant_id);
    let staged = dir.join("tenant.db.restoring");
    let report = match crate::backup::restore::restore_to(replica, target, &staged).await {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let id = tenant_id.to_string();
    match tokio::task::spawn_blocking(move || install_restored(&dir, &staged, &id)).await {
        Ok(installed) => Ok(installed.map(|()| report)),
        Err(e) => Err(Error::internal(anyhow::anyhow!("installing the restored file: {e}"))),
    }
}

/// Unblocks a tenant when dropped, however the work that blocked it ends.
pub struct Unblock(pub TenantRegistry, pub String);

impl Drop for Unblock {
    fn drop(&mut self) {
        self.0.unblock(&self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tenants under `dir` whose database files this process holds open (any of `tenant.db`, its
    /// WAL or `-shm`): one per handle with its files open. (A handle that has only been read holds
    /// just its reader's database, and a new tenant has no WAL yet, so `-shm` alone would miss it.)
    fn open_handles(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|p| p.starts_with(dir) && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tenant.db")))
                    .filter_map(|p| p.parent().map(Path::to_path_buf))
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            })
            .unwrap_or(0)
    }

    /// Tenants opened one after another never keep more handles open than the cap (plus those
    /// closing): each cold open evicts at once instead of at the next housekeeping tick, which this
    /// test never runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cold_opens_keep_the_open_handles_at_the_cap() {
        const CAP: usize = 4;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical");
        let ids: Vec<String> = (0..24).map(|i| format!("t{i:02}")).collect();
        for id in &ids {
            create_storage(&tenant_dir(&dir, id), id).expect("create");
        }
        let reg = TenantRegistry::new(RegistryConfig {
            data_dir: dir.clone(),
            max_open: CAP as u64,
            idle: Duration::from_secs(3600),
            read_pool_size: 1,
            open_timeout: Duration::from_secs(10),
        });
        for id in &ids {
            let lease = reg.cap_for_worker(WorkerProof::new("test"), id).lease().await.expect("lease");
            drop(lease);
            // An evicted handle closes on a closer task, which may not have run yet: wait (bounded)
            // for it, not for a timer.
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                let closing = reg.inner.closing.lock().len();
                let open = open_handles(&dir);
                if open <= CAP + closing {
                    break;
                }
                assert!(Instant::now() < until, "after opening {id}: {open} handles hold their files ({closing} closing) with a cap of {CAP}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        reg.close_all().await;
        let until = Instant::now() + Duration::from_secs(5);
        while open_handles(&dir) > 0 {
            assert!(Instant::now() < until, "files still open after close_all: {}", open_handles(&dir));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
