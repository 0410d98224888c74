//! `wasmail.toml`: the relay (RFC 5321 submission settings), the audit log,
//! DKIM signing identities (RFC 6376) and one policy table per plugin. Unknown keys are errors, so a typo never
//! silently loosens a policy.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// CRAM-MD5 (RFC 2195): the password never crosses the wire.
    #[serde(rename = "cram-md5")]
    CramMd5,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where mail goes. Without it, mail goes to the outbox.
    pub relay: Option<RelayConfig>,
    /// The outbox folder (used when there is no relay).
    pub outbox: Option<PathBuf>,
    /// The audit log (JSON lines), default `wasmail-audit.jsonl`.
    pub audit: Option<PathBuf>,
    /// Where undelivered messages are kept, default `dead-letter`.
    pub dead_letter: Option<PathBuf>,
    /// One table per plugin, by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// DKIM signing identities, by name; a plugin's `dkim` names one.
    #[serde(default)]
    pub dkim: BTreeMap<String, DkimConfig>,
}

/// `[dkim.NAME]`: a signing identity (RFC 6376). The key stays in the host;
/// the mailer only ever gets signatures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// `d=`: mail is signed only when its From domain is this domain or one
    /// of its subdomains.
    pub domain: String,
    /// `s=`: the record is at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA), mode 0600.
    pub key_file: PathBuf,
    /// `rsa-sha256` or `ed25519-sha256`; when given, the key must be of
    /// that type.
    pub algorithm: Option<crate::mail::dkim::KeyType>,
    /// `header/body`, `relaxed/relaxed` by default.
    #[serde(default)]
    pub canonicalization: crate::mail::dkim::Canonicalization,
    /// Header names signed besides From, Reply-To, To, Cc, Subject, Date,
    /// Message-ID, X-Priority, MIME-Version and Content-Type (a plugin's
    /// `allowed_headers` are added to these).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Signatures expire (`x=`) this many seconds after they are made.
    pub expire_secs: Option<u64>,
}

impl DkimConfig {
    /// Load the key and make the identity, signing also `extra_headers`.
    pub fn signing(&self, name: &str, extra_headers: &[String]) -> Result<crate::mail::dkim::Signing> {
        use crate::mail::dkim::{Signing, SigningKey};
        let key = SigningKey::load(&self.key_file).with_context(|| format!("dkim.{name}"))?;
        if let Some(want) = self.algorithm
            && want != key.key_type()
        {
            anyhow::bail!(
                "dkim.{name}.algorithm: {} is {}, not {}",
                self.key_file.display(),
                key.key_type().algorithm(),
                want.algorithm()
            );
        }
        let mut s = Signing::new(&self.domain, &self.selector, key).with_context(|| format!("dkim.{name}"))?;
        s.canonicalization = self.canonicalization;
        s.expire_secs = self.expire_secs;
        s.headers(self.headers.iter().chain(extra_headers).cloned()).with_context(|| format!("dkim.{name}"))
    }
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// `HOST[:PORT]`.
    pub server: String,
    /// TLS mode (default `required`).
    #[serde(default)]
    pub tls: Tls,
    /// The certificate name, when `server` is an IP address.
    pub tls_name: Option<String>,
    /// Extra trusted CAs (PEM).
    pub ca_file: Option<PathBuf>,
    /// AUTH user.
    pub user: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// AUTH mechanism.
    #[serde(default)]
    pub auth: Auth,
    /// EHLO name.
    pub ehlo: Option<String>,
    /// Cap on every SMTP timeout, in seconds.
    pub timeout_secs: Option<f64>,
    /// SMTP sessions one run may hold open to the relay at once (default 1,
    /// at most [`MAX_RELAY_SESSIONS`]). With more than one, the batches of
    /// a plugin's `send-many` go out in parallel, each on its own session;
    /// another session opens only when a batch is ready while every open
    /// one is busy.
    pub sessions: Option<usize>,
}

/// The most SMTP sessions `relay.sessions` may ask for: a relay counts a
/// client's connections, and each session is a mailer instance.
pub const MAX_RELAY_SESSIONS: usize = 8;

/// The largest timeout cap (`relay.timeout_secs`, `--timeout`), in seconds:
/// a day, far past RFC 5321's longest timeout (10 minutes, 4.5.3.2).
pub const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// A timeout cap of `secs` seconds, if it is a number above 0 and at most
/// [`MAX_TIMEOUT_SECS`] (not negative, NaN or infinite).
pub fn timeout_cap(secs: f64) -> Result<std::time::Duration, String> {
    if !(secs > 0.0 && secs <= MAX_TIMEOUT_SECS) {
        return Err(format!("{secs} is not a number of seconds above 0 and at most {MAX_TIMEOUT_SECS}"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|e| format!("{secs}: {e}"))
}

impl RelayConfig {
    /// `relay.sessions`, 1 when not set.
    pub fn sessions(&self) -> usize {
        self.sessions.unwrap_or(1)
    }

    /// Check values that parse but cannot work; the error names the key.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.sessions {
            anyhow::ensure!(
                (1..=MAX_RELAY_SESSIONS).contains(&n),
                "relay.sessions: {n} is not between 1 and {MAX_RELAY_SESSIONS}"
            );
        }
        if let Some(secs) = self.timeout_secs {
            timeout_cap(secs).map_err(|e| anyhow::anyhow!("relay.timeout_secs: {e}"))?;
        }
        Ok(())
    }
}

/// `[plugins.NAME]`: the policy and limits of one plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file: what `wasmail serve` and `wasmail worker` load
    /// (`wasmail run` takes the path on its command line).
    pub path: Option<PathBuf>,
    /// Runs of this plugin at once under `wasmail serve` (default: its
    /// `--max-runs`); more are refused with `429`.
    pub max_concurrent_runs: Option<usize>,
    /// Allowed From addresses or patterns (`*@example.com`).
    #[serde(default)]
    pub allowed_from: Vec<String>,
    /// Allowed Reply-To addresses or patterns; by default the `allowed_from`
    /// patterns.
    pub allowed_reply_to: Option<Vec<String>>,
    /// Whether a display name may hold an `@` (or a look-alike), which can
    /// pass for an address: `"ceo@bank.example" <bot@example.com>`.
    #[serde(default)]
    pub allow_address_in_display_name: bool,
    /// The From used when the plugin gives none, `Name <addr>`.
    pub default_from: Option<String>,
    /// Allowed recipient patterns, checked on To, Cc and Bcc alike.
    #[serde(default)]
    pub allowed_recipients: Vec<String>,
    /// Most recipients (To + Cc + Bcc) per message.
    #[serde(default = "defaults::max_recipients")]
    pub max_recipients: usize,
    /// Most messages per run.
    #[serde(default = "defaults::max_messages")]
    pub max_messages: u32,
    /// Most calls to `send` per run, refused ones included; past it the run
    /// is stopped. Default: [`defaults::ATTEMPTS_PER_MESSAGE`] × `max_messages`.
    pub max_attempts: Option<u64>,
    /// Most attachments per message, checked before any file is opened.
    #[serde(default = "defaults::max_attachments")]
    pub max_attachments: usize,
    /// Largest plugin component file, checked before it is read or compiled.
    #[serde(default = "defaults::max_component_bytes")]
    pub max_component_bytes: u64,
    /// Messages per minute (token bucket, burst = one minute's worth).
    pub rate_per_minute: Option<u32>,
    /// Largest message, in octets.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u64,
    /// Custom header names the plugin may set (case-insensitive).
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Linear memory, MiB.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// CPU time spent in wasm, milliseconds.
    #[serde(default = "defaults::cpu_ms")]
    pub cpu_ms: u64,
    /// Wall-clock time for the whole run, milliseconds.
    #[serde(default = "defaults::wall_ms")]
    pub wall_ms: u64,
    /// Most live resources (streams, pollables, ...).
    #[serde(default = "defaults::max_resources")]
    pub max_resources: usize,
    /// Captured stdout+stderr, bytes; the rest is dropped with a note.
    #[serde(default = "defaults::max_output_bytes")]
    pub max_output_bytes: usize,
    /// A folder the plugin may read, mounted read-only at `/data`.
    pub folder: Option<PathBuf>,
    /// The `[dkim.NAME]` identity its mail is signed with (only mail whose
    /// From is in that identity's domain).
    pub dkim: Option<String>,
}

/// Default limits: what a plugin gets when its table leaves a key out.
pub mod defaults {
    /// Recipients per message.
    pub const MAX_RECIPIENTS: usize = 50;
    /// Messages per run.
    pub const MAX_MESSAGES: u32 = 100;
    /// Message size: 10 MiB.
    pub const MAX_MESSAGE_BYTES: u64 = 10 << 20;
    /// Memory: 64 MiB.
    pub const MEMORY_MIB: u64 = 64;
    /// CPU: 5 s.
    pub const CPU_MS: u64 = 5_000;
    /// Wall clock: 60 s.
    pub const WALL_MS: u64 = 60_000;
    /// Resources: 1,000.
    pub const MAX_RESOURCES: usize = 1_000;
    /// Output: 1 MiB.
    pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
    /// Attempts per run: this many per allowed message.
    pub const ATTEMPTS_PER_MESSAGE: u64 = 3;
    /// Attachments per message.
    pub const MAX_ATTACHMENTS: usize = 100;
    /// Component size: 64 MiB (a componentize-py plugin is about 18 MB).
    pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
    /// The largest `max_message_bytes` a plugin may be given: its messages
    /// are written ahead whole before delivery.
    pub const MAX_SPOOLED_MESSAGE_BYTES: u64 = 64 << 20;

    pub(super) fn max_attachments() -> usize {
        MAX_ATTACHMENTS
    }
    pub(super) fn max_component_bytes() -> u64 {
        MAX_COMPONENT_BYTES
    }

    pub(super) fn max_recipients() -> usize {
        MAX_RECIPIENTS
    }
    pub(super) fn max_messages() -> u32 {
        MAX_MESSAGES
    }
    pub(super) fn max_message_bytes() -> u64 {
        MAX_MESSAGE_BYTES
    }
    pub(super) fn memory_mib() -> u64 {
        MEMORY_MIB
    }
    pub(super) fn cpu_ms() -> u64 {
        CPU_MS
    }
    pub(super) fn wall_ms() -> u64 {
        WALL_MS
    }
    pub(super) fn max_resources() -> usize {
        MAX_RESOURCES
    }
    pub(super) fn max_output_bytes() -> usize {
        MAX_OUTPUT_BYTES
    }
}

impl PluginConfig {
    /// The policy for a plugin with no table, used only when mail goes to the
    /// outbox (nothing leaves the machine): any From and recipient, default
    /// limits, From `plugin@localhost`.
    pub fn outbox_default() -> Self {
        Self {
            path: None,
            max_concurrent_runs: None,
            allowed_from: vec!["*".into()],
            allowed_reply_to: None,
            allow_address_in_display_name: false,
            default_from: Some("wasmail plugin <plugin@localhost>".into()),
            allowed_recipients: vec!["*".into()],
            max_recipients: defaults::MAX_RECIPIENTS,
            max_messages: defaults::MAX_MESSAGES,
            max_attempts: None,
            max_attachments: defaults::MAX_ATTACHMENTS,
            max_component_bytes: defaults::MAX_COMPONENT_BYTES,
            rate_per_minute: None,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            allowed_headers: vec!["X-Mailer".into()],
            memory_mib: defaults::MEMORY_MIB,
            cpu_ms: defaults::CPU_MS,
            wall_ms: defaults::WALL_MS,
            max_resources: defaults::MAX_RESOURCES,
            max_output_bytes: defaults::MAX_OUTPUT_BYTES,
            folder: None,
            dkim: None,
        }
    }
}

impl PluginConfig {
    /// The attempt budget of a run.
    pub fn max_attempts(&self) -> u64 {
        self.max_attempts.unwrap_or(u64::from(self.max_messages).saturating_mul(defaults::ATTEMPTS_PER_MESSAGE).max(1))
    }

    /// The Reply-To patterns: `allowed_reply_to`, else `allowed_from`.
    pub fn allowed_reply_to(&self) -> &[String] {
        self.allowed_reply_to.as_deref().unwrap_or(&self.allowed_from)
    }

    /// Check values that parse but cannot work; the error names the key.
    pub fn validate(&self, name: &str) -> Result<()> {
        anyhow::ensure!(
            self.max_message_bytes <= defaults::MAX_SPOOLED_MESSAGE_BYTES,
            "plugins.{name}.max_message_bytes: {} is over {} (plugin mail is written ahead whole before delivery)",
            self.max_message_bytes,
            defaults::MAX_SPOOLED_MESSAGE_BYTES
        );
        Ok(())
    }
}

impl Config {
    /// Read and parse a config file. Relative paths inside it are relative
    /// to the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: Config = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(r) = &mut c.relay {
            r.ca_file.as_mut().map(fix);
            r.password_file.as_mut().map(fix);
        }
        c.outbox.as_mut().map(fix);
        c.audit.as_mut().map(fix);
        c.dead_letter.as_mut().map(fix);
        for d in c.dkim.values_mut() {
            fix(&mut d.key_file);
        }
        for p in c.plugins.values_mut() {
            p.path.as_mut().map(fix);
            p.folder.as_mut().map(fix);
        }
        c.validate().with_context(|| format!("in {}", path.display()))?;
        Ok(c)
    }

    /// Check values that parse but cannot work, in the relay and in each
    /// plugin's table; the error names the key. A config built in code
    /// (the library) is checked the same way as one read from a file.
    pub fn validate(&self) -> Result<()> {
        if let Some(r) = &self.relay {
            r.validate()?;
        }
        for (name, p) in &self.plugins {
            p.validate(name)?;
            if let Some(d) = &p.dkim
                && !self.dkim.contains_key(d)
            {
                anyhow::bail!("plugins.{name}.dkim: there is no [dkim.{d}] table");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            r#"
            [relay]
            server = "127.0.0.1:2525"
            tls = "none"
            [plugins.hello]
            allowed_from = ["*@example.com"]
            allowed_recipients = ["*@example.org"]
            max_recipients = 3
            "#,
        )
        .unwrap();
        let relay = c.relay.unwrap();
        assert_eq!(relay.tls, Tls::None);
        assert_eq!(relay.sessions(), 1);
        assert_eq!(c.plugins["hello"].max_recipients, 3);
        assert_eq!(c.plugins["hello"].cpu_ms, defaults::CPU_MS);
        let bad = toml::from_str::<Config>("[plugins.x]\nallowed_recipient = [\"*\"]\n");
        assert!(bad.is_err(), "a typo must not silently drop a rule");
    }

    #[test]
    fn relay_sessions_are_bounded_and_named() {
        for (n, ok) in [(1, true), (MAX_RELAY_SESSIONS, true), (0, false), (MAX_RELAY_SESSIONS + 1, false)] {
            let c: Config = toml::from_str(&format!("[relay]\nserver = \"127.0.0.1\"\nsessions = {n}\n")).unwrap();
            let checked = c.relay.unwrap().validate();
            assert_eq!(checked.is_ok(), ok, "{n}");
            if let Err(e) = checked {
                assert!(e.to_string().starts_with("relay.sessions: "), "{e}");
            }
        }
        assert!(toml::from_str::<Config>("[relay]\nserver = \"x\"\nsessions = -1\n").is_err());
    }

    #[test]
    fn a_timeout_cap_that_is_not_a_positive_number_is_named() {
        // TOML spells NaN and infinity; a negative or NaN cap once reached
        // `Duration::from_secs_f64` and panicked.
        for (value, ok) in [("0.5", true), ("86400", true), ("-1.0", false), ("0.0", false), ("nan", false), ("inf", false), ("1e300", false)] {
            let c: Config = toml::from_str(&format!("[relay]\nserver = \"127.0.0.1\"\ntimeout_secs = {value}\n")).unwrap();
            let checked = c.relay.unwrap().validate();
            assert_eq!(checked.is_ok(), ok, "{value}");
            if let Err(e) = checked {
                assert!(e.to_string().starts_with("relay.timeout_secs: "), "{e}");
            }
        }
        assert!(timeout_cap(f64::NAN).is_err() && timeout_cap(-0.0).is_err());
    }

    #[test]
    fn dkim_tables() {
        let c: Config = toml::from_str(
            r#"
            [dkim.main]
            domain = "example.com"
            selector = "s2026"
            key_file = "keys/s2026.private"
            algorithm = "ed25519-sha256"
            canonicalization = "relaxed/simple"
            headers = ["List-Unsubscribe"]
            expire_secs = 604800
            [plugins.hello]
            dkim = "main"
            "#,
        )
        .unwrap();
        let d = &c.dkim["main"];
        assert_eq!(d.algorithm, Some(crate::mail::dkim::KeyType::Ed25519));
        assert_eq!(d.canonicalization.to_string(), "relaxed/simple");
        assert_eq!(c.plugins["hello"].dkim.as_deref(), Some("main"));
        assert!(toml::from_str::<Config>("[dkim.x]\ndomain = \"a\"\nselector = \"b\"\nkey_file = \"k\"\nkey = \"k\"\n").is_err());
        assert!(toml::from_str::<Config>("[dkim.x]\ndomain = \"a\"\nselector = \"b\"\nkey_file = \"k\"\ncanonicalization = \"loose\"\n").is_err());
        assert!(toml::from_str::<Config>("[dkim.x]\ndomain = \"a\"\nselector = \"b\"\nkey_file = \"k\"\nalgorithm = \"rsa\"\n").is_err());
    }
}
