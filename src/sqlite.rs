//! Process-wide SQLite settings, and the per-connection ones that need SQLite's C API.
//!
//! This is the only module with `unsafe`: two documented SQLite calls rusqlite does not wrap.

use std::ffi::{c_int, c_void};

use rusqlite::{ffi, Connection};

/// Applies the process-wide settings once, before the first connection opens (SQLite accepts them
/// only before it initializes; a later call changes nothing and is harmless).
///
/// * Memory statistics off (`SQLITE_CONFIG_MEMSTATUS`): with them on, every allocation SQLite makes
///   takes one process-wide mutex, and opening a connection (parsing the schema) allocates
///   thousands of times, so tenants opening at once serialise on it. warren never reads them.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` is safe to call before `sqlite3_initialize`; afterwards it returns
        // SQLITE_MISUSE and changes nothing. MEMSTATUS takes one int.
        let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was initialized before warren configured it; memory statistics stay on");
        }
    });
}

/// Keeps the database's `-wal` and `-shm` files when its last connection closes
/// (`SQLITE_FCNTL_PERSIST_WAL`), so a tenant that closes and opens again reuses them instead of the
/// file system deleting and creating two files per cycle. A checkpointed WAL is left empty.
pub fn persist_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mut on: c_int = 1;
    // SAFETY: the handle is valid while `conn` lives; PERSIST_WAL takes a pointer to an int that
    // outlives the call.
    let rc =
        unsafe { ffi::sqlite3_file_control(conn.handle(), c"main".as_ptr(), ffi::SQLITE_FCNTL_PERSIST_WAL, &mut on as *mut c_int as *mut c_void) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some("SQLITE_FCNTL_PERSIST_WAL".into())))
    }
}
