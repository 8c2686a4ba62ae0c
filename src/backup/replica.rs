//! One database's replication: [`DbReplica`] marks changes, ships them as LTX files (level 0, with a
//! full image when the history is broken) and checkpoints after shipping. Compaction, retention and
//! the purge after an erasure run in a separate maintenance pass, off the sync path: a sync slot is
//! held only for the ship itself, so a compaction never delays another commit's recovery point. The
//! process-wide loop in the parent module decides when each one syncs.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use parking_lot::Mutex;

use super::*;

/// The replication state of one database while it is open.
pub struct DbReplica {
    pub(super) key: ReplicaKey,
    db_path: PathBuf,
    replica: Replica,
    svc: Weak<BackupService>,
    /// `Some(since)` while changes are waiting; guarded together with the marker file.
    dirty: Mutex<Option<Instant>>,
    /// When the last sync started: the loop starts the next one no sooner than `sync_interval_ms` later.
    last_start: Mutex<Option<Instant>>,
    /// Shipping state; loaded on the first sync in this process.
    ship: tokio::sync::Mutex<Option<ShipState>>,
    /// The replica's objects, as listed at the first sync and kept up to date since. Shipping adds
    /// level-0 files and snapshots; maintenance adds compactions and removes what it deletes.
    files: Mutex<Vec<FileInfo>>,
    /// The time of the last compaction of each level; held by the one maintenance pass running.
    maint: Arc<tokio::sync::Mutex<Option<[Instant; 4]>>>,
    /// The maintenance pass in flight, aborted when the database closes: no pass outlives its handle
    /// (a pass is crash-safe at every step, so aborting one is like a crash of it).
    maint_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Set by the close: no new maintenance pass starts, and none writes the position.
    closing: std::sync::atomic::AtomicBool,
    /// A maintenance pass failed: the next one lists the replica again before it works from its list.
    relist: std::sync::atomic::AtomicBool,
    /// A PUT found another writer's object at its key: the next sync forgets its state and lists the
    /// replica again, so it ships a full image after the newest TXID there.
    reload: std::sync::atomic::AtomicBool,
    /// A level-0 PUT has begun and its position is not stored yet. Such a replica's list is not
    /// kept for a reopen: the PUT may have landed (or may still land) while the position says otherwise.
    put_unsettled: std::sync::atomic::AtomicBool,
    source: Weak<dyn Source>,
    /// An erasure asked for a checkpoint as soon as everything is shipped, whatever the WAL's size.
    checkpoint_soon: std::sync::atomic::AtomicBool,
    /// An erasure asked for a fresh snapshot (and, after `erasure_grace_secs`, the deletion of every
    /// older object).
    erasure_soon: std::sync::atomic::AtomicBool,
}

struct ShipState {
    pos: Position,
    /// Force a full image at the next TXID (history broken or unknown).
    full: bool,
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
    pub(super) fn new(svc: &Arc<BackupService>, key: ReplicaKey, db_path: &Path, source: Weak<dyn Source>) -> Arc<DbReplica> {
        Arc::new(DbReplica {
            replica: svc.root.replica(&key.path()),
            key,
            db_path: db_path.to_path_buf(),
            svc: Arc::downgrade(svc),
            dirty: Mutex::new(None),
            last_start: Mutex::new(None),
            ship: tokio::sync::Mutex::new(None),
            files: Mutex::new(Vec::new()),
            maint: Arc::new(tokio::sync::Mutex::new(None)),
            maint_task: Mutex::new(None),
            closing: std::sync::atomic::AtomicBool::new(false),
            relist: std::sync::atomic::AtomicBool::new(false),
            reload: std::sync::atomic::AtomicBool::new(false),
            put_unsettled: std::sync::atomic::AtomicBool::new(false),
            source,
            checkpoint_soon: std::sync::atomic::AtomicBool::new(false),
            erasure_soon: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks for a TRUNCATE checkpoint at the next sync, once everything in the WAL has shipped
    /// (after an erasure, so the erased bytes leave the WAL promptly). The caller's write marked the
    /// database dirty, so a sync follows; if the checkpoint cannot complete then (new commits, a
    /// long reader), it is tried again at each later sync.
    pub fn checkpoint_soon(&self) {
        self.checkpoint_soon.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// After an erasure (its transaction committed, so the database is queued): at the next sync, once
    /// everything is shipped, a fresh snapshot holding the erased state; `erasure_grace_secs` later,
    /// every object older than it is deleted. Also checkpoints promptly.
    pub fn erasure(&self) {
        self.erasure_soon.store(true, std::sync::atomic::Ordering::SeqCst);
        self.checkpoint_soon();
    }

    pub fn key(&self) -> &ReplicaKey {
        &self.key
    }

    pub(super) fn dirty_since(&self) -> Option<Instant> {
        *self.dirty.lock()
    }

    /// Whether the loop may start this database's next sync at `now`: its last one started at least
    /// `interval` ago (or it has not synced in this process).
    pub(super) fn paced_due(&self, interval: Duration, now: Instant) -> bool {
        self.last_start.lock().is_none_or(|t| now.saturating_duration_since(t) >= interval)
    }

    pub(super) fn lag(&self) -> Option<f64> {
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
        *self.last_start.lock() = Some(Instant::now());
        let since = self.dirty.lock().take();
        let result = self.sync_inner(&svc, since).await;
        match &result {
            Ok(()) => {
                svc.record_success(&self.key);
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

    async fn sync_inner(self: &Arc<Self>, svc: &Arc<BackupService>, since: Option<Instant>) -> anyhow::Result<()> {
        let Some(source) = self.source.upgrade() else {
            anyhow::bail!("the database is closed");
        };
        let started = Instant::now();
        let mut guard = self.ship.lock().await;
        if self.reload.swap(false, std::sync::atomic::Ordering::SeqCst) {
            *guard = None;
        }
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
            self.put_unsettled.store(true, std::sync::atomic::Ordering::SeqCst);
            crate::faults::point("ship.before_put");
            self.put(0, next, next, l0, ts).await.with_context(|| format!("uploading level-0 TXID {next:016x}"))?;
            crate::faults::point("ship.after_put");
            self.files.lock().push(FileInfo { level: 0, min: next, max: next, size: bytes, created_ms: ts });
            metrics::counter!("warren_backup_puts_total").increment(1);
            metrics::counter!("warren_backup_bytes_total").increment(bytes);
            if let Some(l9) = l9 {
                let n = l9.len() as u64;
                self.put(9, 1, next, l9, ts).await.with_context(|| format!("uploading snapshot 1-{next:016x}"))?;
                self.files.lock().push(FileInfo { level: 9, min: 1, max: next, size: n, created_ms: ts });
                st.pos.last_snapshot_ms = ts;
                metrics::counter!("warren_backup_puts_total").increment(1);
            }
            st.pos.txid = next;
            st.pos.cursor = cursor;
            st.pos.commit = commit;
            st.pos.replicated_at_ms = store::now_ms();
            st.pos.new_replica = false;
            st.full = false;
            let (db, pos) = (self.db_path.clone(), st.pos.clone());
            tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
            self.put_unsettled.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        // The recovery point: every commit up to here is in object storage. What follows (a due
        // snapshot, the checkpoint, maintenance) does not hold it back.
        if let Some(t) = since {
            metrics::histogram!("warren_backup_rpo_seconds").record(t.elapsed().as_secs_f64());
            metrics::histogram!("warren_backup_ship_seconds").record(started.elapsed().as_secs_f64());
        }
        self.after_ship(svc, st, &source).await?;
        let purge_due = st.pos.erasure.is_some_and(|m| purge_due(&m, &svc.cfg));
        drop(guard);
        self.maintain_soon(svc, purge_due);
        Ok(())
    }

    /// Loads the persisted position and reconciles it with the replica's newest TXID.
    async fn load_state(&self) -> anyhow::Result<ShipState> {
        let db = self.db_path.clone();
        let mut pos = tokio::task::spawn_blocking(move || read_position(&db)).await?.unwrap_or_default();
        if pos.new_replica && pos.txid == 0 {
            // Created under a new id and never shipped: nothing can be in the replica yet.
            self.files.lock().clear();
            return Ok(ShipState { pos, full: true });
        }
        pos.new_replica = false;
        let svc = self.svc.upgrade();
        // Taken out of the cache, so no other replica of this database can use the same entry.
        if let Some(cached) = svc.as_ref().and_then(|s| s.listings.remove(&self.key)).filter(|c| pos.txid > 0 && c.0 == pos.txid) {
            // Closed in this process at the TXID its position records: the list is still exact.
            *self.files.lock() = cached.1.clone();
            return Ok(ShipState { pos, full: false });
        }
        let mut files = self.replica.list().await.context("listing the replica")?;
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
        *self.files.lock() = std::mem::take(&mut files);
        Ok(ShipState { pos, full })
    }

    /// After a ship, under the ship lock: a snapshot when due (or asked for by an erasure) and the
    /// checkpoint once the WAL is large and fully shipped. Both need the shipped position.
    async fn after_ship(&self, svc: &Arc<BackupService>, st: &mut ShipState, source: &Arc<dyn Source>) -> anyhow::Result<()> {
        let cfg = &svc.cfg;
        let now = store::now_ms();
        let erasure = self.erasure_soon.swap(false, std::sync::atomic::Ordering::SeqCst) || st.pos.erasure_requested;
        let due = now - st.pos.last_snapshot_ms >= (cfg.snapshot_interval_secs as i64) * 1000;
        if st.pos.txid > 0 && (due || erasure) {
            let (db, pos, src) = (self.db_path.clone(), st.pos.clone(), source.clone());
            // Taken under the writer's lock with nothing unshipped: the image holds every commit so
            // far, the erasing one included. With new commits it is `None`, and the next sync retries.
            let snap = tokio::task::spawn_blocking(move || snapshot_at(&db, &pos, &*src)).await??;
            if snap.is_none() && erasure {
                self.erasure_soon.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if let Some((bytes, ts)) = snap {
                let n = bytes.len() as u64;
                self.put(9, 1, st.pos.txid, bytes, ts).await.context("uploading a snapshot")?;
                {
                    let mut files = self.files.lock();
                    files.retain(|f| !(f.level == 9 && f.max == st.pos.txid));
                    files.push(FileInfo { level: 9, min: 1, max: st.pos.txid, size: n, created_ms: ts });
                }
                st.pos.last_snapshot_ms = ts;
                if erasure {
                    st.pos.erasure = Some(ErasureMark { at_ms: ts, snapshot_txid: st.pos.txid });
                    st.pos.erasure_requested = false;
                    tracing::info!(replica = %self.key, txid = st.pos.txid, "shipped the snapshot of an erasure");
                }
                metrics::counter!("warren_backup_puts_total").increment(1);
                let (db, pos) = (self.db_path.clone(), st.pos.clone());
                tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
            }
        }
        // Checkpoint once the WAL is large and everything in it is shipped.
        let forced = self.checkpoint_soon.swap(false, std::sync::atomic::Ordering::SeqCst);
        let limit = if forced { 0 } else { cfg.checkpoint_pages };
        let (db, pos, src) = (self.db_path.clone(), st.pos.clone(), source.clone());
        let done = tokio::task::spawn_blocking(move || checkpoint_if_large(&db, &pos, &*src, limit)).await??;
        if forced && !done {
            self.checkpoint_soon();
        }
        if done {
            crate::faults::point("checkpoint.after");
            st.pos.cursor.checkpointed = true;
            let (db, pos) = (self.db_path.clone(), st.pos.clone());
            tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
        }
        Ok(())
    }

    /// Starts a maintenance pass (compaction, retention, the purge after an erasure) in its own task
    /// when one is due and none is running for this database. It takes a maintenance slot, not a sync
    /// slot, and never the ship lock while it talks to storage, so shipping goes on beside it.
    fn maintain_soon(self: &Arc<Self>, svc: &Arc<BackupService>, purge_due: bool) {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // A pass already running picks up the new files at its next step, or at the next sync.
        let Ok(mut m) = self.maint.clone().try_lock_owned() else { return };
        let last = *m.get_or_insert([Instant::now(); 4]);
        if !(1..=3).any(|level| compaction_due(&svc.cfg, &last, level)) && !purge_due {
            return;
        }
        let (me, slots) = (self.clone(), svc.maintenance.clone());
        let task = tokio::spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else { return };
            if let Err(e) = me.maintain(&mut m).await {
                me.relist.store(true, std::sync::atomic::Ordering::SeqCst);
                metrics::counter!("warren_backup_maintenance_errors_total").increment(1);
                tracing::warn!(replica = %me.key, error = %format!("{e:#}"), "backup maintenance failed; it is retried after the next sync");
            }
        });
        *self.maint_task.lock() = Some(task.abort_handle());
    }

    /// One maintenance pass: each due compaction, then retention, then the purge after an erasure.
    async fn maintain(&self, last: &mut Option<[Instant; 4]>) -> anyhow::Result<()> {
        let Some(svc) = self.svc.upgrade() else { return Ok(()) };
        if self.relist.load(std::sync::atomic::Ordering::SeqCst) {
            // After a failure the list may be stale (an object gone, another added): list again, under
            // the ship lock so that no ship adds a file meanwhile.
            let _ship = self.ship.lock().await;
            let files = self.replica.list().await.context("listing the replica")?;
            *self.files.lock() = files;
            self.relist.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        let cfg = &svc.cfg;
        let times = last.get_or_insert([Instant::now(); 4]);
        for level in 1..=3u8 {
            if compaction_due(cfg, times, level as usize) {
                self.compact(level).await?;
                times[level as usize] = Instant::now();
            }
        }
        self.retention(cfg).await?;
        self.purge_after_erasure(cfg).await
    }

    /// Merges the files of `level - 1` newer than everything at `level` into one file at `level`.
    async fn compact(&self, level: u8) -> anyhow::Result<()> {
        let files = self.files.lock().clone();
        let floor = files.iter().filter(|f| f.level == level).map(|f| f.max).max().unwrap_or(0);
        let mut inputs: Vec<FileInfo> = files.iter().filter(|f| f.level == level - 1 && f.min > floor).copied().collect();
        inputs.sort_by_key(|f| (f.min, f.max));
        // Only a contiguous run can be merged. It starts right after `floor`, or, when retention removed
        // the files there, at a file that the oldest snapshot reaches (so no gap is ever exposed).
        let oldest_snap = files.iter().filter(|f| f.level == 9).map(|f| f.max).min().unwrap_or(0);
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
        self.put(level, min, max, bytes.into(), h.timestamp_ms).await.with_context(|| format!("uploading level-{level} compaction"))?;
        crate::faults::point("compact.after_put");
        self.files.lock().push(FileInfo { level, min, max, size: n, created_ms: h.timestamp_ms });
        metrics::counter!("warren_backup_puts_total").increment(1);
        metrics::counter!("warren_backup_compactions_total", "level" => level.to_string()).increment(1);
        Ok(())
    }

    /// Deletes files no restore within the retention window needs, never breaking the chain from the
    /// oldest kept snapshot to the newest TXID.
    async fn retention(&self, cfg: &BackupSettings) -> anyhow::Result<()> {
        let now = store::now_ms();
        let files = self.files.lock().clone();
        let mut doomed: Vec<FileInfo> = Vec::new();
        let max_l1 = files.iter().filter(|f| f.level == 1).map(|f| f.max).max().unwrap_or(0);
        let newest_l0 = files.iter().filter(|f| f.level == 0).map(|f| f.max).max().unwrap_or(0);
        for f in files.iter().filter(|f| f.level == 0) {
            if f.max <= max_l1 && f.max != newest_l0 && now - f.created_ms >= (cfg.l0_retention_secs as i64) * 1000 {
                doomed.push(*f);
            }
        }
        let mut snaps: Vec<FileInfo> = files.iter().filter(|f| f.level == 9).copied().collect();
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
            for f in files.iter().filter(|f| (1..=8).contains(&f.level) && f.max < oldest_kept) {
                doomed.push(*f);
            }
            for f in files.iter().filter(|f| f.level == 0 && f.max < oldest_kept && f.max != newest_l0) {
                if !doomed.contains(f) {
                    doomed.push(*f);
                }
            }
        }
        for f in &doomed {
            self.replica.delete(f).await.with_context(|| format!("deleting {} (retention)", ltx::file_name(f.min, f.max)))?;
            metrics::counter!("warren_backup_deletes_total").increment(1);
            crate::faults::point("retention.between_deletes");
        }
        self.files.lock().retain(|f| !doomed.contains(f));
        Ok(())
    }

    /// Once `erasure_grace_secs` has passed since an erasure's snapshot, deletes every object older
    /// than it, at every level: those may hold the erased data. The chain then starts at that snapshot,
    /// so no restore point before the erasure remains.
    async fn purge_after_erasure(&self, cfg: &BackupSettings) -> anyhow::Result<()> {
        // Only while the database is open: the position file belongs to the open handle's shipper.
        if self.source.upgrade().is_none() {
            return Ok(());
        }
        let Some(mark) = self.ship.lock().await.as_ref().and_then(|st| st.pos.erasure) else { return Ok(()) };
        if !purge_due(&mark, cfg) {
            return Ok(());
        }
        let doomed: Vec<FileInfo> = self.files.lock().iter().filter(|f| f.max < mark.snapshot_txid).copied().collect();
        for f in &doomed {
            self.replica.delete(f).await.with_context(|| format!("deleting {} (erasure)", ltx::file_name(f.min, f.max)))?;
            metrics::counter!("warren_backup_deletes_total").increment(1);
        }
        self.files.lock().retain(|f| !doomed.contains(f));
        let mut guard = self.ship.lock().await;
        let open = !self.closing.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(st) = guard.as_mut().filter(|st| open && st.pos.erasure == Some(mark)) {
            st.pos.erasure = None;
            let (db, pos) = (self.db_path.clone(), st.pos.clone());
            tokio::task::spawn_blocking(move || write_position(&db, &pos)).await??;
        }
        drop(guard);
        tracing::info!(replica = %self.key, deleted = doomed.len(), before_txid = mark.snapshot_txid, "deleted the replica objects older than an erasure");
        Ok(())
    }

    /// Final ship before a handle closes. True when everything committed is in the replica.
    pub async fn ship_before_close(self: &Arc<Self>, timeout: Duration) -> bool {
        // No maintenance pass outlives the handle: stop the one in flight and wait until it is gone.
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.maint_task.lock().take() {
            t.abort();
        }
        drop(self.maint.lock().await);
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

    /// Puts one object into this database's replica, and reports the PUT and its bytes as the
    /// tenant's object-store cost (the control plane's replica is nobody's).
    ///
    /// Replica writes are create-only: an object already at the key is never replaced. If it holds
    /// the same change, it is an earlier attempt of ours whose answer was lost, and the PUT is done.
    /// Otherwise another writer put it there: a node that held this tenant's lease before, or holds
    /// it now while this node has lost it. Either way this PUT fails (nothing is acknowledged from
    /// it), and the next sync lists the replica again and ships a full image after its newest TXID,
    /// so the replica restores to this node's state if this node still owns the tenant; if it does
    /// not, the lease check refuses that sync.
    async fn put(&self, level: u8, min: u64, max: u64, data: Bytes, created_ms: i64) -> anyhow::Result<()> {
        let n = data.len() as u64;
        if let (Some(id), Some(svc)) = (self.key.tenant_id(), self.svc.upgrade()) {
            if let Some(fence) = svc.fence.get() {
                anyhow::ensure!(fence(id), "this node no longer holds the lease of tenant {id}: its replica is not written from here");
            }
        }
        if let store::Put::Existing(found) = self.replica.put(level, min, max, data.clone(), created_ms).await? {
            if !ltx::same_change(&found, &data) {
                metrics::counter!("warren_backup_conflicts_total").increment(1);
                self.reload.store(true, std::sync::atomic::Ordering::SeqCst);
                self.relist.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::error!(replica = %self.key, level, min, max, "another writer's object is at this key of the replica; the next sync lists it again and ships a full image");
                anyhow::bail!("the replica already holds a different {} at level {level} (another writer)", ltx::file_name(min, max));
            }
        }
        if let (Some(id), Some(svc)) = (self.key.tenant_id(), self.svc.upgrade()) {
            if let Some(sink) = svc.costs.get() {
                sink(id, n);
            }
        }
        Ok(())
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

/// Whether compaction into `level` (1–3) is due, its last run having been at `last[level]`.
fn compaction_due(cfg: &BackupSettings, last: &[Instant; 4], level: usize) -> bool {
    let interval = [0, cfg.l1_interval_secs, cfg.l2_interval_secs, cfg.l3_interval_secs][level];
    last[level].elapsed() >= Duration::from_secs(interval)
}

/// Whether `erasure_grace_secs` has passed since an erasure's snapshot, so older objects are deleted.
fn purge_due(mark: &ErasureMark, cfg: &BackupSettings) -> bool {
    store::now_ms() - mark.at_ms >= (cfg.erasure_grace_secs as i64).saturating_mul(1000)
}

impl Drop for DbReplica {
    /// Keeps the object list for a reopen in this process. A maintenance pass holds the replica, so
    /// the list is final here; the TXID comes from the position the ship state last persisted.
    fn drop(&mut self) {
        let (Some(svc), Ok(guard)) = (self.svc.upgrade(), self.ship.try_lock()) else { return };
        let unsettled = self.put_unsettled.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(st) = guard.as_ref().filter(|st| st.pos.txid > 0 && !st.full && !unsettled) {
            svc.listings.insert(self.key.clone(), Arc::new((st.pos.txid, std::mem::take(&mut *self.files.lock()))));
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
    let page = if pos.commit > 0 { wal::db_file_geometry(db).map(|g| g.0).unwrap_or(4096) } else { 4096 } as u64;
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
