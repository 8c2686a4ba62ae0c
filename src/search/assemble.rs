//! Token-budgeted context assembly (`POST /api/v1/context/assemble`).
//!
//! 1. **Candidates**: the best chunks for the query (hybrid when a query embedding is given,
//!    keyword otherwise — assembly degrades instead of failing without the model).
//! 2. **Selection** by MMR (maximal marginal relevance, λ = [`MMR_LAMBDA`]): each step takes the
//!    chunk maximising `λ·relevance − (1−λ)·max similarity to what is already selected`.
//!    Similarity is the cosine of chunk embeddings (word-set Jaccard without them); a candidate at
//!    or above [`NEAR_DUPLICATE`] similarity to a selected chunk is dropped as a near-duplicate.
//!    Selection stops when the estimated tokens (stored per-chunk o200k counts plus label
//!    overhead) reach the budget, or `max_documents` documents are in.
//! 3. **Rendering**: documents by best score; inside a document, chunks in document order, with
//!    adjacent or overlapping chunks merged into one span of the original text (so windows'
//!    overlaps are not repeated) and `[…]` between non-adjacent spans. Each document is wrapped in
//!    `<source path="…">…</source>` (plus title and metadata with `include_metadata`).
//! 4. **Exact budget**: the final string is counted with o200k_base (`tiktoken-rs`), labels
//!    included. While it exceeds `max_tokens`, the last-selected chunk is dropped; a single chunk
//!    that alone exceeds the budget is cut to fit at a token boundary. The answer therefore never
//!    exceeds `max_tokens`, and `total_tokens` is the exact count of `context`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::{ms, Filter, Fusion, SearchMode, TenantSearch};
use crate::docs::store::{self, ChunkRow};
use crate::docs::{llm_tokens, DocsError, Result};

/// The tokenizer named in responses.
pub const TOKEN_COUNTER: &str = "o200k_base";
/// Upper bound on `max_tokens`.
pub const MAX_ASSEMBLE_TOKENS: usize = 200_000;
/// Upper bound on `max_documents`.
pub const MAX_DOCUMENTS: usize = 100;
pub const MMR_LAMBDA: f32 = 0.75;
pub const NEAR_DUPLICATE: f32 = 0.95;

/// `POST /api/v1/context/assemble` body (ContextLite's request shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssembleRequest {
    /// The question or task the context is for (at most 4096 bytes).
    #[schema(pattern = r"\S", max_length = 1024)]
    pub query: String,
    /// Token budget (o200k_base), 1 to 200,000.
    #[schema(minimum = 1, maximum = 200000)]
    pub max_tokens: usize,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub max_documents: Option<usize>,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub include_metadata: Option<bool>,
}

impl AssembleRequest {
    pub fn validate(&self) -> Result<()> {
        if self.query.trim().is_empty() {
            return Err(DocsError::invalid("query", "must not be empty"));
        }
        if self.query.len() > super::MAX_QUERY_BYTES {
            return Err(DocsError::invalid("query", format!("at most {} bytes", super::MAX_QUERY_BYTES)));
        }
        if self.max_tokens == 0 || self.max_tokens > MAX_ASSEMBLE_TOKENS {
            return Err(DocsError::invalid("max_tokens", format!("must be between 1 and {MAX_ASSEMBLE_TOKENS}")));
        }
        if let Some(m) = self.max_documents {
            if m == 0 || m > MAX_DOCUMENTS {
                return Err(DocsError::invalid("max_documents", format!("must be between 1 and {MAX_DOCUMENTS}")));
            }
        }
        self.filter.as_ref().map_or(Ok(()), super::request::Filter::validate)
    }
}

/// One document of an assembled context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssembledDocument {
    pub id: String,
    pub path: String,
    /// Best score among its selected chunks.
    pub score: f32,
    /// o200k tokens of its labelled section.
    pub tokens: usize,
    /// Ids of its selected chunks, in document order.
    pub chunks: Vec<i64>,
}

/// `POST /api/v1/context/assemble` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssembleResponse {
    pub context: String,
    /// Exact o200k_base count of `context` (≤ `max_tokens`).
    pub total_tokens: usize,
    pub documents: Vec<AssembledDocument>,
    pub token_counter: String,
    pub query_time_ms: f64,
}

struct Cand {
    row: ChunkRow,
    score: f32,
    rel: f32,
    words: HashSet<String>,
    vec: Option<Vec<f32>>,
    /// Replacement text when the chunk had to be cut to fit.
    cut: Option<String>,
}

fn words(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn similarity(a: &Cand, b: &Cand) -> f32 {
    if let (Some(x), Some(y)) = (&a.vec, &b.vec) {
        return super::vectors::dot(x, y);
    }
    let inter = a.words.intersection(&b.words).count() as f32;
    let union = (a.words.len() + b.words.len()) as f32 - inter;
    if union > 0.0 {
        inter / union
    } else {
        1.0
    }
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Selection + rendering state, re-rendered after each budget fix.
struct Rendered {
    context: String,
    documents: Vec<AssembledDocument>,
}

fn render(conn: &Connection, cands: &[Cand], selected: &[usize], include_metadata: bool) -> Result<Rendered> {
    // Group by document, documents ordered by best score.
    let mut order: Vec<i64> = Vec::new();
    let mut by_doc: HashMap<i64, Vec<usize>> = HashMap::new();
    let mut best: HashMap<i64, f32> = HashMap::new();
    for &i in selected {
        let seq = cands[i].row.doc_seq;
        if !by_doc.contains_key(&seq) {
            order.push(seq);
        }
        by_doc.entry(seq).or_default().push(i);
        let b = best.entry(seq).or_insert(f32::NEG_INFINITY);
        *b = b.max(cands[i].score);
    }
    order.sort_by(|a, b| best[b].total_cmp(&best[a]).then(a.cmp(b)));
    let mut sections = Vec::new();
    let mut documents = Vec::new();
    for seq in order {
        let mut idx = by_doc.remove(&seq).unwrap_or_default();
        idx.sort_by_key(|&i| (cands[i].row.start, cands[i].row.end));
        let first = &cands[idx[0]].row;
        let mut head = format!("<source path=\"{}\"", escape_attr(&first.path));
        if include_metadata {
            if let Some(t) = &first.title {
                head.push_str(&format!(" title=\"{}\"", escape_attr(t)));
            }
            if !first.metadata.is_empty() {
                let m = serde_json::Value::Object(first.metadata.clone()).to_string();
                head.push_str(&format!(" metadata=\"{}\"", escape_attr(&m)));
            }
        }
        head.push('>');
        // Merge adjacent/overlapping chunks into spans of the original text.
        let mut spans: Vec<(usize, usize, Vec<usize>)> = Vec::new();
        for &i in &idx {
            let r = &cands[i].row;
            match spans.last_mut() {
                Some(last) if cands[i].cut.is_none() && cands[*last.2.last().unwrap_or(&i)].cut.is_none() && r.start <= last.1 + 2 => {
                    last.1 = last.1.max(r.end);
                    last.2.push(i);
                }
                _ => spans.push((r.start, r.end, vec![i])),
            }
        }
        let mut parts = Vec::new();
        for (s, e, members) in &spans {
            let text = if members.len() == 1 {
                let c = &cands[members[0]];
                c.cut.clone().unwrap_or_else(|| c.row.text.clone())
            } else {
                match store::content_slice(conn, seq, *s, *e)? {
                    Some(t) => t,
                    None => members.iter().map(|&i| cands[i].row.text.as_str()).collect::<Vec<_>>().join("\n"),
                }
            };
            parts.push(text.trim().to_string());
        }
        let section = format!("{head}\n{}\n</source>", parts.join("\n[…]\n"));
        documents.push(AssembledDocument {
            id: first.document_id.clone(),
            path: first.path.clone(),
            score: best[&seq],
            tokens: llm_tokens(&section),
            chunks: idx.iter().map(|&i| cands[i].row.id).collect(),
        });
        sections.push(section);
    }
    Ok(Rendered { context: sections.join("\n\n"), documents })
}

/// Cuts `text` to at most `n` o200k tokens (at a char boundary).
fn cut_to_tokens(text: &str, n: usize) -> String {
    let bpe = tiktoken_rs::o200k_base_singleton();
    let toks = bpe.encode_ordinary(text);
    if toks.len() <= n {
        return text.to_string();
    }
    let bytes: usize = bpe._decode_native_and_split(toks[..n].to_vec()).map(|b| b.len()).sum();
    let mut end = bytes.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

pub(crate) fn assemble(ts: &TenantSearch, conn: &Connection, req: &AssembleRequest, qvec: Option<&[f32]>) -> Result<AssembleResponse> {
    let t0 = Instant::now();
    req.validate()?;
    let empty = |t0: Instant| AssembleResponse {
        context: String::new(),
        total_tokens: 0,
        documents: Vec::new(),
        token_counter: TOKEN_COUNTER.into(),
        query_time_ms: ms(t0),
    };
    let allowed = ts.allowed(conn, req.filter.as_ref())?;
    if allowed.as_ref().is_some_and(HashSet::is_empty) {
        return Ok(empty(t0));
    }
    let mode = if qvec.is_some() { SearchMode::Hybrid } else { SearchMode::Keyword };
    let n_cands = (req.max_tokens / 100).clamp(30, 100);
    let (ranked, _) = ts.rank(conn, &req.query, mode, &Fusion::default(), qvec, allowed.as_ref(), n_cands, false)?;
    let ranked: Vec<_> = ranked.into_iter().take(n_cands).collect();
    let ids: Vec<i64> = ranked.iter().map(|h| h.chunk_id).collect();
    let mut rows = store::chunk_rows(conn, &ids)?;
    let vecs = if qvec.is_some() { ts.with_vectors(conn, |c| c.get_many(&ids))? } else { HashMap::new() };
    let (lo, hi) = ranked.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| (l.min(x.score), h.max(x.score)));
    let mut cands: Vec<Cand> = Vec::new();
    for h in &ranked {
        let Some(row) = rows.remove(&h.chunk_id) else { continue };
        let rel = if hi > lo { (h.score - lo) / (hi - lo) } else { 1.0 };
        cands.push(Cand { words: words(&row.text), vec: vecs.get(&h.chunk_id).cloned(), row, score: h.score, rel, cut: None });
    }
    if cands.is_empty() {
        return Ok(empty(t0));
    }

    // MMR selection under an estimated budget.
    let include_metadata = req.include_metadata.unwrap_or(false);
    let label_cost = |c: &Cand| llm_tokens(&c.row.path) + 12 + if include_metadata { 8 + c.row.metadata.len() * 8 } else { 0 };
    let mut selected: Vec<usize> = Vec::new();
    let mut docs_in: HashSet<i64> = HashSet::new();
    let mut remaining: Vec<usize> = (0..cands.len()).collect();
    let mut est = 0usize;
    let max_docs = req.max_documents.unwrap_or(MAX_DOCUMENTS);
    while !remaining.is_empty() {
        let mut best: Option<(f32, usize)> = None;
        let mut drop_now: Vec<usize> = Vec::new();
        for (pos, &i) in remaining.iter().enumerate() {
            let c = &cands[i];
            let new_doc = !docs_in.contains(&c.row.doc_seq);
            if new_doc && docs_in.len() >= max_docs {
                drop_now.push(pos);
                continue;
            }
            let cost = c.row.llm_tokens + 3 + if new_doc { label_cost(c) } else { 0 };
            if est + cost > req.max_tokens && !selected.is_empty() {
                drop_now.push(pos);
                continue;
            }
            let max_sim = selected.iter().map(|&j| similarity(c, &cands[j])).fold(0.0f32, f32::max);
            if max_sim >= NEAR_DUPLICATE {
                drop_now.push(pos);
                continue;
            }
            let mmr = MMR_LAMBDA * c.rel - (1.0 - MMR_LAMBDA) * max_sim;
            if best.is_none_or(|(b, _)| mmr > b) {
                best = Some((mmr, pos));
            }
        }
        let Some((_, pos)) = best else { break };
        let i = remaining[pos];
        let c = &cands[i];
        let new_doc = docs_in.insert(c.row.doc_seq);
        est += c.row.llm_tokens + 3 + if new_doc { label_cost(c) } else { 0 };
        selected.push(i);
        drop_now.push(pos);
        drop_now.sort_unstable();
        drop_now.dedup();
        for p in drop_now.into_iter().rev() {
            remaining.remove(p);
        }
        if est >= req.max_tokens {
            break;
        }
    }

    // Exact budget: drop the last-selected chunk while over; cut the last one standing.
    loop {
        if selected.is_empty() {
            return Ok(empty(t0));
        }
        let r = render(conn, &cands, &selected, include_metadata)?;
        let total = llm_tokens(&r.context);
        if total <= req.max_tokens {
            return Ok(AssembleResponse {
                context: r.context,
                total_tokens: total,
                documents: r.documents,
                token_counter: TOKEN_COUNTER.into(),
                query_time_ms: ms(t0),
            });
        }
        if selected.len() > 1 {
            selected.pop();
            continue;
        }
        let i = selected[0];
        let current = cands[i].cut.clone().unwrap_or_else(|| cands[i].row.text.clone());
        let have = llm_tokens(&current);
        let over = total - req.max_tokens;
        if have <= over + 1 {
            return Ok(empty(t0));
        }
        // Cut by the overshoot plus a small margin for the ellipsis and boundary effects.
        cands[i].cut = Some(cut_to_tokens(&current, have - over - 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_tokens_and_utf8() {
        let s = "héllo wörld ".repeat(50);
        let c = cut_to_tokens(&s, 10);
        assert!(llm_tokens(&c) <= 12);
        assert_eq!(cut_to_tokens("short", 10), "short");
        let _ = cut_to_tokens("漢字漢字漢字", 1);
    }
}
