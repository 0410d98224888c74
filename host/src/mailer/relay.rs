//! Relay settings: where the mailer may connect, how it secures the session
//! (RFC 3207 STARTTLS, RFC 8314 implicit TLS), how it authenticates
//! (RFC 4954) and the per-phase timeouts of RFC 5321 4.5.3.2.

use crate::bindings::transport::{AuthMechanism, Relay, Timeouts, TlsMode};
use crate::config::{Auth, RelayConfig, Tls};
use crate::mail::deadletter::StoredRelay;
use crate::mailer::credentials::Secret;
use crate::mailer::{resolve_relay, tls};
use std::time::Duration;

/// RFC 5321 4.5.3.2.1: the initial 220 greeting, 5 minutes.
pub const GREETING_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 4.5.3.2.2-3: MAIL and RCPT, 5 minutes (we use it for every command).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 4.5.3.2.4: the 354 reply to DATA, 2 minutes.
pub const DATA_INIT_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// RFC 5321 4.5.3.2.5: each data block, 3 minutes.
pub const DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// RFC 5321 4.5.3.2.6: the reply to the final dot, 10 minutes.
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// TCP connect and TLS handshake (not in RFC 5321): 1 minute.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The absolute cap on one reply, however slowly it trickles in.
pub const REPLY_CAP: Duration = Duration::from_secs(10 * 60);

/// The default port for a TLS mode: 465 for implicit TLS (RFC 8314), 587
/// for submission with STARTTLS (RFC 6409), 25 for plaintext.
pub fn default_port(tls: Tls) -> u16 {
    match tls {
        Tls::Implicit => 465,
        Tls::Starttls | Tls::Required => 587,
        Tls::None => 25,
    }
}

/// Split `HOST[:PORT]` (IPv6 in brackets).
pub fn split_server(server: &str, tls: Tls) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("unterminated [IPv6] address")?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match server.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_owned(), Some(p)),
            _ => (server.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        None => default_port(tls),
    };
    Ok((host, port))
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Timeouts, each capped by `limit` when given.
pub fn timeouts(limit: Option<Duration>) -> Timeouts {
    let cap = |d: Duration| ms(limit.map_or(d, |l| d.min(l)));
    Timeouts {
        connect_ms: cap(CONNECT_TIMEOUT),
        greeting_ms: cap(GREETING_TIMEOUT),
        command_ms: cap(COMMAND_TIMEOUT),
        data_init_ms: cap(DATA_INIT_TIMEOUT),
        data_block_ms: cap(DATA_BLOCK_TIMEOUT),
        data_end_ms: cap(DATA_END_TIMEOUT),
        reply_cap_ms: cap(REPLY_CAP),
    }
}

/// Everything needed to build the WIT `relay`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// The name (TLS server name).
    pub name: String,
    /// Resolved addresses.
    pub addresses: Vec<std::net::SocketAddr>,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: Tls,
    /// EHLO name.
    pub ehlo: String,
    /// AUTH user.
    pub user: Option<String>,
    /// AUTH mechanism.
    pub auth: Auth,
    /// Overall cap on each timeout.
    pub timeout: Option<Duration>,
    /// Transcript wanted.
    pub verbose: bool,
}

impl RelaySettings {
    /// The WIT record.
    pub fn to_wit(&self) -> Relay {
        Relay {
            host: self.name.clone(),
            addresses: self.addresses.iter().map(|a| a.ip().to_string()).collect(),
            port: self.port,
            tls: match self.tls {
                Tls::None => TlsMode::None,
                Tls::Starttls => TlsMode::Starttls,
                Tls::Required => TlsMode::Required,
                Tls::Implicit => TlsMode::Implicit,
            },
            ehlo: self.ehlo.clone(),
            user: self.user.clone(),
            auth: match self.auth {
                Auth::Auto => AuthMechanism::Auto,
                Auth::Plain => AuthMechanism::Plain,
                Auth::Login => AuthMechanism::Login,
                Auth::Xoauth2 => AuthMechanism::Xoauth2,
                Auth::CramMd5 => AuthMechanism::CramMd5,
            },
            timeouts: timeouts(self.timeout),
            verbose: self.verbose,
        }
    }
}

/// Why relay settings could not be turned into something to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// The settings contradict each other or are malformed.
    Usage(String),
    /// A file or variable they name cannot be read (CA file, password).
    Config(String),
    /// The relay's name does not resolve.
    Unreachable(String),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Config(m) | Self::Unreachable(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for RelayError {}

/// The relay flags shared by `wasmail send` and `wasmail retry`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RelayArgs {
    /// The relay, `HOST[:PORT]`.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub server: Option<String>,
    /// How to secure the connection.
    #[arg(long, value_enum, default_value_t)]
    pub tls: Tls,
    /// The name the server's certificate must carry (default: the server's host).
    #[arg(long, value_name = "NAME")]
    pub tls_name: Option<String>,
    /// Extra trusted CA certificates (PEM).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The AUTH user.
    #[arg(long)]
    pub user: Option<String>,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "password_file")]
    pub password_env: Option<String>,
    /// Read the password from the first line of this file.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,
    /// The AUTH mechanism.
    #[arg(long, value_enum, default_value_t)]
    pub auth: Auth,
    /// The EHLO name.
    #[arg(long)]
    pub ehlo: Option<String>,
    /// Cap every SMTP timeout at this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_timeout)]
    pub timeout: Option<f64>,
}

/// `--timeout`: seconds, checked as `relay.timeout_secs` is.
fn parse_timeout(text: &str) -> Result<f64, String> {
    let secs: f64 = text.trim().parse().map_err(|e| format!("{text:?} is not a number of seconds: {e}"))?;
    crate::config::timeout_cap(secs)?;
    Ok(secs)
}

impl RelayArgs {
    /// The same settings from a config file's `[relay]` table.
    pub fn from_config(r: &RelayConfig) -> Self {
        Self {
            server: Some(r.server.clone()),
            tls: r.tls,
            tls_name: r.tls_name.clone(),
            ca_file: r.ca_file.clone(),
            user: r.user.clone(),
            password_env: r.password_env.clone(),
            password_file: r.password_file.clone(),
            auth: r.auth,
            ehlo: r.ehlo.clone(),
            timeout: r.timeout_secs,
        }
    }

    /// What a kept letter records of these settings (no secret).
    pub fn stored(&self) -> Option<StoredRelay> {
        let server = self.server.as_deref()?;
        let (host, port) = split_server(server, self.tls).ok()?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Some(StoredRelay {
            server: format!("{host}:{port}"),
            tls: self.tls,
            tls_name: self.tls_name.clone(),
            ca_file: self.ca_file.clone(),
            user: self.user.clone(),
            auth: self.auth,
            ehlo: self.ehlo.clone(),
        })
    }

    /// The settings a letter recorded, with the secret taken from `secrets`
    /// (retry's own flags or config) and its timeout cap.
    pub fn from_stored(r: &StoredRelay, secrets: &Self) -> Self {
        let StoredRelay { server, tls, tls_name, ca_file, user, auth, ehlo } = r.clone();
        Self { server: Some(server), tls, tls_name, ca_file, user, auth, ehlo, ..secrets.clone() }
    }

    /// Resolve the relay and gather what a mailer needs to reach it: the
    /// settings, the secret and the TLS trust. `Ok(None)` without a server.
    pub async fn resolve(
        &self,
        verbose: bool,
    ) -> Result<Option<(RelaySettings, Secret, tls::Provider)>, RelayError> {
        let Some(server) = &self.server else { return Ok(None) };
        let (host, port) = split_server(server, self.tls).map_err(|e| RelayError::Usage(format!("server: {e}")))?;
        if self.user.is_some() && self.password_env.is_none() && self.password_file.is_none() {
            return Err(RelayError::Usage("--user needs --password-env or --password-file".into()));
        }
        let secret = match (&self.password_env, &self.password_file) {
            (Some(var), _) => Secret::from_env(var),
            (None, Some(f)) => Secret::from_file(f),
            (None, None) => Ok(Secret::none()),
        }
        .map_err(|e| RelayError::Config(format!("{e:#}")))?;
        let provider = tls::Provider::new(self.ca_file.as_deref())
            .map_err(|e| RelayError::Config(format!("{e:#}")))?;
        let addresses = resolve_relay(&host, port)
            .await
            .map_err(|e| RelayError::Unreachable(format!("{e:#}")))?;
        let settings = RelaySettings {
            name: self.tls_name.clone().unwrap_or(host),
            addresses,
            port,
            tls: self.tls,
            ehlo: self.ehlo.clone().unwrap_or_else(default_ehlo),
            user: self.user.clone(),
            auth: self.auth,
            timeout: self
                .timeout
                .map(crate::config::timeout_cap)
                .transpose()
                .map_err(|e| RelayError::Usage(format!("timeout: {e}")))?,
            verbose,
        };
        Ok(Some((settings, secret, provider)))
    }
}


/// The EHLO name when none is configured: this host's name if it is a
/// usable domain, else an address literal (RFC 5321 4.1.4).
pub fn default_ehlo() -> String {
    let name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let name = name.trim();
    if !name.is_empty() && name.contains('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        name.to_owned()
    } else {
        "[127.0.0.1]".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(split_server("mx.example:2525", Tls::None).unwrap(), ("mx.example".into(), 2525));
        assert_eq!(split_server("mx.example", Tls::Implicit).unwrap(), ("mx.example".into(), 465));
        assert_eq!(split_server("[::1]:25", Tls::None).unwrap(), ("::1".into(), 25));
        assert_eq!(split_server("::1", Tls::Required).unwrap(), ("::1".into(), 587));
        assert!(split_server("mx:x", Tls::None).is_err());
    }

    #[test]
    fn timeout_caps() {
        let t = timeouts(Some(Duration::from_secs(2)));
        assert_eq!(t.greeting_ms, 2000);
        assert_eq!(t.data_end_ms, 2000);
        let t = timeouts(None);
        assert_eq!(t.data_end_ms, 600_000);
        assert_eq!(t.data_init_ms, 120_000);
    }
}
