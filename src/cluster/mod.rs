//! Membership of a cluster of warren nodes that share a PostgreSQL control plane (issue 17).
//!
//! A node named by `cluster.node_id` and reached at `cluster.node_url` registers in the `nodes`
//! table and heartbeats every `cluster.heartbeat_ms`. Liveness is decided by PostgreSQL's clock (a
//! heartbeat younger than `cluster.node_timeout_ms`), so the nodes' own clocks never have to agree.
//! A rendezvous hash over the live, non-draining nodes names each tenant's preferred node; adding a
//! node moves only the tenants it now wins, about 1/N of them.
//!
//! **Ownership.** Exactly one node serves a tenant: the holder of its lease in PostgreSQL
//! (`leases`: node, epoch, expiry by PostgreSQL's clock). The holder renews its leases every
//! heartbeat. A request reaching another node is forwarded to the holder ([`forward`]); a tenant
//! whose lease is free or expired is taken over by its preferred node, which bumps the epoch and
//! restores the tenant from its replica unless its own copy is provably current (the lease never
//! left this node since it last held it: same node, same epoch, file present).
//!
//! **Fencing.** A node believes it holds a lease only until `sent + 3/4 · lease_ms` on its own
//! monotonic clock, `sent` being when it sent the acquire or renew that PostgreSQL answered;
//! PostgreSQL expires the lease no earlier than `sent + lease_ms` on its clock, and another node
//! takes over only after that. A paused node (SIGSTOP, a stall, a partition) resumes past its
//! deadline, and then: it answers no write (the request ends in 503 `owner_changed` if the lease
//! was lost or changed epoch while it ran), it ships nothing of the tenant to the replica (the
//! backup service asks [`Cluster::holds`] before every PUT), and it opens no handle of the tenant.
//! What the argument needs: clock *rates* within 25 % of each other (not synchronised clocks), and
//! a PUT that was already on the wire when the pause began is the one write it cannot stop (see
//! docs/ARCHITECTURE.md).

pub mod forward;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::backup::{BackupService, ReplicaKey};
use crate::config::ClusterConfig;
use crate::control::pg::{Acquired, NodeRow, PgControl};
use crate::error::{Code, Error};
use crate::tenant::{tenant_dir, Block, TenantRegistry};

pub struct Cluster {
    id: String,
    url: String,
    pg: PgControl,
    cfg: ClusterConfig,
    /// Every registered node as of the last heartbeat.
    nodes: ArcSwap<Vec<NodeRow>>,
    /// The leases this node holds, and until when it may act on each (its own monotonic clock).
    held: Mutex<HashMap<String, Held>>,
    /// One takeover or hand-over at a time per tenant.
    moving: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    registry: TenantRegistry,
    backup: Arc<BackupService>,
    data_dir: PathBuf,
    client: reqwest::Client,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    deadline: Instant,
}

impl Held {
    /// A lease granted (acquired or renewed) by a statement sent at `sent`: PostgreSQL expires it no
    /// earlier than `lease` after that, so this node acts on it for 3/4 of `lease` from `sent`.
    fn granted(epoch: i64, sent: Instant, lease: Duration) -> Held {
        Held { epoch, deadline: sent + lease * 3 / 4 }
    }

    /// The epoch, if the lease may still be acted on at `now`.
    fn at(&self, now: Instant) -> Option<i64> {
        (now < self.deadline).then_some(self.epoch)
    }
}

/// Where a tenant's request is served.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Here, under this epoch.
    Local(i64),
    /// At this node URL.
    Forward(String),
}

/// The file in a tenant's directory naming the epoch under which this node last held it.
const EPOCH_FILE: &str = "lease-epoch";

/// Forwarded requests carry their hop count; a request is forwarded at most this many times.
pub const MAX_HOPS: u32 = 2;
pub const HOPS_HEADER: &str = "x-warren-hops";

/// The rendezvous score of `tenant` on `node`: the first 8 bytes of SHA-256(node, 0, tenant). The
/// node with the highest score is preferred; the order of the nodes does not matter.
fn score(node: &str, tenant: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0u8]);
    h.update(tenant.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The preferred node of `tenant` among `nodes` (highest rendezvous score; ties by name).
pub fn rendezvous<'a>(tenant: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|n| (score(n, tenant), *n))
}

/// The node id `cfg` names, or `host:port` of its URL.
pub fn node_id(cfg: &ClusterConfig) -> Option<String> {
    if let Some(id) = &cfg.node_id {
        return Some(id.clone());
    }
    let u = url::Url::parse(cfg.node_url.as_deref()?).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

impl Cluster {
    /// Joins the cluster: registers this node and reads the others. `None` when `cluster.node_url`
    /// is unset (a single node, or nodes that only share the control plane).
    pub async fn join(
        cfg: &ClusterConfig,
        control: &crate::control::ControlPlane,
        registry: &TenantRegistry,
        backup: Option<&Arc<BackupService>>,
    ) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(url) = cfg.node_url.clone() else { return Ok(None) };
        let pg = control.postgres().ok_or_else(|| anyhow::anyhow!("cluster.node_url needs a PostgreSQL control plane (control.url)"))?.clone();
        let backup = backup.cloned().ok_or_else(|| anyhow::anyhow!("cluster.node_url needs backups (backup_url)"))?;
        let id = node_id(cfg).ok_or_else(|| anyhow::anyhow!("cluster.node_url has no host"))?;
        pg.register_node(&id, &url).await.map_err(|e| anyhow::anyhow!("registering node {id}: {e}"))?;
        let client = reqwest::Client::builder().timeout(Duration::from_millis(cfg.forward_timeout_ms)).build()?;
        let cluster = Arc::new(Cluster {
            id,
            url,
            pg,
            cfg: cfg.clone(),
            nodes: ArcSwap::from_pointee(Vec::new()),
            held: Mutex::new(HashMap::new()),
            moving: Mutex::new(HashMap::new()),
            registry: registry.clone(),
            backup: backup.clone(),
            data_dir: registry.data_dir().to_path_buf(),
            client,
        });
        // Storage of a tenant is reachable only while its lease is held, and only its holder ships it.
        let c = Arc::downgrade(&cluster);
        registry.set_owner_check(Arc::new(move |t: &str| c.upgrade().is_some_and(|c| c.holds(t).is_some())));
        let c = Arc::downgrade(&cluster);
        backup.set_fence(Arc::new(move |t: &str| c.upgrade().is_some_and(|c| c.holds(t).is_some())));
        cluster.beat().await.map_err(|e| anyhow::anyhow!("first heartbeat: {e}"))?;
        tracing::info!(node = %cluster.id, url = %cluster.url, "joined the cluster");
        Ok(Some(cluster))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_ms)
    }

    /// One heartbeat: records this node as live and refreshes the view of the others.
    pub async fn beat(&self) -> Result<(), Error> {
        let nodes = self.pg.heartbeat(&self.id, self.cfg.node_timeout_ms as i64).await?;
        metrics::gauge!("warren_cluster_nodes_live").set(nodes.iter().filter(|n| n.live).count() as f64);
        self.nodes.store(Arc::new(nodes));
        Ok(())
    }

    /// The heartbeat's lease work: renews every lease held, lets go of those that could not be
    /// renewed (closing their handles), and hands tenants the rendezvous hash now gives to another
    /// node over to it (at most `rebalance_per_beat`).
    pub async fn maintain(&self) {
        let tenants: Vec<String> = self.held.lock().keys().cloned().collect();
        if !tenants.is_empty() {
            let sent = Instant::now();
            match self.pg.renew_leases(&self.id, &tenants, self.cfg.lease_ms as i64).await {
                Ok(renewed) => {
                    let renewed: HashMap<String, i64> = renewed.into_iter().collect();
                    let deadline = Held::granted(0, sent, self.lease()).deadline;
                    let mut lost = Vec::new();
                    {
                        let mut held = self.held.lock();
                        for t in &tenants {
                            match (renewed.get(t), held.get_mut(t)) {
                                (Some(&e), Some(h)) if h.epoch == e => h.deadline = deadline,
                                _ => {
                                    held.remove(t);
                                    lost.push(t.clone());
                                }
                            }
                        }
                    }
                    for t in lost {
                        tracing::warn!(tenant = %t, "lost the lease of a tenant; closing it here");
                        metrics::counter!("warren_cluster_leases_lost_total").increment(1);
                        self.registry.block_and_close(&t, Block::Restoring).await;
                        self.registry.unblock(&t);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing leases failed; they lapse at their deadlines"),
            }
        }
        self.rebalance().await;
        let held = self.held.lock().len();
        metrics::gauge!("warren_cluster_leases_held").set(held as f64);
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.cfg.lease_ms)
    }

    /// The epoch of `tenant`'s lease if this node holds it and may still act on it.
    pub fn holds(&self, tenant: &str) -> Option<i64> {
        let held = self.held.lock();
        held.get(tenant).and_then(|h| h.at(Instant::now()))
    }

    /// The tenants this node holds.
    pub fn held_count(&self) -> usize {
        self.held.lock().len()
    }

    fn mover(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.moving.lock().entry(tenant.to_string()).or_default().clone()
    }

    /// Where a request for `tenant` is served: here (taking the tenant over if its lease is free and
    /// this is its preferred node, or the request was already forwarded), or at the holder.
    pub async fn route(&self, tenant: &str, hops: u32) -> Result<Route, Error> {
        if let Some(e) = self.holds(tenant) {
            return Ok(Route::Local(e));
        }
        if let Some(l) = self.pg.lease_of(tenant).await? {
            if l.valid && l.node != self.id {
                return self.towards(&l.url, hops);
            }
        }
        if hops == 0 {
            if let Some(p) = self.preferred(tenant).filter(|p| p.id != self.id) {
                return Ok(Route::Forward(p.url));
            }
        }
        self.take(tenant, hops).await
    }

    fn towards(&self, url: &str, hops: u32) -> Result<Route, Error> {
        if url.is_empty() || hops >= MAX_HOPS {
            return Err(Error::unavailable(Code::OwnerUnavailable, "the tenant's node cannot be reached; retry shortly", 1));
        }
        Ok(Route::Forward(url.to_string()))
    }

    /// Takes the tenant's lease (if free, expired or already ours) and makes the local copy current.
    pub async fn take(&self, tenant: &str, hops: u32) -> Result<Route, Error> {
        let mover = self.mover(tenant);
        let _one = mover.lock().await;
        if let Some(e) = self.holds(tenant) {
            return Ok(Route::Local(e));
        }
        let sent = Instant::now();
        match self.pg.acquire_lease(tenant, &self.id, self.cfg.lease_ms as i64).await? {
            Acquired::HeldBy(l) => self.towards(&l.url, hops),
            Acquired::Got { epoch, previous } => {
                if let Err(e) = self.make_current(tenant, epoch, previous.as_deref()).await {
                    // Let it go at once, so another node (or the next request) can try.
                    let _ = self.pg.release_lease(tenant, &self.id, epoch).await;
                    return Err(e);
                }
                self.held.lock().insert(tenant.to_string(), Held::granted(epoch, sent, self.lease()));
                if previous.as_deref() != Some(self.id.as_str()) {
                    metrics::counter!("warren_cluster_takeovers_total").increment(1);
                    tracing::info!(tenant = %tenant, epoch, previous = ?previous, "took the tenant over");
                    // Replication resumes from the restored state (a full image first).
                    self.backup.catch_up_tenant(tenant);
                }
                Ok(Route::Local(epoch))
            }
        }
    }

    /// A tenant created here: its lease, epoch 1, before its row exists anywhere.
    pub async fn adopt_new(&self, tenant: &str) -> Result<(), Error> {
        let sent = Instant::now();
        match self.pg.acquire_lease(tenant, &self.id, self.cfg.lease_ms as i64).await? {
            Acquired::Got { epoch, .. } => {
                self.held.lock().insert(tenant.to_string(), Held::granted(epoch, sent, self.lease()));
                Ok(())
            }
            Acquired::HeldBy(_) => Err(Error::internal(anyhow::anyhow!("a new tenant id already has a lease"))),
        }
    }

    /// Records the epoch in the new tenant's directory (after its storage exists).
    pub fn record_epoch(&self, tenant: &str) {
        if let Some(e) = self.holds(tenant) {
            let _ = std::fs::write(tenant_dir(&self.data_dir, tenant).join(EPOCH_FILE), e.to_string());
        }
    }

    /// Makes the local copy of `tenant` current for `epoch`: kept when this node held it last under
    /// the same epoch (nobody else can have written since), otherwise restored from the replica.
    async fn make_current(&self, tenant: &str, epoch: i64, previous: Option<&str>) -> Result<(), Error> {
        let dir = tenant_dir(&self.data_dir, tenant);
        let db = dir.join(crate::tenant::DB_FILE);
        let recorded = std::fs::read_to_string(dir.join(EPOCH_FILE)).ok().and_then(|s| s.trim().parse::<i64>().ok());
        if previous == Some(self.id.as_str()) && recorded == Some(epoch) && db.exists() {
            return Ok(());
        }
        let started = Instant::now();
        let replica = self.backup.root().replica(&ReplicaKey::tenant(tenant).path());
        let unavailable = |e: anyhow::Error| {
            tracing::warn!(tenant = %tenant, error = %format!("{e:#}"), "restoring a tenant taken over failed");
            Error::unavailable(Code::OwnerUnavailable, "the tenant is moving between nodes and could not be restored yet; retry shortly", 2)
        };
        let files = replica.list().await.map_err(unavailable)?;
        if files.is_empty() {
            return Err(unavailable(anyhow::anyhow!("its replica is empty")));
        }
        if !self.registry.try_block(tenant, Block::Restoring) {
            return Err(Error::unavailable(Code::OwnerUnavailable, "the tenant is being restored or deleted here; retry shortly", 2));
        }
        let (registry, id) = (self.registry.clone(), tenant.to_string());
        // In a task of its own, as the admin restore: a request that goes away (a disconnect, the
        // request timeout) leaves neither a half-done restore nor a blocked tenant.
        let restored = tokio::spawn(async move {
            let _unblock = crate::tenant::Unblock(registry.clone(), id.clone());
            crate::tenant::restore_blocked(&registry, &id, &replica, crate::backup::restore::Target::Latest).await
        })
        .await??;
        restored.map_err(unavailable)?;
        std::fs::write(dir.join(EPOCH_FILE), epoch.to_string()).map_err(|e| Error::internal(anyhow::anyhow!("recording the lease epoch: {e}")))?;
        metrics::histogram!("warren_cluster_restore_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Hands tenants whose preferred node is another over to it: ships and closes the tenant here
    /// while still holding its lease, then releases the lease; the other node restores it on its
    /// next request.
    async fn rebalance(&self) {
        if self.cfg.rebalance_per_beat == 0 {
            return;
        }
        let candidates: Vec<(String, i64)> = {
            let held = self.held.lock();
            held.iter()
                .filter(|(t, _)| self.preferred(t).is_some_and(|p| p.id != self.id))
                .take(self.cfg.rebalance_per_beat)
                .map(|(t, h)| (t.clone(), h.epoch))
                .collect()
        };
        for (t, epoch) in candidates {
            self.hand_over(&t, epoch).await;
        }
    }

    async fn hand_over(&self, tenant: &str, epoch: i64) {
        let mover = self.mover(tenant);
        let _one = mover.lock().await;
        if self.holds(tenant) != Some(epoch) {
            return;
        }
        // Closing ships the last changes (the lease is still held, so the fence lets them through).
        self.registry.block_and_close(tenant, Block::Restoring).await;
        let shipped = !crate::backup::needs_sync(&tenant_dir(&self.data_dir, tenant).join(crate::tenant::DB_FILE));
        if shipped {
            self.held.lock().remove(tenant);
            if let Err(e) = self.pg.release_lease(tenant, &self.id, epoch).await {
                tracing::warn!(tenant = %tenant, error = %e, "releasing a lease failed; it lapses instead");
            }
            metrics::counter!("warren_cluster_handovers_total").increment(1);
        }
        self.registry.unblock(tenant);
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Every registered node as of the last heartbeat.
    pub fn nodes(&self) -> Arc<Vec<NodeRow>> {
        self.nodes.load_full()
    }

    /// The preferred node of `tenant_id`: rendezvous over the live nodes that are not draining.
    pub fn preferred(&self, tenant_id: &str) -> Option<NodeRow> {
        let nodes = self.nodes.load();
        let id = rendezvous(tenant_id, nodes.iter().filter(|n| n.live && !n.draining).map(|n| n.id.as_str()))?;
        nodes.iter().find(|n| n.id == id).cloned()
    }

    /// Marks a node as draining (this one when `id` is `None`).
    pub async fn set_draining(&self, id: Option<&str>, draining: bool) -> Result<bool, Error> {
        let changed = self.pg.set_draining(id.unwrap_or(&self.id), draining).await?;
        self.beat().await?;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adding a fourth node moves about a quarter of the tenants, all of them to the new node, and
    /// the choice does not depend on the order the nodes are listed in.
    #[test]
    fn adding_a_node_moves_about_one_in_n_tenants_and_only_to_it() {
        let three = ["node-a", "node-b", "node-c"];
        let four = ["node-d", "node-c", "node-b", "node-a"];
        let tenants: Vec<String> = (0..10_000).map(|i| format!("tenant{i:05}")).collect();
        let mut moved = 0;
        let mut per_node = std::collections::HashMap::new();
        for t in &tenants {
            let before = rendezvous(t, three).unwrap();
            let after = rendezvous(t, four).unwrap();
            assert_eq!(rendezvous(t, three.iter().rev().copied()), Some(before), "order matters for {t}");
            *per_node.entry(after).or_insert(0) += 1;
            if before != after {
                assert_eq!(after, "node-d", "{t} moved between old nodes");
                moved += 1;
            }
        }
        let share = moved as f64 / tenants.len() as f64;
        assert!((share - 0.25).abs() < 0.02, "moved share {share}");
        for (n, c) in per_node {
            assert!((2_200..=2_800).contains(&c), "{n} has {c} of 10,000 tenants");
        }
    }

    /// The fencing rule: a node acts on a lease for 3/4 of its length after it sent the statement
    /// that granted it, by its own monotonic clock, and never after (a node resumed from a pause).
    #[test]
    fn a_lease_is_acted_on_for_three_quarters_of_it_after_the_grant_was_sent() {
        let sent = Instant::now();
        let h = Held::granted(7, sent, Duration::from_millis(1000));
        assert_eq!(h.at(sent), Some(7));
        assert_eq!(h.at(sent + Duration::from_millis(749)), Some(7));
        assert_eq!(h.at(sent + Duration::from_millis(750)), None);
        assert_eq!(h.at(sent + Duration::from_secs(3600)), None, "a node resumed after a long pause acts on nothing");
    }

    #[test]
    fn node_ids_default_to_the_host_and_port_of_the_url() {
        let cfg = ClusterConfig { node_url: Some("http://10.0.0.7:8080".into()), ..Default::default() };
        assert_eq!(node_id(&cfg).as_deref(), Some("10.0.0.7:8080"));
        let cfg = ClusterConfig { node_url: Some("https://n1.internal".into()), node_id: Some("n1".into()), ..Default::default() };
        assert_eq!(node_id(&cfg).as_deref(), Some("n1"));
    }
}
