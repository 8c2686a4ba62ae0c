//! Documents: validation, chunking and their storage in the tenant's SQLite file.
//!
//! SQLite is the source of truth: documents, chunks (with byte offsets and heading paths) and
//! chunk embeddings (384 × f32 little-endian blobs) all live there, so the Tantivy index and the
//! in-memory vector cache ([`crate::search`]) can always be rebuilt from it.
//!
//! Ingest is split so the expensive, fallible steps happen outside the tenant's writer lock:
//! 1. [`prepare`] (CPU, any thread; sync): validates input and chunks it;
//! 2. the async caller embeds [`PreparedDocument::embedding_inputs`] with the embedding service;
//! 3. [`crate::search::TenantSearch::upsert`] (blocking thread, writer connection) writes
//!    SQLite in one transaction and then updates the derived state.
//!
//! Everything here works without the embedding model: chunking falls back to an approximate
//! token count ([`chunk::TokenCounter::Approx`]) and chunks are stored without vectors (they can
//! be back-filled later with [`crate::search::TenantSearch::backfill_embeddings`]).

pub mod chunk;
pub mod jobs;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::error::Code;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use chunk::{ChunkPlan, TokenCounter};

/// Errors of the documents/search domain. Map: `Invalid` → 400, `NotFound` → 404,
/// `TooLarge` → 413, `EmbeddingsUnavailable` → 503 `embeddings_unavailable`, `Internal` → 500.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("not found")]
    NotFound,
    #[error("{field} is too large: {size} bytes, limit {limit}")]
    TooLarge { field: String, size: usize, limit: usize },
    #[error("embeddings are unavailable")]
    EmbeddingsUnavailable,
    /// SQLite found the disk full; the transaction was rolled back.
    #[error("the server's disk is full: nothing was written; reads and deletes still work")]
    DiskFull,
    /// SQLite found the database damaged (the tenant's lease checks it and may quarantine it).
    #[error("the tenant's database is damaged")]
    Damaged,
    #[error("internal error: {0}")]
    Internal(String),
}

impl DocsError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        DocsError::Invalid { field: field.to_string(), message: message.into() }
    }
    /// The stable code of this error (per-item bulk results use it too).
    pub fn code(&self) -> Code {
        match self {
            DocsError::Invalid { .. } => Code::ValidationFailed,
            DocsError::NotFound => Code::DocumentNotFound,
            DocsError::TooLarge { .. } => Code::PayloadTooLarge,
            DocsError::EmbeddingsUnavailable => Code::EmbeddingsUnavailable,
            DocsError::DiskFull => Code::InsufficientStorage,
            DocsError::Damaged => Code::TenantDamaged,
            DocsError::Internal(_) => Code::Internal,
        }
    }
    /// What a client may read: internal causes are logged here once and hidden.
    pub fn public_message(&self) -> String {
        match self {
            DocsError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error in a batch item");
                "internal server error".into()
            }
            other => other.to_string(),
        }
    }
    /// A copy for every item of a batch that failed as a whole (causes other than a full disk as text).
    pub fn duplicate(&self) -> DocsError {
        match self {
            DocsError::DiskFull => DocsError::DiskFull,
            DocsError::Damaged => DocsError::Damaged,
            other => DocsError::Internal(other.to_string()),
        }
    }
    /// The HTTP status of [`code`](Self::code) (for per-item bulk results).
    pub fn status(&self) -> u16 {
        self.code().status()
    }
}

impl From<rusqlite::Error> for DocsError {
    fn from(e: rusqlite::Error) -> Self {
        match crate::error::Error::from(e) {
            err if err.code() == Code::InsufficientStorage => DocsError::DiskFull,
            err if err.code() == Code::TenantDamaged => DocsError::Damaged,
            err => DocsError::Internal(format!("sqlite: {err}")),
        }
    }
}
/// Whether an error's text says the disk is full (ENOSPC, however deep a library wrapped it).
fn says_disk_full(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("os error 28")
}

impl From<tantivy::TantivyError> for DocsError {
    fn from(e: tantivy::TantivyError) -> Self {
        let text = e.to_string();
        if says_disk_full(&text) {
            return DocsError::DiskFull;
        }
        DocsError::Internal(format!("index: {text}"))
    }
}
impl From<std::io::Error> for DocsError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || says_disk_full(&e.to_string()) {
            return DocsError::DiskFull;
        }
        DocsError::Internal(format!("io: {e}"))
    }
}

pub type Result<T, E = DocsError> = std::result::Result<T, E>;

/// Size limits, from configuration.
#[derive(Debug, Clone)]
pub struct DocLimits {
    pub max_content_bytes: usize,
    pub max_path_bytes: usize,
    pub max_title_bytes: usize,
    pub max_metadata_bytes: usize,
    pub max_metadata_keys: usize,
}

impl Default for DocLimits {
    fn default() -> Self {
        DocLimits {
            max_content_bytes: 4 * 1024 * 1024,
            max_path_bytes: 1024,
            max_title_bytes: 1024,
            max_metadata_bytes: 16 * 1024,
            max_metadata_keys: 64,
        }
    }
}

/// `POST /api/v1/documents` body (and one item of a bulk request).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentInput {
    /// UTF-8 text, not blank, no NUL bytes.
    #[schema(pattern = r"\S")]
    pub content: String,
    /// Unique per tenant; the same path replaces the document. At most 1024 bytes, no control characters.
    #[schema(pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$", max_length = 256)]
    pub path: String,
    #[serde(default)]
    pub title: Option<String>,
    /// Must be a flat JSON object (values: string, number, bool or null).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// `POST /api/v1/documents/bulk` body. Items stay raw JSON so one malformed item gets its own
/// error instead of failing the whole batch; parse them with [`parse_bulk_item`].
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BulkRequest {
    #[schema(value_type = Vec<DocumentInput>)]
    pub documents: Vec<Value>,
}

/// Answer to a create/upsert (`201 {id, path, chunks, tokens}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct WriteResult {
    pub id: String,
    pub path: String,
    /// Number of chunks.
    pub chunks: usize,
    /// o200k_base tokens of the content.
    pub tokens: usize,
    /// True when the path was new (201), false when an existing document was replaced.
    pub created: bool,
}

/// One item of a bulk answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct BulkItemResult {
    pub index: usize,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<WriteResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ItemError {
    pub code: String,
    pub message: String,
}

impl BulkItemResult {
    pub fn from_result(index: usize, r: Result<WriteResult>) -> Self {
        match r {
            Ok(w) => BulkItemResult { index, status: if w.created { 201 } else { 200 }, result: Some(w), error: None },
            Err(e) => BulkItemResult {
                index,
                status: e.status(),
                result: None,
                error: Some(ItemError { code: e.code().as_str().to_string(), message: e.public_message() }),
            },
        }
    }
}

/// A stored document (`GET /api/v1/documents/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Document {
    pub id: String,
    pub path: String,
    pub title: Option<String>,
    pub content: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub chunks: usize,
    pub tokens: usize,
    pub created_at: String,
    pub updated_at: String,
}

/// A document in a listing (no content).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DocumentSummary {
    pub id: String,
    pub path: String,
    pub title: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub chunks: usize,
    pub tokens: usize,
    pub updated_at: String,
    /// SHA-256 (hex) of the content: lets clients (e.g. `warren import`) skip unchanged documents.
    #[serde(default)]
    pub content_sha256: String,
}

/// `GET /api/v1/documents?path_prefix=&cursor=&limit=` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Listing page: ordered by path; `next_cursor` is opaque (absent on the last page).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ListPage {
    pub documents: Vec<DocumentSummary>,
    pub next_cursor: Option<String>,
}

/// Answer of `DELETE /api/v1/documents?path_prefix=`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct DeleteResult {
    pub deleted: usize,
}

/// A chunk ready to be stored.
#[derive(Debug, Clone)]
pub struct PreparedChunk {
    pub plan: ChunkPlan,
    pub text: String,
    /// o200k_base tokens of `text`.
    pub llm_tokens: usize,
}

/// A validated, chunked document, ready for embedding and storage.
#[derive(Debug, Clone)]
pub struct PreparedDocument {
    pub path: String,
    pub title: Option<String>,
    pub content: String,
    pub metadata: Map<String, Value>,
    pub content_sha256: String,
    /// o200k_base tokens of the whole content.
    pub tokens: usize,
    pub chunks: Vec<PreparedChunk>,
}

impl PreparedDocument {
    /// Texts to embed, one per chunk, in order (context prefix + chunk text).
    pub fn embedding_inputs(&self) -> Vec<String> {
        self.chunks.iter().map(|c| chunk::embed_text(&c.plan.prefix, &c.text)).collect()
    }
}

/// Parses one raw bulk item into a [`DocumentInput`].
pub fn parse_bulk_item(v: Value) -> Result<DocumentInput> {
    serde_json::from_value(v).map_err(|e| DocsError::invalid("document", e.to_string()))
}

/// Checks that raw bytes are text: valid UTF-8 without NUL bytes and with few control characters.
pub fn validate_text_bytes(bytes: &[u8]) -> Result<&str> {
    let s = std::str::from_utf8(bytes).map_err(|e| DocsError::invalid("content", format!("not valid UTF-8: {e}")))?;
    validate_text(s)?;
    Ok(s)
}

fn validate_text(s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(DocsError::invalid("content", "binary content (NUL bytes) is not accepted"));
    }
    let controls = s.chars().filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}')).count();
    if controls * 100 > s.chars().count().max(1) {
        return Err(DocsError::invalid("content", "looks like binary content (control characters)"));
    }
    Ok(())
}

/// Validates metadata: absent/null → `{}`; otherwise a flat object of scalars.
pub fn validate_metadata(metadata: Option<Value>, limits: &DocLimits) -> Result<Map<String, Value>> {
    let map = match metadata {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(DocsError::invalid("metadata", "must be a JSON object")),
    };
    if map.len() > limits.max_metadata_keys {
        return Err(DocsError::invalid("metadata", format!("at most {} keys", limits.max_metadata_keys)));
    }
    for (k, v) in &map {
        if k.is_empty() {
            return Err(DocsError::invalid("metadata", "keys must be non-empty"));
        }
        if matches!(v, Value::Object(_) | Value::Array(_)) {
            return Err(DocsError::invalid("metadata", format!("value of {k:?} must be a string, number, bool or null (flat object)")));
        }
    }
    let size = serde_json::to_string(&map).map(|s| s.len()).unwrap_or(usize::MAX);
    if size > limits.max_metadata_bytes {
        return Err(DocsError::TooLarge { field: "metadata".into(), size, limit: limits.max_metadata_bytes });
    }
    Ok(map)
}

/// Validates a document path (non-empty, no control characters, bounded).
pub fn validate_path(path: &str, limits: &DocLimits) -> Result<()> {
    if path.trim().is_empty() {
        return Err(DocsError::invalid("path", "must be non-empty"));
    }
    if path.len() > limits.max_path_bytes {
        return Err(DocsError::invalid("path", format!("at most {} bytes", limits.max_path_bytes)));
    }
    if path.chars().any(char::is_control) {
        return Err(DocsError::invalid("path", "must not contain control characters"));
    }
    Ok(())
}

/// Counts tokens with tiktoken's o200k_base (the counter stated by context assembly).
pub fn llm_tokens(text: &str) -> usize {
    tiktoken_rs::o200k_base_singleton().encode_ordinary(text).len()
}

/// Validates and chunks a document. CPU-bound (tokenisation): call it off the async runtime.
pub fn prepare(input: DocumentInput, limits: &DocLimits, counter: &TokenCounter) -> Result<PreparedDocument> {
    if input.content.len() > limits.max_content_bytes {
        return Err(DocsError::TooLarge { field: "content".into(), size: input.content.len(), limit: limits.max_content_bytes });
    }
    validate_path(&input.path, limits)?;
    validate_text(&input.content)?;
    if input.content.trim().is_empty() {
        return Err(DocsError::invalid("content", "must not be empty"));
    }
    let title = input.title.filter(|t| !t.trim().is_empty());
    if let Some(t) = &title {
        if t.len() > limits.max_title_bytes {
            return Err(DocsError::invalid("title", format!("at most {} bytes", limits.max_title_bytes)));
        }
        if t.chars().any(char::is_control) {
            return Err(DocsError::invalid("title", "must not contain control characters"));
        }
    }
    let metadata = validate_metadata(input.metadata, limits)?;
    let plans = chunk::chunk(counter, &input.content, title.as_deref());
    let chunks = plans
        .into_iter()
        .map(|plan| {
            let text = input.content.get(plan.start..plan.end).unwrap_or("").to_string();
            let llm_tokens = llm_tokens(&text);
            PreparedChunk { plan, text, llm_tokens }
        })
        .collect();
    let content_sha256 = hex::encode(Sha256::digest(input.content.as_bytes()));
    let tokens = llm_tokens(&input.content);
    Ok(PreparedDocument { path: input.path, title, content: input.content, metadata, content_sha256, tokens, chunks })
}

impl From<DocsError> for crate::error::Error {
    fn from(e: DocsError) -> Self {
        use crate::error::Error;
        match e {
            DocsError::Invalid { field, message } => Error::validation(format!("{field}: {message}")),
            DocsError::NotFound => Error::not_found(Code::DocumentNotFound, "no such document"),
            DocsError::TooLarge { .. } => Error::new(Code::PayloadTooLarge, e.to_string()),
            DocsError::EmbeddingsUnavailable => Error::unavailable(
                Code::EmbeddingsUnavailable,
                "the embedding model is not loaded on this server; keyword search still works (mode: \"keyword\")",
                60,
            ),
            DocsError::DiskFull => Error::insufficient_storage(),
            DocsError::Damaged => Error::damaged(),
            DocsError::Internal(m) => Error::internal(anyhow::anyhow!(m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation() {
        let l = DocLimits { max_content_bytes: 100, ..Default::default() };
        let c = TokenCounter::Approx;
        let ok = |v: Value| prepare(serde_json::from_value(v).unwrap(), &l, &c);
        assert!(ok(json!({"content": "hello", "path": "a"})).is_ok());
        assert!(matches!(ok(json!({"content": "x".repeat(101), "path": "a"})), Err(DocsError::TooLarge { .. })));
        assert!(matches!(ok(json!({"content": "hi", "path": " "})), Err(DocsError::Invalid { .. })));
        assert!(matches!(ok(json!({"content": "a\u{0}b", "path": "p"})), Err(DocsError::Invalid { .. })));
        assert!(matches!(ok(json!({"content": "  ", "path": "p"})), Err(DocsError::Invalid { .. })));
        assert!(matches!(ok(json!({"content": "a", "path": "p", "metadata": {"a": {"b": 1}}})), Err(DocsError::Invalid { .. })));
        assert!(matches!(ok(json!({"content": "a", "path": "p", "metadata": [1]})), Err(DocsError::Invalid { .. })));
        assert!(ok(json!({"content": "a", "path": "p", "metadata": {"a": 1, "b": "x", "c": true, "d": null}})).is_ok());
        assert!(validate_text_bytes(&[0xff, 0xfe, 0x00]).is_err());
        assert!(parse_bulk_item(json!({"content": 3})).is_err());
    }
}
