//! The tenant archive: everything a tenant owns, in one file another warren can import.
//!
//! Format (`warren.tenant-archive`, version 1): a tar stream compressed with zstd (frame checksums
//! on), conventionally named `<slug>-<time>.warren.tar.zst`. Its entries, in this order:
//!
//! | entry | holds |
//! |---|---|
//! | `manifest.json` | format, version, the tenant's profile, and for every other entry its size, SHA-256 and (JSON Lines) row count |
//! | `tenant.db` | a consistent SQLite snapshot (`VACUUM INTO`, migrated to the current schema, rollback journal): the source of truth an import installs |
//! | `documents.jsonl` | one document per line, by path: id, path, title, content, metadata, content_sha256, created_at, updated_at |
//! | `products.jsonl` | by id: id, name, description, categories, tags, price, currency, in_stock, attributes, created_at, updated_at (no embedding: derived) |
//! | `customers.jsonl` | by id: id, data, created_at, updated_at |
//! | `orders.jsonl` / `order_lines.jsonl` | by id: id, customer_id, status, created_at, modified_at, received_at / order_id, line, product_id, quantity, price |
//! | `events.jsonl` | by id: id, customer_id, session_id, product_id, type, at |
//! | `usage.jsonl` | the recorded usage history: kind, count, tokens, at |
//! | `audit.jsonl` | the tenant's audit log, oldest first: at, actor, action, detail |
//! | `keys.jsonl` | key metadata: id, prefix, name, scopes, dates. Never a hash or a secret |
//!
//! Entries are written with mode 0600 and mtime 0, so two exports of the same state are identical
//! byte for byte apart from the manifest's `created_at`. An unpack checks everything before it
//! returns: the manifest comes first, every entry is listed in it with the same size and checksum,
//! none is missing or repeated, row counts match, and `tenant.db` passes `PRAGMA integrity_check`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "warren.tenant-archive";
pub const VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
pub const DB: &str = "tenant.db";
/// The largest manifest an unpack reads.
const MAX_MANIFEST: u64 = 16 << 20;

/// A tenant table as a JSON Lines file: the query (its order is the file's order) and the columns that
/// hold JSON text, written as JSON values.
struct Table {
    file: &'static str,
    table: &'static str,
    sql: &'static str,
    json_cols: &'static [&'static str],
}

const TABLES: &[Table] = &[
    Table {
        file: "documents.jsonl",
        table: "documents",
        sql: "SELECT id, path, title, content, metadata, content_sha256, created_at, updated_at FROM documents ORDER BY path",
        json_cols: &["metadata"],
    },
    Table {
        file: "products.jsonl",
        table: "products",
        sql:
            "SELECT id, name, description, categories, tags, price, currency, in_stock, attributes, created_at, updated_at FROM products ORDER BY id",
        json_cols: &["categories", "tags", "attributes"],
    },
    Table {
        file: "customers.jsonl",
        table: "customers",
        sql: "SELECT id, data, created_at, updated_at FROM customers ORDER BY id",
        json_cols: &["data"],
    },
    Table {
        file: "orders.jsonl",
        table: "orders",
        sql: "SELECT id, customer_id, status, created_at, modified_at, received_at FROM orders ORDER BY id",
        json_cols: &[],
    },
    Table {
        file: "order_lines.jsonl",
        table: "order_lines",
        sql: "SELECT order_id, line, product_id, quantity, price FROM order_lines ORDER BY order_id, line",
        json_cols: &[],
    },
    Table {
        file: "events.jsonl",
        table: "events",
        sql: "SELECT id, customer_id, session_id, product_id, type, at FROM events ORDER BY id",
        json_cols: &[],
    },
];

/// The control-plane files, written from what the caller passes.
pub const USAGE: &str = "usage.jsonl";
pub const AUDIT: &str = "audit.jsonl";
pub const KEYS: &str = "keys.jsonl";

/// The tenant's profile as the archive records it (an import recreates the tenant from it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub slug: String,
    pub name: String,
    pub email: String,
    pub tier: String,
    pub status: String,
    pub trial_ends_at: Option<String>,
    pub custom_domain: Option<String>,
    pub created_at: String,
}

/// One entry of the archive besides the manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    /// Lines, for JSON Lines entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub warren_version: String,
    pub created_at: String,
    /// The tenant database's schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    pub tenant: Profile,
    pub files: Vec<Entry>,
}

impl Manifest {
    /// Rows per JSON Lines file, e.g. `{"documents": 12, ...}`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.files.iter().filter_map(|e| Some((e.name.trim_end_matches(".jsonl").to_string(), e.rows?))).collect()
    }

    /// Uncompressed bytes of every entry.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|e| e.bytes).sum()
    }
}

/// Why an archive was refused: the text names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("{0}")]
    Invalid(String),
    /// Writing the staged files failed (the disk, not the archive).
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

fn invalid(msg: impl Into<String>) -> Refused {
    Refused::Invalid(msg.into())
}

/// A consistent copy of a tenant database at `to` (which must not exist), from any connection to it:
/// a read-only one is enough, and writers go on meanwhile (WAL).
pub fn snapshot(conn: &Connection, to: &Path) -> anyhow::Result<()> {
    let to = to.to_str().ok_or_else(|| anyhow::anyhow!("the export path is not UTF-8"))?;
    conn.execute("VACUUM INTO ?1", [to])?;
    Ok(())
}

/// The files of an archive, prepared in a work directory (removed on drop), ready to stream.
pub struct Prepared {
    work: PathBuf,
    pub manifest: Manifest,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Prepares an archive in `work`, which holds the [`snapshot`] as `tenant.db`: migrates the snapshot
/// to the current schema, writes every JSON Lines file from it and from `control` (file name, rows),
/// and checksums everything.
pub fn prepare(
    work: &Path,
    profile: Profile,
    control: Vec<(&'static str, Vec<Value>)>,
    created_at: String,
    migrations: &[&str],
) -> anyhow::Result<Prepared> {
    // From here on, dropping `prepared` removes the work directory, whatever fails.
    let mut prepared = Prepared {
        work: work.to_path_buf(),
        manifest: Manifest {
            format: FORMAT.into(),
            version: VERSION,
            warren_version: env!("CARGO_PKG_VERSION").into(),
            created_at,
            schema_version: 0,
            tenant: profile,
            files: Vec::new(),
        },
    };
    let db = work.join(DB);
    let mut conn = Connection::open(&db)?;
    conn.execute_batch("PRAGMA journal_mode=DELETE;")?;
    crate::control::migrate(&mut conn, migrations)?;
    prepared.manifest.schema_version = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let mut rows = BTreeMap::new();
    for t in TABLES {
        rows.insert(t.file, dump(&conn, t, &work.join(t.file))?);
    }
    drop(conn);
    for (file, lines) in control {
        let mut out = BufWriter::new(std::fs::File::create(work.join(file))?);
        for l in &lines {
            serde_json::to_writer(&mut out, l)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        rows.insert(file, lines.len() as u64);
    }
    let mut names = vec![DB];
    names.extend(rows.keys().copied());
    for name in names {
        let (bytes, sha256) = hash_file(&work.join(name))?;
        prepared.manifest.files.push(Entry { name: name.to_string(), bytes, sha256, rows: rows.get(name).copied() });
    }
    Ok(prepared)
}

fn dump(conn: &Connection, t: &Table, to: &Path) -> anyhow::Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(to)?);
    let mut st = conn.prepare(t.sql)?;
    let cols: Vec<String> = st.column_names().into_iter().map(str::to_string).collect();
    let mut rows = st.query([])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let mut obj = Map::new();
        for (i, c) in cols.iter().enumerate() {
            let v = match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(x) => Value::from(x),
                ValueRef::Real(x) => Value::from(x),
                ValueRef::Text(b) => {
                    let s = String::from_utf8_lossy(b);
                    if t.json_cols.contains(&c.as_str()) {
                        serde_json::from_str(&s).unwrap_or_else(|_| Value::String(s.into_owned()))
                    } else {
                        Value::String(s.into_owned())
                    }
                }
                ValueRef::Blob(b) => Value::String(hex::encode(b)),
            };
            obj.insert(c.clone(), v);
        }
        serde_json::to_writer(&mut out, &obj)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

fn hash_file(p: &Path) -> anyhow::Result<(u64, String)> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, hex::encode(h.finalize())))
}

impl Prepared {
    /// Writes the archive to `out`; `progress` hears the uncompressed bytes written so far.
    pub fn write_to<W: Write>(&self, out: W, progress: &mut dyn FnMut(u64)) -> anyhow::Result<W> {
        let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
        enc.include_checksum(true)?;
        let mut tar = tar::Builder::new(enc);
        let manifest = serde_json::to_vec_pretty(&self.manifest)?;
        append(&mut tar, MANIFEST, manifest.len() as u64, &manifest[..])?;
        let mut done = 0u64;
        for e in &self.manifest.files {
            let f = std::fs::File::open(self.work.join(&e.name))?;
            let reader = Progress { inner: f, done: &mut done, progress: &mut *progress };
            append(&mut tar, &e.name, e.bytes, reader)?;
        }
        let enc = tar.into_inner()?;
        Ok(enc.finish()?)
    }
}

struct Progress<'a, R> {
    inner: R,
    done: &'a mut u64,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.done += n as u64;
        (self.progress)(*self.done);
        Ok(n)
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, size: u64, data: impl Read) -> anyhow::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)?;
    Ok(())
}

/// An unpacked, verified archive in a staging directory (removed on drop unless taken).
pub struct Unpacked {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Unpacked {
    /// The staged tenant database.
    pub fn db(&self) -> PathBuf {
        self.dir.join(DB)
    }

    /// The lines of a JSON Lines entry, each parsed as a `T`.
    pub fn records<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Vec<T>> {
        let f = std::io::BufReader::new(std::fs::File::open(self.dir.join(name))?);
        f.lines().map(|l| Ok(serde_json::from_str(&l?)?)).collect()
    }
}

/// Unpacks `src` into `staging` (created; must not exist) and verifies it (see the module docs).
/// Nothing outside `staging` is touched, and `staging` is removed when anything is wrong.
pub fn unpack(src: impl Read, staging: &Path) -> Result<Unpacked, Refused> {
    std::fs::create_dir_all(staging).map_err(|e| Refused::Io(e.into()))?;
    match unpack_into(src, staging) {
        Ok(manifest) => Ok(Unpacked { dir: staging.to_path_buf(), manifest }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(staging);
            Err(e)
        }
    }
}

fn damaged(e: std::io::Error) -> Refused {
    invalid(format!("the archive is truncated or damaged (not a complete zstd-compressed tar): {e}"))
}

fn unpack_into(src: impl Read, staging: &Path) -> Result<Manifest, Refused> {
    let dec = zstd::stream::read::Decoder::new(src).map_err(damaged)?;
    let mut tar = tar::Archive::new(dec);
    let mut entries = tar.entries().map_err(damaged)?;
    let mut first = entries.next().ok_or_else(|| invalid("the archive is empty"))?.map_err(damaged)?;
    if first.path_bytes().as_ref() != MANIFEST.as_bytes() {
        return Err(invalid(format!("the archive does not start with {MANIFEST}: not a warren tenant archive")));
    }
    if first.size() > MAX_MANIFEST {
        return Err(invalid("the manifest is too large"));
    }
    let mut text = Vec::new();
    first.read_to_end(&mut text).map_err(damaged)?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| invalid(format!("the manifest is not valid: {e}")))?;
    if manifest.format != FORMAT {
        return Err(invalid(format!("the manifest's format is {:?}, not {FORMAT:?}", manifest.format)));
    }
    if manifest.version > VERSION {
        return Err(invalid(format!("the archive is format version {}, newer than this warren reads ({VERSION}): upgrade warren", manifest.version)));
    }
    let expected: BTreeMap<&str, &Entry> = manifest.files.iter().map(|e| (e.name.as_str(), e)).collect();
    if expected.len() != manifest.files.len() || !expected.contains_key(DB) {
        return Err(invalid("the manifest lists an entry twice or has no tenant.db"));
    }
    for name in expected.keys() {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(invalid(format!("the manifest names an unsafe entry {name:?}")));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        let mut entry = entry.map_err(damaged)?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(want) = expected.get(name.as_str()) else {
            return Err(invalid(format!("the archive holds {name:?}, which its manifest does not list")));
        };
        if !seen.insert(name.clone()) {
            return Err(invalid(format!("the archive holds {name:?} twice")));
        }
        if entry.header().entry_type() != tar::EntryType::Regular || entry.size() != want.bytes {
            return Err(invalid(format!("{name}: {} bytes in the archive, {} in the manifest", entry.size(), want.bytes)));
        }
        let path = staging.join(&name);
        let mut file = std::fs::File::create(&path).map_err(|e| Refused::Io(e.into()))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0u64;
        loop {
            let k = entry.read(&mut buf).map_err(damaged)?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            file.write_all(&buf[..k]).map_err(|e| Refused::Io(e.into()))?;
            n += k as u64;
        }
        file.sync_all().map_err(|e| Refused::Io(e.into()))?;
        if n != want.bytes || hex::encode(h.finalize()) != want.sha256 {
            return Err(invalid(format!("{name}: its checksum does not match the manifest (the archive is damaged)")));
        }
        if let Some(rows) = want.rows {
            let lines = count_json_lines(&path).map_err(|e| invalid(format!("{name}: {e}")))?;
            if lines != rows {
                return Err(invalid(format!("{name}: {lines} rows, the manifest says {rows}")));
            }
        }
    }
    if let Some(missing) = expected.keys().find(|n| !seen.contains(**n)) {
        return Err(invalid(format!("the archive is truncated: {missing} is missing")));
    }
    check_db(&staging.join(DB), &manifest)?;
    Ok(manifest)
}

fn count_json_lines(p: &Path) -> anyhow::Result<u64> {
    let f = std::io::BufReader::new(std::fs::File::open(p)?);
    let mut n = 0;
    for (i, l) in f.lines().enumerate() {
        let v: Value = serde_json::from_str(&l?).map_err(|e| anyhow::anyhow!("line {} is not JSON: {e}", i + 1))?;
        anyhow::ensure!(v.is_object(), "line {} is not a JSON object", i + 1);
        n += 1;
    }
    Ok(n)
}

/// `tenant.db` is a sound SQLite file whose tables agree with the JSON Lines files.
fn check_db(db: &Path, m: &Manifest) -> Result<(), Refused> {
    let bad = |e: rusqlite::Error| invalid(format!("tenant.db is not a sound SQLite database: {e}"));
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(bad)?;
    let verdict: String = conn.query_row("PRAGMA integrity_check(5)", [], |r| r.get(0)).map_err(bad)?;
    if verdict != "ok" {
        return Err(invalid(format!("tenant.db fails its integrity check: {verdict}")));
    }
    for t in TABLES {
        let Some(want) = m.files.iter().find(|e| e.name == t.file).and_then(|e| e.rows) else { continue };
        let have: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {}", t.table), [], |r| r.get(0)).map_err(bad)?;
        if have as u64 != want {
            return Err(invalid(format!("tenant.db has {have} {} but {} has {want} lines", t.table, t.file)));
        }
    }
    Ok(())
}
