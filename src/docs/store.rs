//! SQLite access for documents, chunks and embeddings (the source of truth).
//!
//! All functions take a plain connection or transaction and run synchronously: call them on a
//! blocking thread. Writes expect to run inside a transaction opened by the caller
//! ([`crate::search::TenantSearch`] does this), so a document, its chunks and its embeddings
//! change together or not at all.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::{DeleteResult, DocsError, Document, DocumentSummary, ListPage, ListQuery, PreparedDocument, Result, WriteResult};

/// Default and maximum page sizes for [`list`].
pub const LIST_DEFAULT_LIMIT: usize = 50;
pub const LIST_MAX_LIMIT: usize = 1000;

/// Encodes a vector as little-endian f32s.
pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes little-endian f32s into `out`; returns false if the blob has the wrong length.
pub fn blob_to_vector(b: &[u8], dim: usize, out: &mut Vec<f32>) -> bool {
    if b.len() != dim * 4 {
        return false;
    }
    out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    true
}

/// The write generation (bumped by every write, stored in the index's commit payload).
pub fn generation(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT value FROM search_state WHERE key = 'generation'", [], |r| r.get(0)).optional()?.unwrap_or(0))
}

/// Bumps and returns the write generation.
pub fn bump_generation(conn: &Connection) -> Result<i64> {
    conn.execute(
        "INSERT INTO search_state (key, value) VALUES ('generation', 1)
         ON CONFLICT(key) DO UPDATE SET value = value + 1",
        [],
    )?;
    generation(conn)
}

/// A chunk as written, for updating the derived state.
#[derive(Debug, Clone)]
pub struct StoredChunk {
    pub id: i64,
    pub doc_seq: i64,
    pub index_text: String,
    pub vector: Option<Vec<f32>>,
}

/// Inserts or replaces (by path) one document with its chunks and optional embeddings.
/// Returns the write result, the document's `seq` and the new chunks.
pub fn upsert(
    conn: &Connection,
    doc: &PreparedDocument,
    embeddings: Option<&[Vec<f32>]>,
    dim: usize,
) -> Result<(WriteResult, i64, Vec<StoredChunk>)> {
    if let Some(e) = embeddings {
        if e.len() != doc.chunks.len() {
            return Err(DocsError::Internal(format!("{} embeddings for {} chunks", e.len(), doc.chunks.len())));
        }
        if let Some(bad) = e.iter().find(|v| v.len() != dim) {
            return Err(DocsError::Internal(format!("embedding of dimension {}, expected {dim}", bad.len())));
        }
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let metadata = Value::Object(doc.metadata.clone()).to_string();
    let existing: Option<(i64, String)> =
        conn.query_row("SELECT seq, id FROM documents WHERE path = ?1", [&doc.path], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let (seq, id, created) = match existing {
        Some((seq, id)) => {
            delete_chunks(conn, seq)?;
            conn.execute(
                "UPDATE documents SET title = ?2, content = ?3, metadata = ?4, content_sha256 = ?5,
                 tokens = ?6, chunk_count = ?7, updated_at = ?8 WHERE seq = ?1",
                params![seq, doc.title, doc.content, metadata, doc.content_sha256, doc.tokens as i64, doc.chunks.len() as i64, now],
            )?;
            (seq, id, false)
        }
        None => {
            let id = ulid::Ulid::new().to_string();
            conn.execute(
                "INSERT INTO documents (id, path, title, content, metadata, content_sha256, tokens, chunk_count, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                params![id, doc.path, doc.title, doc.content, metadata, doc.content_sha256, doc.tokens as i64, doc.chunks.len() as i64, now],
            )?;
            (conn.last_insert_rowid(), id, true)
        }
    };
    let mut ins_chunk = conn.prepare_cached(
        "INSERT INTO chunks (doc_seq, ord, start_byte, end_byte, heading_path, prefix, text, model_tokens, llm_tokens)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let mut ins_vec = conn.prepare_cached("INSERT INTO chunk_embeddings (chunk_id, doc_seq, dim, vector) VALUES (?1, ?2, ?3, ?4)")?;
    let mut stored = Vec::with_capacity(doc.chunks.len());
    for (i, c) in doc.chunks.iter().enumerate() {
        let hp = serde_json::to_string(&c.plan.heading_path).unwrap_or_else(|_| "[]".into());
        ins_chunk.execute(params![
            seq,
            c.plan.ord as i64,
            c.plan.start as i64,
            c.plan.end as i64,
            hp,
            c.plan.prefix,
            c.text,
            c.plan.model_tokens as i64,
            c.llm_tokens as i64
        ])?;
        let chunk_id = conn.last_insert_rowid();
        let vector = embeddings.map(|e| e[i].clone());
        if let Some(v) = &vector {
            ins_vec.execute(params![chunk_id, seq, dim as i64, vector_to_blob(v)])?;
        }
        stored.push(StoredChunk { id: chunk_id, doc_seq: seq, index_text: super::chunk::embed_text(&c.plan.prefix, &c.text), vector });
    }
    let result = WriteResult { id, path: doc.path.clone(), chunks: doc.chunks.len(), tokens: doc.tokens, created };
    Ok((result, seq, stored))
}

fn delete_chunks(conn: &Connection, seq: i64) -> Result<()> {
    conn.execute("DELETE FROM chunk_embeddings WHERE doc_seq = ?1", [seq])?;
    conn.execute("DELETE FROM chunks WHERE doc_seq = ?1", [seq])?;
    Ok(())
}

/// Deletes a document by public id; returns its `seq`.
pub fn delete_by_id(conn: &Connection, id: &str) -> Result<i64> {
    let seq: i64 = conn.query_row("SELECT seq FROM documents WHERE id = ?1", [id], |r| r.get(0)).optional()?.ok_or(DocsError::NotFound)?;
    delete_chunks(conn, seq)?;
    conn.execute("DELETE FROM documents WHERE seq = ?1", [seq])?;
    Ok(seq)
}

/// Deletes every document whose path starts with `prefix`; returns their `seq`s.
pub fn delete_by_prefix(conn: &Connection, prefix: &str) -> Result<Vec<i64>> {
    let seqs = doc_seqs_with_prefix(conn, prefix)?;
    for &seq in &seqs {
        delete_chunks(conn, seq)?;
        conn.execute("DELETE FROM documents WHERE seq = ?1", [seq])?;
    }
    Ok(seqs)
}

/// `seq`s of the documents whose path starts with `prefix` (exact prefix match, index-assisted).
pub fn doc_seqs_with_prefix(conn: &Connection, prefix: &str) -> Result<Vec<i64>> {
    let mut st = conn.prepare_cached("SELECT seq FROM documents WHERE path >= ?1 AND substr(path, 1, length(?1)) = ?1")?;
    let rows = st.query_map([prefix], |r| r.get(0))?.collect::<rusqlite::Result<Vec<i64>>>()?;
    Ok(rows)
}

/// `seq`s of the documents matching a path prefix and metadata equalities (all must hold).
pub fn filter_doc_seqs(conn: &Connection, path_prefix: Option<&str>, metadata: &Map<String, Value>) -> Result<HashSet<i64>> {
    let mut sql = String::from("SELECT d.seq FROM documents d WHERE 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(p) = path_prefix {
        args.push(p.to_string().into());
        let n = args.len();
        sql.push_str(&format!(" AND d.path >= ?{n} AND substr(d.path, 1, length(?{n})) = ?{n}"));
    }
    for (k, v) in metadata {
        args.push(k.clone().into());
        let kn = args.len();
        let cond = match v {
            Value::Null => "j.type = 'null'".to_string(),
            Value::Bool(b) => format!("j.type = '{}'", if *b { "true" } else { "false" }),
            Value::Number(n) => {
                args.push(n.as_f64().unwrap_or(f64::NAN).into());
                format!("j.type IN ('integer', 'real') AND j.atom = ?{}", args.len())
            }
            Value::String(s) => {
                args.push(s.clone().into());
                format!("j.type = 'text' AND j.atom = ?{}", args.len())
            }
            Value::Array(_) | Value::Object(_) => return Err(DocsError::invalid("filter.metadata", format!("value of {k:?} must be a scalar"))),
        };
        sql.push_str(&format!(" AND EXISTS (SELECT 1 FROM json_each(d.metadata) j WHERE j.key = ?{kn} AND {cond})"));
    }
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(params_from_iter(args), |r| r.get(0))?.collect::<rusqlite::Result<HashSet<i64>>>()?;
    Ok(rows)
}

fn parse_meta(s: &str) -> Map<String, Value> {
    match serde_json::from_str(s) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// One document by public id.
pub fn get(conn: &Connection, id: &str) -> Result<Document> {
    get_where(conn, "id", id)
}

/// One document by its path (MCP `get_document`, `warren://documents/{path}`).
pub fn get_by_path(conn: &Connection, path: &str) -> Result<Document> {
    get_where(conn, "path", path)
}

fn get_where(conn: &Connection, column: &'static str, value: &str) -> Result<Document> {
    conn.query_row(
        &format!("SELECT id, path, title, content, metadata, chunk_count, tokens, created_at, updated_at FROM documents WHERE {column} = ?1"),
        [value],
        |r| {
            Ok(Document {
                id: r.get(0)?,
                path: r.get(1)?,
                title: r.get(2)?,
                content: r.get(3)?,
                metadata: parse_meta(&r.get::<_, String>(4)?),
                chunks: r.get::<_, i64>(5)?.max(0) as usize,
                tokens: r.get::<_, i64>(6)?.max(0) as usize,
                created_at: r.get(7)?,
                updated_at: r.get(8)?,
            })
        },
    )
    .optional()?
    .ok_or(DocsError::NotFound)
}

/// Lists documents ordered by path. The cursor is the hex of the last path of the previous page.
pub fn list(conn: &Connection, q: &ListQuery) -> Result<ListPage> {
    let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    if limit == 0 || limit > LIST_MAX_LIMIT {
        return Err(DocsError::invalid("limit", format!("must be between 1 and {LIST_MAX_LIMIT}")));
    }
    let after = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => {
            let bytes = hex::decode(c).map_err(|_| DocsError::invalid("cursor", "malformed cursor"))?;
            Some(String::from_utf8(bytes).map_err(|_| DocsError::invalid("cursor", "malformed cursor"))?)
        }
        None => None,
    };
    let prefix = q.path_prefix.clone().unwrap_or_default();
    let mut st = conn.prepare_cached(
        "SELECT id, path, title, metadata, chunk_count, tokens, updated_at, content_sha256 FROM documents
         WHERE path >= ?1 AND substr(path, 1, length(?1)) = ?1 AND (?2 IS NULL OR path > ?2)
         ORDER BY path LIMIT ?3",
    )?;
    let mut docs = st
        .query_map(params![prefix, after, (limit + 1) as i64], |r| {
            Ok(DocumentSummary {
                id: r.get(0)?,
                path: r.get(1)?,
                title: r.get(2)?,
                metadata: parse_meta(&r.get::<_, String>(3)?),
                chunks: r.get::<_, i64>(4)?.max(0) as usize,
                tokens: r.get::<_, i64>(5)?.max(0) as usize,
                updated_at: r.get(6)?,
                content_sha256: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let next_cursor = if docs.len() > limit {
        docs.truncate(limit);
        docs.last().map(|d| hex::encode(d.path.as_bytes()))
    } else {
        None
    };
    Ok(ListPage { documents: docs, next_cursor })
}

/// A chunk row joined with its document, for results and assembly.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    pub id: i64,
    pub doc_seq: i64,
    pub document_id: String,
    pub path: String,
    pub title: Option<String>,
    pub metadata: Map<String, Value>,
    pub ord: i64,
    pub start: usize,
    pub end: usize,
    pub text: String,
    pub heading_path: Vec<String>,
    pub llm_tokens: usize,
}

/// Loads the chunks with these ids that still exist (missing ids are simply absent).
pub fn chunk_rows(conn: &Connection, ids: &[i64]) -> Result<HashMap<i64, ChunkRow>> {
    let mut out = HashMap::with_capacity(ids.len());
    for batch in ids.chunks(500) {
        let qs = vec!["?"; batch.len()].join(",");
        let sql = format!(
            "SELECT c.id, c.doc_seq, d.id, d.path, d.title, d.metadata, c.ord, c.start_byte, c.end_byte, c.text, c.heading_path, c.llm_tokens
             FROM chunks c JOIN documents d ON d.seq = c.doc_seq WHERE c.id IN ({qs})"
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st.query_map(params_from_iter(batch.iter()), |r| {
            Ok(ChunkRow {
                id: r.get(0)?,
                doc_seq: r.get(1)?,
                document_id: r.get(2)?,
                path: r.get(3)?,
                title: r.get(4)?,
                metadata: parse_meta(&r.get::<_, String>(5)?),
                ord: r.get(6)?,
                start: r.get::<_, i64>(7)?.max(0) as usize,
                end: r.get::<_, i64>(8)?.max(0) as usize,
                text: r.get(9)?,
                heading_path: serde_json::from_str(&r.get::<_, String>(10)?).unwrap_or_default(),
                llm_tokens: r.get::<_, i64>(11)?.max(0) as usize,
            })
        })?;
        for row in rows {
            let row = row?;
            out.insert(row.id, row);
        }
    }
    Ok(out)
}

/// A byte range of a document's content (offsets come from chunking, so they are char
/// boundaries; anything else yields `None`).
pub fn content_slice(conn: &Connection, doc_seq: i64, start: usize, end: usize) -> Result<Option<String>> {
    if end <= start {
        return Ok(Some(String::new()));
    }
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT substr(CAST(content AS BLOB), ?2, ?3) FROM documents WHERE seq = ?1",
            params![doc_seq, start as i64 + 1, (end - start) as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(bytes.and_then(|b| String::from_utf8(b).ok()))
}

/// Calls `f(chunk_id, doc_seq, index_text)` for every chunk (index rebuild).
pub fn for_each_chunk(conn: &Connection, mut f: impl FnMut(i64, i64, String) -> Result<()>) -> Result<()> {
    let mut st = conn.prepare("SELECT id, doc_seq, prefix, text FROM chunks ORDER BY id")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let prefix: String = r.get(2)?;
        let text: String = r.get(3)?;
        f(r.get(0)?, r.get(1)?, super::chunk::embed_text(&prefix, &text))?;
    }
    Ok(())
}

/// Every stored vector of dimension `dim`: (chunk ids, doc seqs, row-major data).
pub fn load_vectors(conn: &Connection, dim: usize) -> Result<(Vec<i64>, Vec<i64>, Vec<f32>)> {
    let mut st = conn.prepare("SELECT chunk_id, doc_seq, vector FROM chunk_embeddings WHERE dim = ?1")?;
    let mut rows = st.query([dim as i64])?;
    let (mut ids, mut seqs, mut data) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = rows.next()? {
        let blob = r.get_ref(2)?.as_blob().map_err(|e| DocsError::Internal(e.to_string()))?;
        if blob_to_vector(blob, dim, &mut data) {
            ids.push(r.get(0)?);
            seqs.push(r.get(1)?);
        }
    }
    Ok((ids, seqs, data))
}

/// Vectors of the given chunks (for MMR), keyed by chunk id.
pub fn vectors_for(conn: &Connection, ids: &[i64], dim: usize) -> Result<HashMap<i64, Vec<f32>>> {
    let mut out = HashMap::new();
    for batch in ids.chunks(500) {
        let qs = vec!["?"; batch.len()].join(",");
        let mut st = conn.prepare(&format!("SELECT chunk_id, vector FROM chunk_embeddings WHERE chunk_id IN ({qs})"))?;
        let mut rows = st.query(params_from_iter(batch.iter()))?;
        while let Some(r) = rows.next()? {
            let blob = r.get_ref(1)?.as_blob().map_err(|e| DocsError::Internal(e.to_string()))?;
            let mut v = Vec::with_capacity(dim);
            if blob_to_vector(blob, dim, &mut v) {
                out.insert(r.get(0)?, v);
            }
        }
    }
    Ok(out)
}

/// Chunks that have no embedding yet (stored while the model was unavailable):
/// `(chunk_id, text to embed)`, oldest first.
pub fn chunks_missing_embeddings(conn: &Connection, limit: usize) -> Result<Vec<(i64, String)>> {
    let mut st = conn.prepare(
        "SELECT c.id, c.prefix, c.text FROM chunks c LEFT JOIN chunk_embeddings e ON e.chunk_id = c.id
         WHERE e.chunk_id IS NULL ORDER BY c.id LIMIT ?1",
    )?;
    let rows = st
        .query_map([limit as i64], |r| Ok((r.get::<_, i64>(0)?, super::chunk::embed_text(&r.get::<_, String>(1)?, &r.get::<_, String>(2)?))))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Stores embeddings for existing chunks; returns `(chunk_id, doc_seq, vector)` of those stored.
pub fn store_embeddings(conn: &Connection, items: Vec<(i64, Vec<f32>)>, dim: usize) -> Result<Vec<(i64, i64, Vec<f32>)>> {
    let mut out = Vec::new();
    for (id, v) in items {
        if v.len() != dim {
            return Err(DocsError::Internal(format!("embedding of dimension {}, expected {dim}", v.len())));
        }
        let seq: Option<i64> = conn.query_row("SELECT doc_seq FROM chunks WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        if let Some(seq) = seq {
            conn.execute(
                "INSERT OR REPLACE INTO chunk_embeddings (chunk_id, doc_seq, dim, vector) VALUES (?1, ?2, ?3, ?4)",
                params![id, seq, dim as i64, vector_to_blob(&v)],
            )?;
            out.push((id, seq, v));
        }
    }
    Ok(out)
}

/// Number of documents (for stats and tests).
pub fn count_documents(conn: &Connection) -> Result<usize> {
    Ok(conn.query_row("SELECT count(*) FROM documents", [], |r| r.get::<_, i64>(0))?.max(0) as usize)
}

impl From<Vec<i64>> for DeleteResult {
    fn from(v: Vec<i64>) -> Self {
        DeleteResult { deleted: v.len() }
    }
}

/// How many of `paths` already hold a document (for the plan's document limit).
pub fn count_existing(conn: &Connection, paths: &[String]) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached("SELECT 1 FROM documents WHERE path = ?1")?;
    let mut n = 0u64;
    for p in paths {
        if stmt.exists([p])? {
            n += 1;
        }
    }
    Ok(n)
}

/// The tenant's documents and the bytes of their content (for the plan's storage limits).
pub fn totals(conn: &Connection) -> rusqlite::Result<(u64, u64)> {
    conn.query_row("SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(content AS BLOB))), 0) FROM documents", [], |r| {
        Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?.max(0) as u64))
    })
}
