//! SciFact quality and latency harness for the documents/search domain layer (no HTTP).
//!
//! Compiled into the library's tests as `search::scifact_harness` (`#[path]` from
//! `src/search/mod.rs`), ignored by default. Run it through `benches/scifact/run.sh SCIFACT_DIR`,
//! or directly:
//!
//! ```text
//! SCIFACT_DIR=../shared/eval/scifact-dev cargo test --release --lib scifact_harness -- --ignored --nocapture
//! ```
//!
//! It loads `corpus.jsonl` through [`crate::docs::prepare`] and
//! [`crate::search::TenantSearch::upsert_many`] into a temporary tenant (path = SciFact `_id`,
//! title = title, content = text), embeds the chunks with [`crate::embed::Embedder`], runs every
//! query in keyword, semantic and hybrid mode (limit 100, `group_by: "document"`, as the qrels are
//! per document) and writes `runs/{mode}.jsonl` for `score.py` plus `summary.json` (ingest
//! throughput, latencies, in-process nDCG@10). SciFact is only read, never copied into the repo.
//!
//! Environment: `SCIFACT_DIR` (required), `WARREN_MODEL_DIR` (default `models/all-MiniLM-L6-v2`),
//! `SCIFACT_OUT` (default `target/scifact`), `SCIFACT_SWEEP=1` to print nDCG@10 over a grid of
//! fusion settings. Chunk embeddings are cached in `SCIFACT_OUT/embeddings.bin` (keyed by the
//! sha256 of the embedded text) so re-runs skip the model.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::docs::{self, DocLimits, DocumentInput, TokenCounter};
use crate::search::{Fusion, FusionMethod, GroupBy, HybridOptions, Normalization, SearchMode, SearchRequest, TenantSearch, EMBEDDING_DIM};

/// A SciFact query.
pub struct Query {
    pub id: String,
    pub text: String,
}

/// Reads `corpus.jsonl` as document inputs.
pub fn load_corpus(dir: &Path) -> anyhow::Result<Vec<DocumentInput>> {
    let f = std::io::BufReader::new(std::fs::File::open(dir.join("corpus.jsonl"))?);
    let mut out = Vec::new();
    for line in f.lines() {
        let v: Value = serde_json::from_str(&line?)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        out.push(DocumentInput { content: s("text"), path: s("_id"), title: Some(s("title")), metadata: None });
    }
    Ok(out)
}

pub fn load_queries(dir: &Path) -> anyhow::Result<Vec<Query>> {
    let f = std::io::BufReader::new(std::fs::File::open(dir.join("queries.jsonl"))?);
    let mut out = Vec::new();
    for line in f.lines() {
        let v: Value = serde_json::from_str(&line?)?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        out.push(Query { id: s("_id"), text: s("text") });
    }
    Ok(out)
}

/// `qid → {docid}` of relevant documents.
pub fn load_qrels(dir: &Path) -> anyhow::Result<HashMap<String, HashMap<String, u32>>> {
    let text = std::fs::read_to_string(dir.join("qrels").join("train.tsv"))?;
    let mut q: HashMap<String, HashMap<String, u32>> = HashMap::new();
    for line in text.lines().skip(1) {
        let p: Vec<&str> = line.split_whitespace().collect();
        if p.len() == 3 {
            let rel: u32 = p[2].parse().unwrap_or(0);
            if rel > 0 {
                q.entry(p[0].to_string()).or_default().insert(p[1].to_string(), rel);
            }
        }
    }
    Ok(q)
}

/// Mean nDCG@10 (linear gains), over judged queries; a missing run counts 0 (as `score.py`).
pub fn ndcg10(runs: &HashMap<String, Vec<String>>, qrels: &HashMap<String, HashMap<String, u32>>) -> f64 {
    let mut total = 0.0;
    for (qid, rel) in qrels {
        let Some(run) = runs.get(qid) else { continue };
        let mut seen = std::collections::HashSet::new();
        let dcg: f64 = run
            .iter()
            .filter(|d| seen.insert(d.as_str()))
            .take(10)
            .enumerate()
            .map(|(i, d)| rel.get(d).copied().unwrap_or(0) as f64 / ((i + 2) as f64).log2())
            .sum();
        let mut ideal: Vec<u32> = rel.values().copied().collect();
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, r)| *r as f64 / ((i + 2) as f64).log2()).sum();
        if idcg > 0.0 {
            total += dcg / idcg;
        }
    }
    total / qrels.len().max(1) as f64
}

/// Embedding cache keyed by sha256 of the text.
struct EmbCache {
    path: PathBuf,
    map: HashMap<[u8; 32], Vec<f32>>,
    fresh: Vec<([u8; 32], Vec<f32>)>,
}

impl EmbCache {
    fn open(path: PathBuf) -> Self {
        let mut map = HashMap::new();
        if let Ok(bytes) = std::fs::read(&path) {
            let rec = 32 + EMBEDDING_DIM * 4;
            for r in bytes.chunks_exact(rec) {
                let mut k = [0u8; 32];
                k.copy_from_slice(&r[..32]);
                let mut v = Vec::with_capacity(EMBEDDING_DIM);
                docs::store::blob_to_vector(&r[32..], EMBEDDING_DIM, &mut v);
                map.insert(k, v);
            }
        }
        EmbCache { path, map, fresh: Vec::new() }
    }
    fn key(text: &str) -> [u8; 32] {
        Sha256::digest(text.as_bytes()).into()
    }
    fn save(&mut self) -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        for (k, v) in self.fresh.drain(..) {
            f.write_all(&k)?;
            f.write_all(&docs::store::vector_to_blob(&v))?;
        }
        Ok(())
    }
}

fn embed_cached(model: &crate::embed::Embedder, cache: &mut EmbCache, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
    let keys: Vec<[u8; 32]> = texts.iter().map(|t| EmbCache::key(t)).collect();
    let todo: Vec<usize> = (0..texts.len()).filter(|&i| !cache.map.contains_key(&keys[i])).collect();
    for batch in todo.chunks(64) {
        let refs: Vec<&str> = batch.iter().map(|&i| texts[i].as_str()).collect();
        let vecs = model.embed(&refs)?;
        for (&i, v) in batch.iter().zip(vecs) {
            cache.map.insert(keys[i], v.clone());
            cache.fresh.push((keys[i], v));
        }
    }
    Ok(keys.iter().map(|k| cache.map.get(k).cloned().unwrap_or_default()).collect())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs all queries in one configuration; returns `(qid → ranked doc ids, latencies in ms)`.
pub fn run_queries(
    ts: &TenantSearch,
    conn: &rusqlite::Connection,
    queries: &[Query],
    qvecs: &[Vec<f32>],
    mode: SearchMode,
    hybrid: Option<HybridOptions>,
) -> anyhow::Result<(HashMap<String, Vec<String>>, Vec<f64>)> {
    let mut runs = HashMap::new();
    let mut lat = Vec::with_capacity(queries.len());
    for (q, v) in queries.iter().zip(qvecs) {
        let req = SearchRequest {
            query: q.text.clone(),
            limit: 100,
            mode,
            filter: None,
            hybrid: hybrid.clone(),
            group_by: Some(GroupBy::Document),
            highlight: Some(false),
        };
        let t = Instant::now();
        let r = ts.search(conn, &req, Some(v)).map_err(|e| anyhow::anyhow!("{e}"))?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        runs.insert(q.id.clone(), r.results.into_iter().map(|x| x.path).collect());
    }
    Ok((runs, lat))
}

fn write_run(path: &Path, queries: &[Query], runs: &HashMap<String, Vec<String>>) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for q in queries {
        let docids = runs.get(&q.id).cloned().unwrap_or_default();
        writeln!(f, "{}", serde_json::json!({"qid": q.id, "docids": docids}))?;
    }
    Ok(())
}

#[test]
#[ignore = "needs SCIFACT_DIR and the model; run benches/scifact/run.sh"]
fn scifact() -> anyhow::Result<()> {
    let Ok(dir) = std::env::var("SCIFACT_DIR") else {
        eprintln!("SCIFACT_DIR not set; skipping");
        return Ok(());
    };
    let dir = PathBuf::from(dir);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model_dir = std::env::var("WARREN_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("models/all-MiniLM-L6-v2"));
    let out = std::env::var("SCIFACT_OUT").map(PathBuf::from).unwrap_or_else(|_| root.join("target/scifact"));
    std::fs::create_dir_all(out.join("runs"))?;
    // SCIFACT_PRECISION=fp16 runs the fp16 path (use another SCIFACT_OUT: the cache is per path).
    let precision = match std::env::var("SCIFACT_PRECISION").as_deref() {
        Ok("fp16") => crate::embed::Precision::Fp16,
        _ => crate::embed::Precision::Fp32,
    };
    let model = crate::embed::Embedder::load(&model_dir)?.with_precision(precision);
    anyhow::ensure!(model.precision() == precision, "{} is not supported on this CPU", precision.as_str());
    eprintln!("embedding precision: {}", precision.as_str());
    let counter = TokenCounter::new(Some(model.tokenizer()));
    let mut cache = EmbCache::open(out.join("embeddings.bin"));

    let corpus = load_corpus(&dir)?;
    let queries = load_queries(&dir)?;
    let qrels = load_qrels(&dir)?;
    let limit: usize = std::env::var("SCIFACT_LIMIT").ok().and_then(|s| s.parse().ok()).unwrap_or(usize::MAX);
    let corpus: Vec<DocumentInput> = corpus.into_iter().take(limit).collect();

    let tmp = tempfile::tempdir()?;
    let mut conn = super::tests::open_conn(tmp.path());
    let ts = TenantSearch::open(tmp.path(), &conn).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Ingest in batches of 64 documents: prepare → embed → upsert_many.
    let t0 = Instant::now();
    let (mut embed_s, mut upsert_s, mut n_docs, mut n_chunks, mut n_tokens) = (0.0f64, 0.0f64, 0usize, 0usize, 0usize);
    let limits = DocLimits::default();
    for batch in corpus.chunks(64) {
        let mut items = Vec::new();
        for d in batch {
            let p = docs::prepare(d.clone(), &limits, &counter).map_err(|e| anyhow::anyhow!("{}: {e}", d.path))?;
            let te = Instant::now();
            let v = embed_cached(&model, &mut cache, &p.embedding_inputs())?;
            embed_s += te.elapsed().as_secs_f64();
            n_chunks += p.chunks.len();
            n_tokens += p.tokens;
            items.push((p, Some(v)));
        }
        let tu = Instant::now();
        for r in ts.upsert_many(&mut conn, items) {
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            n_docs += 1;
        }
        upsert_s += tu.elapsed().as_secs_f64();
        if n_docs % 640 == 0 {
            eprintln!("  {n_docs} docs in {:.1}s (embedding {embed_s:.1}s, upserts {upsert_s:.1}s)", t0.elapsed().as_secs_f64());
        }
    }
    cache.save()?;
    let ingest_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "ingest: {n_docs} docs, {n_chunks} chunks, {n_tokens} o200k tokens in {ingest_s:.1}s ({:.0} docs/s; embedding {embed_s:.1}s, cached vectors skip it)",
        n_docs as f64 / ingest_s
    );

    let qtexts: Vec<String> = queries.iter().map(|q| q.text.clone()).collect();
    let qvecs = embed_cached(&model, &mut cache, &qtexts)?;
    cache.save()?;
    // Query embedding latency, one query at a time (as a search request pays it).
    let mut qemb: Vec<f64> = queries
        .iter()
        .take(200)
        .map(|q| {
            let t = Instant::now();
            let _ = model.embed(&[q.text.as_str()]);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    qemb.sort_by(f64::total_cmp);

    let mut summary = serde_json::Map::new();
    for (name, mode) in [("keyword", SearchMode::Keyword), ("semantic", SearchMode::Semantic), ("hybrid", SearchMode::Hybrid)] {
        // Warm-up (loads the vector cache), then the timed run.
        run_queries(&ts, &conn, &queries[..queries.len().min(20)], &qvecs, mode, None)?;
        let (runs, mut lat) = run_queries(&ts, &conn, &queries, &qvecs, mode, None)?;
        write_run(&out.join("runs").join(format!("{name}.jsonl")), &queries, &runs)?;
        lat.sort_by(f64::total_cmp);
        let nd = ndcg10(&runs, &qrels);
        eprintln!("{name:>8}: nDCG@10 {nd:.4}  search p50 {:.2} ms  p99 {:.2} ms", pct(&lat, 0.5), pct(&lat, 0.99));
        summary.insert(name.into(), serde_json::json!({"ndcg10": nd, "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99)}));
    }
    eprintln!("query embedding (1 text): p50 {:.2} ms  p99 {:.2} ms", pct(&qemb, 0.5), pct(&qemb, 0.99));
    summary.insert("query_embedding".into(), serde_json::json!({"p50_ms": pct(&qemb, 0.5), "p99_ms": pct(&qemb, 0.99)}));
    summary.insert(
        "ingest".into(),
        serde_json::json!({"docs": n_docs, "chunks": n_chunks, "tokens": n_tokens, "seconds": ingest_s, "embed_seconds": embed_s}),
    );
    summary.insert("defaults".into(), serde_json::json!(format!("{:?}", Fusion::default())));

    if std::env::var("SCIFACT_SWEEP").is_ok_and(|v| v == "1") {
        let mut grid: Vec<HybridOptions> = Vec::new();
        for k in [1.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0] {
            grid.push(HybridOptions { method: Some(FusionMethod::Rrf), k: Some(k), ..Default::default() });
        }
        for norm in [Normalization::MinMax, Normalization::ZScore] {
            for a in [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] {
                grid.push(HybridOptions { method: Some(FusionMethod::Weighted), alpha: Some(a), normalization: Some(norm), ..Default::default() });
            }
        }
        for half in [2.0, 5.0, 10.0, 20.0] {
            for a in [0.3, 0.4, 0.5, 0.6, 0.7] {
                grid.push(HybridOptions {
                    method: Some(FusionMethod::Weighted),
                    alpha: Some(a),
                    normalization: Some(Normalization::Absolute),
                    keyword_half: Some(half),
                    ..Default::default()
                });
            }
        }
        let mut rows = Vec::new();
        for h in grid {
            let (runs, _) = run_queries(&ts, &conn, &queries, &qvecs, SearchMode::Hybrid, Some(h.clone()))?;
            let nd = ndcg10(&runs, &qrels);
            eprintln!("sweep {:?} k={:?} alpha={:?} norm={:?} keyword_half={:?}: {nd:.4}", h.method, h.k, h.alpha, h.normalization, h.keyword_half);
            rows.push(serde_json::json!({"hybrid": h, "ndcg10": nd}));
        }
        summary.insert("sweep".into(), Value::Array(rows));
    }
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&Value::Object(summary))?)?;
    eprintln!("runs and summary in {}", out.display());
    Ok(())
}
