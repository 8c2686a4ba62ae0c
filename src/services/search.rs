//! Search, context assembly and OpenAI-compatible embeddings. Queries embed through the shared
//! worker; the SQLite/Tantivy part runs on a blocking thread under the tenant's lease, admitted by
//! the bounded CPU queue (`[search]`), so a flood of queries is refused with 503 `overloaded`
//! rather than queued without bound.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::context::TenantCtx;
use super::ops::Op;
use crate::docs::DocsError;
use crate::embed::EmbedError;
use crate::error::{Code, Error};
use crate::metering::Kind;
use crate::search::{AssembleRequest, AssembleResponse, SearchRequest, SearchResponse, TenantSearch};
use crate::tenant::{Lease, TenantHandle};

pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";
const MAX_EMBED_INPUTS: usize = 2048;

pub(crate) fn embed_error(e: EmbedError) -> Error {
    match e {
        EmbedError::Unavailable => DocsError::EmbeddingsUnavailable.into(),
        EmbedError::Overloaded { retry_after_secs } => {
            Error::unavailable(Code::Overloaded, "the embedding queue is full; retry after Retry-After", retry_after_secs)
        }
        EmbedError::Failed(m) => Error::internal(anyhow::anyhow!("embedding failed: {m}")),
    }
}

/// The tenant's search state, opened (or rebuilt from SQLite) once per open handle.
pub(crate) async fn search_state(lease: &Lease) -> Result<Arc<TenantSearch>, Error> {
    lease.blocking(|h| h.extension(|| h.with_reader(|c| Ok(TenantSearch::open(h.dir(), c)?)))).await
}

/// Rebuilds the index of an open handle from SQLite (admin reindex).
pub(crate) fn rebuild(h: &TenantHandle) -> Result<usize, Error> {
    let search = h.extension(|| h.with_reader(|c| Ok(TenantSearch::open(h.dir(), c)?)))?;
    Ok(h.with_reader(|c| Ok(search.rebuild(c)?))? as usize)
}

/// Embeds one query on the shared worker.
async fn embed_query(ctx: &TenantCtx, query: &str) -> Result<Vec<f32>, Error> {
    let mut v = ctx.state().embed.embed(vec![query.to_string()]).await.map_err(embed_error)?;
    v.pop().ok_or_else(|| Error::internal(anyhow::anyhow!("embedder returned nothing")))
}

/// Hybrid, keyword or semantic search.
pub async fn search(ctx: &TenantCtx, req: SearchRequest) -> Result<SearchResponse, Error> {
    ctx.authorize(Op::Search)?;
    ctx.require_feature("search")?;
    ctx.check_query_quota().await?;
    req.validate()?;
    let qvec = if req.mode.needs_embedding() { Some(embed_query(ctx, &req.query).await?) } else { None };
    let _slot = ctx.state().search_cpu.admit().await?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let resp = lease.blocking(move |h| h.with_reader(|c| Ok(search.search(c, &req, qvec.as_deref())?))).await?;
    ctx.state().meter.record(ctx.id(), Kind::Search, 0);
    Ok(resp)
}

/// Token-budgeted context assembly.
pub async fn assemble(ctx: &TenantCtx, req: AssembleRequest) -> Result<AssembleResponse, Error> {
    ctx.authorize(Op::Assemble)?;
    ctx.require_feature("context")?;
    ctx.check_query_quota().await?;
    req.validate()?;
    // Without a model, assembly still works from keyword matches.
    let qvec = if ctx.state().embed.is_available() { Some(embed_query(ctx, &req.query).await?) } else { None };
    let _slot = ctx.state().search_cpu.admit().await?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let resp = lease.blocking(move |h| h.with_reader(|c| Ok(search.assemble(c, &req, qvec.as_deref())?))).await?;
    ctx.state().meter.record(ctx.id(), Kind::Assemble, resp.total_tokens as u64);
    Ok(resp)
}

/// Input of `POST /embeddings`: one string or a list.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

/// `POST /embeddings` body (OpenAI's shape).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    pub input: EmbedInput,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<String>,
}

/// One embedding of an [`EmbeddingsResponse`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vec<f32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// OpenAI's response shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: &'static str,
    pub usage: EmbeddingsUsage,
}

/// OpenAI-compatible embeddings with all-MiniLM-L6-v2 (384 dimensions).
pub async fn embeddings(ctx: &TenantCtx, req: EmbeddingsRequest) -> Result<EmbeddingsResponse, Error> {
    ctx.authorize(Op::Embeddings)?;
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
    ctx.charge(ctx.costs().embeddings.saturating_mul(inputs.len() as u32 - 1))?;
    let embed = &ctx.state().embed;
    let tokenizer = embed.tokenizer().ok_or_else(|| Error::from(DocsError::EmbeddingsUnavailable))?;
    let counted = inputs.clone();
    let prompt_tokens: usize =
        tokio::task::spawn_blocking(move || counted.iter().map(|t| tokenizer.encode(t.as_str(), true).map(|e| e.len()).unwrap_or(0)).sum()).await?;
    let vectors = embed.embed(inputs).await.map_err(embed_error)?;
    ctx.state().meter.record(ctx.id(), Kind::Embedding, prompt_tokens as u64);
    let data = vectors.into_iter().enumerate().map(|(index, embedding)| Embedding { object: "embedding", index, embedding }).collect();
    Ok(EmbeddingsResponse { object: "list", data, model: MODEL_NAME, usage: EmbeddingsUsage { prompt_tokens, total_tokens: prompt_tokens } })
}
