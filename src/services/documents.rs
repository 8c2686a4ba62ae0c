//! Documents: add or replace, bulk, list, get, delete, delete by prefix. Validation and chunking run
//! on blocking threads, embedding goes through the shared worker (bounded queue), and the SQLite and
//! Tantivy writes run under the tenant's lease. Every write and delete records a usage event and
//! adjusts the plan's storage measurement.

use std::sync::atomic::AtomicUsize;

use serde::Serialize;

use super::context::TenantCtx;
use super::jobs;
use super::ops::Op;
use super::search::{embed_error, search_state};
use crate::docs::jobs::Job;
use crate::docs::{self, BulkItemResult, DocLimits, DocumentInput, ListQuery, PreparedDocument, TokenCounter};
use crate::error::Error;
use crate::metering::Kind;

/// Answer of a bulk write.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResponse {
    pub results: Vec<BulkItemResult>,
    pub succeeded: usize,
    pub failed: usize,
}

/// Which document to read: by id, or by path.
pub enum DocRef {
    Id(String),
    Path(String),
}

fn limits(ctx: &TenantCtx) -> DocLimits {
    DocLimits { max_content_bytes: ctx.state().config.docs.max_document_bytes, ..DocLimits::default() }
}

/// Validates and chunks documents on a blocking thread (tokenising is CPU work).
async fn prepare_all(ctx: &TenantCtx, inputs: Vec<DocumentInput>) -> Result<Vec<docs::Result<PreparedDocument>>, Error> {
    let limits = limits(ctx);
    let tokenizer = ctx.state().embed.tokenizer();
    Ok(tokio::task::spawn_blocking(move || {
        let counter = TokenCounter::new(tokenizer.as_deref());
        inputs.into_iter().map(|i| docs::prepare(i, &limits, &counter)).collect()
    })
    .await?)
}

/// Embeds every chunk of the prepared documents (in `max_batch` slices, on this tenant's fair share of
/// the embedding workers); None when no model is loaded (the documents are then stored for keyword
/// search only). `progress` counts the chunks embedded.
async fn embed_docs(ctx: &TenantCtx, prepared: &[&PreparedDocument], progress: Option<&AtomicUsize>) -> Result<Option<Vec<Vec<Vec<f32>>>>, Error> {
    let embed = &ctx.state().embed;
    if !embed.is_available() {
        return Ok(None);
    }
    let texts: Vec<String> = prepared.iter().flat_map(|d| d.embedding_inputs()).collect();
    if texts.is_empty() {
        return Ok(Some(prepared.iter().map(|_| Vec::new()).collect()));
    }
    let caller = ctx.embed_caller(crate::embed::Lane::for_write(texts.len()));
    let mut flat = embed.embed_counted(&caller, texts, progress).await.map_err(embed_error)?.into_iter();
    Ok(Some(prepared.iter().map(|d| flat.by_ref().take(d.chunks.len()).collect()).collect()))
}

/// What a write answers: done now, or accepted as a background job (202).
pub enum Written<T> {
    Done(T),
    Queued(Box<Job>),
}

/// Where a write runs: in the request (charged, checked, maybe turned into a job), or inside a job
/// that was charged and checked when it was accepted.
#[derive(Clone, Copy)]
pub(super) enum Run<'a> {
    Request,
    Job(&'a AtomicUsize),
}

impl Run<'_> {
    fn progress(&self) -> Option<&AtomicUsize> {
        match self {
            Run::Request => None,
            Run::Job(p) => Some(p),
        }
    }
}

/// Validates, chunks, embeds and stores one document. One with more than `docs.job_threshold_chunks`
/// chunks is accepted as a job instead.
pub async fn write(ctx: &TenantCtx, input: DocumentInput) -> Result<Written<docs::WriteResult>, Error> {
    ctx.authorize(Op::DocumentWrite)?;
    write_as(ctx, input, Run::Request).await
}

pub(super) async fn write_as(ctx: &TenantCtx, input: DocumentInput, run: Run<'_>) -> Result<Written<docs::WriteResult>, Error> {
    let kept = matches!(run, Run::Request).then(|| input.clone());
    let prepared = prepare_all(ctx, vec![input]).await?.pop().ok_or_else(|| Error::internal(anyhow::anyhow!("no prepared document")))??;
    let bytes = prepared.content.len() as u64;
    if let Some(input) = kept {
        ctx.charge(ctx.costs().for_chunks(prepared.chunks.len()))?;
        ctx.check_storage(vec![prepared.path.clone()], bytes).await?;
        if jobs::should_queue(ctx, prepared.chunks.len()) {
            let input = serde_json::to_value(&input).map_err(Error::internal)?;
            return Ok(Written::Queued(Box::new(jobs::enqueue(ctx, jobs::KIND_DOCUMENT, input, 1, prepared.chunks.len()).await?)));
        }
    }
    let embeddings = embed_docs(ctx, &[&prepared], run.progress()).await?.map(|mut v| v.remove(0));
    let embedded_tokens: usize = prepared.chunks.iter().map(|c| c.llm_tokens).sum();
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let result = lease.blocking(move |h| h.with_writer(|c| Ok(search.upsert(c, prepared, embeddings)?))).await?;
    ctx.meter(Kind::DocumentWrite, 1, embedded_tokens as u64);
    ctx.wrote(result.created as u64, bytes);
    Ok(Written::Done(result))
}

/// Adds or replaces up to `docs.max_bulk_documents` documents; one bad item does not sink the batch.
/// A batch with more than `docs.job_threshold_chunks` chunks in all is accepted as a job instead.
pub async fn bulk(ctx: &TenantCtx, documents: Vec<serde_json::Value>) -> Result<Written<BulkResponse>, Error> {
    ctx.authorize(Op::DocumentBulk)?;
    let max = ctx.state().config.docs.max_bulk_documents;
    if documents.is_empty() || documents.len() > max {
        return Err(Error::validation(format!("documents must hold 1 to {max} items")));
    }
    ctx.charge(ctx.costs().bulk_document.saturating_mul(documents.len() as u32))?;
    bulk_as(ctx, documents, Run::Request).await
}

pub(super) async fn bulk_as(ctx: &TenantCtx, documents: Vec<serde_json::Value>, run: Run<'_>) -> Result<Written<BulkResponse>, Error> {
    let n = documents.len();
    let kept = matches!(run, Run::Request).then(|| documents.clone());
    let mut results: Vec<Option<BulkItemResult>> = vec![None; n];
    let mut inputs = Vec::new();
    let mut positions = Vec::new();
    for (i, raw) in documents.into_iter().enumerate() {
        match docs::parse_bulk_item(raw) {
            Ok(input) => {
                inputs.push(input);
                positions.push(i);
            }
            Err(e) => results[i] = Some(BulkItemResult::from_result(i, Err(e))),
        }
    }
    let prepared = prepare_all(ctx, inputs).await?;
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
        let chunks: usize = ok_docs.iter().map(|d| d.chunks.len()).sum();
        if let Some(documents) = kept {
            ctx.charge(ctx.costs().for_chunks(chunks))?;
            ctx.check_storage(ok_docs.iter().map(|d| d.path.clone()).collect(), bytes).await?;
            if jobs::should_queue(ctx, chunks) {
                return Ok(Written::Queued(Box::new(jobs::enqueue(ctx, jobs::KIND_BULK, serde_json::Value::Array(documents), n, chunks).await?)));
            }
        }
        let refs: Vec<&PreparedDocument> = ok_docs.iter().collect();
        let embeddings = embed_docs(ctx, &refs, run.progress()).await?;
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
        ctx.meter(Kind::DocumentWrite, ok as u64, tokens as u64);
    }
    let results: Vec<BulkItemResult> = results.into_iter().flatten().collect();
    let failed = results.iter().filter(|r| r.error.is_some()).count();
    Ok(Written::Done(BulkResponse { results, succeeded: n - failed, failed }))
}

/// One page of documents ordered by path. Reads come straight from SQLite: they never open the
/// derived search state.
pub async fn list(ctx: &TenantCtx, q: ListQuery) -> Result<docs::ListPage, Error> {
    ctx.authorize(Op::DocumentList)?;
    let lease = ctx.storage().await?;
    lease.blocking(move |h| h.with_reader(|c| Ok(docs::store::list(c, &q)?))).await
}

/// One stored document with its content.
pub async fn get(ctx: &TenantCtx, r: DocRef) -> Result<docs::Document, Error> {
    ctx.authorize(Op::DocumentGet)?;
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

/// Deletes one document, its chunks, index entries and embeddings, leaving no readable copy in the
/// tenant's files (zeroed pages, a checkpointed WAL, expunged index segments).
pub async fn delete(ctx: &TenantCtx, id: String) -> Result<(), Error> {
    ctx.authorize(Op::DocumentDelete)?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    lease
        .blocking(move |h| {
            h.with_writer(|c| Ok(search.delete(c, &id)?))?;
            // The deleted text must not stay readable in the database file or the WAL (see
            // `checkpoint_after_erasure`); its index segments are expunged when the writer idles.
            h.checkpoint_after_erasure()?;
            Ok(())
        })
        .await?;
    ctx.meter(Kind::DocumentDelete, 1, 0);
    ctx.deleted();
    Ok(())
}

/// Deletes every document under a path prefix (an empty prefix deletes everything).
pub async fn delete_prefix(ctx: &TenantCtx, prefix: Option<String>) -> Result<docs::DeleteResult, Error> {
    ctx.authorize(Op::DocumentDeletePrefix)?;
    let prefix =
        prefix.ok_or_else(|| Error::validation("path_prefix is required (use path_prefix= with care: an empty prefix deletes everything)"))?;
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    let r = lease
        .blocking(move |h| {
            let r = h.with_writer(|c| Ok(search.delete_by_prefix(c, &prefix)?))?;
            if r.deleted > 0 {
                h.checkpoint_after_erasure()?;
            }
            Ok(r)
        })
        .await?;
    ctx.meter(Kind::DocumentDelete, r.deleted as u64, 0);
    ctx.deleted();
    Ok(r)
}
