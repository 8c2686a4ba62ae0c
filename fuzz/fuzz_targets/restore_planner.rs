//! The restore planner picks files from a replica listing, which may hold gaps, overlaps and junk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren::backup::restore::{plan, Target};
use warren::backup::store::FileInfo;

fn u64_at(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(a) % 4096
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let files: Vec<FileInfo> = rest
        .chunks(9)
        .map(|c| {
            let min = u64_at(&c[1.min(c.len())..]) + 1;
            FileInfo {
                level: c[0] % 10,
                min,
                max: min + u64::from(c.get(5).copied().unwrap_or(0) % 16),
                size: 100,
                created_ms: i64::from(c[0]) * 1000,
            }
        })
        .collect();
    let target = match mode % 3 {
        0 => Target::Latest,
        1 => Target::Txid(u64::from(mode)),
        _ => Target::Time(chrono::DateTime::from_timestamp(i64::from(mode) * 10, 0).unwrap_or_default()),
    };
    if let Ok(chosen) = plan(&files, target) {
        // A plan only uses listed files.
        for f in &chosen {
            assert!(files.contains(f), "planned a file that is not in the listing");
        }
    }
});
