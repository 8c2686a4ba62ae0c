//! API keys: `wk_live_<8 id chars>_<43 chars = 256 random bits>`.
//!
//! Only a SHA-256 of the whole key is stored. A slow hash adds nothing for 256-bit random secrets
//! and would cost every request; the comparison is constant-time. The 8 visible id characters find
//! the row, so verification never scans. Rotation issues a replacement and keeps the old key valid
//! for `key_rotation_overlap_secs` (default 24 h).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{parse_ts, ts};
use crate::error::{Code, Error};

pub const KEY_PREFIX: &str = "wk_live_";
const ID_LEN: usize = 8;
const ID_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Scopes as stored: sorted, comma-separated.
pub fn scopes_text(scopes: &[Scope]) -> String {
    let mut s = scopes.to_vec();
    s.sort();
    s.dedup();
    s.iter().map(Scope::as_str).collect::<Vec<_>>().join(",")
}

/// The inverse of [`scopes_text`] (unknown names are dropped).
pub fn parse_scopes_text(s: &str) -> Vec<Scope> {
    s.split(',').filter_map(Scope::parse).collect()
}

/// Whether `granted` covers `needed`: admin implies write, write implies read.
pub fn allows(granted: &[Scope], needed: Scope) -> bool {
    granted.iter().any(|g| *g >= needed)
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub tenant_id: String,
    /// The visible part, e.g. `wk_live_ab12cd34`.
    pub prefix: String,
    pub name: String,
    /// `read`, `write`, `admin`.
    #[schema(value_type = Vec<String>)]
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    #[schema(ignore)]
    pub hash: Vec<u8>,
}

impl ApiKey {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Default `default`.
    #[serde(default = "default_name")]
    pub name: String,
    /// `read`, `write`, `admin` (default read and write).
    #[serde(default = "default_scopes")]
    #[schema(value_type = Option<Vec<String>>)]
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
}

fn default_name() -> String {
    "default".into()
}
fn default_scopes() -> Vec<Scope> {
    vec![Scope::Read, Scope::Write]
}

impl Default for NewKey {
    fn default() -> Self {
        NewKey { name: default_name(), scopes: default_scopes(), expires_at: None }
    }
}

pub fn hash_key(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Splits a presented key into its lookup prefix (`wk_live_xxxxxxxx`), or None when it is not shaped like one.
pub fn lookup_prefix(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = (rest.get(..ID_LEN)?, rest.get(ID_LEN..)?);
    let shaped = id.bytes().all(|b| ID_ALPHABET.contains(&b)) && secret.len() == 44 && secret.starts_with('_');
    shaped.then(|| &key[..KEY_PREFIX.len() + ID_LEN])
}

/// Constant-time comparison of a presented key against a stored hash.
pub fn verify(presented: &str, stored_hash: &[u8]) -> bool {
    hash_key(presented).ct_eq(stored_hash).into()
}

pub(crate) fn generate() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; ID_LEN];
    rng.fill_bytes(&mut id);
    let id: String = id.iter().map(|b| ID_ALPHABET[(*b as usize) % ID_ALPHABET.len()] as char).collect();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let prefix = format!("{KEY_PREFIX}{id}");
    let key = format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(secret));
    (prefix, key)
}

pub(crate) const COLS: &str = "id, tenant_id, prefix, name, scopes, expires_at, last_used_at, revoked_at, replaced_by, created_at, hash";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let opt_time = |i: usize| -> rusqlite::Result<Option<DateTime<Utc>>> {
        let s: Option<String> = r.get(i)?;
        s.map(|s| parse_ts(&s)).transpose().map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into()))
    };
    let scopes: String = r.get(4)?;
    Ok(ApiKey {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        prefix: r.get(2)?,
        name: r.get(3)?,
        scopes: parse_scopes_text(&scopes),
        expires_at: opt_time(5)?,
        last_used_at: opt_time(6)?,
        revoked_at: opt_time(7)?,
        replaced_by: r.get(8)?,
        created_at: opt_time(9)?.unwrap_or_default(),
        hash: r.get(10)?,
    })
}

pub(crate) fn validate(new: &NewKey, now: DateTime<Utc>) -> Result<(), Error> {
    if new.name.trim().is_empty() || new.name.chars().count() > 100 || new.name.chars().any(char::is_control) {
        return Err(Error::validation("key name must be 1-100 printable characters"));
    }
    if new.scopes.is_empty() {
        return Err(Error::validation("a key needs at least one scope (read, write, admin)"));
    }
    if new.expires_at.is_some_and(|e| e <= now) {
        return Err(Error::validation("expires_at must be in the future"));
    }
    Ok(())
}

/// Creates a key; returns the record and the plaintext, which is never stored or shown again.
pub fn create(conn: &Connection, tenant_id: &str, new: &NewKey, now: DateTime<Utc>) -> Result<(ApiKey, String), Error> {
    validate(new, now)?;
    let scopes = scopes_text(&new.scopes);
    for _ in 0..5 {
        let (prefix, key) = generate();
        let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
        let res = conn.execute(
            "INSERT INTO api_keys (id, tenant_id, prefix, hash, name, scopes, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![id, tenant_id, prefix, hash_key(&key), new.name, scopes, new.expires_at.map(ts), ts(now)],
        );
        match res {
            Ok(_) => {
                let rec = get(conn, tenant_id, &id)?.ok_or_else(|| Error::internal(anyhow::anyhow!("key vanished")))?;
                return Ok((rec, key));
            }
            // A 40-bit id collision: draw again.
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::internal(anyhow::anyhow!("could not draw a unique key id")))
}

pub fn get(conn: &Connection, tenant_id: &str, key_id: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.query_row(&format!("SELECT {COLS} FROM api_keys WHERE id = ?1 AND tenant_id = ?2"), [key_id, tenant_id], from_row).optional()
}

pub fn by_prefix(conn: &Connection, prefix: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.query_row(&format!("SELECT {COLS} FROM api_keys WHERE prefix = ?1"), [prefix], from_row).optional()
}

pub fn list(conn: &Connection, tenant_id: &str) -> rusqlite::Result<Vec<ApiKey>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at"))?;
    let rows = stmt.query_map([tenant_id], from_row)?;
    rows.collect()
}

pub fn revoke(conn: &Connection, tenant_id: &str, key_id: &str, now: DateTime<Utc>) -> Result<ApiKey, Error> {
    let n = conn
        .execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE id = ?1 AND tenant_id = ?2", params![key_id, tenant_id, ts(now)])?;
    if n == 0 {
        return Err(Error::not_found(Code::KeyNotFound, "no such key for this tenant"));
    }
    get(conn, tenant_id, key_id)?.ok_or_else(|| Error::not_found(Code::KeyNotFound, "no such key for this tenant"))
}

/// Issues a replacement with the same name and scopes; the old key expires after `overlap`.
pub fn rotate(
    conn: &Connection,
    tenant_id: &str,
    key_id: &str,
    overlap: Duration,
    now: DateTime<Utc>,
) -> Result<(ApiKey, String, DateTime<Utc>), Error> {
    let old = get(conn, tenant_id, key_id)?.ok_or_else(|| Error::not_found(Code::KeyNotFound, "no such key for this tenant"))?;
    if !old.is_live(now) {
        return Err(Error::validation("only a live key can be rotated"));
    }
    let new = NewKey { name: old.name.clone(), scopes: old.scopes.clone(), expires_at: old.expires_at };
    let (rec, key) = create(conn, tenant_id, &new, now)?;
    let until = now + overlap;
    let until = old.expires_at.map_or(until, |e| e.min(until));
    conn.execute("UPDATE api_keys SET expires_at = ?2, replaced_by = ?3 WHERE id = ?1", params![key_id, ts(until), rec.id])?;
    Ok((rec, key, until))
}

/// Records last use for a batch of keys (flushed periodically, not per request).
pub fn touch_many(conn: &mut Connection, used: &[(String, DateTime<Utc>)]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)")?;
        for (id, at) in used {
            stmt.execute(params![id, ts(*at)])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let (prefix, key) = generate();
        assert_eq!(prefix.len(), KEY_PREFIX.len() + ID_LEN);
        assert_eq!(lookup_prefix(&key), Some(prefix.as_str()));
        assert_eq!(key.len(), KEY_PREFIX.len() + ID_LEN + 1 + 43);
        assert!(verify(&key, &hash_key(&key)));
        assert!(!verify(&format!("{key}x"), &hash_key(&key)));
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        for k in ["", "wk_live_", "wk_live_short", "sk_live_abcdefgh_xxxx", &format!("wk_live_ABCDEFGH_{}", "a".repeat(43))] {
            assert_eq!(lookup_prefix(k), None, "{k}");
        }
    }

    #[test]
    fn scope_order_means_implication() {
        assert!(allows(&[Scope::Admin], Scope::Read));
        assert!(allows(&[Scope::Write], Scope::Read));
        assert!(!allows(&[Scope::Read], Scope::Write));
    }
}
