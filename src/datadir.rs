//! The data dir: the server's lock (so CLI commands that would race a server refuse clearly, and two
//! servers never share a data dir) and private files.

use std::path::Path;

use anyhow::Context;

/// Makes every file and directory this process creates private to its user (0600 / 0700), whatever
/// the umask it was started with: tenant databases, WALs, search indexes, `control.db`, replica files
/// of a `file://` backend. Called by the server and the CLI before they touch the data dir.
pub fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates the data dir if needed and takes group and other permissions away from it.
pub fn ensure_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating data dir {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("securing {}", path.display()))?;
    }
    Ok(())
}

/// Free bytes on the file system holding `path` (for an unprivileged user), if it can be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Refuses writes while the data dir's disk has less than `min_free` bytes free, asking the file
/// system at most once a second.
pub struct DiskGuard {
    path: std::path::PathBuf,
    min_free: u64,
    /// When the free space was last asked, and whether it was low.
    last: parking_lot::Mutex<Option<(std::time::Instant, bool)>>,
}

impl DiskGuard {
    pub fn new(path: &Path, min_free: u64) -> DiskGuard {
        DiskGuard { path: path.to_path_buf(), min_free, last: parking_lot::Mutex::new(None) }
    }

    /// Whether the disk is below the threshold now (cached for a second).
    pub fn low(&self) -> bool {
        if self.min_free == 0 {
            return false;
        }
        let mut last = self.last.lock();
        if let Some((at, low)) = *last {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return low;
            }
        }
        let low = free_bytes(&self.path).is_some_and(|free| free < self.min_free);
        if low && !last.is_some_and(|(_, was)| was) {
            tracing::error!(data_dir = %self.path.display(), min_free_bytes = self.min_free, "the data dir's disk is nearly full; writes answer 507 until space is freed");
        }
        metrics::gauge!("warren_disk_low").set(if low { 1.0 } else { 0.0 });
        *last = Some((std::time::Instant::now(), low));
        low
    }
}

/// File holding the address the server bound (`127.0.0.1:43123`), written at start-up: with
/// `listen = "127.0.0.1:0"` this is how a supervisor or a test learns the port.
pub const ADDR_FILE: &str = "warren.addr";

/// File (mode 0600) holding a generated admin token, in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Takes `<data dir>/.warren.lock` so that CLI commands that would race the server (delete) can
/// refuse clearly, and two servers never share a data dir.
pub fn take_server_lock(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join(".warren.lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => anyhow::bail!("another warren server is using {}", data_dir.display()),
    }
}

/// Whether a server holds the data dir (for the CLI).
pub fn server_running(data_dir: &Path) -> bool {
    let path = data_dir.join(".warren.lock");
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => f.try_lock().is_err(),
        Err(_) => false,
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
