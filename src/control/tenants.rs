//! Tenant records. A tenant's id (a ULID) names its directory on disk; its slug only names it in URLs.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{parse_ts, ts, Slug};
use crate::error::{Code, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Starter,
    Pro,
    Enterprise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Trial,
    Active,
    Suspended,
    Cancelled,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(&self) -> &'static str { match self { $(Self::$v => $s),* } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some(Self::$v),)* _ => None } }
            pub const ALL: &'static [&'static str] = &[$($s),*];
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
str_enum!(Tier { Free => "free", Starter => "starter", Pro => "pro", Enterprise => "enterprise" });
str_enum!(Status { Trial => "trial", Active => "active", Suspended => "suspended", Cancelled => "cancelled" });

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub email: String,
    /// `free`, `starter`, `pro` or `enterprise`.
    #[schema(value_type = String)]
    pub tier: Tier,
    /// `trial`, `active`, `suspended` or `cancelled`.
    #[schema(value_type = String)]
    pub status: Status,
    pub trial_ends_at: Option<DateTime<Utc>>,
    pub custom_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripe_customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const COLS: &str = "id, slug, name, email, tier, status, trial_ends_at, custom_domain, stripe_customer_id, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    let bad = |i: usize, what: &str| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.to_string().into());
    let tier: String = r.get(4)?;
    let status: String = r.get(5)?;
    let time = |i: usize| -> rusqlite::Result<DateTime<Utc>> {
        let s: String = r.get(i)?;
        parse_ts(&s).map_err(|_| bad(i, "timestamp"))
    };
    let trial: Option<String> = r.get(6)?;
    Ok(Tenant {
        id: r.get(0)?,
        slug: r.get(1)?,
        name: r.get(2)?,
        email: r.get(3)?,
        tier: Tier::parse(&tier).ok_or_else(|| bad(4, "tier"))?,
        status: Status::parse(&status).ok_or_else(|| bad(5, "status"))?,
        trial_ends_at: trial.map(|s| parse_ts(&s)).transpose().map_err(|_| bad(6, "timestamp"))?,
        custom_domain: r.get(7)?,
        stripe_customer_id: r.get(8)?,
        created_at: time(9)?,
        updated_at: time(10)?,
    })
}

#[derive(Debug, Clone)]
pub struct NewTenant {
    pub slug: Slug,
    pub name: String,
    pub email: String,
    pub tier: Tier,
    pub status: Status,
    pub trial_ends_at: Option<DateTime<Utc>>,
}

/// Validates a tenant's display name and email (lengths, no control characters, email shape).
pub fn validate_profile(name: &str, email: &str) -> Result<(), Error> {
    let name_ok = !name.trim().is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control);
    if !name_ok {
        return Err(Error::validation("name must be 1-200 printable characters"));
    }
    let email_ok = email.len() <= 254
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
        && email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'));
    if !email_ok {
        return Err(Error::validation("email must be an address like name@example.com"));
    }
    Ok(())
}

/// Validates a custom domain: lowercase host name of DNS labels, at least two labels.
pub fn validate_domain(d: &str) -> Result<String, Error> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    let ok = d.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !ok {
        return Err(Error::validation(format!("custom_domain {d:?} is not a valid host name")));
    }
    Ok(d)
}

/// Whether `t` is a trial whose end has come at `now`.
pub fn trial_expired(t: &Tenant, now: DateTime<Utc>) -> bool {
    t.status == Status::Trial && t.trial_ends_at.is_some_and(|e| e <= now)
}

/// A fresh tenant id: a lowercase ULID (names the tenant's directory).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string().to_ascii_lowercase()
}

pub fn insert(conn: &Connection, id: &str, t: &NewTenant, now: DateTime<Utc>) -> Result<Tenant, Error> {
    let now = ts(now);
    let res = conn.execute(
        &format!("INSERT INTO tenants ({COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, ?8, ?8)"),
        params![id, t.slug.as_str(), t.name, t.email, t.tier.as_str(), t.status.as_str(), t.trial_ends_at.map(ts), now],
    );
    match res {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(Error::conflict(Code::SlugTaken, format!("the slug {:?} is taken", t.slug.as_str())))
        }
        Err(e) => return Err(e.into()),
    }
    get_by_id(conn, id)?.ok_or_else(|| Error::internal(anyhow::anyhow!("tenant vanished after insert")))
}

pub fn get_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<Tenant>> {
    conn.query_row(&format!("SELECT {COLS} FROM tenants WHERE id = ?1"), [id], from_row).optional()
}

pub fn get_by_slug(conn: &Connection, slug: &str) -> rusqlite::Result<Option<Tenant>> {
    conn.query_row(&format!("SELECT {COLS} FROM tenants WHERE slug = ?1"), [slug], from_row).optional()
}

pub fn get_by_domain(conn: &Connection, domain: &str) -> rusqlite::Result<Option<Tenant>> {
    conn.query_row(&format!("SELECT {COLS} FROM tenants WHERE custom_domain = ?1"), [domain], from_row).optional()
}

/// A slug, or a tenant id (as JWTs may carry either).
/// Keyset pagination over slugs; `q` matches slug, name or email (substring, case-insensitive).
pub fn list(conn: &Connection, q: Option<&str>, after: Option<&str>, limit: u32) -> rusqlite::Result<Vec<Tenant>> {
    let pattern = q.map(|q| format!("%{}%", q.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLS} FROM tenants
         WHERE (?1 IS NULL OR slug > ?1)
           AND (?2 IS NULL OR slug LIKE ?2 ESCAPE '\\' OR name LIKE ?2 ESCAPE '\\' OR email LIKE ?2 ESCAPE '\\')
         ORDER BY slug LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![after, pattern, limit], from_row)?;
    rows.collect()
}

pub fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM tenants", [], |r| r.get(0))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    #[schema(value_type = Option<String>)]
    pub tier: Option<Tier>,
    #[schema(value_type = Option<String>)]
    pub status: Option<Status>,
    /// `null` removes the domain; absent leaves it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub custom_domain: Option<Option<String>>,
    pub name: Option<String>,
    pub email: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub trial_ends_at: Option<Option<DateTime<Utc>>>,
}

fn double_option<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

pub fn update(conn: &Connection, id: &str, p: &TenantPatch, now: DateTime<Utc>) -> Result<Tenant, Error> {
    let t = get_by_id(conn, id)?.ok_or_else(|| Error::not_found(Code::TenantNotFound, "no such tenant"))?;
    let t = patched(t, p)?;
    let res = conn.execute(
        "UPDATE tenants SET tier=?2, status=?3, custom_domain=?4, name=?5, email=?6, trial_ends_at=?7, updated_at=?8 WHERE id=?1",
        params![id, t.tier.as_str(), t.status.as_str(), t.custom_domain, t.name, t.email, t.trial_ends_at.map(ts), ts(now)],
    );
    match res {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            return Err(Error::conflict(Code::DomainTaken, "another tenant has this custom domain"))
        }
        Err(e) => return Err(e.into()),
    }
    get_by_id(conn, id)?.ok_or_else(|| Error::not_found(Code::TenantNotFound, "no such tenant"))
}

/// `t` with the patch applied and validated (every control plane stores the result).
pub(crate) fn patched(mut t: Tenant, p: &TenantPatch) -> Result<Tenant, Error> {
    if let Some(tier) = p.tier {
        t.tier = tier;
    }
    if let Some(status) = p.status {
        t.status = status;
    }
    if let Some(name) = &p.name {
        t.name = name.clone();
    }
    if let Some(email) = &p.email {
        t.email = email.clone();
    }
    validate_profile(&t.name, &t.email)?;
    if let Some(d) = &p.custom_domain {
        t.custom_domain = d.as_deref().map(validate_domain).transpose()?;
    }
    if let Some(te) = p.trial_ends_at {
        t.trial_ends_at = te;
    }
    Ok(t)
}

/// Removes the tenant row (its keys cascade). Returns false if it was not there.
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM tenants WHERE id = ?1", [id])? > 0)
}
