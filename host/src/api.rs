//! wasmail as a library: a [`Host`] loads plugin components and runs them
//! under their policies (the sandbox, the audit log, the write-ahead spool,
//! SMTP submission per RFC 5321), or sends one message, inside a Rust
//! service. The CLI's `run` and `wasmail serve` are built on it.
//!
//! No type here comes from wasmtime: an embedder depends on wasmail, not on
//! the engine's version. The message types are the WIT's (`wasmail:mail`),
//! plain Rust data.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use wasmail::api::Host;
//!
//! // The relay, the audit log and each plugin's policy come from the config.
//! let host = Host::from_config("wasmail.toml")?;
//! let plugin = host.load_file("wasmail_plugin_hello.wasm")?;
//! let report = host.run(&plugin, "someone@example.com").await?;
//! for m in &report.messages {
//!     println!("{:?} {:?} {:?}", m.outcome, m.message_id, m.id);
//! }
//! println!("{} accepted, stopped: {:?}", report.counts.accepted, report.stopped);
//! # Ok(()) }
//! ```

use crate::Runtime;
use crate::config::Config;
use crate::plugin::{HostOptions, PluginHost};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::bindings::types::{Attachment, Content, Mailbox, Message, Priority, Receipt, Reply, SendError};
pub use crate::mail::audit::Outcome;
pub use crate::plugin::sandbox::Stop;
pub use crate::plugin::sender::{Counts, JobRunning, MAX_REPORTED_MESSAGES, MessageOutcome};
pub use crate::plugin::{LoadFailed, MailerPool, Refused, RunReport};

/// Runs plugins and sends mail under one config. Cheap to clone; share one
/// between tasks.
#[derive(Clone)]
pub struct Host {
    inner: Arc<PluginHost>,
}

/// Builds a [`Host`].
#[derive(Default)]
pub struct HostBuilder {
    config: Config,
    options: HostOptions,
}

impl HostBuilder {
    /// The config: relay, audit log, spool, outbox and plugin policies.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Read the config from a TOML file.
    pub fn config_file(self, path: impl AsRef<Path>) -> Result<Self> {
        Ok(self.config(Config::load(path.as_ref())?))
    }

    /// Where the mailer's SMTP transcript goes, line by line (credentials
    /// already redacted). None by default.
    pub fn transcript(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.options.transcript = Some(Arc::new(sink));
        self
    }

    /// Where plugins' stdout and stderr lines go (prefixed `[name]`,
    /// escaped); the host's stderr by default.
    pub fn plugin_output(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.options.output = Some(Arc::new(sink));
        self
    }

    /// Keep relay sessions open between runs in `pool` (shared by hosts
    /// built with it), at most its number of connections at once.
    pub fn relay_pool(mut self, pool: Arc<MailerPool>) -> Self {
        self.options.pool = Some(pool);
        self
    }

    /// Start the engine (compiling the mailer, or loading it from the
    /// cache) and open the audit log.
    pub fn build(self) -> Result<Host> {
        self.build_on(&Runtime::new()?)
    }

    /// As [`HostBuilder::build`], on an engine already started (to share it
    /// between hosts, or when a config is reloaded).
    pub fn build_on(self, rt: &Runtime) -> Result<Host> {
        Ok(Host { inner: Arc::new(PluginHost::new(rt, self.config, self.options)?) })
    }
}

/// A plugin checked, compiled (or loaded from the cache) and linked, ready
/// to run many times. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<crate::plugin::Plugin>,
}

impl Plugin {
    /// Its name: the `[plugins.NAME]` policy it runs under.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The component's SHA-256, as in its audit records.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// Whether its compiled code came from the cache.
    pub fn from_cache(&self) -> bool {
        self.inner.cache == crate::engine::CacheOutcome::Hit
    }
}

/// What became of a message sent with [`Host::send`].
#[derive(Debug)]
pub struct SendReport {
    /// The relay's receipt, or why it was not delivered.
    pub result: Result<Receipt, SendError>,
    /// Where the message was kept for `wasmail retry`, when a retry may help.
    pub kept: Option<PathBuf>,
}

impl Host {
    /// A builder with the default config (the outbox, no relay).
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// A host for the config in the TOML file at `path`.
    pub fn from_config(path: impl AsRef<Path>) -> Result<Self> {
        Self::builder().config_file(path)?.build()
    }

    /// Check, compile (or load from the cache) and link `bytes` as plugin
    /// `name`. A refused import or a missing `run` is [`Refused`]; a file
    /// that is not a component, or over the engine's limits, is
    /// [`LoadFailed`] (match them with `error.is::<Refused>()`).
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<Plugin> {
        Ok(Plugin { inner: Arc::new(self.inner.load_bytes(name, bytes)?) })
    }

    /// Load the component at `path`, named by its file name without
    /// `wasmail_plugin_` (or by `name`).
    pub fn load_file(&self, path: impl AsRef<Path>) -> Result<Plugin> {
        self.load_file_as(path, None)
    }

    /// Load the component at `path` as plugin `name`, or by its file name.
    pub fn load_file_as(&self, path: impl AsRef<Path>, name: Option<&str>) -> Result<Plugin> {
        Ok(Plugin { inner: Arc::new(self.inner.load(path.as_ref(), name)?) })
    }

    /// Run `plugin` once with `input`, under its policy and limits. Errors
    /// are host failures before the plugin started; anything after (a limit,
    /// a trap, the plugin's own error) is in the report.
    pub async fn run(&self, plugin: &Plugin, input: &str) -> Result<RunReport> {
        self.inner.run(&plugin.inner, input).await
    }

    /// Run `plugin` for the job `job`: the job id goes into every audit
    /// record, and a redelivered job does not send again a message an
    /// earlier delivery attempted (the audit log knows which, by its place
    /// in the run). While another run of the same job goes on (in this
    /// process or another writing the same audit log), it does not start:
    /// the error is [`JobRunning`] (`error.is::<JobRunning>()`).
    pub async fn run_job(&self, plugin: &Plugin, input: &str, job: &str) -> Result<RunReport> {
        self.inner.run_job(&plugin.inner, input, Some(job)).await
    }

    /// Run `plugin` for `job`, an id the caller made for this run alone (no
    /// earlier delivery can have attempted it): the id goes into every audit
    /// record, and the audit log is not searched for earlier deliveries.
    pub async fn run_fresh_job(&self, plugin: &Plugin, input: &str, job: &str) -> Result<RunReport> {
        self.inner.run_fresh_job(&plugin.inner, input, job).await
    }

    /// Send one message to the config's relay (or its outbox). Attachments
    /// must be bytes: no file is opened on a caller's behalf. Its outcome is
    /// audited with no plugin and no client.
    pub async fn send(&self, message: &Message) -> Result<SendReport> {
        let (result, kept) = self.inner.send(message, None).await?;
        Ok(SendReport { result, kept })
    }

    /// [`Host::send`] on behalf of `client` (a name of the caller's, such
    /// as `serve`'s token name), which its audit record carries.
    pub async fn send_as(&self, message: &Message, client: &str) -> Result<SendReport> {
        let (result, kept) = self.inner.send(message, Some(client)).await?;
        Ok(SendReport { result, kept })
    }

    /// The config it runs under.
    pub fn config(&self) -> &Config {
        self.inner.config()
    }

    /// The audit log's path.
    pub fn audit_path(&self) -> &Path {
        self.inner.audit().path()
    }

    /// Make the audit log durable (fsync), e.g. before acknowledging a job.
    pub fn sync_audit(&self) -> Result<()> {
        self.inner.audit().sync()
    }
}
