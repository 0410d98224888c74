//! The audit log: one JSON object per line for every send attempt of every
//! plugin, and for every plain send of the library or `serve`, appended and
//! flushed as it happens, each line at most
//! [`MAX_RECORD_BYTES`]. It records envelopes and outcomes (RFC 5321
//! replies), never bodies or secrets. A message that is delivered gets an
//! `attempt` record before the first byte goes out and its outcome after.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default audit log path.
pub const DEFAULT_AUDIT: &str = "wasmail-audit.jsonl";
/// The longest line a record may take, newline included. Whatever a plugin
/// sends, a record is cut to fit, and the cut is counted in `omitted`.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// The most characters of one text field (reason, addresses, paths).
pub const MAX_TEXT_CHARS: usize = 1024;
/// The most entries of one list (recipients, rejected).
pub const MAX_LISTED: usize = 64;

/// What happened to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Written ahead: the message is in the spool and about to be
    /// delivered. Its outcome follows in a record with the same `id`.
    Attempt,
    /// The relay accepted it (maybe for some recipients only), or it went to the outbox.
    Accepted,
    /// The relay refused it.
    Rejected,
    /// The policy refused it.
    Denied,
    /// Anything else: invalid message, network, TLS, timeout.
    Error,
    /// Not sent again: a redelivered job's message that an earlier delivery
    /// of the same job already attempted (see `job` and `seq`).
    Skipped,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u128,
    /// The spool entry of the message, which ties its `attempt` record to
    /// its outcome, and names its files in the dead-letter folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The plugin's name; empty for a plain send (see `client`).
    pub plugin: String,
    /// Who asked for a plain send (no plugin): under `wasmail serve`, the
    /// bearer token's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
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
    /// The job this run was for (`wasmail worker`, `wasmail serve`): the
    /// idempotency key of its messages, with `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Which of the run's messages it is: 1 for the first message handed to
    /// `send`/`send-many`, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// How many characters and list entries were cut to keep the record
    /// under [`MAX_RECORD_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Record {
    /// A record of `outcome` now, with nothing else known yet.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            time_ms: now_ms(),
            id: None,
            plugin: String::new(),
            client: None,
            sha256: String::new(),
            from: None,
            recipients: vec![],
            rejected: vec![],
            size: None,
            message_id: None,
            outcome,
            reason: None,
            outbox: None,
            dead_letter: None,
            job: None,
            seq: None,
            omitted: 0,
        }
    }

    /// No field needs clipping: every text is at most [`MAX_TEXT_CHARS`]
    /// octets (so characters), every list at most [`MAX_LISTED`] entries.
    /// The common record is written without a copy.
    fn fits_as_is(&self) -> bool {
        let short = |t: &String| t.len() <= MAX_TEXT_CHARS;
        [&self.plugin, &self.sha256].into_iter().all(short)
            && [&self.from, &self.message_id, &self.reason, &self.outbox, &self.dead_letter, &self.id, &self.client]
                .into_iter()
                .flatten()
                .all(short)
            && [&self.recipients, &self.rejected].into_iter().all(|l| l.len() <= MAX_LISTED && l.iter().all(short))
    }

    fn clip_text(field: &mut String, max: usize, omitted: &mut u64) {
        if let Some((at, _)) = field.char_indices().nth(max) {
            *omitted += field[at..].chars().count() as u64;
            field.truncate(at);
        }
    }

    fn clip_list(list: &mut Vec<String>, omitted: &mut u64) {
        if list.len() > MAX_LISTED {
            *omitted += (list.len() - MAX_LISTED) as u64;
            list.truncate(MAX_LISTED);
        }
        for item in list {
            Self::clip_text(item, MAX_TEXT_CHARS, omitted);
        }
    }

    /// The record as one JSON line of at most [`MAX_RECORD_BYTES`]: long
    /// fields are cut, then list entries dropped, then the reason halved,
    /// until it fits; `omitted` counts what went.
    pub fn to_line(&self) -> Result<Vec<u8>> {
        if self.fits_as_is() {
            let mut line = serde_json::to_vec(self).context("encoding an audit record")?;
            if line.len() < MAX_RECORD_BYTES {
                line.push(b'\n');
                return Ok(line);
            }
        }
        let mut r = self.clone();
        let mut omitted = r.omitted;
        for field in [&mut r.plugin, &mut r.sha256].into_iter().chain(
            [&mut r.from, &mut r.message_id, &mut r.reason, &mut r.outbox, &mut r.dead_letter, &mut r.id, &mut r.client]
                .into_iter()
                .flatten(),
        ) {
            Self::clip_text(field, MAX_TEXT_CHARS, &mut omitted);
        }
        Self::clip_list(&mut r.recipients, &mut omitted);
        Self::clip_list(&mut r.rejected, &mut omitted);
        loop {
            r.omitted = omitted;
            let mut line = serde_json::to_vec(&r).context("encoding an audit record")?;
            if line.len() < MAX_RECORD_BYTES {
                line.push(b'\n');
                return Ok(line);
            }
            if r.rejected.pop().or_else(|| r.recipients.pop()).is_some() {
                omitted += 1;
            } else if let Some(reason) = r.reason.as_mut().filter(|t| !t.is_empty()) {
                let half = reason.chars().count() / 2;
                Self::clip_text(reason, half, &mut omitted);
            } else {
                for field in [&mut r.from, &mut r.message_id, &mut r.outbox, &mut r.dead_letter, &mut r.client].into_iter().flatten() {
                    Self::clip_text(field, 64, &mut omitted);
                }
                r.plugin.truncate(r.plugin.char_indices().nth(64).map_or(r.plugin.len(), |(i, _)| i));
            }
        }
    }
}

/// A process killed in the middle of a write of many records can leave
/// the log's last line cut (the kernel stops a write between pages). End it,
/// so the next record starts a line of its own instead of being glued to
/// the cut one: readers then skip the one cut line (`read` with a
/// warning), and every record after it is whole.
fn end_a_cut_line(file: &mut std::fs::File) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?;
    }
    Ok(())
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
        let mut append = std::fs::OpenOptions::new();
        append.create(true).append(true);
        let file = match append.clone().read(true).open(path) {
            Ok(mut file) => {
                end_a_cut_line(&mut file).with_context(|| format!("checking the end of audit log {}", path.display()))?;
                file
            }
            // A log this user may append to but not read: nothing to check.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                append.open(path).with_context(|| format!("opening audit log {}", path.display()))?
            }
            Err(e) => return Err(e).with_context(|| format!("opening audit log {}", path.display())),
        };
        Ok(Self { path: path.to_owned(), file: Arc::new(Mutex::new(file)) })
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as one `write` of one line.
    pub fn append(&self, record: &Record) -> Result<()> {
        let line = record.to_line()?;
        let mut f = self.file.lock().map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        f.write_all(&line).with_context(|| format!("writing {}", self.path.display()))?;
        f.flush().with_context(|| format!("flushing {}", self.path.display()))
    }

    /// Append records, each one line, in one `write`.
    pub fn append_many(&self, records: &[Record]) -> Result<()> {
        let mut lines = Vec::with_capacity(records.len() * 512);
        for r in records {
            lines.extend_from_slice(&r.to_line()?);
        }
        let mut f = self.file.lock().map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        f.write_all(&lines).with_context(|| format!("writing {}", self.path.display()))?;
        f.flush().with_context(|| format!("flushing {}", self.path.display()))
    }

    /// Make what was written durable (fsync): before a queue's job is
    /// acknowledged.
    pub fn sync(&self) -> Result<()> {
        let f = self.file.lock().map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        f.sync_data().with_context(|| format!("syncing {}", self.path.display()))
    }

    /// Read every whole record back. A line that is not one (cut by a
    /// process killed in the middle of a write, possibly inside a
    /// character) is skipped with a warning that names it; the records
    /// after it are read.
    pub fn read(path: &Path) -> Result<Vec<Record>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut records = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(r) => records.push(r),
                Err(e) => tracing::warn!("{} line {}: not a whole record, skipped: {e}", path.display(), i + 1),
            }
        }
        Ok(records)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_fits_whatever_it_holds() {
        let mut r = Record::new(Outcome::Denied);
        r.plugin = "p".into();
        r.reason = Some(format!("allowed_headers: {}", "\u{1}é".repeat(1 << 20)));
        r.from = Some("x".repeat(1 << 16));
        r.recipients = (0..10_000).map(|i| format!("user{i}@{}", "d".repeat(200))).collect();
        r.rejected = r.recipients.clone();
        let line = r.to_line().unwrap();
        assert!(line.len() <= MAX_RECORD_BYTES, "{} bytes", line.len());
        let back: Record = serde_json::from_slice(&line).unwrap();
        assert!(back.omitted > 20_000, "{}", back.omitted);
        assert!(back.reason.unwrap().starts_with("allowed_headers: "));
    }

    #[test]
    fn read_skips_a_line_cut_inside_a_character_and_goes_on() {
        let dir = std::env::temp_dir().join(format!("wasmail-audit-read-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let mut log = Record::new(Outcome::Attempt).to_line().unwrap();
        // A record cut after the first octet of "é", then ended by `open`.
        log.extend_from_slice("{\"time_ms\":1,\"from\":\"\u{e9}".as_bytes().split_last().unwrap().1);
        std::fs::write(&path, &log).unwrap();
        AuditLog::open(&path).unwrap().append(&Record::new(Outcome::Accepted)).unwrap();
        let outcomes: Vec<Outcome> = AuditLog::read(&path).unwrap().into_iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [Outcome::Attempt, Outcome::Accepted]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cut_last_line_is_ended_before_the_next_record() {
        let dir = std::env::temp_dir().join(format!("wasmail-audit-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, b"{\"time_ms\":1,\"outc").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(&Record::new(Outcome::Accepted)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0], "{\"time_ms\":1,\"outc");
        let whole: Record = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(whole.outcome, Outcome::Accepted);
        // A whole log is left as it is.
        drop(log);
        let before = std::fs::read(&path).unwrap();
        let _again = AuditLog::open(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_small_record_is_kept_whole() {
        let mut r = Record::new(Outcome::Accepted);
        r.recipients = vec!["a@example.com".into()];
        r.reason = Some("250 ok".into());
        let back: Record = serde_json::from_slice(&r.to_line().unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
