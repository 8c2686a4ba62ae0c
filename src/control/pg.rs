//! The control plane in PostgreSQL, shared by every node of a cluster (`control.url`).
//!
//! The same [`ControlStore`] as the embedded `control.db`, with the same tables and the same stored
//! forms (timestamps are the same sortable text, so the two answer alike), through `tokio-postgres`
//! and a `deadpool` pool. Schema changes are versioned in `warren_migrations` and applied under an
//! advisory lock, so nodes that start together migrate once.
//!
//! Concurrency: every change is one transaction. Uniqueness (slugs, domains, key prefixes, Stripe
//! event ids, usage batch ids) is decided by the unique indexes with `ON CONFLICT`, never by a read
//! before a write, so two nodes racing get one winner and a clear 409 or an idempotent no-op.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::Value;
use tokio_postgres::{error::SqlState, NoTls, Row};

use super::keys::{self, ApiKey, NewKey};
use super::store::{
    expiry_detail, AuditRecord, Change, ControlStore, DashboardSession, Fut, HistoryEvent, Limits, Outcome, StripeEffect, StripeEvent, TenantHistory,
    UsageBatch, UsageRecord, USAGE_BATCH_DAYS,
};
use super::tenants::{self, NewTenant, Status, Tenant, Tier};
use super::{parse_ts, ts, AuditEvent, Lifecycle};
use crate::error::{Code, Error};

/// Versioned schema; `warren_migrations` records which have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE control_version (one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
INSERT INTO control_version (one, version) VALUES (TRUE, 1);
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
CREATE INDEX tenants_stripe_customer ON tenants(stripe_customer_id);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    prefix TEXT NOT NULL UNIQUE,
    hash BYTEA NOT NULL,
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
    id BIGSERIAL PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT,
    action TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX audit_tenant ON audit_events(tenant_id, id);
CREATE TABLE usage_events (
    id BIGSERIAL PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    key_id TEXT,
    kind TEXT NOT NULL,
    count BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX usage_tenant_at ON usage_events(tenant_id, at);
CREATE INDEX usage_at ON usage_events(at);
CREATE TABLE usage_batches (id TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE plan_overrides (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
    overrides TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE key_rate_limits (
    key_id TEXT PRIMARY KEY REFERENCES api_keys(id) ON DELETE CASCADE,
    rate_per_sec BIGINT NOT NULL,
    burst BIGINT NOT NULL
);
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    tenant_id TEXT,
    outcome TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE replica_deletions (tenant_id TEXT PRIMARY KEY, due_at TEXT NOT NULL);
CREATE TABLE integrations (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, kind)
);
CREATE TABLE pending_jobs (
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    job_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, job_id)
);
CREATE TABLE dashboard_links (
    token_hash BYTEA PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
CREATE TABLE dashboard_sessions (
    token_hash BYTEA PRIMARY KEY,
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
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT FALSE
);
"#,
    r#"
CREATE TABLE leases (
    tenant_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_node ON leases(node_id);
"#,
];

/// Any number, the same on every node: the advisory lock that serialises migrations.
const MIGRATION_LOCK: i64 = 0x7761_7272_656e; // "warren"

#[derive(Clone)]
pub struct PgControl {
    pool: Pool,
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() || e.code().is_none() {
            // The connection broke (PostgreSQL restarted, a network fault): a retry may succeed.
            tracing::warn!(error = %e, "the PostgreSQL control plane is unreachable");
            metrics::counter!("warren_control_unavailable_total").increment(1);
            return Error::unavailable(Code::Overloaded, "the control plane is unreachable; retry shortly", 1);
        }
        Error::Internal(anyhow::anyhow!("PostgreSQL: {e}"))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    tracing::warn!(error = %e, "no PostgreSQL connection came free");
    metrics::counter!("warren_control_pool_timeouts_total").increment(1);
    Error::unavailable(Code::Overloaded, "the server is busy; retry shortly", 1)
}

fn bad(what: &str) -> Error {
    Error::Internal(anyhow::anyhow!("the control plane holds an unreadable {what}"))
}

fn time(s: &str) -> Result<DateTime<Utc>, Error> {
    parse_ts(s).map_err(|_| bad("timestamp"))
}

fn tenant_from(r: &Row) -> Result<Tenant, Error> {
    let trial: Option<String> = r.try_get(6)?;
    Ok(Tenant {
        id: r.try_get(0)?,
        slug: r.try_get(1)?,
        name: r.try_get(2)?,
        email: r.try_get(3)?,
        tier: Tier::parse(r.try_get(4)?).ok_or_else(|| bad("tier"))?,
        status: Status::parse(r.try_get(5)?).ok_or_else(|| bad("status"))?,
        trial_ends_at: trial.as_deref().map(time).transpose()?,
        custom_domain: r.try_get(7)?,
        stripe_customer_id: r.try_get(8)?,
        created_at: time(r.try_get(9)?)?,
        updated_at: time(r.try_get(10)?)?,
    })
}

fn key_from(r: &Row) -> Result<ApiKey, Error> {
    let opt = |i: usize| -> Result<Option<DateTime<Utc>>, Error> { r.try_get::<_, Option<&str>>(i)?.map(time).transpose() };
    Ok(ApiKey {
        id: r.try_get(0)?,
        tenant_id: r.try_get(1)?,
        prefix: r.try_get(2)?,
        name: r.try_get(3)?,
        scopes: keys::parse_scopes_text(r.try_get(4)?),
        expires_at: opt(5)?,
        last_used_at: opt(6)?,
        revoked_at: opt(7)?,
        replaced_by: r.try_get(8)?,
        created_at: opt(9)?.unwrap_or_default(),
        hash: r.try_get(10)?,
    })
}

fn audit_from(r: &Row) -> Result<AuditEvent, Error> {
    let detail: Option<String> = r.try_get(5)?;
    Ok(AuditEvent {
        id: r.try_get(0)?,
        at: r.try_get(1)?,
        actor: r.try_get(2)?,
        tenant_id: r.try_get(3)?,
        action: r.try_get(4)?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Null),
    })
}

async fn tenant_where<C: GenericClient>(c: &C, column: &str, value: &str) -> Result<Option<Tenant>, Error> {
    let row = c.query_opt(&format!("SELECT {} FROM tenants WHERE {column} = $1", tenants::COLS), &[&value]).await?;
    row.as_ref().map(tenant_from).transpose()
}

async fn key_get<C: GenericClient>(c: &C, tenant_id: &str, key_id: &str) -> Result<Option<ApiKey>, Error> {
    let row = c.query_opt(&format!("SELECT {} FROM api_keys WHERE id = $1 AND tenant_id = $2", keys::COLS), &[&key_id, &tenant_id]).await?;
    row.as_ref().map(key_from).transpose()
}

async fn audit_in<C: GenericClient>(
    c: &C,
    at: DateTime<Utc>,
    actor: &str,
    tenant_id: Option<&str>,
    action: &str,
    detail: &Value,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO audit_events (at, actor, tenant_id, action, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&ts(at), &actor, &tenant_id, &action, &detail.to_string()],
    )
    .await?;
    Ok(())
}

/// Moves [`ControlStore::version`], inside a change's transaction.
async fn bump<C: GenericClient>(c: &C) -> Result<(), Error> {
    c.execute("UPDATE control_version SET version = version + 1", &[]).await?;
    Ok(())
}

async fn insert_key<C: GenericClient>(c: &C, tenant_id: &str, new: &NewKey, now: DateTime<Utc>) -> Result<(ApiKey, String), Error> {
    keys::validate(new, now)?;
    let scopes = keys::scopes_text(&new.scopes);
    for _ in 0..5 {
        let (prefix, key) = keys::generate();
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let n = c
            .execute(
                "INSERT INTO api_keys (id, tenant_id, prefix, hash, name, scopes, expires_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
                &[&id, &tenant_id, &prefix, &keys::hash_key(&key), &new.name, &scopes, &new.expires_at.map(ts), &ts(now)],
            )
            .await?;
        if n == 1 {
            let rec = key_get(c, tenant_id, &id).await?.ok_or_else(|| Error::internal(anyhow::anyhow!("key vanished")))?;
            return Ok((rec, key));
        }
        // A 40-bit prefix collision: draw again.
    }
    Err(Error::internal(anyhow::anyhow!("could not draw a unique key id")))
}

async fn insert_tenant<C: GenericClient>(c: &C, id: &str, t: &NewTenant, now: DateTime<Utc>) -> Result<Tenant, Error> {
    let now = ts(now);
    let n = c
        .execute(
            &format!("INSERT INTO tenants ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, $8) ON CONFLICT DO NOTHING", tenants::COLS),
            &[&id, &t.slug.as_str(), &t.name, &t.email, &t.tier.as_str(), &t.status.as_str(), &t.trial_ends_at.map(ts), &now],
        )
        .await?;
    if n == 0 {
        return Err(Error::conflict(Code::SlugTaken, format!("the slug {:?} is taken", t.slug.as_str())));
    }
    tenant_where(c, "id", id).await?.ok_or_else(|| Error::internal(anyhow::anyhow!("tenant vanished after insert")))
}

async fn apply_change<C: GenericClient>(tx: &C, change: Change, now: DateTime<Utc>) -> Result<Outcome, Error> {
    let not_found_key = || Error::not_found(Code::KeyNotFound, "no such key for this tenant");
    Ok(match change {
        Change::CreateTenant { id, new, key } => {
            let tenant = insert_tenant(tx, &id, &new, now).await?;
            let (key, plaintext) = insert_key(tx, &tenant.id, &key, now).await?;
            Outcome::Created { tenant, key, plaintext: plaintext.into() }
        }
        Change::ImportTenant { id, new, key, history } => {
            let tenant = insert_tenant(tx, &id, &new, now).await?;
            let (key, plaintext) = insert_key(tx, &tenant.id, &key, now).await?;
            let st = tx.prepare("INSERT INTO usage_events (tenant_id, kind, count, tokens, at) VALUES ($1, $2, $3, $4, $5)").await?;
            for u in &history.usage {
                tx.execute(&st, &[&id, &u.kind, &u.count, &u.tokens, &u.at]).await?;
            }
            let st = tx.prepare("INSERT INTO audit_events (at, actor, tenant_id, action, detail) VALUES ($1, $2, $3, $4, $5)").await?;
            for a in &history.audit {
                tx.execute(&st, &[&a.at, &a.actor, &id, &a.action, &a.detail.to_string()]).await?;
            }
            Outcome::Created { tenant, key, plaintext: plaintext.into() }
        }
        Change::UpdateTenant { id, patch } => {
            let t = tenant_where(tx, "id", &id).await?.ok_or_else(|| Error::not_found(Code::TenantNotFound, "no such tenant"))?;
            let t = tenants::patched(t, &patch)?;
            if let Some(d) = &t.custom_domain {
                let taken = tx.query_opt("SELECT 1 FROM tenants WHERE custom_domain = $1 AND id <> $2", &[d, &id]).await?;
                if taken.is_some() {
                    return Err(Error::conflict(Code::DomainTaken, "another tenant has this custom domain"));
                }
            }
            let res = tx
                .execute(
                    "UPDATE tenants SET tier = $2, status = $3, custom_domain = $4, name = $5, email = $6, trial_ends_at = $7, updated_at = $8 WHERE id = $1",
                    &[&id, &t.tier.as_str(), &t.status.as_str(), &t.custom_domain, &t.name, &t.email, &t.trial_ends_at.map(ts), &ts(now)],
                )
                .await;
            match res {
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(Error::conflict(Code::DomainTaken, "another tenant has this custom domain"))
                }
                r => r?,
            };
            Outcome::Tenant(tenant_where(tx, "id", &id).await?.ok_or_else(|| Error::not_found(Code::TenantNotFound, "no such tenant"))?)
        }
        Change::DeleteTenant { id, replica_due } => {
            let removed = tx.execute("DELETE FROM tenants WHERE id = $1", &[&id]).await? > 0;
            if let (true, Some(due)) = (removed, replica_due) {
                tx.execute(
                    "INSERT INTO replica_deletions (tenant_id, due_at) VALUES ($1, $2) ON CONFLICT (tenant_id) DO UPDATE SET due_at = excluded.due_at",
                    &[&id, &ts(due)],
                )
                .await?;
            }
            Outcome::Done(removed)
        }
        Change::CreateKey { tenant_id, new } => {
            let (key, plaintext) = insert_key(tx, &tenant_id, &new, now).await?;
            Outcome::Key { key, plaintext: plaintext.into(), old_valid_until: None }
        }
        Change::RevokeKey { tenant_id, key_id } => {
            let n = tx
                .execute(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND tenant_id = $2",
                    &[&key_id, &tenant_id, &ts(now)],
                )
                .await?;
            if n == 0 {
                return Err(not_found_key());
            }
            Outcome::RevokedKey(key_get(tx, &tenant_id, &key_id).await?.ok_or_else(not_found_key)?)
        }
        Change::RotateKey { tenant_id, key_id, overlap } => {
            let old = key_get(tx, &tenant_id, &key_id).await?.ok_or_else(not_found_key)?;
            if !old.is_live(now) {
                return Err(Error::validation("only a live key can be rotated"));
            }
            let new = NewKey { name: old.name.clone(), scopes: old.scopes.clone(), expires_at: old.expires_at };
            let (key, plaintext) = insert_key(tx, &tenant_id, &new, now).await?;
            let until = now + overlap;
            let until = old.expires_at.map_or(until, |e| e.min(until));
            tx.execute("UPDATE api_keys SET expires_at = $2, replaced_by = $3 WHERE id = $1", &[&key_id, &ts(until), &key.id]).await?;
            Outcome::Key { key, plaintext: plaintext.into(), old_valid_until: Some(until) }
        }
        Change::PutOverrides { tenant_id, overrides } => {
            match overrides {
                Some(text) => {
                    tx.execute(
                        "INSERT INTO plan_overrides (tenant_id, overrides, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (tenant_id) DO UPDATE SET overrides = excluded.overrides, updated_at = excluded.updated_at",
                        &[&tenant_id, &text, &ts(now)],
                    )
                    .await?;
                }
                None => {
                    tx.execute("DELETE FROM plan_overrides WHERE tenant_id = $1", &[&tenant_id]).await?;
                }
            }
            Outcome::Done(true)
        }
        Change::SetKeyLimit { tenant_id, key_id, limit } => {
            if key_get(tx, &tenant_id, &key_id).await?.is_none() {
                return Err(not_found_key());
            }
            match limit {
                Some((rate, burst)) => {
                    tx.execute(
                        "INSERT INTO key_rate_limits (key_id, rate_per_sec, burst) VALUES ($1, $2, $3)
                         ON CONFLICT (key_id) DO UPDATE SET rate_per_sec = excluded.rate_per_sec, burst = excluded.burst",
                        &[&key_id, &i64::from(rate), &i64::from(burst)],
                    )
                    .await?;
                }
                None => {
                    tx.execute("DELETE FROM key_rate_limits WHERE key_id = $1", &[&key_id]).await?;
                }
            }
            Outcome::Done(true)
        }
        Change::ReplicaDeleted { tenant_id } => {
            tx.execute("DELETE FROM replica_deletions WHERE tenant_id = $1", &[&tenant_id]).await?;
            Outcome::Done(true)
        }
        Change::SetIntegration { tenant_id, kind, config } => {
            tx.execute(
                "INSERT INTO integrations (tenant_id, kind, config, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (tenant_id, kind) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                &[&tenant_id, &kind, &config, &ts(now)],
            )
            .await?;
            Outcome::Done(true)
        }
        Change::MintDashboardLink { tenant_id, token_hash, expires_at } => {
            tx.execute("DELETE FROM dashboard_links WHERE expires_at <= $1", &[&ts(now)]).await?;
            tx.execute(
                "INSERT INTO dashboard_links (token_hash, tenant_id, expires_at) VALUES ($1, $2, $3)",
                &[&token_hash, &tenant_id, &ts(expires_at)],
            )
            .await?;
            Outcome::Done(true)
        }
    })
}

async fn stripe_tenant<C: GenericClient>(c: &C, ev: &StripeEvent) -> Result<Option<Tenant>, Error> {
    if let Some(t) = ev.tenant_ref.as_deref() {
        let column = if super::slug::is_id_shaped(t) { "id" } else { "slug" };
        if let Some(found) = tenant_where(c, column, t).await? {
            return Ok(Some(found));
        }
    }
    match ev.customer.as_deref() {
        Some(customer) => tenant_where(c, "stripe_customer_id", customer).await,
        None => Ok(None),
    }
}

/// One Stripe event inside the caller's transaction: (outcome, tenant id). The same decisions as the
/// embedded control plane's.
async fn stripe_apply<C: GenericClient>(c: &C, ev: &StripeEvent, at: DateTime<Utc>) -> Result<(String, Option<String>), Error> {
    if matches!(ev.effect, StripeEffect::Ignore) {
        return Ok(("ignored".into(), None));
    }
    let Some(t) = stripe_tenant(c, ev).await? else { return Ok(("no_tenant".into(), None)) };
    let now = ts(at);
    let p = super::store::stripe_plan(&t, ev);
    if let Some(customer) = &p.customer {
        c.execute("UPDATE tenants SET stripe_customer_id = $2, updated_at = $3 WHERE id = $1", &[&t.id, customer, &now]).await?;
    }
    if p.suspend {
        c.execute("UPDATE tenants SET status = 'suspended', updated_at = $2 WHERE id = $1", &[&t.id, &now]).await?;
    }
    if let Some(tier) = p.tier {
        c.execute("UPDATE tenants SET tier = $2, updated_at = $3 WHERE id = $1", &[&t.id, &tier.as_str(), &now]).await?;
    }
    if p.convert {
        c.execute("UPDATE tenants SET status = 'active', trial_ends_at = NULL WHERE id = $1", &[&t.id]).await?;
    }
    audit_in(c, at, "stripe", Some(&t.id), &format!("stripe.{}", ev.kind), &p.detail).await?;
    Ok((p.outcome, Some(t.id)))
}

impl PgControl {
    /// Connects to `url` and brings its schema up to date.
    pub async fn connect(url: &str, settings: &crate::config::ControlConfig) -> anyhow::Result<PgControl> {
        use anyhow::Context;
        let config: tokio_postgres::Config = url.parse().context("control.url is not a valid PostgreSQL URL")?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let timeout = Duration::from_millis(settings.connect_timeout_ms.max(1));
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .context("building the PostgreSQL pool")?;
        let pg = PgControl { pool };
        pg.migrate().await.map_err(|e| anyhow::anyhow!("migrating the PostgreSQL control plane: {e}"))?;
        Ok(pg)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<(), Error> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS warren_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)").await?;
        let done: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM warren_migrations", &[]).await?.try_get(0)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO warren_migrations (version, applied_at) VALUES ($1, $2)", &[&(i as i32 + 1), &ts(Utc::now())]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs `f` in one transaction and commits it; an error rolls it back.
    async fn tx<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: for<'t> FnOnce(&'t deadpool_postgres::Transaction<'t>) -> futures::future::BoxFuture<'t, Result<T, Error>>,
    {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn usage_sums<G>(&self, sql: &str, tenant_id: &str, since: DateTime<Utc>) -> Result<Vec<(G, String, u64, u64)>, Error>
    where
        G: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        let c = self.client().await?;
        let rows = c.query(sql, &[&tenant_id, &ts(since)]).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<_, i64>(2)?.max(0) as u64, r.try_get::<_, i64>(3)?.max(0) as u64)))
            .collect()
    }
}

/// A node of the cluster as the control plane sees it. Liveness is judged by PostgreSQL's clock
/// alone, so the nodes' clocks need not agree.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct NodeRow {
    pub id: String,
    pub url: String,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: i64,
    pub live: bool,
    pub draining: bool,
    pub started_at: String,
}

/// A tenant's lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRow {
    pub node: String,
    /// The holder's URL (empty if the node is not registered).
    pub url: String,
    pub epoch: i64,
    /// Not expired by PostgreSQL's clock.
    pub valid: bool,
    /// Milliseconds until it expires (negative once expired; `None` once released).
    pub expires_in_ms: Option<i64>,
}

/// What [`PgControl::acquire_lease`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// The lease is this node's now; `previous` held it before (None: nobody ever did).
    Got { epoch: i64, previous: Option<String> },
    /// Another node holds it, valid.
    HeldBy(LeaseRow),
}

impl PgControl {
    /// Registers (or re-registers, after a restart) this node, live now.
    pub async fn register_node(&self, id: &str, url: &str) -> Result<(), Error> {
        self.client()
            .await?
            .execute(
                "INSERT INTO nodes (id, url, started_at, heartbeat_at, draining) VALUES ($1, $2, clock_timestamp(), clock_timestamp(), FALSE)
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, draining = FALSE",
                &[&id, &url],
            )
            .await?;
        Ok(())
    }

    /// Records a heartbeat of `id` and answers every registered node; a node is live when its
    /// last heartbeat is younger than `timeout_ms` by PostgreSQL's clock.
    pub async fn heartbeat(&self, id: &str, timeout_ms: i64) -> Result<Vec<NodeRow>, Error> {
        self.client().await?.execute("UPDATE nodes SET heartbeat_at = clock_timestamp() WHERE id = $1", &[&id]).await?;
        self.nodes(timeout_ms).await
    }

    /// Every registered node, without heartbeating (for the CLI).
    pub async fn nodes(&self, timeout_ms: i64) -> Result<Vec<NodeRow>, Error> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, url, (EXTRACT(EPOCH FROM (clock_timestamp() - heartbeat_at)) * 1000)::BIGINT, draining,
                        to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM nodes ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let age: i64 = r.try_get(2)?;
                Ok(NodeRow {
                    id: r.try_get(0)?,
                    url: r.try_get(1)?,
                    heartbeat_age_ms: age,
                    live: age < timeout_ms,
                    draining: r.try_get(3)?,
                    started_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Marks a node as draining (or not): it stays live but is preferred for no tenant.
    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<bool, Error> {
        Ok(self.client().await?.execute("UPDATE nodes SET draining = $2 WHERE id = $1", &[&id, &draining]).await? == 1)
    }

    /// Takes (or renews) the lease of `tenant` for `node` for `lease_ms`, by PostgreSQL's clock, when
    /// it is free, expired or already `node`'s. The epoch (the fencing token) goes up whenever the
    /// lease changes hands. Answers the lease as it stands afterwards.
    pub async fn acquire_lease(&self, tenant: &str, node: &str, lease_ms: i64) -> Result<Acquired, Error> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "WITH prev AS (SELECT node_id FROM leases WHERE tenant_id = $1)
                 INSERT INTO leases (tenant_id, node_id, epoch, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (tenant_id) DO UPDATE SET
                     epoch = CASE WHEN leases.node_id = excluded.node_id THEN leases.epoch ELSE leases.epoch + 1 END,
                     node_id = excluded.node_id,
                     expires_at = excluded.expires_at
                 WHERE leases.node_id = excluded.node_id OR leases.expires_at <= clock_timestamp()
                 RETURNING epoch, (SELECT node_id FROM prev)",
                &[&tenant, &node, &(lease_ms as f64)],
            )
            .await?;
        if let Some(r) = row {
            return Ok(Acquired::Got { epoch: r.try_get(0)?, previous: r.try_get(1)? });
        }
        match self.lease_of(tenant).await? {
            Some(l) => Ok(Acquired::HeldBy(l)),
            None => Err(Error::unavailable(Code::OwnerUnavailable, "the tenant is moving between nodes; retry shortly", 1)),
        }
    }

    /// The lease of `tenant`, with its holder's URL and whether it is still valid.
    pub async fn lease_of(&self, tenant: &str) -> Result<Option<LeaseRow>, Error> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT l.node_id, COALESCE(n.url, ''), l.epoch, l.expires_at > clock_timestamp(),
                        CASE WHEN isfinite(l.expires_at) THEN (EXTRACT(EPOCH FROM (l.expires_at - clock_timestamp())) * 1000)::BIGINT END
                 FROM leases l LEFT JOIN nodes n ON n.id = l.node_id WHERE l.tenant_id = $1",
                &[&tenant],
            )
            .await?;
        row.map(|r| {
            Ok(LeaseRow { node: r.try_get(0)?, url: r.try_get(1)?, epoch: r.try_get(2)?, valid: r.try_get(3)?, expires_in_ms: r.try_get(4)? })
        })
        .transpose()
    }

    /// Renews the still-valid leases of `node` among `tenants`; answers those renewed, with epochs.
    pub async fn renew_leases(&self, node: &str, tenants: &[String], lease_ms: i64) -> Result<Vec<(String, i64)>, Error> {
        let rows = self
            .client()
            .await?
            .query(
                "UPDATE leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                 WHERE node_id = $1 AND tenant_id = ANY($2) AND expires_at > clock_timestamp() RETURNING tenant_id, epoch",
                &[&node, &tenants, &(lease_ms as f64)],
            )
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Gives up a lease at once (the holder shipped and closed the tenant): another node may take it.
    pub async fn release_lease(&self, tenant: &str, node: &str, epoch: i64) -> Result<bool, Error> {
        let n = self
            .client()
            .await?
            .execute("UPDATE leases SET expires_at = '-infinity' WHERE tenant_id = $1 AND node_id = $2 AND epoch = $3", &[&tenant, &node, &epoch])
            .await?;
        Ok(n == 1)
    }

    /// Valid leases per node.
    pub async fn lease_counts(&self) -> Result<std::collections::HashMap<String, u64>, Error> {
        let rows =
            self.client().await?.query("SELECT node_id, count(*) FROM leases WHERE expires_at > clock_timestamp() GROUP BY node_id", &[]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<_, i64>(1)?.max(0) as u64))).collect()
    }

    /// Forgets a node that left for good.
    pub async fn remove_node(&self, id: &str) -> Result<bool, Error> {
        Ok(self.client().await?.execute("DELETE FROM nodes WHERE id = $1", &[&id]).await? == 1)
    }
}

impl ControlStore for PgControl {
    fn tenant_by_id(&self, id: &str) -> Fut<'_, Option<Tenant>> {
        let id = id.to_string();
        Box::pin(async move { tenant_where(&self.client().await?, "id", &id).await })
    }

    fn tenant_by_slug(&self, slug: &str) -> Fut<'_, Option<Tenant>> {
        let slug = slug.to_string();
        Box::pin(async move { tenant_where(&self.client().await?, "slug", &slug).await })
    }

    fn tenant_by_domain(&self, domain: &str) -> Fut<'_, Option<Tenant>> {
        let domain = domain.to_string();
        Box::pin(async move { tenant_where(&self.client().await?, "custom_domain", &domain).await })
    }

    fn list_tenants(&self, q: Option<String>, after: Option<String>, limit: u32) -> Fut<'_, (Vec<Tenant>, i64)> {
        Box::pin(async move {
            let c = self.client().await?;
            let pattern = q.map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
            let rows = c
                .query(
                    &format!(
                        "SELECT {} FROM tenants
                         WHERE ($1::text IS NULL OR slug > $1)
                           AND ($2::text IS NULL OR slug ILIKE $2 OR name ILIKE $2 OR email ILIKE $2)
                         ORDER BY slug LIMIT $3",
                        tenants::COLS
                    ),
                    &[&after, &pattern, &i64::from(limit)],
                )
                .await?;
            let list = rows.iter().map(tenant_from).collect::<Result<Vec<_>, _>>()?;
            let total: i64 = c.query_one("SELECT COUNT(*) FROM tenants", &[]).await?.try_get(0)?;
            Ok((list, total))
        })
    }

    fn key_by_prefix(&self, prefix: &str) -> Fut<'_, Option<ApiKey>> {
        let prefix = prefix.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            let row = c.query_opt(&format!("SELECT {} FROM api_keys WHERE prefix = $1", keys::COLS), &[&prefix]).await?;
            row.as_ref().map(key_from).transpose()
        })
    }

    fn list_keys(&self, tenant_id: &str) -> Fut<'_, Vec<ApiKey>> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c.query(&format!("SELECT {} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id", keys::COLS), &[&id]).await?;
            rows.iter().map(key_from).collect()
        })
    }

    fn touch_keys(&self, used: Vec<(String, DateTime<Utc>)>) -> Fut<'_, ()> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let st = tx.prepare("UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)").await?;
                for (id, at) in &used {
                    tx.execute(&st, &[id, &ts(*at)]).await?;
                }
                Ok(())
            })
        }))
    }

    fn audit_events(&self, tenant_id: Option<String>, limit: u32) -> Fut<'_, Vec<AuditEvent>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id, at, actor, tenant_id, action, detail FROM audit_events
                     WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY id DESC LIMIT $2",
                    &[&tenant_id, &i64::from(limit)],
                )
                .await?;
            rows.iter().map(audit_from).collect()
        })
    }

    fn overrides_json(&self, tenant_id: &str) -> Fut<'_, Option<String>> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.query_opt("SELECT overrides FROM plan_overrides WHERE tenant_id = $1", &[&id]).await?.map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn tenant_history(&self, tenant_id: &str) -> Fut<'_, TenantHistory> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            let usage = c
                .query("SELECT kind, count, tokens, at FROM usage_events WHERE tenant_id = $1 ORDER BY at, id", &[&id])
                .await?
                .iter()
                .map(|r| Ok(UsageRecord { kind: r.try_get(0)?, count: r.try_get(1)?, tokens: r.try_get(2)?, at: r.try_get(3)? }))
                .collect::<Result<Vec<_>, Error>>()?;
            let audit = c
                .query("SELECT at, actor, action, detail FROM audit_events WHERE tenant_id = $1 ORDER BY id", &[&id])
                .await?
                .iter()
                .map(|r| {
                    let detail: Option<String> = r.try_get(3)?;
                    Ok(HistoryEvent {
                        at: r.try_get(0)?,
                        actor: r.try_get(1)?,
                        action: r.try_get(2)?,
                        detail: detail.and_then(|d| serde_json::from_str(&d).ok()).unwrap_or(Value::Null),
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(TenantHistory { usage, audit })
        })
    }

    fn due_replica_deletions(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c.query("SELECT tenant_id FROM replica_deletions WHERE due_at <= $1", &[&ts(now)]).await?;
            Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn integration(&self, tenant_id: &str, kind: &'static str) -> Fut<'_, Option<String>> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            let c = self.client().await?;
            Ok(c.query_opt("SELECT config FROM integrations WHERE tenant_id = $1 AND kind = $2", &[&id, &kind])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?)
        })
    }

    fn apply(&self, change: Change, audit: AuditRecord) -> Fut<'_, Outcome> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let out = apply_change(tx, change, audit.at).await?;
                let mut detail = audit.detail;
                if let (Value::Object(d), Outcome::Key { key, old_valid_until, .. }) = (&mut detail, &out) {
                    let field = if old_valid_until.is_some() { "new_key_id" } else { "key_id" };
                    d.insert(field.into(), Value::from(key.id.clone()));
                }
                audit_in(tx, audit.at, &audit.actor, audit.tenant_id.as_deref(), audit.action, &detail).await?;
                bump(tx).await?;
                Ok(out)
            })
        }))
    }

    fn stripe_event(&self, event: StripeEvent, at: DateTime<Utc>) -> Fut<'_, Value> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                // The id's row first: a concurrent delivery of the same event waits here for this
                // transaction, then finds it and changes nothing.
                let fresh = tx
                    .execute(
                        "INSERT INTO stripe_events (id, type, tenant_id, outcome, received_at) VALUES ($1, $2, NULL, '', $3) ON CONFLICT DO NOTHING",
                        &[&event.id, &event.kind, &ts(at)],
                    )
                    .await?;
                if fresh == 0 {
                    return Ok(serde_json::json!({"received": true, "duplicate": true}));
                }
                let (outcome, tenant_id) = stripe_apply(tx, &event, at).await?;
                tx.execute("UPDATE stripe_events SET outcome = $2, tenant_id = $3 WHERE id = $1", &[&event.id, &outcome, &tenant_id]).await?;
                bump(tx).await?;
                Ok(serde_json::json!({"received": true, "outcome": outcome, "tenant_id": tenant_id}))
            })
        }))
    }

    fn set_job_pending(&self, tenant_id: &str, job_id: &str, pending: bool, at: DateTime<Utc>) -> Fut<'_, ()> {
        let (tenant_id, job_id) = (tenant_id.to_string(), job_id.to_string());
        Box::pin(async move {
            let c = self.client().await?;
            if pending {
                c.execute(
                    "INSERT INTO pending_jobs (tenant_id, job_id, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&tenant_id, &job_id, &ts(at)],
                )
                .await?;
            } else {
                c.execute("DELETE FROM pending_jobs WHERE tenant_id = $1 AND job_id = $2", &[&tenant_id, &job_id]).await?;
            }
            Ok(())
        })
    }

    fn pending_jobs(&self) -> Fut<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c.query("SELECT tenant_id, job_id FROM pending_jobs ORDER BY created_at, job_id", &[]).await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
        })
    }

    fn deleted_among(&self, ids: Vec<String>) -> Fut<'_, Vec<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT DISTINCT a.tenant_id FROM audit_events a WHERE a.tenant_id = ANY($1) AND a.action = 'tenant.deleted'
                     AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = a.tenant_id)",
                    &[&ids],
                )
                .await?;
            let found: std::collections::HashSet<String> = rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
            Ok(ids.into_iter().filter(|i| found.contains(i)).collect())
        })
    }

    fn event_owners(&self) -> Fut<'_, Vec<Option<String>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c.query("SELECT DISTINCT tenant_id FROM usage_events UNION SELECT DISTINCT tenant_id FROM audit_events", &[]).await?;
            Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn prune_events(&self, owner: Option<String>, usage_before: DateTime<Utc>, audit_before: DateTime<Utc>, batch: u32) -> Fut<'_, (u64, u64)> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let batch = i64::from(batch);
                let usage = match &owner {
                    Some(id) => {
                        tx.execute(
                            "DELETE FROM usage_events WHERE id IN (SELECT id FROM usage_events WHERE tenant_id = $1 AND at < $2 LIMIT $3)",
                            &[id, &ts(usage_before), &batch],
                        )
                        .await?
                    }
                    None => 0,
                };
                let audit = tx
                    .execute(
                        "DELETE FROM audit_events WHERE id IN
                         (SELECT id FROM audit_events WHERE tenant_id IS NOT DISTINCT FROM $1 AND at < $2 LIMIT $3)",
                        &[&owner, &ts(audit_before), &batch],
                    )
                    .await?;
                Ok((usage, audit))
            })
        }))
    }

    fn consume_dashboard_link(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<String>> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let now = ts(now);
                let tenant: Option<String> = tx
                    .query_opt(
                        "UPDATE dashboard_links SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING tenant_id",
                        &[&token_hash, &now],
                    )
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?;
                tx.execute("DELETE FROM dashboard_links WHERE expires_at <= $1", &[&now]).await?;
                Ok(tenant)
            })
        }))
    }

    fn insert_session(&self, s: DashboardSession, now: DateTime<Utc>) -> Fut<'_, ()> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                tx.execute("DELETE FROM dashboard_sessions WHERE expires_at <= $1", &[&ts(now)]).await?;
                tx.execute(
                    "INSERT INTO dashboard_sessions (token_hash, tenant_id, scopes, csrf, via, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&s.token_hash, &s.tenant_id, &keys::scopes_text(&s.scopes), &s.csrf, &s.via, &ts(s.created_at), &ts(s.expires_at)],
                )
                .await?;
                Ok(())
            })
        }))
    }

    fn session(&self, token_hash: Vec<u8>, now: DateTime<Utc>) -> Fut<'_, Option<DashboardSession>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT tenant_id, scopes, csrf, via, created_at, expires_at FROM dashboard_sessions WHERE token_hash = $1 AND expires_at > $2",
                    &[&token_hash, &ts(now)],
                )
                .await?;
            let Some(r) = row else { return Ok(None) };
            Ok(Some(DashboardSession {
                token_hash,
                tenant_id: r.try_get(0)?,
                scopes: keys::parse_scopes_text(r.try_get(1)?),
                csrf: r.try_get(2)?,
                via: r.try_get(3)?,
                created_at: time(r.try_get(4)?)?,
                expires_at: time(r.try_get(5)?)?,
            }))
        })
    }

    fn delete_session(&self, token_hash: Vec<u8>) -> Fut<'_, ()> {
        Box::pin(async move {
            self.client().await?.execute("DELETE FROM dashboard_sessions WHERE token_hash = $1", &[&token_hash]).await?;
            Ok(())
        })
    }

    fn usage_by_day(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(String, String, u64, u64)>> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            self.usage_sums(
                "SELECT substr(at, 1, 10) AS day, kind, SUM(count)::BIGINT, SUM(tokens)::BIGINT FROM usage_events
                 WHERE tenant_id = $1 AND at >= $2 GROUP BY day, kind ORDER BY day, kind",
                &id,
                since,
            )
            .await
        })
    }

    fn usage_by_key(&self, tenant_id: &str, since: DateTime<Utc>) -> Fut<'_, Vec<(Option<String>, String, u64, u64)>> {
        let id = tenant_id.to_string();
        Box::pin(async move {
            self.usage_sums(
                "SELECT key_id, kind, SUM(count)::BIGINT, SUM(tokens)::BIGINT FROM usage_events
                 WHERE tenant_id = $1 AND at >= $2 GROUP BY key_id, kind ORDER BY key_id NULLS FIRST, kind",
                &id,
                since,
            )
            .await
        })
    }

    fn audit(&self, a: AuditRecord) -> Fut<'_, ()> {
        Box::pin(async move { audit_in(&self.client().await?, a.at, &a.actor, a.tenant_id.as_deref(), a.action, &a.detail).await })
    }

    fn lifecycle(&self, from: String, to: String) -> Fut<'_, Lifecycle> {
        Box::pin(async move {
            let c = self.client().await?;
            let distinct = |filter: &'static str| {
                let (c, from, to) = (&c, &from, &to);
                async move {
                    let sql = format!("SELECT count(DISTINCT tenant_id) FROM audit_events WHERE at >= $1 AND at < $2 AND ({filter})");
                    Ok::<u64, Error>(c.query_one(&sql, &[from, to]).await?.try_get::<_, i64>(0)?.max(0) as u64)
                }
            };
            let trials_converted = distinct(
                "(action LIKE 'stripe.%' AND (detail::jsonb -> 'converted_from_trial') = 'true'::jsonb)
                 OR (action = 'tenant.updated' AND detail::jsonb ->> 'from_status' = 'trial' AND detail::jsonb ->> 'status' = 'active')",
            )
            .await?;
            let trials_expired = distinct("action = 'tenant.trial_expired'").await?;
            let churned = distinct(
                "action = 'tenant.deleted' OR action = 'stripe.customer.subscription.deleted'
                 OR (action = 'tenant.updated' AND detail::jsonb ->> 'status' = 'cancelled')",
            )
            .await?;
            let existing: i64 = c.query_one("SELECT count(*) FROM tenants WHERE created_at < $1", &[&from]).await?.try_get(0)?;
            let deleted: i64 = c
                .query_one(
                    "SELECT count(DISTINCT d.tenant_id) FROM audit_events d WHERE d.action = 'tenant.deleted' AND d.at >= $1 AND d.at < $2
                     AND EXISTS (SELECT 1 FROM audit_events c WHERE c.tenant_id = d.tenant_id AND c.action = 'tenant.created' AND c.at < $1)",
                    &[&from, &to],
                )
                .await?
                .try_get(0)?;
            Ok(Lifecycle { trials_converted, trials_expired, churned, at_start: (existing + deleted).max(0) as u64 })
        })
    }

    fn expired_trials(&self, now: DateTime<Utc>) -> Fut<'_, Vec<String>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows =
                c.query("SELECT id FROM tenants WHERE status = 'trial' AND trial_ends_at IS NOT NULL AND trial_ends_at <= $1", &[&ts(now)]).await?;
            Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn expire_trial(&self, tenant_id: &str, now: DateTime<Utc>) -> Fut<'_, bool> {
        let id = tenant_id.to_string();
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let row = tx.query_opt(&format!("SELECT {} FROM tenants WHERE id = $1 FOR UPDATE", tenants::COLS), &[&id]).await?;
                let Some(t) = row.as_ref().map(tenant_from).transpose()? else { return Ok(false) };
                if !tenants::trial_expired(&t, now) {
                    return Ok(false);
                }
                tx.execute("UPDATE tenants SET tier = 'free', status = 'active', updated_at = $2 WHERE id = $1", &[&id, &ts(now)]).await?;
                audit_in(tx, now, "system", Some(&id), "tenant.trial_expired", &expiry_detail(&t)).await?;
                bump(tx).await?;
                Ok(true)
            })
        }))
    }

    fn limits(&self) -> Fut<'_, Limits> {
        Box::pin(async move {
            let c = self.client().await?;
            let overrides = c
                .query("SELECT tenant_id, overrides FROM plan_overrides", &[])
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            let key_limits = c
                .query("SELECT key_id, rate_per_sec, burst FROM key_rate_limits", &[])
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                .collect::<Result<Vec<_>, Error>>()?;
            Ok(Limits { overrides, key_limits })
        })
    }

    fn usage_totals(&self, tenant: Option<String>, from: String, to: String, upto: Option<i64>) -> Fut<'_, Vec<(String, String, i64, i64)>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT tenant_id, kind, SUM(count)::BIGINT, SUM(tokens)::BIGINT FROM usage_events
                     WHERE ($1::text IS NULL OR tenant_id = $1) AND at >= $2 AND at < $3 AND ($4::bigint IS NULL OR id <= $4) GROUP BY tenant_id, kind",
                    &[&tenant, &from, &to, &upto],
                )
                .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
        })
    }

    fn usage_mark(&self) -> Fut<'_, i64> {
        Box::pin(async move { Ok(self.client().await?.query_one("SELECT COALESCE(MAX(id), 0) FROM usage_events", &[]).await?.try_get(0)?) })
    }

    fn flush_usage(&self, batch: UsageBatch) -> Fut<'_, ()> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                let at = batch.rows.iter().map(|r| r.at.as_str()).min().unwrap_or("").to_string();
                // A retried batch that was stored before (its answer was lost) conflicts here and adds nothing.
                if tx.execute("INSERT INTO usage_batches (id, at) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&batch.id, &at]).await? == 1 {
                    let st =
                        tx.prepare("INSERT INTO usage_events (tenant_id, key_id, kind, count, tokens, at) VALUES ($1, $2, $3, $4, $5, $6)").await?;
                    for r in &batch.rows {
                        tx.execute(&st, &[&r.tenant_id, &r.key_id, &r.kind, &r.count, &r.tokens, &r.at]).await?;
                    }
                }
                tx.execute("DELETE FROM usage_batches WHERE at < $1", &[&ts(Utc::now() - chrono::Duration::days(USAGE_BATCH_DAYS))]).await?;
                Ok(())
            })
        }))
    }

    fn setting(&self, key: &'static str) -> Fut<'_, Option<String>> {
        Box::pin(async move {
            Ok(self.client().await?.query_opt("SELECT value FROM settings WHERE key = $1", &[&key]).await?.map(|r| r.try_get(0)).transpose()?)
        })
    }

    fn set_setting(&self, key: &'static str, value: String) -> Fut<'_, ()> {
        Box::pin(self.tx(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key, &value],
                )
                .await?;
                bump(tx).await
            })
        }))
    }

    fn version(&self) -> Fut<'_, i64> {
        Box::pin(async move { Ok(self.client().await?.query_one("SELECT version FROM control_version", &[]).await?.try_get(0)?) })
    }

    fn ping(&self) -> Fut<'_, bool> {
        Box::pin(async move {
            match self.client().await {
                Ok(c) => Ok(c.query_one("SELECT 1", &[]).await.is_ok()),
                Err(_) => Ok(false),
            }
        })
    }
}
