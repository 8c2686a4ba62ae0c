//! The composition root's product: every long-lived component, built once in order by `App::build`
//! and shared by the doors and the services.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::ControlPlane;
use crate::embed::EmbedService;
use crate::metering::Meter;
use crate::plans::PlanStore;
use crate::tenant::TenantRegistry;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub control: ControlPlane,
    pub registry: TenantRegistry,
    pub auth: Arc<Authenticator>,
    pub embed: EmbedService,
    pub meter: Meter,
    /// Plans, overrides, rate limiters and the clock.
    pub plans: Arc<PlanStore>,
    /// SHA-256 of the admin token; the token itself is never kept.
    pub admin_token_hash: Arc<[u8]>,
    pub metrics: PrometheusHandle,
    /// The port actually bound (differs from the config when it says 0).
    pub port: u16,
    /// Continuous backups, when `backup_url` is set.
    pub backup: Option<Arc<crate::backup::BackupService>>,
    /// Cancelled when the server begins to stop (ends long-lived streams such as MCP's).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The bounded CPU queue of search and context assembly.
    pub search_cpu: crate::cpu::CpuQueue,
    /// Background document jobs: how many run at once, and the live progress of the running ones.
    pub jobs: Arc<JobBoard>,
    /// Free space on the data dir, checked before anything adds data.
    pub disk: Arc<crate::datadir::DiskGuard>,
    /// Requests, errors and latency of the last hour, per minute (the operator console's traffic).
    pub traffic: Arc<crate::traffic::Traffic>,
    /// This node's membership of a cluster, when `cluster.node_url` is set.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Live state of background jobs (their rows in each tenant's SQLite are the record).
pub struct JobBoard {
    /// Jobs running at once, over all tenants (`docs.job_workers`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Chunks embedded so far, per running job id.
    pub progress: parking_lot::Mutex<std::collections::HashMap<String, Arc<std::sync::atomic::AtomicUsize>>>,
}

impl JobBoard {
    pub fn new(workers: usize) -> JobBoard {
        JobBoard { slots: Arc::new(tokio::sync::Semaphore::new(workers.max(1))), progress: Default::default() }
    }
}
