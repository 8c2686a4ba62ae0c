//! Rows of the tenant's `jobs` table: document writes that run in the background.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

/// A background job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// `job_` and a ULID.
    pub id: String,
    /// `document` (one `POST /documents`) or `bulk` (one `POST /documents/bulk`).
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    pub documents: u64,
    /// Chunks to embed.
    pub chunks: u64,
    /// Chunks embedded so far (live while running; equal to `chunks` once succeeded).
    pub chunks_embedded: u64,
    pub created_at: String,
    pub updated_at: String,
    /// What the synchronous call would have answered (a write result, or the bulk per-item results).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// `{code, message}` of a failed job.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    let status: String = r.get(2)?;
    let chunks = r.get::<_, i64>(4)?.max(0) as u64;
    let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str(&s).ok());
    Ok(Job {
        id: r.get(0)?,
        kind: r.get(1)?,
        chunks_embedded: if status == "succeeded" { chunks } else { 0 },
        status,
        documents: r.get::<_, i64>(3)?.max(0) as u64,
        chunks,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        result: parse(r.get(7)?),
        error: parse(r.get(8)?),
    })
}

const COLUMNS: &str = "id, kind, status, documents, chunks, created_at, updated_at, result, error";

/// Jobs queued or running.
pub fn active(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')", [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64)
}

/// Inserts a queued job holding `input`, and forgets finished jobs last updated before `prune_before`.
pub fn insert(
    c: &Connection,
    id: &str,
    kind: &str,
    input: &Value,
    documents: u64,
    chunks: u64,
    now: &str,
    prune_before: &str,
) -> rusqlite::Result<Job> {
    c.execute("DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND updated_at < ?1", [prune_before])?;
    c.execute(
        "INSERT INTO jobs (id, kind, status, input, documents, chunks, created_at, updated_at) VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?6)",
        params![id, kind, input.to_string(), documents as i64, chunks as i64, now],
    )?;
    get(c, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)
}

pub fn get(c: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
    c.query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], row).optional()
}

/// The most recent jobs, newest first.
pub fn recent(c: &Connection, limit: u32) -> rusqlite::Result<Vec<Job>> {
    let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?1"))?;
    let rows = st.query_map([limit], row)?.collect();
    rows
}

/// Marks a queued (or interrupted) job running and hands out its kind and input; None when it is not
/// there any more or already finished.
pub fn start(c: &Connection, id: &str, now: &str) -> rusqlite::Result<Option<(String, Value)>> {
    let found: Option<(String, Option<String>)> = c
        .query_row("SELECT kind, input FROM jobs WHERE id = ?1 AND status IN ('queued', 'running')", [id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((kind, Some(input))) = found else { return Ok(None) };
    c.execute("UPDATE jobs SET status = 'running', updated_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(Some((kind, serde_json::from_str(&input).unwrap_or(Value::Null))))
}

/// Records the outcome and drops the input.
pub fn finish(c: &Connection, id: &str, outcome: Result<&Value, &Value>, now: &str) -> rusqlite::Result<()> {
    let (status, result, error) = match outcome {
        Ok(v) => ("succeeded", Some(v.to_string()), None),
        Err(e) => ("failed", None, Some(e.to_string())),
    };
    c.execute(
        "UPDATE jobs SET status = ?2, result = ?3, error = ?4, input = NULL, updated_at = ?5 WHERE id = ?1",
        params![id, status, result, error, now],
    )?;
    Ok(())
}
