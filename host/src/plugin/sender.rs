//! `wasmail:mail/sender` as a plugin sees it: the host's implementation of
//! `send`. Each call is an attempt against the run's budget; a message that
//! passes the policy is assembled by the run's mailer, written ahead to the
//! spool with an `attempt` audit record, delivered over SMTP (RFC 5321) or
//! written to the outbox, and its outcome recorded: nothing a plugin handed
//! over is lost or unaudited, whatever stops the run.

use crate::mail::audit::{AuditLog, Outcome, Record};
use crate::bindings::transport::Rendered;
use crate::bindings::types::{Message, Receipt, Reply, SendError, Stage};
use crate::mail::deadletter::{DeadLetters, Pending};
use crate::mailer::{Mailer, RelayOpener};
use crate::mail::policy::{Approved, Exhausted, Policy, Refusal};
use crate::plugin::sandbox::Stop;
use crate::mail::outbox;
use anyhow::{Context, Result};
use std::path::PathBuf;
use wasmtime::component::Linker;

/// The WIT name of the interface, as the plugin imports it.
pub const INTERFACE: &str = "wasmail:mail/sender@0.1.0";
/// The shared types interface a plugin imports along with it.
pub const TYPES_INTERFACE: &str = "wasmail:mail/types@0.1.0";

/// Where a run's mail goes.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Over SMTP through the mailer's session.
    Relay,
    /// Rendered by the mailer, written to this folder.
    Outbox(PathBuf),
}

/// What the run counted; the records themselves are in the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Calls to `send`.
    pub attempts: u64,
    /// Messages the relay (or the outbox) took.
    pub accepted: u64,
    /// Messages the policy refused.
    pub denied: u64,
    /// Messages the relay refused.
    pub rejected: u64,
    /// Messages that failed otherwise (invalid, network, TLS, timeout).
    pub errors: u64,
    /// Messages not sent again because an earlier delivery of the run's job
    /// attempted them.
    pub skipped: u64,
    /// Messages kept in the dead-letter folder for `wasmail retry`.
    pub kept: u64,
}

/// The most octets of assembled messages a batch gathers before it goes to
/// the mailer (the message that passes it is the batch's last): a longer
/// list goes out in several pipelined batches, so a plugin's list costs the
/// host about twice this much (one batch on the wire, the next being
/// assembled), whatever its length (the list itself lives in the plugin's
/// store, under its `memory_mib`).
pub const MAX_BATCH_BYTES: u64 = 16 << 20;

/// The most messages in one pipelined batch handed to the mailer. It is
/// also the most messages a process killed in the middle of a batch leaves
/// as outcome unknown (the whole batch is written ahead, and which of them
/// the relay took is only known when the batch returns); 64 keeps that
/// small while a batch's fixed costs (one spool file, one audit write)
/// stay a few µs a message.
pub const MAX_BATCH_MESSAGES: usize = 64;

/// The fewest messages a batch is cut to when a call's list is spread
/// over the run's sessions ([`batch_size`]): below it, another session's
/// connect and greeting would cost more than the round trips it saves.
pub const MIN_BATCH_MESSAGES: usize = 16;

/// How many messages each batch of a `send-many` call of `len` messages
/// takes when `sessions` sessions may carry them: the list spread evenly
/// over the sessions, so that they all work at once and finish together
/// (a call returns only when its last batch is settled, and a session
/// carries its batch one round trip a message under DATA), within
/// [`MIN_BATCH_MESSAGES`]..=[`MAX_BATCH_MESSAGES`].
pub fn batch_size(len: usize, sessions: usize) -> usize {
    len.div_ceil(sessions.max(1)).clamp(MIN_BATCH_MESSAGES, MAX_BATCH_MESSAGES)
}

/// An approved, assembled message waiting for its batch: then written
/// ahead to the spool, with its `attempt` record, until its outcome is
/// settled.
#[derive(Debug)]
pub struct Queued {
    /// Which message of the call it is.
    index: usize,
    /// Which message of the run it is (audit `seq`).
    seq: u64,
    approved: Approved,
    rendered: Rendered,
    /// Its place in the spool, once written ahead.
    pending: Option<Pending>,
    /// The batch it went out in (0 until it was handed to a session).
    batch: u64,
}

/// What the run was in the middle of, for when a limit stops it there.
#[derive(Debug, Default)]
pub struct InFlight {
    /// A message the mailer was assembling: nothing written or sent yet.
    pub assembling: Option<Approved>,
    /// Messages gathered for the next batch: assembled, not written ahead.
    pub queued: Vec<Queued>,
    /// The batches written ahead and handed to the relay sessions for
    /// delivery, in the order they were handed over.
    pub delivering: Vec<Queued>,
}

impl InFlight {
    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.assembling.is_none() && self.queued.is_empty() && self.delivering.is_empty()
    }
}

/// A spawned task that is aborted when its handle is dropped: the batch a
/// stopped run had on the wire stops with the run.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Aborting<T> {
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    async fn join(mut self) -> Result<T> {
        let handle = &mut self.0;
        handle.await.map_err(|e| anyhow::anyhow!("the delivery task failed: {e}"))
    }
}

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The relay sessions of a run beyond its first (`Forwarder::mailer`):
/// `relay.sessions` of them in all may carry batches at once.
pub struct Sessions {
    /// Opens another session; `None` when the run has only its first.
    opener: Option<RelayOpener>,
    /// The most sessions at once, the first included.
    max: usize,
    /// Sessions opened beyond the first.
    opened: usize,
    /// Those of them not carrying a batch now.
    idle: Vec<Mailer>,
}

impl Sessions {
    /// Only the run's first session.
    pub fn one() -> Self {
        Self { opener: None, max: 1, opened: 0, idle: Vec::new() }
    }

    /// Up to `max` sessions (the first included), more opened with `opener`
    /// when a batch is ready and every open one is busy.
    pub fn up_to(max: usize, opener: RelayOpener) -> Self {
        Self { opener: Some(opener), max: max.max(1), opened: 0, idle: Vec::new() }
    }

    /// The sessions beyond the first not carrying a batch, to be closed.
    pub fn take_idle(&mut self) -> Vec<Mailer> {
        std::mem::take(&mut self.idle)
    }
}

/// A relay session taken to carry one batch.
struct Carrier {
    mailer: Mailer,
    /// The run's first session (it goes back to the pool after the run).
    first: bool,
}

/// What a batch's task gives back: its session, the batch (its bytes, for
/// when it must go again) and the mailer's answer.
type Delivered = (Carrier, Vec<Rendered>, Result<Vec<Result<Receipt, SendError>>>);

/// A batch on the wire, on a task of its own.
struct OnWire {
    batch: u64,
    task: Aborting<Delivered>,
}

/// What the policy made of one message.
enum Admission {
    /// It may go.
    Approved(Approved),
    /// An earlier delivery of this run's job attempted it: its result then
    /// (recorded as `skipped`), and it is not sent again.
    Replayed(Result<Receipt, SendError>),
    /// It may not: its `send-error` (recorded).
    Refused(SendError),
    /// The run's attempt budget is spent: the run stops (recorded then).
    Exhausted(Exhausted),
}

/// Drop the spool copy of a settled message whose record is written.
fn drop_settled(settled: Option<Pending>) {
    if let Some(pending) = settled
        && let Err(e) = pending.done()
    {
        // Only the spool copy lingers, where `retry` sees it as outcome
        // unknown (resent with `--force` only).
        tracing::error!("removing the spool copy of a settled message: {e:#}");
    }
}

/// A settled message: its outcome record, and what to do with its spool
/// copy once that record is written.
enum Settled {
    /// Recorded; `Some` spool copy to drop (delivered or refused for good).
    Recorded(Record, Option<Pending>),
    /// The spool could not keep it, or it was never written ahead: the
    /// record says so, and the run stops, for the host's fault given.
    Stopped(Record, String),
}

/// The most messages a run's report lists one by one; the rest are only
/// counted (`RunReport::unlisted`), so a report stays small whatever the
/// plugin sends. Every message has its records in the audit log.
pub const MAX_REPORTED_MESSAGES: usize = 1000;

/// What became of one message of a run, for its report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageOutcome {
    /// Which message of the run (1 for the first handed to the host).
    pub seq: Option<u64>,
    /// Its audit and spool id (ties its records together), once written ahead.
    pub id: Option<String>,
    /// Its Message-ID, once assembled.
    pub message_id: Option<String>,
    /// The outcome, as in the audit log.
    pub outcome: Outcome,
    /// Why it was denied or failed, or the relay's reply.
    pub reason: Option<String>,
    /// Where it was kept for `wasmail retry`, if it was.
    pub dead_letter: Option<String>,
}

/// What an earlier delivery of the same job did with one of its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prior {
    /// Its place in that delivery (audit `seq`).
    pub seq: u64,
    /// Its audit id.
    pub id: Option<String>,
    /// Its Message-ID.
    pub message_id: Option<String>,
    /// Its recipients.
    pub recipients: Vec<String>,
    /// Its size.
    pub size: Option<u64>,
    /// Its last outcome: `attempt` when none followed (the process died or
    /// was stopped with it in flight).
    pub outcome: Outcome,
    /// Its From address.
    pub from: Option<String>,
    /// The outbox file it was written to, or was about to be.
    pub outbox: Option<String>,
    /// Whether its record was cut to fit (then its recipients are not all
    /// listed, and not compared).
    pub clipped: bool,
}

impl Prior {
    /// Whether it was the message `approved` is: the same From and the same
    /// recipients (in any order). One whose record was cut cannot be
    /// compared, and is taken as the same.
    fn is_for(&self, approved: &Approved) -> bool {
        if self.clipped {
            return true;
        }
        let same_from = self.from.as_deref().is_none_or(|f| f == approved.from);
        same_from && recipients_key(&self.recipients) == recipients_key(&approved.recipients)
    }

    /// Whether the outbox has it: its file is written whole or not at all,
    /// so a file that is there was written, whatever the log says after.
    fn in_outbox(&self) -> bool {
        self.outbox.as_deref().is_some_and(|p| std::path::Path::new(p).exists())
    }

    /// Whether it was bound for the outbox and never written there: its
    /// `accepted` record is missing and so is its file (one that was
    /// accepted may have been taken from the outbox since).
    fn never_written(&self) -> bool {
        self.outbox.is_some() && self.outcome != Outcome::Accepted && !self.in_outbox()
    }
}

/// The recipients of an envelope in a comparable form: sorted, one a line.
fn recipients_key(recipients: &[String]) -> String {
    let mut sorted: Vec<&str> = recipients.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.join("\n")
}

/// An envelope as the key of [`Priors`]' index: its From, then its recipients.
fn envelope_key(from: &str, recipients: &[String]) -> String {
    format!("{from}\n{}", recipients_key(recipients))
}

/// What earlier deliveries of one job attempted: each attempt stands for
/// one message, and is taken by the first message of this delivery that
/// it was ([`Priors::take_for`]). Indexed by place and by envelope, so a
/// redelivery of a long job finds each message's attempt at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Priors {
    list: Vec<Option<Prior>>,
    by_seq: std::collections::HashMap<u64, Vec<usize>>,
    by_envelope: std::collections::HashMap<String, std::collections::VecDeque<usize>>,
}

impl Priors {
    /// The earlier attempt of the message `approved` at place `seq`, taken:
    /// the attempt at the same place if it had the same envelope, else one
    /// with the same envelope at another place (a plugin whose messages
    /// came in another order: a map, a folder that changed). `None` when no
    /// earlier delivery attempted it, or only wrote an outbox file that is
    /// not there. Messages with the same envelope are told apart by their
    /// place only.
    fn take_for(&mut self, seq: u64, approved: &Approved) -> Option<Prior> {
        let list = &self.list;
        // An outbox attempt whose file was never written stands for no
        // message: the delivery after it wrote the message again.
        let stands = |i: usize| list.get(i).and_then(Option::as_ref).is_some_and(|p| !p.never_written() && p.is_for(approved));
        let here = self.by_seq.get(&seq).and_then(|at| at.iter().copied().find(|&i| stands(i)));
        let i = match here {
            Some(i) => i,
            None => {
                // A record cut to fit is compared at its own place only,
                // and is not in this index.
                let same = self.by_envelope.get_mut(&envelope_key(&approved.from, &approved.recipients))?;
                while same.front().is_some_and(|&i| list.get(i).is_none_or(Option::is_none)) {
                    same.pop_front();
                }
                let at = same.iter().position(|&i| stands(i))?;
                same.remove(at)?
            }
        };
        self.list.get_mut(i)?.take()
    }

    /// Add an attempt, in the order of the log.
    fn push(&mut self, prior: Prior) {
        let i = self.list.len();
        self.by_seq.entry(prior.seq).or_default().push(i);
        if let (false, Some(from)) = (prior.clipped, &prior.from) {
            self.by_envelope.entry(envelope_key(from, &prior.recipients)).or_default().push_back(i);
        }
        self.list.push(Some(prior));
    }

    /// Every attempt not taken yet, in the order of the log.
    pub fn iter(&self) -> impl Iterator<Item = &Prior> {
        self.list.iter().flatten()
    }
}

/// The messages of `plugin`'s `job` that earlier deliveries attempted, from
/// the audit log at `path`: the idempotency record of a queue's jobs. A job
/// id is the plugin's: another plugin's job of the same id (a client's key
/// reused for another plugin) is another job.
pub fn priors(path: &std::path::Path, plugin: &str, job: &str) -> Result<Priors> {
    use std::io::BufRead;
    let mut out = Priors::default();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // Lines as bytes: a line cut by a killed process may end inside a
    // character, and is skipped like any line that is not a record.
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let Ok(line) = std::str::from_utf8(&line) else { continue };
        // A cheap filter before parsing: most lines are other jobs'.
        if !line.contains(job) {
            continue;
        }
        let Ok(r) = serde_json::from_str::<Record>(line) else { continue };
        let (Some(j), Some(seq)) = (&r.job, r.seq) else { continue };
        if j != job || r.plugin != plugin {
            continue;
        }
        match r.outcome {
            // Every attempt, a redelivery's too: a message sent at a place
            // where an earlier delivery had sent another stands beside it.
            Outcome::Attempt => {
                out.push(Prior {
                    seq,
                    id: r.id,
                    message_id: r.message_id,
                    recipients: r.recipients,
                    size: r.size,
                    outcome: Outcome::Attempt,
                    from: r.from,
                    outbox: r.outbox,
                    clipped: r.omitted > 0,
                });
            }
            // An outcome belongs to the attempt with its place and its id.
            Outcome::Accepted | Outcome::Rejected | Outcome::Error => {
                if let Some(p) = out.list.iter_mut().rev().flatten().find(|p| p.seq == seq && p.id == r.id) {
                    p.outcome = r.outcome;
                }
            }
            Outcome::Denied | Outcome::Skipped => {}
        }
    }
    Ok(out)
}

/// A run of a job refused because another run of the same job is going on
/// (a client that sent its `Idempotency-Key` again, a job delivered again
/// while its first delivery still runs): its messages would be read as not
/// yet attempted and sent twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRunning {
    /// The job.
    pub job: String,
}

impl std::fmt::Display for JobRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} is already running; try again when it has ended", self.job)
    }
}

impl std::error::Error for JobRunning {}

/// The folder of job locks beside the audit log at `audit`.
fn job_locks(audit: &std::path::Path) -> PathBuf {
    let mut name = audit.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".jobs");
    audit.with_file_name(name)
}

/// A job held by one run, for the whole run: an exclusive lock (`flock`)
/// on `<audit log>.jobs/<SHA-256 of the plugin and job id>.lock`, taken before the
/// audit log is searched for the job's earlier deliveries. Every process
/// that writes the same audit log sees it. The file is removed when the run
/// ends; the kernel drops the lock of a process that dies.
#[derive(Debug)]
pub struct JobLock {
    path: PathBuf,
    /// The open file that holds the lock until it is closed.
    _held: std::fs::File,
}

impl JobLock {
    /// Hold `plugin`'s `job` for this run, or say that another run holds it.
    pub fn take(audit: &std::path::Path, plugin: &str, job: &str) -> Result<std::result::Result<Self, JobRunning>> {
        use sha2::Digest;
        use std::os::unix::fs::MetadataExt;
        let dir = job_locks(audit);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut key = sha2::Sha256::new();
        // Length-prefixed: no plugin and job pair spells another's.
        key.update((plugin.len() as u64).to_be_bytes());
        key.update(plugin.as_bytes());
        key.update(job.as_bytes());
        let hash: String = key.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!("{hash}.lock"));
        // A run that ends removes the file after we opened it: then the
        // lock we took is on a file without a name, and we open again.
        for _ in 0..JOB_LOCK_REOPENS {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(Err(JobRunning { job: job.to_owned() })),
                Err(std::fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
            }
            let held = file.metadata().with_context(|| format!("reading {}", path.display()))?;
            match std::fs::metadata(&path) {
                Ok(named) if named.ino() == held.ino() && named.dev() == held.dev() => return Ok(Ok(Self { path, _held: file })),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            }
        }
        Ok(Err(JobRunning { job: job.to_owned() }))
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // Removed while still held, so no other run locks this file after.
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("removing the job lock {}: {e}", self.path.display());
        }
    }
}

/// How often [`JobLock::take`] opens the lock file again when runs of the
/// same job keep ending under it, before it says the job is running.
const JOB_LOCK_REOPENS: usize = 8;

/// Everything `send` needs during one run.
pub struct Forwarder {
    /// The plugin's name, for the audit log.
    pub plugin: String,
    /// The plugin component's SHA-256.
    pub sha256: String,
    /// Its policy for this run.
    pub policy: Policy,
    /// Where mail goes.
    pub delivery: Delivery,
    /// The run's mailer: it holds the one SMTP session for all sends (and,
    /// for the outbox, assembles). `None` while a batch is with it, or once
    /// a stop dropped it in the middle of a call.
    pub mailer: Option<Mailer>,
    /// The relay sessions beyond the first.
    pub sessions: Sessions,
    /// The mailer that assembles messages for the relay: a second instance,
    /// so the next batch is assembled while the last one is on the wire. It
    /// has the files and the signing key; the sending one has the network.
    pub renderer: Option<Mailer>,
    /// The audit log.
    pub audit: AuditLog,
    /// Where undelivered messages are kept, and the write-ahead spool.
    pub dead_letters: DeadLetters,
    /// What the run counted.
    pub counts: Counts,
    /// The sends in progress.
    pub in_flight: InFlight,
    /// Why the host stopped the run from inside `send`, if it did.
    pub stop: Option<Stop>,
    /// The job the run is for, if any: written into every record.
    pub job: Option<String>,
    /// The run's slot in the relay pool, if it draws from one.
    pub connection: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The job, held by this run (see [`JobLock`]).
    pub job_lock: Option<JobLock>,
    /// What earlier deliveries of that job attempted, by `seq`.
    pub priors: Priors,
    /// The message being handled: its `seq`.
    pub seq: u64,
    /// Batches handed to a session so far (the last one's number).
    pub batches: u64,
    /// The first [`MAX_REPORTED_MESSAGES`] messages' outcomes.
    pub reported: Vec<MessageOutcome>,
    /// Outcomes past that, only counted.
    pub unreported: u64,
}

fn base(approved: Option<&Approved>, outcome: Outcome, reason: Option<String>) -> Record {
    let mut r = Record::new(outcome);
    if let Some(a) = approved {
        r.from = Some(a.from.clone());
        r.recipients = a.recipients.clone();
    }
    r.reason = reason;
    r
}

/// Whether a message's result says its session never opened: the
/// connection, the greeting, EHLO, TLS or AUTH failed, before any
/// transaction.
fn session_refused(result: &Result<Receipt, SendError>) -> bool {
    match result {
        Err(SendError::Connect(_) | SendError::Tls(_) | SendError::Auth(_)) => true,
        Err(SendError::Rejected(r)) => matches!(r.stage, Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::Tls | Stage::Auth),
        Err(SendError::Timeout(stage)) => matches!(stage, Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::Tls | Stage::Auth),
        _ => false,
    }
}

/// Fill in `r` with what a send's `result` says: its outcome, the relay's
/// reply or the error as the reason, the size, and the refused recipients.
pub(crate) fn record_result(r: &mut Record, result: &Result<Receipt, SendError>) {
    match result {
        Ok(receipt) => {
            r.outcome = Outcome::Accepted;
            r.reason = Some(format!("{} {}", receipt.reply.code, receipt.reply.text));
            r.size = Some(receipt.size);
            r.rejected = receipt.rejected.iter().map(|f| f.address.clone()).collect();
        }
        Err(e) => {
            r.outcome = outcome_of(e);
            r.reason = Some(format!("{}: {}", e.kind(), e.describe()));
            if let SendError::Rejected(rej) = e {
                r.rejected = rej.recipients.iter().map(|f| f.address.clone()).collect();
            }
        }
    }
}

fn outcome_of(e: &SendError) -> Outcome {
    match e {
        SendError::Rejected(_) => Outcome::Rejected,
        SendError::PolicyDenied(_) => Outcome::Denied,
        _ => Outcome::Error,
    }
}

impl Forwarder {
    fn record(&mut self, mut r: Record) -> Result<()> {
        self.note(&mut r);
        self.audit.append(&r).map_err(|e| self.stop(Stop::Host(format!("the audit log could not be written: {e:#}"))))
    }

    /// Count `r`, list it in the run's report, and fill in the run's fields.
    fn note(&mut self, r: &mut Record) {
        match r.outcome {
            Outcome::Attempt => {}
            Outcome::Accepted => self.counts.accepted += 1,
            Outcome::Denied => self.counts.denied += 1,
            Outcome::Rejected => self.counts.rejected += 1,
            Outcome::Error => self.counts.errors += 1,
            Outcome::Skipped => self.counts.skipped += 1,
        }
        if r.dead_letter.is_some() {
            self.counts.kept += 1;
        }
        r.plugin.clone_from(&self.plugin);
        r.sha256.clone_from(&self.sha256);
        r.job.clone_from(&self.job);
        r.seq.get_or_insert(self.seq);
        if r.outcome != Outcome::Attempt {
            if self.reported.len() < MAX_REPORTED_MESSAGES {
                self.reported.push(MessageOutcome {
                    seq: r.seq,
                    id: r.id.clone(),
                    message_id: r.message_id.clone(),
                    outcome: r.outcome,
                    reason: r.reason.clone(),
                    dead_letter: r.dead_letter.clone(),
                });
            } else {
                self.unreported += 1;
            }
        }
    }

    /// Stop the run from inside `send`: remember why (typed), and return the
    /// error that traps the plugin.
    fn stop(&mut self, stop: Stop) -> anyhow::Error {
        let e = anyhow::anyhow!("{stop}");
        self.stop = Some(stop);
        e
    }

    /// The host side of `sender.send`: `send-many` with one message.
    pub async fn send(&mut self, msg: Message) -> Result<Result<Receipt, SendError>> {
        let mut results = self.send_many(vec![msg]).await?;
        results.pop().ok_or_else(|| anyhow::anyhow!("a batch of one gave no result"))
    }

    /// The host side of `sender.send-many`. Each message is one attempt
    /// against the run's budget and goes through the policy, the mailer's
    /// assembly, the write-ahead spool and its `attempt` record as if sent
    /// alone; the approved ones go to the relay in pipelined batches of at
    /// most [`MAX_BATCH_MESSAGES`] messages and [`MAX_BATCH_BYTES`] octets,
    /// each on a task of its own while the next batch is assembled, on as
    /// many sessions at once as `relay.sessions` allows. Batches are settled
    /// in the order they were handed over.
    /// `Err` stops the run (a trap), after the messages already queued were
    /// delivered (budget exhausted) or settled; refusals are `send-error`s.
    pub async fn send_many(&mut self, msgs: Vec<Message>) -> Result<Vec<Result<Receipt, SendError>>> {
        let mut results: Vec<Option<Result<Receipt, SendError>>> = msgs.iter().map(|_| None).collect();
        let mut msgs = msgs.into_iter().enumerate().peekable();
        // Dropped with this call when a limit stops the run: the tasks are
        // aborted and their messages stay in `in_flight.delivering`.
        let mut wire: std::collections::VecDeque<OnWire> = std::collections::VecDeque::new();
        let per_batch = batch_size(results.len(), self.sessions.max);
        let sent = self.send_batches(&mut msgs, &mut results, &mut wire, per_batch).await;
        if let Err(e) = sent {
            // The run stops (the host or a mailer failed), but the batches
            // other sessions carry finish and are settled first, so what
            // they delivered is recorded as delivered.
            while let Some(w) = wire.pop_front() {
                if let Err(also) = self.land(w, &mut results).await {
                    tracing::error!("settling a batch while the run stops: {also:#}");
                    break;
                }
            }
            return Err(e);
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SendError::Protocol("the host left this message unsettled".into()))))
            .collect())
    }

    /// `send_many`'s work: gather, hand over and settle batches of up to
    /// `per_batch` messages until `msgs` is spent and `wire` is empty.
    async fn send_batches(
        &mut self,
        msgs: &mut std::iter::Peekable<impl Iterator<Item = (usize, Message)>>,
        results: &mut [Option<Result<Receipt, SendError>>],
        wire: &mut std::collections::VecDeque<OnWire>,
        per_batch: usize,
    ) -> Result<()> {
        let mut exhausted = self.gather(msgs, results, per_batch).await?;
        loop {
            while let Some(w) = wire.pop_front_if(|w| w.task.is_finished()) {
                self.land(w, results).await?;
            }
            let more = exhausted.is_none() && msgs.peek().is_some();
            if !self.in_flight.queued.is_empty() {
                let Some(mut carrier) = self.free_session().await else {
                    // Every session is busy: wait for the oldest batch.
                    let Some(w) = wire.pop_front() else {
                        anyhow::bail!("the run's mailer went missing");
                    };
                    self.land(w, results).await?;
                    continue;
                };
                self.write_ahead()?;
                let (batch, rendered) = self.hand_over(per_batch);
                if wire.is_empty() && !more {
                    // The last batch, alone: no task to hand it to.
                    let sent = carrier.mailer.submit_many(&rendered).await;
                    self.settle_batch(batch, (carrier, rendered, sent), results)?;
                } else {
                    // On a runtime with more than one thread, in parallel.
                    let task = Aborting(tokio::spawn(async move {
                        let sent = carrier.mailer.submit_many(&rendered).await;
                        (carrier, rendered, sent)
                    }));
                    wire.push_back(OnWire { batch, task });
                }
            } else if more {
                exhausted = self.gather(msgs, results, per_batch).await?;
            } else if let Some(w) = wire.pop_front() {
                self.land(w, results).await?;
            } else {
                break;
            }
        }
        if let Some(exhausted) = exhausted {
            // Over the budget: what was approved before went out; the run stops.
            self.record(base(None, Outcome::Denied, Some(format!("stopped: {exhausted}"))))?;
            return Err(self.stop(Stop::Budget(exhausted)));
        }
        Ok(())
    }

    /// A session free to carry a batch: the run's first, an idle one, or a
    /// new one while `relay.sessions` allows more. One that cannot be
    /// opened (the engine's instance slots are all taken, say) is not an
    /// error: the run goes on with the sessions it has.
    async fn free_session(&mut self) -> Option<Carrier> {
        if let Some(mailer) = self.mailer.take() {
            return Some(Carrier { mailer, first: true });
        }
        if let Some(mailer) = self.sessions.idle.pop() {
            return Some(Carrier { mailer, first: false });
        }
        if self.sessions.opened + 1 >= self.sessions.max {
            return None;
        }
        let opener = self.sessions.opener.as_ref()?;
        match opener.open().await {
            Ok(mailer) => {
                self.sessions.opened += 1;
                Some(Carrier { mailer, first: false })
            }
            Err(e) => {
                tracing::warn!("relay: another session could not be opened, going on with {}: {e:#}", self.sessions.opened + 1);
                self.sessions.max = self.sessions.opened + 1;
                None
            }
        }
    }

    /// Wait for a batch on the wire and settle it.
    async fn land(&mut self, w: OnWire, results: &mut [Option<Result<Receipt, SendError>>]) -> Result<()> {
        let delivered = w.task.join().await?;
        self.settle_batch(w.batch, delivered, results)
    }

    /// Take messages from `msgs` through the policy and the mailer's
    /// assembly into the next batch (`in_flight.queued`), until it holds
    /// `per_batch` messages or [`MAX_BATCH_BYTES`], or `msgs` ends; refused
    /// messages get their results at once, and outbox mail is written at
    /// once. `Some` when the attempt budget ran out (the rest are not
    /// taken).
    async fn gather(
        &mut self,
        msgs: &mut std::iter::Peekable<impl Iterator<Item = (usize, Message)>>,
        results: &mut [Option<Result<Receipt, SendError>>],
        per_batch: usize,
    ) -> Result<Option<Exhausted>> {
        let mut queued_bytes: u64 = self.in_flight.queued.iter().map(|q| q.rendered.bytes.len() as u64).sum();
        while queued_bytes < MAX_BATCH_BYTES && self.in_flight.queued.len() < per_batch {
            let Some((index, mut msg)) = msgs.next() else { break };
            let approved = match self.admit(&mut msg)? {
                Admission::Approved(approved) => approved,
                Admission::Replayed(result) => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(result);
                    }
                    continue;
                }
                Admission::Refused(refused) => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(Err(refused));
                    }
                    continue;
                }
                Admission::Exhausted(exhausted) => return Ok(Some(exhausted)),
            };
            let rendered = match self.assemble(approved.clone(), &msg).await? {
                Ok(rendered) => rendered,
                Err(e) => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(Err(e));
                    }
                    continue;
                }
            };
            if let Delivery::Outbox(dir) = &self.delivery {
                let dir = dir.clone();
                let written = self.to_outbox(&dir, approved, rendered)?;
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(written);
                }
                continue;
            }
            queued_bytes += rendered.bytes.len() as u64;
            self.in_flight.queued.push(Queued { index, seq: self.seq, approved, rendered, pending: None, batch: 0 });
        }
        Ok(None)
    }

    /// The queued batch (its first `per_batch` messages), written ahead,
    /// joins those being delivered under the next batch number; its bytes
    /// go to the mailer (moved, not copied: the spool has them).
    fn hand_over(&mut self, per_batch: usize) -> (u64, Vec<Rendered>) {
        self.batches += 1;
        let batch = self.batches;
        let rest = self.in_flight.queued.split_off(self.in_flight.queued.len().min(per_batch));
        let mut queued = std::mem::replace(&mut self.in_flight.queued, rest);
        let rendered = queued
            .iter_mut()
            .map(|q| {
                q.batch = batch;
                Rendered {
                    message_id: q.rendered.message_id.clone(),
                    envelope: q.rendered.envelope.clone(),
                    bytes: std::mem::take(&mut q.rendered.bytes),
                }
            })
            .collect();
        self.in_flight.delivering.append(&mut queued);
        (batch, rendered)
    }

    /// Count the attempt and hold `msg` to the policy.
    fn admit(&mut self, msg: &mut Message) -> Result<Admission> {
        self.counts.attempts += 1;
        self.seq = self.counts.attempts;
        match self.policy.attempt() {
            Ok(Ok(())) => {}
            Ok(Err(denied)) => {
                self.record(base(None, Outcome::Denied, Some(format!("policy-denied: {denied}"))))?;
                return Ok(Admission::Refused(SendError::PolicyDenied(denied.to_string())));
            }
            Err(exhausted) => return Ok(Admission::Exhausted(exhausted)),
        }
        match self.policy.check(msg) {
            Ok(approved) => match self.priors.take_for(self.seq, &approved) {
                Some(prior) => self.replay(&approved, prior).map(Admission::Replayed),
                // No earlier delivery attempted it: not sent yet.
                None => Ok(Admission::Approved(approved)),
            },
            Err(Refusal::Denied(denied)) => {
                let mut r = base(None, Outcome::Denied, Some(format!("policy-denied: {denied}")));
                r.from = msg.from.as_ref().map(|m| m.address.clone());
                self.record(r)?;
                Ok(Admission::Refused(SendError::PolicyDenied(denied.to_string())))
            }
            Err(Refusal::Invalid(invalid)) => {
                self.record(base(None, Outcome::Error, Some(format!("invalid-message: {invalid}"))))?;
                Ok(Admission::Refused(SendError::InvalidMessage(invalid)))
            }
        }
    }

    /// A message an earlier delivery of this job attempted: not sent again.
    /// Accepted then: its receipt, from the audit log. Otherwise (refused,
    /// kept, or in flight when that delivery died): refused now, and left to
    /// the dead-letter folder and an operator.
    fn replay(&mut self, approved: &Approved, prior: Prior) -> Result<Result<Receipt, SendError>> {
        let job = self.job.clone().unwrap_or_default();
        let was = serde_json::to_value(prior.outcome).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let mut r = base(Some(approved), Outcome::Skipped, Some(format!(
            "job {job}: message {} was attempted in an earlier delivery of the job (outcome: {was}; id {}); not sent again",
            self.seq,
            prior.id.as_deref().unwrap_or("?")
        )));
        r.id.clone_from(&prior.id);
        r.message_id.clone_from(&prior.message_id);
        self.record(r)?;
        if prior.outcome == Outcome::Accepted || prior.in_outbox() {
            return Ok(Ok(Receipt {
                message_id: prior.message_id.unwrap_or_default(),
                accepted: prior.recipients,
                rejected: vec![],
                size: prior.size.unwrap_or(0),
                reply: Reply { code: 250, enhanced: None, text: format!("already accepted in an earlier delivery of job {job}") },
            }));
        }
        Ok(Err(SendError::PolicyDenied(format!(
            "idempotency: message {} of job {job} was attempted in an earlier delivery (outcome: {was}); \
             it is not sent again: see the dead-letter folder",
            self.seq
        ))))
    }

    /// Have the mailer assemble (and sign) an approved message.
    async fn assemble(&mut self, approved: Approved, msg: &Message) -> Result<Result<Rendered, SendError>> {
        self.in_flight.assembling = Some(approved);
        let Some(assembler) = self.renderer.as_mut().or(self.mailer.as_mut()) else {
            anyhow::bail!("the run's mailer went missing");
        };
        let rendered = assembler.render(msg).await;
        let Some(approved) = self.in_flight.assembling.take() else {
            anyhow::bail!("the message being assembled went missing");
        };
        match rendered {
            Err(e) => {
                let why = format!("{e:#}");
                self.record(base(Some(&approved), Outcome::Error, Some(format!("mailer: {why}"))))?;
                Err(self.stop(Stop::Mailer(why)))
            }
            Ok(Ok(rendered)) => Ok(Ok(rendered)),
            Ok(Err(e)) => {
                self.record(base(Some(&approved), outcome_of(&e), Some(format!("{}: {}", &e.kind(), &e.describe()))))?;
                Ok(Err(e))
            }
        }
    }

    /// Write an approved message to the outbox, ahead of it its `attempt`
    /// record naming the file: a process killed in between leaves a record
    /// that a redelivery of the job reads by whether the file is there.
    fn to_outbox(&mut self, dir: &std::path::Path, approved: Approved, rendered: Rendered) -> Result<Result<Receipt, SendError>> {
        let path = match outbox::fresh_path(dir) {
            Ok(p) => p,
            Err(e) => return Err(self.could_not_keep("outbox", &approved, self.seq, rendered.message_id, &e)),
        };
        // The file's name ties the two records, as a spool id does.
        let id = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let mut attempt = base(Some(&approved), Outcome::Attempt, None);
        attempt.id.clone_from(&id);
        attempt.size = Some(rendered.bytes.len() as u64);
        attempt.message_id = Some(rendered.message_id.clone());
        attempt.outbox = Some(path.display().to_string());
        self.record(attempt)?;
        if let Err(e) = outbox::write_at(&path, &rendered.bytes) {
            return Err(self.could_not_keep("outbox", &approved, self.seq, rendered.message_id, &e));
        }
        let mut r = base(Some(&approved), Outcome::Accepted, None);
        r.id = id;
        r.size = Some(rendered.bytes.len() as u64);
        r.message_id = Some(rendered.message_id.clone());
        r.outbox = Some(path.display().to_string());
        if let Err(e) = self.record(r) {
            // No mail without its record: take the file back.
            if let Err(undo) = std::fs::remove_file(&path) {
                tracing::error!("removing {} after its audit record failed: {undo}", path.display());
            }
            return Err(e);
        }
        Ok(Ok(Receipt {
            message_id: rendered.message_id,
            accepted: rendered.envelope.recipients,
            rejected: vec![],
            size: rendered.bytes.len() as u64,
            reply: Reply { code: 250, enhanced: None, text: format!("written to {}", path.display()) },
        }))
    }

    /// Write the queued messages ahead to the spool (one file), then each
    /// one's `attempt` record. Messages back from a refused session were
    /// written ahead already, and keep their place and their record.
    fn write_ahead(&mut self) -> Result<()> {
        let fresh: Vec<usize> = (0..self.in_flight.queued.len()).filter(|&i| self.in_flight.queued[i].pending.is_none()).collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let batch: Vec<&Rendered> = fresh.iter().map(|&i| &self.in_flight.queued[i].rendered).collect();
        let pending = match self.dead_letters.write_ahead_many(&batch, Some(&self.plugin)) {
            Ok(p) => p,
            Err(e) => {
                let (unwritten, written) = std::mem::take(&mut self.in_flight.queued).into_iter().partition(|q| q.pending.is_none());
                self.in_flight.queued = written;
                let mut error = None;
                for q in unwritten {
                    error = Some(self.could_not_keep("spool", &q.approved, q.seq, q.rendered.message_id, &e));
                }
                return Err(error.unwrap_or(e));
            }
        };
        for (&i, p) in fresh.iter().zip(pending) {
            self.in_flight.queued[i].pending = Some(p);
        }
        let attempts: Vec<Record> = fresh
            .iter()
            .map(|&i| {
                let q = &self.in_flight.queued[i];
                let mut attempt = base(Some(&q.approved), Outcome::Attempt, None);
                attempt.id = q.pending.as_ref().map(|p| p.id.clone());
                attempt.message_id = Some(q.rendered.message_id.clone());
                attempt.size = Some(q.rendered.bytes.len() as u64);
                attempt.plugin.clone_from(&self.plugin);
                attempt.sha256.clone_from(&self.sha256);
                attempt.job.clone_from(&self.job);
                attempt.seq = Some(q.seq);
                attempt
            })
            .collect();
        // One write for the batch's attempt records: all of them or, if it
        // fails part way, a cut last line that readers skip.
        if let Err(e) = self.audit.append_many(&attempts) {
            let e = self.stop(Stop::Host(format!("the audit log could not be written: {e:#}")));
            // Not sent, and not to be sent later by `retry` unaudited.
            let queued = std::mem::take(&mut self.in_flight.queued);
            for (i, q) in queued.into_iter().enumerate() {
                if fresh.binary_search(&i).is_err() {
                    self.in_flight.queued.push(q);
                } else if let Some(Err(undo)) = q.pending.map(Pending::done) {
                    tracing::error!("removing a spooled message after its audit record failed: {undo:#}");
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Settle batch `batch` as its session answered: each message's
    /// outcome record, and its spool entry dropped or kept. The session
    /// goes back to the run unless its mailer failed. A session beyond the
    /// first that the relay would not open (too many connections from us,
    /// say) is dropped, the run opens no more, and its batch, which it
    /// certainly did not send, goes again on another (the run's first
    /// session is never dropped so, so this ends).
    fn settle_batch(
        &mut self,
        batch: u64,
        (carrier, rendered, sent): Delivered,
        results: &mut [Option<Result<Receipt, SendError>>],
    ) -> Result<()> {
        // Taken out in place: the other sessions' batches are not moved
        // into new lists at every settle.
        let mut mine: Vec<Queued> = self.in_flight.delivering.extract_if(.., |q| q.batch == batch).collect();
        if !carrier.first
            && let Ok(sent) = &sent
            && !sent.is_empty()
            && sent.iter().all(session_refused)
            && sent.len() == mine.len()
            && rendered.len() == mine.len()
        {
            if let Some(Err(e)) = sent.first() {
                tracing::warn!("relay: a further session was refused ({}); its batch goes again", e.describe());
            }
            self.sessions.opened = self.sessions.opened.saturating_sub(1);
            self.sessions.max = self.sessions.opened + 1;
            for (q, r) in mine.iter_mut().zip(rendered) {
                q.rendered.bytes = r.bytes;
                q.batch = 0;
            }
            mine.append(&mut self.in_flight.queued);
            self.in_flight.queued = mine;
            return Ok(());
        }
        let sent = match sent {
            Ok(sent) if sent.len() == mine.len() => sent,
            Ok(sent) => {
                let why = format!("the mailer gave {} results for {} messages", sent.len(), mine.len());
                self.in_flight.delivering.extend(mine);
                return Err(self.stop(Stop::Mailer(why)));
            }
            Err(e) => {
                let why = format!("{e:#}");
                let mut mine = mine.into_iter();
                while let Some(q) = mine.next() {
                    if let Err(e) = self.settle_unknown(q, &format!("the mailer failed during delivery: {why}")) {
                        // The rest stay in flight, for `abandon`.
                        self.in_flight.delivering.extend(mine);
                        return Err(e);
                    }
                }
                // The mailer trapped: it is not called again (dropped here).
                return Err(self.stop(Stop::Mailer(why)));
            }
        };
        match carrier {
            Carrier { mailer, first: true } => self.mailer = Some(mailer),
            Carrier { mailer, first: false } => self.sessions.idle.push(mailer),
        }
        // Each outcome record is one write of one line (a kill cannot cut
        // a write of many pages only at a line's end), and a delivered
        // message leaves the spool only after its record is written.
        let mut mine = mine.into_iter();
        let mut sent = sent.into_iter();
        while let (Some(q), Some(result)) = (mine.next(), sent.next()) {
            let index = q.index;
            let (recorded, stop) = match Self::settle(q, &result) {
                Settled::Recorded(record, done) => {
                    let recorded = self.record(record);
                    if recorded.is_ok() {
                        drop_settled(done);
                    }
                    (recorded, None)
                }
                Settled::Stopped(record, why) => (self.record(record), Some(why)),
            };
            if let Err(e) = recorded {
                // The run stops; the rest were delivered or not, unrecorded:
                // they stay in the spool as outcome unknown.
                self.in_flight.delivering.extend(mine);
                return Err(e);
            }
            if let Some(why) = stop {
                self.in_flight.delivering.extend(mine);
                return Err(self.stop(Stop::Host(why)));
            }
            if let Some(slot) = results.get_mut(index) {
                *slot = Some(result);
            }
        }
        Ok(())
    }

    /// What became of a delivered (or not) message: its outcome record,
    /// with its spool copy kept as a letter when a retry may help. A
    /// delivered (or refused for good) message's copy is handed back, to be
    /// dropped once the record is written.
    fn settle(q: Queued, result: &Result<Receipt, SendError>) -> Settled {
        let Queued { approved, pending, rendered, seq, .. } = q;
        let mut r = base(Some(&approved), Outcome::Accepted, None);
        record_result(&mut r, result);
        r.message_id = Some(rendered.message_id);
        r.seq = Some(seq);
        let Some(pending) = pending else {
            // Never written ahead (a host bug): nothing to drop or keep.
            r.reason = Some(format!("{}; it was not in the spool", r.reason.unwrap_or_default()));
            return Settled::Stopped(r, "a message was delivered without being written ahead".into());
        };
        r.id = Some(pending.id.clone());
        match result {
            Err(e) if e.worth_keeping() => match pending.keep(e) {
                Ok(path) => {
                    r.dead_letter = Some(path.display().to_string());
                    Settled::Recorded(r, None)
                }
                Err(keep_error) => {
                    let why = format!("{keep_error:#}");
                    r.reason = Some(format!("{}; the spool could not settle it: {why}", r.reason.unwrap_or_default()));
                    Settled::Stopped(r, format!("the spool could not keep a message: {why}"))
                }
            },
            _ => Settled::Recorded(r, Some(pending)),
        }
    }

    /// The `outbox` or the `spool` could not keep a message, so it was not
    /// sent: audit that, and stop the run (the host, not the plugin, failed).
    fn could_not_keep(
        &mut self,
        place: &str,
        approved: &Approved,
        seq: u64,
        message_id: String,
        e: &anyhow::Error,
    ) -> anyhow::Error {
        let why = format!("{e:#}");
        let mut r = base(Some(approved), Outcome::Error, Some(format!("{place}: {why}; not sent")));
        r.message_id = Some(message_id);
        r.seq = Some(seq);
        if let Err(e) = self.record(r) {
            return e;
        }
        self.stop(Stop::Host(format!("the {place} could not keep a message: {why}")))
    }

    fn settle_unknown(&mut self, q: Queued, why: &str) -> Result<()> {
        let Some(pending) = q.pending else {
            return self.never_sent(&q.approved, q.seq, why);
        };
        let mut r = base(Some(&q.approved), Outcome::Error, Some(format!("outcome-unknown: {why}")));
        r.seq = Some(q.seq);
        r.id = Some(pending.id.clone());
        r.message_id = Some(q.rendered.message_id);
        r.dead_letter = Some(pending.keep_unknown(why)?.display().to_string());
        self.record(r)
    }

    /// A queued message the run never handed to the mailer: kept in the
    /// dead-letter folder as not sent, for `retry`, when it was written
    /// ahead; otherwise only recorded.
    fn settle_unsent(&mut self, q: Queued, why: &str) -> Result<()> {
        let Some(pending) = q.pending else {
            return self.never_sent(&q.approved, q.seq, why);
        };
        let error = SendError::Connect(format!("not sent: the run was stopped before its batch went out ({why})"));
        let mut r = base(Some(&q.approved), Outcome::Error, Some(format!("{}: {}", error.kind(), error.describe())));
        r.seq = Some(q.seq);
        r.id = Some(pending.id.clone());
        r.message_id = Some(q.rendered.message_id);
        r.dead_letter = Some(pending.keep(&error)?.display().to_string());
        self.record(r)
    }

    /// An approved message the run stopped before it was written anywhere.
    fn never_sent(&mut self, approved: &Approved, seq: u64, why: &str) -> Result<()> {
        let mut r = base(
            Some(approved),
            Outcome::Error,
            Some(format!("stopped: {why}, before the message was written ahead; nothing was sent")),
        );
        r.seq = Some(seq);
        self.record(r)
    }

    /// The run was stopped (`why`) in the middle of a send: record what
    /// became of those messages. Ones handed to the mailer are kept as
    /// `outcome-unknown`; ones still queued are kept as not sent; one being
    /// assembled was neither written nor sent.
    /// Every message is settled, whatever fails for one of them: a failure
    /// (the disk full, say) is returned after the others were kept and
    /// recorded, so one message's trouble strands none of the rest.
    pub fn abandon(&mut self, why: &str) -> Result<()> {
        let in_flight = std::mem::take(&mut self.in_flight);
        let mut first_error = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                tracing::error!("settling a message of a stopped run: {e:#}");
                first_error.get_or_insert(e);
            }
        };
        if let Some(approved) = in_flight.assembling {
            note(self.record(base(
                Some(&approved),
                Outcome::Error,
                Some(format!("stopped: {why}, while the message was assembled; nothing was sent")),
            )));
        }
        for q in in_flight.delivering {
            note(self.settle_unknown(q, &format!("the run was stopped during delivery ({why})")));
        }
        for q in in_flight.queued {
            note(self.settle_unsent(q, why));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Link `sender.send` and `sender.send-many` (and the type-only `types`
/// interface) for plugins.
/// `get` finds the run's forwarder in the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut Forwarder,
) -> wasmtime::Result<()> {
    linker.instance(TYPES_INTERFACE)?;
    let mut inst = linker.instance(INTERFACE)?;
    // The plugin's CPU is counted in epoch ticks while its wasm runs. The
    // epochs that pass while the host works on a call (the relay's round
    // trips) are not the plugin's: the deadline starts again from now when
    // the call returns, or the first check after it would charge a tick.
    inst.func_wrap_async("send", move |mut store, (msg,): (Message,)| {
        Box::new(async move {
            let forwarder = get(store.data_mut());
            let result = forwarder.send(msg).await.map_err(wasmtime::Error::from_anyhow);
            store.set_epoch_deadline(1);
            Ok((result?,))
        })
    })?;
    inst.func_wrap_async("send-many", move |mut store, (msgs,): (Vec<Message>,)| {
        Box::new(async move {
            let forwarder = get(store.data_mut());
            let results = forwarder.send_many(msgs).await.map_err(wasmtime::Error::from_anyhow);
            store.set_epoch_deadline(1);
            Ok((results?,))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_spread_evenly_over_the_sessions_within_the_batch_bounds() {
        // 256 messages on 8 sessions: 8 batches of 32, all on the wire at once.
        assert_eq!(batch_size(256, 8), 32);
        assert_eq!(batch_size(1024, 8), MAX_BATCH_MESSAGES);
        assert_eq!(batch_size(100, 4), 25);
        // A short list is not cut below what another session is worth.
        assert_eq!(batch_size(20, 8), MIN_BATCH_MESSAGES);
        assert_eq!(batch_size(1, 1), MIN_BATCH_MESSAGES);
        // One session: full batches.
        assert_eq!(batch_size(600, 1), MAX_BATCH_MESSAGES);
        assert_eq!(batch_size(600, 0), MAX_BATCH_MESSAGES);
    }

    fn prior(seq: u64, id: &str, to: &str, outcome: Outcome) -> Record {
        let mut r = Record::new(outcome);
        r.job = Some("job-2".into());
        r.plugin = "p".into();
        r.seq = Some(seq);
        r.id = Some(id.into());
        r.from = Some("a@example.com".into());
        r.recipients = vec![to.into()];
        r
    }

    /// The attempt `r` stands for, its record `clipped` or not.
    fn attempted(r: Record, clipped: bool) -> Prior {
        Prior {
            seq: r.seq.unwrap_or_default(),
            id: r.id,
            message_id: None,
            recipients: r.recipients,
            size: None,
            outcome: r.outcome,
            from: r.from,
            outbox: None,
            clipped,
        }
    }

    fn approved(to: &str) -> Approved {
        Approved { from: "a@example.com".into(), recipients: vec![to.into()] }
    }

    #[test]
    fn an_earlier_attempt_is_found_by_its_envelope_and_taken_once() {
        let dir = std::env::temp_dir().join(format!("wasmail-priors-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let log: Vec<u8> = [
            // The first delivery: A at 1 and B at 2, both accepted.
            prior(1, "a", "a@x.org", Outcome::Attempt),
            prior(1, "a", "a@x.org", Outcome::Accepted),
            prior(2, "b", "b@x.org", Outcome::Attempt),
            prior(2, "b", "b@x.org", Outcome::Accepted),
            // A second one found C at 1 (never attempted) and sent it; the
            // outcome of another attempt's id is not C's.
            prior(1, "c", "c@x.org", Outcome::Attempt),
            prior(1, "other", "c@x.org", Outcome::Rejected),
            // Another plugin's job of the same id is another job.
            Record { plugin: "q".into(), ..prior(3, "d", "d@x.org", Outcome::Attempt) },
        ]
        .iter()
        .flat_map(|r| r.to_line().unwrap())
        .collect();
        std::fs::write(&path, log).unwrap();
        let mut found = priors(&path, "p", "job-2").unwrap();
        let outcomes: Vec<(u64, &str, Outcome)> = found.iter().map(|p| (p.seq, p.id.as_deref().unwrap(), p.outcome)).collect();
        assert_eq!(outcomes, [(1, "a", Outcome::Accepted), (2, "b", Outcome::Accepted), (1, "c", Outcome::Attempt)]);
        // A third delivery in yet another order: each message finds its own.
        assert_eq!(found.take_for(1, &approved("b@x.org")).map(|p| p.id), Some(Some("b".into())));
        assert_eq!(found.take_for(2, &approved("c@x.org")).map(|p| p.id), Some(Some("c".into())));
        assert_eq!(found.take_for(3, &approved("a@x.org")).map(|p| p.id), Some(Some("a".into())));
        // Each attempt stands for one message: a second A was never sent.
        assert_eq!(found.take_for(4, &approved("a@x.org")), None);
        assert_eq!(found.take_for(5, &approved("d@x.org")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_job_is_held_by_one_run_of_its_plugin_at_a_time() {
        let dir = std::env::temp_dir().join(format!("wasmail-job-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let first = JobLock::take(&audit, "p", "order-1").unwrap().unwrap();
        assert_eq!(JobLock::take(&audit, "p", "order-1").unwrap().unwrap_err(), JobRunning { job: "order-1".into() });
        // Another plugin's job of the same id, and another job, are free.
        let other = JobLock::take(&audit, "q", "order-1").unwrap().unwrap();
        let next = JobLock::take(&audit, "p", "order-2").unwrap().unwrap();
        // The run ended: its lock file goes, and the job may run again.
        let path = first.path.clone();
        drop(first);
        assert!(!path.exists());
        let again = JobLock::take(&audit, "p", "order-1").unwrap().unwrap();
        drop((again, other, next));
        assert_eq!(std::fs::read_dir(job_locks(&audit)).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs of one job that start and end on eight threads at once, so that
    /// a lock file is often removed between another thread's open and its
    /// lock (the reopen loop): never two holders at a time, and no lock
    /// file left behind. (A thread may lose every race: `take` does not
    /// wait, it says the job is running.)
    #[test]
    fn a_job_is_never_held_twice_while_its_runs_come_and_go() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = std::env::temp_dir().join(format!("wasmail-job-lock-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let audit = dir.join("audit.jsonl");
        let holders = AtomicUsize::new(0);
        let turns: Vec<usize> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let mut turns = 0;
                        for _ in 0..3_000 {
                            if let Ok(lock) = JobLock::take(&audit, "p", "order-1").unwrap() {
                                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two runs hold the job");
                                std::thread::yield_now();
                                holders.fetch_sub(1, Ordering::SeqCst);
                                drop(lock);
                                turns += 1;
                            }
                        }
                        turns
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(turns.iter().sum::<usize>() > 0, "{turns:?}");
        assert_eq!(std::fs::read_dir(job_locks(&audit)).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_job_in_reverse_order_finds_every_attempt() {
        // Found through the index: each lookup is one probe, not a scan of
        // the job's attempts.
        let n = 5_000;
        let mut priors = Priors::default();
        for seq in 1..=n {
            priors.push(attempted(prior(seq, &seq.to_string(), &format!("r{seq}@x.org"), Outcome::Accepted), false));
        }
        for (place, seq) in (1..=n).rev().enumerate() {
            let found = priors.take_for(place as u64 + 1, &approved(&format!("r{seq}@x.org")));
            assert_eq!(found.map(|p| p.seq), Some(seq));
        }
        assert_eq!(priors.iter().count(), 0);
    }

    #[test]
    fn a_record_cut_to_fit_is_taken_at_its_own_place_only() {
        let mut cut = Priors::default();
        for seq in [1, 2] {
            cut.push(attempted(prior(seq, &seq.to_string(), "x@x.org", Outcome::Accepted), true));
        }
        assert_eq!(cut.take_for(2, &approved("y@x.org")).map(|p| p.seq), Some(2));
        assert_eq!(cut.take_for(3, &approved("y@x.org")), None);
    }

    #[test]
    fn priors_skip_a_line_cut_inside_a_character() {
        let dir = std::env::temp_dir().join(format!("wasmail-priors-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let mut attempt = Record::new(Outcome::Attempt);
        attempt.job = Some("job-1".into());
        attempt.seq = Some(1);
        attempt.id = Some("a1".into());
        let mut accepted = attempt.clone();
        accepted.outcome = Outcome::Accepted;
        let mut log = attempt.to_line().unwrap();
        // A record of the same job cut after the first octet of "é".
        log.extend_from_slice("{\"job\":\"job-1\",\"from\":\"\u{e9}".as_bytes().split_last().unwrap().1);
        log.push(b'\n');
        log.extend_from_slice(&accepted.to_line().unwrap());
        std::fs::write(&path, &log).unwrap();
        let found = priors(&path, "", "job-1").unwrap();
        assert_eq!(found.iter().map(|p| (p.seq, p.outcome)).collect::<Vec<_>>(), [(1, Outcome::Accepted)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
