//! The command line. `warren serve` runs the server; the other commands work on the same data dir
//! (safe while the server runs: SQLite serialises writers, and the server drops its caches when
//! control.db changes). Commands that would race an open tenant handle (delete) refuse while a
//! server holds the data dir, naming the admin API call to use instead.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::auth::AdminProof;
use crate::config::Config;
use crate::control::{NewKey, Scope, Tier};
use crate::error::Error;
use crate::services::tenants::CreateTenant;
use crate::services::{Actor, Operator};

#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "Multi-tenant edge server: SQLite + Tantivy per tenant, local embeddings")]
pub struct Cli {
    /// Configuration file (default: config/warren.toml when present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP server.
    Serve,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// End customers of a tenant (data-protection requests).
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Usage and billing exports.
    #[command(subcommand)]
    Usage(UsageCmd),
    /// The nodes of a cluster (a PostgreSQL control plane, `control.url`).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Restore from the backups at `backup_url`: one tenant (in place, or to a file with --to), or the
    /// whole node (--all, into an empty data dir). In-place restores are refused while a server runs
    /// on the data dir: use `POST /admin/v1/tenants/{slug}/restore` then.
    Restore {
        /// The tenant to restore (omit with --all).
        slug: Option<String>,
        /// Restore the newest point at or before this TXID (16 hex digits, as Litestream prints them).
        #[arg(long, conflicts_with = "timestamp")]
        txid: Option<String>,
        /// Restore the newest point captured before this time (RFC 3339).
        #[arg(long)]
        timestamp: Option<String>,
        /// Write the restored database here instead of replacing the tenant's file.
        #[arg(long)]
        to: Option<PathBuf>,
        /// Disaster recovery: restore the control plane and every tenant into an empty data dir.
        #[arg(long, conflicts_with_all = ["slug", "to", "txid", "timestamp"])]
        all: bool,
    },
    /// Import a folder (respecting .gitignore) or a JSONL file of {path, content, title?, metadata?}
    /// lines as documents; unchanged documents are skipped by content hash, binary files reported.
    Import {
        slug: String,
        /// A folder, or a .jsonl file.
        source: PathBuf,
        /// Only files matching this glob (repeatable), e.g. '**/*.md'.
        #[arg(long = "glob")]
        globs: Vec<String>,
        /// Leave out files matching this glob (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        /// A running server, e.g. http://127.0.0.1:8080 (default: write to the data dir; the server must be stopped).
        #[arg(long)]
        server: Option<String>,
        /// The tenant's API key for --server (or WARREN_KEY).
        #[arg(long)]
        key: Option<String>,
        /// Documents per bulk request.
        #[arg(long, default_value_t = 50)]
        batch: usize,
    },
    /// Write a tenant's documents as JSONL ({path, content, title?, metadata}), ordered by path.
    Export {
        slug: String,
        /// Read through a running server instead of the data dir.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every registered node: liveness (by PostgreSQL's clock), draining, tenants held.
    List,
    /// Moves a node's tenants away gracefully: it is preferred for no tenant any more, so it ships,
    /// closes and releases its tenants (`cluster.rebalance_per_beat` per heartbeat) and their new
    /// owners restore them on their next request. The node keeps running (stop it once it holds none).
    Drain { node_id: String },
    /// Makes a drained node eligible for tenants again.
    Undrain { node_id: String },
}

#[derive(Subcommand, Debug)]
pub enum CustomerCmd {
    /// Erase one end customer: their profile, every order and event that names them (the twin of
    /// `DELETE /api/v1/customers/{id}?erase=true`; refused while a server runs on the data dir).
    /// Prints the receipt.
    Erase {
        slug: String,
        customer_id: String,
        /// Confirm the erasure.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsageCmd {
    /// Every tenant's usage for a month: `stripe` writes one Stripe meter event (JSON) per line and
    /// metric for tenants with a Stripe customer id; `csv` and `json` write the admin export.
    Export {
        /// The month, YYYY-MM (UTC).
        #[arg(long)]
        period: String,
        /// stripe, csv or json.
        #[arg(long, default_value = "stripe")]
        format: String,
    },
}

/// Meter events for Stripe's usage API, one JSON object per line: (event name, quantity) per tenant.
pub fn stripe_meter_lines(rows: &[crate::billing::UsageRow]) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    for r in rows {
        let Some(customer) = r.stripe_customer_id.as_deref() else {
            skipped.push(r.slug.clone());
            continue;
        };
        let ts = crate::clock::parse_period(&r.period).map(|(_, _, end)| end.timestamp() - 1).unwrap_or(0);
        for (metric, value) in [
            ("queries", r.queries),
            ("overage_queries", r.overage_queries),
            ("api_calls", r.api_calls),
            ("tokens_embedded", r.tokens_embedded),
            ("tokens_returned", r.tokens_returned),
        ] {
            lines.push(
                json!({
                    "event_name": format!("warren_{metric}"),
                    "identifier": format!("{}-{}-{metric}", r.tenant_id, r.period),
                    "timestamp": ts,
                    "payload": {"stripe_customer_id": customer, "value": value.to_string()},
                })
                .to_string(),
            );
        }
    }
    (lines, skipped)
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant and print its first API key (shown once).
    Create {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "free")]
        tier: String,
    },
    /// List tenants.
    List {
        /// Substring of slug, name or email.
        #[arg(long)]
        query: Option<String>,
    },
    /// Show one tenant and its keys.
    Show { slug: String },
    /// Print a one-time link into a tenant's dashboard (valid `dashboard.link_ttl_secs`, 15 min by
    /// default, and once). Safe while a server runs.
    DashboardLink { slug: String },
    /// Rebuild a tenant's search index from its SQLite file (refused while a server runs: use
    /// `POST /admin/v1/tenants/{slug}/reindex` then).
    Reindex { slug: String },
    /// Write a tenant's whole archive (tar + zstd: SQLite snapshot, JSON Lines of every table, usage,
    /// audit log, key metadata, manifest with checksums). Safe while a server runs.
    Export {
        slug: String,
        /// The archive to write (must not exist), e.g. acme.warren.tar.zst.
        #[arg(long)]
        to: PathBuf,
    },
    /// Recreate a tenant from an archive made by `tenant export` (on this or another node). Prints
    /// the tenant and a new API key (keys are never exported).
    Import {
        archive: PathBuf,
        /// Import under this slug instead of the archive's.
        #[arg(long)]
        slug: Option<String>,
    },
    /// Delete a tenant and its data (refused while a server runs on this data dir).
    Delete {
        slug: String,
        /// Confirm deletion.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Create an API key for a tenant (shown once).
    Create {
        slug: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated: read, write, admin.
        #[arg(long, default_value = "read,write")]
        scopes: String,
        /// Days until the key expires.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke an API key by its id.
    Revoke { slug: String, key_id: String },
}

async fn restore(
    config: &Config,
    slug: Option<String>,
    txid: Option<String>,
    timestamp: Option<String>,
    to: Option<PathBuf>,
    all: bool,
) -> anyhow::Result<()> {
    use crate::backup::{restore, ReplicaKey, ReplicaRoot};
    let url = config.backup_url.as_deref().ok_or_else(|| anyhow::anyhow!("no backup_url is configured (WARREN_BACKUP_URL)"))?;
    let b = &config.backup;
    let creds = crate::backup::store::S3Credentials {
        access_key_id: b.access_key_id.clone(),
        secret_access_key: b.secret_access_key.as_ref().map(|s| s.expose().to_string()),
    };
    let root = ReplicaRoot::parse(url, &creds, std::time::Duration::from_secs(b.request_timeout_secs.max(1)))?;
    let data = &config.data_dir;
    if all {
        anyhow::ensure!(!crate::datadir::server_running(data), "a warren server is running on {}; stop it first", data.display());
        anyhow::ensure!(!data.join("control.db").exists(), "{} already has a control.db: --all restores into an empty data dir", data.display());
        std::fs::create_dir_all(data)?;
        let r = restore::restore_to(&root.replica(&ReplicaKey::Control.path()), restore::Target::Latest, &data.join("control.db"))
            .await
            .map_err(|e| anyhow::anyhow!("restoring the control plane: {e:#}"))?;
        let ops = Operator::offline(config, Actor::Cli).await?;
        let list = ops.list_tenants(None, None, u32::MAX - 1).await.map_err(err)?.tenants;
        let mut restored = Vec::new();
        let mut failed = Vec::new();
        for t in &list {
            let out = crate::tenant::tenant_dir(data, &t.id).join(crate::tenant::DB_FILE);
            match restore::restore_to(&root.replica(&ReplicaKey::tenant(&t.id).path()), restore::Target::Latest, &out).await {
                Ok(rep) => restored.push(json!({"slug": t.slug, "txid": rep.txid, "pages": rep.pages})),
                Err(e) => failed.push(json!({"slug": t.slug, "error": format!("{e:#}")})),
            }
        }
        print(json!({"control": r, "tenants": restored, "failed": failed}));
        anyhow::ensure!(failed.is_empty(), "{} tenant(s) could not be restored", failed.len());
        return Ok(());
    }
    let slug = slug.ok_or_else(|| anyhow::anyhow!("name a tenant, or pass --all"))?;
    let target = restore::Target::parse(txid.as_deref(), timestamp.as_deref())?;
    let ops = Operator::offline(config, Actor::Cli).await?;
    let t = ops.tenant(&slug).await.map_err(err)?;
    let replica = root.replica(&ReplicaKey::tenant(&t.id).path());
    ops.check_restore_point(&t.id, &replica, target).await.map_err(err)?;
    if let Some(out) = to {
        anyhow::ensure!(!out.exists(), "{} exists; choose a new path", out.display());
        let rep = restore::restore_to(&replica, target, &out).await?;
        print(json!({"tenant": t.slug, "restored_to": out, "restored": rep}));
        return Ok(());
    }
    if crate::datadir::server_running(data) {
        anyhow::bail!(
            "a warren server is running on {}; restore through it so the tenant's handle closes first:\n  curl -X POST -H \"Authorization: Bearer $WARREN_ADMIN_TOKEN\" http://<server>/admin/v1/tenants/{slug}/restore -d '{{}}'\n(or pass --to PATH to restore into a separate file)",
            data.display()
        );
    }
    let dir = crate::tenant::tenant_dir(data, &t.id);
    let staged = dir.join("tenant.db.restoring");
    let rep = restore::restore_to(&replica, target, &staged).await?;
    crate::tenant::install_restored(&dir, &staged, &t.id)?;
    // The next server start ships this state as a full image at the next TXID.
    std::fs::create_dir_all(data.join(crate::backup::PENDING_DIR))?;
    std::fs::File::create(data.join(crate::backup::PENDING_DIR).join(&t.id))?;
    print(json!({"tenant": t.slug, "restored": rep}));
    Ok(())
}

fn err(e: Error) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e, e.code())
}

fn print(v: serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
}

fn run_transfer(cmd: Command, config: &Config) -> anyhow::Result<()> {
    match cmd {
        Command::Import { slug, source, globs, excludes, server, key, batch } => {
            let opts = crate::transfer::ImportOptions { slug, source, globs, excludes, server, key, batch };
            let report = crate::transfer::import(config, opts)?;
            print(serde_json::to_value(&report)?);
            if !report.failed.is_empty() {
                anyhow::bail!("{} document(s) failed", report.failed.len());
            }
        }
        Command::Export { slug, server, key } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let n = crate::transfer::export(config, &slug, server, key, &mut out)?;
            std::io::Write::flush(&mut out)?;
            eprintln!("warren: exported {n} document(s)");
        }
        _ => unreachable!("only import and export"),
    }
    Ok(())
}

/// Runs a non-serve command. Every tenant and key command goes through the same services as the
/// admin API ([`Operator`], offline: no server runs on the data dir for the commands that need that).
pub fn run_admin(cmd: Command, config: &Config) -> anyhow::Result<()> {
    let cmd = match cmd {
        // import/export open what they need themselves (possibly only a remote server).
        c @ (Command::Import { .. } | Command::Export { .. }) => return run_transfer(c, config),
        c => c,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd, config))
}

async fn run_async(cmd: Command, config: &Config) -> anyhow::Result<()> {
    if let Command::Restore { slug, txid, timestamp, to, all } = cmd {
        return restore(config, slug, txid, timestamp, to, all).await;
    }
    let ops = Operator::offline(config, Actor::Cli).await?;
    let operator = AdminProof::local_operator();
    match cmd {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Restore { .. } => unreachable!("restore is handled above"),
        Command::Import { .. } | Command::Export { .. } => unreachable!("handled by run_transfer"),
        Command::Tenant(TenantCmd::Create { slug, name, email, tier }) => {
            let tier = Tier::parse(&tier).ok_or_else(|| anyhow::anyhow!("tier must be one of {:?}", Tier::ALL))?;
            let req = CreateTenant { slug, name, email, tier, status: None, trial_days: None };
            let created = ops.create_tenant(req).await.map_err(err)?;
            print(json!({"tenant": created.tenant, "key": created.key, "api_key": created.api_key}));
        }
        Command::Tenant(TenantCmd::List { query }) => {
            let page = ops.list_tenants(query, None, 100_000).await.map_err(err)?;
            print(json!({"tenants": page.tenants}));
        }
        Command::Tenant(TenantCmd::Show { slug }) => {
            let t = ops.tenant(&slug).await.map_err(err)?;
            let ks = ops.list_keys(&slug).await.map_err(err)?;
            print(json!({"tenant": t, "keys": ks}));
        }
        Command::Tenant(TenantCmd::Export { slug, to }) => {
            anyhow::ensure!(!to.exists(), "{} exists; choose a new path", to.display());
            let export = ops.export_tenant(&operator, &slug).await.map_err(err)?;
            let manifest = export.manifest().clone();
            let partial = to.with_extension("partial");
            let bar = indicatif::ProgressBar::new(manifest.bytes());
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("exporting {slug}"));
            let (p, b) = (partial.clone(), bar.clone());
            let written = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let f = std::io::BufWriter::new(std::fs::File::create(&p)?);
                let f = export.write_to(f, &mut |n| b.set_position(n)).map_err(err)?;
                f.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?.sync_all()?;
                Ok(())
            })
            .await?;
            bar.finish_and_clear();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            std::fs::rename(&partial, &to)?;
            let size = std::fs::metadata(&to)?.len();
            print(json!({"exported": slug, "to": to, "archive_bytes": size, "manifest": manifest}));
        }
        Command::Tenant(TenantCmd::Import { archive, slug }) => {
            let imported = ops.import_tenant(&operator, &archive, slug).await.map_err(err)?;
            print(serde_json::to_value(&imported)?);
        }
        Command::Customer(CustomerCmd::Erase { slug, customer_id, yes }) => {
            anyhow::ensure!(yes, "erasing {customer_id} from {slug} cannot be undone: pass --yes to confirm");
            let receipt = ops.erase_customer_offline(&operator, &slug, customer_id).await.map_err(err)?;
            print(serde_json::to_value(&receipt)?);
        }
        Command::Tenant(TenantCmd::Delete { slug, yes }) => {
            anyhow::ensure!(yes, "deleting {slug} removes all its data: pass --yes to confirm");
            ops.delete_tenant(&slug).await.map_err(err)?;
            print(json!({"deleted": slug}));
        }
        Command::Tenant(TenantCmd::DashboardLink { slug }) => {
            let link = ops.dashboard_link(&slug).await.map_err(err)?;
            print(serde_json::to_value(&link)?);
        }
        Command::Tenant(TenantCmd::Reindex { slug }) => {
            if crate::datadir::server_running(&config.data_dir) {
                anyhow::bail!(
                    "a warren server is running on {}; reindex through it:\n  curl -X POST -H \"Authorization: Bearer $WARREN_ADMIN_TOKEN\" {}/admin/v1/tenants/{slug}/reindex",
                    config.data_dir.display(),
                    ops.public_url()
                );
            }
            let (slug, n) = ops.reindex(&operator, &slug).await.map_err(err)?;
            print(json!({"reindexed": slug, "chunks": n}));
        }
        Command::Key(KeyCmd::Create { slug, name, scopes, expires_in_days }) => {
            let scopes = scopes
                .split(',')
                .map(|s| Scope::parse(s.trim()).ok_or_else(|| anyhow::anyhow!("unknown scope {s:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let expires_at = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(d as i64));
            let issued = ops.create_key(&slug, NewKey { name, scopes, expires_at }).await.map_err(err)?;
            print(json!(issued));
        }
        Command::Key(KeyCmd::Revoke { slug, key_id }) => {
            let key = ops.revoke_key(&slug, &key_id).await.map_err(err)?;
            print(json!({"key": key}));
        }
        Command::Node(NodeCmd::List) => print(json!({"nodes": ops.nodes().await.map_err(err)?})),
        Command::Node(NodeCmd::Drain { node_id }) => print(json!({"node": node_id, "draining": ops.drain_node(&node_id, true).await.map_err(err)?})),
        Command::Node(NodeCmd::Undrain { node_id }) => {
            print(json!({"node": node_id, "draining": !ops.drain_node(&node_id, false).await.map_err(err)?}))
        }
        Command::Usage(UsageCmd::Export { period, format }) => {
            anyhow::ensure!(crate::clock::parse_period(&period).is_some(), "--period must be YYYY-MM");
            let (period, rows) = ops.usage_report(Some(period)).await.map_err(err)?;
            match format.as_str() {
                "stripe" => {
                    let (lines, skipped) = stripe_meter_lines(&rows);
                    for l in lines {
                        println!("{l}");
                    }
                    if !skipped.is_empty() {
                        eprintln!("warren: no Stripe customer id for {} tenant(s), not exported: {}", skipped.len(), skipped.join(", "));
                    }
                }
                "csv" => {
                    println!("{}", crate::billing::USAGE_CSV_HEADER);
                    for r in &rows {
                        println!("{}", r.csv_line());
                    }
                }
                "json" => print(json!({"period": period, "tenants": rows})),
                other => anyhow::bail!("--format must be stripe, csv or json, not {other:?}"),
            }
        }
    }
    Ok(())
}
