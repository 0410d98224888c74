//! The outbox: with no relay configured, the mailer's exact message bytes
//! (RFC 5322, CRLF line ends, not dot-stuffed) are written to
//! `<dir>/<time>-<pid>-<n>.eml` instead of being sent. The name is the
//! host's, never the message's: a Message-ID can be too long for a file name.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The default outbox folder, relative to the working directory.
pub const DEFAULT_OUTBOX: &str = "outbox";

/// Write `bytes` to a new file in `dir` atomically (temp file, then
/// rename) and return its path, `<dir>/<fresh name>.eml`.
pub fn write(dir: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let path = fresh_path(dir)?;
    write_at(&path, bytes)?;
    Ok(path)
}

/// The path of a new file in `dir`, `<dir>/<fresh name>.eml` (the folder
/// made if need be), to record before it is written.
pub fn fresh_path(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{}.eml", crate::mail::deadletter::fresh_name())))
}

/// Write `bytes` to `path` (from [`fresh_path`]) atomically: the file
/// exists whole or not at all.
pub fn write_at(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
