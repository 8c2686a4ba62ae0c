//! LTX v3, the file format Litestream 0.5 restores (see docs/BACKUPS.md for the layout).
//!
//! A file is a 100-byte header, page frames in ascending page order (each a raw LZ4 block with a size
//! prefix), six zero bytes, a page index of uvarint triples, and a 16-byte trailer whose last word is a
//! CRC-64/GO-ISO over everything before it (with uncompressed page bytes). Litestream 0.5 requires the
//! NoChecksum flag, zero database checksums, and `commit > 0`.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context};

pub const HEADER_SIZE: usize = 100;
pub const TRAILER_SIZE: usize = 16;
const MAGIC: &[u8; 4] = b"LTX1";
const FLAG_NO_CHECKSUM: u32 = 0x2;
const PAGE_FLAG_SIZE: u16 = 0x1;
const CHECKSUM_FLAG: u64 = 1 << 63;
const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    pub min_txid: u64,
    pub max_txid: u64,
    /// Milliseconds since the Unix epoch when the state was captured.
    pub timestamp_ms: i64,
}

impl Header {
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }
}

/// The page that holds byte 1 GiB; never stored in LTX files.
pub fn lock_pgno(page_size: u32) -> u32 {
    (0x4000_0000 / page_size) + 1
}

/// `%016x-%016x.ltx`.
pub fn file_name(min: u64, max: u64) -> String {
    format!("{min:016x}-{max:016x}.ltx")
}

/// Parses a name written by [`file_name`]; anything else is ignored by readers.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    if a.len() != 16 || b.len() != 16 || !(a.bytes().chain(b.bytes())).all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
}

/// Streams one LTX file into memory: pages must be pushed in strictly ascending order.
pub struct Encoder {
    buf: Vec<u8>,
    crc: crc::Digest<'static, u64>,
    header: Header,
    index: Vec<(u32, u64, u64)>,
    last_pgno: u32,
}

impl Encoder {
    pub fn new(header: Header) -> anyhow::Result<Encoder> {
        ensure!(header.page_size.is_power_of_two() && (512..=65536).contains(&header.page_size), "bad page size {}", header.page_size);
        ensure!(header.min_txid >= 1 && header.max_txid >= header.min_txid, "bad txid range {}-{}", header.min_txid, header.max_txid);
        ensure!(header.commit > 0, "commit must be > 0");
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&FLAG_NO_CHECKSUM.to_be_bytes());
        h[8..12].copy_from_slice(&header.page_size.to_be_bytes());
        h[12..16].copy_from_slice(&header.commit.to_be_bytes());
        h[16..24].copy_from_slice(&header.min_txid.to_be_bytes());
        h[24..32].copy_from_slice(&header.max_txid.to_be_bytes());
        h[32..40].copy_from_slice(&header.timestamp_ms.to_be_bytes());
        // pre-apply checksum, WAL offset/size/salts and node id stay zero.
        let mut crc = CRC.digest();
        crc.update(&h);
        let mut buf = Vec::with_capacity(HEADER_SIZE + 4096);
        buf.extend_from_slice(&h);
        Ok(Encoder { buf, crc, header, index: Vec::new(), last_pgno: 0 })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn push_page(&mut self, pgno: u32, data: &[u8]) -> anyhow::Result<()> {
        ensure!(pgno > self.last_pgno, "page {pgno} out of order (after {})", self.last_pgno);
        ensure!(pgno <= self.header.commit, "page {pgno} beyond commit {}", self.header.commit);
        ensure!(pgno != lock_pgno(self.header.page_size), "lock page {pgno} must not be written");
        ensure!(data.len() == self.header.page_size as usize, "page {pgno} has {} bytes", data.len());
        let offset = self.buf.len() as u64;
        let compressed = lz4_flex::block::compress(data);
        let mut fh = [0u8; 10];
        fh[0..4].copy_from_slice(&pgno.to_be_bytes());
        fh[4..6].copy_from_slice(&PAGE_FLAG_SIZE.to_be_bytes());
        fh[6..10].copy_from_slice(&(compressed.len() as u32).to_be_bytes());
        self.crc.update(&fh);
        self.crc.update(data);
        self.buf.extend_from_slice(&fh);
        self.buf.extend_from_slice(&compressed);
        self.index.push((pgno, offset, (10 + compressed.len()) as u64));
        self.last_pgno = pgno;
        Ok(())
    }

    pub fn finish(mut self) -> Vec<u8> {
        let end = [0u8; 6];
        self.crc.update(&end);
        self.buf.extend_from_slice(&end);
        let mut idx = Vec::with_capacity(self.index.len() * 8 + 1);
        for (pgno, off, len) in &self.index {
            put_uvarint(&mut idx, *pgno as u64);
            put_uvarint(&mut idx, *off);
            put_uvarint(&mut idx, *len);
        }
        idx.push(0);
        let size = (idx.len() as u64).to_be_bytes();
        self.crc.update(&idx);
        self.crc.update(&size);
        self.buf.extend_from_slice(&idx);
        self.buf.extend_from_slice(&size);
        let post_apply = [0u8; 8];
        self.crc.update(&post_apply);
        self.buf.extend_from_slice(&post_apply);
        let checksum = CHECKSUM_FLAG | self.crc.finalize();
        self.buf.extend_from_slice(&checksum.to_be_bytes());
        self.buf
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn parse_header(b: &[u8]) -> anyhow::Result<Header> {
    ensure!(b.len() >= HEADER_SIZE, "file is shorter than an LTX header ({} bytes)", b.len());
    ensure!(&b[0..4] == MAGIC, "not an LTX file (bad magic)");
    let u32_at = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_be_bytes(b[o..o + 8].try_into().unwrap());
    let flags = u32_at(4);
    ensure!(flags & !FLAG_NO_CHECKSUM == 0, "unsupported LTX flags {flags:#x}");
    let h = Header { page_size: u32_at(8), commit: u32_at(12), min_txid: u64_at(16), max_txid: u64_at(24), timestamp_ms: u64_at(32) as i64 };
    ensure!(h.page_size.is_power_of_two() && (512..=65536).contains(&h.page_size), "bad page size {}", h.page_size);
    ensure!(h.min_txid >= 1 && h.max_txid >= h.min_txid, "bad txid range {}-{}", h.min_txid, h.max_txid);
    Ok(h)
}

/// A decoded and fully verified LTX file.
pub struct Decoded {
    pub header: Header,
    pub pages: BTreeMap<u32, Vec<u8>>,
}

/// Decodes `b`, verifying structure, every page block, the page index and the file checksum.
pub fn decode(b: &[u8]) -> anyhow::Result<Decoded> {
    let header = parse_header(b)?;
    ensure!(b.len() >= HEADER_SIZE + 6 + 1 + 8 + TRAILER_SIZE, "file is truncated ({} bytes)", b.len());
    let ps = header.page_size as usize;
    let mut crc = CRC.digest();
    crc.update(&b[..HEADER_SIZE]);
    let mut pos = HEADER_SIZE;
    let mut pages = BTreeMap::new();
    let mut last = 0u32;
    loop {
        ensure!(pos + 6 <= b.len(), "file is truncated inside the page block");
        let pgno = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap());
        let flags = u16::from_be_bytes(b[pos + 4..pos + 6].try_into().unwrap());
        if pgno == 0 {
            ensure!(flags == 0, "bad end-of-pages marker");
            crc.update(&b[pos..pos + 6]);
            pos += 6;
            break;
        }
        ensure!(flags == PAGE_FLAG_SIZE, "unsupported page flags {flags:#x} on page {pgno}");
        ensure!(pgno > last, "page {pgno} out of order");
        ensure!(pgno <= header.commit, "page {pgno} beyond commit {}", header.commit);
        ensure!(pos + 10 <= b.len(), "file is truncated at page {pgno}");
        let n = u32::from_be_bytes(b[pos + 6..pos + 10].try_into().unwrap()) as usize;
        ensure!(pos + 10 + n <= b.len(), "file is truncated inside page {pgno}");
        let data = lz4_flex::block::decompress(&b[pos + 10..pos + 10 + n], ps).with_context(|| format!("page {pgno}: bad LZ4 block"))?;
        ensure!(data.len() == ps, "page {pgno} decompressed to {} bytes", data.len());
        crc.update(&b[pos..pos + 10]);
        crc.update(&data);
        pages.insert(pgno, data);
        last = pgno;
        pos += 10 + n;
    }
    ensure!(b.len() >= pos + 8 + TRAILER_SIZE, "file is truncated in the page index");
    let idx_end = b.len() - TRAILER_SIZE - 8;
    let idx_size = u64::from_be_bytes(b[idx_end..idx_end + 8].try_into().unwrap()) as usize;
    ensure!(idx_end >= pos && idx_end - pos == idx_size, "page index size mismatch");
    crc.update(&b[pos..idx_end + 8]);
    crc.update(&b[b.len() - 16..b.len() - 8]);
    ensure!(b[b.len() - 16..b.len() - 8] == [0u8; 8], "post-apply checksum must be zero");
    let want = u64::from_be_bytes(b[b.len() - 8..].try_into().unwrap());
    let got = CHECKSUM_FLAG | crc.finalize();
    if want != got {
        bail!("file checksum mismatch (stored {want:#018x}, computed {got:#018x})");
    }
    Ok(Decoded { header, pages })
}

/// Whether two LTX files carry the same change: the same TXID range, page size, database size and
/// pages. Only their capture times may differ (a file built again after a lost answer).
pub fn same_change(a: &[u8], b: &[u8]) -> bool {
    match (decode(a), decode(b)) {
        (Ok(x), Ok(y)) => {
            let (p, q) = (x.header, y.header);
            (p.page_size, p.commit, p.min_txid, p.max_txid) == (q.page_size, q.commit, q.min_txid, q.max_txid) && x.pages == y.pages
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ps: usize, seed: u8) -> Vec<u8> {
        (0..ps).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect()
    }

    fn sample() -> Vec<u8> {
        let h = Header { page_size: 4096, commit: 3, min_txid: 1, max_txid: 1, timestamp_ms: 1_700_000_000_000 };
        let mut e = Encoder::new(h).unwrap();
        for p in 1..=3 {
            e.push_page(p, &page(4096, p as u8)).unwrap();
        }
        e.finish()
    }

    #[test]
    fn the_same_change_is_told_apart_from_another_by_its_pages_not_its_time() {
        let build = |ts: i64, seed: u8| {
            let mut e = Encoder::new(Header { page_size: 4096, commit: 3, min_txid: 1, max_txid: 1, timestamp_ms: ts }).unwrap();
            for p in 1..=3 {
                e.push_page(p, &page(4096, p as u8 * seed)).unwrap();
            }
            e.finish()
        };
        assert!(same_change(&sample(), &build(1_800_000_000_000, 1)), "only the capture time differs");
        assert!(!same_change(&sample(), &build(1_700_000_000_000, 3)), "other pages");
        let mut other_txid = sample();
        other_txid[24..32].copy_from_slice(&2u64.to_be_bytes());
        assert!(!same_change(&sample(), &other_txid), "another TXID (and a bad checksum)");
        assert!(!same_change(&sample(), b"not an LTX file"));
    }

    #[test]
    fn crc_is_go_iso() {
        assert_eq!(CRC.checksum(b"123456789"), 0xb90956c775a41001);
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let d = decode(&b).unwrap();
        assert_eq!(d.header.commit, 3);
        assert_eq!(d.pages.len(), 3);
        assert_eq!(d.pages[&2], page(4096, 2));
        assert_eq!(&b[4..8], &[0, 0, 0, 2]);
    }

    #[test]
    fn corruption_and_truncation_are_detected() {
        let b = sample();
        for cut in [10, 99, 150, b.len() - 1] {
            assert!(decode(&b[..cut]).is_err(), "truncated at {cut}");
        }
        let mut c = b.clone();
        let last = c.len() - 20;
        c[last] ^= 1;
        assert!(decode(&c).is_err());
        let mut c = b.clone();
        c[HEADER_SIZE + 12] ^= 0x55; // inside the first compressed block
        assert!(decode(&c).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(file_name(1, 0x1d), "0000000000000001-000000000000001d.ltx");
        assert_eq!(parse_file_name("0000000000000001-000000000000001d.ltx"), Some((1, 0x1d)));
        assert_eq!(parse_file_name("0000000000000001-000000000000001D.ltx"), None);
        assert_eq!(parse_file_name("x.ltx"), None);
    }

    #[test]
    fn rejects_out_of_order_and_lock_page() {
        let h = Header { page_size: 65536, commit: 20000, min_txid: 2, max_txid: 2, timestamp_ms: 0 };
        let mut e = Encoder::new(h).unwrap();
        e.push_page(5, &vec![0; 65536]).unwrap();
        assert!(e.push_page(4, &vec![0; 65536]).is_err());
        assert!(e.push_page(lock_pgno(65536), &vec![0; 65536]).is_err());
    }
}
