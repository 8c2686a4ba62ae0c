//! Domain-level tests of documents, search and assembly (no HTTP, no model: a deterministic
//! bag-of-words "embedding" stands in for the model so semantic paths are exercised).

use std::path::Path;

use proptest::prelude::*;
use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::docs::{self, DocLimits, DocumentInput, ListQuery, TokenCounter};

/// Hashes words into a normalised 384-d vector: texts sharing words have high cosine.
pub(crate) fn fake_embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; EMBEDDING_DIM];
    for w in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = w.to_lowercase().bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
        v[(h % EMBEDDING_DIM as u64) as usize] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
    v
}

pub(crate) struct Tenant {
    pub dir: tempfile::TempDir,
    pub conn: Connection,
    pub search: TenantSearch,
}

pub(crate) fn open_conn(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("tenant.db")).expect("open db");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.execute_batch(crate::tenant::schema::DOCUMENTS).expect("schema");
    conn.execute_batch(crate::tenant::schema::DOCUMENTS).expect("schema is idempotent");
    conn
}

pub(crate) fn tenant() -> Tenant {
    let dir = tempfile::tempdir().expect("tempdir");
    let conn = open_conn(dir.path());
    let search = TenantSearch::open(dir.path(), &conn).expect("open search");
    Tenant { dir, conn, search }
}

impl Tenant {
    fn put(&mut self, path: &str, content: &str, metadata: serde_json::Value) -> WriteResult {
        let input = DocumentInput { content: content.into(), path: path.into(), title: None, metadata: Some(metadata) };
        let doc = docs::prepare(input, &DocLimits::default(), &TokenCounter::Approx).expect("prepare");
        let emb = doc.embedding_inputs().iter().map(|t| fake_embed(t)).collect();
        self.search.upsert(&mut self.conn, doc, Some(emb)).expect("upsert")
    }

    fn find(&self, q: &str, mode: SearchMode, filter: Option<Filter>) -> Vec<SearchResult> {
        let mut req = SearchRequest::new(q, mode);
        req.filter = filter;
        req.limit = 100;
        let qv = fake_embed(q);
        self.search.search(&self.conn, &req, Some(&qv)).expect("search").results
    }

    fn find_all_modes(&self, q: &str) -> Vec<SearchResult> {
        let mut all = Vec::new();
        for m in [SearchMode::Keyword, SearchMode::Semantic, SearchMode::Hybrid] {
            all.extend(self.find(q, m, None));
        }
        all
    }
}

#[test]
fn upsert_by_path_replaces_everything() {
    let mut t = tenant();
    let a = t.put("notes/a.md", "# Fruit\n\nThe banana is yellow.", json!({"k": "v"}));
    assert!(a.created);
    assert!(!t.find("banana", SearchMode::Keyword, None).is_empty());
    let b = t.put("notes/a.md", "# Fruit\n\nThe cherry is red.", json!({}));
    assert!(!b.created);
    assert_eq!(a.id, b.id, "upsert by path keeps the id");
    for r in t.find_all_modes("banana yellow") {
        assert!(!r.text.contains("banana"), "replaced text came back: {r:?}");
    }
    assert!(t.find("cherry", SearchMode::Keyword, None).iter().any(|r| r.text.contains("cherry")));
    assert_eq!(store::count_documents(&t.conn).unwrap(), 1);
    let d = t.search.get(&t.conn, &a.id).unwrap();
    assert!(d.content.contains("cherry") && d.metadata.is_empty());
    assert_eq!(t.search.stats().indexed_chunks, b.chunks as u64);
}

#[test]
fn deleted_text_never_resurfaces() {
    let mut t = tenant();
    let a = t.put("a/1.md", "zebra stripes pattern", json!({}));
    t.put("a/2.md", "zebra herd migration", json!({}));
    t.put("b/1.md", "lion pride zebra hunt", json!({}));
    assert_eq!(t.find("zebra", SearchMode::Keyword, None).len(), 3);
    t.search.delete(&mut t.conn, &a.id).unwrap();
    assert!(matches!(t.search.delete(&mut t.conn, &a.id), Err(DocsError::NotFound)));
    assert!(t.find_all_modes("zebra stripes pattern").iter().all(|r| r.path != "a/1.md"));
    assert_eq!(t.search.delete_by_prefix(&mut t.conn, "a/").unwrap().deleted, 1);
    assert!(t.search.delete_by_prefix(&mut t.conn, "").is_err());
    let left = t.find_all_modes("zebra");
    assert!(left.iter().all(|r| r.path == "b/1.md"), "{left:?}");
    // A chunk removed behind the index's back (stale index) is dropped, not returned.
    t.conn.execute("DELETE FROM chunks", []).unwrap();
    assert!(t.find_all_modes("zebra lion").is_empty());
}

#[test]
fn index_is_rebuilt_when_missing_corrupt_or_stale() {
    let mut t = tenant();
    t.put("x.md", "quantum chromodynamics lecture", json!({}));
    t.put("y.md", "classical mechanics lecture", json!({}));
    let dir = t.dir.path().to_path_buf();
    drop(t.search);
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let s = TenantSearch::open(&dir, &t.conn).unwrap();
    assert_eq!(s.stats().indexed_chunks, 2);
    t.search = s;
    assert_eq!(t.find("chromodynamics", SearchMode::Keyword, None).len(), 1);

    drop(t.search);
    std::fs::write(dir.join("index").join("meta.json"), b"{not json").unwrap();
    t.search = TenantSearch::open(&dir, &t.conn).unwrap();
    assert_eq!(t.find("lecture", SearchMode::Keyword, None).len(), 2);

    // SQLite moved on without the index (crash between the two commits): rebuilt on open.
    drop(t.search);
    t.conn.execute("DELETE FROM chunks WHERE text LIKE '%classical%'", []).unwrap();
    store::bump_generation(&t.conn).unwrap();
    t.search = TenantSearch::open(&dir, &t.conn).unwrap();
    assert_eq!(t.search.stats().indexed_chunks, 1);
    assert_eq!(t.search.rebuild(&t.conn).unwrap(), 1);
    assert_eq!(t.find("lecture", SearchMode::Keyword, None).len(), 1);
}

#[test]
fn filters_on_path_prefix_and_metadata() {
    let mut t = tenant();
    t.put("docs/a.md", "rust ownership borrow checker", json!({"lang": "en", "v": 2, "draft": false}));
    t.put("docs/b.md", "rust ownership lifetimes", json!({"lang": "de", "v": 2.0}));
    t.put("blog/c.md", "rust ownership blog post", json!({"lang": "en"}));
    let f = |p: Option<&str>, m: serde_json::Value| Filter { path_prefix: p.map(String::from), metadata: m.as_object().cloned() };
    for mode in [SearchMode::Keyword, SearchMode::Semantic, SearchMode::Hybrid] {
        let paths = |flt: Filter| {
            let mut v: Vec<String> = t.find("rust ownership", mode, Some(flt)).into_iter().map(|r| r.path).collect();
            v.sort();
            v
        };
        assert_eq!(paths(f(Some("docs/"), json!({}))), vec!["docs/a.md", "docs/b.md"]);
        assert_eq!(paths(f(None, json!({"lang": "en"}))), vec!["blog/c.md", "docs/a.md"]);
        assert_eq!(paths(f(Some("docs/"), json!({"lang": "en"}))), vec!["docs/a.md"]);
        assert_eq!(paths(f(None, json!({"v": 2}))), vec!["docs/a.md", "docs/b.md"]);
        assert_eq!(paths(f(None, json!({"draft": false}))), vec!["docs/a.md"]);
        assert!(paths(f(None, json!({"lang": "fr"}))).is_empty());
        assert!(paths(f(Some("nope/"), json!({}))).is_empty());
    }
    let mut bad = SearchRequest::new("x", SearchMode::Keyword);
    bad.filter = Some(f(None, json!({"lang": ["en"]})));
    assert!(matches!(t.search.search(&t.conn, &bad, None), Err(DocsError::Invalid { .. })));
    // Thousands of keys were a SQLite expression-depth error (500); now a clear 400, in both calls.
    let many: serde_json::Map<String, serde_json::Value> = (0..1000).map(|i| (format!("k{i}"), json!(i))).collect();
    bad.filter = Some(Filter { path_prefix: None, metadata: Some(many.clone()) });
    assert!(matches!(t.search.search(&t.conn, &bad, None), Err(DocsError::Invalid { .. })));
    let asm = AssembleRequest { query: "x".into(), max_tokens: 100, max_documents: None, filter: bad.filter.clone(), include_metadata: None };
    assert!(matches!(asm.validate(), Err(DocsError::Invalid { .. })));
    let mut ok = SearchRequest::new("rust", SearchMode::Keyword);
    ok.filter = Some(Filter { path_prefix: None, metadata: Some(many.into_iter().take(request::MAX_FILTER_KEYS).collect()) });
    assert!(t.search.search(&t.conn, &ok, None).is_ok(), "the limit itself runs");
}

#[test]
fn model_absent_keyword_only_and_request_validation() {
    let mut t = tenant();
    let input = DocumentInput { content: "offline keyword search works".into(), path: "o.md".into(), title: None, metadata: None };
    let doc = docs::prepare(input, &DocLimits::default(), &TokenCounter::Approx).unwrap();
    t.search.upsert(&mut t.conn, doc, None).unwrap();
    let kw = t.search.search(&t.conn, &SearchRequest::new("offline", SearchMode::Keyword), None).unwrap();
    assert_eq!(kw.results.len(), 1);
    let hl = kw.results[0].highlights.clone().unwrap();
    assert_eq!(&kw.results[0].text[hl[0][0]..hl[0][1]], "offline");
    for m in [SearchMode::Semantic, SearchMode::Hybrid] {
        assert!(matches!(t.search.search(&t.conn, &SearchRequest::new("offline", m), None), Err(DocsError::EmbeddingsUnavailable)));
    }
    // Back-fill once the model is there.
    let missing = t.search.missing_embeddings(&t.conn, 10).unwrap();
    assert_eq!(missing.len(), 1);
    let filled = missing.into_iter().map(|(id, text)| (id, fake_embed(&text))).collect();
    assert_eq!(t.search.backfill_embeddings(&mut t.conn, filled).unwrap(), 1);
    let qv = fake_embed("offline keyword");
    assert_eq!(t.search.search(&t.conn, &SearchRequest::new("offline keyword", SearchMode::Semantic), Some(&qv)).unwrap().results.len(), 1);

    for (q, limit) in [("", 10), ("  ", 10), ("ok", 0), ("ok", 101)] {
        let mut r = SearchRequest::new(q, SearchMode::Keyword);
        r.limit = limit;
        assert!(matches!(t.search.search(&t.conn, &r, None), Err(DocsError::Invalid { .. })), "{q:?} {limit}");
    }
    let mut r = SearchRequest::new("ok", SearchMode::Hybrid);
    r.hybrid = Some(HybridOptions { alpha: Some(1.5), ..Default::default() });
    assert!(r.validate().is_err());
    // Only stopwords / punctuation: no error, no results.
    assert!(t.search.search(&t.conn, &SearchRequest::new("the of !!", SearchMode::Keyword), None).unwrap().results.is_empty());
}

#[test]
fn bulk_items_fail_alone_and_list_paginates() {
    let mut t = tenant();
    let mut items = Vec::new();
    for i in 0..7 {
        let input = DocumentInput { content: format!("document number {i}"), path: format!("p/{i:02}"), title: None, metadata: None };
        let d = docs::prepare(input, &DocLimits::default(), &TokenCounter::Approx).unwrap();
        let mut emb: Vec<Vec<f32>> = d.embedding_inputs().iter().map(|s| fake_embed(s)).collect();
        if i == 3 {
            emb.push(vec![0.0; EMBEDDING_DIM]); // wrong count: this item fails alone
        }
        items.push((d, Some(emb)));
    }
    let res = t.search.upsert_many(&mut t.conn, items);
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 6);
    assert!(res[3].is_err());
    // A batch where nothing succeeds changes nothing, not even the generation (no rebuild).
    let g = store::generation(&t.conn).unwrap();
    let input = DocumentInput { content: "x".into(), path: "p/x".into(), title: None, metadata: None };
    let d = docs::prepare(input, &DocLimits::default(), &TokenCounter::Approx).unwrap();
    assert!(t.search.upsert_many(&mut t.conn, vec![(d, Some(vec![]))])[0].is_err());
    assert!(t.search.upsert_many(&mut t.conn, vec![]).is_empty());
    assert_eq!(store::generation(&t.conn).unwrap(), g);
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let page = t.search.list(&t.conn, &ListQuery { path_prefix: Some("p/".into()), cursor, limit: Some(4) }).unwrap();
        seen.extend(page.documents.iter().map(|d| d.path.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, vec!["p/00", "p/01", "p/02", "p/04", "p/05", "p/06"]);
    assert!(t.search.list(&t.conn, &ListQuery { cursor: Some("zz".into()), ..Default::default() }).is_err());
    assert!(t.search.list(&t.conn, &ListQuery { path_prefix: Some("q/".into()), ..Default::default() }).unwrap().documents.is_empty());
}

fn corpus(t: &mut Tenant) {
    let topics = ["solar panels", "wind turbines", "battery storage", "grid frequency", "heat pumps"];
    for (i, topic) in topics.iter().enumerate() {
        let mut body = format!("# {topic}\n\n");
        for p in 0..12 {
            body.push_str(&format!(
                "Paragraph {p} about {topic}: efficiency, cost and maintenance of {topic} in renewable energy systems, measured in year {}.\n\n",
                2000 + p
            ));
        }
        t.put(&format!("energy/{i}.md"), &body, json!({"topic": topic}));
        // A near-duplicate copy of the first document.
        if i == 0 {
            t.put("energy/copy.md", &body, json!({}));
        }
    }
}

#[test]
fn assemble_labels_merges_and_dedups() {
    let mut t = tenant();
    corpus(&mut t);
    let q = "solar panels efficiency";
    let qv = fake_embed(q);
    let req = AssembleRequest { query: q.into(), max_tokens: 1500, max_documents: None, filter: None, include_metadata: Some(true) };
    let r = t.search.assemble(&t.conn, &req, Some(&qv)).unwrap();
    assert!(r.total_tokens <= 1500 && r.total_tokens > 0);
    assert_eq!(r.total_tokens, docs::llm_tokens(&r.context));
    assert_eq!(r.token_counter, "o200k_base");
    assert!(r.context.starts_with("<source path=\"energy/"), "{}", &r.context[..80]);
    // Near-duplicate chunks of the copy are not selected alongside the original.
    let paths: Vec<&str> = r.documents.iter().map(|d| d.path.as_str()).collect();
    assert!(!(paths.contains(&"energy/0.md") && paths.contains(&"energy/copy.md")), "{paths:?}");
    // Each document appears once, its chunks in document order and merged where adjacent.
    for d in &r.documents {
        assert_eq!(r.context.matches(&format!("<source path=\"{}\"", d.path)).count(), 1);
        let mut sorted = d.chunks.clone();
        sorted.sort();
        assert_eq!(sorted, d.chunks);
    }
    let one = AssembleRequest { max_documents: Some(1), ..req.clone() };
    assert_eq!(t.search.assemble(&t.conn, &one, Some(&qv)).unwrap().documents.len(), 1);
    // Without the model, assembly degrades to keyword candidates.
    let kw = t.search.assemble(&t.conn, &req, None).unwrap();
    assert!(kw.total_tokens > 0 && kw.total_tokens <= 1500);
    for bad in [0, assemble::MAX_ASSEMBLE_TOKENS + 1] {
        let b = AssembleRequest { max_tokens: bad, ..req.clone() };
        assert!(matches!(t.search.assemble(&t.conn, &b, None), Err(DocsError::Invalid { .. })));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn assemble_never_exceeds_budget(budget in 1usize..4000, docs in proptest::option::of(1usize..5), meta in any::<bool>(), sem in any::<bool>()) {
        thread_local! {
            static T: std::cell::RefCell<Option<Tenant>> = const { std::cell::RefCell::new(None) };
        }
        T.with(|cell| {
            let mut g = cell.borrow_mut();
            let t = g.get_or_insert_with(|| { let mut t = tenant(); corpus(&mut t); t });
            let q = "battery storage cost maintenance";
            let qv = fake_embed(q);
            let req = AssembleRequest { query: q.into(), max_tokens: budget, max_documents: docs, filter: None, include_metadata: Some(meta) };
            let r = t.search.assemble(&t.conn, &req, if sem { Some(&qv) } else { None }).unwrap();
            assert!(r.total_tokens <= budget, "{} > {budget}", r.total_tokens);
            assert_eq!(r.total_tokens, docs::llm_tokens(&r.context));
            if let Some(d) = docs { assert!(r.documents.len() <= d); }
            if budget >= 300 { assert!(!r.documents.is_empty(), "budget {budget} yielded nothing"); }
        });
    }
}
