//! Usage events: cheap to record, durable within a second, never counted twice.
//!
//! Handlers call [`Meter::record`], which only appends to an in-memory buffer. A single process-wide
//! task flushes the buffer every second into `usage_events` in control.db, one transaction per flush,
//! so a `kill -9` loses at most the last second of events and a flush is either wholly applied or
//! not at all. The plans module aggregates these events into monthly usage, quotas and bills.

use std::sync::Arc;

use chrono::Utc;
use parking_lot::Mutex;
use rusqlite::params;

use crate::control::{ts, ControlPlane};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Search,
    Assemble,
    Embedding,
    DocumentWrite,
    DocumentDelete,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Search => "search",
            Kind::Assemble => "assemble",
            Kind::Embedding => "embedding",
            Kind::DocumentWrite => "document_write",
            Kind::DocumentDelete => "document_delete",
        }
    }
}

#[derive(Debug, Clone)]
struct Event {
    tenant_id: String,
    kind: Kind,
    count: u64,
    tokens: u64,
    at: String,
}

#[derive(Clone)]
pub struct Meter {
    control: ControlPlane,
    buffer: Arc<Mutex<Vec<Event>>>,
}

impl Meter {
    pub fn new(control: ControlPlane) -> Meter {
        Meter { control, buffer: Arc::new(Mutex::new(Vec::new())) }
    }

    /// Records one call of `kind` with `tokens` (embedded or returned).
    pub fn record(&self, tenant_id: &str, kind: Kind, tokens: u64) {
        self.record_n(tenant_id, kind, 1, tokens);
    }

    /// Records `count` units at once (e.g. documents of a bulk write).
    pub fn record_n(&self, tenant_id: &str, kind: Kind, count: u64, tokens: u64) {
        self.buffer.lock().push(Event { tenant_id: tenant_id.to_string(), kind, count, tokens, at: ts(Utc::now()) });
    }

    /// Writes the buffered events in one transaction. On failure they go back to the buffer.
    pub async fn flush(&self) {
        let batch: Vec<Event> = std::mem::take(&mut *self.buffer.lock());
        if batch.is_empty() {
            return;
        }
        let keep = batch.clone();
        let res = self
            .control
            .write(move |c| {
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                {
                    let mut stmt =
                        tx.prepare_cached("INSERT INTO usage_events (tenant_id, kind, count, tokens, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
                    for e in &batch {
                        stmt.execute(params![e.tenant_id, e.kind.as_str(), e.count as i64, e.tokens as i64, e.at])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, events = keep.len(), "usage flush failed; will retry");
            let mut buf = self.buffer.lock();
            let newer = std::mem::take(&mut *buf);
            *buf = keep;
            buf.extend(newer);
        }
    }
}

/// Totals of a tenant's events with `at` in `[from, to)`, by kind: (kind, count, tokens).
pub fn totals(conn: &rusqlite::Connection, tenant_id: &str, from: &str, to: &str) -> rusqlite::Result<Vec<(String, i64, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, SUM(count), SUM(tokens) FROM usage_events WHERE tenant_id = ?1 AND at >= ?2 AND at < ?3 GROUP BY kind",
    )?;
    let rows = stmt.query_map(params![tenant_id, from, to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}
