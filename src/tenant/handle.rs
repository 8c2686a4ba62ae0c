//! One open tenant: its SQLite writer, a small reader pool, and the derived state of later modules.
//!
//! ```text
//!  state:   Open ──(evicted / deleted / restored)──► Closing ──(last lease gone, WAL checkpointed)──► closed
//! ```
//! A request holds a [`Lease`] for its whole duration. Leases are counted; once a handle is marked
//! Closing no new lease is granted (the caller re-opens afresh after the close finishes), and the
//! closer waits for the count to reach zero before it checkpoints and drops the connections. The
//! increment-then-check in [`TenantHandle::lease`] and the mark-then-check in the closer are both
//! SeqCst, so either the request sees Closing or the closer sees its lease.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::error::{Code, Error};

/// Tenant schema migrations; `PRAGMA user_version` counts those applied.
pub fn migrations() -> &'static [&'static str] {
    super::schema::MIGRATIONS
}

pub const DB_FILE: &str = "tenant.db";

/// `secure_delete`: deleted content is overwritten with zeros in the database (and so in the WAL
/// frames that carry the change), so an erasure leaves no readable copy in free pages.
const PRAGMAS: &str =
    "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;";

/// Creates a tenant's directory and database. Only called when a tenant is created explicitly.
pub fn create_storage(dir: &Path, tenant_id: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut conn = Connection::open(dir.join(DB_FILE))?;
    conn.execute_batch(PRAGMAS)?;
    crate::control::migrate(&mut conn, migrations())?;
    conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('tenant_id', ?1)", [tenant_id])?;
    Ok(())
}

/// A writer connection to a closed tenant's database (no server running), with the tenant pragmas
/// (`secure_delete` among them): for the CLI's offline changes.
pub fn open_offline_writer(dir: &Path) -> anyhow::Result<Connection> {
    let db = dir.join(DB_FILE);
    anyhow::ensure!(db.exists(), "no tenant database at {}", db.display());
    let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.execute_batch(PRAGMAS)?;
    Ok(conn)
}

/// The writer connection of a handle. Without backups it opens at the first write, so a tenant that
/// is only read costs one connection (its first reader), not two; with backups it opens with the
/// handle, as the replica ships through it.
enum Writer {
    Unopened,
    Open(Connection),
    Closed,
}

/// Opens a tenant's writer: the tenant pragmas, a persistent WAL, the backup settings when it is
/// replicated, and the schema migrations still due.
fn open_writer(path: &Path, replicated: bool) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let mut writer = Connection::open_with_flags(path, flags).with_context(|| format!("opening {}", path.display()))?;
    writer.execute_batch(PRAGMAS)?;
    crate::sqlite::persist_wal(&writer)?;
    if replicated {
        crate::backup::prepare_connection(&writer)?;
    }
    crate::control::migrate(&mut writer, migrations())?;
    Ok(writer)
}

pub struct TenantHandle {
    id: String,
    dir: PathBuf,
    writer: Mutex<Writer>,
    /// `None` once the handle is closing and drained: the readers are closed first, so a closing
    /// handle (which may wait seconds for its last ship) holds only the writer's descriptors.
    readers: Mutex<Option<Arc<super::readers::ReaderPool>>>,
    leases: AtomicUsize,
    closing: AtomicBool,
    /// Set when the database failed `quick_check` after opening (see [`super::QUARANTINE_FILE`]).
    quarantined: AtomicBool,
    released: Notify,
    /// Derived per-tenant state of other modules (search index, vector cache, ...), created lazily.
    extensions: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// Continuous backup of this database, when backups are on.
    replica: Option<Arc<crate::backup::DbReplica>>,
    _permit: OwnedSemaphorePermit,
}

impl TenantHandle {
    /// Opens an existing tenant. Never creates one: a missing database is an error.
    pub(crate) fn open(
        id: &str,
        dir: PathBuf,
        read_pool_size: u32,
        permit: OwnedSemaphorePermit,
        backup: Option<&Arc<crate::backup::BackupService>>,
    ) -> anyhow::Result<Arc<TenantHandle>> {
        let path = dir.join(DB_FILE);
        let replicated = backup.is_some();
        // The writer opens first when it is needed at once: with backups (the replica ships through
        // it), and when the WAL holds frames (after a crash its index may need a recovery, which a
        // read-only connection must not be the one to attempt). The restore failures once blamed on
        // this order came from a late upload after a crash (docs/ARCHITECTURE.md), now refused by
        // create-only replica writes.
        let wal_has_frames = std::fs::metadata(crate::backup::wal::wal_path(&path)).map(|m| m.len() > 0).unwrap_or(false);
        let mut writer = if replicated || wal_has_frames { Writer::Open(open_writer(&path, replicated)?) } else { Writer::Unopened };
        // One reader opens now, on this thread; more open on demand (`readers`), up to the pool size.
        // It proves the file is this tenant's and tells whether migrations are due: a version check,
        // so an up-to-date tenant that is only read never opens a writer.
        let readers = Arc::new(
            super::readers::ReaderPool::open(path.clone(), replicated, read_pool_size as usize, Duration::from_secs(10))
                .with_context(|| format!("opening {}", path.display()))?,
        );
        let (version, owner) = {
            let r = readers.get().map_err(|e| anyhow::anyhow!("{}", e.public_message()))?;
            let version: i64 = r.query_row("PRAGMA user_version", [], |row| row.get(0))?;
            let owner: Option<String> =
                rusqlite::OptionalExtension::optional(r.query_row("SELECT value FROM meta WHERE key='tenant_id'", [], |row| row.get(0)))?;
            (version, owner)
        };
        anyhow::ensure!(owner.as_deref() == Some(id), "{} belongs to tenant {:?}, not {id}", path.display(), owner);
        if matches!(writer, Writer::Unopened) && version < migrations().len() as i64 {
            writer = Writer::Open(open_writer(&path, replicated)?);
        }
        Ok(Arc::new_cyclic(|me: &std::sync::Weak<TenantHandle>| TenantHandle {
            id: id.to_string(),
            dir,
            writer: Mutex::new(writer),
            readers: Mutex::new(Some(readers)),
            leases: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            quarantined: AtomicBool::new(false),
            released: Notify::new(),
            extensions: Mutex::new(Vec::new()),
            replica: backup.map(|b| {
                let source: std::sync::Weak<dyn crate::backup::Source> = me.clone();
                b.replica_for(crate::backup::ReplicaKey::tenant(id), &path, source)
            }),
            _permit: permit,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::SeqCst)
    }

    /// After SQLite reported damage: runs `PRAGMA quick_check` on a fresh connection and, if it fails,
    /// quarantines the tenant (writes the marker, logs an error, counts it). Blocking.
    fn check_and_quarantine(&self) {
        if self.quarantined.load(Ordering::SeqCst) {
            return;
        }
        let db = self.dir.join(super::DB_FILE);
        let verdict = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .and_then(|c| {
                let mut st = c.prepare("PRAGMA quick_check(5)")?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows.join("; "))
            })
            .unwrap_or_else(|e| format!("quick_check could not run: {e}"));
        if verdict == "ok" {
            return;
        }
        self.quarantined.store(true, Ordering::SeqCst);
        let reason = format!("PRAGMA quick_check failed: {verdict}");
        if let Err(e) = crate::datadir::write_private(&self.dir.join(super::QUARANTINE_FILE), reason.as_bytes()) {
            tracing::error!(tenant = %self.id, error = %e, "writing the quarantine marker failed (the tenant is quarantined until restart)");
        }
        tracing::error!(tenant = %self.id, reason = %reason, "tenant quarantined: its database is damaged; restore it from its backup");
        metrics::counter!("warren_tenant_quarantined_total").increment(1);
    }

    /// Grants a lease unless the handle is closing.
    pub(crate) fn lease(self: &Arc<Self>) -> Option<Lease> {
        self.leases.fetch_add(1, Ordering::SeqCst);
        if self.closing.load(Ordering::SeqCst) {
            self.release();
            return None;
        }
        Some(Lease(self.clone()))
    }

    fn release(&self) {
        if self.leases.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.released.notify_waiters();
        }
    }

    /// Marks the handle Closing and waits until no lease is held.
    pub(crate) async fn drain(&self) {
        self.closing.store(true, Ordering::SeqCst);
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.leases.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn replica(&self) -> Option<&Arc<crate::backup::DbReplica>> {
        self.replica.as_ref()
    }

    /// Closes the reader connections and drops the derived state (index writers, vector caches).
    /// Blocking; called once drained, before the last ship, so a closing handle holds little more
    /// than its writer (SQLite keeps the readers' database descriptors until the writer closes).
    pub(crate) fn release_readers(&self) {
        if let Some(readers) = self.readers.lock().take() {
            readers.close(); // no lease is held, so every connection is idle and closes here
        }
        self.extensions.lock().clear();
    }

    /// Checkpoints the WAL into the database and closes the writer. Blocking; called once drained.
    /// With backups on, the WAL is checkpointed only when everything in it was shipped (`checkpoint`);
    /// otherwise it stays for the catch-up after the next open.
    pub(crate) fn close_blocking(&self, checkpoint: bool) {
        // Derived state (index writers, vector caches) is dropped here, on a blocking thread.
        self.extensions.lock().clear();
        // Nothing was written since the last checkpoint (a tenant that was only read): nothing to
        // checkpoint, and the WAL and `-shm` stay for the next open (`persist_wal`).
        let wal_empty = std::fs::metadata(crate::backup::wal::wal_path(&self.dir.join(DB_FILE))).map(|m| m.len() == 0).unwrap_or(false);
        let writer = match std::mem::replace(&mut *self.writer.lock(), Writer::Closed) {
            Writer::Open(conn) => Some(conn),
            // Never written through this handle, but a WAL left by a crash is checkpointed all the same.
            Writer::Unopened if self.replica.is_none() && !wal_empty => match open_writer(&self.dir.join(DB_FILE), false) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::warn!(tenant = %self.id, error = %e, "opening the writer to checkpoint on close failed");
                    None
                }
            },
            Writer::Unopened | Writer::Closed => None,
        };
        if let Some(conn) = writer {
            match (&self.replica, checkpoint) {
                (None, _) if wal_empty => {}
                (None, _) => {
                    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                        tracing::warn!(tenant = %self.id, error = %e, "checkpoint on close failed");
                    }
                }
                // Everything is shipped: checkpoint, and record that the WAL may restart.
                (Some(r), true) => match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get::<_, i64>(0)) {
                    Ok(0) => r.note_checkpointed(),
                    Ok(_) => tracing::debug!(tenant = %self.id, "checkpoint on close was busy"),
                    Err(e) => tracing::warn!(tenant = %self.id, error = %e, "checkpoint on close failed"),
                },
                // Not shipped: keep the WAL for the catch-up after the next open.
                (Some(_), false) => {}
            }
            if let Err((_, e)) = conn.close() {
                tracing::warn!(tenant = %self.id, error = %e, "closing writer failed");
            }
        }
    }

    /// After an erasure: gets the erased bytes out of the WAL. Without backups the WAL is checkpointed
    /// into the (zeroed) database and truncated now; whether that completed is returned (a reader in
    /// a long read keeps it from completing, and the next checkpoint finishes it). With backups the
    /// shipper does it as soon as the erasing transaction has shipped (it must ship first, or the
    /// replica would miss it); `None`. Blocking.
    /// After a customer erasure: as [`Self::checkpoint_after_erasure`], and with backups the replica
    /// ships a fresh snapshot and, after `backup.erasure_grace_secs`, deletes every older object.
    pub fn after_customer_erasure(&self) -> Result<Option<bool>, Error> {
        if let Some(r) = &self.replica {
            r.erasure();
            return Ok(None);
        }
        self.checkpoint_after_erasure()
    }

    pub fn checkpoint_after_erasure(&self) -> Result<Option<bool>, Error> {
        if let Some(r) = &self.replica {
            r.checkpoint_soon();
            return Ok(None);
        }
        self.with_writer(|c| {
            let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
            Ok(Some(busy == 0))
        })
    }

    /// The writer, opened now if this handle has not written yet.
    fn writer_of<'a>(&self, slot: &'a mut Writer) -> Result<&'a mut Connection, Error> {
        if matches!(slot, Writer::Unopened) {
            let conn = open_writer(&self.dir.join(DB_FILE), self.replica.is_some())
                .map_err(|e| Error::internal(e.context("opening the tenant's writer")))?;
            *slot = Writer::Open(conn);
        }
        match slot {
            Writer::Open(conn) => Ok(conn),
            _ => Err(Error::unavailable(Code::TenantRestoring, "tenant is closing", 1)),
        }
    }

    /// Runs `f` with the writer connection (blocking; call from `spawn_blocking`).
    pub fn with_writer<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        let mut guard = self.writer.lock();
        let conn = self.writer_of(&mut guard)?;
        let out = f(conn);
        drop(guard);
        if let Some(r) = &self.replica {
            r.mark_dirty();
        }
        out
    }

    /// Runs `f` with a reader connection (blocking; call from `spawn_blocking`).
    pub fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let pool = self.readers.lock().clone().ok_or_else(|| Error::unavailable(Code::TenantRestoring, "tenant is closing", 1))?;
        let conn = pool.get()?;
        f(&conn)
    }

    /// Returns the extension of type `T`, creating it with `init` on first use (per open handle).
    pub fn extension<T: Any + Send + Sync>(&self, init: impl FnOnce() -> Result<T, Error>) -> Result<Arc<T>, Error> {
        let mut exts = self.extensions.lock();
        for e in exts.iter() {
            if let Ok(t) = e.clone().downcast::<T>() {
                return Ok(t);
            }
        }
        let t = Arc::new(init()?);
        exts.push(t.clone());
        Ok(t)
    }
}

/// Proof that a request is using a tenant handle; the handle cannot close while it exists.
pub struct Lease(Arc<TenantHandle>);

impl std::ops::Deref for Lease {
    type Target = TenantHandle;
    fn deref(&self) -> &TenantHandle {
        &self.0
    }
}

impl Clone for Lease {
    fn clone(&self) -> Self {
        self.0.leases.fetch_add(1, Ordering::SeqCst);
        Lease(self.0.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Lease {
    /// Runs `f(handle)` on a blocking thread, keeping the lease until it returns.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&TenantHandle) -> Result<T, Error> + Send + 'static,
    {
        let lease = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let out = f(&lease);
            if matches!(&out, Err(e) if e.code() == Code::TenantDamaged) {
                lease.check_and_quarantine();
            }
            out
        })
        .await?
    }
}

impl crate::backup::Source for TenantHandle {
    fn locked(&self, f: &mut dyn FnMut(&Connection) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut guard = self.writer.lock();
        let conn = self.writer_of(&mut guard).map_err(|_| anyhow::anyhow!("the tenant is closed"))?;
        f(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors this process holds on `<dir>/<name>` (Linux).
    fn open_fds(dir: &Path, name: &str) -> usize {
        let target = dir.join(name);
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter(|p| *p == target).count())
            .unwrap_or(0)
    }

    /// A tenant that is only read opens no writer, and closing keeps its (checkpointed, empty) WAL
    /// and `-shm` for the next open instead of deleting them.
    #[test]
    fn a_tenant_only_read_opens_no_writer_and_keeps_its_wal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t1");
        create_storage(&dir, "t1").unwrap();
        let dir = dir.canonicalize().unwrap();
        let open = || TenantHandle::open("t1", dir.clone(), 2, Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap(), None).unwrap();
        let wal = dir.join("tenant.db-wal");
        let h = open();
        h.with_writer(|c| Ok(c.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", [])?)).unwrap();
        assert!(wal.metadata().unwrap().len() > 0, "the write is in the WAL");
        h.release_readers();
        h.close_blocking(true);
        drop(h);
        assert_eq!(wal.metadata().map(|m| m.len()).ok(), Some(0), "checkpointed and kept, empty");
        assert!(dir.join("tenant.db-shm").exists());

        let h = open();
        assert!(matches!(*h.writer.lock(), Writer::Unopened), "an up-to-date tenant opens without its writer");
        let v: String = h.with_reader(|c| Ok(c.query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))?)).unwrap();
        assert_eq!(v, "v");
        assert_eq!(open_fds(&dir, "tenant.db"), 1, "one reader, no writer");
        h.release_readers();
        h.close_blocking(true);
        drop(h);
        assert_eq!(open_fds(&dir, "tenant.db"), 0);
        assert_eq!(wal.metadata().map(|m| m.len()).ok(), Some(0), "still there, still empty");
    }

    /// A handle opens with one reader, which holds its `-wal` from the start (it has read once); a
    /// second reader opens only when two requests read at once, the writer only at the first write,
    /// and a drained handle that released its readers holds only the writer's files.
    #[test]
    fn readers_open_their_wal_at_once_and_are_released_before_the_close() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t1");
        create_storage(&dir, "t1").unwrap();
        let dir = dir.canonicalize().unwrap();
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let h = TenantHandle::open("t1", dir.clone(), 2, permit, None).unwrap();
        assert_eq!(open_fds(&dir, "tenant.db"), 1, "one reader, no writer before the first write");
        let n: i64 = h.with_reader(|c| Ok(c.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?)).unwrap();
        assert!(n >= 1);
        assert_eq!(open_fds(&dir, "tenant.db"), 1, "a read opens nothing new");
        h.with_reader(|_| h.with_reader(|_| Ok(()))).unwrap();
        assert_eq!(open_fds(&dir, "tenant.db"), 2, "two reads at once: a second reader");
        h.with_writer(|c| Ok(c.execute("INSERT INTO meta(key, value) VALUES ('k', 'v')", [])?)).unwrap();
        assert_eq!(open_fds(&dir, "tenant.db"), 3, "the first write opens the writer");
        // Every reader holds its WAL once the WAL exists (a new tenant's first open has none yet).
        h.with_reader(|_| h.with_reader(|_| Ok(()))).unwrap();
        assert_eq!(open_fds(&dir, "tenant.db-wal"), 3, "the writer's and both readers' WAL");

        h.release_readers();
        assert_eq!(open_fds(&dir, "tenant.db-wal"), 1, "only the writer's WAL is left");
        // SQLite defers closing a database descriptor while another connection of the process holds
        // a lock on that file (closing it would drop the process's POSIX locks): the readers' `db`
        // descriptors go with the writer.
        assert!(open_fds(&dir, "tenant.db") <= 3);
        let refused = h.with_reader(|_| Ok(())).unwrap_err();
        assert_eq!(refused.code(), Code::TenantRestoring);
        h.close_blocking(true);
        assert_eq!(open_fds(&dir, "tenant.db"), 0);
    }
}
