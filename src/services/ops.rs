//! The operation table: every tenant operation declares, once, the scope it needs and the
//! rate-limit cost it takes at the door. REST extractors (`api::extract::Authorized<op::X>`) and the
//! MCP tools both read it, so the two doors cannot drift apart.

use crate::control::Scope;
use crate::plans::Costs;

/// Implemented by the zero-sized markers in [`op`], one per operation, for typed door extractors.
pub trait Operation: Send + Sync + 'static {
    const OP: Op;
}

macro_rules! operations {
    ($($(#[doc = $doc:literal])* $name:ident: $scope:ident, $cost:ident;)*) => {
        /// A tenant operation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op {
            $($(#[doc = $doc])* $name,)*
        }

        impl Op {
            pub const ALL: &'static [Op] = &[$(Op::$name,)*];

            /// The scope a credential needs for this operation.
            pub const fn scope(self) -> Scope {
                match self { $(Op::$name => Scope::$scope,)* }
            }

            /// Rate-limit cells taken at the door (`[costs]` in plans.toml). Work whose size is known
            /// only later (bulk items, embedding inputs) takes more cells in the service.
            pub fn cost(self, costs: &Costs) -> u32 {
                match self { $(Op::$name => costs.$cost,)* }
            }

            /// Whether the operation adds data (charged as a write and not a delete): refused with 507
            /// `insufficient_storage` when the disk is low, while reads and deletes still run.
            pub fn adds_data(self) -> bool {
                let write = match self { $(Op::$name => stringify!($cost) == "write",)* };
                write && !matches!(self, Op::DocumentDelete | Op::DocumentDeletePrefix | Op::ProductDelete | Op::CustomerDelete)
            }

            pub const fn name(self) -> &'static str {
                match self { $(Op::$name => stringify!($name),)* }
            }
        }

        /// One marker type per [`Op`].
        pub mod op {
            $(
                pub struct $name;
                impl super::Operation for $name {
                    const OP: super::Op = super::Op::$name;
                }
            )*
        }
    };
}

operations! {
    /// `GET /tenant`
    TenantInfo: Read, read;
    /// `GET /usage`
    UsageRead: Read, read;
    /// `GET /audit` (the tenant's own audit log)
    AuditRead: Admin, read;
    /// `GET /backup`
    BackupStatus: Admin, read;
    /// `POST /export` (the tenant's whole archive, on plans with `export`)
    Export: Admin, export;
    /// `POST /restore` (point-in-time restore of the tenant's own data)
    Restore: Admin, write;
    /// `GET /documents`, MCP `list_documents`
    DocumentList: Read, read;
    /// `GET /documents/{id}`, MCP `get_document` and resources
    DocumentGet: Read, read;
    /// `POST /documents`, MCP `add_document`
    DocumentWrite: Write, write;
    /// `POST /documents/bulk` (plus `bulk_document` per item)
    DocumentBulk: Write, write;
    /// `GET /jobs/{id}` (a background document job)
    JobGet: Read, read;
    /// `GET /jobs`
    JobList: Read, read;
    /// `DELETE /documents/{id}`, MCP `delete_document`
    DocumentDelete: Write, write;
    /// `DELETE /documents?path_prefix=`
    DocumentDeletePrefix: Write, write;
    /// `POST /search`, MCP `search`
    Search: Read, search;
    /// `POST /context/assemble`, MCP `assemble_context`
    Assemble: Read, assemble;
    /// `POST /embeddings` (plus `embeddings` per input beyond the first)
    Embeddings: Read, embeddings;
    /// `GET /models` (OpenAI's model list)
    ModelsList: Read, read;
    /// `POST /products`, `/integrations/woocommerce/products`, webhook `product.*` (plus `bulk_document` per item beyond the first)
    ProductsUpsert: Write, write;
    /// `GET /products/{id}`
    ProductGet: Read, read;
    /// `DELETE /products/{id}`, webhook `product.deleted`
    ProductDelete: Write, write;
    /// `POST /customers`, webhook `customer.*`
    CustomersUpsert: Write, write;
    /// `DELETE /customers/{id}` (the profile) and `DELETE /customers/{id}?erase=true` (everything that names the customer)
    CustomerDelete: Write, write;
    /// `POST /orders`, `/integrations/woocommerce/orders`, webhook `order.*`
    OrdersInsert: Write, write;
    /// `PUT /integrations/woocommerce/totals` (the store's own totals, for sync progress)
    SyncTotals: Write, write;
    /// `POST /events`
    EventsInsert: Write, write;
    /// `POST /recommendations/train`
    RecsTrain: Write, write;
    /// `GET /recommendations/status`
    RecsStatus: Read, read;
    /// `GET /recommendations/attribution` (clicks on recommendations and the orders that followed)
    RecsAttribution: Read, read;
    /// `GET /recommendations`, `/products/{id}/related`, `/products/{id}/similar`, `/recommendations/trending`,
    /// `POST /recommendations/cart`, MCP `recommend`
    Recommend: Read, read;
    /// The tenant portal's key list
    KeysList: Admin, read;
    /// The tenant portal: create a key
    KeyCreate: Admin, write;
    /// The tenant portal: revoke a key
    KeyRevoke: Admin, write;
    /// The tenant portal: rotate a key
    KeyRotate: Admin, write;
    /// Opening an MCP session or stream (each tool call is charged as its own operation)
    McpSession: Read, read;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_and_writes_need_write() {
        for op in [Op::Search, Op::Assemble, Op::Embeddings, Op::Recommend, Op::RecsAttribution, Op::DocumentList, Op::DocumentGet, Op::UsageRead] {
            assert_eq!(op.scope(), Scope::Read, "{op:?}");
        }
        for op in [Op::DocumentWrite, Op::DocumentBulk, Op::DocumentDelete, Op::ProductsUpsert, Op::OrdersInsert, Op::RecsTrain] {
            assert_eq!(op.scope(), Scope::Write, "{op:?}");
        }
        assert_eq!(Op::Restore.scope(), Scope::Admin);
        assert_eq!(Op::AuditRead.scope(), Scope::Admin);
        let costs = Costs::default();
        assert_eq!(Op::Assemble.cost(&costs), costs.assemble);
        assert_eq!(Op::ALL.len(), 35);
    }
}
