//! Keyword (Tantivy BM25), semantic (exact cosine) and hybrid search, and context assembly.
//!
//! [`TenantSearch`] is a tenant's *derived* search state: the Tantivy index in
//! `<tenant dir>/index/` and an in-memory vector cache, both rebuildable from the tenant's SQLite
//! file (the source of truth, see [`crate::docs`]). It holds no `IndexWriter` and no threads, so
//! hundreds of tenants can be open at once; every write batch creates a writer, commits, drops it.
//!
//! All methods are synchronous and meant for a blocking thread. Query embeddings are computed by
//! the async caller beforehand (through the embedding service) and passed in; a semantic or
//! hybrid request without one fails with [`DocsError::EmbeddingsUnavailable`].
//!
//! Writes: SQLite commits first, then the index and the cache are updated. If the index update
//! fails (or the process dies in between), the write generation stored in the index's commit
//! payload no longer matches SQLite's and the index is rebuilt on the next open (or on the next
//! call, for an in-process failure). Every hit is re-read from SQLite before it is returned, so a
//! chunk that no longer exists there never comes back from search.

pub mod assemble;
pub mod fusion;
pub(crate) mod index;
mod request;
pub(crate) mod vectors;

pub use request::{Filter, GroupBy, HybridOptions, SearchMode, SearchRequest, SearchResponse, SearchResult, SearchStats};

#[cfg(test)]
#[path = "../../benches/scifact/harness.rs"]
mod scifact_harness;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;
use serde_json::Map;

use crate::docs::{self, store, DeleteResult, PreparedDocument, WriteResult};
pub use crate::docs::{DocsError, Result};
pub use assemble::{AssembleRequest, AssembleResponse, AssembledDocument};
pub use fusion::{Fusion, FusionMethod, Normalization};
use index::{IndexEntry, KeywordIndex};
use vectors::VectorCache;

/// Dimension of the stored embeddings (all-MiniLM-L6-v2).
pub const EMBEDDING_DIM: usize = 384;
/// Maximum `limit` of a search.
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_LIMIT: usize = 10;
/// Maximum query length in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;

/// A candidate chunk from one retriever.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit {
    pub chunk_id: i64,
    pub doc_seq: i64,
    /// The ranking value (for hybrid: the fused one).
    pub score: f32,
    /// The raw BM25 and cosine this hit had in each retriever's list.
    pub keyword: Option<f32>,
    pub semantic: Option<f32>,
}

/// The 0–1 score a result shows: the one part of a single-retriever mode, or the weighted blend of
/// both parts (see [`fusion`]).
pub(crate) fn shown_score(f: &Fusion, mode: SearchMode, h: &Hit) -> f32 {
    match mode {
        SearchMode::Keyword => h.keyword.map(|s| fusion::keyword_part(s, f.keyword_half)).unwrap_or(0.0),
        SearchMode::Semantic => h.semantic.map(fusion::semantic_part).unwrap_or(0.0),
        SearchMode::Hybrid => f.display(h.keyword, h.semantic),
    }
}

/// Per-tenant derived search state (Send + Sync). See the module docs.
pub struct TenantSearch {
    tenant_dir: PathBuf,
    index: RwLock<Arc<KeywordIndex>>,
    vectors: RwLock<Option<VectorCache>>,
    /// Serialises writes and rebuilds of the derived state.
    write: Mutex<()>,
    /// Set when an index update failed after SQLite committed: rebuild before the next use.
    stale: AtomicBool,
}

fn index_dir(tenant_dir: &Path) -> PathBuf {
    tenant_dir.join("index")
}

/// Builds a fresh index from SQLite into `<tenant>/index.building`, then swaps it into place.
fn build_index(tenant_dir: &Path, conn: &Connection) -> Result<KeywordIndex> {
    let tmp = tenant_dir.join("index.building");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    {
        let built = KeywordIndex::create(&tmp)?;
        // One read transaction: the generation and the chunks come from the same snapshot.
        let tx = conn.unchecked_transaction().ok();
        let generation = store::generation(conn)?;
        let mut writer: tantivy::IndexWriter<tantivy::TantivyDocument> = built.index.writer_with_num_threads(1, 64_000_000)?;
        let f = built.fields;
        store::for_each_chunk(conn, |id, seq, text| {
            let mut d = tantivy::TantivyDocument::default();
            d.add_u64(f.chunk_id, id as u64);
            d.add_u64(f.doc_seq, seq as u64);
            d.add_text(f.text, &text);
            writer.add_document(d)?;
            Ok(())
        })?;
        drop(tx);
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&generation.to_string());
        prepared.commit()?;
        writer.wait_merging_threads()?;
    }
    let dir = index_dir(tenant_dir);
    if dir.exists() {
        let old = tenant_dir.join(format!("index.old-{}", ulid::Ulid::new()));
        std::fs::rename(&dir, &old)?;
        std::fs::rename(&tmp, &dir)?;
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(error = %e, "could not remove the previous index directory");
        }
    } else {
        std::fs::rename(&tmp, &dir)?;
    }
    let (idx, _) = KeywordIndex::open(&dir)?;
    Ok(idx)
}

impl TenantSearch {
    /// Opens the tenant's derived state: the index in `<tenant_dir>/index/` is opened, or rebuilt
    /// from SQLite if it is missing, corrupt, of another schema, or behind SQLite. The vector
    /// cache is loaded lazily on the first semantic query.
    pub fn open(tenant_dir: &Path, conn: &Connection) -> Result<TenantSearch> {
        let dir = index_dir(tenant_dir);
        let generation = store::generation(conn)?;
        let opened = if dir.join("meta.json").exists() {
            match KeywordIndex::open(&dir) {
                Ok((idx, payload)) if payload == Some(generation) => Some(idx),
                Ok((_, payload)) => {
                    tracing::warn!(?payload, generation, dir = %dir.display(), "search index is stale; rebuilding");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, dir = %dir.display(), "search index unreadable; rebuilding");
                    None
                }
            }
        } else {
            None
        };
        let idx = match opened {
            Some(i) => i,
            None => build_index(tenant_dir, conn)?,
        };
        Ok(TenantSearch {
            tenant_dir: tenant_dir.to_path_buf(),
            index: RwLock::new(Arc::new(idx)),
            vectors: RwLock::new(None),
            write: Mutex::new(()),
            stale: AtomicBool::new(false),
        })
    }

    /// Rebuilds the index from SQLite (`warren tenant reindex`) and drops the vector cache.
    /// Returns the number of indexed chunks.
    pub fn rebuild(&self, conn: &Connection) -> Result<u64> {
        let _w = self.write.lock();
        self.rebuild_locked(conn)
    }

    fn rebuild_locked(&self, conn: &Connection) -> Result<u64> {
        self.index.read().close_writer();
        let idx = build_index(&self.tenant_dir, conn)?;
        let n = idx.num_docs();
        *self.index.write() = Arc::new(idx);
        *self.vectors.write() = None;
        self.stale.store(false, Ordering::SeqCst);
        Ok(n)
    }

    fn ensure_fresh(&self, conn: &Connection) -> Result<()> {
        if self.stale.load(Ordering::SeqCst) {
            let _w = self.write.lock();
            if self.stale.load(Ordering::SeqCst) {
                self.rebuild_locked(conn)?;
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> SearchStats {
        SearchStats { indexed_chunks: self.index.read().num_docs(), cached_vectors: self.vectors.read().as_ref().map(VectorCache::len) }
    }

    /// Applies a committed write to the index and the vector cache. `expunge` (deletes): the deleted
    /// chunks' segments are rewritten without them once the writer goes idle.
    fn apply_derived(&self, conn: &Connection, touched: &[i64], added: &[store::StoredChunk], generation: i64, expunge: bool) {
        let entries: Vec<IndexEntry<'_>> = added.iter().map(|c| IndexEntry { chunk_id: c.id, doc_seq: c.doc_seq, text: &c.index_text }).collect();
        let idx = self.index.read().clone();
        if let Err(e) = idx.apply(touched, &entries, generation, expunge) {
            tracing::error!(error = %e, "index update failed; the index will be rebuilt");
            self.stale.store(true, Ordering::SeqCst);
            if let Err(e) = self.rebuild_locked(conn) {
                tracing::error!(error = %e, "index rebuild failed; retrying on next use");
            }
        }
        let mut cache = self.vectors.write();
        if let Some(c) = cache.as_mut() {
            c.remove_docs(&touched.iter().copied().collect());
            for s in added {
                if let Some(v) = &s.vector {
                    c.push(s.id, s.doc_seq, v);
                }
            }
        }
    }

    /// Inserts or replaces (by path) one document. `embeddings` are the vectors of
    /// [`PreparedDocument::embedding_inputs`], or `None` when the model is unavailable.
    pub fn upsert(&self, conn: &mut Connection, doc: PreparedDocument, embeddings: Option<Vec<Vec<f32>>>) -> Result<WriteResult> {
        self.upsert_many(conn, vec![(doc, embeddings)]).pop().unwrap_or_else(|| Err(DocsError::Internal("no result".into())))
    }

    /// Upserts a batch in one transaction (one savepoint per item, so a failing item does not
    /// sink the others) and one index commit. Results are in input order.
    pub fn upsert_many(&self, conn: &mut Connection, items: Vec<(PreparedDocument, Option<Vec<Vec<f32>>>)>) -> Vec<Result<WriteResult>> {
        let _w = self.write.lock();
        if let Err(e) = self.ensure_fresh_locked(conn) {
            return items.iter().map(|_| Err(e.duplicate())).collect();
        }
        let n = items.len();
        let outcome = (|| -> Result<(Vec<Result<WriteResult>>, Vec<i64>, Vec<store::StoredChunk>, i64)> {
            let mut tx = conn.transaction()?;
            let mut results = Vec::with_capacity(n);
            let mut by_doc: HashMap<i64, Vec<store::StoredChunk>> = HashMap::new();
            for (doc, emb) in &items {
                let sp = tx.savepoint()?;
                match store::upsert(&sp, doc, emb.as_deref(), EMBEDDING_DIM) {
                    Ok((r, seq, chunks)) => {
                        sp.commit()?;
                        by_doc.insert(seq, chunks);
                        results.push(Ok(r));
                    }
                    Err(e) => {
                        drop(sp); // rolls back this item only
                        results.push(Err(e));
                    }
                }
            }
            if by_doc.is_empty() {
                // Nothing changed: keep the generation, so the index stays current.
                tx.commit()?;
                return Ok((results, Vec::new(), Vec::new(), 0));
            }
            let generation = store::bump_generation(&tx)?;
            crate::faults::point("write.in_tx");
            tx.commit()?;
            crate::faults::point("write.committed");
            let touched: Vec<i64> = by_doc.keys().copied().collect();
            let added: Vec<store::StoredChunk> = by_doc.into_values().flatten().collect();
            Ok((results, touched, added, generation))
        })();
        match outcome {
            Ok((results, touched, added, generation)) => {
                if !touched.is_empty() {
                    self.apply_derived(conn, &touched, &added, generation, false);
                }
                results
            }
            Err(e) => (0..n).map(|_| Err(e.duplicate())).collect(),
        }
    }

    fn ensure_fresh_locked(&self, conn: &Connection) -> Result<()> {
        if self.stale.load(Ordering::SeqCst) {
            self.rebuild_locked(conn)?;
        }
        Ok(())
    }

    /// Deletes a document by id (`NotFound` if absent).
    pub fn delete(&self, conn: &mut Connection, id: &str) -> Result<()> {
        let _w = self.write.lock();
        self.ensure_fresh_locked(conn)?;
        let tx = conn.transaction()?;
        let seq = store::delete_by_id(&tx, id)?;
        let generation = store::bump_generation(&tx)?;
        tx.commit()?;
        self.apply_derived(conn, &[seq], &[], generation, true);
        Ok(())
    }

    /// Deletes every document whose path starts with `prefix` (which must be non-empty).
    pub fn delete_by_prefix(&self, conn: &mut Connection, prefix: &str) -> Result<DeleteResult> {
        if prefix.is_empty() {
            return Err(DocsError::invalid("path_prefix", "must be non-empty"));
        }
        let _w = self.write.lock();
        self.ensure_fresh_locked(conn)?;
        let tx = conn.transaction()?;
        let seqs = store::delete_by_prefix(&tx, prefix)?;
        if seqs.is_empty() {
            return Ok(DeleteResult { deleted: 0 });
        }
        let generation = store::bump_generation(&tx)?;
        tx.commit()?;
        self.apply_derived(conn, &seqs, &[], generation, true);
        Ok(seqs.into())
    }

    /// Chunks stored without an embedding (model was unavailable): `(chunk_id, text to embed)`.
    pub fn missing_embeddings(&self, conn: &Connection, limit: usize) -> Result<Vec<(i64, String)>> {
        store::chunks_missing_embeddings(conn, limit)
    }

    /// Stores back-filled embeddings for existing chunks; returns how many were stored.
    pub fn backfill_embeddings(&self, conn: &mut Connection, items: Vec<(i64, Vec<f32>)>) -> Result<usize> {
        let _w = self.write.lock();
        let tx = conn.transaction()?;
        let stored = store::store_embeddings(&tx, items, EMBEDDING_DIM)?;
        tx.commit()?;
        let mut cache = self.vectors.write();
        if let Some(c) = cache.as_mut() {
            c.remove_chunks(&stored.iter().map(|s| s.0).collect());
            for (id, seq, v) in &stored {
                c.push(*id, *seq, v);
            }
        }
        Ok(stored.len())
    }

    /// Keyword candidates: `(chunk hits, the query for highlights)`.
    pub(crate) fn keyword_hits(
        &self,
        query: &str,
        depth: usize,
        allowed: Option<&HashSet<i64>>,
    ) -> Result<(Vec<Hit>, Option<(Arc<KeywordIndex>, Box<dyn tantivy::query::Query>)>)> {
        let idx = self.index.read().clone();
        let Some(q) = idx.build_query(query, allowed) else {
            return Ok((Vec::new(), None));
        };
        let hits = idx
            .search(q.as_ref(), depth)?
            .into_iter()
            .map(|(chunk_id, doc_seq, score)| Hit { chunk_id, doc_seq, score, keyword: Some(score), semantic: None })
            .collect();
        Ok((hits, Some((idx, q))))
    }

    /// Semantic candidates by exact cosine.
    pub(crate) fn semantic_hits(&self, conn: &Connection, qvec: &[f32], depth: usize, allowed: Option<&HashSet<i64>>) -> Result<Vec<Hit>> {
        if qvec.len() != EMBEDDING_DIM {
            return Err(DocsError::Internal(format!("query embedding has dimension {}", qvec.len())));
        }
        self.with_vectors(conn, |c| {
            c.top_k(qvec, depth, allowed)
                .into_iter()
                .map(|(chunk_id, doc_seq, score)| Hit { chunk_id, doc_seq, score, keyword: None, semantic: Some(score) })
                .collect()
        })
    }

    /// Runs `f` on the vector cache, loading it from SQLite first if needed.
    pub(crate) fn with_vectors<T>(&self, conn: &Connection, f: impl FnOnce(&VectorCache) -> T) -> Result<T> {
        {
            let g = self.vectors.read();
            if let Some(c) = g.as_ref() {
                return Ok(f(c));
            }
        }
        let mut g = self.vectors.write();
        if g.is_none() {
            let (ids, seqs, data) = store::load_vectors(conn, EMBEDDING_DIM)?;
            *g = Some(VectorCache::new(EMBEDDING_DIM, ids, seqs, data));
        }
        let g = parking_lot::RwLockWriteGuard::downgrade(g);
        match g.as_ref() {
            Some(c) => Ok(f(c)),
            None => Err(DocsError::Internal("vector cache missing".into())),
        }
    }

    /// Allowed document seqs for a filter (`None` = no restriction).
    pub(crate) fn allowed(&self, conn: &Connection, filter: Option<&Filter>) -> Result<Option<HashSet<i64>>> {
        match filter {
            Some(f) if !f.is_empty() => {
                let empty = Map::new();
                let meta = f.metadata.as_ref().unwrap_or(&empty);
                Ok(Some(store::filter_doc_seqs(conn, f.path_prefix.as_deref().filter(|p| !p.is_empty()), meta)?))
            }
            _ => Ok(None),
        }
    }

    /// Ranked `(chunk_id, doc_seq, score)` for a request — the retrieval core shared by search
    /// and assembly. With `group_by_doc`, each retriever's list is first reduced to one entry per
    /// document (its best chunk) and the documents are fused.
    pub(crate) fn rank(
        &self,
        conn: &Connection,
        query: &str,
        mode: SearchMode,
        fusion: &Fusion,
        qvec: Option<&[f32]>,
        allowed: Option<&HashSet<i64>>,
        limit: usize,
        group_by_doc: bool,
    ) -> Result<(Vec<Hit>, Option<(Arc<KeywordIndex>, Box<dyn tantivy::query::Query>)>)> {
        // Depth of each retriever's list: deeper lists help fusion; chunks per document ≈ 2–3.
        let depth = if group_by_doc { (limit * 4).clamp(200, 600) } else { (limit * 2).clamp(100, 300) };
        let (kw, hq) = if mode != SearchMode::Semantic { self.keyword_hits(query, depth, allowed)? } else { (Vec::new(), None) };
        let sem = if mode != SearchMode::Keyword {
            let q = qvec.ok_or(DocsError::EmbeddingsUnavailable)?;
            self.semantic_hits(conn, q, depth, allowed)?
        } else {
            Vec::new()
        };
        let group = |hits: &[Hit]| -> Vec<Hit> {
            let mut seen = HashSet::new();
            hits.iter().filter(|h| seen.insert(h.doc_seq)).copied().collect()
        };
        let (kw, sem) = if group_by_doc { (group(&kw), group(&sem)) } else { (kw, sem) };
        let ranked: Vec<Hit> = match mode {
            SearchMode::Keyword => kw,
            SearchMode::Semantic => sem,
            SearchMode::Hybrid => {
                let key = |h: &Hit| if group_by_doc { h.doc_seq } else { h.chunk_id };
                let a: Vec<(i64, f32)> = kw.iter().map(|h| (key(h), h.score)).collect();
                let b: Vec<(i64, f32)> = sem.iter().map(|h| (key(h), h.score)).collect();
                let mut rep: HashMap<i64, Hit> = HashMap::new();
                // Representative chunk of a fused key: the semantic one if any, else keyword's; it
                // carries both raw scores of the key.
                for h in kw.iter() {
                    rep.insert(key(h), *h);
                }
                for h in sem.iter() {
                    let keyword = rep.get(&key(h)).and_then(|k| k.keyword);
                    rep.insert(key(h), Hit { keyword, ..*h });
                }
                fusion::fuse(&a, &b, fusion).into_iter().filter_map(|(k, s)| rep.get(&k).map(|h| Hit { score: s, ..*h })).collect()
            }
        };
        Ok((ranked, hq))
    }

    /// Runs a search. `qvec` is the query's embedding (required for semantic and hybrid).
    pub fn search(&self, conn: &Connection, req: &SearchRequest, qvec: Option<&[f32]>) -> Result<SearchResponse> {
        let t0 = Instant::now();
        req.validate()?;
        if req.mode.needs_embedding() && qvec.is_none() {
            return Err(DocsError::EmbeddingsUnavailable);
        }
        self.ensure_fresh(conn)?;
        let fusion = req.fusion()?;
        let allowed = self.allowed(conn, req.filter.as_ref())?;
        if allowed.as_ref().is_some_and(HashSet::is_empty) {
            return Ok(SearchResponse { results: Vec::new(), query_time_ms: ms(t0) });
        }
        let group = req.group_by == Some(GroupBy::Document);
        let (ranked, hq) = self.rank(conn, &req.query, req.mode, &fusion, qvec, allowed.as_ref(), req.limit, group)?;
        // Re-read hits from SQLite; anything missing there is dropped (never resurfaces).
        let want: Vec<i64> = ranked.iter().take(req.limit + 20).map(|h| h.chunk_id).collect();
        let rows = store::chunk_rows(conn, &want)?;
        let mut highlighter = match (&hq, req.highlight.unwrap_or(true)) {
            (Some((idx, q)), true) => idx.highlighter(q.as_ref()),
            _ => None,
        };
        let mut results = Vec::with_capacity(req.limit);
        for h in ranked.iter().take(req.limit + 20) {
            let Some(row) = rows.get(&h.chunk_id) else { continue };
            if row.doc_seq != h.doc_seq {
                continue;
            }
            let highlights = highlighter.as_mut().map(|g| index::highlights(g, &row.text).into_iter().map(|(s, e)| [s, e]).collect());
            results.push(SearchResult {
                document_id: row.document_id.clone(),
                path: row.path.clone(),
                chunk_id: row.id,
                text: row.text.clone(),
                score: shown_score(&fusion, req.mode, h),
                keyword_score: h.keyword,
                semantic_score: h.semantic,
                highlights,
            });
            if results.len() == req.limit {
                break;
            }
        }
        Ok(SearchResponse { results, query_time_ms: ms(t0) })
    }

    /// Assembles a token-budgeted context (see [`assemble`]).
    pub fn assemble(&self, conn: &Connection, req: &AssembleRequest, qvec: Option<&[f32]>) -> Result<AssembleResponse> {
        self.ensure_fresh(conn)?;
        assemble::assemble(self, conn, req, qvec)
    }

    /// Stored document (no derived state needed; here so handlers use one type).
    pub fn get(&self, conn: &Connection, id: &str) -> Result<docs::Document> {
        store::get(conn, id)
    }

    /// Lists documents (cursor pagination, `path_prefix`).
    pub fn list(&self, conn: &Connection, q: &docs::ListQuery) -> Result<docs::ListPage> {
        store::list(conn, q)
    }
}

pub(crate) fn ms(t0: Instant) -> f64 {
    (t0.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// Rebuilds a closed tenant's index from its SQLite file (the CLI, with the server stopped).
pub fn rebuild_offline(dir: &Path) -> anyhow::Result<usize> {
    let conn = Connection::open_with_flags(dir.join(crate::tenant::DB_FILE), rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    let search = TenantSearch::open(dir, &conn).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(search.rebuild(&conn).map_err(|e| anyhow::anyhow!("{e}"))? as usize)
}
