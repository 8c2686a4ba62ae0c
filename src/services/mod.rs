//! The application services: the one layer every door (REST, MCP, the CLI, and the dashboards to
//! come) calls for a tenant operation. Doors parse, call a service, and shape the answer; they never
//! touch SQLite, Tantivy or control-plane SQL (a test in `tests/architecture.rs` checks this).
//!
//! | capability | module | takes |
//! |---|---|---|
//! | scopes and costs of every operation | [`ops`] | — |
//! | the proven tenant | [`context`] | a request proof |
//! | audited control-plane changes | [`audit`] | an [`Operator`] |
//! | tenants: create, update, suspend, delete, reindex, overrides | [`tenants`] | an [`Operator`] |
//! | keys: create, rotate, revoke, limits | [`keys`] | an [`Operator`] |
//! | documents | [`documents`] | a [`TenantCtx`] |
//! | search, assemble, embeddings (bounded CPU queue: [`crate::cpu`]) | [`search`] | a [`TenantCtx`] |
//! | recommendations and commerce data | [`recs`] | a [`TenantCtx`] |
//! | usage, audit log, usage export | [`usage`] | either |
//! | WooCommerce webhooks (signed deliveries), integration settings | [`webhooks`] | the app state, or an [`Operator`] |
//! | Stripe webhooks, trials | [`billing`] | the app state |
//! | backup status and restore | [`restore`] | either, plus an admin proof |
//! | the cluster's nodes and their tenants | [`cluster`] | an [`Operator`] |
//! | documents with no server running (`warren import`/`export`) | [`offline`] | an [`Operator`] and an admin proof |

pub mod audit;
pub mod billing;
pub mod cluster;
pub mod context;
pub mod dashboard;
pub mod documents;
pub mod export;
pub mod jobs;
pub mod keys;
pub mod offline;
pub mod ops;
pub mod quickstart;
pub mod recs;
pub mod restore;
pub mod retention;
pub mod search;
pub mod tenants;
pub mod usage;
pub mod webhooks;

pub use audit::{Actor, Operator};
pub use context::{RateSlot, TenantCtx, TierSlot};
pub use ops::{op, Op, Operation};
