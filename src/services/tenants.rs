//! Tenants: create, list, show, update (tier, status — suspend and resume —, domain, profile),
//! delete, restore, reindex, plan overrides. The same functions serve the admin API, open signup,
//! Stripe and the CLI; each change runs in one audited transaction ([`Operator::audited`]).
//!
//! Creation writes the tenant's storage first, then the control-plane row, the first API key and the
//! audit event in one transaction: if the storage cannot be created, nothing is committed.
//!
//! Deletion follows a fixed order so that no request can reopen a tenant being deleted:
//! 1. remove the row (keys cascade), record the audit event and, when backups are configured,
//!    schedule the replica's deletion after `backup.delete_grace_secs` — all in one transaction;
//! 2. on a running server, drop the auth caches, block the id in the registry, close its handle and
//!    wait for in-flight requests;
//! 3. move the directory into `<data dir>/.trash/` (atomic rename) and remove it.
//!
//! The CLI runs the same steps with the server stopped (step 2 has nothing to close); the server's
//! replica sweeper deletes the replica once it is due, whichever door deleted the tenant.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit::Operator;
use crate::auth::AdminProof;
use crate::backup::ReplicaKey;
use crate::control::tenants::{self, NewTenant, TenantPatch};
use crate::control::{ApiKey, Change, NewKey, Outcome, Slug, Status, Tenant, Tier};
use crate::error::{Code, Error};
use crate::tenant::{create_storage, tenant_dir, Block};

/// `POST /admin/v1/tenants` body (and the CLI's and signup's input).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 3 to 63 characters: a-z, 0-9 and inner hyphens.
    pub slug: String,
    pub name: String,
    pub email: String,
    /// `free` (default), `starter`, `pro` or `enterprise`.
    #[serde(default = "default_tier")]
    #[schema(value_type = Option<String>)]
    pub tier: Tier,
    /// `trial` makes the tenant a trial of `tier` for `trial_days` (default 14).
    #[schema(value_type = Option<String>)]
    pub status: Option<Status>,
    pub trial_days: Option<u32>,
}

fn default_tier() -> Tier {
    Tier::Free
}

/// A created tenant with its first key (the plaintext is shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    pub tenant: Tenant,
    pub api_key: String,
    pub key: ApiKey,
    pub quickstart: String,
}

/// One page of tenants.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TenantPage {
    pub tenants: Vec<Tenant>,
    pub next_cursor: Option<String>,
    pub total: i64,
}

impl Operator {
    /// Looks a tenant up by slug (404 when absent or reserved, 400 when malformed).
    pub async fn tenant(&self, slug: &str) -> Result<Tenant, Error> {
        let slug = Slug::parse(slug).map_err(|e| if e.code() == Code::ReservedSlug { not_found() } else { e })?;
        self.control.tenant_by_slug(slug.as_str()).await?.ok_or_else(not_found)
    }

    /// Looks a tenant up by id (ids and slugs never collide: see `control::slug::is_id_shaped`).
    pub async fn tenant_by_id(&self, id: &str) -> Result<Option<Tenant>, Error> {
        self.control.tenant_by_id(id).await
    }

    /// Creates a tenant with storage and a first key.
    pub async fn create_tenant(&self, req: CreateTenant) -> Result<Created, Error> {
        let now = self.clock.now();
        let new = into_new(req, now)?;
        let id = tenants::new_id();
        let dir = tenant_dir(&self.config.data_dir, &id);
        let cluster = self.live.as_ref().and_then(|s| s.cluster.clone());
        if let Some(c) = &cluster {
            // In a cluster the creating node owns the new tenant from its first moment.
            c.adopt_new(&id).await?;
        }
        // Storage first, outside the control-plane write lock; the row that makes the tenant reachable
        // comes last, so no request can see a tenant without storage.
        let d = dir.clone();
        let sid = id.clone();
        let made = tokio::task::spawn_blocking(move || {
            create_storage(&d, &sid)?;
            // A new id has no replica yet: its first sync ships a full image without listing storage.
            crate::backup::mark_new_replica(&d.join(crate::tenant::DB_FILE))
        })
        .await?;
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Error::internal(e.context("creating tenant storage")));
        }
        let detail = json!({"slug": new.slug.as_str(), "tier": new.tier});
        let change = Change::CreateTenant { id: id.clone(), new, key: NewKey::default() };
        let (tenant, key, api_key) = match self.apply(Some(&id), "tenant.created", detail, change).await {
            Ok(Outcome::Created { tenant, key, plaintext }) => (tenant, key, plaintext.expose().to_string()),
            Ok(other) => return Err(unexpected(other)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        if let Some(c) = &cluster {
            c.record_epoch(&tenant.id);
        }
        if let Some(b) = self.live.as_ref().and_then(|s| s.backup.as_ref()) {
            // Every tenant has a replica from its first moment: the service opens it and ships a snapshot.
            b.catch_up_tenant(&tenant.id);
        }
        let quickstart = super::quickstart::text(&tenant.slug, &self.public_url(), &self.tenant_url(&tenant.slug), &api_key);
        Ok(Created { tenant, api_key, key, quickstart })
    }

    /// The server's public URL (`public_url`, else the bound listen address), without a trailing slash.
    pub fn public_url(&self) -> String {
        if let Some(u) = &self.config.public_url {
            return u.trim_end_matches('/').to_string();
        }
        let port = self.live.as_ref().map_or(self.config.listen.port(), |s| s.port);
        let ip = self.config.listen.ip();
        let host = if ip.is_unspecified() {
            "127.0.0.1".to_string()
        } else if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        format!("http://{host}:{port}")
    }

    /// A tenant's own URL (subdomain or template), the alternative to the key-only public URL.
    pub fn tenant_url(&self, slug: &str) -> String {
        let port = self.live.as_ref().map_or(self.config.listen.port(), |s| s.port);
        match &self.config.public_url_template {
            Some(t) => t.replace("{slug}", slug),
            None => format!("http://{slug}.{}:{port}", self.config.base_domain),
        }
    }

    /// Keyset pagination over slugs; `q` matches slug, name or email.
    pub async fn list_tenants(&self, q: Option<String>, cursor: Option<String>, limit: u32) -> Result<TenantPage, Error> {
        let (list, total) = self.control.list_tenants(q, cursor, limit.saturating_add(1)).await?;
        let more = list.len() > limit as usize;
        let page: Vec<Tenant> = list.into_iter().take(limit as usize).collect();
        let next_cursor = if more { page.last().map(|t| t.slug.clone()) } else { None };
        Ok(TenantPage { tenants: page, next_cursor, total })
    }

    /// Changes tier, status (suspend, resume, cancel), domain or profile.
    pub async fn update_tenant(&self, slug: &str, patch: TenantPatch) -> Result<Tenant, Error> {
        let t = self.tenant(slug).await?;
        let detail = json!({"tier": patch.tier, "status": patch.status, "custom_domain": patch.custom_domain, "from_status": t.status});
        match self.apply(Some(&t.id), "tenant.updated", detail, Change::UpdateTenant { id: t.id.clone(), patch }).await? {
            Outcome::Tenant(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// Suspends a tenant (its keys stop working at once) or resumes it.
    pub async fn set_status(&self, slug: &str, status: Status) -> Result<Tenant, Error> {
        self.update_tenant(slug, TenantPatch { status: Some(status), ..TenantPatch::default() }).await
    }

    /// Deletes a tenant and its data from every door (see the module docs for the order).
    pub async fn delete_tenant(&self, slug: &str) -> Result<(), Error> {
        let t = self.tenant(slug).await?;
        if self.live.is_none() {
            self.refuse_while_server_runs(|dir, url| {
                format!("a warren server is running on {dir}; delete through it:\n  curl -X DELETE -H \"Authorization: Bearer $WARREN_ADMIN_TOKEN\" {url}/admin/v1/tenants/{slug}")
            })?;
        }
        let replica_due =
            self.config.backup_url.as_ref().map(|_| self.clock.now() + chrono::Duration::seconds(self.config.backup.delete_grace_secs as i64));
        let detail = json!({"slug": t.slug, "replica_deleted_after": replica_due.map(crate::clock::ts)});
        match self.apply(Some(&t.id), "tenant.deleted", detail, Change::DeleteTenant { id: t.id.clone(), replica_due }).await? {
            Outcome::Done(true) => {}
            Outcome::Done(false) => return Err(not_found()),
            other => return Err(unexpected(other)),
        }
        crate::faults::point("delete.between_row_and_files");
        // The row is gone: finish even if the request that asked goes away (a client that disconnects,
        // the request timeout while in-flight requests drain), so no data is left behind.
        let (live, data_dir, id) = (self.live.clone(), self.config.data_dir.clone(), t.id.clone());
        let finish = tokio::spawn(async move {
            if let Some(s) = &live {
                s.registry.block_and_close(&id, Block::Deleting).await;
            }
            tokio::task::spawn_blocking(move || remove_storage(&data_dir, &id)).await?.map_err(Error::Internal)
        });
        finish.await??;
        // The id is never reused (ULIDs), so the block can stay until restart; it costs a few bytes.
        Ok(())
    }

    /// Rebuilds a tenant's search index from SQLite (through its handle on a running server).
    pub async fn reindex(&self, proof: &AdminProof, slug: &str) -> Result<(String, usize), Error> {
        let t = self.tenant(slug).await?;
        let Some(s) = &self.live else {
            let dir = tenant_dir(&self.config.data_dir, &t.id);
            let n = tokio::task::spawn_blocking(move || crate::search::rebuild_offline(&dir)).await?.map_err(Error::Internal)?;
            return Ok((t.slug, n));
        };
        let lease = s.registry.cap_for_admin(proof, &t.id).lease().await?;
        let n = lease.blocking(super::search::rebuild).await?;
        Ok((t.slug, n))
    }

    /// A tenant's plan overrides.
    pub async fn overrides(&self, slug: &str) -> Result<Option<crate::plans::Overrides>, Error> {
        let t = self.tenant(slug).await?;
        let text = self.control.overrides_json(&t.id).await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Sets (or with `None` removes) a tenant's own limits and feature switches.
    pub async fn put_overrides(&self, slug: &str, o: Option<crate::plans::Overrides>) -> Result<(), Error> {
        if let Some(o) = &o {
            o.validate()?;
        }
        let t = self.tenant(slug).await?;
        let text = o.as_ref().map(serde_json::to_string).transpose().map_err(Error::internal)?;
        let change = Change::PutOverrides { tenant_id: t.id.clone(), overrides: text };
        self.apply(Some(&t.id), "plan.overrides", json!({"overrides": o}), change).await?;
        self.refresh_plans().await
    }

    pub(crate) async fn refresh_plans(&self) -> Result<(), Error> {
        if let Some(s) = &self.live {
            s.plans.refresh_overrides(&s.control).await?;
        }
        Ok(())
    }

    /// Deletes the replicas of tenants deleted more than `backup.delete_grace_secs` ago.
    pub async fn delete_due_replicas(&self) {
        let Some(backup) = self.live.as_ref().and_then(|s| s.backup.clone()) else { return };
        let now = self.clock.now();
        let ids = match self.control.due_replica_deletions(now).await {
            Ok(ids) => ids,
            Err(e) => return tracing::warn!(error = %e, "listing due replica deletions failed"),
        };
        for id in ids {
            match backup.delete_replica(&ReplicaKey::tenant(&id)).await {
                Ok(n) => {
                    tracing::info!(tenant = %id, files = n, "deleted the replica of a deleted tenant");
                    let sys = Operator { actor: super::Actor::System, ..self.clone() };
                    let change = Change::ReplicaDeleted { tenant_id: id.clone() };
                    let done = sys.apply(Some(&id), "tenant.replica_deleted", json!({"files": n}), change).await;
                    if let Err(e) = done {
                        tracing::warn!(tenant = %id, error = %e, "recording a replica deletion failed; will retry");
                    }
                }
                Err(e) => tracing::warn!(tenant = %id, error = %format!("{e:#}"), "deleting a replica failed; will retry"),
            }
        }
    }
}

/// Finishes deletes that a crash interrupted: empties `<data dir>/.trash/` and removes the directory
/// of every deleted tenant (no row, and a `tenant.deleted` audit event: the row goes first, in the
/// audited transaction). A directory without a row but without that event is left alone: it may be a
/// tenant that the CLI is creating (storage first, row last). Runs at start-up, before serving.
pub async fn sweep_deleted_storage(control: &crate::control::ControlPlane, data_dir: &std::path::Path) -> usize {
    // The trash of interrupted deletes, and the work files of interrupted exports and imports (they
    // may hold personal data, so none outlives a restart).
    for leftover in [".trash", super::export::EXPORTS_DIR, super::export::IMPORTS_DIR] {
        let dir = data_dir.join(leftover);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(error = %e, dir = %dir.display(), "emptying the left-overs of interrupted work failed");
            }
        }
    }
    let ids: Vec<String> = match std::fs::read_dir(data_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.len() == 26 && ulid::Ulid::from_string(n).is_ok())
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing the data dir for interrupted deletes failed");
            return 0;
        }
    };
    let deleted = match control.deleted_among(ids).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "finding interrupted deletes failed; they are finished on the next start");
            return 0;
        }
    };
    let mut n = 0;
    for id in deleted {
        match remove_storage(data_dir, &id) {
            Ok(()) => {
                tracing::info!(tenant = %id, "removed the storage of a tenant whose delete was interrupted");
                n += 1;
            }
            Err(e) => tracing::warn!(tenant = %id, error = %format!("{e:#}"), "removing the storage of a deleted tenant failed"),
        }
    }
    n
}

/// A change answered with an outcome of another kind: a bug in the control-plane implementation.
pub(crate) fn unexpected(o: Outcome) -> Error {
    Error::internal(anyhow::anyhow!("unexpected control-plane outcome: {o:?}"))
}

fn not_found() -> Error {
    Error::not_found(Code::TenantNotFound, "no such tenant")
}

fn into_new(req: CreateTenant, now: chrono::DateTime<chrono::Utc>) -> Result<NewTenant, Error> {
    let slug = Slug::parse(&req.slug)?;
    tenants::validate_profile(&req.name, &req.email)?;
    let status = req.status.unwrap_or(Status::Active);
    let trial_ends_at = match status {
        Status::Trial => Some(now + chrono::Duration::days(req.trial_days.unwrap_or(14).clamp(1, 365) as i64)),
        _ => None,
    };
    Ok(NewTenant { slug, name: req.name, email: req.email, tier: req.tier, status, trial_ends_at })
}

/// Moves a tenant's directory to the trash and removes it.
pub fn remove_storage(data_dir: &std::path::Path, tenant_id: &str) -> anyhow::Result<()> {
    let dir = tenant_dir(data_dir, tenant_id);
    if !dir.exists() {
        return Ok(());
    }
    let trash = data_dir.join(".trash");
    std::fs::create_dir_all(&trash)?;
    let target = trash.join(format!("{tenant_id}-{}", chrono::Utc::now().timestamp_millis()));
    std::fs::rename(&dir, &target)?;
    std::fs::remove_dir_all(&target)?;
    Ok(())
}
