//! The tenant capability: the only way from outside this module to a tenant's storage.
//!
//! A [`TenantCap`] names one tenant and leases its handle. It can only be made from a proof that the
//! tenant was established: a [`RequestProof`] (the request extractor checked host and credentials), an
//! [`AdminProof`] (the admin token, or the local operator's CLI), a [`WebhookProof`] (a delivery signed
//! with the tenant's webhook secret), or a [`WorkerProof`] (a background
//! worker acting for a tenant it was handed by one of the first two). Those proofs have private
//! constructors in `crate::auth` and here, so "proof of tenant" is a type, not a convention.

use std::sync::Arc;

use super::{Lease, TenantRegistry};
use crate::auth::{AdminProof, RequestProof, WebhookProof};
use crate::error::Error;

/// What a background worker shows: which worker it is, for logs.
#[derive(Debug, Clone, Copy)]
pub struct WorkerProof {
    pub worker: &'static str,
}

impl WorkerProof {
    /// A worker that derives its tenants from a capability it already holds or from the registry's
    /// own bookkeeping (backup catch-up, trainers, benchmarks).
    pub(crate) const fn new(worker: &'static str) -> WorkerProof {
        WorkerProof { worker }
    }
}

/// How a capability was earned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Request,
    Admin,
    Webhook,
    Worker(&'static str),
}

/// Proof that the holder may reach one tenant's storage.
#[derive(Clone)]
pub struct TenantCap {
    id: Arc<str>,
    origin: Origin,
    registry: TenantRegistry,
}

impl std::fmt::Debug for TenantCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCap").field("id", &self.id).field("origin", &self.origin).finish()
    }
}

impl TenantCap {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Leases this tenant's handle, opening it if needed (bounded by the registry's cap).
    pub async fn lease(&self) -> Result<Lease, Error> {
        self.registry.acquire(&self.id).await
    }

    /// The same tenant, for a background worker spawned on its behalf.
    pub fn for_worker(&self, worker: &'static str) -> TenantCap {
        TenantCap { id: self.id.clone(), origin: Origin::Worker(worker), registry: self.registry.clone() }
    }
}

impl TenantRegistry {
    /// A capability for a tenant the request extractor proved.
    pub fn cap_for_request(&self, _proof: &RequestProof, tenant_id: &str) -> TenantCap {
        self.cap(tenant_id, Origin::Request)
    }

    /// A capability for a tenant the admin door named.
    pub fn cap_for_admin(&self, _proof: &AdminProof, tenant_id: &str) -> TenantCap {
        self.cap(tenant_id, Origin::Admin)
    }

    /// A capability for a tenant whose webhook secret signed a delivery.
    pub fn cap_for_webhook(&self, _proof: &WebhookProof, tenant_id: &str) -> TenantCap {
        self.cap(tenant_id, Origin::Webhook)
    }

    /// A capability for a background worker.
    pub fn cap_for_worker(&self, proof: WorkerProof, tenant_id: &str) -> TenantCap {
        self.cap(tenant_id, Origin::Worker(proof.worker))
    }

    fn cap(&self, tenant_id: &str, origin: Origin) -> TenantCap {
        TenantCap { id: tenant_id.into(), origin, registry: self.clone() }
    }
}
