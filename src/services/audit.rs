//! The one way a service changes the control plane: [`Operator::audited`] runs the change and its
//! audit event in one IMMEDIATE transaction, so a change is never committed without its record.

use std::sync::Arc;

use serde_json::Value;

use crate::clock::Clock;
use crate::config::Config;
use crate::control::{AuditRecord, Change, ControlPlane, Outcome};
use crate::error::Error;
use crate::state::AppState;

/// Who caused a change, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The admin API (admin token).
    Admin,
    /// The command line on the server's data dir.
    Cli,
    /// Open signup.
    Signup,
    /// The server itself (trial sweeps, replica deletions).
    System,
    /// A verified Stripe webhook.
    Stripe,
    /// A tenant acting on itself with an admin-scoped key.
    Tenant(String),
}

impl Actor {
    pub fn as_string(&self) -> String {
        match self {
            Actor::Admin => "admin".into(),
            Actor::Cli => "cli".into(),
            Actor::Signup => "signup".into(),
            Actor::System => "system".into(),
            Actor::Stripe => "stripe".into(),
            Actor::Tenant(id) => format!("tenant:{id}"),
        }
    }
}

/// The control-plane services' handle: the control plane, settings and clock, and — when the call
/// comes through a running server — that server's state, whose caches and handles a change must
/// reach. The CLI makes one with [`Operator::offline`], the server with [`Operator::live`].
#[derive(Clone)]
pub struct Operator {
    pub(crate) control: ControlPlane,
    pub(crate) config: Arc<Config>,
    pub(crate) clock: Clock,
    pub(crate) live: Option<AppState>,
    pub(crate) actor: Actor,
}

impl Operator {
    pub fn live(state: &AppState, actor: Actor) -> Operator {
        Operator { control: state.control.clone(), config: state.config.clone(), clock: state.plans.clock.clone(), live: Some(state.clone()), actor }
    }

    /// For the CLI: the control plane of `config.data_dir`, no server.
    pub async fn offline(config: &Config, actor: Actor) -> anyhow::Result<Operator> {
        crate::datadir::restrict_umask();
        let clock = Clock::default();
        let control = ControlPlane::from_config(config, None).await?;
        Ok(Operator { control, config: Arc::new(config.clone()), clock, live: None, actor })
    }

    /// 409 `server_running` when a server holds the data dir, for the CLI's offline changes;
    /// `message(data dir, server URL)` names the call to make through the server instead.
    pub(crate) fn refuse_while_server_runs(&self, message: impl FnOnce(String, String) -> String) -> Result<(), Error> {
        if crate::datadir::server_running(&self.config.data_dir) {
            return Err(Error::conflict(crate::error::Code::ServerRunning, message(self.config.data_dir.display().to_string(), self.public_url())));
        }
        Ok(())
    }

    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies one change and its audit event `action` (with `detail`) in one transaction through
    /// the control-plane interface, then drops the server's credential caches if a server is attached.
    pub async fn apply(&self, tenant_id: Option<&str>, action: &'static str, detail: Value, change: Change) -> Result<Outcome, Error> {
        let audit = AuditRecord { at: self.clock.now(), actor: self.actor.as_string(), tenant_id: tenant_id.map(str::to_string), action, detail };
        let out = self.control.apply(change, audit).await?;
        if let Some(s) = &self.live {
            s.auth.invalidate();
        }
        Ok(out)
    }
}
