//! The control plane: tenants, API keys, settings, usage and audit events, behind one interface
//! ([`ControlStore`]) with two implementations: [`SqliteControl`], `<data dir>/control.db` (the
//! default), and [`pg::PgControl`], a PostgreSQL database that several nodes share (`control.url`).
//!
//! The embedded one runs every query on a blocking thread ([`SqliteControl::run`]), never on the
//! async runtime. The HTTP layer caches lookups (see `crate::auth`) and drops its caches when the
//! control plane's version moves ([`Watcher`]), so the CLI, or another node, may change it while the
//! server runs.

pub mod keys;
pub mod pg;
pub mod slug;
pub mod store;
pub mod tenants;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{Code, Error};

pub use keys::{ApiKey, NewKey, Scope};
pub use slug::Slug;
pub use store::{
    AuditRecord, Change, ControlStore, DashboardSession, HistoryEvent, Limits, Outcome, StripeEffect, StripeEvent, TenantHistory, UsageBatch,
    UsageRecord, UsageRow,
};
pub use tenants::{Status, Tenant, Tier};

pub type Pool = r2d2::Pool<SqliteConnectionManager>;

/// Versioned control-plane migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    slug TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    tier TEXT NOT NULL,
    status TEXT NOT NULL,
    trial_ends_at TEXT,
    custom_domain TEXT UNIQUE,
    stripe_customer_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    prefix TEXT NOT NULL UNIQUE,
    hash BLOB NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    expires_at TEXT,
    last_used_at TEXT,
    revoked_at TEXT,
    replaced_by TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT,
    action TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_tenant ON audit_events(tenant_id, id);
"#,
    r#"
CREATE TABLE usage_events (
    id INTEGER PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX usage_tenant_at ON usage_events(tenant_id, at);
"#,
    r#"
CREATE TABLE plan_overrides (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    overrides TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE key_rate_limits (
    key_id TEXT PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
    rate_per_sec INTEGER NOT NULL,
    burst INTEGER NOT NULL
);
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    tenant_id TEXT,
    outcome TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX usage_at ON usage_events(at);
CREATE INDEX tenants_stripe_customer ON tenants(stripe_customer_id);
"#,
    r#"
CREATE TABLE replica_deletions (
    tenant_id TEXT PRIMARY KEY,
    due_at TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE integrations (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);
"#,
    r#"
CREATE TABLE pending_jobs (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    job_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);
"#,
    r#"
CREATE TABLE dashboard_links (
    token_hash BLOB PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE TABLE dashboard_sessions (
    token_hash BLOB PRIMARY KEY,
    tenant_id TEXT REFERENCES tenants(id) ON DELETE CASCADE,
    scopes TEXT NOT NULL,
    csrf TEXT NOT NULL,
    via TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions(expires_at);
"#,
    r#"
ALTER TABLE usage_events ADD COLUMN key_id TEXT;
"#,
    r#"
CREATE TABLE usage_batches (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
"#,
];

pub use crate::clock::{parse_ts, ts};

/// The control plane: the embedded SQLite `control.db` (the default), or a PostgreSQL database that
/// several nodes share (`control.url`). Everything goes through [`ControlStore`], which this
/// dereferences to; only the embedded one has a file, a replica and the CLI's offline access.
#[derive(Clone)]
pub struct ControlPlane {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteControl),
    Postgres(pg::PgControl),
}

impl std::ops::Deref for ControlPlane {
    type Target = dyn ControlStore;
    fn deref(&self) -> &(dyn ControlStore + 'static) {
        match &self.backend {
            Backend::Sqlite(s) => s,
            Backend::Postgres(p) => p,
        }
    }
}

impl From<SqliteControl> for ControlPlane {
    fn from(s: SqliteControl) -> ControlPlane {
        ControlPlane { backend: Backend::Sqlite(s) }
    }
}

impl From<pg::PgControl> for ControlPlane {
    fn from(p: pg::PgControl) -> ControlPlane {
        ControlPlane { backend: Backend::Postgres(p) }
    }
}

impl ControlPlane {
    /// The embedded control plane in `<data_dir>/control.db`.
    pub fn open(data_dir: &Path) -> anyhow::Result<ControlPlane> {
        Ok(SqliteControl::open(data_dir)?.into())
    }

    /// The control plane `config` names: PostgreSQL when `control.url` is set, otherwise
    /// `control.db` in the data dir (shipped to `backup`, when given, or with automatic checkpoints
    /// off when `replicated`).
    pub async fn from_config(
        config: &crate::config::Config,
        backup: Option<&std::sync::Arc<crate::backup::BackupService>>,
    ) -> anyhow::Result<ControlPlane> {
        if let Some(url) = &config.control.url {
            return Ok(pg::PgControl::connect(url.expose(), &config.control).await?.into());
        }
        Ok(match backup {
            Some(b) => SqliteControl::open_replicated(&config.data_dir, b)?,
            None => SqliteControl::open_with(&config.data_dir, config.backup_url.is_some())?,
        }
        .into())
    }

    /// The embedded control plane, if this is it.
    pub fn sqlite(&self) -> Option<&SqliteControl> {
        match &self.backend {
            Backend::Sqlite(s) => Some(s),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether other nodes may change this control plane (PostgreSQL): then no process can keep
    /// totals of it in memory.
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The PostgreSQL control plane, if this is it.
    pub fn postgres(&self) -> Option<&pg::PgControl> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(p) => Some(p),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Continuous backup of control.db (PostgreSQL is backed up by its own means).
    pub fn replica(&self) -> Option<&std::sync::Arc<crate::backup::DbReplica>> {
        self.sqlite().and_then(|s| s.replica())
    }
}

#[derive(Clone)]
pub struct SqliteControl {
    pool: Pool,
    path: PathBuf,
    /// Serialises this process's writers. SQLite admits one writer at a time anyway, and its busy
    /// handler polls with growing sleeps, so under contention a waiter can starve past the busy
    /// timeout; a fair in-process lock queues them instead.
    writer: std::sync::Arc<parking_lot::FairMutex<()>>,
    /// Continuous backup of control.db, when the server runs with backups on.
    replica: Option<std::sync::Arc<crate::backup::DbReplica>>,
    /// A connection of its own that reads `data_version`, which moves on commits by any other
    /// connection or process ([`ControlStore::version`]).
    watch: std::sync::Arc<parking_lot::Mutex<Option<Connection>>>,
}

/// What the backup shipper locks to read control.db consistently: the pool and the writer lock.
struct ControlSource {
    pool: Pool,
    writer: std::sync::Arc<parking_lot::FairMutex<()>>,
}

impl crate::backup::Source for ControlSource {
    fn locked(&self, f: &mut dyn FnMut(&Connection) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let _w = self.writer.lock();
        let conn = self.pool.get().map_err(|e| anyhow::anyhow!("control.db pool: {e}"))?;
        f(&conn)
    }
}

impl SqliteControl {
    /// Opens (creating if needed) `<data_dir>/control.db` and runs its migrations.
    pub fn open(data_dir: &Path) -> anyhow::Result<SqliteControl> {
        Self::open_with(data_dir, false)
    }

    /// Like [`open`](Self::open); `replicated` turns automatic checkpoints off on every connection
    /// (the backup shipper checkpoints after shipping).
    pub fn open_with(data_dir: &Path, replicated: bool) -> anyhow::Result<SqliteControl> {
        crate::sqlite::init();
        Self::open_inner(data_dir, replicated, None)
    }

    /// Opens control.db for a server that ships it to `backup` continuously.
    pub fn open_replicated(data_dir: &Path, backup: &std::sync::Arc<crate::backup::BackupService>) -> anyhow::Result<SqliteControl> {
        Self::open_inner(data_dir, true, Some(backup))
    }

    fn open_inner(data_dir: &Path, replicated: bool, backup: Option<&std::sync::Arc<crate::backup::BackupService>>) -> anyhow::Result<SqliteControl> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let path = data_dir.join("control.db");
        let manager = SqliteConnectionManager::file(&path).with_init(move |c| {
            c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
            if replicated {
                crate::backup::prepare_connection(c)?;
            }
            Ok(())
        });
        let pool = r2d2::Pool::builder()
            .max_size(4)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(10))
            .build(manager)
            .context("opening control.db")?;
        let mut conn = pool.get()?;
        migrate(&mut conn, MIGRATIONS).context("migrating control.db")?;
        let writer: std::sync::Arc<parking_lot::FairMutex<()>> = Default::default();
        let replica = backup.map(|svc| {
            let source: std::sync::Arc<dyn crate::backup::Source> = std::sync::Arc::new(ControlSource { pool: pool.clone(), writer: writer.clone() });
            let r = svc.replica_for(crate::backup::ReplicaKey::Control, &path, std::sync::Arc::downgrade(&source));
            svc.hold(source);
            r
        });
        Ok(SqliteControl { pool, path, writer, replica, watch: Default::default() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with a pooled connection on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        self.blocking(None, f).await
    }

    /// `f` on a blocking thread with a pooled connection, holding `writer` (if given) from before the
    /// connection is taken until `f` returns.
    async fn blocking<T, F>(&self, writer: Option<std::sync::Arc<parking_lot::FairMutex<()>>>, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _g = span.enter();
            let _w = writer.as_ref().map(|w| w.lock());
            let mut conn = pool.get().map_err(pool_error)?;
            f(&mut conn)
        })
        .await?
    }

    /// Like [`run`](Self::run), for closures that write: they run one at a time. The writer lock is
    /// taken before the pooled connection, in the same order as the backup shipper takes them
    /// ([`ControlSource`]): the other order let writers hold every connection while waiting for the
    /// lock that the shipper held while waiting for a connection, until the pool's timeout.
    pub async fn write<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
    {
        let replica = self.replica.clone();
        self.blocking(Some(self.writer.clone()), move |c| {
            let out = f(c);
            if let Some(r) = replica {
                r.mark_dirty();
            }
            out
        })
        .await
    }

    pub fn replica(&self) -> Option<&std::sync::Arc<crate::backup::DbReplica>> {
        self.replica.as_ref()
    }

    /// Like [`run_sync`](Self::run_sync), for closures that write.
    pub fn write_sync<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        let _w = self.writer.lock();
        let out = self.run_sync(f);
        if let Some(r) = &self.replica {
            r.mark_dirty();
        }
        out
    }

    /// Runs `f` synchronously (CLI, start-up).
    pub fn run_sync<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, Error>) -> Result<T, Error> {
        let mut conn = self.pool.get().map_err(pool_error)?;
        f(&mut conn)
    }

    fn ping_sync(&self) -> bool {
        self.pool.get().ok().and_then(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).ok()).is_some()
    }
}

/// No control.db connection came free within the pool's timeout: the server is at capacity, so the
/// caller gets 503 `overloaded` with a Retry-After, not a 500.
fn pool_error(e: r2d2::Error) -> Error {
    tracing::warn!(error = %e, "control.db pool exhausted");
    metrics::counter!("warren_control_pool_timeouts_total").increment(1);
    Error::unavailable(Code::Overloaded, "the server is busy; retry shortly", 1)
}

/// Applies the migrations not yet recorded in `user_version`, each in its own transaction.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in migrations.iter().enumerate().skip(current) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn get_setting(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()
}

pub fn set_setting(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute("INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", [key, value])?;
    Ok(())
}

/// Appends an audit event. `actor` is `admin`, `cli`, `tenant:<id>`, `system` or `stripe`.
pub fn audit(conn: &Connection, actor: &str, tenant_id: Option<&str>, action: &str, detail: &serde_json::Value) -> rusqlite::Result<()> {
    audit_at(conn, Utc::now(), actor, tenant_id, action, detail)
}

/// [`audit`] at a given time (services pass their clock's now).
pub fn audit_at(
    conn: &Connection,
    at: DateTime<Utc>,
    actor: &str,
    tenant_id: Option<&str>,
    action: &str,
    detail: &serde_json::Value,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit_events(at, actor, tenant_id, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![ts(at), actor, tenant_id, action, detail.to_string()],
    )?;
    Ok(())
}

/// Trials and churn within one period, from the audit log (see [`lifecycle`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Lifecycle {
    /// Trials that became paying: a Stripe subscription that activated a trial, or an operator
    /// setting a trial's status to active.
    pub trials_converted: u64,
    /// Trials that ran out (moved to the free tier).
    pub trials_expired: u64,
    /// Tenants that left: deleted, cancelled, or whose Stripe subscription was deleted.
    pub churned: u64,
    /// Tenants that existed when the period began (still there, or deleted within it).
    pub at_start: u64,
}

/// Counts trial conversions, expiries and churn in `[from, to)` (timestamps in the stored form),
/// each tenant at most once per figure.
pub fn lifecycle(conn: &Connection, from: &str, to: &str) -> rusqlite::Result<Lifecycle> {
    let distinct = |filter: &str| -> rusqlite::Result<u64> {
        let sql = format!("SELECT count(DISTINCT tenant_id) FROM audit_events WHERE at >= ?1 AND at < ?2 AND ({filter})");
        conn.query_row(&sql, [from, to], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64)
    };
    let trials_converted = distinct(
        "(action LIKE 'stripe.%' AND json_extract(detail, '$.converted_from_trial') = 1)
         OR (action = 'tenant.updated' AND json_extract(detail, '$.from_status') = 'trial' AND json_extract(detail, '$.status') = 'active')",
    )?;
    let trials_expired = distinct("action = 'tenant.trial_expired'")?;
    let churned = distinct(
        "action = 'tenant.deleted' OR action = 'stripe.customer.subscription.deleted'
         OR (action = 'tenant.updated' AND json_extract(detail, '$.status') = 'cancelled')",
    )?;
    let existing: i64 = conn.query_row("SELECT count(*) FROM tenants WHERE created_at < ?1", [from], |r| r.get(0))?;
    // Deleted within the period, but there when it began (its creation was audited before `from`).
    let deleted: i64 = conn.query_row(
        "SELECT count(DISTINCT d.tenant_id) FROM audit_events d WHERE d.action = 'tenant.deleted' AND d.at >= ?1 AND d.at < ?2
         AND EXISTS (SELECT 1 FROM audit_events c WHERE c.tenant_id = d.tenant_id AND c.action = 'tenant.created' AND c.at < ?1)",
        [from, to],
        |r| r.get(0),
    )?;
    Ok(Lifecycle { trials_converted, trials_expired, churned, at_start: (existing + deleted).max(0) as u64 })
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub tenant_id: Option<String>,
    pub action: String,
    #[schema(value_type = Option<Object>)]
    pub detail: serde_json::Value,
}

pub fn list_audit(conn: &Connection, tenant_id: Option<&str>, limit: u32) -> rusqlite::Result<Vec<AuditEvent>> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, tenant_id, action, detail FROM audit_events
         WHERE (?1 IS NULL OR tenant_id = ?1) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![tenant_id, limit], |r| {
        let detail: Option<String> = r.get(5)?;
        Ok(AuditEvent {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            tenant_id: r.get(3)?,
            action: r.get(4)?,
            detail: detail.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

/// Notices changes of the control plane by any process or node ([`ControlStore::version`]).
#[derive(Default)]
pub struct Watcher {
    last: Option<i64>,
}

impl Watcher {
    /// True when the control plane changed since the last call (the first call only looks).
    pub async fn changed(&mut self, control: &ControlPlane) -> bool {
        let Ok(now) = control.version().await else { return false };
        let changed = self.last.is_some_and(|l| l != now);
        self.last = Some(now);
        changed
    }
}

/// Schedules the deletion of a deleted tenant's replica (inside the deleting transaction).
pub fn schedule_replica_deletion(conn: &Connection, tenant_id: &str, due: DateTime<Utc>) -> rusqlite::Result<()> {
    conn.execute("INSERT OR REPLACE INTO replica_deletions(tenant_id, due_at) VALUES (?1, ?2)", rusqlite::params![tenant_id, ts(due)])?;
    Ok(())
}

/// Tenants whose replica is due for deletion at `now`.
pub fn due_replica_deletions(conn: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare("SELECT tenant_id FROM replica_deletions WHERE due_at <= ?1")?;
    let ids = st.query_map([ts(now)], |r| r.get::<_, String>(0))?.collect();
    ids
}

/// Forgets a replica deletion once done.
pub fn replica_deleted(conn: &Connection, tenant_id: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM replica_deletions WHERE tenant_id = ?1", [tenant_id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The backup shipper takes the writer lock, then a connection. Writers must take them in the
    /// same order: while the shipper holds the lock, more concurrent writes than the pool has
    /// connections must not take every connection and leave the shipper waiting for the pool's
    /// timeout (the old order did, and every request queued behind them answered 500).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_take_the_writer_lock_before_a_connection() {
        let dir = tempfile::tempdir().unwrap();
        let cp = SqliteControl::open(dir.path()).unwrap();
        let source = ControlSource { pool: cp.pool.clone(), writer: cp.writer.clone() };
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        // The shipper's side, on its own thread: the lock first, then (once the writers queue) a connection.
        let holder = std::thread::spawn(move || {
            let _held = source.writer.lock();
            locked_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            let t = Instant::now();
            (source.pool.get_timeout(Duration::from_secs(3)).is_ok(), t.elapsed())
        });
        locked_rx.recv().unwrap();
        let writes: Vec<_> = (0..8)
            .map(|i| {
                let cp = cp.clone();
                tokio::spawn(async move {
                    cp.write(move |c| Ok(c.execute("INSERT INTO settings(key, value) VALUES (?1, 'x')", [format!("k{i}")])?)).await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await; // the writers are queued now
        go_tx.send(()).unwrap();
        let (ok, waited) = tokio::task::spawn_blocking(move || holder.join().unwrap()).await.unwrap();
        assert!(ok, "the lock holder found no free connection after {waited:?}");
        for w in writes {
            assert_eq!(w.await.unwrap().unwrap(), 1);
        }
    }
}
