//! The per-tenant Tantivy index: BM25 over chunk texts, derived from SQLite.
//!
//! **Analyzer** (`warren_en`): Tantivy's `SimpleTokenizer` (splits on every non-alphanumeric
//! character) → drop tokens longer than 40 bytes → lowercase → ASCII folding (`é` → `e`) →
//! English stopwords (Tantivy's list) → English Snowball stemmer. Queries go through the same
//! analyzer and become an OR of term queries (no query syntax, so no user input can be a syntax
//! error). Scoring is Tantivy's BM25 (k1 = 1.2, b = 0.75).
//!
//! **Documents**: one per chunk, fields `chunk_id` (u64, indexed + fast), `doc_seq` (u64, indexed
//! and fast, for deletes and filters) and `text` (context prefix + chunk text, indexed with
//! positions, not stored: the text is read back from SQLite, which also drops stale hits).
//!
//! **Consistency**: each commit carries the SQLite write generation as its payload; on open, an
//! index whose payload differs from SQLite's generation (a crash between the two commits), or that
//! fails to open, is rebuilt. The reader reloads manually (no watcher thread per tenant).
//!
//! **Writers**: creating a Tantivy `IndexWriter` costs tens of milliseconds (threads, arena), so a
//! tenant that writes keeps its writer between batches — but only while it keeps writing. One
//! process-wide sweeper thread drops writers idle for [`WRITER_IDLE`], so the writer threads alive at
//! any time are bounded by the tenants that wrote in the last few seconds, not by the open tenants.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions};
use tantivy::tokenizer::{AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::docs::{DocsError, Result};

pub const ANALYZER: &str = "warren_en";
/// Memory budget of a per-batch writer (Tantivy's minimum is 15 MB).
const WRITER_BUDGET: usize = 15_000_000;

#[derive(Clone, Copy)]
pub(crate) struct Fields {
    pub chunk_id: Field,
    pub doc_seq: Field,
    pub text: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let num = NumericOptions::default().set_indexed().set_fast().set_stored();
    let chunk_id = b.add_u64_field("chunk_id", num.clone());
    let doc_seq = b.add_u64_field("doc_seq", num);
    let text_opts = TextOptions::default()
        .set_indexing_options(TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqsAndPositions));
    let text = b.add_text_field("text", text_opts);
    (b.build(), Fields { chunk_id, doc_seq, text })
}

/// The documented analyzer (see module docs).
pub fn analyzer() -> TextAnalyzer {
    let mut b =
        TextAnalyzer::builder(SimpleTokenizer::default()).filter(RemoveLongFilter::limit(40)).filter(LowerCaser).filter(AsciiFoldingFilter).dynamic();
    if let Some(sw) = StopWordFilter::new(Language::English) {
        b = b.filter_dynamic(sw);
    }
    b.filter_dynamic(Stemmer::new(Language::English)).build()
}

/// A writer kept between write batches: the time of its last use, and whether deleted documents
/// wait to be expunged from their segments.
struct Kept {
    writer: IndexWriter<TantivyDocument>,
    /// The index's reader, reloaded after an expunge so no searcher keeps the old segments mapped.
    reader: IndexReader,
    last_used: Instant,
    expunge: bool,
}

type WriterSlot = Mutex<Option<Kept>>;

/// A kept writer idle this long is dropped by the sweeper.
pub const WRITER_IDLE: Duration = Duration::from_secs(5);

/// Every live writer slot, for the sweeper.
fn live_writers() -> &'static Mutex<Vec<Weak<WriterSlot>>> {
    static LIVE: OnceLock<Mutex<Vec<Weak<WriterSlot>>>> = OnceLock::new();
    LIVE.get_or_init(|| {
        let spawned = std::thread::Builder::new().name("index-writer-sweeper".into()).spawn(|| loop {
            std::thread::sleep(WRITER_IDLE / 2);
            sweep_writers(WRITER_IDLE);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the index writer sweeper; writers close with their tenant");
        }
        Mutex::new(Vec::new())
    })
}

/// Drops writers idle for at least `idle` (expunging pending deletes first), and forgets slots whose
/// index is gone.
pub(crate) fn sweep_writers(idle: Duration) {
    let slots: Vec<Arc<WriterSlot>> = {
        let mut live = live_writers().lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    for slot in slots {
        // A busy slot is in use right now: not idle.
        let idle_writer = match slot.try_lock() {
            Ok(mut g) if g.as_ref().is_some_and(|k| k.last_used.elapsed() >= idle) => g.take().map(expunged),
            _ => None,
        };
        drop(idle_writer); // joins the writer's threads, outside the slot lock
    }
}

/// If deletes wait to be expunged: merges every segment that has deleted documents into one
/// without them, reloads the reader and removes the old segment files, so a deleted text's terms and
/// positions are gone from the index directory (a delete alone only marks documents dead). Runs
/// while the slot is locked, so no second writer can start meanwhile (Tantivy allows one per index).
fn expunged(mut k: Kept) -> Kept {
    if !std::mem::take(&mut k.expunge) {
        return k;
    }
    let t0 = Instant::now();
    let result = (|| -> tantivy::Result<usize> {
        let ids: Vec<_> = k.writer.index().searchable_segment_metas()?.into_iter().filter(|m| m.has_deletes()).map(|m| m.id()).collect();
        if !ids.is_empty() {
            k.writer.merge(&ids).wait()?;
        }
        k.reader.reload()?;
        k.writer.garbage_collect_files().wait()?;
        Ok(ids.len())
    })();
    match result {
        Ok(n) => tracing::debug!(segments = n, ms = t0.elapsed().as_millis() as u64, "expunged deleted documents"),
        Err(e) => tracing::warn!(error = %e, "expunging deleted documents failed; they stay until the next merge or rebuild"),
    }
    k
}

/// An open index with its reader.
pub(crate) struct KeywordIndex {
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
    writer: Arc<WriterSlot>,
}

impl Drop for KeywordIndex {
    /// A tenant closing with deletes still to expunge expunges them now (on the closing thread).
    fn drop(&mut self) {
        self.close_writer();
    }
}

/// A chunk to add to the index.
pub(crate) struct IndexEntry<'a> {
    pub chunk_id: i64,
    pub doc_seq: i64,
    pub text: &'a str,
}

impl KeywordIndex {
    /// Opens an existing index; returns its commit payload (the generation it reflects).
    pub fn open(dir: &Path) -> Result<(KeywordIndex, Option<i64>)> {
        let index = Index::open_in_dir(dir)?;
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(DocsError::Internal("index schema differs".into()));
        }
        let payload = index.load_metas()?.payload.and_then(|p| p.parse::<i64>().ok());
        Ok((Self::finish(index, fields)?, payload))
    }

    /// Creates an empty index in `dir` (which must exist and be empty).
    pub fn create(dir: &Path) -> Result<KeywordIndex> {
        let (schema, fields) = schema();
        let index = Index::create_in_dir(dir, schema)?;
        Self::finish(index, fields)
    }

    fn finish(index: Index, fields: Fields) -> Result<KeywordIndex> {
        index.tokenizers().register(ANALYZER, analyzer());
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let writer: Arc<WriterSlot> = Arc::new(Mutex::new(None));
        live_writers().lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&writer));
        Ok(KeywordIndex { index, reader, fields, writer })
    }

    /// Applies one write batch: removes every chunk of `delete_docs`, adds `add` and commits with
    /// the generation as payload. The writer is kept for the next batch (see module docs); on any
    /// error it is dropped, which rolls back what this batch staged. With `expunge`, the segments
    /// holding the deleted chunks are rewritten without them once the writer goes idle (see
    /// [`expunged`]), so their terms leave the index files.
    pub fn apply(&self, delete_docs: &[i64], add: &[IndexEntry<'_>], generation: i64, expunge: bool) -> Result<()> {
        let mut slot = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (mut writer, pending) = match slot.take() {
            Some(k) => (k.writer, k.expunge),
            None => (self.index.writer_with_num_threads(1, WRITER_BUDGET)?, false),
        };
        for &seq in delete_docs {
            writer.delete_term(Term::from_field_u64(self.fields.doc_seq, seq as u64));
        }
        for e in add {
            let mut d = TantivyDocument::default();
            d.add_u64(self.fields.chunk_id, e.chunk_id as u64);
            d.add_u64(self.fields.doc_seq, e.doc_seq as u64);
            d.add_text(self.fields.text, e.text);
            writer.add_document(d)?;
        }
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&generation.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        *slot =
            Some(Kept { writer, reader: self.reader.clone(), last_used: Instant::now(), expunge: pending || (expunge && !delete_docs.is_empty()) });
        Ok(())
    }

    /// Drops a kept writer now (before the index is replaced or closed), expunging pending deletes first.
    pub fn close_writer(&self) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take().map(expunged);
        drop(w);
    }

    /// The payload of the last commit (tests).
    #[cfg(test)]
    pub fn load_payload(&self) -> Option<i64> {
        self.index.load_metas().ok()?.payload.and_then(|p| p.parse().ok())
    }

    /// Whether deleted documents wait to be expunged (tests).
    #[cfg(test)]
    pub fn expunge_pending(&self) -> bool {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|k| k.expunge)
    }

    /// Analyzes a query into its (deduplicated) terms.
    pub fn query_terms(&self, query: &str) -> Vec<Term> {
        let mut a = analyzer();
        let mut stream = a.token_stream(query);
        let mut terms: Vec<Term> = Vec::new();
        while stream.advance() {
            let t = Term::from_field_text(self.fields.text, &stream.token().text);
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        terms
    }

    /// The BM25 query for `query`, restricted to `allowed` documents when given. `None` when the
    /// query has no searchable term (e.g. only stopwords).
    pub fn build_query(&self, query: &str, allowed: Option<&std::collections::HashSet<i64>>) -> Option<Box<dyn Query>> {
        let terms = self.query_terms(query);
        if terms.is_empty() {
            return None;
        }
        let should: Vec<(Occur, Box<dyn Query>)> =
            terms.into_iter().map(|t| (Occur::Should, Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) as Box<dyn Query>)).collect();
        let q: Box<dyn Query> = Box::new(BooleanQuery::new(should));
        Some(match allowed {
            None => q,
            Some(set) => {
                let filter = TermSetQuery::new(set.iter().map(|&s| Term::from_field_u64(self.fields.doc_seq, s as u64)));
                Box::new(BooleanQuery::new(vec![(Occur::Must, q), (Occur::Must, Box::new(ConstScoreQuery::new(Box::new(filter), 0.0)))]))
            }
        })
    }

    /// Top `limit` chunks for `query`: `(chunk_id, doc_seq, bm25)`, best first.
    pub fn search(&self, query: &dyn Query, limit: usize) -> Result<Vec<(i64, i64, f32)>> {
        let searcher = self.reader.searcher();
        let top = searcher.search(query, &TopDocs::with_limit(limit.max(1)).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let seg = searcher.segment_reader(addr.segment_ord);
            let ff = seg.fast_fields();
            let cid = ff.u64("chunk_id")?.first(addr.doc_id);
            let seq = ff.u64("doc_seq")?.first(addr.doc_id);
            if let (Some(c), Some(s)) = (cid, seq) {
                out.push((c as i64, s as i64, score));
            }
        }
        Ok(out)
    }

    /// A highlighter for `query`, built once per search.
    pub fn highlighter(&self, query: &dyn Query) -> Option<tantivy::snippet::SnippetGenerator> {
        let searcher = self.reader.searcher();
        tantivy::snippet::SnippetGenerator::create(&searcher, query, self.fields.text).ok()
    }

    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }
}

/// Byte ranges in `text` that match the highlighter's query terms (for `highlights`).
pub(crate) fn highlights(gen: &mut tantivy::snippet::SnippetGenerator, text: &str) -> Vec<(usize, usize)> {
    gen.set_max_num_chars(text.len().max(1));
    let snip = gen.snippet(text);
    let off = snip.fragment_range().start;
    snip.highlighted().iter().map(|r| (r.start + off, r.end + off)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(chunk_id: i64, doc_seq: i64, text: &str) -> IndexEntry<'_> {
        IndexEntry { chunk_id, doc_seq, text }
    }

    /// Whether any segment still knows `word` as a term (deleted documents keep their terms until
    /// their segment is rewritten).
    fn knows(idx: &KeywordIndex, word: &str) -> bool {
        idx.reader.reload().unwrap();
        let searcher = idx.reader.searcher();
        searcher.segment_readers().iter().any(|s| {
            let inv = s.inverted_index(idx.fields.text).unwrap();
            inv.terms().term_ord(word.as_bytes()).unwrap().is_some()
        })
    }

    fn has_deletes(idx: &KeywordIndex) -> bool {
        idx.index.searchable_segment_metas().unwrap().iter().any(|m| m.has_deletes())
    }

    #[test]
    fn a_delete_is_expunged_from_the_segments_when_the_writer_retires() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeywordIndex::create(dir.path()).unwrap();
        idx.apply(&[], &[entry(1, 1, "qqzvx secret ticket"), entry(2, 2, "garden hose")], 1, true).unwrap();
        idx.apply(&[1], &[], 2, true).unwrap();
        assert!(idx.expunge_pending());
        // Deleted, but its terms are still in the segment: what a delete alone leaves behind.
        assert!(has_deletes(&idx) && knows(&idx, "qqzvx"));
        idx.close_writer();
        assert!(!has_deletes(&idx), "the segment with the deleted chunk was rewritten");
        assert!(!knows(&idx, "qqzvx"), "the deleted chunk's terms are gone");
        assert!(knows(&idx, "garden"), "the live chunk stays");
        let files: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!files.iter().any(|f| f.ends_with(".del")), "no delete bitsets remain: {files:?}");
        assert_eq!(idx.load_payload(), Some(2), "the commit payload (the SQLite generation) survives the merge");
    }

    #[test]
    fn an_update_does_not_expunge_and_the_idle_sweeper_does() {
        let dir = tempfile::tempdir().unwrap();
        let idx = KeywordIndex::create(dir.path()).unwrap();
        idx.apply(&[], &[entry(1, 1, "qqzvx old text"), entry(2, 2, "other words")], 1, false).unwrap();
        idx.apply(&[1], &[entry(3, 1, "new text")], 2, false).unwrap();
        assert!(!idx.expunge_pending());
        idx.close_writer();
        assert!(has_deletes(&idx) && knows(&idx, "qqzvx"), "an update leaves the old chunk to the merge policy");
        idx.apply(&[2], &[], 3, true).unwrap();
        sweep_writers(Duration::ZERO);
        assert!(!has_deletes(&idx) && !knows(&idx, "qqzvx") && !knows(&idx, "other"), "the sweeper expunged every segment with deletes");
    }
}
