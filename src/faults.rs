//! Crash points for the crash-point harness (`tests/api/crash.rs`, `benches/crash.sh`).
//!
//! [`point`] marks a place where a `kill -9` must leave nothing half-done: inside a write
//! transaction, between a commit and its WAL ship, around uploads, compaction, retention, the
//! checkpoint, a restore swap, a tenant delete and a usage flush. In a debug build (the one
//! `cargo test` builds), a process started with `WARREN_CRASH_POINT=<name>` and `WARREN_CRASH_AT=<n>`
//! sends itself SIGKILL the n-th time it reaches that point. Release builds compile every point to
//! nothing, and a debug build without the variables only pays one initialised-once check.

/// Every crash point, so the harness can prove that it reaches each one.
pub const POINTS: &[&str] = &[
    "write.in_tx",
    "write.committed",
    "ship.before_put",
    "ship.after_put",
    "compact.after_put",
    "retention.between_deletes",
    "checkpoint.after",
    "restore.swap",
    "delete.between_row_and_files",
    "usage.in_flush",
    "usage.after_flush",
];

#[cfg(debug_assertions)]
pub fn point(name: &'static str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    debug_assert!(POINTS.contains(&name), "crash point {name} is not listed in faults::POINTS");
    let target = TARGET.get_or_init(|| {
        let name = std::env::var("WARREN_CRASH_POINT").ok()?;
        let at = std::env::var("WARREN_CRASH_AT").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
        Some((name, at))
    });
    if let Some((want, at)) = target {
        if want == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("warren: crash point {name} reached (hit {at}): SIGKILL");
            // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so nothing runs after it.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &'static str) {}
