//! The outbox: with no relay configured, the mailer's exact message bytes
//! (RFC 5322, CRLF line ends, not dot-stuffed) are written to
//! `<dir>/<message-id>.eml` instead of being sent.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The default outbox folder, relative to the working directory.
pub const DEFAULT_OUTBOX: &str = "outbox";

/// A file name for a Message-ID: letters, digits and `._@-+=` kept, the rest
/// replaced by `_`.
pub fn file_name(message_id: &str) -> String {
    let safe: String = message_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._@-+=".contains(c) { c } else { '_' })
        .collect();
    let safe = safe.trim_start_matches('.');
    format!("{}.eml", if safe.is_empty() { "message" } else { safe })
}

/// Write `bytes` to the outbox atomically (temp file, then rename) and
/// return the path.
pub fn write(dir: &Path, message_id: &str, bytes: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating outbox {}", dir.display()))?;
    let path = dir.join(file_name(message_id));
    let tmp = dir.join(format!(".{}.tmp", file_name(message_id)));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(file_name("abc.123@example.com"), "abc.123@example.com.eml");
        assert_eq!(file_name("../../etc/passwd"), "_.._etc_passwd.eml");
        assert_eq!(file_name(""), "message.eml");
    }
}
