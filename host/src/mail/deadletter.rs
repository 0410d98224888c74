//! The dead-letter folder and its write-ahead spool: messages the relay did
//! not take (unreachable, timed out, 4xx) or whose fate is unknown (the
//! connection died after the final dot, RFC 5321 4.1.1.4), kept as their
//! exact bytes (`.eml`) with their envelope and the reason (`.json`), for
//! `wasmail retry`.
//!
//! A plugin's messages are written ahead before the first byte goes to the
//! relay: one spool file per batch, `pending/<id>.pending`, created and
//! written beneath the spool folder's handle in one write. It holds, for
//! each message, a JSON line (its id, the envelope, the Message-ID, the
//! writing process, the message's length) and then its exact bytes. A
//! message leaves the spool only when its outcome is known: dropped when
//! delivered or refused for good, made a letter in the folder (`<id>.eml` +
//! `<id>.json`) otherwise; the file goes when its last message has settled.
//! One file per batch, not per message: creating and removing a file per
//! message cost more than everything else a message costs on a journaled
//! file system. A process that dies leaves its batch in `pending/`; `list`
//! (so `retry`) adopts each unsettled message as a letter marked
//! `outcome_unknown` once that process is gone (the relay may have taken
//! some of them: the audit log has their outcome records), and drops a
//! message whose write never finished (it was never sent: the send comes
//! after).
//! Files are written, not fsynced: this survives the process being killed,
//! not the machine losing power.
//!
//! File names are made here (time, process, counter), never taken from a
//! message: a Message-ID can be long or hostile. The Message-ID is in the
//! `.json`.

use crate::bindings::transport::{Envelope, Rendered};
use crate::bindings::types::SendError;
use crate::mail::audit;
use crate::config::{Auth, Tls};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The default folder, relative to the working directory.
pub const DEFAULT_DEAD_LETTER: &str = "dead-letter";
/// The write-ahead spool, inside the folder.
pub const PENDING: &str = "pending";
/// The extension of a spool file.
pub const PENDING_EXT: &str = "pending";
/// The largest `.json` beside a letter that `list` reads: its envelope,
/// reason and relay (a message of a thousand recipients is about 300 KiB).
/// A larger one is reported as unreadable, not read.
pub const MAX_META_BYTES: u64 = 4 << 20;

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

    /// Hold this letter to send it again: lock its `.eml`, so a second
    /// `retry` at the same time passes over it, then read its `.json` again
    /// (another process may have sent it meanwhile) and its bytes. `None`
    /// when another process holds it or it is gone.
    pub fn claim(&mut self) -> Result<Option<Claim>> {
        let Some(file) = open_regular(&self.eml)? else { return Ok(None) };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", self.eml.display())),
        }
        // Sent and removed by the process that held it before us.
        if !still_linked(&file)? {
            return Ok(None);
        }
        let Some(text) = read_regular(&self.json, MAX_META_BYTES)? else { return Ok(None) };
        self.meta = serde_json::from_slice(&text).with_context(|| format!("parsing {}", self.json.display()))?;
        let bytes = read_all(&file).with_context(|| format!("reading {}", self.eml.display()))?;
        Ok(Some(Claim { _lock: file, bytes, was_unknown: self.meta.outcome_unknown }))
    }

    /// Written ahead of sending it again: from now until its outcome is
    /// recorded, the letter says its outcome is unknown, so a process
    /// killed in the middle leaves it for `retry --force` only (the relay
    /// may have it).
    pub fn sending(&mut self) -> Result<()> {
        self.meta.outcome_unknown = true;
        self.meta.reason = Reason {
            kind: "outcome-unknown".into(),
            message: "a retry was sending it when its process stopped".into(),
            transient: true,
        };
        self.meta.pid = Some(this_process());
        write_json(&self.json, &self.meta)
    }

    /// Record another failed attempt of the letter `claim` holds.
    pub fn failed_again(&mut self, claim: &Claim, e: &SendError) -> Result<()> {
        self.meta.attempts += 1;
        self.meta.last_failure_ms = audit::now_ms();
        self.meta.reason = Reason::of(e);
        self.meta.outcome_unknown = claim.was_unknown || matches!(e, SendError::OutcomeUnknown(_));
        self.meta.pid = None;
        write_json(&self.json, &self.meta)
    }

    /// Delivered: remove both files.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.json).with_context(|| format!("removing {}", self.json.display()))?;
        std::fs::remove_file(&self.eml).with_context(|| format!("removing {}", self.eml.display()))
    }
}

/// A letter this process holds while it sends it again ([`Letter::claim`]):
/// the lock on its `.eml` goes with it.
#[derive(Debug)]
pub struct Claim {
    _lock: std::fs::File,
    /// The message, as kept.
    pub bytes: Vec<u8>,
    /// Whether its outcome was unknown before this attempt.
    pub was_unknown: bool,
}

/// What [`DeadLetters::list`] found.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every complete letter, oldest first.
    pub letters: Vec<Letter>,
    /// Files it could not take as letters or spool files, with why: left
    /// where they are for an operator.
    pub unreadable: Vec<(PathBuf, String)>,
}

/// `path` opened for reading if it is a regular file; `None` when it is
/// anything else (a symbolic link, a FIFO, a folder, a device) or gone.
/// It is opened without following a link and without blocking, so such a
/// file cannot stall `retry` or have it send what a link points to.
fn open_regular(path: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file.metadata().with_context(|| format!("reading {}", path.display()))?;
    Ok(meta.is_file().then_some(file))
}

/// The bytes of the regular file at `path` (see [`open_regular`]), if it
/// holds at most `limit`.
fn read_regular(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some(file) = open_regular(path)? else { return Ok(None) };
    let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
    anyhow::ensure!(len <= limit, "{} holds {len} octets, more than the {limit} read", path.display());
    read_all(&file).with_context(|| format!("reading {}", path.display())).map(Some)
}

fn read_all(mut file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(data)
}

/// Whether `file` still has a name (no other process removed it after we
/// opened it).
fn still_linked(file: &std::fs::File) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata().context("reading a locked file")?.nlink() > 0)
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
    spool: Arc<OnceLock<Arc<Dir>>>,
}

impl DeadLetters {
    /// The folder at `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), relay: None, spool: Arc::default() }
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
        let (eml, _) = write_letter(&self.dir, &fresh_name(), &rendered.bytes, &meta)?;
        Ok(eml)
    }

    /// The spool folder's handle, opened (and the folder made) once.
    fn spool(&self) -> Result<Arc<Dir>> {
        if let Some(dir) = self.spool.get() {
            return Ok(Arc::clone(dir));
        }
        let path = self.dir.join(PENDING);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).with_context(|| format!("opening {}", path.display()))?;
        Ok(Arc::clone(self.spool.get_or_init(|| Arc::new(dir))))
    }

    /// Write `rendered` ahead into `pending/` before it is delivered.
    pub fn write_ahead(&self, rendered: &Rendered, plugin: Option<&str>) -> Result<Pending> {
        let mut one = self.write_ahead_many(&[rendered], plugin)?;
        one.pop().context("a spool file of one message held none")
    }

    /// Write `batch` ahead into one file in `pending/` before it is
    /// delivered: one message each, in order.
    pub fn write_ahead_many(&self, batch: &[&Rendered], plugin: Option<&str>) -> Result<Vec<Pending>> {
        use std::io::Write;
        let dir = self.spool()?;
        let name = format!("{}.{PENDING_EXT}", fresh_name());
        let file = Arc::new(SpoolFile {
            name,
            spool: dir,
            top: self.dir.clone(),
            left: std::sync::atomic::AtomicUsize::new(batch.len()),
        });
        let mut data = Vec::with_capacity(batch.iter().map(|r| r.bytes.len() + 512).sum());
        let mut pending = Vec::with_capacity(batch.len());
        for rendered in batch {
            let mut meta = Meta::new(rendered, plugin, Some(this_process()));
            meta.relay.clone_from(&self.relay);
            let id = fresh_name();
            let head = SpoolHead { id: Some(id.clone()), meta, size: rendered.bytes.len() as u64 };
            serde_json::to_writer(&mut data, &head).context("encoding a spool header")?;
            data.push(b'\n');
            let start = data.len();
            data.extend_from_slice(&rendered.bytes);
            pending.push(Pending { id, meta: head.meta, bytes: start..data.len(), file: Arc::clone(&file) });
        }
        let mut out = file
            .spool
            .open_with(&file.name, cap_std::fs::OpenOptions::new().write(true).create_new(true))
            .with_context(|| format!("creating {}/{PENDING}/{}", self.dir.display(), file.name))?;
        out.write_all(&data).with_context(|| format!("writing {}/{PENDING}/{}", self.dir.display(), file.name))?;
        Ok(pending)
    }

    /// Make letters of what dead processes left in `pending/`, as
    /// `outcome_unknown`; drop files whose write never finished. A file of
    /// a live process (by its name or a header) is left alone, whatever it
    /// holds so far; so is one another `retry` is adopting (locked).
    fn adopt_stale(&self, unreadable: &mut Vec<(PathBuf, String)>) -> Result<()> {
        let pending = self.dir.join(PENDING);
        let entries = match std::fs::read_dir(&pending) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", pending.display())),
        };
        for entry in entries {
            let path = entry.with_context(|| format!("reading {}", pending.display()))?.path();
            if path.extension().is_none_or(|e| e != PENDING_EXT) {
                continue;
            }
            let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
            if writer_of(&stem).is_some_and(process_alive) {
                continue;
            }
            let Some(file) = open_regular(&path)? else {
                if path.symlink_metadata().is_ok() {
                    unreadable.push((path, "not a regular file".into()));
                }
                continue;
            };
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
            if !still_linked(&file)? {
                continue;
            }
            let data = read_all(&file).with_context(|| format!("reading {}", path.display()))?;
            let messages = parse_spool(&data, &stem);
            if messages.iter().any(|(_, meta, _)| meta.pid.is_some_and(process_alive)) {
                continue;
            }
            // A message cut short was never sent (its attempt comes after
            // the whole file); one with a letter already was settled.
            for (id, mut meta, bytes) in messages {
                if !self.dir.join(format!("{id}.json")).exists() {
                    meta.pid = None;
                    meta.outcome_unknown = true;
                    write_letter(&self.dir, &id, bytes, &meta)?;
                }
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Every complete letter, oldest first, after adopting what dead
    /// processes left in the spool; and the files that are not letters
    /// (a `.json` that does not parse, a FIFO or a link in their place).
    pub fn list(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        self.adopt_stale(&mut listing.unreadable)?;
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(listing),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.dir.display())),
        };
        for entry in entries {
            let json = entry.with_context(|| format!("reading {}", self.dir.display()))?.path();
            if json.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let eml = json.with_extension("eml");
            // A `.json` alone is a letter still being written (its `.eml`
            // comes first), or the rest of one sent and being removed.
            let Ok(eml_type) = eml.symlink_metadata().map(|m| m.file_type()) else { continue };
            let read = match read_regular(&json, MAX_META_BYTES) {
                Ok(Some(text)) => serde_json::from_slice::<Meta>(&text).map_err(|e| format!("not a letter's record: {e}")),
                Ok(None) => Err("not a regular file".into()),
                Err(e) => Err(format!("{e:#}")),
            };
            match read {
                Ok(meta) if eml_type.is_file() => listing.letters.push(Letter { eml, json, meta }),
                Ok(_) => listing.unreadable.push((eml, "not a regular file".into())),
                Err(why) => listing.unreadable.push((json, why)),
            }
        }
        listing
            .letters
            .sort_by(|a, b| (a.meta.first_failure_ms, a.eml.file_name()).cmp(&(b.meta.first_failure_ms, b.eml.file_name())));
        Ok(listing)
    }
}

/// The line before each message of a spool file.
#[derive(Serialize, Deserialize)]
struct SpoolHead {
    /// The message's id (its letter's name, in its audit records). Absent
    /// in a file of one message written before batches: the file's stem.
    #[serde(default)]
    id: Option<String>,
    meta: Meta,
    /// The message's length, to tell a finished write from a torn one.
    size: u64,
}

/// The messages of a spool file, in order: each one's id (`stem` when its
/// head has none), header and bytes. A message whose write never finished
/// ends the list.
fn parse_spool<'a>(data: &'a [u8], stem: &str) -> Vec<(String, Meta, &'a [u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else { break };
        let Ok(head) = serde_json::from_slice::<SpoolHead>(&rest[..nl]) else { break };
        let body = &rest[nl + 1..];
        let Some(bytes) = usize::try_from(head.size).ok().and_then(|n| body.get(..n)) else { break };
        out.push((head.id.unwrap_or_else(|| stem.to_owned()), head.meta, bytes));
        rest = &body[bytes.len()..];
    }
    out
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

/// The process a spool file's name says wrote it ([`fresh_name`]:
/// time, process, counter).
fn writer_of(stem: &str) -> Option<u32> {
    stem.split('-').nth(1)?.parse().ok()
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
    format!("{:013}-{}-{:06}", audit::now_ms(), this_process(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// This process's id, asked of the kernel once (each spooled message
/// carries it, in its name and its header).
fn this_process() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Write letter `id` into `dir`: the `.eml`, then the `.json`, each
/// renamed into place, so a `.json` always has its `.eml`.
fn write_letter(dir: &Path, id: &str, bytes: &[u8], meta: &Meta) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let eml = dir.join(format!("{id}.eml"));
    let tmp = dir.join(format!(".{id}.eml.tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &eml).with_context(|| format!("renaming to {}", eml.display()))?;
    let json = dir.join(format!("{id}.json"));
    write_json(&json, meta)?;
    Ok((eml, json))
}

/// A spool file of one batch: removed when its last message settles.
#[derive(Debug)]
struct SpoolFile {
    name: String,
    spool: Arc<Dir>,
    top: PathBuf,
    /// Messages not settled yet.
    left: std::sync::atomic::AtomicUsize,
}

impl SpoolFile {
    /// One more message settled; the last one removes the file.
    fn settled(&self) -> Result<()> {
        if self.left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.spool
                .remove_file(&self.name)
                .with_context(|| format!("removing {}/{PENDING}/{}", self.top.display(), self.name))?;
        }
        Ok(())
    }
}

/// A message written ahead, not yet delivered.
#[derive(Debug)]
pub struct Pending {
    /// Its id, also in its audit records and in the name of the letter it
    /// may become.
    pub id: String,
    meta: Meta,
    /// Where its bytes are in the spool file.
    bytes: std::ops::Range<usize>,
    file: Arc<SpoolFile>,
}

impl Pending {
    /// Delivered, or refused for good: nothing to keep.
    pub fn done(self) -> Result<()> {
        self.file.settled()
    }

    /// Not delivered: keep it in the folder with the reason. Returns the
    /// `.eml`'s path.
    pub fn keep(self, error: &SendError) -> Result<PathBuf> {
        let mut meta = self.meta.clone();
        meta.reason = Reason::of(error);
        meta.outcome_unknown = matches!(error, SendError::OutcomeUnknown(_));
        self.settle(meta)
    }

    /// The run stopped while it was being delivered: keep it as
    /// `outcome_unknown`, with `why`.
    pub fn keep_unknown(self, why: &str) -> Result<PathBuf> {
        let mut meta = self.meta.clone();
        meta.reason = Reason { kind: "outcome-unknown".into(), message: why.to_owned(), transient: true };
        meta.outcome_unknown = true;
        self.settle(meta)
    }

    /// Write the letter (same id), then settle it in the spool file: a
    /// process killed in between leaves both, and adoption sees the letter.
    fn settle(self, mut meta: Meta) -> Result<PathBuf> {
        meta.attempts = 1;
        meta.last_failure_ms = audit::now_ms();
        meta.pid = None;
        let f = &self.file;
        let data = f.spool.read(&f.name).with_context(|| format!("reading {}/{PENDING}/{}", f.top.display(), f.name))?;
        let bytes = data.get(self.bytes.clone()).context("a spool file changed under its writer")?;
        let (eml, _) = write_letter(&f.top, &self.id, bytes, &meta)?;
        self.done()?;
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
        assert_eq!(d.list().unwrap().letters[0].meta.message_id, id);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn write_ahead_then_settle() {
        let dir = scratch("ahead");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("1@x"), Some("p")).unwrap();
        assert!(d.list().unwrap().letters.is_empty(), "this process's pending mail is not for retry");
        p.done().unwrap();
        let p = d.write_ahead(&rendered("2@x"), Some("p")).unwrap();
        p.keep(&SendError::Connect("down".into())).unwrap();
        let p = d.write_ahead(&rendered("3@x"), Some("p")).unwrap();
        p.keep_unknown("stopped").unwrap();
        let letters = d.list().unwrap().letters;
        assert_eq!(letters.len(), 2);
        assert!(!letters[0].meta.outcome_unknown && letters[1].meta.outcome_unknown);
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Rewrite a spool file as if process `pid` had written it.
    fn pretend_written_by(p: &Pending, pid: u32) -> PathBuf {
        let path = p.file.top.join(PENDING).join(&p.file.name);
        let data = std::fs::read(&path).unwrap();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut out = Vec::new();
        for (id, mut meta, bytes) in parse_spool(&data, &stem) {
            meta.pid = Some(pid);
            serde_json::to_writer(&mut out, &SpoolHead { id: Some(id), meta, size: bytes.len() as u64 }).unwrap();
            out.push(b'\n');
            out.extend_from_slice(bytes);
        }
        // And named as that process names its files.
        let renamed = path.with_file_name(format!("{}.{PENDING_EXT}", stem.replacen(&format!("-{}-", std::process::id()), &format!("-{pid}-"), 1)));
        std::fs::write(&renamed, out).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(writer_of(renamed.file_stem().unwrap().to_str().unwrap()), Some(pid));
        renamed
    }

    #[test]
    fn a_batch_is_one_file_removed_when_its_last_message_settles() {
        let dir = scratch("batch");
        let d = DeadLetters::new(&dir);
        let (a, b, c) = (rendered("7@x"), rendered("8@x"), rendered("9@x"));
        let mut batch = d.write_ahead_many(&[&a, &b, &c], Some("p")).unwrap().into_iter();
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 1);
        batch.next().unwrap().done().unwrap();
        batch.next().unwrap().keep(&SendError::Connect("down".into())).unwrap();
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 1, "one message is not settled");
        batch.next().unwrap().done().unwrap();
        assert_eq!(std::fs::read_dir(dir.join(PENDING)).unwrap().count(), 0);
        let letters = d.list().unwrap().letters;
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].meta.message_id, "8@x");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dead_process_leaves_each_unsettled_message_of_its_batch() {
        let dir = scratch("deadbatch");
        let d = DeadLetters::new(&dir);
        let (a, b, c) = (rendered("10@x"), rendered("11@x"), rendered("12@x"));
        let mut batch = d.write_ahead_many(&[&a, &b, &c], None).unwrap();
        let spooled = pretend_written_by(&batch[0], u32::MAX);
        // Message 11 was kept before the process died; 10 and 12 were not settled.
        let kept = batch.remove(1);
        write_letter(&dir, &kept.id, &b.bytes, &kept.meta).unwrap();
        // The last message's write was cut short: it was never sent.
        let data = std::fs::read(&spooled).unwrap();
        std::fs::write(&spooled, &data[..data.len() - 3]).unwrap();
        let letters = d.list().unwrap().letters;
        let ids: Vec<&str> = letters.iter().map(|l| l.meta.message_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"10@x") && ids.contains(&"11@x"), "{ids:?}");
        assert!(letters.iter().find(|l| l.meta.message_id == "10@x").unwrap().meta.outcome_unknown);
        assert!(!spooled.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dead_process_leaves_its_pending_mail_for_retry() {
        let dir = scratch("dead");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("4@x"), None).unwrap();
        let spooled = pretend_written_by(&p, u32::MAX);
        let letters = d.list().unwrap().letters;
        assert_eq!(letters.len(), 1);
        assert!(letters[0].meta.outcome_unknown);
        assert_eq!(letters[0].id(), p.id, "the letter keeps the spool id of its audit records");
        assert_eq!(std::fs::read(&letters[0].eml).unwrap(), rendered("4@x").bytes);
        assert!(!spooled.exists());
        letters[0].remove().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_spool_file_is_dropped_and_a_settled_one_is_not_doubled() {
        let dir = scratch("torn");
        let d = DeadLetters::new(&dir);
        let p = d.write_ahead(&rendered("5@x"), None).unwrap();
        let spooled = pretend_written_by(&p, u32::MAX);
        let data = std::fs::read(&spooled).unwrap();
        std::fs::write(&spooled, &data[..data.len() - 3]).unwrap();
        assert!(d.list().unwrap().letters.is_empty(), "a torn write was never sent");
        assert!(!spooled.exists());
        // Killed between writing the letter and removing the spool file.
        let p = d.write_ahead(&rendered("6@x"), None).unwrap();
        let spooled = pretend_written_by(&p, u32::MAX);
        write_letter(&dir, &p.id, &rendered("6@x").bytes, &p.meta).unwrap();
        assert_eq!(d.list().unwrap().letters.len(), 1);
        assert!(!spooled.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn odd_files_in_the_folder_are_named_and_the_good_letters_still_listed() {
        let dir = scratch("odd");
        let d = DeadLetters::new(&dir);
        d.keep(&rendered("good@x"), &SendError::Connect("down".into()), None).unwrap();
        std::fs::create_dir_all(dir.join(PENDING)).unwrap();
        // A FIFO and a folder named as spool files of a dead process: read,
        // the FIFO would block retry forever.
        let dead = format!("0000000000000-{}-000001", u32::MAX);
        let fifo = dir.join(PENDING).join(format!("{dead}.{PENDING_EXT}"));
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::fs::create_dir(dir.join(PENDING).join(format!("0000000000000-{}-000002.{PENDING_EXT}", u32::MAX))).unwrap();
        // An empty .json, one that is not a letter's, and a link in place of an .eml.
        std::fs::write(dir.join("empty.eml"), "x").unwrap();
        std::fs::write(dir.join("empty.json"), "").unwrap();
        std::fs::write(dir.join("other.eml"), "x").unwrap();
        std::fs::write(dir.join("other.json"), "[1, 2]").unwrap();
        // A record too large to be a letter's is not read.
        std::fs::write(dir.join("huge.eml"), "x").unwrap();
        std::fs::File::create(dir.join("huge.json")).unwrap().set_len(MAX_META_BYTES + 1).unwrap();
        let good = d.list().unwrap().letters.remove(0);
        std::fs::copy(&good.json, dir.join("link.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link.eml")).unwrap();
        let listing = d.list().unwrap();
        assert_eq!(listing.letters.len(), 1);
        assert_eq!(listing.letters[0].meta.message_id, "good@x");
        let mut named: Vec<String> =
            listing.unreadable.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        named.sort();
        assert_eq!(named.len(), 6, "{:?}", listing.unreadable);
        for name in ["empty.json", "other.json", "link.eml", "huge.json"] {
            assert!(named.contains(&name.into()), "{name}: {named:?}");
        }
        assert!(fifo.exists(), "left for an operator");
        // Claimed, the link is not followed either.
        let mut linked = Letter { eml: dir.join("link.eml"), json: dir.join("link.json"), meta: good.meta.clone() };
        assert!(linked.claim().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_spool_file_of_a_live_process_is_left_alone_however_little_it_holds() {
        let dir = scratch("live");
        let d = DeadLetters::new(&dir);
        std::fs::create_dir_all(dir.join(PENDING)).unwrap();
        // Created, not yet written: the writer is this process.
        let spooled = dir.join(PENDING).join(format!("{}.{PENDING_EXT}", fresh_name()));
        std::fs::write(&spooled, "").unwrap();
        assert!(d.list().unwrap().letters.is_empty());
        assert!(spooled.exists(), "its writer may be about to send what it writes");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_claimed_letter_is_held_and_marked_in_flight_until_its_outcome() {
        let dir = scratch("claim");
        let d = DeadLetters::new(&dir);
        d.keep(&rendered("c@x"), &SendError::Connect("down".into()), None).unwrap();
        let mut first = d.list().unwrap().letters.remove(0);
        let mut second = d.list().unwrap().letters.remove(0);
        let claim = first.claim().unwrap().expect("free");
        assert_eq!(claim.bytes, rendered("c@x").bytes);
        assert!(!claim.was_unknown);
        assert!(second.claim().unwrap().is_none(), "a second retry passes over a held letter");
        first.sending().unwrap();
        // Killed now: the next retry finds it in flight, for --force only.
        let seen = d.list().unwrap().letters.remove(0);
        assert!(seen.meta.outcome_unknown && seen.meta.reason.kind == "outcome-unknown");
        // A clean failure puts it back as it was.
        first.failed_again(&claim, &SendError::Connect("down again".into())).unwrap();
        drop(claim);
        let again = d.list().unwrap().letters.remove(0);
        assert!(!again.meta.outcome_unknown && again.meta.attempts == 2);
        // Sent by the first holder: the second finds it gone.
        let claim = first.claim().unwrap().expect("free again");
        first.remove().unwrap();
        drop(claim);
        assert!(second.claim().unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
