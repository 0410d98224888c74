//! Running untrusted mail plugins (components of `world plugin`): the import
//! check, a deny-by-default WASI context, memory/CPU/wall/stack/resource
//! limits, and one mailer per run so all of a run's mail shares one SMTP
//! session (RFC 5321). Each plugin gets its own store, separate from the
//! mailer's.

pub mod imports;
pub mod output;
pub mod sandbox;
pub mod sender;

use crate::bindings::types::{Message, Receipt, SendError};
use crate::mail::audit::{AuditLog, Outcome, Record};
use crate::mailer::blobs::BlobAccess;
use crate::config::{Config, PluginConfig};
use crate::engine::{self, AnyhowExt, CacheOutcome};
use crate::mailer::{Mailer, MailerGrant, RelayOpener};
use crate::plugin::output::{LineSink, PluginOutput, Stream};
use crate::mail::dkim::Signing;
use crate::mail::policy::Policy;
use crate::cli::report::exit;
use crate::plugin::sandbox::{PluginLimiter, Stop};
use sender::{Counts, Delivery, Forwarder, InFlight, Sessions};
use crate::mailer::transcript::Sink;
use crate::{Runtime, mailer::tls};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasData, InstancePre, Linker, ResourceTable};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

pub use imports::{LoadFailed, Scan, Verdict, classify, import_allowed};

/// The folder a plugin's grant is mounted at, read-only.
pub const GRANT_MOUNT: &str = "/data";
pub use crate::plugin::sandbox::{MAX_INSTANCES, MAX_TABLE_ELEMENTS};

/// A plugin refused before it ran (an import it may not have, no `run`).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The plugin's store data.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: PluginLimiter,
    forwarder: Forwarder,
    cpu_ticks: u64,
    cpu_stop: Option<Stop>,
    http: WasiHttpCtx,
    no_http: DenyHttp,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.no_http }
    }
}

/// The most octets one `write` to a plugin's wasi:http request body may
/// hand over (its `check-write` permit). The body is held by the host, not
/// in the plugin's memory, and is never sent: each request keeps at most
/// this much, twice (one write buffered, one in flight), so a plugin that
/// builds `max_resources` requests holds a few MiB of the host's memory,
/// not wasmtime-wasi-http's default of 2 MiB a request (2 GB at 1,000).
pub const HTTP_BODY_CHUNK_BYTES: usize = 4096;

/// How many body writes a plugin's wasi:http request buffers (one, as
/// wasmtime-wasi-http does by default): with the one in flight, a request
/// holds at most twice [`HTTP_BODY_CHUNK_BYTES`].
pub const HTTP_BODY_BUFFERED_WRITES: usize = 1;

/// The most octets of headers one wasi:http `fields` resource of a plugin
/// may hold (wasmtime-wasi-http counts its in-memory form): room for a
/// fetch's usual headers, not the default 128 KiB a resource.
pub const HTTP_FIELDS_BYTES: usize = 8192;

/// The audit record of a plain send, before it goes: who asked, From and
/// every recipient as the caller gave them.
fn plain_send_record(msg: &Message, client: Option<&str>) -> Record {
    let mut r = Record::new(Outcome::Error);
    r.client = client.map(str::to_owned);
    r.from = msg.from.as_ref().map(|m| m.address.clone());
    r.recipients = msg.to.iter().chain(&msg.cc).chain(&msg.bcc).map(|m| m.address.clone()).collect();
    r
}

/// Fill in a plain send's outcome as a plugin's message's is filled in,
/// now.
fn settle_plain_send(r: &mut Record, result: &Result<Receipt, SendError>) {
    r.time_ms = crate::mail::audit::now_ms();
    sender::record_result(r, result);
    if let Ok(receipt) = result {
        r.message_id = Some(receipt.message_id.clone());
    }
}

/// wasi:http for plugins: requests may be built (componentize-js's fetch
/// imports the interfaces whether or not a plugin uses them), but sending
/// one always fails with `HTTP-request-denied`. Nothing is connected,
/// resolved or read, and what a request holds is small
/// ([`HTTP_BODY_CHUNK_BYTES`], [`HTTP_FIELDS_BYTES`]).
struct DenyHttp;

impl WasiHttpHooks for DenyHttp {
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        HTTP_BODY_BUFFERED_WRITES
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        HTTP_BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        tracing::debug!("plugin HTTP request to {} denied", request.uri());
        drop(request);
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

struct Table;
impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// The plugin linker: exactly the interfaces of [`imports`]'s rules. The
/// allowed WASI interfaces (io, clocks, random, cli, filesystem) and
/// `sender`; and, for the toolchains that import them whatever the plugin
/// does, wasi:sockets (over a WASI context that allows no TCP, no UDP, no
/// lookups and no address) and wasi:http (whose every request is denied).
/// No TLS, no mailer interface, nothing else is linked.
fn plugin_linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<PluginState>> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io, random, sockets};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    let mut l = Linker::new(engine);
    io::error::add_to_linker::<_, Table>(&mut l, |t: &mut PluginState| &mut t.table)?;
    io::poll::add_to_linker::<_, Table>(&mut l, |t: &mut PluginState| &mut t.table)?;
    io::streams::add_to_linker::<_, Table>(&mut l, |t: &mut PluginState| &mut t.table)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(&mut l, PluginState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(&mut l, PluginState::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    random::insecure::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut l, PluginState::random)?;
    cli::environment::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::exit::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(&mut l, PluginState::cli)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(&mut l, PluginState::filesystem)?;
    filesystem::preopens::add_to_linker::<_, WasiFilesystem>(&mut l, PluginState::filesystem)?;
    // Denied at run time: the store's WASI context allows no network use.
    let network = sockets::network::LinkOptions::default();
    sockets::network::add_to_linker::<_, WasiSockets>(&mut l, &network, PluginState::sockets)?;
    sockets::instance_network::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    sockets::tcp_create_socket::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    sockets::tcp::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    sockets::udp_create_socket::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    sockets::udp::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<_, WasiSockets>(&mut l, PluginState::sockets)?;
    // Denied at run time: `DenyHttp` refuses every request.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
    sender::add_to_linker(&mut l, |s: &mut PluginState| &mut s.forwarder)?;
    Ok(l)
}

/// A loaded, checked and linked plugin.
pub struct Plugin {
    /// Its name (the policy table it runs under).
    pub name: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// Whether its compiled code came from the cache.
    pub cache: CacheOutcome,
    pre: InstancePre<PluginState>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// The plugin's name.
    pub plugin: String,
    /// The job it ran for, if any.
    pub job: Option<String>,
    /// What `run` returned, if it returned.
    pub output: Option<Result<String, String>>,
    /// Why the run was stopped (a limit, a trap, a host failure).
    pub stopped: Option<String>,
    /// The limit that stopped it, when it was one of the host's.
    pub stop: Option<Stop>,
    /// What the run's sends came to; each record is in the audit log.
    pub counts: Counts,
    /// Each message's outcome, audit id and Message-ID, for the first
    /// [`sender::MAX_REPORTED_MESSAGES`] messages.
    pub messages: Vec<sender::MessageOutcome>,
    /// Messages past those, counted only.
    pub unlisted: u64,
}

impl RunReport {
    /// The exit code: 0, 1 when the plugin returned an error, 70 when it was
    /// stopped.
    pub fn exit_code(&self) -> u8 {
        match (&self.stopped, &self.output) {
            (Some(_), _) => exit::SOFTWARE,
            (None, Some(Ok(_))) => exit::OK,
            (None, _) => 1,
        }
    }
}

/// Relay sessions kept open from run to run (`wasmail serve`): a finished
/// run's mailer, with its SMTP session, waits here for the plugin's next
/// run (mailers are per plugin: their grants differ). At most `max`
/// connections to the relay exist at once, idle or in use.
pub struct MailerPool {
    /// Idle sessions by the host that opened them (see [`Self::host_key`])
    /// and the plugin they ran for.
    idle: std::sync::Mutex<std::collections::HashMap<(u64, String), Vec<(Mailer, tokio::sync::OwnedSemaphorePermit)>>>,
    connections: Arc<tokio::sync::Semaphore>,
    hosts: std::sync::atomic::AtomicU64,
}

/// How long a run waits for a relay connection from a full pool.
pub const POOL_WAIT: Duration = Duration::from_secs(30);

impl MailerPool {
    /// A pool of at most `max` relay connections.
    pub fn new(max: usize) -> Self {
        Self {
            idle: Default::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(max.max(1))),
            hosts: Default::default(),
        }
    }

    /// A key of its own for a host that draws from the pool: sessions it
    /// opened go back under it and only it takes them again. A host built
    /// from a reloaded config (another relay, other credentials) never gets
    /// a session that a run of the old one returned after the reload.
    fn host_key(&self) -> u64 {
        self.hosts.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn take(&self, host: u64, plugin: &str) -> Option<(Mailer, tokio::sync::OwnedSemaphorePermit)> {
        self.idle.lock().ok()?.get_mut(&(host, plugin.to_owned()))?.pop()
    }

    /// A connection slot, waiting at most [`POOL_WAIT`] for one. An idle
    /// session of another plugin is closed to make room.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = Arc::clone(&self.connections).try_acquire_owned() {
            return Ok(p);
        }
        let spare = self.idle.lock().ok().and_then(|mut idle| idle.values_mut().find_map(Vec::pop));
        if let Some((mut mailer, permit)) = spare {
            if let Err(e) = mailer.close().await {
                tracing::debug!("closing an idle relay session: {e:#}");
            }
            return Ok(permit);
        }
        match tokio::time::timeout(POOL_WAIT, Arc::clone(&self.connections).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => bail!("relay: all {} connections are busy", self.connections.available_permits()),
        }
    }

    fn put(&self, host: u64, plugin: &str, mailer: Mailer, permit: tokio::sync::OwnedSemaphorePermit) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.entry((host, plugin.to_owned())).or_default().push((mailer, permit));
        }
    }

    /// Close every idle session (QUIT).
    pub async fn close_all(&self) {
        let all: Vec<_> = match self.idle.lock() {
            Ok(mut idle) => idle.drain().flat_map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        for (mut mailer, _permit) in all {
            if let Err(e) = mailer.close().await {
                tracing::debug!("closing an idle relay session: {e:#}");
            }
        }
    }
}

/// The mailers a run starts with (see [`Host::mailers_for`]).
struct RunMailers {
    mailer: Mailer,
    renderer: Option<Mailer>,
    delivery: Delivery,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    sessions: Sessions,
}

/// Options that are not in the config file.
#[derive(Clone, Default)]
pub struct HostOptions {
    /// Keep relay sessions open between runs, in this pool.
    pub pool: Option<Arc<MailerPool>>,
    /// `-v`: the mailer's SMTP transcript goes here.
    pub transcript: Option<Sink>,
    /// Plugins' stdout and stderr lines go here (default: the host's stderr).
    pub output: Option<LineSink>,
}

/// Runs plugins under one config.
pub struct PluginHost {
    rt: Runtime,
    config: Config,
    linker: Linker<PluginState>,
    audit: AuditLog,
    tls: tls::Provider,
    options: HostOptions,
    /// Its key in the relay pool ([`MailerPool::host_key`]).
    pool_key: u64,
}


impl PluginHost {
    /// Set up for `config`.
    pub fn new(rt: &Runtime, config: Config, options: HostOptions) -> Result<Self> {
        let linker = plugin_linker(&rt.engine).anyhow().context("linking the plugin interfaces")?;
        let audit_path = config.audit.clone().unwrap_or_else(|| PathBuf::from(crate::mail::audit::DEFAULT_AUDIT));
        config.validate()?;
        let audit = AuditLog::open(&audit_path)?;
        // For outbox runs only (they never connect); relay runs get the
        // relay's trust from `RelayArgs::resolve`.
        let tls = tls::Provider::new(None)?;
        let pool_key = options.pool.as_ref().map_or(0, |p| p.host_key());
        Ok(Self { rt: rt.clone(), config, linker, audit, tls, options, pool_key })
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The plugin name for a path: the file stem without `wasmail_plugin_`.
    pub fn name_for(path: &Path) -> String {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        stem.strip_prefix("wasmail_plugin_").unwrap_or(&stem).to_owned()
    }

    /// Read, check, compile (or load from the cache) and link a plugin.
    /// Its imports, exports and counts are checked before it is compiled.
    pub fn load(&self, path: &Path, name: Option<&str>) -> Result<Plugin> {
        let name = name.map_or_else(|| Self::name_for(path), str::to_owned);
        let max = self.policy_for(&name)?.max_component_bytes;
        let bytes = read_bounded(path, max)?;
        self.load_bytes(&name, &bytes)
    }

    /// Check, compile (or load from the cache) and link the component
    /// `bytes` as plugin `name` (the policy table it runs under).
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Plugin> {
        let max = self.policy_for(name)?.max_component_bytes;
        if bytes.len() as u64 > max {
            bail!(Refused(format!("plugin {name} is larger than max_component_bytes ({max} bytes)")));
        }
        let (component, cache) = prepare(&self.rt.engine, bytes, &format!("plugin {name}"))?;
        let pre = link(&self.linker, &component, name)?;
        Ok(Plugin { name: name.to_owned(), sha256: engine::sha256_hex(bytes), cache, pre })
    }

    /// The config it runs under.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn policy_for(&self, name: &str) -> Result<PluginConfig> {
        match self.config.plugins.get(name) {
            Some(p) => Ok(p.clone()),
            None if self.config.relay.is_none() => Ok(PluginConfig::outbox_default()),
            None => bail!(Refused(format!(
                "no [plugins.{name}] table in the config; with a relay configured, every plugin needs a policy"
            ))),
        }
    }

    /// Send one message given by the host's caller (not a plugin): to the
    /// config's relay, or to its outbox without one. Attachments must be
    /// bytes (no file is opened for a caller). A failure a retry may fix
    /// keeps the exact message in the dead-letter folder: its path comes
    /// back with the error. The outcome goes to the audit log, with
    /// `client` (who asked) and no plugin.
    pub async fn send(&self, msg: &Message, client: Option<&str>) -> Result<(Result<Receipt, SendError>, Option<PathBuf>)> {
        let mut record = plain_send_record(msg, client);
        let (result, kept) = match &self.config.relay {
            None => {
                let (result, path) = self.send_to_outbox(msg).await?;
                record.outbox = path.map(|p| p.display().to_string());
                (result, None)
            }
            Some(r) => self.send_to_relay(r, msg).await?,
        };
        settle_plain_send(&mut record, &result);
        record.dead_letter = kept.as_ref().map(|p| p.display().to_string());
        // The message went (or was kept): a log that cannot be written does
        // not undo that, so the caller still gets its result.
        if let Err(e) = self.audit.append(&record) {
            tracing::warn!("the audit record of a plain send could not be written: {e:#}");
        }
        Ok((result, kept))
    }

    async fn send_to_outbox(&self, msg: &Message) -> Result<(Result<Receipt, SendError>, Option<PathBuf>)> {
        let mut mailer = Mailer::new(&self.rt.mailer, MailerGrant::outbox(self.tls.clone())).await?;
        let rendered = match mailer.render(msg).await? {
            Ok(r) => r,
            Err(e) => return Ok((Err(e), None)),
        };
        let dir = self.config.outbox.clone().unwrap_or_else(|| PathBuf::from(crate::mail::outbox::DEFAULT_OUTBOX));
        let path = crate::mail::outbox::write(&dir, &rendered.bytes)?;
        let receipt = Receipt {
            message_id: rendered.message_id,
            accepted: rendered.envelope.recipients,
            rejected: vec![],
            size: rendered.bytes.len() as u64,
            reply: crate::bindings::types::Reply { code: 250, enhanced: None, text: format!("written to {}", path.display()) },
        };
        Ok((Ok(receipt), Some(path)))
    }

    async fn send_to_relay(&self, r: &crate::config::RelayConfig, msg: &Message) -> Result<(Result<Receipt, SendError>, Option<PathBuf>)> {
        // One of the pool's connections while it is open, when there is a pool.
        let _connection = match &self.options.pool {
            Some(pool) => Some(pool.slot().await?),
            None => None,
        };
        let mut mailer = self.relay_opener(r).await?.open().await?;
        let delivered = mailer.deliver(msg).await?;
        if let Err(e) = mailer.close().await {
            tracing::warn!("closing the mailer session: {e:#}");
        }
        match delivered {
            Ok(receipt) => Ok((Ok(receipt), None)),
            Err(undelivered) => {
                let kept = match &undelivered.kept {
                    Some(k) => Some(self.dead_letters().keep(k, &undelivered.error, None)?),
                    None => None,
                };
                Ok((Err(undelivered.error), kept))
            }
        }
    }

    /// What opens sessions to the relay `r` (resolved now) and nothing
    /// else, holding its secret.
    async fn relay_opener(&self, r: &crate::config::RelayConfig) -> Result<RelayOpener> {
        let (settings, secret, tls) = crate::mailer::relay::RelayArgs::from_config(r)
            .resolve(self.options.transcript.is_some())
            .await
            .map_err(|e| anyhow::anyhow!("relay: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("relay: no server"))?;
        Ok(RelayOpener::new(&self.rt.mailer, &settings.addresses, secret, tls, settings.to_wit())
            .transcript(self.options.transcript.clone()))
    }

    /// The DKIM identity the plugin's policy names (`dkim = "NAME"`), its key
    /// loaded: it signs the headers the policy lets the plugin set too.
    fn signing_for(&self, cfg: &PluginConfig) -> Result<Option<Arc<Signing>>> {
        let Some(name) = &cfg.dkim else { return Ok(None) };
        let table = self.config.dkim.get(name).ok_or_else(|| anyhow::anyhow!("dkim: there is no [dkim.{name}] table"))?;
        Ok(Some(Arc::new(table.signing(name, &cfg.allowed_headers)?)))
    }

    /// The run's mailers: the one that holds the relay session (from the
    /// pool, when there is one) and, for the relay, a second one that
    /// assembles (with the files and the signing key, without the network),
    /// so the next batch is assembled while the last is on the wire; and
    /// what opens more sessions when `relay.sessions` allows (not for runs
    /// that draw from a pool, which counts their one connection).
    async fn mailers_for(&self, name: &str, cfg: &PluginConfig) -> Result<RunMailers> {
        let blobs = match &cfg.folder {
            None => BlobAccess::Deny,
            Some(f) => BlobAccess::folder(f).with_context(|| format!("opening the granted folder {}", f.display()))?,
        };
        let signing = self.signing_for(cfg)?;
        let assembler = MailerGrant::outbox(self.tls.clone())
            .blobs(blobs)
            .max_message_bytes(cfg.max_message_bytes)
            .transcript(self.options.transcript.clone())
            .signing(signing);
        let Some(r) = &self.config.relay else {
            let mailer = Mailer::new(&self.rt.mailer, assembler).await?;
            let dir = self.config.outbox.clone().unwrap_or_else(|| PathBuf::from(crate::mail::outbox::DEFAULT_OUTBOX));
            return Ok(RunMailers { mailer, renderer: None, delivery: Delivery::Outbox(dir), permit: None, sessions: Sessions::one() });
        };
        let mut renderer = Mailer::new(&self.rt.mailer, assembler).await?;
        if let Some(pool) = &self.options.pool
            && let Some((mailer, permit)) = pool.take(self.pool_key, name)
        {
            return Ok(RunMailers {
                mailer,
                renderer: Some(renderer),
                delivery: Delivery::Relay,
                permit: Some(permit),
                sessions: Sessions::one(),
            });
        }
        let permit = match &self.options.pool {
            Some(pool) => Some(pool.slot().await?),
            None => None,
        };
        let opener = self.relay_opener(r).await?;
        let mailer = opener.open().await?;
        // It never connects; its settings only say whether to report (-v).
        renderer.configure(opener.settings()).await?;
        let sessions = match permit {
            Some(_) => Sessions::one(),
            None => Sessions::up_to(r.sessions(), opener),
        };
        Ok(RunMailers { mailer, renderer: Some(renderer), delivery: Delivery::Relay, permit, sessions })
    }

    /// A fresh store for one run of `plugin`: its mailer (one SMTP session
    /// for the run), WASI context, limits and CPU meter.
    async fn store_for(
        &self,
        plugin: &Plugin,
        cfg: &PluginConfig,
        job: Option<&str>,
        may_have_run: bool,
    ) -> Result<(Store<PluginState>, PluginOutput)> {
        // Held for the whole run, before the audit log is searched: a
        // second run of the job meanwhile would find its messages not yet
        // attempted and send them again.
        let (job_lock, priors) = match job {
            Some(job) if may_have_run => {
                let lock = sender::JobLock::take(self.audit.path(), &plugin.name, job)?.map_err(anyhow::Error::new)?;
                (Some(lock), sender::priors(self.audit.path(), &plugin.name, job)?)
            }
            _ => (None, Default::default()),
        };
        let RunMailers { mailer, renderer, delivery, permit: connection, sessions } = self.mailers_for(&plugin.name, cfg).await?;
        let sink = self.options.output.clone().unwrap_or_else(crate::text::stderr_lines);
        let output = PluginOutput::new(&plugin.name, cfg.max_output_bytes, sink);
        let mut wasi = WasiCtx::builder();
        wasi.stdout(output.stream(Stream::Stdout)).stderr(output.stream(Stream::Stderr)).allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if let Some(folder) = &cfg.folder {
            wasi.preopened_dir(folder, GRANT_MOUNT, FsPerms::ReadOnly)
                .anyhow()
                .with_context(|| format!("granting {}", folder.display()))?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(cfg.max_resources);
        let limits = PluginLimiter::new(cfg.memory_mib);
        let forwarder = Forwarder {
            plugin: plugin.name.clone(),
            sha256: plugin.sha256.clone(),
            policy: Policy::new(cfg.clone()),
            delivery,
            mailer: Some(mailer),
            renderer,
            sessions,
            audit: self.audit.clone(),
            dead_letters: self.dead_letters(),
            counts: Counts::default(),
            in_flight: InFlight::default(),
            stop: None,
            job: job.map(str::to_owned),
            connection,
            job_lock,
            priors,
            seq: 0,
            batches: 0,
            reported: Vec::new(),
            unreported: 0,
        };
        let state = PluginState {
            wasi: wasi.build(),
            table,
            limits,
            forwarder,
            cpu_ticks: 0,
            cpu_stop: None,
            http: {
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(HTTP_FIELDS_BYTES);
                http
            },
            no_http: DenyHttp,
        };
        let mut store = Store::new(&self.rt.engine, state);
        store.limiter(|s| &mut s.limits);
        // What one call may copy into the host: no more than the plugin's
        // memory holds, where wasmtime's default is 128 MiB. Lifting copies
        // each string it is pointed at, so a list of mailboxes that all
        // point at one large string would cost the host many times that.
        store.set_hostcall_fuel(usize::try_from(cfg.memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX));
        let cpu_limit = (cfg.cpu_ms / engine::EPOCH_TICK.as_millis().max(1) as u64).max(1);
        let cpu_ms = cfg.cpu_ms;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let s = ctx.data_mut();
            s.cpu_ticks += 1;
            if s.cpu_ticks > cpu_limit {
                let stop = Stop::Cpu { ms: cpu_ms };
                let e = wasmtime::Error::msg(stop.to_string());
                s.cpu_stop = Some(stop);
                return Err(e);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok((store, output))
    }

    /// The dead-letter folder and write-ahead spool of this config; kept
    /// letters record the relay, so `wasmail retry` needs no flags.
    fn dead_letters(&self) -> crate::mail::deadletter::DeadLetters {
        use crate::mail::deadletter::{DEFAULT_DEAD_LETTER, DeadLetters};
        let dead = DeadLetters::new(self.config.dead_letter.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DEAD_LETTER)));
        match self.config.relay.as_ref().and_then(|r| crate::mailer::relay::RelayArgs::from_config(r).stored()) {
            Some(relay) => dead.for_relay(relay),
            None => dead,
        }
    }

    /// Instantiate a fresh plugin+mailer pair without running it (what
    /// `make bench` measures as instantiation). Dropping the result frees
    /// both instances.
    pub async fn instantiate_pair(&self, plugin: &Plugin) -> Result<impl Drop + use<>> {
        let cfg = self.policy_for(&plugin.name)?;
        let (mut store, _) = self.store_for(plugin, &cfg, None, false).await?;
        plugin.pre.instantiate_async(&mut store).await.anyhow()?;
        Ok(store)
    }

    /// Run `plugin` once with `input`. Host failures before the plugin
    /// starts are errors; everything after is in the report.
    pub async fn run(&self, plugin: &Plugin, input: &str) -> Result<RunReport> {
        self.run_job(plugin, input, None).await
    }

    /// Run `plugin` for `job`: every audit record carries the job's id, and
    /// the messages an earlier delivery of the same job attempted (the
    /// audit log knows them by `seq`) are not sent again.
    pub async fn run_job(&self, plugin: &Plugin, input: &str, job: Option<&str>) -> Result<RunReport> {
        self.run_for(plugin, input, job, true).await
    }

    /// Run `plugin` for `job`, an id made for this run: no earlier delivery
    /// can have attempted it, so the audit log is not searched (a search
    /// reads the whole log, which grows with every run).
    pub async fn run_fresh_job(&self, plugin: &Plugin, input: &str, job: &str) -> Result<RunReport> {
        self.run_for(plugin, input, Some(job), false).await
    }

    async fn run_for(&self, plugin: &Plugin, input: &str, job: Option<&str>, may_have_run: bool) -> Result<RunReport> {
        let cfg = self.policy_for(&plugin.name)?;
        let (mut store, output) = self.store_for(plugin, &cfg, job, may_have_run).await?;
        let wall = Duration::from_millis(cfg.wall_ms);
        let outcome = tokio::time::timeout(wall, async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            let run = instance.get_typed_func::<(String,), (Result<String, String>,)>(&mut store, "run")?;
            let (out,) = run.call_async(&mut store, (input.to_owned(),)).await?;
            wasmtime::Result::Ok(out)
        })
        .await;
        output.finish();
        let state = store.data_mut();
        let (returned, stop, stopped) = match outcome {
            Ok(Ok(out)) => (Some(out), None, None),
            Ok(Err(e)) => {
                let stop = state.forwarder.stop.take().or_else(|| state.limits.hit.take()).or_else(|| state.cpu_stop.take());
                let why = stop.as_ref().map_or_else(|| explain(&e, &cfg), ToString::to_string);
                (None, stop, Some(why))
            }
            Err(_) => {
                let stop = Stop::Wall { ms: cfg.wall_ms };
                (None, Some(stop.clone()), Some(stop.to_string()))
            }
        };
        let forwarder = &mut state.forwarder;
        // A mailer stopped in the middle of a call, or one that failed, is
        // dropped, not called again: its connection closes with the store.
        let mailer_busy = !forwarder.in_flight.is_empty() || matches!(stop, Some(Stop::Mailer(_)));
        if let Some(why) = &stopped
            && let Err(e) = forwarder.abandon(why)
        {
            tracing::error!("recording the message in flight when the run stopped: {e:#}");
        }
        let counts = forwarder.counts;
        let messages = std::mem::take(&mut forwarder.reported);
        let unlisted = forwarder.unreported;
        let connection = forwarder.connection.take();
        let mut forwarder = store.into_data().forwarder;
        for mut extra in forwarder.sessions.take_idle() {
            if let Err(e) = extra.close().await {
                tracing::warn!("closing a relay session: {e:#}");
            }
        }
        match (&self.options.pool, connection, forwarder.mailer) {
            // Its session stays open for the plugin's next run.
            (Some(pool), Some(permit), Some(mailer)) if !mailer_busy => pool.put(self.pool_key, &plugin.name, mailer, permit),
            (_, _, Some(mut mailer)) if !mailer_busy => {
                if let Err(e) = mailer.close().await {
                    tracing::warn!("closing the mailer session: {e:#}");
                }
            }
            // A mailer stopped inside a call is dropped: its connection closes.
            _ => {}
        }
        let output = returned.map(|r| r.map(|s| output.clip(&s)).map_err(|e| output.clip(&e)));
        Ok(RunReport {
            plugin: plugin.name.clone(),
            job: job.map(str::to_owned),
            output,
            stopped,
            stop,
            counts,
            messages,
            unlisted,
        })
    }
}

/// Check a component before compiling it (its imports, `run`, the
/// engine's per-component counts), then compile it or load it from the
/// cache, and check its types. A refused import or a missing `run` is
/// [`Refused`]; a file that is not a component, a count over a limit or a
/// failed compile is [`LoadFailed`].
pub fn prepare(engine: &wasmtime::Engine, bytes: &[u8], label: &str) -> Result<(Component, CacheOutcome)> {
    let scan = preflight(bytes)?;
    tracing::debug!(
        "{label}: {} imports, {} core instances, {} memories, {} tables",
        scan.imports.len(),
        scan.core_instances,
        scan.memories,
        scan.tables
    );
    let (component, cache) = engine::load_component(engine, bytes, label)?;
    check_component(engine, &component)?;
    Ok((component, cache))
}

/// Link a compiled plugin as `wasmail run` does. Every import passed the
/// name check, so a link error is a type mismatch: the plugin was built
/// against another version of the WIT ([`LoadFailed`]).
fn link(linker: &Linker<PluginState>, component: &Component, name: &str) -> Result<InstancePre<PluginState>> {
    linker.instantiate_pre(component).map_err(|e| {
        anyhow::Error::new(LoadFailed {
            what: format!("linking plugin {name}: {:#}", anyhow::Error::from(e)),
            hint: "it was built against another version of wit/ than this wasmail; rebuild it against this checkout's wit/".into(),
        })
    })
}

/// Whether a compiled plugin links against the plugin interfaces, as
/// `wasmail run` links it (`wasmail inspect` asks before it says "can run").
pub fn check_links(engine: &wasmtime::Engine, component: &Component) -> Result<()> {
    let linker = plugin_linker(engine).anyhow().context("linking the plugin interfaces")?;
    link(&linker, component, "plugin").map(drop)
}

/// The checks [`prepare`] makes before compiling, on the bytes alone.
pub fn preflight(bytes: &[u8]) -> Result<Scan> {
    let scan = imports::scan(bytes).map_err(|e| LoadFailed {
        what: format!("{e:#}"),
        hint: "a plugin is a WebAssembly component of `world plugin` (wit/): see docs/plugins.md for each language's build".into(),
    })?;
    if let Some((name, why)) = scan.refused_import() {
        bail!(Refused(format!("it imports {name}, which plugins may not use ({why})")));
    }
    if !scan.exports_run() {
        bail!(Refused("it does not export `run: func(input: string) -> result<string, string>`".into()));
    }
    if let Some(over) = scan.over_limits(&engine::component_limits()) {
        bail!(over);
    }
    Ok(scan)
}

/// Read a component file of at most `max` bytes: the size is checked before
/// anything is read, and the read stops at the limit whatever the file does.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading plugin {}", path.display()))?;
    let too_big = || Refused(format!("{} is larger than max_component_bytes ({max} bytes)", path.display()));
    let len = file.metadata().with_context(|| format!("reading plugin {}", path.display()))?.len();
    if len > max {
        bail!(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).with_context(|| format!("reading plugin {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!(too_big());
    }
    Ok(bytes)
}

/// Check what a component imports and exports before anything runs.
pub fn check_component(engine: &wasmtime::Engine, component: &Component) -> Result<()> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if !import_allowed(name) {
            bail!(Refused(format!("it imports {name}, which plugins may not use")));
        }
    }
    let has_run = ty.exports(engine).any(|(name, item)| name == "run" && matches!(&item.ty, ComponentItem::ComponentFunc(f) if is_run_type(f)));
    if !has_run {
        bail!(Refused("it does not export `run: func(input: string) -> result<string, string>`".into()));
    }
    Ok(())
}

/// True for `func(input: string) -> result<string, string>`, the one type
/// `run` may have: anything else is refused at load, before it is
/// instantiated (and its start function runs).
fn is_run_type(f: &wasmtime::component::types::ComponentFunc) -> bool {
    use wasmtime::component::types::Type;
    let params: Vec<Type> = f.params().map(|(_, t)| t).collect();
    let results: Vec<Type> = f.results().collect();
    matches!(params.as_slice(), [Type::String])
        && matches!(results.as_slice(), [Type::Result(r)] if matches!((r.ok(), r.err()), (Some(Type::String), Some(Type::String))))
}

/// Turn a trap into a sentence naming the limit that stopped the plugin.
fn explain(e: &wasmtime::Error, cfg: &PluginConfig) -> String {
    let text = format!("{e:?}");
    tracing::debug!("plugin stopped: {text}");
    let trap = e.downcast_ref::<wasmtime::Trap>().copied();
    if trap == Some(wasmtime::Trap::StackOverflow) {
        return "stack: the plugin exhausted its wasm stack (unbounded recursion?)".into();
    }
    // Rust's data stack lives at the bottom of linear memory and grows down:
    // overflowing it wraps the stack pointer to just under 4 GiB. wasmtime
    // gives the faulting address only in its message.
    if trap == Some(wasmtime::Trap::MemoryOutOfBounds)
        && let Some(addr) = text
            .split("memory fault at wasm address 0x")
            .nth(1)
            .and_then(|rest| u64::from_str_radix(rest.split(|c: char| !c.is_ascii_hexdigit()).next().unwrap_or(""), 16).ok())
        && addr >= 0xF000_0000
    {
        return "stack: the plugin overflowed its stack (unbounded recursion?)".into();
    }
    if matches!(e.downcast_ref::<wasmtime::component::ResourceTableError>(), Some(wasmtime::component::ResourceTableError::Full)) {
        return format!("max_resources: the plugin holds more than {} resources", cfg.max_resources);
    }
    if trap == Some(wasmtime::Trap::UnreachableCodeReached) {
        return "the plugin panicked or aborted (wasm `unreachable`; its stderr above says why)".into();
    }
    // The causes, without the wasm backtrace.
    let causes: Vec<&str> = text
        .split("Caused by:")
        .nth(1)
        .map(|c| c.lines().map(|l| l.trim().trim_start_matches(|ch: char| ch.is_ascii_digit() || ch == ':').trim()).filter(|l| !l.is_empty()).collect())
        .unwrap_or_else(|| vec![text.lines().next().unwrap_or("")]);
    format!("the plugin trapped: {}", causes.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One item each interface defines (a function or a resource), so a
    /// probe can tell a defined instance from a missing one: an import of an
    /// empty instance links whether or not the linker has it.
    const PROBES: &[(&str, &str)] = &[
        ("wasmail:mail/sender", "send"),
        ("wasi:io/error", "error"),
        ("wasi:io/poll", "pollable"),
        ("wasi:io/streams", "input-stream"),
        ("wasi:clocks/wall-clock", "now"),
        ("wasi:clocks/monotonic-clock", "now"),
        ("wasi:random/random", "get-random-bytes"),
        ("wasi:random/insecure", "get-insecure-random-bytes"),
        ("wasi:random/insecure-seed", "insecure-seed"),
        ("wasi:cli/environment", "get-environment"),
        ("wasi:cli/exit", "exit"),
        ("wasi:cli/stdin", "get-stdin"),
        ("wasi:cli/stdout", "get-stdout"),
        ("wasi:cli/stderr", "get-stderr"),
        ("wasi:cli/terminal-input", "terminal-input"),
        ("wasi:cli/terminal-output", "terminal-output"),
        ("wasi:cli/terminal-stdin", "get-terminal-stdin"),
        ("wasi:cli/terminal-stdout", "get-terminal-stdout"),
        ("wasi:cli/terminal-stderr", "get-terminal-stderr"),
        ("wasi:filesystem/types", "descriptor"),
        ("wasi:filesystem/preopens", "get-directories"),
        ("wasi:sockets/network", "network"),
        ("wasi:sockets/instance-network", "instance-network"),
        ("wasi:sockets/tcp-create-socket", "create-tcp-socket"),
        ("wasi:sockets/tcp", "tcp-socket"),
        ("wasi:sockets/udp-create-socket", "create-udp-socket"),
        ("wasi:sockets/udp", "udp-socket"),
        ("wasi:sockets/ip-name-lookup", "resolve-addresses"),
        ("wasi:http/types", "fields"),
        ("wasi:http/outgoing-handler", "handle"),
    ];

    /// Whether the linker defines the instance `name`: a component
    /// importing it with `item` as a resource links, or fails on the item's
    /// kind or type, when the instance is there, and fails with "...
    /// implementation is missing" when it is not.
    fn defined(linker: &Linker<PluginState>, engine: &wasmtime::Engine, name: &str, item: &str) -> bool {
        let wat = format!(r#"(component (import "{name}" (instance (export "{item}" (type (sub resource))))))"#);
        let component = Component::new(engine, wat::parse_str(&wat).unwrap()).unwrap();
        match linker.instantiate_pre(&component) {
            Ok(_) => true,
            Err(e) => !format!("{e:#}").contains("implementation is missing"),
        }
    }

    /// The linker defines every interface the rules let through (at the
    /// WASI versions toolchains emit), and none of those they refuse.
    #[test]
    fn linked_interfaces_match_the_rules() {
        let engine = engine::engine().unwrap();
        let linker = plugin_linker(&engine).unwrap();
        let probe = |interface: &str| PROBES.iter().find(|(i, _)| *i == interface).map(|(_, item)| *item);
        for (interface, verdict) in imports::linked_interfaces() {
            assert_ne!(verdict, Verdict::Refused, "{interface}: a rule that refuses is not a rule");
            if interface == "wasmail:mail/types" {
                continue; // types only: nothing to probe
            }
            let item = probe(interface).unwrap_or_else(|| panic!("no probe for {interface}"));
            let versions: &[&str] = if interface.starts_with("wasmail:") { &["0.1.0"] } else { &["0.2.0", "0.2.6", "0.2.9", "0.2.12"] };
            for v in versions {
                let name = format!("{interface}@{v}");
                assert!(import_allowed(&name), "{name}");
                assert!(defined(&linker, &engine, &name, item), "{name} is allowed but not linked");
            }
        }
        for (name, item) in [
            ("wasi:tls/types@0.2.0-draft", "client-handshake"),
            ("wasmail:mail/transport@0.1.0", "configure"),
            ("wasmail:mail/credentials@0.1.0", "secret"),
            ("wasmail:mail/limits@0.1.0", "max-message-bytes"),
            ("wasmail:mail/blobs@0.1.0", "open"),
            ("wasmail:mail/transcript@0.1.0", "line"),
            ("wasi:http/incoming-handler@0.2.0", "handle"),
            ("wasi:cli/run@0.2.0", "run"),
        ] {
            assert!(!import_allowed(name), "{name}");
            assert!(!defined(&linker, &engine, name, item), "{name} is refused but linked");
        }
        // The probe itself tells the two apart.
        assert!(!defined(&linker, &engine, "wasi:io/poll@0.2.12", "no-such-item"));
    }
}
