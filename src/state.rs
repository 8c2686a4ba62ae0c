//! Shared application state handed to every handler.

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
}

impl AppState {
    /// The public base URL of a tenant, for quickstarts and snippets.
    pub fn tenant_url(&self, slug: &str) -> String {
        match &self.config.public_url_template {
            Some(t) => t.replace("{slug}", slug),
            None => format!("http://{slug}.{}:{}", self.config.base_domain, self.port),
        }
    }
}
