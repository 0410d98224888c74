//! The audit log: one JSON object per line for every send attempt of every
//! plugin, appended and flushed as it happens. It records envelopes and
//! outcomes (RFC 5321 replies), never bodies or secrets.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default audit log path.
pub const DEFAULT_AUDIT: &str = "wasmail-audit.jsonl";

/// What happened to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The relay accepted it (maybe for some recipients only), or it went to the outbox.
    Accepted,
    /// The relay refused it.
    Rejected,
    /// The policy refused it.
    Denied,
    /// Anything else: invalid message, network, TLS, timeout.
    Error,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u128,
    /// The plugin's name.
    pub plugin: String,
    /// SHA-256 of the plugin component.
    pub sha256: String,
    /// The From address, when known.
    pub from: Option<String>,
    /// The recipients, when known.
    pub recipients: Vec<String>,
    /// Recipients the relay refused.
    #[serde(default)]
    pub rejected: Vec<String>,
    /// Size in octets, when sent.
    pub size: Option<u64>,
    /// The Message-ID, when assembled.
    pub message_id: Option<String>,
    /// The outcome.
    pub outcome: Outcome,
    /// Why it was denied or failed, or the relay's reply.
    pub reason: Option<String>,
    /// Where it was written, for the outbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox: Option<String>,
    /// Where it was kept for `wasmail retry`, when it was not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
}

/// An append-only JSON-lines file, shared by every run in the process.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl AuditLog {
    /// Open (create) the log for appending.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening audit log {}", path.display()))?;
        Ok(Self { path: path.to_owned(), file: Arc::new(Mutex::new(file)) })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one `write` of one line.
    pub fn append(&self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_vec(record).context("encoding an audit record")?;
        line.push(b'\n');
        let mut f = self.file.lock().map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        f.write_all(&line).with_context(|| format!("writing {}", self.path.display()))?;
        f.flush().with_context(|| format!("flushing {}", self.path.display()))
    }

    /// Read every record back.
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{} line {}", path.display(), i + 1)))
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}
