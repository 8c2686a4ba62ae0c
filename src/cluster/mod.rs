//! Membership of a cluster of warren nodes that share a PostgreSQL control plane (issue 17).
//!
//! A node named by `cluster.node_id` and reached at `cluster.node_url` registers in the `nodes`
//! table and heartbeats every `cluster.heartbeat_ms`. Liveness is decided by PostgreSQL's clock (a
//! heartbeat younger than `cluster.node_timeout_ms`), so the nodes' own clocks never have to agree.
//! A rendezvous hash over the live, non-draining nodes names each tenant's preferred node; adding a
//! node moves only the tenants it now wins, about 1/N of them.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::config::ClusterConfig;
use crate::control::pg::{NodeRow, PgControl};
use crate::error::Error;

pub struct Cluster {
    id: String,
    url: String,
    pg: PgControl,
    cfg: ClusterConfig,
    /// Every registered node as of the last heartbeat.
    nodes: ArcSwap<Vec<NodeRow>>,
}

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
    pub async fn join(cfg: &ClusterConfig, control: &crate::control::ControlPlane) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(url) = cfg.node_url.clone() else { return Ok(None) };
        let pg = control.postgres().ok_or_else(|| anyhow::anyhow!("cluster.node_url needs a PostgreSQL control plane (control.url)"))?.clone();
        let id = node_id(cfg).ok_or_else(|| anyhow::anyhow!("cluster.node_url has no host"))?;
        pg.register_node(&id, &url).await.map_err(|e| anyhow::anyhow!("registering node {id}: {e}"))?;
        let cluster = Arc::new(Cluster { id, url, pg, cfg: cfg.clone(), nodes: ArcSwap::from_pointee(Vec::new()) });
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

    #[test]
    fn node_ids_default_to_the_host_and_port_of_the_url() {
        let cfg = ClusterConfig { node_url: Some("http://10.0.0.7:8080".into()), ..Default::default() };
        assert_eq!(node_id(&cfg).as_deref(), Some("10.0.0.7:8080"));
        let cfg = ClusterConfig { node_url: Some("https://n1.internal".into()), node_id: Some("n1".into()), ..Default::default() };
        assert_eq!(node_id(&cfg).as_deref(), Some("n1"));
    }
}
