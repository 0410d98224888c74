//! `wasmail worker`: run plugin jobs from a NATS JetStream work-queue
//! stream, at least once, with the job id as the idempotency key of the
//! job's messages.
//!
//! The specs: NATS JetStream's streams (work-queue retention: a message
//! leaves the stream when a consumer acknowledges it), its durable pull
//! consumers with explicit acknowledgement, `AckWait` and `MaxDeliver`
//! (at-least-once delivery: an unacknowledged message is delivered again
//! after `AckWait`), the acknowledgement kinds (`+ACK`, `-NAK` with a
//! delay, `+WPI` for work in progress, `+TERM`), the pull-request protocol
//! of NATS ADR-13 (`$JS.API.CONSUMER.MSG.NEXT`, status 404/408 when no
//! message came) and publish de-duplication by the `Nats-Msg-Id` header.
//!
//! A job is the JSON [`Job`] `{id, plugin, input}`, published on the
//! stream's subject with `Nats-Msg-Id: <id>` ([`Publisher`], which
//! `wasmail serve --queue` uses). Every worker pulls from one durable
//! consumer (`workers`), one job at a time, and runs it with
//! [`Host::run_job`], which writes the job id into every audit record and
//! does not send again a message an earlier delivery of the same job
//! attempted (`skipped` in the audit log): a redelivered job whose messages
//! were accepted does not send them twice, and a message whose outcome is
//! unknown (in flight when a worker died) is left to an operator. That
//! needs every worker that may run a job to write the same audit log.
//!
//! Then, in this order: the audit log is synced (fsync) and the file
//! systems of the dead-letter folder (and the outbox, without a relay)
//! are synced (`syncfs`), and only then is the job answered:
//!
//! - a run that finished (the plugin's output, `Ok` or `Err`) or that a
//!   policy or limit stopped: acknowledged (`+ACK`, waiting for the
//!   server's confirmation);
//! - a run that could not start ([`Host::run_job`] failed: the relay could
//!   not be resolved, say) or that the host or the mailer stopped
//!   ([`Stop::Host`], [`Stop::Mailer`]): transient, `-NAK` with a delay
//!   (`--nak-delay`), so another delivery tries again;
//! - a transient failure on the `--max-deliver`th delivery, a job over
//!   [`MAX_JOB_BYTES`], one that is not a [`Job`], or one for a plugin this
//!   worker does not run: published on the dead-letter subject (its own
//!   stream, `<STREAM>_DEAD`, so it is kept and never consumed as a job),
//!   then acknowledged.
//!
//! The consumer's `MaxDeliver` is `--max-deliver` plus one: the last
//! delivery is held in reserve for a job whose `--max-deliver`th delivery
//! died with its worker (or whose acknowledgement was lost); it runs once
//! more (idempotently) and then is acknowledged or dead-lettered. A job
//! whose reserve delivery also died stays in the stream unacknowledged,
//! and the server publishes its `MAX_DELIVERIES` advisory.
//!
//! While a job runs, the worker tells the server it is in progress (`+WPI`)
//! every third of `--ack-wait`, so a long run is not delivered to a second
//! worker; a worker that dies stops doing so, and its job is delivered
//! again once `--ack-wait` has passed.
//!
//! SIGTERM or SIGINT: no more jobs are fetched, the job in hand finishes
//! and is answered, and the worker exits 0 (a job that arrives in the
//! pull request under way is handed back at once with `-NAK`).
//!
//! Each job leaves one JSON line on stdout; errors go to stderr.

use crate::Runtime;
use crate::api::{Host, Plugin, RunReport, Stop};
use crate::cli::report::{exit, say};
use crate::config::Config;
use anyhow::{Context, Result};
use async_nats::jetstream::{self, AckKind, consumer, context::Publish, stream};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The subject jobs are published on, when the stream is created here.
pub const DEFAULT_SUBJECT: &str = "wasmail.runs";
/// The subject failed and malformed jobs go to: not matched by
/// [`DEFAULT_SUBJECT`], so they are never consumed as jobs again.
pub const DEFAULT_DEAD_SUBJECT: &str = "wasmail.runs.dead";
/// The durable pull consumer all workers share.
pub const DEFAULT_CONSUMER: &str = "workers";
/// Appended to the job stream's name for the dead-letter stream.
pub const DEAD_STREAM_SUFFIX: &str = "_DEAD";
/// The largest job, in bytes of JSON: NATS's default `max_payload` (1 MiB).
/// A bigger one goes to the dead-letter subject before it is parsed.
pub const MAX_JOB_BYTES: usize = 1 << 20;
/// The longest job id, in characters (the same rule as `wasmail serve`'s
/// `Idempotency-Key`: A-Z a-z 0-9 `-` `_` `.` `:`).
pub const MAX_JOB_ID_CHARS: usize = 128;
/// The longest reason written into a dead-letter message's header.
pub const MAX_REASON_CHARS: usize = 1000;
/// How long one pull request waits on the server for a job. Also the
/// longest an idle worker takes to notice SIGTERM.
pub const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How much longer than [`FETCH_WAIT`] the worker waits for the server's
/// answer to a pull request before it asks again.
pub const FETCH_GRACE: Duration = Duration::from_secs(5);
/// The pause after a pull request failed (the server restarting, say).
pub const FETCH_RETRY: Duration = Duration::from_secs(1);
/// How long a JetStream API call, a publish acknowledgement or the
/// confirmation of an acknowledgement may take.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the NATS server may take at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The stream's de-duplication window for `Nats-Msg-Id` (the server's
/// default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Work-in-progress signals per `--ack-wait` while a job runs.
pub const PROGRESS_PER_ACK_WAIT: u32 = 3;
/// The longest `--ack-wait` and `--nak-delay`, in seconds.
pub const MAX_WAIT_SECS: f64 = 3600.0;
/// The shortest `--ack-wait`, in seconds (the server's ack timer ticks
/// in about this unit).
pub const MIN_ACK_WAIT_SECS: f64 = 1.0;
/// The most `--max-deliver`.
pub const MAX_DELIVERIES: u32 = 1000;

/// The flags of `wasmail worker`.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The config file: relay, audit log, and the plugins (`path` in each
    /// `[plugins.NAME]` table).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The NATS server.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// The JetStream stream the jobs are in (a work queue; created if
    /// missing).
    #[arg(long, value_name = "NAME", default_value = "WASMAIL_RUNS")]
    pub stream: String,
    /// The subject jobs are published on (when the stream is created here;
    /// an existing stream must take it).
    #[arg(long, value_name = "SUBJECT", default_value = DEFAULT_SUBJECT)]
    pub subject: String,
    /// The durable pull consumer the workers share.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CONSUMER)]
    pub consumer: String,
    /// Where failed and malformed jobs go (a stream of its own,
    /// `<STREAM>_DEAD`; must not be a subject of the job stream).
    #[arg(long, value_name = "SUBJECT", default_value = DEFAULT_DEAD_SUBJECT)]
    pub dead_subject: String,
    /// Seconds a job may go unanswered before it is delivered again (when
    /// the consumer is created here).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = ack_wait_secs)]
    pub ack_wait: f64,
    /// Deliveries of a job that fails for a transient reason before it goes
    /// to the dead-letter subject (when the consumer is created here).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=MAX_DELIVERIES as i64))]
    pub max_deliver: u32,
    /// Seconds before a job that failed for a transient reason is delivered
    /// again.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = nak_delay_secs)]
    pub nak_delay: f64,
}

fn seconds(s: &str, min: f64) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?}: not a number of seconds"))?;
    if !(min..=MAX_WAIT_SECS).contains(&v) {
        return Err(format!("{v}: from {min} to {MAX_WAIT_SECS} seconds"));
    }
    Ok(v)
}

fn ack_wait_secs(s: &str) -> Result<f64, String> {
    seconds(s, MIN_ACK_WAIT_SECS)
}

fn nak_delay_secs(s: &str) -> Result<f64, String> {
    seconds(s, 0.0)
}

/// One job: a run of `plugin` with `input`. `id` is the idempotency key of
/// the run's messages (and the JetStream message id, `Nats-Msg-Id`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's id.
    pub id: String,
    /// The plugin, by its `[plugins.NAME]` name.
    pub plugin: String,
    /// The plugin's input.
    pub input: String,
}

impl Job {
    /// Parse a job from a stream message's payload, refusing one over
    /// [`MAX_JOB_BYTES`] before parsing and one whose id is not a valid
    /// key.
    pub fn parse(payload: &[u8]) -> Result<Job, String> {
        if payload.len() > MAX_JOB_BYTES {
            return Err(format!("the job is {} bytes, more than {MAX_JOB_BYTES}", payload.len()));
        }
        let job: Job = serde_json::from_slice(payload).map_err(|e| format!("not a job ({{id, plugin, input}}): {e}"))?;
        job.check()?;
        Ok(job)
    }

    /// Its `Nats-Msg-Id`, by which the stream drops a duplicate: the plugin
    /// and the id, since a job id is the plugin's (the same client key for
    /// two plugins is two jobs).
    pub fn message_id(&self) -> String {
        format!("{}/{}", self.plugin, self.id)
    }

    /// Whether the id can be a job id: 1 to [`MAX_JOB_ID_CHARS`] of
    /// A-Z a-z 0-9 `-` `_` `.` `:`.
    pub fn check(&self) -> Result<(), String> {
        let id = &self.id;
        if id.is_empty() || id.chars().count() > MAX_JOB_ID_CHARS || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) {
            return Err(format!("job id {:?}: 1 to {MAX_JOB_ID_CHARS} of A-Z a-z 0-9 - _ . :", printable(id, 80)));
        }
        Ok(())
    }
}

/// Hands jobs to the stream (`wasmail serve --queue`).
pub struct Publisher {
    js: jetstream::Context,
    subject: String,
}

impl Publisher {
    /// Connect to `url` and make sure the work-queue stream `stream` exists
    /// (created with the subject [`DEFAULT_SUBJECT`]).
    pub async fn connect(url: &str, stream: &str) -> anyhow::Result<Self> {
        let js = jetstream_context(connect(url).await?);
        ensure_job_stream(&js, stream, DEFAULT_SUBJECT).await?;
        Ok(Publisher { js, subject: DEFAULT_SUBJECT.to_owned() })
    }

    /// Publish `job`, waiting for the stream's acknowledgement (a job
    /// published twice with one id inside the stream's de-duplication
    /// window is stored once).
    pub async fn publish(&self, job: &Job) -> anyhow::Result<()> {
        job.check().map_err(anyhow::Error::msg)?;
        let payload = serde_json::to_vec(job).context("encoding the job")?;
        if payload.len() > MAX_JOB_BYTES {
            anyhow::bail!("job {}: {} bytes, more than {MAX_JOB_BYTES}", job.id, payload.len());
        }
        let ack = self
            .js
            // The stream drops a second job of the same id as a duplicate:
            // the id is the plugin's, so another plugin's job of the same id
            // is another job.
            .send_publish(self.subject.clone(), Publish::build().payload(payload.into()).message_id(job.message_id()))
            .await
            .with_context(|| format!("publishing job {}", job.id))?;
        ack.await.with_context(|| format!("job {}: the stream did not confirm it", job.id))?;
        Ok(())
    }
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("wasmail")
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .with_context(|| format!("connecting to the NATS server {url}"))
}

fn jetstream_context(client: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(JETSTREAM_TIMEOUT);
    js
}

/// Whether the NATS subject pattern `pattern` (with `*` and `>`) matches
/// the subject `subject`.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The stream of `config`, created if missing. Workers starting together
/// race to create it: a creation that fails because another one got there
/// first (NATS 2.9 may then say the subjects overlap) finds that stream.
async fn get_or_create(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream> {
    let name = config.name.clone();
    match js.get_or_create_stream(config).await {
        Ok(s) => Ok(s),
        Err(first) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            js.get_stream(&name).await.map_err(|_| anyhow::Error::new(first))
        }
    }
}

/// The work-queue stream `name`, created with `subject` (file storage) if
/// missing; an existing one must be a work queue that takes `subject`.
async fn ensure_job_stream(js: &jetstream::Context, name: &str, subject: &str) -> Result<stream::Stream> {
    let s = get_or_create(
        js,
        stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("the stream {name}"))?;
    let config = &s.cached_info().config;
    if config.retention != stream::RetentionPolicy::WorkQueue {
        anyhow::bail!("the stream {name} exists and is not a work queue (retention {:?})", config.retention);
    }
    if !config.subjects.iter().any(|p| subject_matches(p, subject)) {
        anyhow::bail!("the stream {name} exists and does not take the subject {subject} (its subjects: {:?})", config.subjects);
    }
    Ok(s)
}

/// The stream that keeps dead-lettered jobs (limits retention, file
/// storage), created if missing.
async fn ensure_dead_stream(js: &jetstream::Context, name: &str, subject: &str) -> Result<stream::Stream> {
    let s = get_or_create(
        js,
        stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("the dead-letter stream {name}"))?;
    if !s.cached_info().config.subjects.iter().any(|p| subject_matches(p, subject)) {
        anyhow::bail!("the stream {name} exists and does not take the subject {subject}");
    }
    Ok(s)
}

/// What becomes of a job after its run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Finished (the plugin's output, Ok or Err) or stopped by a policy or
    /// a limit: acknowledge.
    Done,
    /// Could not start, or the host or the mailer failed: deliver again.
    Transient(String),
    /// Another run of the job is going on (its first delivery, which the
    /// server gave up waiting for): deliver again later, not counted as a
    /// failed delivery.
    Running(String),
}

/// The verdict on a run (typed: never by the text of an error).
pub fn verdict(ran: &Result<RunReport>) -> Verdict {
    match ran {
        Err(e) if e.is::<crate::api::JobRunning>() => Verdict::Running(format!("{e:#}")),
        Err(e) => Verdict::Transient(format!("the run could not start: {e:#}")),
        Ok(r) => match &r.stop {
            Some(s @ (Stop::Host(_) | Stop::Mailer(_))) => Verdict::Transient(s.to_string()),
            _ => Verdict::Done,
        },
    }
}

/// The answer a job gets after a run (or without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `+ACK`.
    Ack,
    /// `-NAK` with the delay.
    Retry,
    /// To the dead-letter subject, then `+ACK`.
    DeadLetter,
}

/// What a verdict on the `delivered`th delivery comes to, with at most
/// `max_runs` deliveries for transient failures.
pub fn answer(verdict: &Verdict, delivered: i64, max_runs: u32) -> Answer {
    match verdict {
        Verdict::Done => Answer::Ack,
        Verdict::Transient(_) if delivered >= i64::from(max_runs) => Answer::DeadLetter,
        Verdict::Transient(_) | Verdict::Running(_) => Answer::Retry,
    }
}

/// Set once SIGTERM or SIGINT came.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Set [`STOPPING`] on the first SIGTERM or SIGINT.
fn catch_stop_signals() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("catching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("catching SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        STOPPING.store(true, Ordering::SeqCst);
    });
    Ok(())
}

fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// A running worker.
struct Worker {
    host: Host,
    plugins: BTreeMap<String, Plugin>,
    client: async_nats::Client,
    js: jetstream::Context,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: String,
    dead_subject: String,
    stream: String,
    /// Deliveries for transient failures (the consumer's `MaxDeliver` - 1).
    max_runs: u32,
    ack_wait: Duration,
    nak_delay: Duration,
    /// Folders whose file systems are synced before a job is answered.
    durable_dirs: Vec<PathBuf>,
}

/// Run `wasmail worker`; returns the exit code.
pub async fn run(rt: &Runtime, a: WorkerArgs) -> u8 {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            say(format_args!("{e:#}"));
            return exit::CONFIG;
        }
    };
    let mut durable_dirs = vec![config.dead_letter.clone().unwrap_or_else(|| PathBuf::from(crate::mail::deadletter::DEFAULT_DEAD_LETTER))];
    if config.relay.is_none() {
        durable_dirs.push(config.outbox.clone().unwrap_or_else(|| PathBuf::from("outbox")));
    }
    let paths: Vec<(String, PathBuf)> = config.plugins.iter().filter_map(|(n, p)| p.path.clone().map(|path| (n.clone(), path))).collect();
    if paths.is_empty() {
        say(format_args!("{}: no [plugins.NAME] table has a path: nothing to run", a.config.display()));
        return exit::CONFIG;
    }
    let host = match Host::builder().config(config).build_on(rt) {
        Ok(h) => h,
        Err(e) => {
            say(format_args!("{e:#}"));
            return exit::CONFIG;
        }
    };
    let mut plugins = BTreeMap::new();
    for (name, path) in paths {
        match host.load_file_as(&path, Some(&name)) {
            Ok(p) => {
                plugins.insert(name, p);
            }
            Err(e) if e.is::<crate::api::Refused>() => {
                say(format_args!("plugin {name}: {e:#}"));
                return exit::NOPERM;
            }
            Err(e) if e.is::<crate::api::LoadFailed>() => {
                say(format_args!("plugin {name}: {e:#}"));
                return exit::DATAERR;
            }
            Err(e) => {
                say(format_args!("plugin {name}: {e:#}"));
                return exit::NOINPUT;
            }
        }
    }
    if let Err(e) = catch_stop_signals() {
        say(format_args!("{e:#}"));
        return exit::SOFTWARE;
    }
    let worker = match setup(&a, host, plugins, durable_dirs).await {
        Ok(w) => w,
        Err(e) => {
            say(format_args!("{e:#}"));
            return exit::UNAVAILABLE;
        }
    };
    tracing::info!(stream = %a.stream, consumer = %a.consumer, "worker started");
    worker.serve().await;
    exit::OK
}

/// Connect, make sure the streams and the consumer exist.
async fn setup(a: &WorkerArgs, host: Host, plugins: BTreeMap<String, Plugin>, durable_dirs: Vec<PathBuf>) -> Result<Worker> {
    if subject_matches(&a.subject, &a.dead_subject) {
        anyhow::bail!("--dead-subject {} is matched by --subject {}: dead letters would be run as jobs", a.dead_subject, a.subject);
    }
    let client = connect(&a.nats).await?;
    let js = jetstream_context(client.clone());
    let jobs = ensure_job_stream(&js, &a.stream, &a.subject).await?;
    if let Some(p) = jobs.cached_info().config.subjects.iter().find(|p| subject_matches(p, &a.dead_subject)) {
        anyhow::bail!("the stream {} takes {p}, which matches --dead-subject {}: dead letters would be run as jobs", a.stream, a.dead_subject);
    }
    ensure_dead_stream(&js, &format!("{}{DEAD_STREAM_SUFFIX}", a.stream), &a.dead_subject).await?;
    let ack_wait = Duration::from_secs_f64(a.ack_wait);
    let wanted = consumer::pull::Config {
        durable_name: Some(a.consumer.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // One delivery in reserve: see the module's documentation.
        max_deliver: i64::from(a.max_deliver) + 1,
        ..Default::default()
    };
    // Workers starting together race to create it, as for the stream.
    let consumer: consumer::PullConsumer = match jobs.get_or_create_consumer(&a.consumer, wanted).await {
        Ok(c) => c,
        Err(first) => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            jobs.get_consumer(&a.consumer).await.map_err(|_| anyhow::Error::new(first))
        }
        .with_context(|| format!("the consumer {} of the stream {}", a.consumer, a.stream))?,
    };
    // An existing consumer's settings are the ones that apply.
    let info = consumer.cached_info();
    let max_runs = match u32::try_from(info.config.max_deliver) {
        Ok(n) if n >= 2 => n - 1,
        _ => a.max_deliver,
    };
    let ack_wait = if info.config.ack_wait.is_zero() { ack_wait } else { info.config.ack_wait };
    if ack_wait != Duration::from_secs_f64(a.ack_wait) || max_runs != a.max_deliver {
        say(format_args!(
            "the consumer {} exists with ack wait {:?} and {} deliveries: those apply, not the flags'",
            a.consumer, ack_wait, max_runs
        ));
    }
    Ok(Worker {
        host,
        plugins,
        next_subject: format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", a.stream, info.name),
        client,
        js,
        dead_subject: a.dead_subject.clone(),
        stream: a.stream.clone(),
        max_runs,
        ack_wait,
        nak_delay: Duration::from_secs_f64(a.nak_delay),
        durable_dirs,
    })
}

/// One job's line on stdout.
#[derive(Debug, Default, serde::Serialize)]
struct Line {
    job: Option<String>,
    plugin: Option<String>,
    /// The job's stream sequence number.
    seq: u64,
    /// Which delivery of the job this was.
    delivered: i64,
    /// `done`, `retry`, `dead-letter` or `handed-back`.
    result: &'static str,
    /// Whether the server confirmed the answer.
    answered: bool,
    /// `ok` or `error` (the plugin's own result), when the run finished.
    output: Option<&'static str>,
    stopped: Option<String>,
    reason: Option<String>,
    counts: Option<crate::api::Counts>,
    ms: u64,
}

impl Worker {
    /// Fetch and run jobs until SIGTERM or SIGINT.
    async fn serve(&self) {
        while !stopping() {
            let msg = match self.fetch().await {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    say(format_args!("{e:#}"));
                    tokio::time::sleep(FETCH_RETRY).await;
                    continue;
                }
            };
            if stopping() {
                // Fetched after the signal: hand it back for another worker.
                let line = Line { result: "handed-back", answered: msg.ack_with(AckKind::Nak(None)).await.is_ok(), ..Line::default() };
                print_line(&line);
                break;
            }
            self.handle(msg).await;
        }
    }

    /// One pull request for one job, waiting at most [`FETCH_WAIT`] on the
    /// server.
    async fn fetch(&self) -> Result<Option<jetstream::Message>> {
        let body = serde_json::json!({ "batch": 1, "expires": FETCH_WAIT.as_nanos() as u64 });
        // An inbox of its own: the job arrives under its own subject, which
        // the client's shared request inbox would not recognize.
        let request = async_nats::Request::new()
            .payload(body.to_string().into())
            .inbox(self.client.new_inbox())
            .timeout(Some(FETCH_WAIT + FETCH_GRACE));
        let m = match self.client.send_request(self.next_subject.clone(), request).await {
            Ok(m) => m,
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => return Ok(None),
            Err(e) => return Err(e).context("asking the NATS server for a job"),
        };
        match m.status {
            None => Ok(Some(jetstream::Message { message: m, context: self.js.clone() })),
            Some(s) if s == async_nats::StatusCode::TIMEOUT || s == async_nats::StatusCode::NOT_FOUND => Ok(None),
            Some(s) => anyhow::bail!("the NATS server answered a pull request with {s} {}", m.description.as_deref().unwrap_or("")),
        }
    }

    async fn handle(&self, msg: jetstream::Message) {
        let started = Instant::now();
        let (seq, delivered) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(e) => {
                say(format_args!("a message without JetStream metadata ({e}): terminated"));
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let mut line = Line { seq, delivered, ..Line::default() };
        let job = match Job::parse(&msg.payload) {
            Ok(j) => j,
            Err(why) => return self.dead_letter(&msg, line, why, started).await,
        };
        line.job = Some(job.id.clone());
        line.plugin = Some(job.plugin.clone());
        let Some(plugin) = self.plugins.get(&job.plugin) else {
            let why = format!("no plugin {:?} here (this worker runs {:?})", printable(&job.plugin, 80), self.plugins.keys().collect::<Vec<_>>());
            return self.dead_letter(&msg, line, why, started).await;
        };
        let ran = self.run_job(&msg, plugin, &job).await;
        if let Ok(r) = &ran {
            line.output = r.output.as_ref().map(|o| if o.is_ok() { "ok" } else { "error" });
            line.stopped.clone_from(&r.stopped);
            line.counts = Some(r.counts);
        }
        let verdict = verdict(&ran);
        // The records first: only then may the job leave the stream.
        if let Err(e) = self.make_durable().await {
            say(format_args!("job {}: {e:#}; handing it back", job.id));
            line.reason = Some(format!("{e:#}"));
            return self.retry(&msg, line, started).await;
        }
        match answer(&verdict, delivered, self.max_runs) {
            Answer::Ack => {
                line.result = "done";
                line.answered = self.ack(&msg, &job.id).await;
                line.ms = elapsed_ms(started);
                print_line(&line);
            }
            Answer::Retry => {
                if let Verdict::Transient(why) | Verdict::Running(why) = verdict {
                    say(format_args!("job {} (delivery {delivered}): {why}; delivered again in {:?}", job.id, self.nak_delay));
                    line.reason = Some(why);
                }
                self.retry(&msg, line, started).await;
            }
            Answer::DeadLetter => {
                let why = match verdict {
                    Verdict::Transient(why) | Verdict::Running(why) => {
                        format!("failed on delivery {delivered} of {}: {why}", self.max_runs)
                    }
                    Verdict::Done => String::new(),
                };
                self.dead_letter(&msg, line, why, started).await;
            }
        }
    }

    /// Run the job, telling the server it is in progress every third of the
    /// ack wait.
    async fn run_job(&self, msg: &jetstream::Message, plugin: &Plugin, job: &Job) -> Result<RunReport> {
        let run = self.host.run_job(plugin, &job.input, &job.id);
        tokio::pin!(run);
        let period = (self.ack_wait / PROGRESS_PER_ACK_WAIT).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                ran = &mut run => return ran,
                _ = tick.tick() => {
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!("job {}: work-in-progress signal: {e}", job.id);
                    }
                }
            }
        }
    }

    /// Sync the audit log and the file systems of the dead-letter folder
    /// (and the outbox).
    async fn make_durable(&self) -> Result<()> {
        let host = self.host.clone();
        let dirs = self.durable_dirs.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            host.sync_audit().context("syncing the audit log")?;
            for d in &dirs {
                syncfs(d)?;
            }
            Ok(())
        })
        .await
        .context("the sync task failed")?
    }

    /// `+ACK`, waiting for the server's confirmation.
    async fn ack(&self, msg: &jetstream::Message, what: &str) -> bool {
        match msg.double_ack().await {
            Ok(()) => true,
            Err(e) => {
                say(format_args!("job {what}: the acknowledgement was not confirmed ({e}): it may be delivered again (its messages are not sent twice)"));
                false
            }
        }
    }

    async fn retry(&self, msg: &jetstream::Message, mut line: Line, started: Instant) {
        line.result = "retry";
        line.answered = match msg.ack_with(AckKind::Nak(Some(self.nak_delay))).await {
            Ok(()) => true,
            Err(e) => {
                say(format_args!("job at {}: -NAK failed ({e}): delivered again after the ack wait", line.seq));
                false
            }
        };
        line.ms = elapsed_ms(started);
        print_line(&line);
    }

    /// Publish the job on the dead-letter subject (waiting for its stream
    /// to store it), then acknowledge it; if the publish fails, `-NAK`.
    async fn dead_letter(&self, msg: &jetstream::Message, mut line: Line, why: String, started: Instant) {
        say(format_args!(
            "job {} (stream seq {}): to {}: {}",
            line.job.as_deref().unwrap_or("?"),
            line.seq,
            self.dead_subject,
            printable(&why, MAX_REASON_CHARS)
        ));
        line.reason = Some(why.clone());
        let publish = Publish::build()
            .payload(msg.payload.clone())
            // One dead letter per job message, however often this runs.
            .message_id(format!("{}.{}", self.stream, line.seq))
            .header("Wasmail-Reason", header_value(&why).as_str())
            .header("Wasmail-Stream", self.stream.as_str())
            .header("Wasmail-Stream-Seq", line.seq.to_string().as_str())
            .header("Wasmail-Delivered", line.delivered.to_string().as_str());
        let publish = match &line.job {
            Some(id) => publish.header("Wasmail-Job", id.as_str()),
            None => publish,
        };
        let stored = match self.js.send_publish(self.dead_subject.clone(), publish).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        if let Err(e) = stored {
            say(format_args!("job at {}: the dead-letter subject {} did not take it ({e:#}); handing it back", line.seq, self.dead_subject));
            return self.retry(msg, line, started).await;
        }
        line.result = "dead-letter";
        line.answered = self.ack(msg, &line.seq.to_string()).await;
        line.ms = elapsed_ms(started);
        print_line(&line);
    }
}

/// `syncfs` on the file system holding `dir` (nothing when `dir` does not
/// exist: nothing was written there).
fn syncfs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = match std::fs::File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", dir.display())),
    };
    // SAFETY: a valid, open file descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("syncfs on {}", dir.display()));
    }
    Ok(())
}

fn elapsed_ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn print_line(line: &Line) {
    use std::io::Write;
    if let Ok(text) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// `s` cut to `max` characters, controls escaped (the host's one escaping
/// function): for headers and one-line messages.
fn printable(s: &str, max: usize) -> String {
    crate::text::printable(&crate::text::clip(s, max)).into_owned()
}

/// `s` as a header value: printable, cut, and ASCII only (others as `?`).
fn header_value(s: &str) -> String {
    printable(s, MAX_REASON_CHARS).chars().map(|c| if c.is_ascii() { c } else { '?' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects() {
        assert!(subject_matches("wasmail.runs", "wasmail.runs"));
        assert!(!subject_matches("wasmail.runs", "wasmail.runs.dead"));
        assert!(subject_matches("wasmail.runs.>", "wasmail.runs.dead"));
        assert!(!subject_matches("wasmail.runs.>", "wasmail.runs"));
        assert!(subject_matches("wasmail.*", "wasmail.runs"));
        assert!(!subject_matches("wasmail.*", "wasmail.runs.dead"));
        assert!(subject_matches(">", "a.b.c"));
        assert!(!subject_matches("a.b", "a"));
    }

    #[test]
    fn jobs_parse_and_refuse() {
        let j = Job::parse(br#"{"id":"job-1","plugin":"bulk","input":"{}"}"#).unwrap();
        assert_eq!(j, Job { id: "job-1".into(), plugin: "bulk".into(), input: "{}".into() });
        assert!(Job::parse(b"not json").is_err());
        assert!(Job::parse(br#"{"id":"j","plugin":"p","input":"","more":1}"#).is_err());
        assert!(Job::parse(br#"{"id":"","plugin":"p","input":""}"#).is_err());
        assert!(Job::parse(br#"{"id":"a b","plugin":"p","input":""}"#).is_err());
        assert!(Job::parse(br#"{"id":"a\r\nX: y","plugin":"p","input":""}"#).is_err());
        let long = format!(r#"{{"id":"{}","plugin":"p","input":""}}"#, "a".repeat(MAX_JOB_ID_CHARS + 1));
        assert!(Job::parse(long.as_bytes()).is_err());
        // Too big: refused before parsing (this one would not parse anyway).
        let big = vec![b' '; MAX_JOB_BYTES + 1];
        assert!(Job::parse(&big).unwrap_err().contains("more than"));
    }

    #[test]
    fn the_same_id_for_two_plugins_is_two_jobs_to_the_stream() {
        let job = |plugin: &str| Job { id: "order-1".into(), plugin: plugin.into(), input: String::new() };
        assert_ne!(job("alpha").message_id(), job("beta").message_id());
        assert_eq!(job("alpha").message_id(), job("alpha").message_id());
    }

    fn report(stop: Option<Stop>, output: Option<Result<String, String>>) -> RunReport {
        RunReport {
            plugin: "p".into(),
            job: Some("j".into()),
            output,
            stopped: stop.as_ref().map(|s| s.to_string()),
            stop,
            counts: Default::default(),
            messages: vec![],
            unlisted: 0,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&Ok(report(None, Some(Ok("x".into()))))), Verdict::Done);
        assert_eq!(verdict(&Ok(report(None, Some(Err("x".into()))))), Verdict::Done);
        assert_eq!(verdict(&Ok(report(Some(Stop::Wall { ms: 5 }), None))), Verdict::Done);
        assert_eq!(verdict(&Ok(report(Some(Stop::Cpu { ms: 5 }), None))), Verdict::Done);
        assert!(matches!(verdict(&Ok(report(Some(Stop::Host("disk".into())), None))), Verdict::Transient(_)));
        assert!(matches!(verdict(&Ok(report(Some(Stop::Mailer("trap".into())), None))), Verdict::Transient(_)));
        assert!(matches!(verdict(&Err(anyhow::anyhow!("relay unreachable"))), Verdict::Transient(_)));
        let running = anyhow::Error::new(crate::api::JobRunning { job: "j".into() }).context("starting the run");
        assert!(matches!(verdict(&Err(running)), Verdict::Running(_)));
    }

    #[test]
    fn answers() {
        let t = Verdict::Transient("x".into());
        assert_eq!(answer(&Verdict::Done, 1, 5), Answer::Ack);
        assert_eq!(answer(&Verdict::Done, 6, 5), Answer::Ack);
        assert_eq!(answer(&t, 1, 5), Answer::Retry);
        assert_eq!(answer(&t, 4, 5), Answer::Retry);
        assert_eq!(answer(&t, 5, 5), Answer::DeadLetter);
        assert_eq!(answer(&t, 6, 5), Answer::DeadLetter);
        assert_eq!(answer(&t, 1, 1), Answer::DeadLetter);
        // A job whose first delivery still runs is not failing: it waits,
        // whatever the count.
        let r = Verdict::Running("x".into());
        assert_eq!(answer(&r, 1, 1), Answer::Retry);
        assert_eq!(answer(&r, 9, 5), Answer::Retry);
    }

    #[test]
    fn seconds_flags() {
        assert_eq!(ack_wait_secs("2").unwrap(), 2.0);
        assert!(ack_wait_secs("0.5").is_err());
        assert!(ack_wait_secs("x").is_err());
        assert_eq!(nak_delay_secs("0").unwrap(), 0.0);
        assert!(nak_delay_secs("-1").is_err());
        assert!(nak_delay_secs("3601").is_err());
    }

    #[test]
    fn printable_cuts_and_cleans() {
        assert!(!printable("a\r\nb", 10).contains(['\r', '\n']));
        assert!(printable("abcdef", 3).starts_with("abc"));
        assert!(header_value(&"é\u{202e}".repeat(400)).is_ascii());
    }
}
