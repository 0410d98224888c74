//! `wasmail:mail/blobs`: opens attachment files for the mailer as streams
//! (RFC 2045 base64 happens in the guest, chunk by chunk), so a file of any
//! size is never held whole in memory. Deny by default: only the files the
//! user named on the command line, or files inside a plugin's granted folder.
//!
//! A granted file is opened beneath the folder's handle (cap-std: openat2
//! `RESOLVE_BENEATH` on Linux), without following a final symlink and
//! without blocking (`O_NONBLOCK`, so a FIFO cannot hang the host), and then
//! checked on the open handle: only regular files pass. Nothing is resolved
//! by path and reopened, so there is no window for a swap.

use crate::bindings::wasmail::mail::blobs::Host;
use crate::mailer::MailerState;
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynInputStream;
use wasmtime_wasi::p2::pipe::AsyncReadStream;

/// Told how many bytes of attachment files were read, as they are read (for
/// a progress bar).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// A reader that reports what passes through it.
struct Counting<R> {
    inner: R,
    progress: Progress,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            (self.progress)(read as u64);
        }
        polled
    }
}

/// Which files the mailer may open.
#[derive(Debug, Clone, Default)]
pub enum BlobAccess {
    /// None.
    #[default]
    Deny,
    /// Exactly these paths (as given to `wasmail send --attach`).
    Files(Vec<PathBuf>),
    /// Relative paths inside this folder (a plugin's grant).
    Folder(PathBuf),
    /// The same, already opened.
    Granted(Arc<Dir>),
}

impl BlobAccess {
    /// Open the granted folder once, so every file is opened beneath the
    /// same handle.
    pub fn folder(root: &Path) -> std::io::Result<Self> {
        Ok(Self::Granted(Arc::new(Dir::open_ambient_dir(root, ambient_authority())?)))
    }

    /// Open `requested` for reading if the grant allows it: a regular file,
    /// opened without blocking and without following a final symlink.
    /// Returns the file and its length, or why not (the caller names the
    /// path).
    pub fn open(&self, requested: &str) -> Result<(std::fs::File, u64), String> {
        let mut opts = OpenOptions::new();
        opts.read(true).follow(FollowSymlinks::No).nonblock(true);
        let file = match self {
            Self::Deny => return Err("no files are granted".into()),
            Self::Files(list) => {
                let path = list
                    .iter()
                    .find(|p| p.as_os_str() == requested)
                    .ok_or_else(|| "not one of the files given to send".to_owned())?;
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let name = path.file_name().ok_or_else(|| "not a file name".to_owned())?;
                let dir = Dir::open_ambient_dir(parent, ambient_authority()).map_err(|e| e.to_string())?;
                dir.open_with(name, &opts).map_err(|e| e.to_string())?
            }
            Self::Folder(root) => return Self::folder(root).map_err(|e| format!("granted folder: {e}"))?.open(requested),
            Self::Granted(dir) => {
                let rel = Path::new(requested);
                if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return Err("only plain relative paths inside the granted folder".into());
                }
                dir.open_with(rel, &opts).map_err(|e| e.to_string())?
            }
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() {
            return Err("not a regular file".into());
        }
        Ok((file.into_std(), meta.len()))
    }
}

impl Host for MailerState {
    async fn open(&mut self, path: String) -> wasmtime::Result<Result<(u64, Resource<DynInputStream>), String>> {
        let (file, len) = match self.blobs.open(&path) {
            Ok(f) => f,
            Err(e) => return Ok(Err(e)),
        };
        let file = tokio::fs::File::from_std(file);
        let stream: DynInputStream = match &self.progress {
            Some(progress) => Box::new(AsyncReadStream::new(Counting { inner: file, progress: Arc::clone(progress) })),
            None => Box::new(AsyncReadStream::new(file)),
        };
        let res = self.table.push(stream)?;
        Ok(Ok((len, res)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasmail-blobs-{tag}-{}", crate::mail::deadletter::fresh_name()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("ok.txt"), "hello").unwrap();
        d
    }

    #[test]
    fn odd_files_in_the_grant_are_refused_without_blocking() {
        let root = scratch("odd");
        let outside = root.with_extension("secret");
        std::fs::write(&outside, "secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink("ok.txt", root.join("inner-link")).unwrap();
        let fifo = root.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let grant = BlobAccess::folder(&root).unwrap();
        assert_eq!(grant.open("ok.txt").unwrap().1, 5);
        for (name, why) in [
            ("fifo", "not a regular file"),
            ("sub", ""),
            ("link", ""),
            ("inner-link", ""),
            ("../x", "only plain relative paths"),
            ("/etc/passwd", "only plain relative paths"),
            ("missing", ""),
        ] {
            let e = grant.open(name).unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_file(outside).unwrap();
    }

    #[test]
    fn the_command_line_list_is_exact() {
        let root = scratch("files");
        let ok = root.join("ok.txt");
        let files = BlobAccess::Files(vec![ok.clone()]);
        assert_eq!(files.open(ok.to_str().unwrap()).unwrap().1, 5);
        assert!(files.open(root.join("sub").to_str().unwrap()).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
