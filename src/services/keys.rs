//! API keys: create, list, revoke, rotate, per-key rate limits. Every change is one audited
//! transaction; a running server drops its credential caches at once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::audit::Operator;
use super::tenants::unexpected;
use crate::control::{ApiKey, Change, NewKey, Outcome};
use crate::error::Error;
use crate::secret::Secret;

/// A new key: its record and the plaintext, shown once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedKey {
    pub key: ApiKey,
    /// The key itself (`wk_live_...`), shown once.
    #[schema(value_type = String)]
    pub api_key: Secret,
}

/// A rotated key: the replacement, and until when the old one still works.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RotatedKey {
    pub key: ApiKey,
    #[schema(value_type = String)]
    pub api_key: Secret,
    pub old_key_valid_until: DateTime<Utc>,
}

impl Operator {
    pub async fn create_key(&self, slug: &str, new: NewKey) -> Result<IssuedKey, Error> {
        let t = self.tenant(slug).await?;
        let detail = json!({"name": new.name, "scopes": new.scopes});
        match self.apply(Some(&t.id), "key.created", detail, Change::CreateKey { tenant_id: t.id.clone(), new }).await? {
            Outcome::Key { key, plaintext, .. } => Ok(IssuedKey { key, api_key: plaintext }),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_keys(&self, slug: &str) -> Result<Vec<ApiKey>, Error> {
        let t = self.tenant(slug).await?;
        self.control.list_keys(&t.id).await
    }

    pub async fn revoke_key(&self, slug: &str, key_id: &str) -> Result<ApiKey, Error> {
        let t = self.tenant(slug).await?;
        let change = Change::RevokeKey { tenant_id: t.id.clone(), key_id: key_id.to_string() };
        match self.apply(Some(&t.id), "key.revoked", json!({"key_id": key_id}), change).await? {
            Outcome::RevokedKey(k) => Ok(k),
            other => Err(unexpected(other)),
        }
    }

    /// Issues a replacement with the same name and scopes; the old key works for the configured overlap.
    pub async fn rotate_key(&self, slug: &str, key_id: &str) -> Result<RotatedKey, Error> {
        let t = self.tenant(slug).await?;
        let overlap = chrono::Duration::seconds(self.config.key_rotation_overlap_secs as i64);
        let change = Change::RotateKey { tenant_id: t.id.clone(), key_id: key_id.to_string(), overlap };
        match self.apply(Some(&t.id), "key.rotated", json!({"old_key_id": key_id}), change).await? {
            Outcome::Key { key, plaintext, old_valid_until: Some(until) } => Ok(RotatedKey { key, api_key: plaintext, old_key_valid_until: until }),
            other => Err(unexpected(other)),
        }
    }

    /// Gives a key its own (lower) rate limit; `None` removes it.
    pub async fn set_key_limit(&self, slug: &str, key_id: &str, limit: Option<(u32, u32)>) -> Result<(), Error> {
        if limit.is_some_and(|(r, b)| r == 0 || b == 0) {
            return Err(Error::validation("rate_per_sec and burst must be at least 1"));
        }
        let t = self.tenant(slug).await?;
        let change = Change::SetKeyLimit { tenant_id: t.id.clone(), key_id: key_id.to_string(), limit };
        self.apply(Some(&t.id), "key.rate_limit", json!({"key_id": key_id, "limit": limit}), change).await?;
        self.refresh_plans().await
    }
}
