//! Tenant creation and deletion, shared by the admin API, open signup and the CLI.
//!
//! Creation writes the control-plane row, the first API key and the tenant's storage in one
//! control-plane transaction: if the storage cannot be created, nothing is committed.
//!
//! Deletion follows a fixed order so that no request can reopen a tenant being deleted:
//! 1. remove the row (keys cascade) and drop the auth caches — new requests now get 401/404;
//! 2. block the id in the registry, close its handle and wait for in-flight requests;
//! 3. move the directory into `<data dir>/.trash/` (atomic rename) and remove it on a blocking thread.

use std::path::Path;

use serde_json::json;

use crate::api::admin::{CreateTenant, Created};
use crate::control::{keys, tenants, ControlPlane, NewKey, Tenant};
use crate::error::Error;
use crate::state::AppState;
use crate::tenant::{create_storage, tenant_dir, Block};

/// Creates a tenant with storage and a first key. Used by the server.
pub async fn create_tenant(state: &AppState, req: CreateTenant, actor: &'static str) -> Result<Created, Error> {
    let control = state.control.clone();
    let data_dir = state.config.data_dir.clone();
    let (tenant, key, api_key) = tokio::task::spawn_blocking(move || create_blocking(&control, &data_dir, req, actor)).await??;
    state.auth.invalidate();
    if let Some(b) = &state.backup {
        // Every tenant has a replica from its first moment: the service opens it and ships a snapshot.
        b.catch_up_tenant(&tenant.id);
    }
    let quickstart = quickstart(&tenant.slug, &state.tenant_url(&tenant.slug), &api_key);
    Ok(Created { tenant, api_key, key, quickstart })
}

/// The blocking core of creation (also used by the CLI).
pub fn create_blocking(
    control: &ControlPlane,
    data_dir: &Path,
    req: CreateTenant,
    actor: &str,
) -> Result<(Tenant, crate::control::ApiKey, String), Error> {
    let new = req.into_new()?;
    // Storage first, outside the control-plane write lock; the row that makes the tenant reachable
    // comes last, so no request can see a tenant without storage.
    let id = tenants::new_id();
    let dir = tenant_dir(data_dir, &id);
    if let Err(e) = create_storage(&dir, &id) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(Error::internal(e.context("creating tenant storage")));
    }
    let created = control.write_sync(|c| {
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tenant = tenants::insert(&tx, &id, &new)?;
        let (key, api_key) = keys::create(&tx, &tenant.id, &NewKey::default())?;
        crate::control::audit(&tx, actor, Some(&tenant.id), "tenant.created", &json!({"slug": tenant.slug, "tier": tenant.tier}))?;
        tx.commit()?;
        Ok((tenant, key, api_key))
    });
    if created.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    created
}

/// Deletes a tenant from a running server (see the module docs for the order).
pub async fn delete_tenant(state: &AppState, tenant: &Tenant, actor: &'static str) -> Result<(), Error> {
    let id = tenant.id.clone();
    let slug = tenant.slug.clone();
    let replica_grace = state.backup.as_ref().map(|b| b.settings().delete_grace_secs);
    let removed = state
        .control
        .write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let removed = tenants::delete(&tx, &id)?;
            crate::control::audit(&tx, actor, Some(&id), "tenant.deleted", &json!({"slug": slug}))?;
            if let Some(grace) = replica_grace {
                let due = crate::control::ts(chrono::Utc::now() + chrono::Duration::seconds(grace as i64));
                tx.execute("INSERT OR REPLACE INTO replica_deletions(tenant_id, due_at) VALUES (?1, ?2)", [&id, &due])?;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await?;
    if !removed {
        return Err(Error::not_found("tenant_not_found", "no such tenant"));
    }
    state.auth.invalidate();
    state.registry.block_and_close(&tenant.id, Block::Deleting).await;
    let data_dir = state.config.data_dir.clone();
    let id = tenant.id.clone();
    tokio::task::spawn_blocking(move || remove_storage(&data_dir, &id)).await?.map_err(Error::Internal)?;
    // The id is never reused (ULIDs), so the block can stay until restart; it costs a few bytes.
    Ok(())
}

/// Deletes the replicas of tenants deleted more than `backup.delete_grace_secs` ago.
pub async fn delete_due_replicas(state: &AppState, backup: &std::sync::Arc<crate::backup::BackupService>) {
    let now = crate::control::ts(chrono::Utc::now());
    let due = state
        .control
        .run(move |c| {
            let mut st = c.prepare("SELECT tenant_id FROM replica_deletions WHERE due_at <= ?1")?;
            let ids = st.query_map([&now], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ids)
        })
        .await;
    let ids = match due {
        Ok(ids) => ids,
        Err(e) => return tracing::warn!(error = %e, "listing due replica deletions failed"),
    };
    for id in ids {
        match backup.delete_replica(&id).await {
            Ok(n) => {
                tracing::info!(tenant = %id, files = n, "deleted the replica of a deleted tenant");
                let id2 = id.clone();
                let _ = state
                    .control
                    .write(move |c| {
                        c.execute("DELETE FROM replica_deletions WHERE tenant_id = ?1", [&id2])?;
                        crate::control::audit(c, "system", Some(&id2), "tenant.replica_deleted", &json!({"files": n}))?;
                        Ok(())
                    })
                    .await;
            }
            Err(e) => tracing::warn!(tenant = %id, error = %format!("{e:#}"), "deleting a replica failed; will retry"),
        }
    }
}

/// Restores one tenant in place from its replica: the tenant is offline (503 `tenant_restoring`) while
/// its handle closes and the file is replaced atomically; its derived index is rebuilt on next open.
/// Other tenants are untouched.
pub async fn restore_tenant(
    state: &AppState,
    tenant: &Tenant,
    target: crate::backup::restore::Target,
    actor: &str,
) -> Result<crate::backup::restore::Report, Error> {
    let backup = state.backup.clone().ok_or_else(|| Error::Conflict { code: "backups_disabled", message: "backups are not configured (backup_url)".into() })?;
    let replica = backup.root().replica(&crate::backup::BackupService::tenant_key(&tenant.id));
    // Check the replica before taking the tenant offline: a bad target is a 4xx and nothing changes.
    let files = replica.list().await.map_err(|e| Error::unavailable("backup_unavailable", format!("the replica cannot be listed: {e:#}"), 5))?;
    crate::backup::restore::plan(&files, target).map_err(|e| Error::bad_request("restore_point_unavailable", format!("{e:#}")))?;
    state.registry.block_and_close(&tenant.id, Block::Restoring).await;
    let dir = tenant_dir(&state.config.data_dir, &tenant.id);
    let staged = dir.join("tenant.db.restoring");
    let result = crate::backup::restore::restore_to(&replica, target, &staged).await;
    let outcome = match result {
        Ok(report) => {
            let (dir2, id) = (dir.clone(), tenant.id.clone());
            let swapped = tokio::task::spawn_blocking(move || install_restored(&dir2, &staged, &id))
            .await
            .map_err(|e| Error::internal(anyhow::anyhow!("{e}")))?;
            match swapped {
                Ok(()) => Ok(report),
                Err(e) => Err(Error::bad_request("restore_failed", format!("{e:#}"))),
            }
        }
        Err(e) => Err(Error::bad_request("restore_failed", format!("{e:#}"))),
    };
    if outcome.is_ok() {
        // The restored state is the new history: the next TXID is a full image.
        backup.catch_up_tenant(&tenant.id);
        let (id, detail) = (tenant.id.clone(), json!({"txid": outcome.as_ref().map(|r| r.txid.clone()).unwrap_or_default()}));
        let actor = actor.to_string();
        let _ = state.control.write(move |c| Ok(crate::control::audit(c, &actor, Some(&id), "tenant.restored", &detail)?)).await;
    }
    state.registry.unblock(&tenant.id);
    outcome
}

/// Puts a restored database (`staged`, in the tenant's directory) in place of the tenant's file: checks
/// that it belongs to the tenant, drops the old WAL and shared memory, renames it atomically, forgets the
/// shipped position (the next TXID is a full image) and removes the derived index (rebuilt on open).
/// The tenant must be closed (blocked, or no server running).
pub fn install_restored(dir: &Path, staged: &Path, tenant_id: &str) -> anyhow::Result<()> {
    let db = dir.join(crate::tenant::DB_FILE);
    {
        let c = rusqlite::Connection::open(staged)?;
        let owner: Option<String> = rusqlite::OptionalExtension::optional(c.query_row("SELECT value FROM meta WHERE key='tenant_id'", [], |r| r.get(0)))?;
        anyhow::ensure!(owner.as_deref() == Some(tenant_id), "the replica belongs to tenant {owner:?}, not {tenant_id}");
    }
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", staged.display()));
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    std::fs::rename(staged, &db)?;
    crate::backup::reset_position(&db);
    let _ = std::fs::remove_dir_all(dir.join("index"));
    Ok(())
}

/// Moves a tenant's directory to the trash and removes it.
pub fn remove_storage(data_dir: &Path, tenant_id: &str) -> anyhow::Result<()> {
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

/// Ready-to-paste commands for a new tenant.
pub fn quickstart(slug: &str, url: &str, key: &str) -> String {
    format!(
        r##"# Your tenant is live at {url}
# Keep this API key safe: it is shown only once.
export WARREN_URL={url}
export WARREN_KEY={key}

# Who am I?
curl -s $WARREN_URL/api/v1/tenant -H "Authorization: Bearer $WARREN_KEY"

# Add a document
curl -s -X POST $WARREN_URL/api/v1/documents -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' \
  -d '{{"path": "notes/hello.md", "content": "# Hello\nwarren keeps my notes searchable."}}'

# Search it
curl -s -X POST $WARREN_URL/api/v1/search -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "searchable notes"}}'

# Assemble context for an LLM within 500 tokens
curl -s -X POST $WARREN_URL/api/v1/context/assemble -H "Authorization: Bearer $WARREN_KEY" \
  -H 'Content-Type: application/json' -d '{{"query": "what does warren keep?", "max_tokens": 500}}'

# Without DNS for the subdomain, send the key alone to the server's address:
#   curl -s http://127.0.0.1:8080/api/v1/tenant -H "X-API-Key: $WARREN_KEY"

# Use it from AI tools over MCP (plans with the `mcp` feature: starter and up).
# Claude Code:
claude mcp add --transport http warren {url}/mcp --header "Authorization: Bearer $WARREN_KEY"
# Other clients (Claude Desktop, Cursor, VS Code...), JSON config:
#   {{"mcpServers": {{"warren": {{"type": "http", "url": "{url}/mcp",
#     "headers": {{"Authorization": "Bearer {key}"}}}}}}}}

# Import a folder (respects .gitignore; re-runs skip unchanged files), export everything:
warren import {slug} ./docs --glob '**/*.md' --server {url} --key $WARREN_KEY
warren export {slug} --server {url} --key $WARREN_KEY > documents.jsonl

# The REST API is described at {url}/openapi.json and browsable at {url}/docs
"##
    )
}
