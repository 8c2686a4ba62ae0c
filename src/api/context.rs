//! The context API: documents, search, context assembly and OpenAI-compatible embeddings.
//!
//! Handlers stay thin: validate, embed through the shared worker (async, bounded queue), then run
//! the SQLite/Tantivy work of [`crate::search::TenantSearch`] on a blocking thread under the
//! tenant's lease. Every search, assemble, embedding and document write records a usage event.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::TenantCtx;
use crate::config::Config;
use crate::control::Scope;
use crate::docs::{self, BulkItemResult, BulkRequest, DocLimits, DocsError, DocumentInput, ListQuery, PreparedDocument, TokenCounter};
use crate::embed::EmbedError;
use crate::error::Error;
use crate::metering::Kind;
use crate::search::{AssembleRequest, AssembleResponse, SearchRequest, SearchResponse, TenantSearch};
use crate::state::AppState;
use crate::tenant::Lease;

/// The context API's part of the OpenAPI document (listed in [`super::openapi::MODULES`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, bulk, list, get_one, delete_one, delete_prefix, search, assemble, embeddings),
    components(schemas(docs::Document, docs::DocumentSummary, docs::BulkItemResult, docs::ItemError, BulkResponse))
)]
pub struct ContextApi;

/// Answer of `POST /documents/bulk`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct BulkResponse {
    pub results: Vec<BulkItemResult>,
    pub succeeded: usize,
    pub failed: usize,
}

pub fn routes(config: &Config) -> Router<AppState> {
    // JSON escaping can double a document's size on the wire; the content limit itself is
    // enforced exactly on the decoded text (413).
    let doc_body = config.docs.max_document_bytes.saturating_mul(2).saturating_add(64 * 1024);
    Router::new()
        .route("/documents", post(create).get(list).delete(delete_prefix).layer(DefaultBodyLimit::max(doc_body)))
        .route("/documents/bulk", post(bulk).layer(DefaultBodyLimit::max(config.docs.max_bulk_bytes)))
        .route("/documents/{id}", get(get_one).delete(delete_one))
        .route("/search", post(search))
        .route("/context/assemble", post(assemble))
        .route("/embeddings", post(embeddings))
}

impl From<DocsError> for Error {
    fn from(e: DocsError) -> Self {
        match e {
            DocsError::Invalid { field, message } => Error::validation(format!("{field}: {message}")),
            DocsError::NotFound => Error::not_found("document_not_found", "no such document"),
            DocsError::TooLarge { .. } => Error::PayloadTooLarge { message: e.to_string() },
            DocsError::EmbeddingsUnavailable => embeddings_unavailable(),
            DocsError::Internal(m) => Error::internal(anyhow::anyhow!(m)),
        }
    }
}

fn embeddings_unavailable() -> Error {
    Error::unavailable(
        "embeddings_unavailable",
        "the embedding model is not loaded on this server; keyword search still works (mode: \"keyword\")",
        60,
    )
}

fn embed_error(e: EmbedError) -> Error {
    match e {
        EmbedError::Unavailable => embeddings_unavailable(),
        EmbedError::Overloaded { retry_after_secs } => {
            Error::unavailable("overloaded", "the embedding queue is full; retry after Retry-After", retry_after_secs)
        }
        EmbedError::Failed(m) => Error::internal(anyhow::anyhow!("embedding failed: {m}")),
    }
}

fn limits(state: &AppState) -> DocLimits {
    DocLimits { max_content_bytes: state.config.docs.max_document_bytes, ..DocLimits::default() }
}

/// The tenant's search state, opened (or rebuilt from SQLite) once per open handle.
async fn search_state(lease: &Lease) -> Result<Arc<TenantSearch>, Error> {
    lease
        .blocking(|h| h.extension(|| h.with_reader(|c| Ok(TenantSearch::open(h.dir(), c)?))))
        .await
}

/// Validates and chunks documents on a blocking thread (tokenising is CPU work).
async fn prepare_all(state: &AppState, inputs: Vec<DocumentInput>) -> Result<Vec<docs::Result<PreparedDocument>>, Error> {
    let limits = limits(state);
    let tokenizer = state.embed.tokenizer();
    Ok(tokio::task::spawn_blocking(move || {
        let counter = TokenCounter::new(tokenizer.as_deref());
        inputs.into_iter().map(|i| docs::prepare(i, &limits, &counter)).collect()
    })
    .await?)
}

/// Embeds every chunk of the prepared documents in one queue request; None when no model is loaded
/// (the documents are then stored for keyword search only).
async fn embed_docs(state: &AppState, prepared: &[&PreparedDocument]) -> Result<Option<Vec<Vec<Vec<f32>>>>, Error> {
    if !state.embed.is_available() {
        return Ok(None);
    }
    let texts: Vec<String> = prepared.iter().flat_map(|d| d.embedding_inputs()).collect();
    if texts.is_empty() {
        return Ok(Some(prepared.iter().map(|_| Vec::new()).collect()));
    }
    let mut flat = state.embed.embed(texts).await.map_err(embed_error)?.into_iter();
    Ok(Some(prepared.iter().map(|d| flat.by_ref().take(d.chunks.len()).collect()).collect()))
}

/// Validates, chunks, embeds and stores one document (REST `POST /documents`, MCP `add_document`).
pub(crate) async fn write_document(ctx: &TenantCtx, state: &AppState, input: DocumentInput) -> Result<docs::WriteResult, Error> {
    ctx.require(Scope::Write)?;
    let prepared = prepare_all(state, vec![input]).await?.pop().expect("one in, one out")?;
    let bytes = prepared.content.len() as u64;
    ctx.check_storage(vec![prepared.path.clone()], bytes).await?;
    let embeddings = embed_docs(state, &[&prepared]).await?.map(|mut v| v.remove(0));
    let embedded_tokens: usize = prepared.chunks.iter().map(|c| c.llm_tokens).sum();
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let result = lease.blocking(move |h| h.with_writer(|c| Ok(search.upsert(c, prepared, embeddings)?))).await?;
    state.meter.record(&ctx.tenant().id, Kind::DocumentWrite, embedded_tokens as u64);
    ctx.wrote(result.created as u64, bytes);
    Ok(result)
}

/// Adds a document, or replaces the one at the same path.
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", request_body = DocumentInput,
    responses((status = 201, description = "Created", body = docs::WriteResult), (status = 200, description = "Replaced the document at this path", body = docs::WriteResult)))]
async fn create(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiJson(input): ApiJson<DocumentInput>) -> Result<Response, Error> {
    let result = write_document(&ctx, &state, input).await?;
    let status = if result.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(result)).into_response())
}

/// Adds or replaces up to `docs.max_bulk_documents` documents; one bad item does not sink the batch.
#[utoipa::path(post, path = "/api/v1/documents/bulk", tag = "documents", request_body = BulkRequest,
    responses((status = 200, description = "Per-item results", body = BulkResponse)))]
async fn bulk(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiJson(req): ApiJson<BulkRequest>) -> Result<Json<BulkResponse>, Error> {
    ctx.require(Scope::Write)?;
    let max = state.config.docs.max_bulk_documents;
    if req.documents.is_empty() || req.documents.len() > max {
        return Err(Error::validation(format!("documents must hold 1 to {max} items")));
    }
    let n = req.documents.len();
    ctx.charge(ctx.entitlements().costs().bulk_document.saturating_mul(n as u32))?;
    let mut results: Vec<Option<BulkItemResult>> = vec![None; n];
    let mut inputs = Vec::new();
    let mut positions = Vec::new();
    for (i, raw) in req.documents.into_iter().enumerate() {
        match docs::parse_bulk_item(raw) {
            Ok(input) => {
                inputs.push(input);
                positions.push(i);
            }
            Err(e) => results[i] = Some(BulkItemResult::from_result(i, Err(e))),
        }
    }
    let prepared = prepare_all(&state, inputs).await?;
    let mut ok_docs = Vec::new();
    let mut ok_pos = Vec::new();
    for (p, r) in positions.into_iter().zip(prepared) {
        match r {
            Ok(d) => {
                ok_docs.push(d);
                ok_pos.push(p);
            }
            Err(e) => results[p] = Some(BulkItemResult::from_result(p, Err(e))),
        }
    }
    if !ok_docs.is_empty() {
        let bytes: u64 = ok_docs.iter().map(|d| d.content.len() as u64).sum();
        ctx.check_storage(ok_docs.iter().map(|d| d.path.clone()).collect(), bytes).await?;
        let refs: Vec<&PreparedDocument> = ok_docs.iter().collect();
        let embeddings = embed_docs(&state, &refs).await?;
        let tokens: usize = ok_docs.iter().flat_map(|d| d.chunks.iter().map(|c| c.llm_tokens)).sum();
        let lease = ctx.storage().await?;
        let search = search_state(&lease).await?;
        let written = lease
            .blocking(move |h| {
                let items: Vec<(PreparedDocument, Option<Vec<Vec<f32>>>)> = match embeddings {
                    Some(e) => ok_docs.into_iter().zip(e.into_iter().map(Some)).collect(),
                    None => ok_docs.into_iter().map(|d| (d, None)).collect(),
                };
                h.with_writer(|c| Ok(search.upsert_many(c, items)))
            })
            .await?;
        let ok = written.iter().filter(|r| r.is_ok()).count();
        ctx.wrote(written.iter().filter(|r| r.as_ref().is_ok_and(|w| w.created)).count() as u64, bytes);
        for (p, r) in ok_pos.into_iter().zip(written) {
            results[p] = Some(BulkItemResult::from_result(p, r));
        }
        state.meter.record_n(&ctx.tenant().id, Kind::DocumentWrite, ok as u64, tokens as u64);
    }
    let results: Vec<BulkItemResult> = results.into_iter().flatten().collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(Json(BulkResponse { results, succeeded: n - failed, failed }))
}

// Reads of documents come straight from SQLite: they never open the derived search state.
/// One page of documents ordered by path (REST `GET /documents`, MCP `list_documents`).
pub(crate) async fn list_documents(ctx: &TenantCtx, q: ListQuery) -> Result<docs::ListPage, Error> {
    let lease = ctx.storage().await?;
    lease.blocking(move |h| h.with_reader(|c| Ok(docs::store::list(c, &q)?))).await
}

/// Which document to read: by id, or by path.
pub(crate) enum DocRef {
    Id(String),
    Path(String),
}

/// One stored document (REST `GET /documents/{id}`, MCP `get_document` and resources).
pub(crate) async fn read_document(ctx: &TenantCtx, r: DocRef) -> Result<docs::Document, Error> {
    let lease = ctx.storage().await?;
    lease
        .blocking(move |h| {
            h.with_reader(|c| match &r {
                DocRef::Id(id) => Ok(docs::store::get(c, id)?),
                DocRef::Path(p) => Ok(docs::store::get_by_path(c, p)?),
            })
        })
        .await
}

/// Deletes one document by id (REST `DELETE /documents/{id}`, MCP `delete_document`).
pub(crate) async fn remove_document(ctx: &TenantCtx, state: &AppState, id: String) -> Result<(), Error> {
    ctx.require(Scope::Write)?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    lease.blocking(move |h| h.with_writer(|c| Ok(search.delete(c, &id)?))).await?;
    state.meter.record(&ctx.tenant().id, Kind::DocumentDelete, 0);
    ctx.deleted();
    Ok(())
}

/// Lists documents (without content), ordered by path, with keyset pagination.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(ListQuery),
    responses((status = 200, description = "One page", body = docs::ListPage)))]
async fn list(ctx: TenantCtx, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<docs::ListPage>, Error> {
    Ok(Json(list_documents(&ctx, q).await?))
}

/// One document with its content.
#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "Document id")),
    responses((status = 200, description = "The document", body = docs::Document)))]
async fn get_one(ctx: TenantCtx, ApiPath(id): ApiPath<String>) -> Result<Json<docs::Document>, Error> {
    Ok(Json(read_document(&ctx, DocRef::Id(id)).await?))
}

/// Deletes one document, its chunks, index entries and embeddings.
#[utoipa::path(delete, path = "/api/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "Document id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_one(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, Error> {
    remove_document(&ctx, &state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct PrefixQuery {
    /// Required: every document whose path starts with it is deleted (empty: all).
    path_prefix: Option<String>,
}

/// Deletes every document under a path prefix.
#[utoipa::path(delete, path = "/api/v1/documents", tag = "documents", params(PrefixQuery),
    responses((status = 200, description = "How many were deleted", body = docs::DeleteResult)))]
async fn delete_prefix(
    ctx: TenantCtx,
    state: axum::extract::State<AppState>,
    ApiQuery(q): ApiQuery<PrefixQuery>,
) -> Result<Json<docs::DeleteResult>, Error> {
    ctx.require(Scope::Write)?;
    let prefix = q.path_prefix.ok_or_else(|| Error::validation("path_prefix is required (use path_prefix= with care: an empty prefix deletes everything)"))?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let r = lease.blocking(move |h| h.with_writer(|c| Ok(search.delete_by_prefix(c, &prefix)?))).await?;
    state.meter.record_n(&ctx.tenant().id, Kind::DocumentDelete, r.deleted as u64, 0);
    ctx.deleted();
    Ok(Json(r))
}

/// Embeds one query on the shared worker.
async fn embed_query(state: &AppState, query: &str) -> Result<Vec<f32>, Error> {
    let mut v = state.embed.embed(vec![query.to_string()]).await.map_err(embed_error)?;
    v.pop().ok_or_else(|| Error::internal(anyhow::anyhow!("embedder returned nothing")))
}

/// Hybrid, keyword or semantic search (REST `POST /search`, MCP `search`).
pub(crate) async fn run_search(ctx: &TenantCtx, state: &AppState, req: SearchRequest) -> Result<SearchResponse, Error> {
    ctx.require_feature("search")?;
    ctx.check_query_quota().await?;
    req.validate()?;
    let qvec = if req.mode.needs_embedding() { Some(embed_query(state, &req.query).await?) } else { None };
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let resp = lease.blocking(move |h| h.with_reader(|c| Ok(search.search(c, &req, qvec.as_deref())?))).await?;
    state.meter.record(&ctx.tenant().id, Kind::Search, 0);
    Ok(resp)
}

/// Token-budgeted context assembly (REST `POST /context/assemble`, MCP `assemble_context`).
pub(crate) async fn run_assemble(ctx: &TenantCtx, state: &AppState, req: AssembleRequest) -> Result<AssembleResponse, Error> {
    ctx.require_feature("context")?;
    ctx.check_query_quota().await?;
    req.validate()?;
    // Without a model, assembly still works from keyword matches.
    let qvec = if state.embed.is_available() { Some(embed_query(state, &req.query).await?) } else { None };
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let resp = lease.blocking(move |h| h.with_reader(|c| Ok(search.assemble(c, &req, qvec.as_deref())?))).await?;
    state.meter.record(&ctx.tenant().id, Kind::Assemble, resp.total_tokens as u64);
    Ok(resp)
}

/// Searches the tenant's documents (BM25, exact cosine, or both fused).
#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchRequest,
    responses((status = 200, description = "Ranked chunks", body = SearchResponse)))]
async fn search(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiJson(req): ApiJson<SearchRequest>) -> Result<Json<SearchResponse>, Error> {
    Ok(Json(run_search(&ctx, &state, req).await?))
}

/// Assembles the most relevant chunks into one context within `max_tokens` (o200k_base).
#[utoipa::path(post, path = "/api/v1/context/assemble", tag = "search", request_body = AssembleRequest,
    responses((status = 200, description = "The context", body = AssembleResponse)))]
async fn assemble(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiJson(req): ApiJson<AssembleRequest>) -> Result<Json<AssembleResponse>, Error> {
    Ok(Json(run_assemble(&ctx, &state, req).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

/// `POST /embeddings` body (OpenAI's shape).
#[derive(Deserialize, utoipa::ToSchema)]
struct EmbeddingsRequest {
    input: EmbedInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
const MAX_EMBED_INPUTS: usize = 2048;

/// OpenAI-compatible embeddings with all-MiniLM-L6-v2 (384 dimensions).
#[utoipa::path(post, path = "/api/v1/embeddings", tag = "search", request_body = EmbeddingsRequest,
    responses((status = 200, description = "OpenAI's response shape: {object, data: [{object, index, embedding}], model, usage}", body = Object)))]
async fn embeddings(ctx: TenantCtx, state: axum::extract::State<AppState>, ApiJson(req): ApiJson<EmbeddingsRequest>) -> Result<Json<Value>, Error> {
    if req.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(Error::validation("encoding_format: only \"float\" is supported"));
    }
    if let Some(m) = &req.model {
        if !m.is_empty() && !m.ends_with(MODEL_NAME) {
            return Err(Error::validation(format!("model: this server embeds with {MODEL_NAME}")));
        }
    }
    let inputs = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
        return Err(Error::validation(format!("input must hold 1 to {MAX_EMBED_INPUTS} strings")));
    }
    ctx.charge(ctx.entitlements().costs().embeddings.saturating_mul(inputs.len() as u32 - 1))?;
    let tokenizer = state.embed.tokenizer().ok_or_else(embeddings_unavailable)?;
    let counted = inputs.clone();
    let prompt_tokens: usize = tokio::task::spawn_blocking(move || {
        counted.iter().map(|t| tokenizer.encode(t.as_str(), true).map(|e| e.len()).unwrap_or(0)).sum()
    })
    .await?;
    let vectors = state.embed.embed(inputs).await.map_err(embed_error)?;
    state.meter.record(&ctx.tenant().id, Kind::Embedding, prompt_tokens as u64);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": MODEL_NAME,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}
