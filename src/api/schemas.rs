//! Typed shapes of the success answers that services build as JSON, for the OpenAPI document (so
//! generated clients get classes, not dicts). They describe what the handlers send; the
//! schemathesis run in `tests/api/ai.rs` checks every live answer against them, and the generated
//! Python client in `tests/python/generated_client.py` parses them.

#![allow(dead_code)] // documentation types: built by serde_json in the services, never in Rust

use utoipa::ToSchema;

use crate::backup::restore::Report;
use crate::billing::UsageRow;
use crate::control::{ApiKey, AuditEvent, Tenant};
use crate::plans::Overrides;
use crate::services::recs::SyncProgress;

/// `GET /health`.
#[derive(ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// `GET /ready` (503 with the same body when not ready).
#[derive(ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: String,
    pub control_plane: bool,
    pub data_dir_writable: bool,
}

/// A tenant's effective limits (its tier's plan with its overrides); `null` is unlimited.
#[derive(ToSchema)]
pub struct PlanLimits {
    pub queries: Option<u64>,
    pub queries_hard_limit: bool,
    pub documents: Option<u64>,
    pub storage_bytes: Option<u64>,
    pub products: Option<u64>,
    pub rate_per_sec: u32,
    pub burst: u32,
    pub retention_days: Option<u32>,
    /// When writes are acknowledged: `async` or `sync` (in object storage first).
    pub durability: crate::plans::Durability,
}

/// `GET /admin/v1/tenants/{slug}`.
#[derive(ToSchema)]
pub struct TenantDetail {
    pub tenant: Tenant,
    pub keys: Vec<ApiKey>,
    pub features: Vec<String>,
    /// The tier in force now (a trial that ended falls back to free).
    pub effective_tier: String,
    pub limits: PlanLimits,
    /// In a cluster: the tenant's lease (absent on a single node).
    pub cluster: Option<crate::services::cluster::LeaseView>,
}

#[derive(ToSchema)]
pub struct KeyList {
    pub keys: Vec<ApiKey>,
}

#[derive(ToSchema)]
pub struct KeyAnswer {
    pub key: ApiKey,
}

#[derive(ToSchema)]
pub struct AuditLog {
    /// Newest first, at most 200.
    pub events: Vec<AuditEvent>,
}

#[derive(ToSchema)]
pub struct Reindexed {
    /// The tenant's slug.
    pub reindexed: String,
    pub chunks: u64,
}

#[derive(ToSchema)]
pub struct OverridesAnswer {
    pub overrides: Option<Overrides>,
}

#[derive(ToSchema)]
pub struct KeyRate {
    pub rate_per_sec: u32,
    pub burst: u32,
}

#[derive(ToSchema)]
pub struct KeyLimitAnswer {
    pub key_id: String,
    /// `null`: the key shares the tenant's limit.
    pub rate_limit: Option<KeyRate>,
}

/// `GET /admin/v1/usage` as JSON.
#[derive(ToSchema)]
pub struct UsageExport {
    pub period: String,
    pub tenants: Vec<UsageRow>,
    pub total_usd: f64,
}

/// `GET /api/v1/tenant`.
#[derive(ToSchema)]
pub struct Me {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub tier: String,
    pub status: String,
    pub trial_ends_at: Option<String>,
    pub custom_domain: Option<String>,
    pub features: Vec<String>,
}

/// Percent of each limit used this month (`null`: no limit).
#[derive(ToSchema)]
pub struct PercentUsed {
    pub queries: Option<f64>,
    pub documents: Option<f64>,
    pub storage_bytes: Option<f64>,
    pub products: Option<f64>,
}

#[derive(ToSchema)]
pub struct Overage {
    pub queries: u64,
    pub amount_usd: f64,
}

/// `GET /api/v1/usage`: the current UTC calendar month.
#[derive(ToSchema)]
pub struct MonthUsage {
    /// `YYYY-MM`.
    pub period: String,
    pub tier: String,
    /// Per usage kind `{calls, tokens}`, and the totals `api_calls`, `queries`, `tokens_embedded`,
    /// `tokens_returned`, `documents`, `storage_bytes`, `products`.
    #[schema(value_type = Object)]
    pub usage: serde_json::Value,
    pub limits: PlanLimits,
    pub percent_used: PercentUsed,
    pub overage: Overage,
    pub resets_at: String,
}

/// The model's state: `POST /api/v1/recommendations/train` answers it (with `training` true), and
/// [`RecsStatus`] adds the data counts to it.
#[derive(ToSchema)]
pub struct ModelStatus {
    /// 0 until a first model is trained.
    pub model_version: u64,
    pub trained_at: Option<String>,
    /// True from a data change or train call until the new model is in.
    pub training: bool,
    pub pending_changes: bool,
    pub training_ms: Option<u64>,
    pub method: Option<String>,
    pub content: Option<String>,
    /// What the model was trained on (counts).
    #[schema(value_type = Option<Object>)]
    pub trained_on: Option<serde_json::Value>,
    /// Leave-last-out evaluation: `{hr_at_10, ndcg_at_10, users}`.
    #[schema(value_type = Option<Object>)]
    pub evaluation: Option<serde_json::Value>,
    pub last_error: Option<String>,
}

/// `GET /api/v1/recommendations/status`: the model's state, data counts and sync progress.
#[derive(ToSchema)]
pub struct RecsStatus {
    #[serde(flatten)]
    pub model: ModelStatus,
    /// Stored counts: products, customers, orders, order_lines, events, ...
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub unknown_products: Vec<String>,
    pub sync: SyncProgress,
}

/// Replication state of a tenant.
#[derive(ToSchema)]
pub struct BackupStatus {
    /// The tenant's slug.
    pub tenant: String,
    /// Whether backups are configured (`backup_url`).
    pub enabled: bool,
    /// Replica URL, last replicated TXID and time, lag, last error (when enabled).
    #[schema(value_type = Option<Object>)]
    pub backup: Option<serde_json::Value>,
}

/// A finished restore.
#[derive(ToSchema)]
pub struct Restored {
    pub tenant: String,
    pub restored: Report,
}

/// `POST /webhooks/stripe`.
#[derive(ToSchema)]
pub struct StripeAnswer {
    pub received: bool,
    /// True when the event id was seen before (nothing changed).
    pub duplicate: Option<bool>,
    /// What the event changed.
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<serde_json::Value>,
    pub tenant_id: Option<String>,
}

/// A tenant archive (tar + zstd), as bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Archive(#[allow(dead_code)] Vec<u8>);
