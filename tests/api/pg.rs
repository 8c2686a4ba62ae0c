//! A real PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` into a temp dir,
//! started on a free loopback port and stopped when dropped. As root (CI), the server runs as the
//! `postgres` user the package creates, since PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Postgres {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The directory of `initdb` and `postgres`: Debian keeps them out of PATH, under
/// /usr/lib/postgresql/<major>/bin (the newest is taken).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect())
        .unwrap_or_default();
    found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    found.pop().expect("PostgreSQL is not installed: scripts/test.sh installs Debian's postgresql package")
}

fn as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when this process is root.
fn command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("tempdir");
        if as_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().expect("chown");
            assert!(ok.success(), "chown of the PostgreSQL temp dir to postgres failed");
        }
        let data = dir.path().join("data");
        let bin = bin_dir();
        let out = command(&bin.join("initdb"))
            .args(["--auth=trust", "--username=warren", "--encoding=UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = super::helpers::free_port();
        let child = command(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        let pg = Postgres { child, port, _dir: dir };
        for _ in 0..200 {
            if tokio_postgres::connect(&pg.url_of("postgres"), tokio_postgres::NoTls).await.is_ok() {
                return pg;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("PostgreSQL did not start on port {port}");
    }

    pub fn url_of(&self, db: &str) -> String {
        format!("postgres://warren@127.0.0.1:{}/{db}", self.port)
    }

    /// A new empty database; its URL.
    pub async fn database(&self, name: &str) -> String {
        let (client, conn) = tokio_postgres::connect(&self.url_of("postgres"), tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
        self.url_of(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The postmaster's pid is the first line of postmaster.pid (runuser's child, as root): a fast
        // shutdown, then the wait for runuser (or the server itself) to exit.
        let pid = std::fs::read_to_string(self._dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        match pid {
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGINT);
            },
            None => {
                let _ = self.child.kill();
            }
        }
        let _ = self.child.wait();
    }
}
