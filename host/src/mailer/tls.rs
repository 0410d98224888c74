//! The TLS provider behind the mailer's wasi:tls (RFC 8446 / RFC 5246 via
//! rustls): hostname verification against the configured server name, and a
//! transcript note with the negotiated protocol. The guest cannot turn
//! verification off: it only ever sees this provider.
//!
//! Trusted, all together: the system's store (rustls-native-certs:
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` when set, else the OS bundle, e.g.
//! /etc/ssl/certs on Debian), every certificate in `--ca-file`, and the
//! bundled Mozilla roots (webpki-roots), so a relay with a private CA that
//! the machine trusts works without flags, as it does with msmtp. The
//! system store is read at the first handshake, never for the outbox.

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport};

/// What `TlsProvider::connect` returns.
type BoxFutureTlsStream =
    std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>>;

/// Called with a note when a handshake completes (for the `-v` transcript).
pub type Notify = Arc<dyn Fn(String) + Send + Sync>;

/// A rustls client configuration with our trust roots, built at the first
/// handshake.
#[derive(Clone)]
pub struct Provider {
    extra: Arc<Vec<CertificateDer<'static>>>,
    config: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
    notify: Option<Notify>,
}

/// Every certificate of a PEM file.
fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading CA file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing CA file {}", path.display()))?;
    if certs.is_empty() {
        bail!("CA file {} holds no PEM certificate", path.display());
    }
    // Each must be usable as a trust anchor: one that is not would only be
    // skipped, and the relay's certificate then fail for another reason.
    for (i, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .with_context(|| format!("CA file {}: certificate {} is not usable as a CA", path.display(), i + 1))?;
    }
    Ok(certs)
}

impl Provider {
    /// Trust the system's store, every certificate in `ca_file` and the
    /// bundled Mozilla roots. `ca_file` is read now, so a bad one is a
    /// configuration error before anything is sent.
    pub fn new(ca_file: Option<&Path>) -> Result<Self> {
        let extra = match ca_file {
            Some(path) => read_pem(path)?,
            None => vec![],
        };
        Ok(Self { extra: Arc::new(extra), config: Arc::default(), notify: None })
    }

    /// The same trust, reporting handshakes to `notify`.
    pub fn with_notify(&self, notify: Notify) -> Self {
        Self { notify: Some(notify), ..self.clone() }
    }

    fn config(&self) -> Arc<rustls::ClientConfig> {
        Arc::clone(self.config.get_or_init(|| Arc::new(client_config(&self.extra))))
    }
}

/// The roots, in the order the module docs give, and the rustls config.
fn client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!("reading the system's certificates: {e}");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!("trusting {added} certificates from the system store ({ignored} unusable)");
    for cert in extra {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!("a certificate of --ca-file is not usable as a CA: {e}");
        }
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = rustls::crypto::ring::default_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider));
    // The ring provider supports TLS 1.2 and 1.3, so this cannot fail; if a
    // later rustls disagrees, fall back to its defaults.
    match builder.with_safe_default_protocol_versions() {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        Err(_) => rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    }
}

impl TlsProvider for Provider {
    fn connect(&self, server_name: String, transport: Box<dyn TlsTransport>) -> BoxFutureTlsStream {
        let config = self.config();
        let notify = self.notify.clone();
        Box::pin(async move {
            let name = ServerName::try_from(server_name.clone())
                .map_err(|_| wasmtime_wasi_tls::Error::msg(format!("invalid TLS server name {server_name:?}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, transport)
                .await
                .map_err(|e| wasmtime_wasi_tls::Error::msg(e.to_string()))?;
            if let Some(notify) = notify {
                let (_, conn) = stream.get_ref();
                let version = conn.protocol_version().map_or("unknown".into(), |v| format!("{v:?}"));
                let suite = conn.negotiated_cipher_suite().map_or("unknown".into(), |s| format!("{:?}", s.suite()));
                notify(format!("TLS negotiated: {version}, {suite}, certificate for {server_name} verified"));
            }
            Ok(Box::new(stream) as Box<dyn TlsStream>)
        })
    }
}
