//! warren: a single-binary, multi-tenant edge server.
pub mod docs;
pub mod embed;
pub mod search;
