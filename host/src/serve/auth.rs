//! Bearer tokens for `wasmail serve` (RFC 6750): who may run which plugin
//! and who may send. Read from a TOML file that only its owner may read;
//! tokens are compared as SHA-256 digests, never as text.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;

/// The most tokens a file may hold.
pub const MAX_TOKENS: usize = 10_000;
/// The shortest token accepted: guessing must be hopeless.
pub const MIN_TOKEN_CHARS: usize = 16;

/// One `[[token]]` of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// Who holds it, for logs and metrics.
    name: String,
    /// The bearer token itself.
    token: String,
    /// The plugins it may run (`"*"`: all).
    #[serde(default)]
    plugins: Vec<String>,
    /// Whether it may use `POST /v1/messages`.
    #[serde(default)]
    send: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// What a token allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The holder's name.
    pub name: String,
    plugins: Vec<String>,
    /// May send plain messages.
    pub send: bool,
}

impl Grant {
    /// Whether it may run `plugin`.
    pub fn may_run(&self, plugin: &str) -> bool {
        self.plugins.iter().any(|p| p == "*" || p == plugin)
    }
}

/// The tokens, by digest.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: std::collections::HashMap<[u8; 32], Grant>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Read the token file at `path`. It must not be readable by group or
    /// others (like a key), and every token must be long enough.
    pub fn load(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).with_context(|| format!("tokens: {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!("tokens: {} can be read by others (mode {:o}); chmod 600 it", path.display(), meta.permissions().mode() & 0o777);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("tokens: {}", path.display()))?;
        let file: TokenFile = toml::from_str(&text).with_context(|| format!("tokens: {}", path.display()))?;
        if file.token.len() > MAX_TOKENS {
            bail!("tokens: more than {MAX_TOKENS} tokens in {}", path.display());
        }
        let mut by_digest = std::collections::HashMap::new();
        for (i, t) in file.token.into_iter().enumerate() {
            if t.token.chars().count() < MIN_TOKEN_CHARS || t.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("tokens: token[{i}] ({}): at least {MIN_TOKEN_CHARS} characters, no spaces", t.name);
            }
            let grant = Grant { name: t.name, plugins: t.plugins, send: t.send };
            if by_digest.insert(digest(&t.token), grant).is_some() {
                bail!("tokens: token[{i}] is given twice");
            }
        }
        Ok(Self { by_digest })
    }

    /// The grant of the `Authorization` header's bearer token, if any.
    pub fn check(&self, authorization: Option<&str>) -> Option<&Grant> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.by_digest.get(&digest(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("wasmail-tokens-{}-{mode:o}-{}", std::process::id(), text.len()));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn tokens_grant_plugins_and_sending() {
        let p = write("[[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef\"\nplugins = [\"report\"]\n", 0o600);
        let t = Tokens::load(&p).unwrap();
        let g = t.check(Some("Bearer 0123456789abcdef")).unwrap();
        assert!(g.may_run("report") && !g.may_run("hello") && !g.send);
        assert!(t.check(Some("Bearer 0123456789abcdeg")).is_none());
        assert!(t.check(Some("0123456789abcdef")).is_none(), "the scheme is required");
        assert!(t.check(None).is_none());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_readable_file_and_a_short_token_are_refused() {
        let p = write("[[token]]\nname = \"ci\"\ntoken = \"0123456789abcdef\"\n", 0o644);
        assert!(Tokens::load(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::remove_file(p).unwrap();
        let p = write("[[token]]\nname = \"ci\"\ntoken = \"short\"\n", 0o600);
        assert!(Tokens::load(&p).unwrap_err().to_string().contains("token[0] (ci)"));
        std::fs::remove_file(p).unwrap();
    }
}
