//! Relay settings: where the mailer may connect, how it secures the session
//! (RFC 3207 STARTTLS, RFC 8314 implicit TLS), how it authenticates
//! (RFC 4954) and the per-phase timeouts of RFC 5321 4.5.3.2.

use crate::bindings::transport::{AuthMechanism, Relay, Timeouts, TlsMode};
use serde::{Deserialize, Serialize};
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

/// `--tls` / `tls =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Plaintext (must be chosen explicitly).
    None,
    /// STARTTLS when offered; never AUTH in plaintext.
    Starttls,
    /// STARTTLS or fail (the default).
    #[default]
    Required,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// `--auth` / `auth =`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// The best the server offers.
    #[default]
    Auto,
    /// SASL PLAIN.
    Plain,
    /// LOGIN.
    Login,
    /// XOAUTH2 (the secret is a bearer token).
    Xoauth2,
}

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
            },
            timeouts: timeouts(self.timeout),
            verbose: self.verbose,
        }
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
