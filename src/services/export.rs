//! Tenant export and import: one archive ([`crate::archive`]) with everything a tenant owns, and the
//! way back in on another node or installation.
//!
//! - Export, from every door (`POST /api/v1/export` with the tenant's own admin key on plans with
//!   `export`, `GET /admin/v1/tenants/{slug}/export`, `warren tenant export`): a consistent snapshot
//!   of the tenant's SQLite file (taken on a read-only connection while writers go on), the JSON Lines
//!   written from that snapshot, and from the control plane the usage history, the audit log and key
//!   metadata. Preparing happens before the answer starts, so a failure is a clear status; then the
//!   archive streams. Audited as `tenant.exported`, with counts only.
//! - Import (`warren tenant import`): unpack and verify everything into `<data dir>/.imports/` first;
//!   only then install the database under a new tenant id, rebuild the search index, and create the
//!   row, a first key, and the usage and audit history in one transaction. A refused archive leaves
//!   nothing behind. Keys are not recreated (an archive has no secrets): the import issues a new one.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use super::audit::Operator;
use super::tenants::unexpected;
use super::{Actor, TenantCtx};
use crate::archive::{self, Manifest, Prepared, Profile, Refused};
use crate::auth::AdminProof;
use crate::control::{tenants::NewTenant, ApiKey, Change, HistoryEvent, NewKey, Outcome, Slug, Status, Tenant, TenantHistory, Tier, UsageRecord};
use crate::error::{Code, Error};
use crate::tenant::{tenant_dir, DB_FILE};

/// Work directories of exports and imports in progress, inside the data dir (same file system, so a
/// staged database moves into place by rename). Emptied at start-up.
pub const EXPORTS_DIR: &str = ".exports";
pub const IMPORTS_DIR: &str = ".imports";

/// A prepared export: its manifest, and the archive to stream.
pub struct Export {
    prepared: Prepared,
    pub filename: String,
}

impl Export {
    pub fn manifest(&self) -> &Manifest {
        &self.prepared.manifest
    }

    /// Writes the archive to `out` (blocking); `progress` hears the uncompressed bytes so far.
    pub fn write_to<W: std::io::Write>(&self, out: W, progress: &mut dyn FnMut(u64)) -> Result<W, Error> {
        self.prepared.write_to(out, progress).map_err(Error::Internal)
    }

    /// The archive as a stream of chunks, written on a blocking thread into a bounded channel (at
    /// most 8 chunks of 64 KiB wait). A client that goes away stops the writing.
    pub fn stream(self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        tokio::task::spawn_blocking(move || {
            let out = std::io::BufWriter::with_capacity(64 << 10, ChannelWriter(tx.clone()));
            if let Err(e) = self.prepared.write_to(out, &mut |_| {}).and_then(|w| w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))) {
                tracing::warn!(error = %format!("{e:#}"), "streaming a tenant export stopped");
                let _ = tx.blocking_send(Err(std::io::Error::other("the export stopped")));
            }
        });
        tokio_stream_from(rx)
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What an import created (the key's plaintext is shown once).
#[derive(Serialize)]
pub struct Imported {
    pub tenant: Tenant,
    pub api_key: String,
    pub key: ApiKey,
    /// The slug the archive was exported from.
    pub from_slug: String,
    pub exported_at: String,
    pub counts: std::collections::BTreeMap<String, u64>,
    pub chunks_indexed: usize,
}

/// `POST /api/v1/export`: the tenant's own archive (admin scope, the `export` feature).
pub async fn export_own(ctx: &TenantCtx) -> Result<Export, Error> {
    ctx.require_feature("export")?;
    let ops = Operator::live(ctx.state(), Actor::Tenant(ctx.id().to_string()));
    let lease = ctx.storage().await?;
    ops.export_of(ctx.tenant(), Some(lease)).await
}

impl Operator {
    /// A tenant's archive for the operator (admin API, CLI).
    pub async fn export_tenant(&self, proof: &AdminProof, slug: &str) -> Result<Export, Error> {
        let t = self.tenant(slug).await?;
        let lease = match &self.live {
            Some(s) => Some(s.registry.cap_for_admin(proof, &t.id).lease().await?),
            None => None,
        };
        self.export_of(&t, lease).await
    }

    async fn export_of(&self, t: &Tenant, lease: Option<crate::tenant::Lease>) -> Result<Export, Error> {
        if let Some(s) = &self.live {
            // Usage counted in memory so far goes into the history first.
            s.meter.flush().await;
        }
        let work = self.config.data_dir.join(EXPORTS_DIR).join(ulid::Ulid::new().to_string());
        std::fs::create_dir_all(&work).map_err(Error::internal)?;
        let snap = work.join(archive::DB);
        // The snapshot: through the lease on a running server (the handle stays open and the tenant
        // cannot be deleted or restored meanwhile), else straight from the file.
        let taken = match lease {
            Some(lease) => {
                let snap = snap.clone();
                lease.blocking(move |h| snapshot_of(&h.dir().join(DB_FILE), &snap)).await
            }
            None => {
                let (db, snap) = (tenant_dir(&self.config.data_dir, &t.id).join(DB_FILE), snap.clone());
                tokio::task::spawn_blocking(move || snapshot_of(&db, &snap)).await?
            }
        };
        if let Err(e) = taken {
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
        let history = self.control.tenant_history(&t.id).await;
        let keys = self.control.list_keys(&t.id).await;
        let (history, keys) = match (history, keys) {
            (Ok(h), Ok(k)) => (h, k),
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(e);
            }
        };
        let control = vec![
            (archive::USAGE, history.usage.iter().map(|u| json!(u)).collect()),
            (archive::AUDIT, history.audit.iter().map(|a| json!(a)).collect()),
            (archive::KEYS, keys.iter().map(key_line).collect()),
        ];
        let now = self.clock.now();
        let profile = profile_of(t);
        let w = work.clone();
        let prepared =
            tokio::task::spawn_blocking(move || archive::prepare(&w, profile, control, crate::clock::ts(now), crate::tenant::migrations()))
                .await?
                .map_err(|e| Error::internal(e.context("preparing a tenant export")))?;
        let m = &prepared.manifest;
        let detail = json!({"slug": t.slug, "bytes": m.bytes(), "counts": m.counts()});
        let at = now;
        let (actor, id) = (self.actor.as_string(), t.id.clone());
        self.control.audit(crate::control::AuditRecord { at, actor, tenant_id: Some(id), action: "tenant.exported", detail }).await?;
        let filename = format!("{}-{}.warren.tar.zst", t.slug, now.format("%Y%m%dT%H%M%SZ"));
        Ok(Export { prepared, filename })
    }

    /// Recreates a tenant from an archive (see the module docs). `slug` replaces the archive's slug.
    pub async fn import_tenant(&self, _proof: &AdminProof, archive_path: &Path, slug: Option<String>) -> Result<Imported, Error> {
        let staging = self.config.data_dir.join(IMPORTS_DIR).join(ulid::Ulid::new().to_string());
        let file = std::fs::File::open(archive_path)
            .map_err(|e| Error::bad_request(Code::InvalidArchive, format!("cannot read {}: {e}", archive_path.display())))?;
        let st = staging.clone();
        let unpacked = tokio::task::spawn_blocking(move || archive::unpack(std::io::BufReader::new(file), &st)).await?.map_err(|e| match e {
            Refused::Invalid(msg) => Error::bad_request(Code::InvalidArchive, format!("{}: {msg}", archive_path.display())),
            Refused::Io(e) => Error::internal(e.context("staging an import")),
        })?;
        let m = unpacked.manifest.clone();
        let known = crate::tenant::migrations().len() as i64;
        if m.schema_version > known {
            return Err(Error::bad_request(
                Code::InvalidArchive,
                format!(
                    "the archive's database has schema version {}, newer than this warren knows ({known}): upgrade warren first",
                    m.schema_version
                ),
            ));
        }
        let new = new_tenant(&m.tenant, slug)?;
        if self.control.tenant_by_slug(new.slug.as_str()).await?.is_some() {
            return Err(Error::conflict(Code::SlugTaken, format!("a tenant {:?} exists already: import with --slug NEW", new.slug.as_str())));
        }
        let bad_lines = |e: anyhow::Error| Error::bad_request(Code::InvalidArchive, format!("the archive's history is not valid: {e:#}"));
        let usage: Vec<UsageRecord> = unpacked.records(archive::USAGE).map_err(bad_lines)?;
        let audit: Vec<HistoryEvent> = unpacked.records(archive::AUDIT).map_err(bad_lines)?;
        let id = crate::control::tenants::new_id();
        let dir = tenant_dir(&self.config.data_dir, &id);
        let (d, tid) = (dir.clone(), id.clone());
        // Storage first, the row last (as for a created tenant): no request sees a tenant without storage.
        let installed = tokio::task::spawn_blocking(move || install(unpacked, &d, &tid)).await?;
        let chunks = match installed {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(Error::internal(e.context("installing an imported tenant")));
            }
        };
        let detail = json!({"slug": new.slug.as_str(), "from_slug": m.tenant.slug, "exported_at": m.created_at, "counts": m.counts()});
        let change = Change::ImportTenant { id: id.clone(), new, key: NewKey::default(), history: TenantHistory { usage, audit } };
        let (tenant, key, api_key) = match self.apply(Some(&id), "tenant.imported", detail, change).await {
            Ok(Outcome::Created { tenant, key, plaintext }) => (tenant, key, plaintext.expose().to_string()),
            Ok(other) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(unexpected(other));
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if let Some(s) = &self.live {
            // Its usage history went into control.db directly: the month's totals are read again.
            s.meter.reset_all();
        }
        if let Some(b) = self.live.as_ref().and_then(|s| s.backup.as_ref()) {
            b.catch_up_tenant(&tenant.id);
        }
        Ok(Imported {
            tenant,
            api_key,
            key,
            from_slug: m.tenant.slug.clone(),
            exported_at: m.created_at.clone(),
            counts: m.counts(),
            chunks_indexed: chunks,
        })
    }
}

fn snapshot_of(db: &Path, to: &Path) -> Result<(), Error> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    archive::snapshot(&conn, to).map_err(|e| match e.downcast::<rusqlite::Error>() {
        Ok(e) => Error::from(e),
        Err(e) => Error::internal(e),
    })
}

/// Moves the verified database into the new tenant's directory, makes it the new tenant's (its id in
/// `meta`, WAL mode) and builds its search index. Answers the chunks indexed.
fn install(unpacked: archive::Unpacked, dir: &Path, id: &str) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let db: PathBuf = dir.join(DB_FILE);
    std::fs::rename(unpacked.db(), &db)?;
    drop(unpacked);
    {
        let mut conn = rusqlite::Connection::open(&db)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA secure_delete=ON;")?;
        crate::control::migrate(&mut conn, crate::tenant::migrations())?;
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('tenant_id', ?1)", [id])?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    }
    crate::search::rebuild_offline(dir)
}

fn profile_of(t: &Tenant) -> Profile {
    Profile {
        slug: t.slug.clone(),
        name: t.name.clone(),
        email: t.email.clone(),
        tier: t.tier.as_str().to_string(),
        status: t.status.as_str().to_string(),
        trial_ends_at: t.trial_ends_at.map(crate::clock::ts),
        custom_domain: t.custom_domain.clone(),
        created_at: crate::clock::ts(t.created_at),
    }
}

fn new_tenant(p: &Profile, slug: Option<String>) -> Result<NewTenant, Error> {
    let bad = |what: &str| Error::bad_request(Code::InvalidArchive, format!("the archive's tenant has an invalid {what}"));
    let slug = Slug::parse(slug.as_deref().unwrap_or(&p.slug))?;
    crate::control::tenants::validate_profile(&p.name, &p.email)?;
    let tier = Tier::parse(&p.tier).ok_or_else(|| bad("tier"))?;
    let status = Status::parse(&p.status).ok_or_else(|| bad("status"))?;
    let trial_ends_at = p.trial_ends_at.as_deref().map(|s| crate::clock::parse_ts(s).map_err(|_| bad("trial end"))).transpose()?;
    Ok(NewTenant { slug, name: p.name.clone(), email: p.email.clone(), tier, status, trial_ends_at })
}

/// Key metadata for `keys.jsonl`: never the hash.
fn key_line(k: &ApiKey) -> Value {
    json!({
        "id": k.id, "prefix": k.prefix, "name": k.name, "scopes": k.scopes,
        "expires_at": k.expires_at, "last_used_at": k.last_used_at, "revoked_at": k.revoked_at,
        "replaced_by": k.replaced_by, "created_at": k.created_at,
    })
}
