//! The control plane's interface: what the services and the authenticator need from the shared store
//! of tenants, keys, plan overrides, audit events and replica deletions, in storage-neutral types (no
//! SQL, no connection). [`ControlPlane`] (SQLite `control.db`) is the embedded implementation; a
//! multi-node deployment can provide another (PostgreSQL) behind the same trait. Every change is one
//! transaction together with its audit record ([`ControlStore::apply`]).

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;

use super::keys::{self, ApiKey, NewKey};
use super::tenants::{self, NewTenant, Tenant, TenantPatch};
use super::{AuditEvent, ControlPlane};
use crate::error::{Code, Error};

pub type Fut<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// One change of the control plane.
#[derive(Debug)]
pub enum Change {
    /// A tenant row and its first key (the tenant's storage exists already).
    CreateTenant {
        id: String,
        new: NewTenant,
        key: NewKey,
    },
    UpdateTenant {
        id: String,
        patch: TenantPatch,
    },
    /// Removes the tenant (keys cascade) and, with `replica_due`, schedules its replica's deletion.
    DeleteTenant {
        id: String,
        replica_due: Option<DateTime<Utc>>,
    },
    CreateKey {
        tenant_id: String,
        new: NewKey,
    },
    RevokeKey {
        tenant_id: String,
        key_id: String,
    },
    RotateKey {
        tenant_id: String,
        key_id: String,
        overlap: chrono::Duration,
    },
    /// A tenant's plan overrides as JSON (`None` removes them).
    PutOverrides {
        tenant_id: String,
        overrides: Option<String>,
    },
    /// A key's own rate limit (`None` removes it); the key must belong to the tenant.
    SetKeyLimit {
        tenant_id: String,
        key_id: String,
        limit: Option<(u32, u32)>,
    },
    /// A deleted tenant's replica is gone.
    ReplicaDeleted {
        tenant_id: String,
    },
}

/// What a change produced.
#[derive(Debug)]
pub enum Outcome {
    Tenant(Tenant),
    /// A key and its plaintext (shown once); for a rotation, until when the old key works.
    Key {
        key: ApiKey,
        plaintext: String,
        old_valid_until: Option<DateTime<Utc>>,
    },
    RevokedKey(ApiKey),
    /// For deletes: whether there was something to delete.
    Done(bool),
    Created {
        tenant: Tenant,
        key: ApiKey,
        plaintext: String,
    },
}

/// The audit record written with a change.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub tenant_id: Option<String>,
    pub action: &'static str,
    pub detail: Value,
}

pub trait ControlStore: Send + Sync {
    fn tenant_by_id(&self, id: &str) -> Fut<'_, Option<Tenant>>;
    fn tenant_by_slug(&self, slug: &str) -> Fut<'_, Option<Tenant>>;
    fn tenant_by_domain(&self, domain: &str) -> Fut<'_, Option<Tenant>>;
    /// Keyset pagination over slugs (`q` matches slug, name or email), and the total count.
    fn list_tenants(&self, q: Option<String>, after: Option<String>, limit: u32) -> Fut<'_, (Vec<Tenant>, i64)>;
    fn key_by_prefix(&self, prefix: &str) -> Fut<'_, Option<ApiKey>>;
    fn list_keys(&self, tenant_id: &str) -> Fut<'_, Vec<ApiKey>>;
    /// Records last use for a batch of keys.
    fn touch_keys(&self, used: Vec<(String, DateTime<Utc>)>) -> Fut<'_, ()>;
    fn audit_events(&self, tenant_id: Option<String>, limit: u32) -> Fut<'_, Vec<AuditEvent>>;
    fn overrides_json(&self, tenant_id: &str) -> Fut<'_, Option<String>>;
    fn due_replica_deletions(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>>;
    /// Applies `change` and writes `audit` in one transaction: both or neither.
    fn apply(&self, change: Change, audit: AuditRecord) -> Fut<'_, Outcome>;
}

impl ControlStore for ControlPlane {
    fn tenant_by_id(&self, id: &str) -> Fut<'_, Option<Tenant>> {
        let id = id.to_string();
        Box::pin(self.run(move |c| Ok(tenants::get_by_id(c, &id)?)))
    }

    fn tenant_by_slug(&self, slug: &str) -> Fut<'_, Option<Tenant>> {
        let slug = slug.to_string();
        Box::pin(self.run(move |c| Ok(tenants::get_by_slug(c, &slug)?)))
    }

    fn tenant_by_domain(&self, domain: &str) -> Fut<'_, Option<Tenant>> {
        let domain = domain.to_string();
        Box::pin(self.run(move |c| Ok(tenants::get_by_domain(c, &domain)?)))
    }

    fn list_tenants(&self, q: Option<String>, after: Option<String>, limit: u32) -> Fut<'_, (Vec<Tenant>, i64)> {
        Box::pin(self.run(move |c| Ok((tenants::list(c, q.as_deref(), after.as_deref(), limit)?, tenants::count(c)?))))
    }

    fn key_by_prefix(&self, prefix: &str) -> Fut<'_, Option<ApiKey>> {
        let prefix = prefix.to_string();
        Box::pin(self.run(move |c| Ok(keys::by_prefix(c, &prefix)?)))
    }

    fn list_keys(&self, tenant_id: &str) -> Fut<'_, Vec<ApiKey>> {
        let id = tenant_id.to_string();
        Box::pin(self.run(move |c| Ok(keys::list(c, &id)?)))
    }

    fn touch_keys(&self, used: Vec<(String, DateTime<Utc>)>) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| Ok(keys::touch_many(c, &used)?)))
    }

    fn audit_events(&self, tenant_id: Option<String>, limit: u32) -> Fut<'_, Vec<AuditEvent>> {
        Box::pin(self.run(move |c| Ok(super::list_audit(c, tenant_id.as_deref(), limit)?)))
    }

    fn overrides_json(&self, tenant_id: &str) -> Fut<'_, Option<String>> {
        let id = tenant_id.to_string();
        Box::pin(self.run(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row("SELECT overrides FROM plan_overrides WHERE tenant_id = ?1", [&id], |r| r.get(0)).optional()?)
        }))
    }

    fn due_replica_deletions(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>> {
        Box::pin(self.run(move |c| Ok(super::due_replica_deletions(c, now)?)))
    }

    fn apply(&self, change: Change, audit: AuditRecord) -> Fut<'_, Outcome> {
        Box::pin(self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = apply_sql(&tx, change, audit.at)?;
            let mut detail = audit.detail;
            if let (Value::Object(d), Outcome::Key { key, old_valid_until, .. }) = (&mut detail, &out) {
                let field = if old_valid_until.is_some() { "new_key_id" } else { "key_id" };
                d.insert(field.into(), Value::from(key.id.clone()));
            }
            super::audit_at(&tx, audit.at, &audit.actor, audit.tenant_id.as_deref(), audit.action, &detail)?;
            tx.commit()?;
            Ok(out)
        }))
    }
}

fn apply_sql(tx: &rusqlite::Connection, change: Change, now: DateTime<Utc>) -> Result<Outcome, Error> {
    Ok(match change {
        Change::CreateTenant { id, new, key } => {
            let tenant = tenants::insert(tx, &id, &new, now)?;
            let (key, plaintext) = keys::create(tx, &tenant.id, &key, now)?;
            Outcome::Created { tenant, key, plaintext }
        }
        Change::UpdateTenant { id, patch } => Outcome::Tenant(tenants::update(tx, &id, &patch, now)?),
        Change::DeleteTenant { id, replica_due } => {
            let removed = tenants::delete(tx, &id)?;
            if let (true, Some(due)) = (removed, replica_due) {
                super::schedule_replica_deletion(tx, &id, due)?;
            }
            Outcome::Done(removed)
        }
        Change::CreateKey { tenant_id, new } => {
            let (key, plaintext) = keys::create(tx, &tenant_id, &new, now)?;
            Outcome::Key { key, plaintext, old_valid_until: None }
        }
        Change::RevokeKey { tenant_id, key_id } => Outcome::RevokedKey(keys::revoke(tx, &tenant_id, &key_id, now)?),
        Change::RotateKey { tenant_id, key_id, overlap } => {
            let (key, plaintext, until) = keys::rotate(tx, &tenant_id, &key_id, overlap, now)?;
            Outcome::Key { key, plaintext, old_valid_until: Some(until) }
        }
        Change::PutOverrides { tenant_id, overrides } => {
            match overrides {
                Some(text) => {
                    tx.execute(
                        "INSERT INTO plan_overrides (tenant_id, overrides, updated_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT(tenant_id) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
                        rusqlite::params![tenant_id, text, super::ts(now)],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM plan_overrides WHERE tenant_id = ?1", [&tenant_id])?;
                }
            }
            Outcome::Done(true)
        }
        Change::SetKeyLimit { tenant_id, key_id, limit } => {
            if keys::get(tx, &tenant_id, &key_id)?.is_none() {
                return Err(Error::not_found(Code::KeyNotFound, "no such key for this tenant"));
            }
            match limit {
                Some((rate, burst)) => {
                    tx.execute(
                        "INSERT INTO key_rate_limits (key_id, rate_per_sec, burst) VALUES (?1, ?2, ?3)
                         ON CONFLICT(key_id) DO UPDATE SET rate_per_sec = excluded.rate_per_sec, burst = excluded.burst",
                        rusqlite::params![key_id, rate, burst],
                    )?;
                }
                None => {
                    tx.execute("DELETE FROM key_rate_limits WHERE key_id = ?1", [&key_id])?;
                }
            }
            Outcome::Done(true)
        }
        Change::ReplicaDeleted { tenant_id } => {
            super::replica_deleted(tx, &tenant_id)?;
            Outcome::Done(true)
        }
    })
}
