//! Search, context assembly and OpenAI-compatible embeddings. Queries embed through the shared
//! worker; the SQLite/Tantivy part runs on a blocking thread under the tenant's lease, admitted by
//! the bounded CPU queue (`[search]`), so a flood of queries is refused with 503 `overloaded`
//! rather than queued without bound.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// Runs a search step and returns its answer with the CPU microseconds it took on this thread (the
/// tenant's `cpu_search_us` cost).
fn measured<T>(f: impl FnOnce() -> Result<T, DocsError>) -> Result<(T, u64), Error> {
    let (out, cpu_us) = crate::cpu::cpu_micros(f);
    Ok((out?, cpu_us))
}

/// Embeds one query on the shared worker.
async fn embed_query(ctx: &TenantCtx, query: &str) -> Result<Vec<f32>, Error> {
    let caller = ctx.embed_caller(crate::embed::Lane::Interactive);
    let mut v = ctx.state().embed.embed_for(&caller, vec![query.to_string()]).await.map_err(embed_error)?;
    v.pop().ok_or_else(|| Error::internal(anyhow::anyhow!("embedder returned nothing")))
}

/// Hybrid, keyword or semantic search.
pub async fn search(ctx: &TenantCtx, req: SearchRequest) -> Result<SearchResponse, Error> {
    ctx.authorize(Op::Search)?;
    ctx.require_feature("search")?;
    ctx.check_query_quota().await?;
    req.validate()?;
    let qvec = if req.mode.needs_embedding() { Some(embed_query(ctx, &req.query).await?) } else { None };
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    // Admitted only for the query itself: opening a tenant or rebuilding its index never holds a slot.
    let _slot = ctx.state().search_cpu.admit(ctx.id(), ctx.entitlements().cpu_weight()).await?;
    let (resp, cpu_us) = lease.blocking(move |h| h.with_reader(|c| measured(|| search.search(c, &req, qvec.as_deref())))).await?;
    ctx.meter(Kind::Search, 1, 0);
    ctx.meter(Kind::CpuSearch, cpu_us, 0);
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
    let lease = ctx.storage().await?;
    let search = search_state(&lease).await?;
    // Admitted only for the query itself: opening a tenant or rebuilding its index never holds a slot.
    let _slot = ctx.state().search_cpu.admit(ctx.id(), ctx.entitlements().cpu_weight()).await?;
    let (resp, cpu_us) = lease.blocking(move |h| h.with_reader(|c| measured(|| search.assemble(c, &req, qvec.as_deref())))).await?;
    ctx.meter(Kind::Assemble, 1, resp.total_tokens as u64);
    ctx.meter(Kind::CpuSearch, cpu_us, 0);
    Ok(resp)
}

/// `POST /embeddings` body (OpenAI's shape).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    /// A string, an array of strings, an array of token ids, or an array of token-id arrays. Token ids
    /// are decoded with the `cl100k_base` vocabulary, which OpenAI's embedding models and the clients
    /// that pre-tokenise for them (LangChain's `OpenAIEmbeddings`) use.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `all-MiniLM-L6-v2` (optionally `sentence-transformers/…`), one of `embed.model_aliases`, or omitted.
    #[serde(default)]
    pub model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32, as OpenAI encodes it).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Only the model's own 384 (it is not a Matryoshka model).
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Accepted and ignored (OpenAI's end-user id).
    #[serde(default)]
    pub user: Option<String>,
}

/// One embedding: a list of floats, or their little-endian bytes in base64.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// One embedding of an [`EmbeddingsResponse`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    #[schema(value_type = Object)]
    pub embedding: Vector,
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
    pub model: String,
    pub usage: EmbeddingsUsage,
}

/// One model of `GET /models`, in OpenAI's shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
}

/// `GET /models` in OpenAI's shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelInfo>,
}

/// The embedding model and its configured aliases (`embed.model_aliases`).
pub fn models(ctx: &TenantCtx) -> Result<ModelList, Error> {
    ctx.authorize(Op::ModelsList)?;
    let names = std::iter::once(MODEL_NAME.to_string()).chain(ctx.state().config.embed.model_aliases.iter().cloned());
    Ok(ModelList { object: "list", data: names.map(|id| ModelInfo { id, object: "model", created: 0, owned_by: "warren" }).collect() })
}

const INPUT_SHAPE: &str = "input must be a string, an array of strings, an array of token ids, or an array of token-id arrays";

/// The texts of an OpenAI `input`: strings as they are, token ids decoded with `cl100k_base`.
pub fn input_texts(input: &Value) -> Result<Vec<String>, Error> {
    fn tokens(v: &[Value], at: &str) -> Result<String, Error> {
        let ids = v
            .iter()
            .map(|t| {
                t.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| Error::validation(format!("{at}: token ids are non-negative integers")))
            })
            .collect::<Result<Vec<u32>, Error>>()?;
        tiktoken_rs::cl100k_base_singleton().decode(ids).map_err(|_| Error::validation(format!("{at}: not valid cl100k_base token ids")))
    }
    match input {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if items.is_empty() => Err(Error::validation(format!("{INPUT_SHAPE}; it is empty"))),
        Value::Array(items) if items.iter().all(Value::is_string) => Ok(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
        Value::Array(items) if items.iter().all(Value::is_number) => Ok(vec![tokens(items, "input")?]),
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v.as_array() {
                Some(ids) if !ids.is_empty() => tokens(ids, &format!("input[{i}]")),
                _ => Err(Error::validation(format!("input[{i}]: a token-id array must not be empty"))),
            })
            .collect(),
        _ => Err(Error::validation(INPUT_SHAPE)),
    }
}

fn base64_f32(v: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// OpenAI-compatible embeddings with all-MiniLM-L6-v2 (384 dimensions).
pub async fn embeddings(ctx: &TenantCtx, req: EmbeddingsRequest) -> Result<EmbeddingsResponse, Error> {
    ctx.authorize(Op::Embeddings)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("") | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(Error::validation(format!("encoding_format: {other:?} is not \"float\" or \"base64\""))),
    };
    let aliases = &ctx.state().config.embed.model_aliases;
    if let Some(m) = req.model.as_deref().filter(|m| !m.is_empty()) {
        if !m.ends_with(MODEL_NAME) && !aliases.iter().any(|a| a == m) {
            let mut known = vec![MODEL_NAME.to_string()];
            known.extend(aliases.iter().cloned());
            return Err(Error::validation(format!("model: {m:?} is not served here; use one of {known:?} (aliases: embed.model_aliases)")));
        }
    }
    if let Some(d) = req.dimensions.filter(|d| *d != crate::embed::DIM) {
        return Err(Error::validation(format!(
            "dimensions: {MODEL_NAME} has {} dimensions and is not a Matryoshka model, so it cannot return {d}; omit dimensions",
            crate::embed::DIM
        )));
    }
    // Decoding token ids builds the cl100k_base tables on first use: off the async runtime.
    let input = req.input;
    let inputs = tokio::task::spawn_blocking(move || input_texts(&input)).await??;
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(Error::validation(format!("input must hold 1 to {MAX_EMBED_INPUTS} items")));
    }
    ctx.charge(ctx.costs().embeddings.saturating_mul(inputs.len() as u32 - 1))?;
    let embed = &ctx.state().embed;
    let tokenizer = embed.tokenizer().ok_or_else(|| Error::from(DocsError::EmbeddingsUnavailable))?;
    let counted = inputs.clone();
    let prompt_tokens: usize =
        tokio::task::spawn_blocking(move || counted.iter().map(|t| tokenizer.encode(t.as_str(), true).map(|e| e.len()).unwrap_or(0)).sum()).await?;
    let caller = ctx.embed_caller(crate::embed::Lane::for_write(inputs.len()));
    let vectors = embed.embed_for(&caller, inputs).await.map_err(embed_error)?;
    ctx.meter(Kind::Embedding, 1, prompt_tokens as u64);
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| Embedding { object: "embedding", index, embedding: if base64 { Vector::Base64(base64_f32(&v)) } else { Vector::Float(v) } })
        .collect();
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: MODEL_NAME.to_string(),
        usage: EmbeddingsUsage { prompt_tokens, total_tokens: prompt_tokens },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_openai_input_shape_is_read_and_bad_ones_say_what_is_wrong() {
        assert_eq!(input_texts(&json!("hello")).unwrap(), vec!["hello"]);
        assert_eq!(input_texts(&json!(["a", "b"])).unwrap(), vec!["a", "b"]);
        let bpe = tiktoken_rs::cl100k_base_singleton();
        let ids: Vec<u32> = bpe.encode_ordinary("rabbits dig warrens");
        assert_eq!(input_texts(&json!(ids)).unwrap(), vec!["rabbits dig warrens"]);
        let two = json!([bpe.encode_ordinary("one"), bpe.encode_ordinary("two words")]);
        assert_eq!(input_texts(&two).unwrap(), vec!["one", "two words"]);
        for bad in [json!([]), json!([1, "x"]), json!([[]]), json!({"a": 1}), json!([-1]), json!([[1.5]]), json!(7)] {
            let e = input_texts(&bad).unwrap_err();
            assert_eq!(e.code(), Code::ValidationFailed, "{bad}");
            assert!(!e.to_string().contains("enum") && !e.to_string().contains("variant"), "{e}");
        }
    }

    #[test]
    fn base64_is_little_endian_f32() {
        use base64::Engine;
        let v = [1.0f32, -0.5, 0.25];
        let bytes = base64::engine::general_purpose::STANDARD.decode(base64_f32(&v)).unwrap();
        let back: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(back, v);
    }
}
