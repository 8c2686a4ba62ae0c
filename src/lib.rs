//! warren: a single-binary, multi-tenant edge server.
//!
//! [`App::build`] binds the listener (port 0 works, as the tests use) and wires the state;
//! [`App::run_until_stopped`] serves until SIGTERM/SIGINT or [`App::shutdown_token`] fires, then drains
//! requests in flight and closes every tenant handle. `main.rs` only parses the command line.

#[cfg(test)]
mod architecture_tests;

pub mod api;
pub mod archive;
pub mod auth;
pub mod backup;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod cpu;
pub mod dashboard;
pub mod datadir;
pub mod docs;
pub mod embed;
pub mod error;
pub mod faults;
pub mod metering;
pub mod plans;
pub mod recs;
pub mod search;
pub mod secret;
pub mod services;
pub mod sqlite;
pub mod state;
pub mod telemetry;
pub mod tenant;
pub mod traffic;
pub mod transfer;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::control::ControlPlane;
use crate::state::AppState;
use crate::tenant::{RegistryConfig, TenantRegistry};

pub use datadir::ADMIN_TOKEN_FILE;

pub struct App {
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    _lock: std::fs::File,
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        config.validate()?;
        sqlite::init();
        // Built once, in order, each with its dependencies passed in: the lock, the backup service,
        // the control plane (with its replica), the registry (with the backup service).
        datadir::restrict_umask();
        datadir::ensure_private_dir(&config.data_dir)?;
        let lock = datadir::take_server_lock(&config.data_dir)?;
        let backup = match &config.backup_url {
            Some(url) => Some(backup::BackupService::new(url, config.backup.clone(), &config.data_dir)?),
            None => None,
        };
        let control = ControlPlane::from_config(&config, backup.as_ref()).await?;
        if let Some(s) = control.sqlite() {
            if let Some(r) = s.replica() {
                if backup::needs_sync(s.path()) {
                    r.mark_dirty();
                }
            }
        }
        let admin_token_hash = admin_token_hash(&control, &config).await?;
        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
        let bound = listener.local_addr()?;
        let port = bound.port();
        // Whoever started the server with port 0 (tests, supervisors) reads the bound address here.
        datadir::write_private(&config.data_dir.join(datadir::ADDR_FILE), format!("{bound}\n").as_bytes())?;
        let registry = TenantRegistry::with_backup(
            RegistryConfig {
                data_dir: config.data_dir.clone(),
                max_open: config.max_open_tenants,
                idle: Duration::from_secs(config.tenant_idle_secs.max(1)),
                read_pool_size: config.tenant_read_pool_size,
                open_timeout: Duration::from_millis(config.tenant_open_timeout_ms),
            },
            backup.clone(),
        );
        let cluster = cluster::Cluster::join(&config.cluster, &control, &registry, backup.as_ref()).await?;
        let embed = crate::embed::EmbedService::start(&config.embed.service_config(&config.model_dir));
        let clock = clock::Clock::default();
        let auth = Arc::new(auth::Authenticator::new(control.clone(), &config, clock.clone())?);
        let loaded = plans::Plans::load(config.plans.as_deref())?;
        let plan_store = Arc::new(plans::PlanStore::new(loaded, config.plans.clone(), config.billing.enforce, clock.clone()));
        plan_store.refresh_overrides(&control).await.map_err(|e| anyhow::anyhow!("loading plan overrides: {e}"))?;
        let shutdown = CancellationToken::new();
        let search_cpu = cpu::CpuQueue::new("search", config.search.cpu_workers, config.search.queue_capacity);
        let jobs = Arc::new(state::JobBoard::new(config.docs.job_workers));
        let disk = Arc::new(datadir::DiskGuard::new(&config.data_dir, config.min_free_disk_bytes));
        let traffic = Arc::new(traffic::Traffic::new(clock.clone()));
        let meter = metering::Meter::with(control.clone(), clock, config.billing.enforce).await;
        // What each tenant costs this node: embedding CPU and object-store PUTs are measured where
        // they happen and recorded with the tenant's usage (search and training CPU by the services).
        let m = meter.clone();
        embed.set_cost_sink(Arc::new(move |tenant: &str, cpu_us: u64| m.record_n(tenant, metering::Kind::CpuEmbed, cpu_us, 0)));
        if let Some(b) = &backup {
            let m = meter.clone();
            b.set_cost_sink(Arc::new(move |tenant: &str, bytes: u64| m.record_n(tenant, metering::Kind::StorePut, 1, bytes)));
        }
        let state = AppState {
            traffic,
            disk,
            jobs,
            shutdown: shutdown.clone(),
            meter,
            plans: plan_store,
            config: Arc::new(config),
            control,
            registry,
            auth,
            embed,
            admin_token_hash: admin_token_hash.into(),
            metrics: prometheus(),
            search_cpu,
            port,
            backup,
            cluster,
        };
        Ok(App { listener, state, shutdown, _lock: lock })
    }

    pub fn port(&self) -> u16 {
        self.state.port
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancelling this token stops the server gracefully, like SIGTERM.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App { listener, state, shutdown, _lock } = self;
        let background = spawn_background(&state, shutdown.clone());
        let backup_loop = state.backup.clone().map(|b| {
            let stop = background.clone();
            let reopen: Arc<dyn backup::Reopen> = Arc::new(state.registry.clone());
            tokio::spawn(b.run(stop, reopen))
        });
        services::tenants::sweep_deleted_storage(&state.control, &state.config.data_dir).await;
        let resuming = state.clone();
        tokio::spawn(async move {
            if let Err(e) = services::jobs::resume_pending(&resuming).await {
                tracing::warn!(error = %e, "cannot list pending document jobs; they resume on the next start");
            }
        });
        let router = api::router(state.clone());
        tracing::info!(addr = %listener.local_addr()?, "warren listening");
        let hup = spawn_reload_on_sighup(&state);
        let stop = shutdown.clone();
        let signals = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown_signal() => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
        let serve = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        let served = async {
            serve.await?;
            anyhow::Ok(())
        };
        tokio::pin!(served);
        tokio::select! {
            r = &mut served => r?,
            _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("requests still in flight after the grace period; closing anyway");
            }
        }
        signals.abort();
        hup.abort();
        background.cancel();
        tracing::info!("draining: closing tenant handles");
        state.auth.flush_key_usage().await;
        state.meter.flush().await;
        state.registry.close_all().await;
        if let Some(b) = &state.backup {
            if let Some(l) = backup_loop {
                let _ = l.await;
            }
            if let Some(r) = state.control.replica() {
                r.mark_dirty();
            }
            b.flush_all().await;
        }
        state.embed.shutdown();
        let _ = std::fs::remove_file(state.config.data_dir.join(datadir::ADDR_FILE));
        tracing::info!("stopped");
        Ok(())
    }
}

/// Periodic process-wide tasks: handle housekeeping, auth-cache invalidation on control.db changes,
/// key last-used flushes, usage flushes, retention sweeps. One timer each for the whole process; none per tenant.
fn spawn_background(state: &AppState, shutdown: CancellationToken) -> CancellationToken {
    let stop = shutdown.child_token();
    let s = state.clone();
    tokio::spawn(async move {
        // The month's totals of every tenant, read once now rather than on the first console view
        // (a shared control plane is summed on every view instead).
        if s.meter.enabled() && !s.control.shared() {
            if let Err(e) = s.meter.month_all().await {
                tracing::warn!(error = %e, "reading this month's usage totals");
            }
        }
    });
    let (s, st) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        // Usage counts on their own timer: `usage_flush_interval_ms` bounds what a `kill -9` loses.
        let mut tick = tokio::time::interval(Duration::from_millis(s.config.usage_flush_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = st.cancelled() => break,
                _ = tick.tick() => s.meter.flush().await,
            }
        }
    });
    let (s, st) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        // Retention of usage and audit events, on its own timer (a sweep may take a while).
        let mut tick = tokio::time::interval(Duration::from_secs(s.config.retention.sweep_secs.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = st.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = services::Operator::live(&s, services::Actor::System).prune_retention().await {
                        tracing::warn!(error = %e, "retention sweep failed; retried at the next one");
                    }
                }
            }
        }
    });
    if let Some(c) = state.cluster.clone() {
        let st = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(c.heartbeat_interval());
            loop {
                tokio::select! {
                    _ = st.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = c.beat().await {
                            tracing::warn!(error = %e, "cluster heartbeat failed");
                        }
                        c.maintain().await;
                    }
                }
            }
        });
    }
    let (s, st) = (state.clone(), stop.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut watcher = control::Watcher::default();
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = st.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            s.registry.maintain().await;
            s.plans.prune();
            {
                if watcher.changed(&s.control).await {
                    if let Some(r) = s.control.replica().cloned() {
                        // Writes by other processes (the CLI) reach the replica too.
                        let _ = tokio::task::spawn_blocking(move || r.mark_dirty()).await;
                    }
                    s.auth.invalidate();
                    if let Err(e) = s.plans.refresh_overrides(&s.control).await {
                        tracing::warn!(error = %e, "reloading plan overrides failed");
                    }
                }
            }
            if n.is_multiple_of(s.config.billing.trial_sweep_secs.max(1)) {
                services::billing::sweep_trials(&s).await;
            }
            if n.is_multiple_of(10) {
                s.auth.flush_key_usage().await;
            }
            if s.backup.is_some() && n.is_multiple_of(s.config.backup.delete_sweep_secs.max(1)) {
                services::Operator::live(&s, services::Actor::System).delete_due_replicas().await;
            }
        }
    });
    stop
}

/// SIGHUP reloads the plans file and the tenant overrides without a restart.
fn spawn_reload_on_sighup(state: &AppState) -> tokio::task::JoinHandle<()> {
    let s = state.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match s.plans.reload() {
                    Ok(()) => tracing::info!("SIGHUP: plans reloaded"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: plans not reloaded; the previous plans stay"),
                }
                if let Err(e) = s.plans.refresh_overrides(&s.control).await {
                    tracing::warn!(error = %e, "SIGHUP: overrides not reloaded");
                }
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The process-wide Prometheus recorder (installed once; several apps in one test process share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("static buckets")
                .set_buckets_for_metric(
                    Matcher::Prefix("warren_backup_".into()),
                    &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0],
                )
                .expect("static buckets");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// The SHA-256 of the admin token: from the config, or stored, or generated on first start.
async fn admin_token_hash(control: &ControlPlane, config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(t) = &config.admin_token {
        return Ok(Sha256::digest(t.expose().as_bytes()).to_vec());
    }
    let stored = control.setting("admin_token_sha256").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(h) = stored {
        return Ok(hex::decode(h)?);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("wat_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
    let hash = Sha256::digest(token.as_bytes()).to_vec();
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    datadir::write_private(&path, format!("{token}\n").as_bytes())?;
    control.set_setting("admin_token_sha256", hex::encode(&hash)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("warren: generated an admin token (shown once; also saved with mode 0600 in {}):\n\n    {token}\n", path.display());
    Ok(hash)
}
