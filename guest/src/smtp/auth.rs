//! SMTP AUTH (RFC 4954) with the SASL mechanisms PLAIN (RFC 4616), LOGIN and
//! XOAUTH2: mechanism choice and the exact client responses.
//!
//! The secret lives in [`Secret`], whose `Debug` never shows it and whose
//! memory is wiped on drop.

use super::ehlo::Mechanism;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use std::fmt;

/// A password or token. Never printed, wiped when dropped.
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // SAFETY-free wipe: overwrite the bytes in place with zeros, which
        // keeps the String valid UTF-8.
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&bytes);
    }
}

/// Which mechanism the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The first supported one the server offers, in our preference order.
    Auto,
    /// Exactly this one; it must be offered.
    Exactly(Mechanism),
}

/// Our preference when the user says `auto`: PLAIN needs one round trip,
/// LOGIN two. XOAUTH2 takes a token, not a password, so it is never chosen
/// automatically.
const PREFERENCE: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// Pick the mechanism to use from what the server offers.
pub fn choose(offered: &[Mechanism], choice: Choice) -> Option<Mechanism> {
    match choice {
        Choice::Auto => PREFERENCE.into_iter().find(|m| offered.contains(m)),
        Choice::Exactly(m) => offered.contains(&m).then_some(m),
    }
}

/// The base64 initial response for PLAIN: `\0user\0password`.
pub fn plain_response(user: &str, secret: &Secret) -> String {
    STANDARD.encode(format!("\0{user}\0{}", secret.expose()))
}

/// The base64 initial response for XOAUTH2.
pub fn xoauth2_response(user: &str, token: &Secret) -> String {
    STANDARD.encode(format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose()))
}

/// The two base64 responses for LOGIN: the user name, then the password.
pub fn login_responses(user: &str, secret: &Secret) -> (String, String) {
    (STANDARD.encode(user), STANDARD.encode(secret.expose()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let s = Secret::new("pa55".into());
        assert_eq!(plain_response("jo", &s), "AGpvAHBhNTU=");
        assert_eq!(login_responses("jo", &s), ("am8=".into(), "cGE1NQ==".into()));
        assert_eq!(xoauth2_response("jo", &s), STANDARD.encode("user=jo\x01auth=Bearer pa55\x01\x01"));
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn choice() {
        use Mechanism::*;
        assert_eq!(choose(&[Login, Plain], Choice::Auto), Some(Plain));
        assert_eq!(choose(&[Login], Choice::Auto), Some(Login));
        assert_eq!(choose(&[XOAuth2], Choice::Auto), None);
        assert_eq!(choose(&[Plain], Choice::Exactly(Login)), None);
        assert_eq!(choose(&[Plain, Login], Choice::Exactly(Login)), Some(Login));
    }
}
