//! Backups from the tenant's side: replication status and point-in-time restore in place, for the
//! operator (admin API, CLI) and for a tenant's own admin-scoped key on plans with `pitr_restore`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::Operator;
use super::context::TenantCtx;
use super::ops::Op;
use crate::auth::AdminProof;
use crate::backup::restore::{Report, Target};
use crate::backup::ReplicaKey;
use crate::control::Tenant;
use crate::error::{Code, Error};
use crate::state::AppState;
use crate::tenant::{tenant_dir, Block, TenantCap, Unblock};

/// Body of a restore: at most one of `txid` (16 hex digits) and `timestamp` (RFC 3339); neither means latest.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub txid: Option<String>,
    pub timestamp: Option<String>,
}

impl RestoreRequest {
    /// Parses an optional body (empty means latest).
    pub fn from_body(body: &[u8]) -> Result<RestoreRequest, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(RestoreRequest::default());
        }
        serde_json::from_slice(body).map_err(|e| Error::bad_request(Code::InvalidJson, format!("invalid JSON body: {e}")))
    }

    pub fn target(&self) -> Result<Target, Error> {
        Target::parse(self.txid.as_deref(), self.timestamp.as_deref()).map_err(|e| Error::validation(format!("{e:#}")))
    }
}

fn status_json(state: &AppState, t: &Tenant) -> Value {
    match &state.backup {
        None => json!({"tenant": t.slug, "enabled": false}),
        Some(b) => {
            let db = tenant_dir(&state.config.data_dir, &t.id).join(crate::tenant::DB_FILE);
            json!({"tenant": t.slug, "enabled": true, "backup": b.status(&ReplicaKey::tenant(&t.id), &db)})
        }
    }
}

/// The tenant's own replication state (admin-scoped key).
pub fn backup_status(ctx: &TenantCtx) -> Result<Value, Error> {
    ctx.authorize(Op::BackupStatus)?;
    Ok(status_json(ctx.state(), ctx.tenant()))
}

/// Point-in-time restore of the tenant's own data: admin-scoped key and `pitr_restore` in the plan.
pub async fn restore_own(ctx: &TenantCtx, req: RestoreRequest) -> Result<Value, Error> {
    ctx.authorize(Op::Restore)?;
    ctx.require_feature("pitr_restore")?;
    let target = req.target()?;
    let t = ctx.tenant().clone();
    let report = restore_tenant(ctx.state(), ctx.cap(), &t, target, &super::Actor::Tenant(t.id.clone()).as_string()).await?;
    Ok(json!({"tenant": t.slug, "restored": report}))
}

impl Operator {
    /// A tenant's replication state: replica URL, last replicated TXID and time, lag, last error.
    pub async fn backup_status(&self, slug: &str) -> Result<Value, Error> {
        let t = self.tenant(slug).await?;
        let s = self.live.as_ref().ok_or_else(|| Error::internal(anyhow::anyhow!("backup status needs a running server")))?;
        Ok(status_json(s, &t))
    }

    /// Restores one tenant in place on a running server (latest, a TXID or a time). Other tenants keep serving.
    pub async fn restore(&self, proof: &AdminProof, slug: &str, req: RestoreRequest) -> Result<Value, Error> {
        let target = req.target()?;
        let t = self.tenant(slug).await?;
        let s =
            self.live.as_ref().ok_or_else(|| Error::internal(anyhow::anyhow!("an in-place restore through the service needs a running server")))?;
        let cap = s.registry.cap_for_admin(proof, &t.id);
        let report = restore_tenant(s, &cap, &t, target, &self.actor.as_string()).await?;
        Ok(json!({"tenant": t.slug, "restored": report}))
    }
}

/// Restores one tenant in place from its replica: the tenant is offline (503 `tenant_restoring`) while
/// its handle closes and the file is replaced atomically; its derived index is rebuilt on next open.
/// Other tenants are untouched.
async fn restore_tenant(state: &AppState, cap: &TenantCap, tenant: &Tenant, target: Target, actor: &str) -> Result<Report, Error> {
    let backup = state.backup.clone().ok_or_else(|| Error::conflict(Code::BackupsDisabled, "backups are not configured (backup_url)"))?;
    let replica = backup.root().replica(&ReplicaKey::tenant(cap.id()).path());
    // Check the replica before taking the tenant offline: a bad target is a 4xx and nothing changes.
    let files = replica.list().await.map_err(|e| Error::unavailable(Code::BackupUnavailable, format!("the replica cannot be listed: {e:#}"), 5))?;
    let chain = crate::backup::restore::plan(&files, target).map_err(|e| Error::bad_request(Code::RestorePointUnavailable, format!("{e:#}")))?;
    refuse_across_erasure(&state.control, &tenant.id, &chain).await?;
    if !state.registry.try_block(&tenant.id, Block::Restoring) {
        return Err(Error::unavailable(Code::TenantRestoring, "this tenant is already being restored or deleted", 5));
    }
    let (state, tenant, actor) = (state.clone(), tenant.clone(), actor.to_string());
    // The restore runs to its end even if the request that asked for it goes away (a client that
    // disconnects, the request timeout), and the tenant is unblocked however it ends.
    let task = tokio::spawn(async move {
        let _unblock = Unblock(state.registry.clone(), tenant.id.clone());
        let outcome = match crate::tenant::restore_blocked(&state.registry, &tenant.id, &replica, target).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(Error::bad_request(Code::RestoreFailed, format!("{e:#}"))),
            Err(e) => Err(e),
        };
        if let Ok(report) = &outcome {
            // The restored state is the new history: the next TXID is a full image.
            backup.catch_up_tenant(&tenant.id);
            let (id, detail) = (tenant.id.clone(), json!({"txid": report.txid}));
            let now = state.plans.clock.now();
            let record = crate::control::AuditRecord { at: now, actor, tenant_id: Some(id), action: "tenant.restored", detail };
            let _ = state.control.audit(record).await;
        }
        outcome
    });
    task.await?
}

/// 400 `restore_before_erasure` when the restore point (the newest file of `chain`) was captured
/// before the tenant's latest erasure (`customer.erased` in its audit log): restoring it would bring
/// erased data back. Every door runs this before it restores.
pub async fn refuse_across_erasure(control: &crate::control::ControlPlane, tenant_id: &str, chain: &[crate::backup::FileInfo]) -> Result<(), Error> {
    let point_ms = chain.iter().map(|f| f.created_ms).max().unwrap_or(0);
    let events = control.audit_events(Some(tenant_id.to_string()), 100_000).await?;
    let Some(erased) = events.iter().find(|e| e.action == "customer.erased") else { return Ok(()) };
    let Ok(at) = crate::clock::parse_ts(&erased.at) else { return Ok(()) };
    if point_ms < at.timestamp_millis() {
        let point = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(point_ms).map(crate::clock::ts).unwrap_or_default();
        return Err(Error::bad_request(
            Code::RestoreBeforeErasure,
            format!(
                "the restore point ({point}) is before the erasure of a customer at {} (audit event customer.erased): restoring it would bring erased data back; choose a point after it",
                erased.at
            ),
        ));
    }
    Ok(())
}

impl Operator {
    /// For the CLI's restore: refuses a target before the tenant's latest erasure (see
    /// [`refuse_across_erasure`]).
    pub async fn check_restore_point(&self, tenant_id: &str, replica: &crate::backup::Replica, target: Target) -> Result<(), Error> {
        let files =
            replica.list().await.map_err(|e| Error::unavailable(Code::BackupUnavailable, format!("the replica cannot be listed: {e:#}"), 5))?;
        let chain = crate::backup::restore::plan(&files, target).map_err(|e| Error::bad_request(Code::RestorePointUnavailable, format!("{e:#}")))?;
        refuse_across_erasure(&self.control, tenant_id, &chain).await
    }
}
