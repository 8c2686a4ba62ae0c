//! Reading committed frames out of a SQLite WAL file, and full database images.
//!
//! warren owns every connection to a replicated database and turns automatic checkpoints off on all of
//! them, so the only checkpoints are the shipper's own, taken after it has shipped everything. The reader
//! therefore continues from the last shipped position as long as the WAL still carries the same salts and
//! the frame before that position still has the checksum recorded when it was shipped. Anything else
//! (a WAL restarted or rewritten behind our back) is reported as a mismatch and the caller ships a full
//! image at the next TXID instead.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use serde::{Deserialize, Serialize};

const WAL_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

/// Where the next unread frame starts. `offset == 0` means "a fresh WAL": read from its first frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub offset: u64,
    pub salt1: u32,
    pub salt2: u32,
    pub ck1: u32,
    pub ck2: u32,
    /// The shipper checkpointed everything up to `offset`, so SQLite may restart the WAL with new salts.
    pub checkpointed: bool,
}

/// Committed changes read from a WAL: the newest image of each changed page.
pub struct Frames {
    pub page_size: u32,
    pub commit: u32,
    pub pages: BTreeMap<u32, Vec<u8>>,
    pub end: Cursor,
    pub frames: u64,
}

pub enum Read_ {
    /// Nothing committed after the cursor.
    Nothing,
    Frames(Frames),
    /// The WAL is not the one the cursor points into.
    Mismatch(String),
}

pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn cksum(data: &[u8], mut s0: u32, mut s1: u32, big_endian: bool) -> (u32, u32) {
    for c in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (u32::from_be_bytes(c[0..4].try_into().unwrap()), u32::from_be_bytes(c[4..8].try_into().unwrap()))
        } else {
            (u32::from_le_bytes(c[0..4].try_into().unwrap()), u32::from_le_bytes(c[4..8].try_into().unwrap()))
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    (s0, s1)
}

struct WalHeader {
    page_size: u32,
    salt1: u32,
    salt2: u32,
    ck1: u32,
    ck2: u32,
    big_endian: bool,
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

/// The WAL header, or None when the WAL is missing, empty or has no valid header (SQLite then ignores it).
fn read_header(f: &File) -> anyhow::Result<Option<WalHeader>> {
    let mut h = [0u8; 32];
    match f.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let magic = be32(&h, 0);
    if magic != 0x377f0682 && magic != 0x377f0683 {
        return Ok(None);
    }
    let big_endian = magic & 1 == 1;
    let (c1, c2) = cksum(&h[..24], 0, 0, big_endian);
    if (c1, c2) != (be32(&h, 24), be32(&h, 28)) || be32(&h, 4) != 3007000 {
        return Ok(None);
    }
    let mut page_size = be32(&h, 8);
    if page_size == 1 {
        page_size = 65536;
    }
    Ok(Some(WalHeader { page_size, salt1: be32(&h, 16), salt2: be32(&h, 20), ck1: c1, ck2: c2, big_endian }))
}

/// Reads the frames committed after `from`.
pub fn read_frames(db: &Path, from: &Cursor) -> anyhow::Result<Read_> {
    let path = wal_path(db);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(if from.offset <= WAL_HEADER || from.checkpointed { Read_::Nothing } else { Read_::Mismatch("the WAL is gone".into()) });
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let Some(h) = read_header(&f)? else {
        return Ok(if from.offset <= WAL_HEADER || from.checkpointed {
            Read_::Nothing
        } else {
            Read_::Mismatch("the WAL has no valid header".into())
        });
    };
    let same_salts = (h.salt1, h.salt2) == (from.salt1, from.salt2);
    let (start, s0, s1) = if from.offset == 0 || (!same_salts && from.checkpointed) {
        (WAL_HEADER, h.ck1, h.ck2)
    } else if same_salts {
        (from.offset, from.ck1, from.ck2)
    } else {
        return Ok(Read_::Mismatch("the WAL was restarted by someone else".into()));
    };
    let frame_size = FRAME_HEADER + h.page_size as u64;
    let len = f.metadata()?.len();
    if start > len {
        return Ok(Read_::Mismatch(format!("the WAL is shorter ({len} bytes) than the shipped offset {start}")));
    }
    if start > WAL_HEADER {
        // The frame just before the cursor must still be the one we shipped.
        let mut fh = [0u8; 24];
        f.read_exact_at(&mut fh, start - frame_size).context("reading the last shipped frame")?;
        if (be32(&fh, 8), be32(&fh, 12), be32(&fh, 16), be32(&fh, 20)) != (h.salt1, h.salt2, s0, s1) {
            return Ok(Read_::Mismatch("the last shipped WAL frame was overwritten".into()));
        }
    }
    let mut r = BufReader::with_capacity(1 << 20, f.try_clone()?);
    std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(start))?;
    let (mut c0, mut c1) = (s0, s1);
    let mut offset = start;
    let mut pending: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut committed: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut commit = 0u32;
    let mut end = None;
    let mut frames = 0u64;
    let mut fh = [0u8; 24];
    while offset + frame_size <= len {
        if r.read_exact(&mut fh).is_err() {
            break;
        }
        let mut page = vec![0u8; h.page_size as usize];
        if r.read_exact(&mut page).is_err() {
            break;
        }
        if (be32(&fh, 8), be32(&fh, 12)) != (h.salt1, h.salt2) {
            break;
        }
        let (n0, n1) = cksum(&fh[..8], c0, c1, h.big_endian);
        let (n0, n1) = cksum(&page, n0, n1, h.big_endian);
        if (n0, n1) != (be32(&fh, 16), be32(&fh, 20)) {
            break;
        }
        (c0, c1) = (n0, n1);
        offset += frame_size;
        pending.push((be32(&fh, 0), page));
        let db_size = be32(&fh, 4);
        if db_size != 0 {
            for (pgno, data) in pending.drain(..) {
                committed.insert(pgno, data);
            }
            frames += 1;
            commit = db_size;
            end = Some(Cursor { offset, salt1: h.salt1, salt2: h.salt2, ck1: c0, ck2: c1, checkpointed: false });
        }
    }
    match end {
        None => Ok(Read_::Nothing),
        Some(end) => {
            committed.retain(|p, _| *p <= commit);
            Ok(Read_::Frames(Frames { page_size: h.page_size, commit, pages: committed, end, frames }))
        }
    }
}

/// Page size and page count of the database file itself (its header), ignoring the WAL.
pub fn db_file_geometry(db: &Path) -> anyhow::Result<(u32, u32)> {
    let f = File::open(db).with_context(|| format!("opening {}", db.display()))?;
    let mut h = [0u8; 100];
    f.read_exact_at(&mut h, 0).context("reading the database header")?;
    ensure!(&h[0..16] == b"SQLite format 3\0", "{} is not a SQLite database", db.display());
    let raw = u16::from_be_bytes([h[16], h[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    let pages = (f.metadata()?.len() / page_size as u64) as u32;
    Ok((page_size, pages))
}

/// Reads page `pgno` of the database file (zeros past its end).
pub fn read_db_page(f: &File, page_size: u32, pgno: u32, buf: &mut [u8]) -> anyhow::Result<()> {
    let off = (pgno as u64 - 1) * page_size as u64;
    match f.read_exact_at(buf, off) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
            buf.fill(0);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn open(p: &Path) -> Connection {
        let c = Connection::open(p).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;").unwrap();
        c
    }

    #[test]
    fn reads_committed_frames_incrementally_and_detects_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let c = open(&db);
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
        let Read_::Frames(a) = read_frames(&db, &Cursor::default()).unwrap() else { panic!("expected frames") };
        assert!(a.commit >= 2 && a.pages.contains_key(&1));
        assert!(matches!(read_frames(&db, &a.end).unwrap(), Read_::Nothing));
        c.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let Read_::Frames(b) = read_frames(&db, &a.end).unwrap() else { panic!("expected frames") };
        assert_eq!(b.frames, 1);
        assert!(b.end.offset > a.end.offset);
        // A checkpoint and restart by someone else: the old cursor no longer matches.
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); INSERT INTO t VALUES (3);").unwrap();
        assert!(matches!(read_frames(&db, &b.end).unwrap(), Read_::Mismatch(_)));
        // After our own checkpoint the restarted WAL is read from its start.
        let after = Cursor { checkpointed: true, ..b.end };
        let Read_::Frames(c3) = read_frames(&db, &after).unwrap() else { panic!("expected frames") };
        assert_eq!(c3.frames, 1);
    }
}
