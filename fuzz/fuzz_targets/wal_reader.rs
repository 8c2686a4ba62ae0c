//! The WAL frame reader ships whatever SQLite left in `-wal`, including torn and garbage tails.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren::backup::wal::{read_frames, wal_path, Cursor};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static DIR: std::path::PathBuf = {
            let d = std::env::temp_dir().join(format!("warren-fuzz-wal-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            d
        };
    }
    DIR.with(|dir| {
        let db = dir.join("tenant.db");
        std::fs::write(wal_path(&db), data).unwrap();
        let _ = read_frames(&db, &Cursor::default());
        // From a cursor part-way in, with salts the file may or may not have.
        if data.len() > 48 {
            let c =
                Cursor { offset: 32 + (data[0] as u64) * 24, salt1: u32::from(data[1]), salt2: 0, ck1: 0, ck2: 0, checkpointed: data[2] & 1 == 1 };
            let _ = read_frames(&db, &c);
        }
    });
});
