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
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = crate::mail::deadletter::fresh_name();
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}
