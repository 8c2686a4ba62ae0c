//! The context API: documents, search, context assembly and embeddings.

use axum::Router;

use crate::config::Config;
use crate::state::AppState;

pub fn routes(_config: &Config) -> Router<AppState> {
    Router::new()
}
