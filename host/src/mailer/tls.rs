//! The TLS provider behind the mailer's wasi:tls (RFC 8446 / RFC 5246 via
//! rustls): the bundled Mozilla roots plus any private CA from `--ca-file`,
//! hostname verification against the configured server name, and a
//! transcript note with the negotiated protocol. The guest cannot turn
//! verification off: it only ever sees this provider.

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport};

/// What `TlsProvider::connect` returns.
type BoxFutureTlsStream =
    std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>>;

/// Called with a note when a handshake completes (for the `-v` transcript).
pub type Notify = Arc<dyn Fn(String) + Send + Sync>;

/// A rustls client configuration with our trust roots.
#[derive(Clone)]
pub struct Provider {
    config: Arc<rustls::ClientConfig>,
    notify: Option<Notify>,
}

impl Provider {
    /// Trust the bundled Mozilla roots, plus every certificate in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Self> {
        let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading CA file {}", path.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing CA file {}", path.display()))?;
            if certs.is_empty() {
                bail!("CA file {} holds no PEM certificate", path.display());
            }
            for cert in certs {
                roots.add(cert).with_context(|| format!("adding a CA from {}", path.display()))?;
            }
        }
        let provider = rustls::crypto::ring::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { config: Arc::new(config), notify: None })
    }

    /// The same trust, reporting handshakes to `notify`.
    pub fn with_notify(&self, notify: Notify) -> Self {
        Self { config: Arc::clone(&self.config), notify: Some(notify) }
    }
}

impl TlsProvider for Provider {
    fn connect(&self, server_name: String, transport: Box<dyn TlsTransport>) -> BoxFutureTlsStream {
        let config = Arc::clone(&self.config);
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
