//! `warren import` and `warren export`: bulk documents in and out of a tenant.
//!
//! Import walks a folder (respecting `.gitignore`, `--glob`/`--exclude`) or reads a JSONL file of
//! `{path, content, title?, metadata?}` lines, skips binary files and reports them, and skips
//! documents whose content hash the tenant already holds (so a second run is nearly free). It talks
//! to a running server over HTTP (`--server URL --key KEY`, through `POST /documents/bulk`, which
//! applies the plan's limits and metering) or, when no server holds the data dir, writes to the
//! tenant's SQLite file directly through the same prepare/embed/upsert path as the server.
//!
//! Export writes one JSONL line per document, ordered by path: `{path, content, title, metadata}`.
//! Importing that file into an empty tenant and exporting again gives the same bytes.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::AdminProof;
use crate::config::Config;
use crate::docs::{self, DocumentInput};
use crate::services::offline::OfflineDocs;
use crate::services::{Actor, Operator};

/// One JSONL line of an export (and of a JSONL import).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    pub path: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

pub struct ImportOptions {
    pub slug: String,
    pub source: PathBuf,
    pub globs: Vec<String>,
    pub excludes: Vec<String>,
    pub server: Option<String>,
    pub key: Option<String>,
    pub batch: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub imported: usize,
    pub unchanged: usize,
    pub skipped_binary: Vec<String>,
    pub skipped_too_large: Vec<String>,
    pub skipped_empty: Vec<String>,
    pub failed: Vec<Value>,
    pub seconds: f64,
    pub files_per_sec: f64,
}

enum Item {
    Doc(Line),
    Binary(String),
}

/// What to ingest, before hashing.
enum Source {
    Files(Vec<(String, PathBuf)>),
    Lines(Vec<Line>),
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The files under `root` to import: `.gitignore`d files (and hidden ones) are left out.
pub fn walk(root: &Path, globs: &[String], excludes: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut ob = ignore::overrides::OverrideBuilder::new(root);
    for g in globs {
        ob.add(g).with_context(|| format!("--glob {g}"))?;
    }
    for g in excludes {
        ob.add(&format!("!{g}")).with_context(|| format!("--exclude {g}"))?;
    }
    // Applied after the walk, not as the walker's overrides: a whitelisting override would win
    // over .gitignore, and --glob must only narrow what .gitignore leaves.
    let filter = ob.build()?;
    let mut out = Vec::new();
    for entry in ignore::WalkBuilder::new(root).require_git(false).sort_by_file_path(|a, b| a.cmp(b)).build() {
        let entry = entry?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let keep = match filter.matched(entry.path(), false) {
            ignore::Match::Whitelist(_) => true,
            ignore::Match::Ignore(_) => false,
            ignore::Match::None => globs.is_empty(),
        };
        if !keep {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let rel = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/");
        out.push((rel, entry.path().to_path_buf()));
    }
    Ok(out)
}

/// Text content of a file, or None when it looks binary (a NUL byte, or not UTF-8).
pub fn read_text(path: &Path) -> anyhow::Result<Option<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

fn read_jsonl(path: &Path) -> anyhow::Result<Vec<Line>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).with_context(|| format!("{}:{}: expected {{path, content, title?, metadata?}}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} files, {per_sec}, ETA {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Where documents go: a running server, or the tenant's files (through the offline document service).
enum Target {
    Http { client: reqwest::Client, base: String, key: String },
    Offline(OfflineDocs),
}

fn cli_error(e: crate::error::Error) -> anyhow::Error {
    anyhow::anyhow!("{} ({})", e, e.code())
}

impl Target {
    async fn open(config: &Config, slug: &str, server: Option<String>, key: Option<String>) -> anyhow::Result<Target> {
        if let Some(base) = server {
            let key = key.or_else(|| std::env::var("WARREN_KEY").ok()).context("--server needs --key (or WARREN_KEY)")?;
            let client = reqwest::Client::builder().timeout(Duration::from_secs(900)).build()?;
            return Ok(Target::Http { client, base: base.trim_end_matches('/').to_string(), key });
        }
        let ops = Operator::offline(config, Actor::Cli).await?;
        Ok(Target::Offline(ops.open_offline_docs(&AdminProof::local_operator(), slug).await.map_err(cli_error)?))
    }

    fn max_content_bytes(&self, config: &Config) -> usize {
        match self {
            Target::Offline(d) => d.max_content_bytes(),
            Target::Http { .. } => config.docs.max_document_bytes,
        }
    }

    async fn get(&self, path_and_query: &str) -> anyhow::Result<Value> {
        let Target::Http { client, base, key } = self else { unreachable!("HTTP only") };
        let r = client.get(format!("{base}/api/v1{path_and_query}")).bearer_auth(key).send().await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path_and_query}: {status} {body}");
        }
        Ok(body)
    }

    /// path → content SHA-256 of every stored document.
    async fn hashes(&self) -> anyhow::Result<HashMap<String, String>> {
        match self {
            Target::Offline(d) => d.hashes().map_err(cli_error),
            Target::Http { .. } => {
                let mut out = HashMap::new();
                let mut cursor = String::new();
                loop {
                    let page = self.get(&format!("/documents?limit={}&cursor={cursor}", docs::store::LIST_MAX_LIMIT)).await?;
                    for d in page["documents"].as_array().into_iter().flatten() {
                        out.insert(d["path"].as_str().unwrap_or_default().to_string(), d["content_sha256"].as_str().unwrap_or_default().to_string());
                    }
                    match page["next_cursor"].as_str() {
                        Some(c) => cursor = c.to_string(),
                        None => return Ok(out),
                    }
                }
            }
        }
    }

    /// Writes a batch; returns per-document errors `(path, error)`.
    async fn write(&mut self, batch: Vec<DocumentInput>) -> anyhow::Result<Vec<(String, Value)>> {
        match self {
            Target::Http { client, base, key } => {
                let paths: Vec<String> = batch.iter().map(|d| d.path.clone()).collect();
                let body = json!({"documents": batch});
                loop {
                    let r = client.post(format!("{base}/api/v1/documents/bulk")).bearer_auth(&*key).json(&body).send().await?;
                    let status = r.status();
                    if status.as_u16() == 429 || status.as_u16() == 503 {
                        let wait = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(1u64);
                        let b: Value = r.json().await.unwrap_or(Value::Null);
                        if b["error"]["code"] == "quota_exceeded" {
                            bail!("{b}");
                        }
                        let (cost, limit) = (b["error"]["cost"].as_u64().unwrap_or(0), b["error"]["limit"].as_u64().unwrap_or(u64::MAX));
                        if cost > limit {
                            bail!(
                                "a batch of {} documents costs {cost} rate-limit cells, over this key's burst of {limit}: use --batch {}",
                                paths.len(),
                                limit.saturating_sub(2).max(1)
                            );
                        }
                        tokio::time::sleep(Duration::from_secs(wait.min(60))).await;
                        continue;
                    }
                    let b: Value = r.json().await.unwrap_or(Value::Null);
                    if !status.is_success() {
                        bail!("POST /documents/bulk: {status} {b}");
                    }
                    let mut failed = Vec::new();
                    for item in b["results"].as_array().into_iter().flatten() {
                        if let Some(e) = item.get("error") {
                            let i = item["index"].as_u64().unwrap_or(0) as usize;
                            failed.push((paths.get(i).cloned().unwrap_or_default(), e.clone()));
                        }
                    }
                    return Ok(failed);
                }
            }
            Target::Offline(d) => d.write(batch).await.map_err(cli_error),
        }
    }
}

/// Runs `warren import`; prints progress on stderr and returns the report.
pub fn import(config: &Config, opts: ImportOptions) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(import_async(config, opts))
}

async fn import_async(config: &Config, opts: ImportOptions) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let source = if opts.source.is_dir() {
        Source::Files(walk(&opts.source, &opts.globs, &opts.excludes)?)
    } else if opts.source.extension().is_some_and(|e| e == "jsonl" || e == "ndjson") {
        Source::Lines(read_jsonl(&opts.source)?)
    } else {
        bail!("{} is neither a folder nor a .jsonl file", opts.source.display());
    };
    let mut target = Target::open(config, &opts.slug, opts.server.clone(), opts.key.clone()).await?;
    let existing = target.hashes().await?;
    let max_bytes = target.max_content_bytes(config);
    let mut report = Report::default();
    let total = match &source {
        Source::Files(f) => f.len(),
        Source::Lines(l) => l.len(),
    };
    let pb = progress(total, "importing");
    let batch_size = opts.batch.clamp(1, config.docs.max_bulk_documents.max(1));
    let batch_bytes = (config.docs.max_bulk_bytes / 3).max(1);
    let mut batch: Vec<DocumentInput> = Vec::new();
    let mut bytes = 0usize;
    let items: Box<dyn Iterator<Item = anyhow::Result<Item>>> = match source {
        Source::Lines(lines) => Box::new(lines.into_iter().map(|l| Ok(Item::Doc(l)))),
        Source::Files(files) => Box::new(files.into_iter().map(|(rel, abs)| {
            Ok(match read_text(&abs)? {
                Some(content) => Item::Doc(Line { path: rel, content, title: None, metadata: Map::new() }),
                None => Item::Binary(rel),
            })
        })),
    };
    for item in items {
        pb.inc(1);
        let line = match item? {
            Item::Doc(l) => l,
            Item::Binary(path) => {
                report.skipped_binary.push(path);
                continue;
            }
        };
        if line.content.trim().is_empty() {
            report.skipped_empty.push(line.path);
            continue;
        }
        if line.content.len() > max_bytes {
            report.skipped_too_large.push(line.path);
            continue;
        }
        if existing.get(&line.path).is_some_and(|h| *h == sha256_hex(&line.content)) {
            report.unchanged += 1;
            continue;
        }
        bytes += line.content.len() * 2 + line.path.len() + 256;
        batch.push(DocumentInput { content: line.content, path: line.path, title: line.title, metadata: Some(Value::Object(line.metadata)) });
        if batch.len() >= batch_size || bytes >= batch_bytes {
            flush(&mut target, &mut batch, &mut report).await?;
            bytes = 0;
        }
    }
    flush(&mut target, &mut batch, &mut report).await?;
    pb.finish_and_clear();
    report.seconds = started.elapsed().as_secs_f64();
    report.files_per_sec = if report.seconds > 0.0 { total as f64 / report.seconds } else { 0.0 };
    if let Target::Offline(d) = target {
        d.close();
    }
    Ok(report)
}

async fn flush(target: &mut Target, batch: &mut Vec<DocumentInput>, report: &mut Report) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    let failed = target.write(std::mem::take(batch)).await?;
    report.imported += n - failed.len();
    report.failed.extend(failed.into_iter().map(|(path, error)| json!({"path": path, "error": error})));
    Ok(())
}

/// Runs `warren export`: one JSONL line per document, ordered by path.
pub fn export(config: &Config, slug: &str, server: Option<String>, key: Option<String>, out: &mut dyn Write) -> anyhow::Result<usize> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        if let Some(base) = server {
            let target = Target::open(config, slug, Some(base), key).await?;
            let mut n = 0;
            let mut cursor = String::new();
            loop {
                let page = target.get(&format!("/documents?limit={}&cursor={cursor}", docs::store::LIST_MAX_LIMIT)).await?;
                for d in page["documents"].as_array().into_iter().flatten() {
                    let id = d["id"].as_str().unwrap_or_default();
                    let doc: docs::Document = serde_json::from_value(target.get(&format!("/documents/{id}")).await?)?;
                    write_line(out, Line { path: doc.path, content: doc.content, title: doc.title, metadata: doc.metadata })?;
                    n += 1;
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = c.to_string(),
                    None => return Ok(n),
                }
            }
        }
        // Offline: read-only, so safe while a server runs too (WAL readers do not block writers).
        let ops = Operator::offline(config, Actor::Cli).await?;
        ops.export_offline(&AdminProof::local_operator(), slug, |d| {
            write_line(out, Line { path: d.path, content: d.content, title: d.title, metadata: d.metadata })
        })
        .await
        .map_err(cli_error)
    })
}

fn write_line(out: &mut dyn Write, line: Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")?;
    Ok(())
}
