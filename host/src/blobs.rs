//! `wasmail:mail/blobs`: opens attachment files for the mailer as streams
//! (RFC 2045 base64 happens in the guest, chunk by chunk), so a file of any
//! size is never held whole in memory. Deny by default: only the files the
//! user named on the command line, or files inside a plugin's granted folder.

use crate::bindings::wasmail::mail::blobs::Host;
use crate::mailer::MailerState;
use std::path::{Component, Path, PathBuf};
use wasmtime::component::Resource;
use wasmtime_wasi::p2::DynInputStream;
use wasmtime_wasi::p2::pipe::AsyncReadStream;

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
}

impl BlobAccess {
    /// The real path for `requested`, or why it may not be opened.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, String> {
        match self {
            Self::Deny => Err("no files are granted".into()),
            Self::Files(list) => list
                .iter()
                .find(|p| p.as_os_str() == requested)
                .cloned()
                .ok_or_else(|| format!("{requested} is not one of the files given to send")),
            Self::Folder(root) => {
                let rel = Path::new(requested);
                if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                    return Err(format!("{requested}: only plain relative paths inside the granted folder"));
                }
                let root = root.canonicalize().map_err(|e| format!("granted folder: {e}"))?;
                let full = root.join(rel).canonicalize().map_err(|e| format!("{requested}: {e}"))?;
                if !full.starts_with(&root) {
                    return Err(format!("{requested}: leaves the granted folder"));
                }
                Ok(full)
            }
        }
    }
}

impl Host for MailerState {
    async fn open(&mut self, path: String) -> wasmtime::Result<Result<(u64, Resource<DynInputStream>), String>> {
        let full = match self.blobs.resolve(&path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let file = match tokio::fs::File::open(&full).await {
            Ok(f) => f,
            Err(e) => return Ok(Err(format!("{path}: {e}"))),
        };
        let len = match file.metadata().await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Ok(Err(format!("{path}: not a regular file"))),
            Err(e) => return Ok(Err(format!("{path}: {e}"))),
        };
        let stream: DynInputStream = Box::new(AsyncReadStream::new(file));
        let res = self.table.push(stream)?;
        Ok(Ok((len, res)))
    }
}
