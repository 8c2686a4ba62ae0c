//! A tenant's documents with no server running: what `warren import` and `warren export` use
//! without `--server`. The same preparation, embedding and index writes as the server's document
//! service, on the tenant's own files, which the operator's proof opens.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::audit::Operator;
use crate::auth::AdminProof;
use crate::docs::{self, DocLimits, DocumentInput, TokenCounter};
use crate::error::Error;
use crate::search::TenantSearch;

/// One stored document as `warren export` writes it.
pub struct ExportedDoc {
    pub path: String,
    pub content: String,
    pub title: Option<String>,
    pub metadata: Map<String, Value>,
}

/// A closed tenant's documents, opened for writing by the local operator.
pub struct OfflineDocs {
    conn: rusqlite::Connection,
    search: Box<TenantSearch>,
    embed: crate::embed::EmbedService,
    limits: DocLimits,
}

impl Operator {
    fn tenant_db(&self, id: &str) -> std::path::PathBuf {
        crate::tenant::tenant_dir(&self.config.data_dir, id).join(crate::tenant::DB_FILE)
    }

    /// Opens a tenant's documents for `warren import` (refused while a server runs on the data dir).
    pub async fn open_offline_docs(&self, _operator: &AdminProof, slug: &str) -> Result<OfflineDocs, Error> {
        self.refuse_while_server_runs(|dir, url| {
            format!("a warren server is running on {dir}: import through it with --server {url} --key <tenant API key>")
        })?;
        let t = self.tenant(slug).await?;
        let dir = crate::tenant::tenant_dir(&self.config.data_dir, &t.id);
        let conn = rusqlite::Connection::open_with_flags(self.tenant_db(&t.id), rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let search = Box::new(TenantSearch::open(&dir, &conn)?);
        let embed = crate::embed::EmbedService::start(&self.config.embed.service_config(&self.config.model_dir));
        let limits = DocLimits { max_content_bytes: self.config.docs.max_document_bytes, ..DocLimits::default() };
        Ok(OfflineDocs { conn, search, embed, limits })
    }

    /// Every document of a tenant, ordered by path, read-only (safe while a server runs: WAL readers
    /// do not block writers).
    pub async fn export_offline(
        &self,
        _operator: &AdminProof,
        slug: &str,
        mut each: impl FnMut(ExportedDoc) -> anyhow::Result<()>,
    ) -> Result<usize, Error> {
        let t = self.tenant(slug).await?;
        let conn = rusqlite::Connection::open_with_flags(self.tenant_db(&t.id), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut st = conn.prepare("SELECT path, content, title, metadata FROM documents ORDER BY path")?;
        let mut rows = st.query([])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let metadata: Map<String, Value> = serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default();
            each(ExportedDoc { path: r.get(0)?, content: r.get(1)?, title: r.get(2)?, metadata }).map_err(Error::Internal)?;
            n += 1;
        }
        Ok(n)
    }
}

impl OfflineDocs {
    pub fn max_content_bytes(&self) -> usize {
        self.limits.max_content_bytes
    }

    /// path → content SHA-256 of every stored document.
    pub fn hashes(&self) -> Result<HashMap<String, String>, Error> {
        let mut st = self.conn.prepare("SELECT path, content_sha256 FROM documents")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Prepares, embeds and stores a batch; returns per-document errors `(path, error)`.
    pub async fn write(&mut self, batch: Vec<DocumentInput>) -> Result<Vec<(String, Value)>, Error> {
        let tokenizer = self.embed.tokenizer();
        let counter = TokenCounter::new(tokenizer.as_deref());
        let mut failed = Vec::new();
        let mut ok = Vec::new();
        for input in batch {
            let path = input.path.clone();
            match docs::prepare(input, &self.limits, &counter) {
                Ok(p) => ok.push(p),
                Err(e) => failed.push((path, json!({"code": e.code(), "message": e.public_message()}))),
            }
        }
        let embeddings: Vec<Option<Vec<Vec<f32>>>> = if self.embed.is_available() {
            let texts: Vec<String> = ok.iter().flat_map(|d| d.embedding_inputs()).collect();
            let vectors = if texts.is_empty() { Vec::new() } else { self.embed.embed_all(texts).await.map_err(super::search::embed_error)? };
            let mut flat = vectors.into_iter();
            ok.iter().map(|d| Some(flat.by_ref().take(d.chunks.len()).collect())).collect()
        } else {
            ok.iter().map(|_| None).collect()
        };
        let paths: Vec<String> = ok.iter().map(|d| d.path.clone()).collect();
        let results = self.search.upsert_many(&mut self.conn, ok.into_iter().zip(embeddings).collect());
        for (p, r) in paths.into_iter().zip(results) {
            if let Err(e) = r {
                failed.push((p, json!({"code": e.code(), "message": e.public_message()})));
            }
        }
        Ok(failed)
    }

    /// Stops the embedding worker (the CLI's process ends after an import).
    pub fn close(self) {
        self.embed.shutdown();
    }
}
