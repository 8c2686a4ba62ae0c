//! The cluster as the operator sees it: the nodes, their liveness, and the tenants each is preferred
//! for (`GET /admin/v1/cluster`).

use serde::Serialize;

use super::Operator;
use crate::control::pg::NodeRow;
use crate::error::Error;

/// One node and the tenants the rendezvous hash gives it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeRow,
    /// Tenants whose preferred node this is (live, non-draining nodes only).
    pub preferred_tenants: u64,
    /// Tenants whose valid lease this node holds: those it serves.
    pub owned_tenants: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// `sqlite` (one node) or `postgres` (shared).
    pub control_plane: &'static str,
    /// This node's id; `null` when it is not part of a cluster.
    pub node: Option<String>,
    pub nodes: Vec<NodeView>,
    pub tenants: u64,
}

/// A tenant's lease, for the operator.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LeaseView {
    /// The node holding (or that last held) the lease.
    pub owner: String,
    /// The fencing token: it goes up whenever the tenant changes nodes.
    pub epoch: i64,
    /// Not expired by PostgreSQL's clock.
    pub valid: bool,
    /// Milliseconds until it expires unless renewed (negative: expired; absent: released).
    pub expires_in_ms: Option<i64>,
    /// Whether the node answering holds it and may act on it.
    pub held_here: bool,
}

impl Operator {
    /// The lease of a tenant, in a cluster (`None` on a single node or before any node took it).
    pub async fn tenant_lease(&self, tenant_id: &str) -> Result<Option<LeaseView>, Error> {
        let Some(cluster) = self.live.as_ref().and_then(|s| s.cluster.clone()) else { return Ok(None) };
        let Some(l) = self.cluster_store()?.lease_of(tenant_id).await? else { return Ok(None) };
        Ok(Some(LeaseView {
            held_here: cluster.holds(tenant_id) == Some(l.epoch),
            owner: l.node,
            epoch: l.epoch,
            valid: l.valid,
            expires_in_ms: l.expires_in_ms,
        }))
    }

    fn cluster_store(&self) -> Result<&crate::control::pg::PgControl, Error> {
        self.control.postgres().ok_or_else(|| {
            Error::conflict(crate::error::Code::NotClustered, "this control plane is not shared: set control.url to a PostgreSQL database")
        })
    }

    /// Every registered node, with the tenants each holds.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Error> {
        let pg = self.cluster_store()?;
        let nodes = pg.nodes(self.config.cluster.node_timeout_ms as i64).await?;
        self.with_leases(nodes).await
    }

    /// `nodes` with the tenants each holds (preferred counts left at 0).
    async fn with_leases(&self, nodes: Vec<NodeRow>) -> Result<Vec<NodeView>, Error> {
        let owned = self.cluster_store()?.lease_counts().await?;
        Ok(nodes.into_iter().map(|n| NodeView { owned_tenants: owned.get(&n.id).copied().unwrap_or(0), preferred_tenants: 0, node: n }).collect())
    }

    /// Marks a node as draining (it is then preferred for no tenant, so its tenants move away) or
    /// not. 404 `node_not_found` for an unknown node. Audited.
    pub async fn drain_node(&self, node_id: &str, draining: bool) -> Result<bool, Error> {
        if !self.cluster_store()?.set_draining(node_id, draining).await? {
            return Err(Error::not_found(crate::error::Code::NodeNotFound, format!("no node {node_id:?} is registered")));
        }
        let action = if draining { "node.drained" } else { "node.undrained" };
        let record = crate::control::AuditRecord {
            at: self.clock.now(),
            actor: self.actor.as_string(),
            tenant_id: None,
            action,
            detail: serde_json::json!({"node": node_id}),
        };
        self.control.audit(record).await?;
        Ok(draining)
    }

    /// The nodes of the cluster and their tenant counts.
    pub async fn cluster(&self) -> Result<ClusterView, Error> {
        let cluster = self.live.as_ref().and_then(|s| s.cluster.clone());
        // Every tenant is read only to count the ones each node is preferred for.
        let (tenants, total) = self.control.list_tenants(None, None, if cluster.is_some() { u32::MAX } else { 0 }).await?;
        let mut nodes = match &cluster {
            Some(c) => self.with_leases(c.nodes().to_vec()).await?,
            None => Vec::new(),
        };
        if let Some(c) = &cluster {
            for t in &tenants {
                if let Some(p) = c.preferred(&t.id) {
                    if let Some(v) = nodes.iter_mut().find(|v| v.node.id == p.id) {
                        v.preferred_tenants += 1;
                    }
                }
            }
        }
        Ok(ClusterView { control_plane: self.control.kind(), node: cluster.map(|c| c.id().to_string()), nodes, tenants: total.max(0) as u64 })
    }
}
