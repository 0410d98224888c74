//! The mailer component's store and handle: a WASI context whose socket check
//! allows TCP connect to the relay's addresses only (RFC 5321 submission to
//! one relay), wasi:tls through the host's verifying provider, and the
//! `credentials`, `limits`, `blobs`, `transcript` and `signer` (DKIM)
//! imports. Deny by default: no files, no environment, no UDP, no name
//! lookups.

pub mod blobs;
pub mod credentials;
pub mod limits;
pub mod relay;
pub mod signer;
pub mod tls;
pub mod transcript;

use crate::bindings::transport::{Envelope, Relay, Rendered, Undelivered};
use crate::bindings::types::{Message, Receipt, SendError};
use crate::bindings::{Mailer as MailerBindings, MailerPre};
use crate::mailer::blobs::BlobAccess;
use crate::mailer::credentials::Secret;
use crate::mail::dkim::Signing;
use crate::engine::{self, AnyhowExt, CacheOutcome};
use crate::mailer::transcript::Sink;
use anyhow::{Context, Result};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_tls::{WasiTlsCtx, WasiTlsCtxBuilder, WasiTlsCtxView, WasiTlsView};

/// The mailer component, built by `make build` and embedded at compile time.
pub const MAILER_WASM: &[u8] = include_bytes!(env!("WASMAIL_MAILER_WASM"));

/// Memory the mailer may use. Attachments stream, so this does not grow
/// with message size.
pub const MAILER_MEMORY_BYTES: usize = 256 << 20;
/// Epoch ticks the mailer runs between yields to the async runtime. It is
/// never stopped for CPU (it is ours; its deadlines are SMTP timeouts), but
/// it yields every tick, so the `wall_ms` of the plugin run it works for can
/// stop it in the middle of assembling a large message.
const MAILER_YIELD_TICKS: u64 = 1;

/// The mailer's store data.
pub struct MailerState {
    wasi: WasiCtx,
    tls: WasiTlsCtx,
    pub(crate) table: ResourceTable,
    pub(crate) secret: Secret,
    pub(crate) blobs: BlobAccess,
    pub(crate) progress: Option<blobs::Progress>,
    pub(crate) max_message_bytes: Option<u64>,
    pub(crate) transcript: Option<Sink>,
    /// The DKIM identity and key; only signatures reach the store.
    pub(crate) signing: Option<Arc<Signing>>,
    /// Signatures made for this mailer.
    pub(crate) signatures: u64,
    limits: StoreLimits,
}

impl WasiView for MailerState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiTlsView for MailerState {
    fn tls(&mut self) -> WasiTlsCtxView<'_> {
        WasiTlsCtxView { ctx: &mut self.tls, table: &mut self.table }
    }
}

impl crate::bindings::wasmail::mail::types::Host for MailerState {}

/// The compiled mailer, ready to instantiate many times.
#[derive(Clone)]
pub struct MailerFactory {
    pre: MailerPre<MailerState>,
    /// Whether the compiled code came from the cache.
    pub cache: CacheOutcome,
}

impl MailerFactory {
    /// Compile (or load from cache) the embedded mailer and link its imports.
    pub fn new(engine: &Engine) -> Result<Self> {
        let (component, cache) = engine::load_component(engine, MAILER_WASM, "the mailer component")?;
        let mut linker: Linker<MailerState> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).anyhow().context("linking WASI for the mailer")?;
        let mut tls_opts = wasmtime_wasi_tls::p2::LinkOptions::default();
        tls_opts.tls(true);
        wasmtime_wasi_tls::p2::add_to_linker(&mut linker, &tls_opts).anyhow().context("linking wasi:tls")?;
        use crate::bindings::wasmail::mail::{blobs, credentials, limits, signer, transcript, types};
        types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        credentials::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        limits::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        blobs::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        transcript::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        signer::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).anyhow()?;
        let pre = linker.instantiate_pre(&component).anyhow().context("linking the mailer component")?;
        Ok(Self { pre: MailerPre::new(pre).anyhow().context("the mailer's exports")?, cache })
    }
}

/// Opens sessions to one relay, each a mailer instance with the same grant
/// (the relay's addresses, its secret, its trust): a run's first session
/// and the more `relay.sessions` allows. No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct RelayOpener {
    factory: MailerFactory,
    addresses: Vec<SocketAddr>,
    secret: Secret,
    tls: tls::Provider,
    transcript: Option<Sink>,
    settings: Relay,
}

impl RelayOpener {
    /// The opener for `settings`, connecting to `addresses` only.
    pub fn new(factory: &MailerFactory, addresses: &[SocketAddr], secret: Secret, tls: tls::Provider, settings: Relay) -> Self {
        Self { factory: factory.clone(), addresses: addresses.to_vec(), secret, tls, transcript: None, settings }
    }

    /// Send `-v` lines to `sink`.
    pub fn transcript(mut self, sink: Option<Sink>) -> Self {
        self.transcript = sink;
        self
    }

    /// The relay settings every session gets.
    pub fn settings(&self) -> &Relay {
        &self.settings
    }

    /// A configured mailer for a new session (it connects on its first
    /// submission).
    pub async fn open(&self) -> Result<Mailer> {
        let grant = MailerGrant::relay(&self.addresses, self.secret.clone(), self.tls.clone()).transcript(self.transcript.clone());
        let mut mailer = Mailer::new(&self.factory, grant).await?;
        mailer.configure(&self.settings).await?;
        Ok(mailer)
    }
}

/// What a mailer instance may do.
pub struct MailerGrant {
    /// The relay's addresses; TCP connect to these (and nothing else) is allowed.
    pub relay_addrs: Vec<SocketAddr>,
    /// The AUTH secret.
    pub secret: Secret,
    /// Attachment files it may open.
    pub blobs: BlobAccess,
    /// Told as attachment files are read.
    pub progress: Option<blobs::Progress>,
    /// The policy's size limit on every message.
    pub max_message_bytes: Option<u64>,
    /// Where `-v` lines go.
    pub transcript: Option<Sink>,
    /// The TLS trust.
    pub tls: tls::Provider,
    /// Sign mail with this DKIM identity (the key stays in the host).
    pub signing: Option<Arc<Signing>>,
}

impl MailerGrant {
    /// Render only (the outbox): no address to connect to, no secret, no
    /// files, no transcript, no size limit.
    pub fn outbox(tls: tls::Provider) -> Self {
        Self {
            relay_addrs: vec![],
            secret: Secret::none(),
            blobs: BlobAccess::Deny,
            progress: None,
            max_message_bytes: None,
            transcript: None,
            tls,
            signing: None,
        }
    }

    /// Reach the relay at `addresses` (and nothing else) with `secret`.
    pub fn relay(addresses: &[SocketAddr], secret: Secret, tls: tls::Provider) -> Self {
        Self { relay_addrs: addresses.to_vec(), secret, ..Self::outbox(tls) }
    }

    /// Attachment files it may open.
    pub fn blobs(mut self, blobs: BlobAccess) -> Self {
        self.blobs = blobs;
        self
    }

    /// Report attachment bytes as they are read.
    pub fn progress(mut self, progress: Option<blobs::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// Refuse messages over `max` octets.
    pub fn max_message_bytes(mut self, max: u64) -> Self {
        self.max_message_bytes = Some(max);
        self
    }

    /// Report the SMTP dialogue here (`-v`).
    pub fn transcript(mut self, sink: Option<Sink>) -> Self {
        self.transcript = sink;
        self
    }

    /// Sign every message whose From is in its domain with this DKIM identity.
    pub fn signing(mut self, signing: Option<Arc<Signing>>) -> Self {
        self.signing = signing;
        self
    }
}

/// A running mailer instance in its own store.
pub struct Mailer {
    store: Store<MailerState>,
    bindings: MailerBindings,
}

fn socket_check(allowed: Arc<HashSet<SocketAddr>>) -> impl Fn(SocketAddr, SocketAddrUse) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + Sync>> + Send + Sync + 'static {
    move |addr, use_| {
        let ok = match use_ {
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            // connect() first binds implicitly to the unspecified address,
            // port 0; nothing else may be bound.
            SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
            _ => false,
        };
        if !ok {
            tracing::warn!("socket check denied the mailer {use_:?} {addr}");
        }
        Box::pin(async move { ok })
    }
}

impl Mailer {
    /// Instantiate the mailer with exactly the grants in `grant`.
    pub async fn new(factory: &MailerFactory, grant: MailerGrant) -> Result<Self> {
        let allowed: Arc<HashSet<SocketAddr>> = Arc::new(grant.relay_addrs.iter().copied().collect());
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(true)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(socket_check(allowed));
        let provider = match &grant.transcript {
            Some(sink) => {
                let sink = Arc::clone(sink);
                grant.tls.with_notify(Arc::new(move |note: String| sink(&format!("* {note}"))))
            }
            None => grant.tls.clone(),
        };
        let state = MailerState {
            wasi: wasi.build(),
            tls: WasiTlsCtxBuilder::new().provider(Box::new(provider)).build(),
            table: ResourceTable::new(),
            secret: grant.secret,
            blobs: grant.blobs,
            progress: grant.progress,
            max_message_bytes: grant.max_message_bytes,
            transcript: grant.transcript,
            signing: grant.signing,
            signatures: 0,
            limits: StoreLimitsBuilder::new().memory_size(MAILER_MEMORY_BYTES).build(),
        };
        let mut store = Store::new(factory.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(MAILER_YIELD_TICKS);
        let bindings = factory.pre.instantiate_async(&mut store).await.anyhow().context("instantiating the mailer")?;
        Ok(Self { store, bindings })
    }

    /// Point the mailer at the relay.
    pub async fn configure(&mut self, relay: &Relay) -> Result<()> {
        self.bindings
            .wasmail_mail_transport()
            .call_configure(&mut self.store, relay)
            .await
            .anyhow()
            .context("calling the mailer's configure")?
            .map_err(|e| anyhow::anyhow!("relay settings refused: {e}"))
    }

    /// Assemble and send one message over the kept-open session.
    pub async fn send(&mut self, msg: &Message) -> Result<Result<Receipt, SendError>> {
        self.bindings.wasmail_mail_sender().call_send(&mut self.store, msg).await.anyhow().context("calling the mailer's send")
    }

    /// Send one message; a failure a retry may fix comes back with the exact
    /// message, for the dead-letter folder.
    pub async fn deliver(&mut self, msg: &Message) -> Result<Result<Receipt, Undelivered>> {
        self.bindings
            .wasmail_mail_transport()
            .call_deliver(&mut self.store, msg)
            .await
            .anyhow()
            .context("calling the mailer's deliver")
    }

    /// Assemble without sending (the outbox).
    pub async fn render(&mut self, msg: &Message) -> Result<Result<Rendered, SendError>> {
        self.bindings
            .wasmail_mail_transport()
            .call_render(&mut self.store, msg)
            .await
            .anyhow()
            .context("calling the mailer's render")
    }

    /// Send already assembled bytes.
    pub async fn submit(&mut self, envelope: &Envelope, bytes: &[u8]) -> Result<Result<Receipt, SendError>> {
        self.bindings
            .wasmail_mail_transport()
            .call_submit(&mut self.store, envelope, bytes)
            .await
            .anyhow()
            .context("calling the mailer's submit")
    }

    /// Send already assembled messages as one pipelined batch: one result
    /// per message, in order.
    pub async fn submit_many(&mut self, msgs: &[Rendered]) -> Result<Vec<Result<Receipt, SendError>>> {
        self.bindings
            .wasmail_mail_transport()
            .call_submit_many(&mut self.store, msgs)
            .await
            .anyhow()
            .context("calling the mailer's submit-many")
    }

    /// How many DKIM signatures the host made for this mailer.
    pub fn signatures(&self) -> u64 {
        self.store.data().signatures
    }

    /// QUIT and close the session.
    pub async fn close(&mut self) -> Result<()> {
        self.bindings.wasmail_mail_transport().call_close(&mut self.store).await.anyhow().context("calling the mailer's close")
    }
}

/// Resolve a relay name to the socket addresses the mailer may connect to.
pub async fn resolve_relay(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving relay {host}"))?
        .collect();
    anyhow::ensure!(!addrs.is_empty(), "relay {host} has no address");
    Ok(addrs)
}
