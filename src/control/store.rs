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
use super::{AuditEvent, Lifecycle, SqliteControl};
use crate::error::{Code, Error};
use rusqlite::OptionalExtension as _;

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
    /// A tenant recreated from an archive: its row, a first key, and its usage and audit history
    /// (the tenant's storage exists already).
    ImportTenant {
        id: String,
        new: NewTenant,
        key: NewKey,
        history: TenantHistory,
    },
    /// A deleted tenant's replica is gone.
    ReplicaDeleted {
        tenant_id: String,
    },
    /// A tenant's settings for an integration (`kind`, e.g. `woocommerce`) as JSON.
    SetIntegration {
        tenant_id: String,
        kind: &'static str,
        config: String,
    },
    /// A one-time dashboard link for a tenant (only the token's hash is stored).
    MintDashboardLink {
        tenant_id: String,
        token_hash: Vec<u8>,
        expires_at: DateTime<Utc>,
    },
}

/// What a change produced.
#[derive(Debug)]
pub enum Outcome {
    Tenant(Tenant),
    /// A key and its plaintext (shown once); for a rotation, until when the old key works.
    Key {
        key: ApiKey,
        plaintext: crate::secret::Secret,
        old_valid_until: Option<DateTime<Utc>>,
    },
    RevokedKey(ApiKey),
    /// For deletes: whether there was something to delete.
    Done(bool),
    Created {
        tenant: Tenant,
        key: ApiKey,
        plaintext: crate::secret::Secret,
    },
}

/// A verified Stripe event, decided from the event alone (the service reads plans and prices).
#[derive(Debug, Clone)]
pub struct StripeEvent {
    pub id: String,
    pub kind: String,
    /// `metadata.tenant_id` (an id or a slug; they never collide).
    pub tenant_ref: Option<String>,
    /// The Stripe customer id, used to find the tenant and recorded on it.
    pub customer: Option<String>,
    pub effect: StripeEffect,
}

/// What a Stripe event does to its tenant.
#[derive(Debug, Clone)]
pub enum StripeEffect {
    /// An event type warren does not act on.
    Ignore,
    /// The subscription now stands for `tier`; an `active` subscription also ends a trial.
    SetTier { tier: super::Tier, subscription_status: String },
    /// The subscription's price maps to no tier.
    UnknownPrice { subscription_status: String },
    /// A failed invoice, suspending the tenant when `suspend`.
    PaymentFailed { suspend: bool },
}

/// One recorded usage event of a tenant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UsageRecord {
    pub kind: String,
    pub count: i64,
    pub tokens: i64,
    pub at: String,
}

/// One audit event of a tenant, without ids (as an export carries it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEvent {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub detail: Value,
}

/// A tenant's usage and audit history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct TenantHistory {
    pub usage: Vec<UsageRecord>,
    pub audit: Vec<HistoryEvent>,
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
    /// A tenant's whole usage and audit history, oldest first (for its export).
    fn tenant_history(&self, tenant_id: &str) -> Fut<'_, TenantHistory>;
    fn due_replica_deletions(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>>;
    /// A tenant's settings for an integration, as JSON.
    fn integration(&self, tenant_id: &str, kind: &'static str) -> Fut<'_, Option<String>>;
    /// Applies `change` and writes `audit` in one transaction: both or neither.
    fn apply(&self, change: Change, audit: AuditRecord) -> Fut<'_, Outcome>;
    /// Applies a Stripe event once: a replayed event id changes nothing. Answers the outcome JSON.
    fn stripe_event(&self, event: StripeEvent, at: DateTime<Utc>) -> Fut<'_, Value>;
    /// Notes (or, with `pending` false, forgets) a background job of a tenant, so a restarted server
    /// resumes it without opening every tenant.
    fn set_job_pending(&self, tenant_id: &str, job_id: &str, pending: bool, at: DateTime<Utc>) -> Fut<'_, ()>;
    /// Every pending job, as `(tenant_id, job_id)`, oldest first.
    fn pending_jobs(&self) -> Fut<'_, Vec<(String, String)>>;
    /// Which of `ids` were deleted tenants: no row, and a `tenant.deleted` audit event.
    fn deleted_among(&self, ids: Vec<String>) -> Fut<'_, Vec<String>>;
    /// Every owner of usage or audit events: tenant ids (live or deleted), and `None` for audit
    /// events of no tenant.
    fn event_owners(&self) -> Fut<'_, Vec<Option<String>>>;
    /// One retention batch for one owner, in one transaction: deletes at most `batch` usage events
    /// older than `usage_before` and at most `batch` audit events older than `audit_before`. Counts.
    fn prune_events(&self, owner: Option<String>, usage_before: DateTime<Utc>, audit_before: DateTime<Utc>, batch: u32) -> Fut<'_, (u64, u64)>;
    /// Uses a dashboard link once: the tenant it was minted for, if it exists, is unused and has not
    /// expired at `now`. Expired links are removed.
    fn consume_dashboard_link(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<String>>;
    /// Stores a dashboard session (only its token's hash); expired sessions are removed.
    fn insert_session(&self, session: DashboardSession, now: DateTime<Utc>) -> Fut<'_, ()>;
    /// The session with this token hash, if it has not expired at `now`.
    fn session(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<DashboardSession>>;
    /// Ends a session (logout).
    fn delete_session(&self, token_hash: Vec<u8>) -> Fut<'_, ()>;
    /// A tenant's usage events since `since`, summed per UTC day and kind: `(YYYY-MM-DD, kind, calls, tokens)`.
    fn usage_by_day(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(String, String, u64, u64)>>;
    /// A tenant's usage events since `since`, summed per API key and kind: `(key id, kind, calls,
    /// tokens)`; `None` for usage made without a key (portal sessions, webhooks).
    fn usage_by_key(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(Option<String>, String, u64, u64)>>;
    /// Writes one audit event that goes with no change of the control plane (an export, a restore,
    /// an erasure in a tenant's own database).
    fn audit(&self, record: AuditRecord) -> Fut<'_, ()>;
    /// Trials converted, trials expired and churn in `[from, to)` (stored timestamps), from the audit log.
    fn lifecycle(&self, from: String, to: String) -> Fut<'_, Lifecycle>;
    /// Ids of trials whose end is at or before `now`.
    fn expired_trials(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>>;
    /// Ends one trial if it is (still) over at `now`: tier free, status active, audited. Whether it did.
    fn expire_trial(&self, tenant_id: &str, now: DateTime<Utc>) -> Fut<'_, bool>;
    /// Every tenant's plan overrides (tenant id, JSON) and every key's own rate limit (key id, rate, burst).
    fn limits(&self) -> Fut<'_, Limits>;
    /// Usage summed per tenant and kind over events with `at` in `[from, to)`: `(tenant, kind, calls,
    /// tokens)`; only `tenant`'s when given, and only events that were stored before [`usage_mark`]
    /// answered `upto` when that is given.
    ///
    /// [`usage_mark`]: ControlStore::usage_mark
    fn usage_totals(&self, tenant: Option<String>, from: String, to: String, upto: Option<i64>) -> Fut<'_, Vec<(String, String, i64, i64)>>;
    /// A mark of the usage events stored so far (see [`usage_totals`](ControlStore::usage_totals)).
    fn usage_mark(&self) -> Fut<'_, i64>;
    /// Stores one flush of a node's usage counters, idempotently: a batch whose id is already stored
    /// (a retry after an answer was lost) adds nothing.
    fn flush_usage(&self, batch: UsageBatch) -> Fut<'_, ()>;
    fn setting(&self, key: &'static str) -> Fut<'_, Option<String>>;
    fn set_setting(&self, key: &'static str, value: String) -> Fut<'_, ()>;
    /// A number that changes whenever tenants, keys, overrides or settings change, by this process or
    /// any other (the caches of credentials and plans are dropped when it moves).
    fn version(&self) -> Fut<'_, i64>;
    /// Whether the control plane answers queries (for `/ready`).
    fn ping(&self) -> Fut<'_, bool>;
}

/// Plan overrides and key rate limits, as stored.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// (tenant id, overrides JSON)
    pub overrides: Vec<(String, String)>,
    /// (key id, requests per second, burst)
    pub key_limits: Vec<(String, i64, i64)>,
}

/// One flush of a node's usage counters. `id` is unique per flush (node and sequence), so storing
/// the same batch twice counts it once.
#[derive(Debug, Clone)]
pub struct UsageBatch {
    pub id: String,
    pub rows: Vec<UsageRow>,
}

/// Buffered usage of one tenant, API key and kind.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub tenant_id: String,
    pub key_id: Option<String>,
    pub kind: &'static str,
    pub count: i64,
    pub tokens: i64,
    /// The first event's time (stored form).
    pub at: String,
}

/// A dashboard session: the tenant portal's (`tenant_id` set) or the operator console's (`None`).
#[derive(Debug, Clone)]
pub struct DashboardSession {
    pub token_hash: Vec<u8>,
    pub tenant_id: Option<String>,
    pub scopes: Vec<keys::Scope>,
    /// The token every form of this session carries.
    pub csrf: String,
    /// How it was opened: `link`, `key`, `jwt` or `admin_token`.
    pub via: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ControlStore for SqliteControl {
    fn consume_dashboard_link(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<String>> {
        Box::pin(self.write(move |c| {
            let now = super::ts(now);
            let tx = c.transaction()?;
            let tenant: Option<String> = tx
                .query_row(
                    "UPDATE dashboard_links SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2 RETURNING tenant_id",
                    rusqlite::params![token_hash, now],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute("DELETE FROM dashboard_links WHERE expires_at <= ?1", [&now])?;
            tx.commit()?;
            Ok(tenant)
        }))
    }

    fn insert_session(&self, s: DashboardSession, now: DateTime<Utc>) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?1", [super::ts(now)])?;
            tx.execute(
                "INSERT INTO dashboard_sessions (token_hash, tenant_id, scopes, csrf, via, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    s.token_hash,
                    s.tenant_id,
                    keys::scopes_text(&s.scopes),
                    s.csrf,
                    s.via,
                    super::ts(s.created_at),
                    super::ts(s.expires_at)
                ],
            )?;
            tx.commit()?;
            Ok(())
        }))
    }

    fn session(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<DashboardSession>> {
        Box::pin(self.run(move |c| {
            let row = c
                .query_row(
                    "SELECT tenant_id, scopes, csrf, via, created_at, expires_at FROM dashboard_sessions WHERE token_hash = ?1 AND expires_at > ?2",
                    rusqlite::params![token_hash, super::ts(now)],
                    |r| {
                        Ok((
                            r.get::<_, Option<String>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    },
                )
                .optional()?;
            let Some((tenant_id, scopes, csrf, via, created, expires)) = row else { return Ok(None) };
            Ok(Some(DashboardSession {
                token_hash,
                tenant_id,
                scopes: keys::parse_scopes_text(&scopes),
                csrf,
                via,
                created_at: super::parse_ts(&created).map_err(Error::Internal)?,
                expires_at: super::parse_ts(&expires).map_err(Error::Internal)?,
            }))
        }))
    }

    fn delete_session(&self, token_hash: Vec<u8>) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| {
            c.execute("DELETE FROM dashboard_sessions WHERE token_hash = ?1", [token_hash])?;
            Ok(())
        }))
    }

    fn usage_by_day(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(String, String, u64, u64)>> {
        usage_sums(
            self,
            "SELECT substr(at, 1, 10) AS day, kind, SUM(count), SUM(tokens) FROM usage_events
             WHERE tenant_id = ?1 AND at >= ?2 GROUP BY day, kind ORDER BY day, kind",
            tenant_id,
            since,
        )
    }

    fn usage_by_key(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(Option<String>, String, u64, u64)>> {
        usage_sums(
            self,
            "SELECT key_id, kind, SUM(count), SUM(tokens) FROM usage_events
             WHERE tenant_id = ?1 AND at >= ?2 GROUP BY key_id, kind ORDER BY key_id, kind",
            tenant_id,
            since,
        )
    }

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

    fn tenant_history(&self, tenant_id: &str) -> Fut<'_, TenantHistory> {
        let id = tenant_id.to_string();
        Box::pin(self.run(move |c| {
            let mut st = c.prepare("SELECT kind, count, tokens, at FROM usage_events WHERE tenant_id = ?1 ORDER BY at, id")?;
            let usage = st
                .query_map([&id], |r| Ok(UsageRecord { kind: r.get(0)?, count: r.get(1)?, tokens: r.get(2)?, at: r.get(3)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = c.prepare("SELECT at, actor, action, detail FROM audit_events WHERE tenant_id = ?1 ORDER BY id")?;
            let audit = st
                .query_map([&id], |r| {
                    let detail: Option<String> = r.get(3)?;
                    Ok(HistoryEvent {
                        at: r.get(0)?,
                        actor: r.get(1)?,
                        action: r.get(2)?,
                        detail: detail.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Null),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(TenantHistory { usage, audit })
        }))
    }

    fn due_replica_deletions(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>> {
        Box::pin(self.run(move |c| Ok(super::due_replica_deletions(c, now)?)))
    }

    fn integration(&self, tenant_id: &str, kind: &'static str) -> Fut<'_, Option<String>> {
        let id = tenant_id.to_string();
        Box::pin(self.run(move |c| {
            use rusqlite::OptionalExtension;
            Ok(c.query_row("SELECT config FROM integrations WHERE tenant_id = ?1 AND kind = ?2", rusqlite::params![id, kind], |r| r.get(0))
                .optional()?)
        }))
    }

    fn stripe_event(&self, event: StripeEvent, at: DateTime<Utc>) -> Fut<'_, Value> {
        Box::pin(self.write(move |c| {
            use rusqlite::OptionalExtension;
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let seen: Option<String> = tx.query_row("SELECT outcome FROM stripe_events WHERE id = ?1", [&event.id], |r| r.get(0)).optional()?;
            if seen.is_some() {
                return Ok(serde_json::json!({"received": true, "duplicate": true}));
            }
            let (outcome, tenant_id) = stripe_sql(&tx, &event, at)?;
            tx.execute(
                "INSERT INTO stripe_events (id, type, tenant_id, outcome, received_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![event.id, event.kind, tenant_id, outcome, super::ts(at)],
            )?;
            tx.commit()?;
            Ok(serde_json::json!({"received": true, "outcome": outcome, "tenant_id": tenant_id}))
        }))
    }

    fn set_job_pending(&self, tenant_id: &str, job_id: &str, pending: bool, at: DateTime<Utc>) -> Fut<'_, ()> {
        let (tenant_id, job_id) = (tenant_id.to_string(), job_id.to_string());
        Box::pin(self.write(move |c| {
            if pending {
                c.execute(
                    "INSERT OR IGNORE INTO pending_jobs (tenant_id, job_id, created_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![tenant_id, job_id, super::ts(at)],
                )?;
            } else {
                c.execute("DELETE FROM pending_jobs WHERE tenant_id = ?1 AND job_id = ?2", rusqlite::params![tenant_id, job_id])?;
            }
            Ok(())
        }))
    }

    fn pending_jobs(&self) -> Fut<'_, Vec<(String, String)>> {
        Box::pin(self.run(|c| {
            let mut st = c.prepare("SELECT tenant_id, job_id FROM pending_jobs ORDER BY created_at, job_id")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn event_owners(&self) -> Fut<'_, Vec<Option<String>>> {
        Box::pin(self.run(|c| {
            let mut st = c.prepare("SELECT DISTINCT tenant_id FROM usage_events UNION SELECT DISTINCT tenant_id FROM audit_events")?;
            let rows = st.query_map([], |r| r.get::<_, Option<String>>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn prune_events(&self, owner: Option<String>, usage_before: DateTime<Utc>, audit_before: DateTime<Utc>, batch: u32) -> Fut<'_, (u64, u64)> {
        Box::pin(self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let usage = match &owner {
                Some(id) => tx.execute(
                    "DELETE FROM usage_events WHERE id IN (SELECT id FROM usage_events WHERE tenant_id = ?1 AND at < ?2 LIMIT ?3)",
                    rusqlite::params![id, super::ts(usage_before), batch],
                )?,
                None => 0,
            };
            let audit = tx.execute(
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE tenant_id IS ?1 AND at < ?2 LIMIT ?3)",
                rusqlite::params![owner, super::ts(audit_before), batch],
            )?;
            tx.commit()?;
            Ok((usage as u64, audit as u64))
        }))
    }

    fn deleted_among(&self, ids: Vec<String>) -> Fut<'_, Vec<String>> {
        Box::pin(self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT 1 FROM audit_events WHERE tenant_id = ?1 AND action = 'tenant.deleted'
                 AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = ?1) LIMIT 1",
            )?;
            let mut out = Vec::new();
            for id in ids {
                if st.exists([&id])? {
                    out.push(id);
                }
            }
            Ok(out)
        }))
    }

    fn audit(&self, a: AuditRecord) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| Ok(super::audit_at(c, a.at, &a.actor, a.tenant_id.as_deref(), a.action, &a.detail)?)))
    }

    fn lifecycle(&self, from: String, to: String) -> Fut<'_, Lifecycle> {
        Box::pin(self.run(move |c| Ok(super::lifecycle(c, &from, &to)?)))
    }

    fn expired_trials(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>> {
        Box::pin(self.run(move |c| {
            let mut st = c.prepare("SELECT id FROM tenants WHERE status = 'trial' AND trial_ends_at IS NOT NULL AND trial_ends_at <= ?1")?;
            let rows = st.query_map([super::ts(now)], |r| r.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn expire_trial(&self, tenant_id: &str, now: DateTime<Utc>) -> Fut<'_, bool> {
        let id = tenant_id.to_string();
        Box::pin(self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(t) = tenants::get_by_id(&tx, &id)? else { return Ok(false) };
            if !tenants::trial_expired(&t, now) {
                return Ok(false);
            }
            tx.execute("UPDATE tenants SET tier = 'free', status = 'active', updated_at = ?2 WHERE id = ?1", rusqlite::params![id, super::ts(now)])?;
            super::audit_at(&tx, now, "system", Some(&id), "tenant.trial_expired", &expiry_detail(&t))?;
            tx.commit()?;
            Ok(true)
        }))
    }

    fn limits(&self) -> Fut<'_, Limits> {
        Box::pin(self.run(|c| {
            let mut st = c.prepare("SELECT tenant_id, overrides FROM plan_overrides")?;
            let overrides = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            let mut st = c.prepare("SELECT key_id, rate_per_sec, burst FROM key_rate_limits")?;
            let key_limits = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Limits { overrides, key_limits })
        }))
    }

    fn usage_totals(&self, tenant: Option<String>, from: String, to: String, upto: Option<i64>) -> Fut<'_, Vec<(String, String, i64, i64)>> {
        Box::pin(self.run(move |c| {
            let mut st = c.prepare_cached(
                "SELECT tenant_id, kind, SUM(count), SUM(tokens) FROM usage_events
                 WHERE (?1 IS NULL OR tenant_id = ?1) AND at >= ?2 AND at < ?3 AND (?4 IS NULL OR id <= ?4) GROUP BY tenant_id, kind",
            )?;
            let rows = st
                .query_map(rusqlite::params![tenant, from, to, upto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn usage_mark(&self) -> Fut<'_, i64> {
        Box::pin(self.run(|c| Ok(c.query_row("SELECT COALESCE(MAX(id), 0) FROM usage_events", [], |r| r.get(0))?)))
    }

    fn flush_usage(&self, batch: UsageBatch) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let at = batch.rows.iter().map(|r| r.at.as_str()).min().unwrap_or("").to_string();
            if tx.execute("INSERT OR IGNORE INTO usage_batches (id, at) VALUES (?1, ?2)", rusqlite::params![batch.id, at])? == 1 {
                let mut st =
                    tx.prepare_cached("INSERT INTO usage_events (tenant_id, key_id, kind, count, tokens, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
                for r in &batch.rows {
                    st.execute(rusqlite::params![r.tenant_id, r.key_id, r.kind, r.count, r.tokens, r.at])?;
                }
            }
            tx.execute("DELETE FROM usage_batches WHERE at < ?1", [super::ts(chrono::Utc::now() - chrono::Duration::days(USAGE_BATCH_DAYS))])?;
            crate::faults::point("usage.in_flush");
            tx.commit()?;
            Ok(())
        }))
    }

    fn setting(&self, key: &'static str) -> Fut<'_, Option<String>> {
        Box::pin(self.run(move |c| Ok(super::get_setting(c, key)?)))
    }

    fn set_setting(&self, key: &'static str, value: String) -> Fut<'_, ()> {
        Box::pin(self.write(move |c| Ok(super::set_setting(c, key, &value)?)))
    }

    fn version(&self) -> Fut<'_, i64> {
        let watch = self.watch.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut w = watch.lock();
                if w.is_none() {
                    *w = Some(rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?);
                }
                let conn = w.as_ref().expect("opened above");
                Ok(conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))?)
            })
            .await?
        })
    }

    fn ping(&self) -> Fut<'_, bool> {
        let this = self.clone();
        Box::pin(async move { Ok(tokio::task::spawn_blocking(move || this.ping_sync()).await.unwrap_or(false)) })
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

/// How long a flushed usage batch's id is kept to refuse its retry: far longer than any retry.
pub(crate) const USAGE_BATCH_DAYS: i64 = 2;

/// The audit detail of a trial's expiry.
pub(crate) fn expiry_detail(t: &Tenant) -> Value {
    serde_json::json!({"from_tier": t.tier, "to_tier": "free", "trial_ends_at": t.trial_ends_at})
}

fn stripe_tenant(c: &rusqlite::Connection, ev: &StripeEvent) -> Result<Option<Tenant>, Error> {
    use rusqlite::OptionalExtension;
    if let Some(t) = ev.tenant_ref.as_deref() {
        let found = if super::slug::is_id_shaped(t) { tenants::get_by_id(c, t)? } else { tenants::get_by_slug(c, t)? };
        if found.is_some() {
            return Ok(found);
        }
    }
    let Some(customer) = ev.customer.as_deref() else { return Ok(None) };
    let id: Option<String> = c.query_row("SELECT id FROM tenants WHERE stripe_customer_id = ?1", [customer], |r| r.get(0)).optional()?;
    Ok(match id {
        Some(id) => tenants::get_by_id(c, &id)?,
        None => None,
    })
}

/// Applies one Stripe event inside the caller's transaction: (outcome, tenant id).
fn stripe_sql(c: &rusqlite::Connection, ev: &StripeEvent, at: DateTime<Utc>) -> Result<(String, Option<String>), Error> {
    if matches!(ev.effect, StripeEffect::Ignore) {
        return Ok(("ignored".into(), None));
    }
    let Some(t) = stripe_tenant(c, ev)? else { return Ok(("no_tenant".into(), None)) };
    let now = super::ts(at);
    let p = stripe_plan(&t, ev);
    if let Some(customer) = &p.customer {
        c.execute("UPDATE tenants SET stripe_customer_id = ?2, updated_at = ?3 WHERE id = ?1", rusqlite::params![t.id, customer, now])?;
    }
    if p.suspend {
        c.execute("UPDATE tenants SET status = 'suspended', updated_at = ?2 WHERE id = ?1", rusqlite::params![t.id, now])?;
    }
    if let Some(tier) = p.tier {
        c.execute("UPDATE tenants SET tier = ?2, updated_at = ?3 WHERE id = ?1", rusqlite::params![t.id, tier.as_str(), now])?;
    }
    if p.convert {
        c.execute("UPDATE tenants SET status = 'active', trial_ends_at = NULL WHERE id = ?1", [&t.id])?;
    }
    super::audit_at(c, at, "stripe", Some(&t.id), &format!("stripe.{}", ev.kind), &p.detail)?;
    Ok((p.outcome, Some(t.id)))
}

/// What a Stripe event does to its tenant as it stands: the columns to change, and what the audit
/// event and the answer say. Both control planes apply it inside their transaction.
pub(crate) struct StripePlan {
    /// A new Stripe customer id for the tenant.
    pub customer: Option<String>,
    pub suspend: bool,
    pub tier: Option<super::Tier>,
    /// A trial that became a paying subscription: status active, no trial end.
    pub convert: bool,
    pub outcome: String,
    pub detail: Value,
}

pub(crate) fn stripe_plan(t: &Tenant, ev: &StripeEvent) -> StripePlan {
    let customer = ev.customer.clone().filter(|c| t.stripe_customer_id.as_deref() != Some(c.as_str()));
    let mut p = StripePlan { customer, suspend: false, tier: None, convert: false, outcome: String::new(), detail: Value::Null };
    match &ev.effect {
        StripeEffect::Ignore => p.outcome = "ignored".into(),
        StripeEffect::PaymentFailed { suspend } => {
            p.suspend = *suspend;
            p.outcome = if *suspend { "suspended" } else { "payment_failed" }.into();
            p.detail = serde_json::json!({"suspended": suspend});
        }
        StripeEffect::SetTier { tier, subscription_status } => {
            p.tier = Some(*tier);
            p.convert = t.status == super::Status::Trial && subscription_status == "active";
            let mut detail = serde_json::json!({"from_tier": t.tier, "to_tier": tier});
            if p.convert {
                detail["converted_from_trial"] = Value::from(true);
            }
            if !subscription_status.is_empty() || ev.kind != "customer.subscription.deleted" {
                detail["subscription_status"] = Value::from(subscription_status.clone());
            }
            p.outcome = format!("tier:{tier}");
            p.detail = detail;
        }
        StripeEffect::UnknownPrice { subscription_status } => {
            p.outcome = "unknown_price".into();
            p.detail = serde_json::json!({"subscription_status": subscription_status});
        }
    }
    p
}

/// A tenant's usage events since `since`, summed by `sql`'s first column and kind:
/// `(group, kind, calls, tokens)`; `sql` binds the tenant as `?1` and `since` as `?2`.
fn usage_sums<'a, G: rusqlite::types::FromSql + Send + 'static>(
    cp: &'a SqliteControl,
    sql: &'static str,
    tenant_id: &str,
    since: DateTime<Utc>,
) -> Fut<'a, Vec<(G, String, u64, u64)>> {
    let tenant_id = tenant_id.to_string();
    Box::pin(cp.run(move |c| {
        let mut st = c.prepare(sql)?;
        let rows = st
            .query_map(rusqlite::params![tenant_id, super::ts(since)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get::<_, i64>(3)? as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }))
}

fn apply_sql(tx: &rusqlite::Connection, change: Change, now: DateTime<Utc>) -> Result<Outcome, Error> {
    Ok(match change {
        Change::CreateTenant { id, new, key } => {
            let tenant = tenants::insert(tx, &id, &new, now)?;
            let (key, plaintext) = keys::create(tx, &tenant.id, &key, now)?;
            Outcome::Created { tenant, key, plaintext: plaintext.into() }
        }
        Change::ImportTenant { id, new, key, history } => {
            let tenant = tenants::insert(tx, &id, &new, now)?;
            let (key, plaintext) = keys::create(tx, &tenant.id, &key, now)?;
            let mut st = tx.prepare("INSERT INTO usage_events (tenant_id, kind, count, tokens, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for u in &history.usage {
                st.execute(rusqlite::params![id, u.kind, u.count, u.tokens, u.at])?;
            }
            let mut st = tx.prepare("INSERT INTO audit_events (at, actor, tenant_id, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)")?;
            for a in &history.audit {
                st.execute(rusqlite::params![a.at, a.actor, id, a.action, a.detail.to_string()])?;
            }
            Outcome::Created { tenant, key, plaintext: plaintext.into() }
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
            Outcome::Key { key, plaintext: plaintext.into(), old_valid_until: None }
        }
        Change::RevokeKey { tenant_id, key_id } => Outcome::RevokedKey(keys::revoke(tx, &tenant_id, &key_id, now)?),
        Change::RotateKey { tenant_id, key_id, overlap } => {
            let (key, plaintext, until) = keys::rotate(tx, &tenant_id, &key_id, overlap, now)?;
            Outcome::Key { key, plaintext: plaintext.into(), old_valid_until: Some(until) }
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
        Change::SetIntegration { tenant_id, kind, config } => {
            tx.execute(
                "INSERT INTO integrations (tenant_id, kind, config, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(tenant_id, kind) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                rusqlite::params![tenant_id, kind, config, super::ts(now)],
            )?;
            Outcome::Done(true)
        }
        Change::MintDashboardLink { tenant_id, token_hash, expires_at } => {
            tx.execute("DELETE FROM dashboard_links WHERE expires_at <= ?1", [super::ts(now)])?;
            tx.execute(
                "INSERT INTO dashboard_links (token_hash, tenant_id, expires_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![token_hash, tenant_id, super::ts(expires_at)],
            )?;
            Outcome::Done(true)
        }
    })
}
