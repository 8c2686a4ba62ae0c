//! The context API's REST door: documents, search, context assembly and OpenAI-compatible
//! embeddings. Each handler parses, calls [`crate::services::documents`] or
//! [`crate::services::search`], and shapes the answer.

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::extract::Authorized;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::config::Config;
use crate::docs::jobs::Job;
use crate::docs::{self, BulkRequest, DocumentInput, ListQuery};
use crate::error::Error;
use crate::search::{AssembleRequest, AssembleResponse, SearchRequest, SearchResponse};
use crate::services::documents::{self, BulkResponse, DocRef, Written};
use crate::services::jobs;
use crate::services::op;
use crate::services::search::{self, EmbeddingsRequest, EmbeddingsResponse, ModelList};
use crate::state::AppState;

/// The context API's part of the OpenAPI document (listed in [`super::openapi::MODULES`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, bulk, list, get_one, delete_one, delete_prefix, job, jobs_list, search, assemble, embeddings, models),
    components(schemas(
        docs::Document,
        docs::DocumentSummary,
        docs::BulkItemResult,
        docs::ItemError,
        BulkResponse,
        Job,
        JobList,
        EmbeddingsResponse,
        ModelList
    ))
)]
pub struct ContextApi;

pub fn routes(config: &Config) -> Router<AppState> {
    // JSON escaping can double a document's size on the wire; the content limit itself is
    // enforced exactly on the decoded text (413).
    let doc_body = config.docs.max_document_bytes.saturating_mul(2).saturating_add(64 * 1024);
    Router::new()
        .route("/documents", post(create).get(list).delete(delete_prefix).layer(DefaultBodyLimit::max(doc_body)))
        .route("/documents/bulk", post(bulk).layer(DefaultBodyLimit::max(config.docs.max_bulk_bytes)))
        .route("/documents/{id}", get(get_one).delete(delete_one))
        .route("/jobs", get(jobs_list))
        .route("/jobs/{id}", get(job))
        .route("/search", post(search))
        .route("/context/assemble", post(assemble))
        .route("/embeddings", post(embeddings))
        .route("/models", get(models))
}

/// Adds a document, or replaces the one at the same path. One with more than
/// `docs.job_threshold_chunks` chunks is accepted as a background job: 202 with the job and a
/// `Location` to poll.
#[utoipa::path(post, path = "/api/v1/documents", tag = "documents", request_body = DocumentInput,
    responses((status = 201, description = "Created", body = docs::WriteResult), (status = 200, description = "Replaced the document at this path", body = docs::WriteResult),
        (status = 202, description = "Accepted as a background job; poll GET /api/v1/jobs/{id}", body = Job)))]
async fn create(ctx: Authorized<op::DocumentWrite>, ApiJson(input): ApiJson<DocumentInput>) -> Result<Response, Error> {
    Ok(match documents::write(&ctx, input).await? {
        Written::Done(result) => {
            let status = if result.created { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(result)).into_response()
        }
        Written::Queued(job) => accepted(job),
    })
}

/// Adds or replaces up to `docs.max_bulk_documents` documents; one bad item does not sink the batch.
/// A batch with more than `docs.job_threshold_chunks` chunks in all is accepted as a background job.
#[utoipa::path(post, path = "/api/v1/documents/bulk", tag = "documents", request_body = BulkRequest,
    responses((status = 200, description = "Per-item results", body = BulkResponse),
        (status = 202, description = "Accepted as a background job; its result holds the per-item results", body = Job)))]
async fn bulk(ctx: Authorized<op::DocumentBulk>, ApiJson(req): ApiJson<BulkRequest>) -> Result<Response, Error> {
    Ok(match documents::bulk(&ctx, req.documents).await? {
        Written::Done(r) => Json(r).into_response(),
        Written::Queued(job) => accepted(job),
    })
}

/// 202 Accepted with the job and where to poll it.
fn accepted(job: Box<Job>) -> Response {
    let location = format!("/api/v1/jobs/{}", job.id);
    (StatusCode::ACCEPTED, [(axum::http::header::LOCATION, location)], Json(job)).into_response()
}

/// One background document job: status, chunks embedded so far, and the result once finished.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "documents", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job", body = Job)))]
async fn job(ctx: Authorized<op::JobGet>, ApiPath(id): ApiPath<String>) -> Result<Json<Job>, Error> {
    Ok(Json(jobs::get(&ctx, id).await?))
}

/// `GET /api/v1/jobs`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// This tenant's most recent background jobs (at most 100), newest first.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "documents", responses((status = 200, description = "Recent jobs", body = JobList)))]
async fn jobs_list(ctx: Authorized<op::JobList>) -> Result<Json<JobList>, Error> {
    Ok(Json(JobList { jobs: jobs::list(&ctx).await? }))
}

/// Lists documents (without content), ordered by path, with keyset pagination.
#[utoipa::path(get, path = "/api/v1/documents", tag = "documents", params(ListQuery),
    responses((status = 200, description = "One page", body = docs::ListPage)))]
async fn list(ctx: Authorized<op::DocumentList>, ApiQuery(q): ApiQuery<ListQuery>) -> Result<Json<docs::ListPage>, Error> {
    Ok(Json(documents::list(&ctx, q).await?))
}

/// One document with its content.
#[utoipa::path(get, path = "/api/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "Document id")),
    responses((status = 200, description = "The document", body = docs::Document)))]
async fn get_one(ctx: Authorized<op::DocumentGet>, ApiPath(id): ApiPath<String>) -> Result<Json<docs::Document>, Error> {
    Ok(Json(documents::get(&ctx, DocRef::Id(id)).await?))
}

/// Deletes one document, its chunks, index entries and embeddings.
#[utoipa::path(delete, path = "/api/v1/documents/{id}", tag = "documents", params(("id" = String, Path, description = "Document id")),
    responses((status = 204, description = "Deleted")))]
async fn delete_one(ctx: Authorized<op::DocumentDelete>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, Error> {
    documents::delete(&ctx, id).await?;
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
async fn delete_prefix(ctx: Authorized<op::DocumentDeletePrefix>, ApiQuery(q): ApiQuery<PrefixQuery>) -> Result<Json<docs::DeleteResult>, Error> {
    Ok(Json(documents::delete_prefix(&ctx, q.path_prefix).await?))
}

/// Searches the tenant's documents (BM25, exact cosine, or both fused). Needs the `read` scope.
#[utoipa::path(post, path = "/api/v1/search", tag = "search", request_body = SearchRequest,
    responses((status = 200, description = "Ranked chunks", body = SearchResponse)))]
async fn search(ctx: Authorized<op::Search>, ApiJson(req): ApiJson<SearchRequest>) -> Result<Json<SearchResponse>, Error> {
    Ok(Json(search::search(&ctx, req).await?))
}

/// Assembles the most relevant chunks into one context within `max_tokens` (o200k_base). Needs the `read` scope.
#[utoipa::path(post, path = "/api/v1/context/assemble", tag = "search", request_body = AssembleRequest,
    responses((status = 200, description = "The context", body = AssembleResponse)))]
async fn assemble(ctx: Authorized<op::Assemble>, ApiJson(req): ApiJson<AssembleRequest>) -> Result<Json<AssembleResponse>, Error> {
    Ok(Json(search::assemble(&ctx, req).await?))
}

/// OpenAI-compatible embeddings with all-MiniLM-L6-v2 (384 dimensions). Needs the `read` scope.
#[utoipa::path(post, path = "/api/v1/embeddings", tag = "search", request_body = EmbeddingsRequest,
    responses((status = 200, description = "OpenAI's response shape", body = EmbeddingsResponse)))]
async fn embeddings(ctx: Authorized<op::Embeddings>, ApiJson(req): ApiJson<EmbeddingsRequest>) -> Result<Json<EmbeddingsResponse>, Error> {
    Ok(Json(search::embeddings(&ctx, req).await?))
}

/// The embedding model and its aliases, in OpenAI's `GET /models` shape. Needs the `read` scope.
#[utoipa::path(get, path = "/api/v1/models", tag = "search",
    responses((status = 200, description = "OpenAI's model list", body = ModelList)))]
async fn models(ctx: Authorized<op::ModelsList>) -> Result<Json<ModelList>, Error> {
    Ok(Json(search::models(&ctx)?))
}
