//! API keys: create, list, revoke, rotate, per-key rate limits. Every change is one audited
//! transaction; a running server drops its credential caches at once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::audit::Operator;
use crate::control::{keys, ApiKey, NewKey};
use crate::error::{Code, Error};
use crate::secret::Secret;

/// A new key: its record and the plaintext, shown once.
#[derive(Serialize)]
pub struct IssuedKey {
    pub key: ApiKey,
    pub api_key: Secret,
}

/// A rotated key: the replacement, and until when the old one still works.
#[derive(Serialize)]
pub struct RotatedKey {
    pub key: ApiKey,
    pub api_key: Secret,
    pub old_key_valid_until: DateTime<Utc>,
}

impl Operator {
    pub async fn create_key(&self, slug: &str, new: NewKey) -> Result<IssuedKey, Error> {
        let t = self.tenant(slug).await?;
        let now = self.clock.now();
        let id = t.id.clone();
        let (key, plain) = self
            .audited(Some(&t.id), "key.created", move |tx| {
                let (rec, plain) = keys::create(tx, &id, &new, now)?;
                let detail = json!({"key_id": rec.id, "name": rec.name, "scopes": rec.scopes});
                Ok(((rec, plain), detail))
            })
            .await?;
        Ok(IssuedKey { key, api_key: Secret::new(plain) })
    }

    pub async fn list_keys(&self, slug: &str) -> Result<Vec<ApiKey>, Error> {
        let t = self.tenant(slug).await?;
        self.control.run(move |c| Ok(keys::list(c, &t.id)?)).await
    }

    pub async fn revoke_key(&self, slug: &str, key_id: &str) -> Result<ApiKey, Error> {
        let t = self.tenant(slug).await?;
        let now = self.clock.now();
        let (id, kid) = (t.id.clone(), key_id.to_string());
        self.audited(Some(&t.id), "key.revoked", move |tx| {
            let rec = keys::revoke(tx, &id, &kid, now)?;
            Ok((rec, json!({"key_id": kid})))
        })
        .await
    }

    /// Issues a replacement with the same name and scopes; the old key works for the configured overlap.
    pub async fn rotate_key(&self, slug: &str, key_id: &str) -> Result<RotatedKey, Error> {
        let t = self.tenant(slug).await?;
        let now = self.clock.now();
        let overlap = chrono::Duration::seconds(self.config.key_rotation_overlap_secs as i64);
        let (id, kid) = (t.id.clone(), key_id.to_string());
        let (key, plain, until) = self
            .audited(Some(&t.id), "key.rotated", move |tx| {
                let out = keys::rotate(tx, &id, &kid, overlap, now)?;
                let detail = json!({"old_key_id": kid, "new_key_id": out.0.id});
                Ok((out, detail))
            })
            .await?;
        Ok(RotatedKey { key, api_key: Secret::new(plain), old_key_valid_until: until })
    }

    /// Gives a key its own (lower) rate limit; `None` removes it.
    pub async fn set_key_limit(&self, slug: &str, key_id: &str, limit: Option<(u32, u32)>) -> Result<(), Error> {
        if limit.is_some_and(|(r, b)| r == 0 || b == 0) {
            return Err(Error::validation("rate_per_sec and burst must be at least 1"));
        }
        let t = self.tenant(slug).await?;
        let (id, kid) = (t.id.clone(), key_id.to_string());
        self.audited(Some(&t.id), "key.rate_limit", move |tx| {
            if keys::get(tx, &id, &kid)?.is_none() {
                return Err(Error::not_found(Code::KeyNotFound, "no such key for this tenant"));
            }
            crate::plans::put_key_limit(tx, &kid, limit)?;
            Ok(((), json!({"key_id": kid, "limit": limit})))
        })
        .await?;
        self.refresh_plans().await
    }
}
