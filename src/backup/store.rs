//! Replica storage: the Litestream layout on S3-compatible object storage or a local directory.
//!
//! | backend | key of one file |
//! |---|---|
//! | `s3://bucket/prefix?endpoint=…&region=…` | `<prefix>/<replica>/<level as %04x>/<min>-<max>.ltx`, user metadata `litestream-timestamp` |
//! | `file:///dir` | `<dir>/<replica>/ltx/<level>/<min>-<max>.ltx`, mtime = the capture time |
//!
//! `<replica>` is `tenants/<tenant id>` or `control`. Objects are written whole and never rewritten:
//! with `backup.conditional_writes` (the default) a PUT is create-only (S3 `If-None-Match: *`; a
//! hard link of a finished temp file on `file://`), so a writer that lost its lease cannot replace a
//! file the new owner wrote at the same key. Without it, a PUT overwrites (temp file and rename).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig};

use super::ltx;

/// One replica file as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    pub level: u8,
    pub min: u64,
    pub max: u64,
    pub size: u64,
    /// Capture time (S3: LastModified when listed; file: mtime), milliseconds since the epoch.
    pub created_ms: i64,
}

#[derive(Debug)]
enum Backend {
    S3 { store: Arc<dyn ObjectStore>, prefix: String, bucket: String, query: String },
    File { root: PathBuf },
}

/// The parsed `backup.url`: where every replica of this node lives.
#[derive(Debug, Clone)]
pub struct ReplicaRoot {
    backend: Arc<Backend>,
    /// PUTs never replace an object (`backup.conditional_writes`).
    create_only: bool,
}

/// What a PUT did.
#[derive(Debug)]
pub enum Put {
    Written,
    /// Create-only, and an object was already at the key: its bytes, so that the caller can tell an
    /// earlier attempt of its own from another writer's file.
    Existing(Bytes),
}

/// Credentials for S3 when they are not in the usual AWS environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Credentials {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl ReplicaRoot {
    pub fn parse(url: &str, creds: &S3Credentials, request_timeout: Duration) -> anyhow::Result<ReplicaRoot> {
        let u = url::Url::parse(url).with_context(|| format!("backup.url {url:?} is not a URL"))?;
        match u.scheme() {
            "file" => {
                let root = u.to_file_path().map_err(|_| anyhow::anyhow!("backup.url {url:?}: bad file path"))?;
                Ok(ReplicaRoot { backend: Arc::new(Backend::File { root }), create_only: true })
            }
            "s3" => {
                let bucket = u.host_str().filter(|b| !b.is_empty()).context("backup.url: s3:// needs a bucket")?.to_string();
                let prefix = u.path().trim_matches('/').to_string();
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&bucket);
                let mut region_set = false;
                let mut allow_http = false;
                for (k, v) in u.query_pairs() {
                    match &*k {
                        "endpoint" => {
                            allow_http = v.starts_with("http://");
                            b = b.with_endpoint(v.to_string());
                        }
                        "region" => {
                            b = b.with_region(v.to_string());
                            region_set = true;
                        }
                        "force-path-style" | "forcePathStyle" => b = b.with_virtual_hosted_style_request(v != "true"),
                        other => bail!("backup.url: unknown S3 option {other:?} (known: endpoint, region, force-path-style)"),
                    }
                }
                if !region_set && std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
                    b = b.with_region("us-east-1");
                }
                if let Some(k) = &creds.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(s) = &creds.secret_access_key {
                    b = b.with_secret_access_key(s);
                }
                // Our own loop retries with backoff; the client gives up quickly so a dead endpoint
                // never holds a sync for minutes.
                let retry = RetryConfig { max_retries: 1, retry_timeout: request_timeout, ..Default::default() };
                let opts =
                    ClientOptions::new().with_allow_http(allow_http).with_timeout(request_timeout).with_connect_timeout(Duration::from_secs(2));
                let store = b.with_retry(retry).with_client_options(opts).build().context("configuring the S3 client")?;
                let backend = Backend::S3 { store: Arc::new(store), prefix, bucket, query: u.query().unwrap_or("").to_string() };
                Ok(ReplicaRoot { backend: Arc::new(backend), create_only: true })
            }
            other => bail!("backup.url: unsupported scheme {other:?} (use s3:// or file://)"),
        }
    }

    /// Whether PUTs are create-only (the default) or overwrite, for stores without conditional writes.
    pub fn with_create_only(mut self, create_only: bool) -> ReplicaRoot {
        self.create_only = create_only;
        self
    }

    /// The replica of one database, `sub` being `tenants/<id>` or `control`.
    pub fn replica(&self, sub: &str) -> Replica {
        Replica { root: self.clone(), sub: sub.to_string() }
    }

    /// Lists the tenant ids that have a replica (for `restore --all` and diagnostics).
    pub async fn tenant_ids(&self) -> anyhow::Result<Vec<String>> {
        match &*self.backend {
            Backend::File { root } => {
                let dir = root.join("tenants");
                tokio::task::spawn_blocking(move || {
                    let mut out = Vec::new();
                    match std::fs::read_dir(&dir) {
                        Ok(rd) => {
                            for e in rd.flatten() {
                                out.push(e.file_name().to_string_lossy().into_owned());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                    out.sort();
                    Ok(out)
                })
                .await?
            }
            Backend::S3 { store, prefix, .. } => {
                let p = Path::from(join(prefix, "tenants"));
                let res = store.list_with_delimiter(Some(&p)).await?;
                let mut out: Vec<String> = res.common_prefixes.iter().filter_map(|c| c.filename().map(str::to_string)).collect();
                out.sort();
                Ok(out)
            }
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The replica of one database.
#[derive(Debug, Clone)]
pub struct Replica {
    root: ReplicaRoot,
    sub: String,
}

impl Replica {
    /// The URL `litestream restore` takes for this replica.
    pub fn url(&self) -> String {
        match &*self.root.backend {
            Backend::File { root } => format!("file://{}", root.join(&self.sub).display()),
            Backend::S3 { prefix, bucket, query, .. } => {
                let q = if query.is_empty() { String::new() } else { format!("?{query}") };
                format!("s3://{bucket}/{}{q}", join(prefix, &self.sub))
            }
        }
    }

    fn s3_key(prefix: &str, sub: &str, level: u8, min: u64, max: u64) -> Path {
        Path::from(format!("{}/{level:04x}/{}", join(prefix, sub), ltx::file_name(min, max)))
    }

    fn file_path(root: &FsPath, sub: &str, level: u8, min: u64, max: u64) -> PathBuf {
        root.join(sub).join("ltx").join(level.to_string()).join(ltx::file_name(min, max))
    }

    /// Writes one object whole. Create-only (see the module's note), an object already at the key is
    /// left as it is and returned as [`Put::Existing`].
    pub async fn put(&self, level: u8, min: u64, max: u64, data: Bytes, created_ms: i64) -> anyhow::Result<Put> {
        let create_only = self.root.create_only;
        match &*self.root.backend {
            Backend::S3 { store, prefix, .. } => {
                let key = Self::s3_key(prefix, &self.sub, level, min, max);
                let mut attrs = Attributes::new();
                attrs.insert(Attribute::Metadata("litestream-timestamp".into()), rfc3339(created_ms).into());
                let mode = if create_only { PutMode::Create } else { PutMode::Overwrite };
                let opts = PutOptions { mode, attributes: attrs, ..Default::default() };
                match store.put_opts(&key, data.into(), opts).await {
                    Ok(_) => Ok(Put::Written),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Existing(store.get(&key).await?.bytes().await?)),
                    Err(e) => Err(e.into()),
                }
            }
            Backend::File { root } => {
                let path = Self::file_path(root, &self.sub, level, min, max);
                tokio::task::spawn_blocking(move || {
                    let dir = path.parent().expect("replica file has a parent");
                    std::fs::create_dir_all(dir)?;
                    // A name of its own: two writers of one key never share a temp file.
                    let tmp = path.with_extension(format!("{}.tmp", ulid::Ulid::new()));
                    let f = std::fs::File::create(&tmp)?;
                    std::io::Write::write_all(&mut &f, &data)?;
                    f.sync_all()?;
                    let t = UNIX_EPOCH + Duration::from_millis(created_ms.max(0) as u64);
                    f.set_modified(t)?;
                    drop(f);
                    if !create_only {
                        std::fs::rename(&tmp, &path)?;
                        return anyhow::Ok(Put::Written);
                    }
                    // A hard link never replaces its target: the create-only PUT of a directory.
                    let linked = std::fs::hard_link(&tmp, &path);
                    let _ = std::fs::remove_file(&tmp);
                    match linked {
                        Ok(()) => Ok(Put::Written),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Put::Existing(std::fs::read(&path)?.into())),
                        Err(e) => Err(e.into()),
                    }
                })
                .await?
            }
        }
    }

    pub async fn get(&self, f: &FileInfo) -> anyhow::Result<Bytes> {
        match &*self.root.backend {
            Backend::S3 { store, prefix, .. } => Ok(store.get(&Self::s3_key(prefix, &self.sub, f.level, f.min, f.max)).await?.bytes().await?),
            Backend::File { root } => {
                let path = Self::file_path(root, &self.sub, f.level, f.min, f.max);
                Ok(tokio::task::spawn_blocking(move || std::fs::read(&path).with_context(|| format!("reading {}", path.display()))).await??.into())
            }
        }
    }

    pub async fn delete(&self, f: &FileInfo) -> anyhow::Result<()> {
        match &*self.root.backend {
            Backend::S3 { store, prefix, .. } => match store.delete(&Self::s3_key(prefix, &self.sub, f.level, f.min, f.max)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            },
            Backend::File { root } => {
                let path = Self::file_path(root, &self.sub, f.level, f.min, f.max);
                tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                    _ => anyhow::Ok(()),
                })
                .await?
            }
        }
    }

    /// Every LTX file of this replica, sorted by (level, min, max).
    pub async fn list(&self) -> anyhow::Result<Vec<FileInfo>> {
        let mut out = match &*self.root.backend {
            Backend::S3 { store, prefix, .. } => {
                let base = join(prefix, &self.sub);
                let objs: Vec<_> = store.list(Some(&Path::from(base.clone()))).try_collect().await?;
                let mut out = Vec::new();
                for o in objs {
                    let key = o.location.as_ref();
                    let Some(rest) = key.strip_prefix(&base).and_then(|r| r.strip_prefix('/')) else { continue };
                    let Some((lvl, name)) = rest.split_once('/') else { continue };
                    let (Ok(level), Some((min, max))) = (u8::from_str_radix(lvl, 16), ltx::parse_file_name(name)) else { continue };
                    if lvl.len() != 4 || level > 9 {
                        continue;
                    }
                    out.push(FileInfo { level, min, max, size: o.size, created_ms: o.last_modified.timestamp_millis() });
                }
                out
            }
            Backend::File { root } => {
                let dir = root.join(&self.sub).join("ltx");
                tokio::task::spawn_blocking(move || list_dir(&dir)).await??
            }
        };
        out.sort_by_key(|f| (f.level, f.min, f.max));
        Ok(out)
    }

    /// Deletes every file of this replica.
    pub async fn delete_all(&self) -> anyhow::Result<usize> {
        let files = self.list().await?;
        for f in &files {
            self.delete(f).await?;
        }
        if let Backend::File { root } = &*self.root.backend {
            let dir = root.join(&self.sub);
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
        Ok(files.len())
    }
}

fn list_dir(dir: &FsPath) -> anyhow::Result<Vec<FileInfo>> {
    let mut out = Vec::new();
    for level in 0..=9u8 {
        let d = dir.join(level.to_string());
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some((min, max)) = ltx::parse_file_name(&name.to_string_lossy()) else { continue };
            let md = e.metadata()?;
            let created_ms = md.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as i64).unwrap_or(0);
            out.push(FileInfo { level, min, max, size: md.len(), created_ms });
        }
    }
    Ok(out)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_create_only_put_never_replaces_an_object_and_returns_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let root = ReplicaRoot::parse(&url, &S3Credentials::default(), Duration::from_secs(1)).unwrap();
        let r = root.replica("tenants/t1");
        assert!(matches!(r.put(0, 2, 2, Bytes::from_static(b"first"), 1_000).await.unwrap(), Put::Written));
        match r.put(0, 2, 2, Bytes::from_static(b"second"), 2_000).await.unwrap() {
            Put::Existing(b) => assert_eq!(&b[..], b"first"),
            Put::Written => panic!("the object was replaced"),
        }
        let files = r.list().await.unwrap();
        assert_eq!(files.len(), 1, "no temp file is left or listed: {files:?}");
        assert_eq!(&r.get(&files[0]).await.unwrap()[..], b"first");
        let leftovers = std::fs::read_dir(dir.path().join("tenants/t1/ltx/0")).unwrap().count();
        assert_eq!(leftovers, 1);
        // Overwriting, for stores without conditional writes.
        let r = root.with_create_only(false).replica("tenants/t1");
        assert!(matches!(r.put(0, 2, 2, Bytes::from_static(b"second"), 2_000).await.unwrap(), Put::Written));
        assert_eq!(&r.get(&files[0]).await.unwrap()[..], b"second");
    }
}
