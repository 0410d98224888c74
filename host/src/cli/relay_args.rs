//! The relay flags shared by `wasmail send` and `wasmail retry` (RFC 5321
//! submission, RFC 3207 STARTTLS, RFC 4954 AUTH), and how they become what
//! a mailer needs: resolved addresses, the secret, the TLS trust.

use crate::cli::report::{CliError, exit};
use crate::config::RelayConfig;
use crate::mail::deadletter::StoredRelay;
use crate::mailer::credentials::Secret;
use crate::mailer::relay::{Auth, RelaySettings, Tls, default_ehlo, split_server};
use crate::mailer::{resolve_relay, tls};
use std::time::Duration;

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
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
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
        Self {
            server: Some(r.server.clone()),
            tls: r.tls,
            tls_name: r.tls_name.clone(),
            ca_file: r.ca_file.clone(),
            user: r.user.clone(),
            password_env: secrets.password_env.clone(),
            password_file: secrets.password_file.clone(),
            auth: r.auth,
            ehlo: r.ehlo.clone(),
            timeout: secrets.timeout,
        }
    }

    /// Resolve the relay and gather what a mailer needs to reach it: the
    /// settings, the secret and the TLS trust. `Ok(None)` without a server.
    pub async fn resolve(
        &self,
        verbose: bool,
    ) -> Result<Option<(RelaySettings, Secret, tls::Provider)>, CliError> {
        let Some(server) = &self.server else { return Ok(None) };
        let (host, port) = split_server(server, self.tls).map_err(|e| CliError::new(exit::USAGE, "usage", format!("server: {e}")))?;
        if self.user.is_some() && self.password_env.is_none() && self.password_file.is_none() {
            return Err(CliError::new(exit::USAGE, "usage", "--user needs --password-env or --password-file"));
        }
        let secret = match (&self.password_env, &self.password_file) {
            (Some(var), _) => Secret::from_env(var),
            (None, Some(f)) => Secret::from_file(f),
            (None, None) => Ok(Secret::none()),
        }
        .map_err(|e| CliError::new(exit::CONFIG, "config", format!("{e:#}")))?;
        let provider = tls::Provider::new(self.ca_file.as_deref())
            .map_err(|e| CliError::new(exit::CONFIG, "config", format!("{e:#}")))?;
        let addresses = resolve_relay(&host, port)
            .await
            .map_err(|e| CliError::new(exit::UNAVAILABLE, "connect", format!("{e:#}")))?;
        let settings = RelaySettings {
            name: self.tls_name.clone().unwrap_or(host),
            addresses,
            port,
            tls: self.tls,
            ehlo: self.ehlo.clone().unwrap_or_else(default_ehlo),
            user: self.user.clone(),
            auth: self.auth,
            timeout: self.timeout.map(Duration::from_secs_f64),
            verbose,
        };
        Ok(Some((settings, secret, provider)))
    }
}

