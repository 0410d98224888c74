//! `wasmail serve`: the library's [`Host`] behind an HTTP/1.1 API (RFC 9110,
//! with axum), for platforms that run many plugins for many clients:
//!
//! - `POST /v1/plugins/{name}/runs`: the body is the plugin's input; the
//!   answer is the run report (as `wasmail run --json`), or `202` with the
//!   job id when runs go to a queue (`--queue`);
//! - `POST /v1/messages`: a plain send of a JSON message, answered as
//!   `wasmail send --json`;
//! - `GET /healthz`, and `GET /metrics` in Prometheus' text format.
//!
//! Clients present bearer tokens (RFC 6750) from a file that says which
//! plugins each may run and whether it may send. Runs go on concurrently up
//! to `--max-runs`, and up to each plugin's `max_concurrent_runs`; past
//! that the answer is `429` with `Retry-After` (RFC 6585), never a queue
//! without bound. Relay sessions are pooled between runs, at most
//! `--max-relay-connections`. Client connections are capped, and each
//! request head and body has a deadline ([`listen`]). SIGHUP reloads the
//! config, the tokens and the plugins; SIGTERM stops accepting, lets the
//! runs in flight finish within
//! `--shutdown-secs`, and leaves whatever is cut short in the write-ahead
//! spool, for `wasmail retry`.

pub mod auth;
pub mod listen;
pub mod message;
pub mod metrics;

use crate::Runtime;
use crate::api::{Host, Plugin, RunReport};
use crate::cli::report::{self, exit};
use crate::config::Config;
use crate::plugin::MailerPool;
use crate::worker::{Job, Publisher};
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The largest request body: a message with its attachments in base64.
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// The largest plugin input.
pub const MAX_INPUT_BYTES: usize = 1 << 20;
/// How long a client told `429` should wait, in seconds.
pub const RETRY_AFTER_SECS: u64 = 1;
/// How often a stopping server looks whether runs are left.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// How long a stopping server with no run left waits for the last answers
/// to be written before it closes what connections remain.
pub const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);
/// The longest `Idempotency-Key` a client may give as a run's job id.
pub const MAX_JOB_ID_CHARS: usize = 128;
/// How long a request's body may take to arrive, once its head is read and
/// its token checked (`--body-read-secs`; 32 MiB in 60 s is under 0.6
/// MB/s). The deadline on the head is [`listen::HEADER_READ_SECS`].
pub const BODY_READ_SECS: u64 = 60;
/// Client connections open at once (`--max-connections`).
pub const MAX_CONNECTIONS: usize = 512;
/// The longest `--header-read-secs` and `--body-read-secs`: a day.
pub const MAX_DEADLINE_SECS: u64 = 86_400;

/// The flags of `wasmail serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The config: relay, audit log, spool, and the plugins served (each
    /// `[plugins.NAME]` table with a `path`).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The address to listen on (loopback unless told otherwise).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8025")]
    pub listen: SocketAddr,
    /// The bearer tokens (TOML, `[[token]]` with `name`, `token`,
    /// `plugins`, `send`; mode 600).
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// Runs at once, in all.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_runs: usize,
    /// Connections to the relay at once (pooled between runs).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub max_relay_connections: usize,
    /// Client connections open at once; more wait in the listen queue.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=listen::MAX_CONNECTIONS_FLAG))]
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head, the
    /// wait on an idle keep-alive connection included; then it is closed.
    #[arg(long, value_name = "SECS", default_value_t = listen::HEADER_READ_SECS, value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_SECS))]
    pub header_read_secs: u64,
    /// How long a request's body may take to arrive; then the answer is 408.
    #[arg(long, value_name = "SECS", default_value_t = BODY_READ_SECS, value_parser = clap::value_parser!(u64).range(1..=MAX_DEADLINE_SECS))]
    pub body_read_secs: u64,
    /// How long runs in flight may take to finish after SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_secs: u64,
    /// Hand runs to this NATS server's JetStream (workers run them) instead
    /// of running them here.
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
    /// The JetStream stream, with `--queue`.
    #[arg(long, value_name = "NAME", default_value = "WASMAIL_RUNS")]
    pub stream: String,
}

/// One plugin served: loaded once, with its own concurrency limit.
struct Served {
    plugin: Plugin,
    slots: Arc<Semaphore>,
}

/// What a (re)load reads: the host, its plugins and the tokens.
struct Loaded {
    host: Host,
    plugins: HashMap<String, Served>,
    tokens: auth::Tokens,
}

/// The service's state, shared by every request.
struct App {
    loaded: RwLock<Arc<Loaded>>,
    runs: Arc<Semaphore>,
    /// Runs not finished yet (what SIGTERM waits for).
    running: std::sync::atomic::AtomicUsize,
    metrics: metrics::Metrics,
    queue: Option<Publisher>,
    rt: Runtime,
    pool: Arc<MailerPool>,
    args: ServeArgs,
}

/// Read the config and tokens, and load (compile, or take from the cache)
/// every plugin with a `path`.
fn load(rt: &Runtime, args: &ServeArgs, pool: &Arc<MailerPool>) -> Result<Loaded> {
    let config = Config::load(&args.config)?;
    let tokens = auth::Tokens::load(&args.tokens)?;
    let host = Host::builder().config(config.clone()).relay_pool(Arc::clone(pool)).build_on(rt)?;
    let mut plugins = HashMap::new();
    for (name, cfg) in &config.plugins {
        let Some(path) = &cfg.path else { continue };
        let plugin = host.load_file_as(path, Some(name)).with_context(|| format!("plugins.{name}: {}", path.display()))?;
        let slots = Arc::new(Semaphore::new(cfg.max_concurrent_runs.unwrap_or(args.max_runs).max(1)));
        plugins.insert(name.clone(), Served { plugin, slots });
    }
    Ok(Loaded { host, plugins, tokens })
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refuse(app: &App, status: StatusCode, reason: &'static str, message: &str) -> Response {
    app.metrics.add("wasmail_requests_refused_total", &[("reason", reason)], 1);
    let mut r = answer(status, report::other_error_json(reason, message));
    match status {
        StatusCode::UNAUTHORIZED => {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::TOO_MANY_REQUESTS => {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        // The rest of a late body may still come: the connection is not
        // reused (RFC 9110, section 15.5.9).
        StatusCode::REQUEST_TIMEOUT => {
            r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    r
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// The job id: the client's `Idempotency-Key`, if it is a plain token, or
/// a new one (then `true`: no earlier run can have had it).
fn job_id(headers: &HeaderMap) -> Result<(String, bool), String> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok((format!("job-{}", crate::mail::deadletter::fresh_name()), true));
    };
    let key = key.to_str().map_err(|_| "Idempotency-Key: not visible ASCII".to_owned())?;
    if key.is_empty()
        || key.chars().count() > MAX_JOB_ID_CHARS
        || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(format!("Idempotency-Key: 1 to {MAX_JOB_ID_CHARS} of A-Z a-z 0-9 - _ . :"));
    }
    Ok((key.to_owned(), false))
}

fn record_run(app: &App, name: &str, ran: &RunReport, took: Duration) {
    let result = match (&ran.stopped, &ran.output) {
        (Some(_), _) => "stopped",
        (None, Some(Ok(_))) => "ok",
        (None, Some(Err(_))) => "plugin-error",
        (None, None) => "failed",
    };
    let m = &app.metrics;
    m.add("wasmail_runs_total", &[("plugin", name), ("result", result)], 1);
    let c = ran.counts;
    for (outcome, n) in [
        ("accepted", c.accepted),
        ("denied", c.denied),
        ("rejected", c.rejected),
        ("error", c.errors),
        ("skipped", c.skipped),
        ("kept", c.kept),
    ] {
        if n > 0 {
            m.add("wasmail_messages_total", &[("plugin", name), ("outcome", outcome)], n);
        }
    }
    if let Some(stop) = &ran.stop {
        m.add("wasmail_limit_stops_total", &[("plugin", name), ("limit", stop.limit())], 1);
    }
    m.observe(name, took);
}

/// A request's body as UTF-8, read only once its token was checked (a
/// client without one makes the host read nothing), and only up to `limit`
/// octets.
async fn read_body(app: &App, body: axum::body::Body, limit: usize, what: &str) -> Result<String, Response> {
    let secs = app.args.body_read_secs;
    let read = tokio::time::timeout(Duration::from_secs(secs), axum::body::to_bytes(body, limit)).await.map_err(|_| {
        refuse(app, StatusCode::REQUEST_TIMEOUT, "timeout", &format!("{what}: not all sent within {secs} s"))
    })?;
    let bytes = read.map_err(|e| {
        refuse(app, StatusCode::PAYLOAD_TOO_LARGE, "bad-request", &format!("{what}: more than {limit} bytes, or cut short ({e})"))
    })?;
    String::from_utf8(bytes.into()).map_err(|_| refuse(app, StatusCode::BAD_REQUEST, "bad-request", &format!("{what}: not UTF-8")))
}

async fn run_plugin(State(app): State<Arc<App>>, Path(name): Path<String>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let loaded = match app.loaded.read() {
        Ok(l) => Arc::clone(&l),
        Err(_) => return answer(StatusCode::INTERNAL_SERVER_ERROR, report::other_error_json("internal", "state lock poisoned")),
    };
    let Some(grant) = loaded.tokens.check(authorization(&headers)) else {
        return refuse(&app, StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required");
    };
    if !grant.may_run(&name) {
        return refuse(&app, StatusCode::FORBIDDEN, "forbidden", &format!("token {} may not run this plugin", grant.name));
    }
    let Some(served) = loaded.plugins.get(&name) else {
        return refuse(&app, StatusCode::NOT_FOUND, "not-found", "no such plugin is served");
    };
    let input = match read_body(&app, body, MAX_INPUT_BYTES, "input").await {
        Ok(input) => input,
        Err(refused) => return refused,
    };
    let (job, fresh) = match job_id(&headers) {
        Ok(j) => j,
        Err(e) => return refuse(&app, StatusCode::BAD_REQUEST, "bad-request", &e),
    };
    if let Some(queue) = &app.queue {
        let job = Job { id: job, plugin: name.clone(), input };
        return match queue.publish(&job).await {
            Ok(()) => {
                app.metrics.add("wasmail_jobs_queued_total", &[("plugin", &name)], 1);
                answer(StatusCode::ACCEPTED, json!({ "job": job.id, "plugin": name, "queued": true }))
            }
            Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, report::other_error_json("queue", &format!("{e:#}"))),
        };
    }
    // Both limits or neither: a run that may not start is refused at once.
    let Ok(all) = Arc::clone(&app.runs).try_acquire_owned() else {
        return refuse(&app, StatusCode::TOO_MANY_REQUESTS, "busy", &format!("{} runs are in progress", app.args.max_runs));
    };
    let Ok(mine) = Arc::clone(&served.slots).try_acquire_owned() else {
        return refuse(&app, StatusCode::TOO_MANY_REQUESTS, "busy", "this plugin's runs are all in progress");
    };
    // The run is a task of its own: a client that hangs up does not cut it
    // short (its messages would be left half-settled); it finishes, holding
    // its slots, and its report goes to the audit log and the metrics.
    app.metrics.in_flight(1);
    app.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let (host, plugin, task_app, task_name) = (loaded.host.clone(), served.plugin.clone(), Arc::clone(&app), name.clone());
    let task = tokio::spawn(async move {
        // A key the client gave may have run before: its earlier
        // deliveries are looked up; a new id cannot have.
        let ran = if fresh { host.run_fresh_job(&plugin, &input, &job).await } else { host.run_job(&plugin, &input, &job).await };
        task_app.metrics.in_flight(-1);
        task_app.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        drop((all, mine));
        if let Ok(ran) = &ran {
            record_run(&task_app, &task_name, ran, started.elapsed());
        }
        ran
    });
    let ran = match task.await {
        Ok(ran) => ran,
        Err(e) => Err(anyhow::anyhow!("the run's task failed: {e}")),
    };
    match ran {
        Ok(ran) => {
            let body = crate::cli::run::report_json(&ran, served.plugin.sha256(), loaded.host.audit_path());
            answer(StatusCode::OK, body)
        }
        Err(e) if e.is::<crate::api::JobRunning>() => {
            // The same Idempotency-Key while its first run goes on: that
            // run's answer is the one; asked again later, this gives it.
            refuse(&app, StatusCode::CONFLICT, "job-running", &format!("{e:#}"))
        }
        Err(e) => {
            app.metrics.add("wasmail_runs_total", &[("plugin", &name), ("result", "failed")], 1);
            answer(StatusCode::SERVICE_UNAVAILABLE, report::other_error_json("run", &format!("{e:#}")))
        }
    }
}

async fn send_message(State(app): State<Arc<App>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let loaded = match app.loaded.read() {
        Ok(l) => Arc::clone(&l),
        Err(_) => return answer(StatusCode::INTERNAL_SERVER_ERROR, report::other_error_json("internal", "state lock poisoned")),
    };
    let Some(grant) = loaded.tokens.check(authorization(&headers)) else {
        return refuse(&app, StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required");
    };
    if !grant.send {
        return refuse(&app, StatusCode::FORBIDDEN, "forbidden", &format!("token {} may not send", grant.name));
    }
    let body = match read_body(&app, body, MAX_BODY_BYTES, "message").await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    // A send is a run of its own: it counts against `--max-runs`, and its
    // relay session against `--max-relay-connections`, like any other.
    let Ok(slot) = Arc::clone(&app.runs).try_acquire_owned() else {
        return refuse(&app, StatusCode::TOO_MANY_REQUESTS, "busy", &format!("{} runs are in progress", app.args.max_runs));
    };
    let msg = match serde_json::from_str::<message::MessageBody>(&body).map_err(|e| e.to_string()).and_then(|b| b.into_message()) {
        Ok(m) => m,
        Err(e) => return refuse(&app, StatusCode::BAD_REQUEST, "bad-request", &format!("invalid message: {e}")),
    };
    // A task of its own, as a run is: a client that hangs up does not cut
    // the SMTP dialogue short (the message could reach the relay with
    // nothing kept or counted here); it finishes, holding its slot.
    app.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (host, task_app, client) = (loaded.host.clone(), Arc::clone(&app), grant.name.clone());
    let task = tokio::spawn(async move {
        let sent = host.send_as(&msg, &client).await;
        if let Ok(sent) = &sent {
            let result = sent.result.as_ref().map_or_else(|e| e.kind(), |_| "accepted");
            task_app.metrics.add("wasmail_sends_total", &[("result", result)], 1);
        }
        task_app.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        drop(slot);
        sent
    });
    let sent = match task.await {
        Ok(sent) => sent,
        Err(e) => Err(anyhow::anyhow!("the send's task failed: {e}")),
    };
    match sent {
        Ok(sent) => match sent.result {
            Ok(receipt) => answer(StatusCode::OK, report::receipt_json(&receipt)),
            Err(e) => {
                let status = match e {
                    crate::bindings::types::SendError::InvalidMessage(_) | crate::bindings::types::SendError::PolicyDenied(_) => {
                        StatusCode::BAD_REQUEST
                    }
                    _ => StatusCode::BAD_GATEWAY,
                };
                let mut body = report::error_json(&e);
                body["kept"] = json!(sent.kept);
                answer(status, body)
            }
        },
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, report::other_error_json("send", &format!("{e:#}"))),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}

/// The routes.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/plugins/{name}/runs", post(run_plugin))
        .route("/v1/messages", post(send_message))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// Reload on SIGHUP: a new host, plugins and tokens, or the old ones kept
/// when the new ones fail to load.
async fn reloads(app: Arc<App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        let (rt, args, pool) = (app.rt.clone(), app.args.clone(), Arc::clone(&app.pool));
        match tokio::task::spawn_blocking(move || load(&rt, &args, &pool)).await {
            Ok(Ok(new)) => {
                let n = new.plugins.len();
                if let Ok(mut l) = app.loaded.write() {
                    *l = Arc::new(new);
                }
                app.pool.close_all().await;
                app.metrics.add("wasmail_reloads_total", &[("result", "ok")], 1);
                report::say(format_args!("serve: reloaded {} ({n} plugins)", app.args.config.display()));
            }
            Ok(Err(e)) => {
                app.metrics.add("wasmail_reloads_total", &[("result", "failed")], 1);
                report::say(format_args!("serve: reload failed, still serving the old config: {e:#}"));
            }
            Err(e) => report::say(format_args!("serve: reload failed: {e}")),
        }
    }
}

/// SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Run `wasmail serve`; returns the exit code.
pub async fn run(rt: &Runtime, args: ServeArgs) -> u8 {
    match serve(rt, args).await {
        Ok(()) => exit::OK,
        Err(e) => {
            report::say(format_args!("serve: {e:#}"));
            exit::CONFIG
        }
    }
}

async fn serve(rt: &Runtime, args: ServeArgs) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        report::say(format_args!("serve: listening on {}, beyond loopback, as told", args.listen));
    }
    let pool = Arc::new(MailerPool::new(args.max_relay_connections));
    let loaded = load(rt, &args, &pool)?;
    let queue = match &args.queue {
        Some(url) => Some(Publisher::connect(url, &args.stream).await.with_context(|| format!("queue {url}"))?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context("the listening address")?;
    report::say(format_args!("serve: listening on http://{local} ({} plugins)", loaded.plugins.len()));
    let app = Arc::new(App {
        loaded: RwLock::new(Arc::new(loaded)),
        runs: Arc::new(Semaphore::new(args.max_runs.max(1))),
        running: std::sync::atomic::AtomicUsize::new(0),
        metrics: metrics::Metrics::default(),
        queue,
        rt: rt.clone(),
        pool: Arc::clone(&pool),
        args: args.clone(),
    });
    tokio::spawn(reloads(Arc::clone(&app)));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = listen::Limits { max_connections: args.max_connections, header_read: Duration::from_secs(args.header_read_secs) };
    let server = listen::serve(listener, router(Arc::clone(&app)), limits, stop_rx);
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => return r.context("serving"),
        () = terminated() => {}
    }
    report::say(format_args!("serve: stopping; runs in progress have up to {} s to finish", args.shutdown_secs));
    let _ = stop_tx.send(true);
    // What is waited for is the runs, not the connections: an idle or
    // half-sent request must not hold the exit. Done when the server has
    // closed every connection, or when no run is left and the answers of
    // the last ones had a moment to go out.
    let deadline = tokio::time::sleep(Duration::from_secs(args.shutdown_secs));
    tokio::pin!(deadline);
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            r = &mut server => {
                r.context("serving")?;
                break;
            }
            () = &mut deadline => {
                let left = app.running.load(std::sync::atomic::Ordering::SeqCst);
                if left > 0 {
                    report::say(format_args!(
                        "serve: the deadline passed with {left} run(s) in flight; their messages stay in the spool for `wasmail retry`"
                    ));
                }
                break;
            }
            () = tokio::time::sleep(SHUTDOWN_POLL) => {
                if app.running.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= SHUTDOWN_LINGER {
                    break;
                }
            }
        }
    }
    pool.close_all().await;
    Ok(())
}
