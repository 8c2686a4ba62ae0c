//! Restoring a database from its replica, choosing files exactly as `litestream restore` 0.5 does:
//! the newest snapshot at or before the target, then repeatedly the file (any level) that extends the
//! restored range the furthest. Every file is verified (structure, LZ4 blocks, CRC-64) before a single
//! page of it is written, and a corrupt or truncated object fails the restore with its name.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};

use super::ltx;
use super::store::{FileInfo, Replica};

#[derive(Debug, Clone, Copy)]
pub enum Target {
    Latest,
    /// The newest restore point at or before this TXID.
    Txid(u64),
    /// The newest restore point captured before this time.
    Time(DateTime<Utc>),
}

impl Target {
    pub fn parse(txid: Option<&str>, timestamp: Option<&str>) -> anyhow::Result<Target> {
        match (txid, timestamp) {
            (Some(_), Some(_)) => bail!("give either a TXID or a timestamp, not both"),
            (Some(t), None) => {
                let t = t.trim_start_matches("0x");
                anyhow::ensure!(!t.is_empty() && t.len() <= 16 && t.bytes().all(|b| b.is_ascii_hexdigit()), "TXID must be up to 16 hex digits");
                Ok(Target::Txid(u64::from_str_radix(t, 16)?))
            }
            (None, Some(s)) => Ok(Target::Time(crate::clock::parse_ts(s).context("timestamp must be RFC 3339")?)),
            (None, None) => Ok(Target::Latest),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Report {
    /// The TXID the restored database corresponds to (16 hex digits).
    pub txid: String,
    pub files: usize,
    pub pages: u32,
    pub bytes: u64,
    pub timestamp: String,
}

/// Chooses the files to apply, in order.
pub fn plan(all: &[FileInfo], target: Target) -> anyhow::Result<Vec<FileInfo>> {
    let eligible = |f: &FileInfo| match target {
        Target::Latest => true,
        Target::Txid(t) => f.max <= t,
        Target::Time(s) => f.created_ms < s.timestamp_millis(),
    };
    let files: Vec<FileInfo> = all.iter().filter(|f| eligible(f)).copied().collect();
    if files.is_empty() {
        bail!(match target {
            Target::Latest => "the replica is empty".to_string(),
            _ => "no backup exists at or before the requested point".to_string(),
        });
    }
    let mut chain = Vec::new();
    let mut cur = 0u64;
    if let Some(s) = files.iter().filter(|f| f.level == 9).max_by_key(|f| f.max) {
        chain.push(*s);
        cur = s.max;
    }
    loop {
        let next = files
            .iter()
            .filter(|f| f.level <= 8 && f.min <= cur + 1 && f.max > cur)
            .max_by(|a, b| a.max.cmp(&b.max).then(b.min.cmp(&a.min)).then(a.level.cmp(&b.level)));
        match next {
            Some(f) => {
                chain.push(*f);
                cur = f.max;
            }
            None => break,
        }
    }
    if matches!(target, Target::Latest) {
        if let Some(f) = files.iter().find(|f| f.level <= 8 && f.min > cur + 1) {
            bail!("the replica has a gap: nothing covers TXID {:016x} before {}", cur + 1, ltx::file_name(f.min, f.max));
        }
    }
    if chain.is_empty() || chain[0].min != 1 {
        bail!("the replica has no snapshot to start from");
    }
    Ok(chain)
}

/// Restores `replica` at `target` into `out` (written as `<out>.tmp`, verified, then renamed).
pub async fn restore_to(replica: &Replica, target: Target, out: &Path) -> anyhow::Result<Report> {
    let all = replica.list().await.context("listing the replica")?;
    let chain = plan(&all, target)?;
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    let _ = std::fs::remove_file(&tmp);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let file = std::sync::Arc::new(file);
    let mut have: Vec<bool> = Vec::new();
    let mut last: Option<ltx::Header> = None;
    let mut bytes = 0u64;
    for f in &chain {
        let name = format!("level {} file {}", f.level, ltx::file_name(f.min, f.max));
        let data = replica.get(f).await.with_context(|| format!("downloading {name}"))?;
        bytes += data.len() as u64;
        let file = file.clone();
        let page_size = last.map(|h| h.page_size);
        let (h, written) = tokio::task::spawn_blocking(move || -> anyhow::Result<(ltx::Header, Vec<u32>)> {
            let d = ltx::decode(&data)?;
            if let Some(ps) = page_size {
                anyhow::ensure!(d.header.page_size == ps, "page size {} differs from {ps}", d.header.page_size);
            }
            let mut written = Vec::with_capacity(d.pages.len());
            for (p, page) in &d.pages {
                file.write_all_at(page, (*p as u64 - 1) * d.header.page_size as u64)?;
                written.push(*p);
            }
            Ok((d.header, written))
        })
        .await?
        .with_context(|| format!("{name} is corrupt or truncated; nothing was restored"))?;
        anyhow::ensure!(h.min_txid == f.min && h.max_txid == f.max, "{name}: header says {}-{}", h.min_txid, h.max_txid);
        for p in written {
            if have.len() < p as usize {
                have.resize(p as usize, false);
            }
            have[p as usize - 1] = true;
        }
        last = Some(h);
    }
    let h = last.expect("chain is not empty");
    let lock = ltx::lock_pgno(h.page_size);
    if let Some(missing) = (1..=h.commit).find(|p| *p != lock && !have.get(*p as usize - 1).copied().unwrap_or(false)) {
        bail!("the replica does not hold page {missing} of the database at TXID {:016x}", h.max_txid);
    }
    let tmp2 = tmp.clone();
    let commit = h.commit;
    let page_size = h.page_size;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        file.set_len(commit as u64 * page_size as u64)?;
        file.sync_all()?;
        drop(file);
        let conn = rusqlite::Connection::open(&tmp2)?;
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        anyhow::ensure!(ok == "ok", "the restored database fails its integrity check: {ok}");
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        drop(conn);
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", tmp2.display()));
        }
        Ok(())
    })
    .await??;
    std::fs::rename(&tmp, out).with_context(|| format!("moving the restored file to {}", out.display()))?;
    Ok(Report {
        txid: format!("{:016x}", h.max_txid),
        files: chain.len(),
        pages: h.commit,
        bytes,
        timestamp: crate::clock::ts(DateTime::from_timestamp_millis(h.timestamp_ms).unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(level: u8, min: u64, max: u64) -> FileInfo {
        FileInfo { level, min, max, size: 1, created_ms: max as i64 * 1000 }
    }

    #[test]
    fn plan_follows_litestream() {
        let files = vec![f(9, 1, 5), f(0, 6, 6), f(0, 7, 7), f(1, 6, 7), f(0, 8, 8)];
        let p = plan(&files, Target::Latest).unwrap();
        assert_eq!(p, vec![f(9, 1, 5), f(1, 6, 7), f(0, 8, 8)]);
        let p = plan(&files, Target::Txid(6)).unwrap();
        assert_eq!(p, vec![f(9, 1, 5), f(0, 6, 6)]);
        assert!(plan(&[f(9, 1, 5), f(0, 7, 7)], Target::Latest).unwrap_err().to_string().contains("gap"));
        assert!(plan(&[f(0, 3, 3)], Target::Latest).is_err());
        let chain_only = vec![f(0, 1, 1), f(0, 2, 2), f(0, 3, 3)];
        assert_eq!(plan(&chain_only, Target::Txid(2)).unwrap().len(), 2);
    }
}
