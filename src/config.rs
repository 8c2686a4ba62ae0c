//! Layered configuration: compiled defaults, then `config/warren.toml` (or `--config PATH`),
//! then `WARREN_*` environment variables (nested fields with `__`, e.g. `WARREN_DOCS__MAX_DOCUMENT_BYTES`).
//!
//! Every limit the server enforces is a field here with a documented default; the README's
//! configuration reference mirrors this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// The default config file, read when present and no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "config/warren.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on (`WARREN_LISTEN`).
    pub listen: SocketAddr,
    /// Data directory: `control.db` plus one directory per tenant id (`WARREN_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Admin bearer token (`WARREN_ADMIN_TOKEN`). When unset, one is generated on first start.
    pub admin_token: Option<crate::secret::Secret>,
    /// Tenants are served at `<slug>.<base_domain>` (`WARREN_BASE_DOMAIN`).
    pub base_domain: String,
    /// The URL clients reach this server at (`WARREN_PUBLIC_URL`), used in every quickstart, hint and
    /// snippet, with the API key alone naming the tenant. Default: `http://<listen address>` with the
    /// port actually bound (`127.0.0.1` when listening on all interfaces).
    pub public_url: Option<String>,
    /// A tenant's own URL, shown in quickstarts as the alternative for deployments with DNS for the
    /// subdomains, e.g. `https://{slug}.example.com` (`{slug}` is replaced).
    /// Default: `http://{slug}.<base_domain>:<port>`.
    pub public_url_template: Option<String>,
    /// Upper bound of open tenant handles (`WARREN_MAX_OPEN_TENANTS`).
    pub max_open_tenants: u64,
    /// A handle unused for this long is closed (`WARREN_TENANT_IDLE_SECS`).
    pub tenant_idle_secs: u64,
    /// Reader connections per open tenant (one writer connection besides).
    pub tenant_read_pool_size: u32,
    /// How long a request waits for a tenant handle to open before 503 `tenant_unavailable`.
    pub tenant_open_timeout_ms: u64,
    /// Writes are refused with 507 `insufficient_storage` while the data dir's file system has less
    /// free space than this, so that reads, deletes and SQLite's own journal always have room (0 = off).
    pub min_free_disk_bytes: u64,
    /// Usage counts are buffered in memory and written to control.db this often, so a `kill -9`
    /// loses at most this much metering (`WARREN_USAGE_FLUSH_INTERVAL_MS`).
    pub usage_flush_interval_ms: u64,
    /// Proxies whose `X-Tenant-Domain` / `X-Forwarded-*` headers are believed (`WARREN_TRUSTED_PROXIES`,
    /// comma-separated CIDRs or addresses).
    #[serde(deserialize_with = "de_cidrs")]
    pub trusted_proxies: Vec<IpNet>,
    /// Directory of the embedding model (`WARREN_MODEL_DIR`).
    pub model_dir: PathBuf,
    /// Replica URL for continuous Litestream-compatible backups (`WARREN_BACKUP_URL`):
    /// `s3://bucket/prefix?endpoint=http://host:port&region=us-east-1` or `file:///dir`. Unset: no backups.
    pub backup_url: Option<String>,
    /// Backup tuning (`WARREN_BACKUP__*`).
    pub backup: BackupSettings,
    /// Plans file (`WARREN_PLANS`); default `config/plans.toml`, else the compiled-in plans.
    pub plans: Option<PathBuf>,
    /// Stripe webhook endpoint secret (`WARREN_STRIPE_WEBHOOK_SECRET`); without it the webhook answers 404.
    pub stripe_webhook_secret: Option<crate::secret::Secret>,
    /// `text` or `json` (`WARREN_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Largest request body accepted on ordinary endpoints, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Largest accepted request header section, in bytes (431 above).
    pub max_header_bytes: usize,
    /// Request timeout, in seconds (503 `timeout` above).
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests to drain.
    pub shutdown_grace_secs: u64,
    /// A rotated API key stays valid this long beside its replacement.
    pub key_rotation_overlap_secs: u64,
    /// `POST /api/v1/signup` creates free-tier tenants when true.
    pub signup_enabled: bool,
    pub jwt: JwtConfig,
    pub docs: DocsConfig,
    pub embed: EmbedSettings,
    pub search: SearchSettings,
    pub billing: BillingConfig,
    pub retention: RetentionConfig,
    pub mcp: McpConfig,
    pub recs: RecsConfig,
    pub dashboard: DashboardConfig,
    pub control: ControlConfig,
    pub cluster: ClusterConfig,
}

/// This node's place in a cluster of nodes sharing a PostgreSQL control plane (`[cluster]`,
/// `WARREN_CLUSTER__*`; `WARREN_NODE_ID` and `WARREN_NODE_URL` for short).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// The URL the other nodes reach this node at (`WARREN_NODE_URL`). Set, the node registers in
    /// the control plane (which must then be PostgreSQL), heartbeats, and appears in `/admin/v1/cluster`.
    pub node_url: Option<String>,
    /// This node's name (`WARREN_NODE_ID`); default: the host and port of `node_url`.
    pub node_id: Option<String>,
    /// How often the node heartbeats and refreshes its view of the live nodes.
    pub heartbeat_ms: u64,
    /// A node whose last heartbeat is older than this is not live.
    pub node_timeout_ms: u64,
    /// A tenant's lease lasts this long unless renewed (every heartbeat): after a node dies, its
    /// tenants wait at most this long before another node takes them over.
    pub lease_ms: u64,
    /// How long a request forwarded to the tenant's owner may take before 503 `owner_unavailable`.
    pub forward_timeout_ms: u64,
    /// Tenants handed over per heartbeat to the node the rendezvous hash now prefers (after a node
    /// joins, or while this one drains); 0 keeps every tenant where it is.
    pub rebalance_per_beat: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_url: None,
            node_id: None,
            heartbeat_ms: 1000,
            node_timeout_ms: 5000,
            lease_ms: 5000,
            forward_timeout_ms: 10_000,
            rebalance_per_beat: 8,
        }
    }
}

/// Where the control plane lives (`[control]`, `WARREN_CONTROL__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlConfig {
    /// A PostgreSQL URL (`postgres://user:password@host:port/db`, also `WARREN_CONTROL_URL`) that
    /// several nodes share; unset, the control plane is the embedded `control.db` in the data dir.
    pub url: Option<crate::secret::Secret>,
    /// Connections to PostgreSQL held by this node.
    pub pool_size: usize,
    /// How long a request waits for a PostgreSQL connection (or for one to be made) before 503 `overloaded`.
    pub connect_timeout_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { url: None, pool_size: 16, connect_timeout_ms: 5000 }
    }
}

/// The tenant portal (`/dashboard`) and the operator console (`/admin`) (`[dashboard]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DashboardConfig {
    /// Seconds a one-time dashboard link stays valid.
    pub link_ttl_secs: u64,
    /// Seconds a dashboard session lasts after login.
    pub session_ttl_secs: u64,
    /// The product name in page titles and the header (white-label deployments).
    pub product_name: String,
    /// The accent colour, `#rrggbb`.
    pub accent_color: String,
    /// A PNG or SVG logo file shown in the header; none shows the product name's initial.
    pub logo_path: Option<PathBuf>,
    /// What one CPU-hour costs the operator, in US dollars (the console's estimated cost per tenant).
    pub cost_cpu_hour_usd: f64,
    /// What one GB (10⁹ bytes) of tenant storage costs per month, in US dollars.
    pub cost_storage_gb_month_usd: f64,
    /// What 1,000 object-store PUTs cost, in US dollars.
    pub cost_put_per_1000_usd: f64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            link_ttl_secs: 900,
            session_ttl_secs: 8 * 3600,
            product_name: "warren".into(),
            accent_color: "#5b5bd6".into(),
            logo_path: None,
            cost_cpu_hour_usd: 0.04,
            cost_storage_gb_month_usd: 0.10,
            cost_put_per_1000_usd: 0.005,
        }
    }
}

/// The MCP endpoint at `/mcp` (`WARREN_MCP__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct McpConfig {
    /// Open MCP sessions on this server; a new session over it is 503 `overloaded`.
    pub max_sessions: usize,
    /// Open MCP sessions per tenant.
    pub max_sessions_per_tenant: usize,
    /// A session ends this many seconds after it began, active or not (the client re-initialises).
    pub session_max_secs: u64,
    /// A session idle this long is closed.
    pub session_idle_secs: u64,
    /// Browser origins allowed besides the request's own host (e.g. `https://app.example.com`).
    pub allowed_origins: Vec<String>,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig { max_sessions: 1000, max_sessions_per_tenant: 50, session_max_secs: 8 * 3600, session_idle_secs: 600, allowed_origins: Vec::new() }
    }
}

/// Continuous backup settings. Times are in seconds unless the name says otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupSettings {
    /// Writes are shipped in batches at most this far apart (the recovery point objective).
    pub sync_interval_ms: u64,
    /// After shipping, the WAL is checkpointed (TRUNCATE) once it holds this many pages.
    pub checkpoint_pages: u64,
    /// Level 1/2/3 compaction intervals.
    pub l1_interval_secs: u64,
    pub l2_interval_secs: u64,
    pub l3_interval_secs: u64,
    /// A full snapshot (level 9) is written when the newest is older than this and the database changed.
    pub snapshot_interval_secs: u64,
    /// Snapshots older than this are deleted (the newest is always kept); with them the compacted
    /// files they cover. This is the point-in-time restore window.
    pub retention_secs: u64,
    /// Level-0 files are deleted this long after level 1 covers them (the newest is always kept).
    pub l0_retention_secs: u64,
    /// A deleted tenant's replica is deleted this long after the tenant.
    pub delete_grace_secs: u64,
    /// How often the server looks for replicas of deleted tenants that are due for deletion.
    pub delete_sweep_secs: u64,
    /// After an erasure a fresh snapshot is shipped; this long after it, every replica object older
    /// than that snapshot (which may hold the erased data) is deleted.
    pub erasure_grace_secs: u64,
    /// Databases synced at the same time.
    pub max_concurrent_syncs: usize,
    /// Maintenance passes (compaction, retention) at the same time. They run apart from syncs, so a
    /// compaction never holds a sync slot.
    pub max_concurrent_maintenance: usize,
    /// Object lists of closed databases kept in memory, so that reopening one in the same process
    /// needs no LIST request.
    pub listing_cache_entries: u64,
    /// Timeout of one object-storage request.
    pub request_timeout_secs: u64,
    /// Retry backoff after a failed sync: doubles from `retry_min_ms` up to `retry_max_ms`.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// How long closing a tenant handle waits to ship its last changes before leaving them to a later catch-up.
    pub close_timeout_secs: u64,
    /// Under `sync` durability, how long a write waits for its LTX to reach object storage before
    /// it answers 503 `not_replicated` (committed on the node, not acknowledged).
    pub sync_ack_timeout_ms: u64,
    /// Replica writes are create-only (S3 `If-None-Match: *`), so a node that lost a tenant's lease
    /// cannot replace what the new owner wrote. Turn off only for a store without conditional writes.
    pub conditional_writes: bool,
    /// S3 credentials when not in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<crate::secret::Secret>,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            sync_interval_ms: 1000,
            checkpoint_pages: 1000,
            l1_interval_secs: 30,
            l2_interval_secs: 300,
            l3_interval_secs: 3600,
            snapshot_interval_secs: 86_400,
            retention_secs: 86_400,
            l0_retention_secs: 300,
            delete_grace_secs: 7 * 86_400,
            delete_sweep_secs: 60,
            erasure_grace_secs: 86_400,
            max_concurrent_syncs: 32,
            max_concurrent_maintenance: 4,
            listing_cache_entries: 10_000,
            request_timeout_secs: 10,
            retry_min_ms: 500,
            retry_max_ms: 30_000,
            close_timeout_secs: 5,
            sync_ack_timeout_ms: 10_000,
            conditional_writes: true,
            access_key_id: None,
            secret_access_key: None,
        }
    }
}

/// Recommendations (`[recs]`, `WARREN_RECS__*`): training triggers, model size bounds and request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RecsConfig {
    /// A tenant retrains this long after its last data change (debounce), in milliseconds.
    pub debounce_ms: u64,
    /// ... but at most this long after the first change of a burst, in seconds.
    pub max_delay_secs: u64,
    /// Largest number of products with interactions trained with EASE (a dense n × n inverse: about
    /// 4·n²·4 bytes of memory at peak and (2/3)·n³ multiply-adds); above it, sparse item-kNN.
    pub ease_max_items: usize,
    /// EASE's L2 regularisation λ.
    pub ease_lambda: f32,
    /// Neighbours kept per product (the model's rows are sparse).
    pub neighbors: usize,
    /// Half-life of an interaction's weight in training, in days, from the tenant's newest interaction.
    pub half_life_days: f64,
    /// Half-life of a customer's own interactions when recommending, in steps: distinct order/event
    /// times counted back from their latest one.
    pub recency_half_life_steps: f64,
    /// Least weight of a customer's older interactions (0..1), so long-term taste still counts.
    pub recency_floor: f32,
    /// Shrinkage of item-kNN similarities.
    pub knn_shrinkage: f32,
    /// Most recent items per customer that item-kNN pairs up (bounds its cost).
    pub knn_max_history: usize,
    /// Customers in the leave-last-out evaluation run with each training (0 = no evaluation).
    pub eval_users: usize,
    /// Content neighbours precomputed per product at training (0 = none: computed per request).
    pub content_neighbors: usize,
    /// ... only for catalogs up to this many products (n² × 384 multiply-adds).
    pub content_neighbors_max_products: usize,
    /// Trainings running at once across all tenants.
    pub max_concurrent_trainings: usize,
    /// Most items in one products/customers/orders/events request.
    pub max_batch: usize,
    /// Largest body of those requests, in bytes.
    pub max_body_bytes: usize,
    /// Largest `limit` of a recommendation request.
    pub max_limit: usize,
    /// Days a WooCommerce webhook delivery id is remembered, so a redelivery changes nothing.
    pub webhook_dedup_days: u32,
    /// An order is attributed to a recommendation click (an event of type `rec_click`) by the same
    /// customer, on a product of the order, at most this many days before it.
    pub attribution_window_days: u32,
}

impl Default for RecsConfig {
    fn default() -> Self {
        RecsConfig {
            debounce_ms: 2000,
            max_delay_secs: 30,
            ease_max_items: 3000,
            ease_lambda: 200.0,
            neighbors: 100,
            half_life_days: 180.0,
            recency_half_life_steps: 3.0,
            recency_floor: 0.1,
            knn_shrinkage: 10.0,
            knn_max_history: 100,
            eval_users: 200,
            content_neighbors: 50,
            content_neighbors_max_products: 20_000,
            max_concurrent_trainings: 1,
            max_batch: 1000,
            max_body_bytes: 16 * 1024 * 1024,
            max_limit: 100,
            webhook_dedup_days: 30,
            attribution_window_days: 7,
        }
    }
}

/// Retention of the control plane's usage and audit events (`[retention]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Days kept for a tenant whose plan states no `retention_days`, for deleted tenants' events and
    /// for events of no tenant.
    pub default_days: u32,
    /// Seconds between retention sweeps.
    pub sweep_secs: u64,
    /// Rows deleted per transaction (per table), so a sweep never holds the control plane's write lock long.
    pub batch_rows: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { default_days: 365, sweep_secs: 3600, batch_rows: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BillingConfig {
    /// Rate limits, quotas and usage metering on (`WARREN_BILLING__ENFORCE`). Off only for benchmarks
    /// and private deployments: feature gates and storage limits still apply.
    pub enforce: bool,
    /// Accepted age of a Stripe-Signature timestamp, in seconds (either direction).
    pub stripe_tolerance_secs: u64,
    /// Suspend a tenant when Stripe reports `invoice.payment_failed`.
    pub suspend_on_payment_failure: bool,
    /// Seconds between sweeps that end expired trials (requests end them at once too).
    pub trial_sweep_secs: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig { enforce: true, stripe_tolerance_secs: 300, suspend_on_payment_failure: false, trial_sweep_secs: 60 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct JwtConfig {
    /// HS256 shared secret (`WARREN_JWT__HS256_SECRET`).
    pub hs256_secret: Option<crate::secret::Secret>,
    /// PEM public key file for RS256 or ES256 (`WARREN_JWT__PUBLIC_KEY_PATH`).
    pub public_key_path: Option<PathBuf>,
    /// `RS256` or `ES256`, the algorithm of `public_key_path`.
    pub public_key_algorithm: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DocsConfig {
    /// Largest single document's content, in bytes (413 above).
    pub max_document_bytes: usize,
    /// Most documents in one bulk request.
    pub max_bulk_documents: usize,
    /// Largest bulk request body, in bytes (413 above).
    pub max_bulk_bytes: usize,
    /// Timeout of a bulk request, in seconds (embedding a large batch takes a while on CPU).
    pub bulk_timeout_secs: u64,
    /// A document write or bulk upload with more chunks than this is accepted as a background job
    /// (202 and a job id) instead of being embedded within the request; 0 = never.
    pub job_threshold_chunks: usize,
    /// Jobs a tenant may have queued or running; beyond it a large write answers 503 `overloaded`.
    pub max_jobs_per_tenant: u64,
    /// Jobs running at once over all tenants (each embeds on the bulk lane).
    pub job_workers: usize,
    /// Days a finished job's status stays readable.
    pub job_retention_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EmbedSettings {
    /// Texts waiting for the embedding worker before ingest answers 503 with `Retry-After`.
    pub queue_capacity: usize,
    /// Texts per forward pass.
    pub max_batch: usize,
    /// Threads for the model (0 = physical cores).
    pub threads: usize,
    /// Arithmetic of the model's dense layers: `auto` (fp16 where the CPU has AVX512-FP16, else
    /// fp32), `fp32`, or `fp16` (falls back to fp32 with a warning on a CPU without it). fp16 is
    /// about 1.6× as fast on a batch, at a worst cosine of 0.99997 against the reference.
    pub precision: crate::embed::Precision,
    /// Texts one tenant may have queued or being embedded per lane (0 = a quarter of
    /// `queue_capacity`); beyond it that tenant's next request answers 503 `overloaded`.
    pub tenant_max_pending: usize,
    /// Nice value (0–19) of the bulk lane's thread, which embeds large documents and bulk uploads;
    /// queries run on the interactive lane at normal priority. 0 = no difference.
    pub bulk_nice: i32,
    /// Other model names `POST /embeddings` accepts for all-MiniLM-L6-v2, for clients hard-wired to
    /// one (e.g. `text-embedding-3-small`). Empty by default: an alias is the operator's choice.
    /// The env form is one comma-separated string.
    #[serde(deserialize_with = "de_list")]
    pub model_aliases: Vec<String>,
}

/// The bounded CPU queue of search and context assembly (`[search]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchSettings {
    /// Searches and assemblies computed at once (0 = one per core).
    pub cpu_workers: usize,
    /// Searches and assemblies waiting for a worker before the next one answers 503 `overloaded`.
    pub queue_capacity: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings { cpu_workers: 0, queue_capacity: 256 }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            data_dir: PathBuf::from("tenants"),
            admin_token: None,
            base_domain: "localhost".into(),
            public_url: None,
            public_url_template: None,
            max_open_tenants: 256,
            tenant_idle_secs: 600,
            tenant_read_pool_size: 2,
            tenant_open_timeout_ms: 5_000,
            usage_flush_interval_ms: 250,
            min_free_disk_bytes: 64 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            backup_url: None,
            backup: BackupSettings::default(),
            plans: None,
            stripe_webhook_secret: None,
            log_format: LogFormat::Text,
            max_body_bytes: 2 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
            key_rotation_overlap_secs: 24 * 3600,
            signup_enabled: false,
            jwt: JwtConfig::default(),
            docs: DocsConfig::default(),
            embed: EmbedSettings::default(),
            search: SearchSettings::default(),
            billing: BillingConfig::default(),
            retention: RetentionConfig::default(),
            dashboard: DashboardConfig::default(),
            control: ControlConfig::default(),
            cluster: ClusterConfig::default(),
            mcp: McpConfig::default(),
            recs: RecsConfig::default(),
        }
    }
}

impl Default for DocsConfig {
    fn default() -> Self {
        DocsConfig {
            max_document_bytes: 1024 * 1024,
            max_bulk_documents: 1000,
            max_bulk_bytes: 32 * 1024 * 1024,
            bulk_timeout_secs: 600,
            job_threshold_chunks: 256,
            max_jobs_per_tenant: 4,
            job_workers: 2,
            job_retention_days: 7,
        }
    }
}

impl EmbedSettings {
    /// The embedding service's configuration, with the model in `model_dir`.
    pub fn service_config(&self, model_dir: &std::path::Path) -> crate::embed::EmbedConfig {
        crate::embed::EmbedConfig {
            model_dir: model_dir.to_path_buf(),
            queue_capacity: self.queue_capacity,
            max_batch: self.max_batch,
            threads: self.threads,
            precision: self.precision,
            tenant_max_pending: self.tenant_max_pending,
            bulk_nice: self.bulk_nice,
        }
    }
}

impl Default for EmbedSettings {
    fn default() -> Self {
        EmbedSettings {
            queue_capacity: 4096,
            max_batch: 32,
            threads: 0,
            precision: crate::embed::Precision::Auto,
            tenant_max_pending: 0,
            bulk_nice: 10,
            model_aliases: Vec::new(),
        }
    }
}

impl Config {
    /// Loads defaults < file < env. `path` is `--config`; without it `config/warren.toml` is read if present.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) => {
                anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
                fig = fig.merge(Toml::file(p));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).exists() {
                    fig = fig.merge(Toml::file(DEFAULT_CONFIG_FILE));
                }
            }
        }
        fig = fig.merge(Env::prefixed("WARREN_").split("__"));
        // The and the README's short name for the shared control plane's URL.
        fig = fig.merge(Env::raw().only(&["WARREN_CONTROL_URL"]).map(|_| "control.url".into()));
        fig = fig.merge(Env::raw().only(&["WARREN_NODE_URL"]).map(|_| "cluster.node_url".into()));
        fig = fig.merge(Env::raw().only(&["WARREN_NODE_ID"]).map(|_| "cluster.node_id".into()));
        let cfg: Config = fig.extract().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects values the server cannot run with; called by `load` and by `App::build`.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.max_open_tenants >= 1, "max_open_tenants must be at least 1");
        anyhow::ensure!(self.tenant_read_pool_size >= 1, "tenant_read_pool_size must be at least 1");
        anyhow::ensure!(self.max_body_bytes >= 1024, "max_body_bytes must be at least 1024");
        anyhow::ensure!(self.usage_flush_interval_ms >= 10, "usage_flush_interval_ms must be at least 10");
        anyhow::ensure!(self.control.pool_size >= 1, "control.pool_size must be at least 1");
        if let Some(u) = &self.cluster.node_url {
            anyhow::ensure!(
                self.control.url.is_some(),
                "cluster.node_url (WARREN_NODE_URL) needs a shared control plane: set control.url (WARREN_CONTROL_URL)"
            );
            let parsed = url::Url::parse(u).map_err(|e| anyhow::anyhow!("cluster.node_url {u:?} is not a URL: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some(),
                "cluster.node_url must be an http(s) URL with a host"
            );
        }
        if let Some(id) = &self.cluster.node_id {
            anyhow::ensure!(
                !id.is_empty() && id.len() <= 100 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)),
                "cluster.node_id must be 1-100 letters, digits, '-', '_', '.' or ':'"
            );
        }
        anyhow::ensure!(self.cluster.heartbeat_ms >= 50, "cluster.heartbeat_ms must be at least 50");
        if self.cluster.node_url.is_some() {
            anyhow::ensure!(
                self.backup_url.is_some(),
                "a cluster node (cluster.node_url) needs backups (backup_url): tenants move between nodes through their replicas"
            );
        }
        anyhow::ensure!(
            self.cluster.lease_ms >= 3 * self.cluster.heartbeat_ms,
            "cluster.lease_ms must be at least three heartbeats (cluster.heartbeat_ms), so a live node always renews in time"
        );
        anyhow::ensure!(
            self.cluster.node_timeout_ms >= 2 * self.cluster.heartbeat_ms,
            "cluster.node_timeout_ms must be at least twice cluster.heartbeat_ms"
        );
        if let Some(url) = &self.control.url {
            let u = url.expose();
            anyhow::ensure!(
                u.starts_with("postgres://") || u.starts_with("postgresql://"),
                "control.url must be a postgres:// URL (unset for the embedded control.db)"
            );
        }
        anyhow::ensure!((1..=365).contains(&self.recs.attribution_window_days), "recs.attribution_window_days must be 1..=365");
        anyhow::ensure!(self.dashboard.link_ttl_secs >= 1, "dashboard.link_ttl_secs must be at least 1");
        anyhow::ensure!(self.dashboard.session_ttl_secs >= 60, "dashboard.session_ttl_secs must be at least 60");
        let accent = self.dashboard.accent_color.as_bytes();
        anyhow::ensure!(
            accent.len() == 7 && accent[0] == b'#' && accent[1..].iter().all(u8::is_ascii_hexdigit),
            "dashboard.accent_color must be #rrggbb"
        );
        anyhow::ensure!(
            !self.dashboard.product_name.trim().is_empty() && self.dashboard.product_name.chars().count() <= 60,
            "dashboard.product_name must be 1-60 characters"
        );
        for (name, v) in [
            ("dashboard.cost_cpu_hour_usd", self.dashboard.cost_cpu_hour_usd),
            ("dashboard.cost_storage_gb_month_usd", self.dashboard.cost_storage_gb_month_usd),
            ("dashboard.cost_put_per_1000_usd", self.dashboard.cost_put_per_1000_usd),
        ] {
            anyhow::ensure!(v.is_finite() && v >= 0.0, "{name} must be a price of 0 or more");
        }
        anyhow::ensure!(self.retention.default_days >= 1, "retention.default_days must be at least 1");
        anyhow::ensure!(self.retention.sweep_secs >= 1, "retention.sweep_secs must be at least 1");
        anyhow::ensure!(self.retention.batch_rows >= 1, "retention.batch_rows must be at least 1");
        anyhow::ensure!(!self.base_domain.is_empty(), "base_domain must not be empty");
        if let Some(s) = &self.stripe_webhook_secret {
            anyhow::ensure!(!s.expose().is_empty(), "stripe_webhook_secret must not be empty");
        }
        if let Some(t) = &self.admin_token {
            anyhow::ensure!(t.expose().len() >= 16, "admin_token must be at least 16 characters");
        }
        if self.jwt.public_key_path.is_some() {
            let alg = self.jwt.public_key_algorithm.as_deref().unwrap_or("");
            anyhow::ensure!(alg == "RS256" || alg == "ES256", "jwt.public_key_algorithm must be RS256 or ES256");
        }
        Ok(())
    }

    /// A configuration for tests: port 0 on loopback and the given data dir.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config { listen: "127.0.0.1:0".parse().expect("static"), data_dir: data_dir.to_path_buf(), ..Config::default() }
    }
}

/// Accepts a list of strings or one comma-separated string (the env form).
fn de_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(s) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Form::Many(v) => v,
    })
}

/// Accepts a list of CIDRs/addresses or one comma-separated string (the env form).
fn de_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        Many(Vec<String>),
    }
    let items = match Form::deserialize(d)? {
        Form::One(s) => s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect(),
        Form::Many(v) => v,
    };
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("invalid CIDR or address: {s:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn env_overrides_file_and_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "max_open_tenants = 7\nbase_domain = \"file.test\"\n")?;
            jail.set_env("WARREN_BASE_DOMAIN", "env.test");
            jail.set_env("WARREN_TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8,::1");
            jail.set_env("WARREN_DOCS__MAX_BULK_DOCUMENTS", "5");
            let c = Config::load(Some(Path::new("w.toml"))).expect("load");
            assert_eq!(c.max_open_tenants, 7);
            assert_eq!(c.base_domain, "env.test");
            assert_eq!(c.trusted_proxies.len(), 3);
            assert_eq!(c.docs.max_bulk_documents, 5);
            assert_eq!(c.listen.port(), 8080);
            Ok(())
        });
    }

    #[test]
    fn a_usage_flush_interval_under_10_ms_is_refused() {
        let mut cfg = Config { usage_flush_interval_ms: 0, ..Config::default() };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("usage_flush_interval_ms"), "{err}");
        cfg.usage_flush_interval_ms = 10;
        cfg.validate().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type
    fn bad_cidr_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_TRUSTED_PROXIES", "not-a-cidr");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }
}
