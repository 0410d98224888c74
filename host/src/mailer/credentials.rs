//! `wasmail:mail/credentials`: hands the AUTH secret (RFC 4954) to the
//! mailer, and only to the mailer, at AUTH time. The secret never appears in
//! `Debug` output, logs or anything a plugin can reach.

use crate::bindings::wasmail::mail::credentials::Host;
use crate::mailer::MailerState;
use std::fmt;

/// A password or token held by the host. `Debug` shows `<redacted>`.
#[derive(Clone, Default)]
pub struct Secret(Option<String>);

impl Secret {
    /// No secret.
    pub fn none() -> Self {
        Self(None)
    }

    /// Read the secret from the environment variable `var`.
    pub fn from_env(var: &str) -> anyhow::Result<Self> {
        let v = std::env::var(var).map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))?;
        Ok(Self(Some(v)))
    }

    /// Read the secret from the first line of `path`.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading password file {}", path.display()))?;
        let line = text.lines().next().unwrap_or("").to_owned();
        Ok(Self(Some(line)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Secret(<redacted>)" } else { "Secret(None)" })
    }
}

impl Host for MailerState {
    async fn secret(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.secret.0.clone())
    }
}
