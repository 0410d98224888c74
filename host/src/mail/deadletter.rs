//! The dead-letter folder and its write-ahead spool: messages the relay did
//! not take (unreachable, timed out, 4xx) or whose fate is unknown (the
//! connection died after the final dot, RFC 5321 4.1.1.4), kept as their
//! exact bytes (`.eml`) with their envelope and the reason (`.json`), for
//! `wasmail retry`.
//!
//! A plugin's message is written to `pending/` before the first byte goes to
//! the relay, and leaves it only when its outcome is known: removed when
//! delivered or refused for good, moved up into the folder otherwise. A
//! process that dies leaves its messages in `pending/`, where `retry` finds
//! them as `outcome_unknown`. Files are renamed into place, never fsynced:
//! this survives the process being killed, not the machine losing power.
//!
//! File names are made here (time, process, counter), never taken from a
//! message: a Message-ID can be long or hostile. The Message-ID is in the
//! `.json`.

use crate::bindings::transport::{Envelope, Rendered};
use crate::bindings::types::SendError;
use crate::mail::{audit, outbox};
use crate::config::{Auth, Tls};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default folder, relative to the working directory.
pub const DEFAULT_DEAD_LETTER: &str = "dead-letter";
/// The write-ahead spool, inside the folder.
pub const PENDING: &str = "pending";

/// The envelope, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEnvelope {
    /// MAIL FROM.
    pub from: String,
    /// RCPT TO.
    pub recipients: Vec<String>,
}

/// Where a kept message was going: enough for `wasmail retry` to resend it
/// with no flags (as `msmtpq -r` does). Never the secret: that comes from
/// retry's own `--password-env`, `--password-file` or config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRelay {
    /// `HOST:PORT`.
    pub server: String,
    /// The TLS mode.
    pub tls: Tls,
    /// The name the certificate must carry, when not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_name: Option<String>,
    /// Extra trusted CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The AUTH user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The AUTH mechanism.
    pub auth: Auth,
    /// The EHLO name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo: Option<String>,
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
        Self { kind: e.kind().to_owned(), message: e.describe(), transient: e.is_transient() }
    }

    fn pending() -> Self {
        Self {
            kind: "outcome-unknown".into(),
            message: "written ahead; the process delivering it stopped before its outcome was known".into(),
            transient: true,
        }
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
    /// For a message in `pending/`: the process delivering it. While that
    /// process lives, `retry` leaves the message alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The relay it was going to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<StoredRelay>,
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

    /// Its id: the file name without extension, as in its audit records.
    pub fn id(&self) -> String {
        self.eml.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// An audit record of `outcome` for this letter: its id, envelope,
    /// Message-ID and plugin.
    pub fn record(&self, outcome: audit::Outcome) -> audit::Record {
        let mut r = audit::Record::new(outcome);
        r.id = Some(self.id());
        r.plugin = self.meta.plugin.clone().unwrap_or_default();
        r.from = Some(self.meta.envelope.from.clone());
        r.recipients = self.meta.envelope.recipients.clone();
        r.message_id = Some(self.meta.message_id.clone());
        r
    }

    /// Record another failed attempt.
    pub fn failed_again(&mut self, e: &SendError) -> Result<()> {
        self.meta.attempts += 1;
        self.meta.last_failure_ms = audit::now_ms();
        self.meta.reason = Reason::of(e);
        self.meta.outcome_unknown |= matches!(e, SendError::OutcomeUnknown(_));
        self.meta.pid = None;
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
    relay: Option<StoredRelay>,
}

impl DeadLetters {
    /// The folder at `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), relay: None }
    }

    /// Record `relay` in every letter kept from now on.
    pub fn for_relay(mut self, relay: StoredRelay) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Its path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep `rendered` with the reason `error`. The `.eml` is written first,
    /// the `.json` last: a letter without its `.json` is never half-read.
    pub fn keep(&self, rendered: &Rendered, error: &SendError, plugin: Option<&str>) -> Result<PathBuf> {
        let mut meta = Meta::new(rendered, plugin, None);
        meta.relay.clone_from(&self.relay);
        meta.attempts = 1;
        meta.reason = Reason::of(error);
        meta.outcome_unknown = matches!(error, SendError::OutcomeUnknown(_));
        let (eml, _) = write_letter(&self.dir, rendered, &meta)?;
        Ok(eml)
    }

    /// Write `rendered` ahead into `pending/` before it is delivered.
    pub fn write_ahead(&self, rendered: &Rendered, plugin: Option<&str>) -> Result<Pending> {
        let dir = self.dir.join(PENDING);
        let mut meta = Meta::new(rendered, plugin, Some(std::process::id()));
        meta.relay.clone_from(&self.relay);
        let (eml, json) = write_letter(&dir, rendered, &meta)?;
        let id = eml.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Pending { id, letter: Letter { eml, json, meta }, top: self.dir.clone() })
    }

    /// Every complete letter, oldest first.
    pub fn list(&self) -> Result<Vec<Letter>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        let mut letters = Vec::new();
        let pending = self.dir.join(PENDING);
        let stale = match std::fs::read_dir(&pending) {
            Ok(e) => e.collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e).with_context(|| format!("reading {}", pending.display())),
        };
        for entry in entries.chain(stale) {
            let json = entry?.path();
            if json.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let eml = json.with_extension("eml");
            // A process killed while it moved a letter up from `pending/`
            // may have moved one file of the two: look in both folders.
            let eml = match json.parent().map(|d| d == pending) {
                _ if eml.exists() => eml,
                Some(true) => self.dir.join(eml.file_name().unwrap_or_default()),
                _ => pending.join(eml.file_name().unwrap_or_default()),
            };
            if !eml.exists() {
                continue;
            }
            let text = std::fs::read(&json).with_context(|| format!("reading {}", json.display()))?;
            let meta: Meta = serde_json::from_slice(&text).with_context(|| format!("parsing {}", json.display()))?;
            if meta.pid.is_some_and(process_alive) {
                continue;
            }
            letters.push(Letter { eml, json, meta });
        }
        letters.sort_by(|a, b| (a.meta.first_failure_ms, a.eml.file_name()).cmp(&(b.meta.first_failure_ms, b.eml.file_name())));
        Ok(letters)
    }
}

impl Meta {
    fn new(rendered: &Rendered, plugin: Option<&str>, pid: Option<u32>) -> Self {
        let now = audit::now_ms();
        Self {
            message_id: rendered.message_id.clone(),
            envelope: StoredEnvelope {
                from: rendered.envelope.from.clone(),
                recipients: rendered.envelope.recipients.clone(),
            },
            reason: Reason::pending(),
            outcome_unknown: true,
            attempts: 0,
            first_failure_ms: now,
            last_failure_ms: now,
            plugin: plugin.map(str::to_owned),
            pid,
            relay: None,
        }
    }
}

/// True while process `pid` runs (Linux: `/proc/PID` exists).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists()
}

/// A name for a new file: milliseconds, process, a counter. Bounded, unique
/// within the machine, and sorted by time.
pub fn fresh_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!("{:013}-{}-{:06}", audit::now_ms(), std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Write a letter: the `.eml`, then the `.json`, each renamed into place.
fn write_letter(dir: &Path, rendered: &Rendered, meta: &Meta) -> Result<(PathBuf, PathBuf)> {
    let eml = outbox::write(dir, &rendered.bytes)?;
    let json = eml.with_extension("json");
    write_json(&json, meta)?;
    Ok((eml, json))
}

/// A message written ahead, not yet delivered.
#[derive(Debug)]
pub struct Pending {
    /// Its id: the files' common name, also in its audit records.
    pub id: String,
    letter: Letter,
    top: PathBuf,
}

impl Pending {
    /// Delivered, or refused for good: nothing to keep.
    pub fn done(self) -> Result<()> {
        self.letter.remove()
    }

    /// Not delivered: keep it in the folder with the reason. Returns the
    /// `.eml`'s new path.
    pub fn keep(self, error: &SendError) -> Result<PathBuf> {
        let mut meta = self.letter.meta.clone();
        meta.attempts = 1;
        meta.last_failure_ms = audit::now_ms();
        meta.reason = Reason::of(error);
        meta.outcome_unknown = matches!(error, SendError::OutcomeUnknown(_));
        meta.pid = None;
        self.settle(&meta)
    }

    /// The run stopped while it was being delivered: keep it as
    /// `outcome_unknown`, with `why`.
    pub fn keep_unknown(self, why: &str) -> Result<PathBuf> {
        let mut meta = self.letter.meta.clone();
        meta.attempts = 1;
        meta.last_failure_ms = audit::now_ms();
        meta.reason = Reason { kind: "outcome-unknown".into(), message: why.to_owned(), transient: true };
        meta.outcome_unknown = true;
        meta.pid = None;
        self.settle(&meta)
    }

    fn settle(self, meta: &Meta) -> Result<PathBuf> {
        write_json(&self.letter.json, meta)?;
        let name = |p: &Path| p.file_name().map(|n| self.top.join(n)).context("a spool file without a name");
        let (eml, json) = (name(&self.letter.eml)?, name(&self.letter.json)?);
        std::fs::rename(&self.letter.eml, &eml).with_context(|| format!("moving {}", self.letter.eml.display()))?;
        std::fs::rename(&self.letter.json, &json).with_context(|| format!("moving {}", self.letter.json.display()))?;
        Ok(eml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::transport::Envelope;

    fn rendered(id: &str) -> Rendered {
        Rendered {
            message_id: id.into(),
            envelope: Envelope { from: "a@example.com".into(), recipients: vec!["b@example.com".into()] },
            bytes: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wasmail-dl-{tag}-{}", fresh_name()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_long_message_id_still_gets_a_short_file_name() {
        let dir = scratch("long");
        let d = DeadLetters::new(&dir);
        let id = format!("{}@{}", "x".repeat(60), vec!["d".repeat(60); 4].join("."));
        let eml = d.keep(&rendered(&id), &SendError::Connect("down".into()), None).unwrap();
        assert!(eml.file_name().unwrap().len() < 64);
        assert_eq!(d.list().unwrap()[0].meta.message_id, id);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_ahead_then_settle() {
        let dir = scratch("ahead");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("1@x"), Some("p")).unwrap();
        assert!(d.list().unwrap().is_empty(), "this process's pending mail is not for retry");
        p.done().unwrap();
        let p = d.write_ahead(&rendered("2@x"), Some("p")).unwrap();
        p.keep(&SendError::Connect("down".into())).unwrap();
        let p = d.write_ahead(&rendered("3@x"), Some("p")).unwrap();
        p.keep_unknown("stopped").unwrap();
        let letters = d.list().unwrap();
        assert_eq!(letters.len(), 2);
        assert!(!letters[0].meta.outcome_unknown && letters[1].meta.outcome_unknown);
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dead_process_leaves_its_pending_mail_for_retry() {
        let dir = scratch("dead");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("4@x"), None).unwrap();
        let mut meta = p.letter.meta.clone();
        meta.pid = Some(u32::MAX);
        write_json(&p.letter.json, &meta).unwrap();
        let letters = d.list().unwrap();
        assert_eq!(letters.len(), 1);
        assert!(letters[0].meta.outcome_unknown);
        letters[0].remove().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_letter_half_moved_out_of_pending_is_still_found() {
        let dir = scratch("half");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("5@x"), None).unwrap();
        let mut meta = p.letter.meta.clone();
        meta.pid = None;
        write_json(&p.letter.json, &meta).unwrap();
        let name = p.letter.eml.file_name().unwrap().to_owned();
        std::fs::rename(&p.letter.eml, dir.join(&name)).unwrap();
        let letters = d.list().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].eml, dir.join(&name));
        letters[0].remove().unwrap();
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
