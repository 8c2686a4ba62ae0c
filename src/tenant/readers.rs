//! A tenant's reader connections: at most `tenant_read_pool_size`, each opened on the thread that
//! first needs it.
//!
//! A handle opens with one reader, made on the opening thread; more are opened only when requests
//! of the same tenant read at once, by the request that finds none idle. Nothing waits in a queue
//! shared with other tenants (as the readers of an r2d2 pool do, made on its shared threads), and a
//! cold tenant that serves one read at a time costs one reader, not the full pool.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Code, Error};

pub(crate) struct ReaderPool {
    path: PathBuf,
    replicated: bool,
    max: usize,
    wait: Duration,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Connection>,
    /// Connections that exist: idle plus in use plus being opened.
    total: usize,
    closed: bool,
}

fn closing() -> Error {
    Error::unavailable(Code::TenantRestoring, "tenant is closing", 1)
}

impl ReaderPool {
    /// A pool of at most `max` readers of `path`, with one opened now.
    pub(crate) fn open(path: PathBuf, replicated: bool, max: usize, wait: Duration) -> anyhow::Result<ReaderPool> {
        let first = open_reader(&path, replicated)?;
        Ok(ReaderPool {
            path,
            replicated,
            max: max.max(1),
            wait,
            state: Mutex::new(State { idle: vec![first], total: 1, closed: false }),
            freed: Condvar::new(),
        })
    }

    /// An idle reader, or a new one while fewer than `max` exist, or the first one given back within
    /// the wait. Blocking.
    pub(crate) fn get(&self) -> Result<Reader<'_>, Error> {
        let deadline = Instant::now() + self.wait;
        let mut st = self.state.lock();
        loop {
            if st.closed {
                return Err(closing());
            }
            if let Some(conn) = st.idle.pop() {
                return Ok(Reader { pool: self, conn: Some(conn) });
            }
            if st.total < self.max {
                st.total += 1;
                drop(st);
                return match open_reader(&self.path, self.replicated) {
                    Ok(conn) => Ok(Reader { pool: self, conn: Some(conn) }),
                    Err(e) => {
                        self.state.lock().total -= 1;
                        self.freed.notify_one();
                        Err(Error::internal(e.context("opening a tenant reader")))
                    }
                };
            }
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                return Err(Error::unavailable(Code::Overloaded, "every reader of this tenant is busy; retry shortly", 1));
            }
        }
    }

    /// Closes the idle readers and refuses new ones; readers in use close when given back.
    pub(crate) fn close(&self) {
        let idle = {
            let mut st = self.state.lock();
            st.closed = true;
            st.total -= st.idle.len();
            std::mem::take(&mut st.idle)
        };
        drop(idle);
        self.freed.notify_all();
    }

    fn give_back(&self, conn: Connection) {
        let mut st = self.state.lock();
        if st.closed {
            st.total -= 1;
            drop(st);
            drop(conn);
        } else {
            st.idle.push(conn);
            drop(st);
        }
        self.freed.notify_one();
    }
}

/// Read-only, `query_only`, never checkpointing on close, and (with backups) without checkpoints of its own. It reads once at
/// open: SQLite opens a connection's `-wal` at its first read, so the reader holds its full set of
/// descriptors from the start instead of gaining one the first time a request uses it.
fn open_reader(path: &std::path::Path, replicated: bool) -> anyhow::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let c = Connection::open_with_flags(path, flags)?;
    c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")?;
    crate::sqlite::persist_wal(&c)?;
    if replicated {
        crate::backup::prepare_connection(&c)?;
    }
    // A reader may be the last connection of a tenant that was only read: it must not try to
    // checkpoint (it cannot write) when it closes.
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0))?;
    Ok(c)
}

/// A reader in use; given back to its pool when dropped.
pub(crate) struct Reader<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a reader holds its connection until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.give_back(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One reader at open; a second only when two read at once; never more than `max`, the third
    /// waiting for one given back (or refused with `overloaded` after the wait); none after close.
    #[test]
    fn readers_open_on_demand_up_to_the_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t1");
        crate::tenant::handle::create_storage(&dir, "t1").unwrap();
        let pool = ReaderPool::open(dir.join(crate::tenant::DB_FILE), false, 2, Duration::from_millis(200)).unwrap();
        let total = |p: &ReaderPool| p.state.lock().total;
        assert_eq!(total(&pool), 1);
        {
            let a = pool.get().unwrap();
            assert_eq!(total(&pool), 1, "the idle reader is reused");
            let b = pool.get().unwrap();
            assert_eq!(total(&pool), 2, "a second read at once opens a second reader");
            let n: i64 = b.query_row("SELECT count(*) FROM meta", [], |r| r.get(0)).unwrap();
            assert!(n >= 1);
            let refused = pool.get().err().expect("a third reader over the cap");
            assert_eq!(refused.code(), Code::Overloaded);
            std::thread::scope(|s| {
                let waiter = s.spawn(|| pool.get().map(|_| ()));
                std::thread::sleep(Duration::from_millis(20));
                drop(a);
                assert!(waiter.join().unwrap().is_ok(), "a reader given back goes to the one waiting");
            });
            assert_eq!(total(&pool), 2);
        }
        pool.close();
        assert_eq!(total(&pool), 0);
        assert_eq!(pool.get().err().expect("closed").code(), Code::TenantRestoring);
    }
}
