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
