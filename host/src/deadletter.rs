//! The dead-letter folder: messages the relay did not take (unreachable,
//! timed out, 4xx) or whose fate is unknown (the connection died after the
//! final dot, RFC 5321 4.1.1.4), kept as their exact bytes (`.eml`) with their
//! envelope and the reason (`.json`), for `wasmail retry`.

use crate::bindings::transport::{Envelope, Rendered};
use crate::bindings::types::SendError;
use crate::{audit, outbox, report};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default folder, relative to the working directory.
pub const DEFAULT_DEAD_LETTER: &str = "dead-letter";

/// The envelope, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    /// MAIL FROM.
    pub from: String,
    /// RCPT TO.
    pub recipients: Vec<String>,
}

/// Why the message is here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// The error kind (`connect`, `timeout`, `rejected`, `outcome-unknown`, ...).
    pub kind: String,
    /// The error in words.
    pub message: String,
    /// Whether a retry may help.
    pub transient: bool,
}

impl Reason {
    fn of(e: &SendError) -> Self {
        Self { kind: report::kind(e).to_owned(), message: report::describe(e), transient: report::is_transient(e) }
    }
}

/// The `.json` beside each `.eml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The Message-ID.
    pub message_id: String,
    /// The envelope to send it with.
    pub envelope: StoredEnvelope,
    /// The last failure.
    pub reason: Reason,
    /// The relay may already have the message: `wasmail retry` leaves it
    /// alone unless `--force`, to avoid a duplicate.
    pub outcome_unknown: bool,
    /// How many times sending failed.
    pub attempts: u32,
    /// When it first failed, ms since the epoch.
    pub first_failure_ms: u128,
    /// When it last failed.
    pub last_failure_ms: u128,
    /// The plugin that sent it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// One kept message.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The `.eml`.
    pub eml: PathBuf,
    /// The `.json`.
    pub json: PathBuf,
    /// What the `.json` says.
    pub meta: Meta,
}

impl Letter {
    /// The envelope as the mailer's `submit` takes it.
    pub fn envelope(&self) -> Envelope {
        Envelope { from: self.meta.envelope.from.clone(), recipients: self.meta.envelope.recipients.clone() }
    }

    /// Record another failed attempt.
    pub fn failed_again(&mut self, e: &SendError) -> Result<()> {
        self.meta.attempts += 1;
        self.meta.last_failure_ms = audit::now_ms();
        self.meta.reason = Reason::of(e);
        self.meta.outcome_unknown |= matches!(e, SendError::OutcomeUnknown(_));
        write_json(&self.json, &self.meta)
    }

    /// Delivered: remove both files.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.json).with_context(|| format!("removing {}", self.json.display()))?;
        std::fs::remove_file(&self.eml).with_context(|| format!("removing {}", self.eml.display()))
    }
}

fn write_json(path: &Path, meta: &Meta) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(meta)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// A dead-letter folder.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    /// The folder at `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Its path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep `rendered` with the reason `error`. The `.eml` is written first,
    /// the `.json` last: a letter without its `.json` is never half-read.
    pub fn keep(&self, rendered: &Rendered, error: &SendError, plugin: Option<&str>) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let eml = outbox::write(&self.dir, &rendered.message_id, &rendered.bytes)?;
        let now = audit::now_ms();
        let meta = Meta {
            message_id: rendered.message_id.clone(),
            envelope: StoredEnvelope {
                from: rendered.envelope.from.clone(),
                recipients: rendered.envelope.recipients.clone(),
            },
            reason: Reason::of(error),
            outcome_unknown: matches!(error, SendError::OutcomeUnknown(_)),
            attempts: 1,
            first_failure_ms: now,
            last_failure_ms: now,
            plugin: plugin.map(str::to_owned),
        };
        write_json(&eml.with_extension("json"), &meta)?;
        Ok(eml)
    }

    /// Every complete letter, oldest first.
    pub fn list(&self) -> Result<Vec<Letter>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut letters = Vec::new();
        for entry in entries {
            let json = entry?.path();
            if json.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let eml = json.with_extension("eml");
            if !eml.exists() {
                continue;
            }
            let text = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
            let meta: Meta = serde_json::from_slice(&text).with_context(|| format!("parsing {}", json.display()))?;
            letters.push(Letter { eml, json, meta });
        }
        letters.sort_by_key(|l| l.meta.first_failure_ms);
        Ok(letters)
    }
}
