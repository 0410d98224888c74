//! SMTP AUTH (RFC 4954) with the SASL mechanisms PLAIN (RFC 4616), LOGIN
//! (draft-murchison-sasl-login), CRAM-MD5 (RFC 2195) and XOAUTH2: the
//! mechanism names, the choice among those a server offers, and each
//! mechanism's responses, one [`Mechanism::step`] per `334` challenge.
//!
//! A new mechanism is a variant of [`Mechanism`] here (its name, its initial
//! response, its steps) and a case of the WIT `auth-mechanism` enum; the
//! session's AUTH loop drives every mechanism the same way.
//!
//! The secret lives in [`Secret`], whose `Debug` never shows it and whose
//! memory is wiped on drop; only this module reads it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::Md5;
use std::fmt;

/// The most `334` challenges one AUTH exchange answers. LOGIN needs two;
/// a server that keeps challenging past this gets `*` (cancel).
pub const MAX_SASL_ROUNDS: usize = 4;

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

/// Who is authenticating: the user name and the secret.
pub struct Credentials<'a> {
    /// The AUTH user name.
    pub user: &'a str,
    /// The password or token.
    pub secret: &'a Secret,
}

/// A SASL mechanism we can use (RFC 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mechanism {
    /// RFC 4616: `\0user\0password` as the initial response.
    Plain,
    /// The de-facto `LOGIN` mechanism: the user name, then the password,
    /// each in answer to a challenge.
    Login,
    /// RFC 2195: an HMAC-MD5 of the server's challenge keyed with the
    /// password, so the password itself never crosses the wire.
    CramMd5,
    /// OAuth 2.0 bearer tokens, Google/Microsoft style.
    XOAuth2,
}

impl Mechanism {
    /// The wire name, as in the EHLO `AUTH` line and the `AUTH` command.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Login => "LOGIN",
            Self::CramMd5 => "CRAM-MD5",
            Self::XOAuth2 => "XOAUTH2",
        }
    }

    /// The mechanism an EHLO `AUTH` keyword names, if we support it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Self::Plain),
            "LOGIN" => Some(Self::Login),
            "CRAM-MD5" => Some(Self::CramMd5),
            "XOAUTH2" => Some(Self::XOAuth2),
            _ => None,
        }
    }

    /// The base64 initial response sent on the `AUTH` line (RFC 4954 4), for
    /// the mechanisms that speak first.
    pub fn initial_response(self, c: &Credentials<'_>) -> Option<String> {
        match self {
            Self::Plain => Some(STANDARD.encode(format!("\0{}\0{}", c.user, c.secret.expose()))),
            Self::XOAuth2 => {
                Some(STANDARD.encode(format!("user={}\x01auth=Bearer {}\x01\x01", c.user, c.secret.expose())))
            }
            Self::Login | Self::CramMd5 => None,
        }
    }

    /// The base64 response to challenge number `round` (from 0), whose text
    /// (base64, as the `334` reply carries it) is `challenge`. `None` when
    /// the mechanism has nothing more to say, or cannot read the challenge:
    /// the exchange is then cancelled.
    pub fn step(self, round: usize, challenge: &str, c: &Credentials<'_>) -> Option<String> {
        match (self, round) {
            (Self::Login, 0) => Some(STANDARD.encode(c.user)),
            (Self::Login, 1) => Some(STANDARD.encode(c.secret.expose())),
            (Self::CramMd5, 0) => cram_md5(challenge, c),
            // After an initial response a `334` carries error details
            // (XOAUTH2); an empty response makes the server send its final
            // reply.
            (Self::Plain | Self::XOAuth2, 0) => Some(String::new()),
            _ => None,
        }
    }
}

/// RFC 2195 2: `user SP hex(HMAC-MD5(secret, challenge))`, in base64.
fn cram_md5(challenge: &str, c: &Credentials<'_>) -> Option<String> {
    let challenge = STANDARD.decode(challenge.trim()).ok()?;
    let mut mac = Hmac::<Md5>::new_from_slice(c.secret.expose().as_bytes()).ok()?;
    mac.update(&challenge);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(STANDARD.encode(format!("{} {hex}", c.user)))
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
/// LOGIN two. XOAUTH2 takes a token, not a password, and CRAM-MD5 makes the
/// server keep the password in the clear, so each is used only when asked
/// for by name.
const PREFERENCE: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

/// Pick the mechanism to use from what the server offers.
pub fn choose(offered: &[Mechanism], choice: Choice) -> Option<Mechanism> {
    match choice {
        Choice::Auto => PREFERENCE.into_iter().find(|m| offered.contains(m)),
        Choice::Exactly(m) => offered.contains(&m).then_some(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds<'a>(user: &'a str, secret: &'a Secret) -> Credentials<'a> {
        Credentials { user, secret }
    }

    #[test]
    fn responses() {
        let s = Secret::new("pa55".into());
        let c = creds("jo", &s);
        assert_eq!(Mechanism::Plain.initial_response(&c).as_deref(), Some("AGpvAHBhNTU="));
        assert_eq!(Mechanism::Login.initial_response(&c), None);
        assert_eq!(Mechanism::Login.step(0, "VXNlcm5hbWU6", &c).as_deref(), Some("am8="));
        assert_eq!(Mechanism::Login.step(1, "UGFzc3dvcmQ6", &c).as_deref(), Some("cGE1NQ=="));
        assert_eq!(Mechanism::Login.step(2, "", &c), None, "LOGIN has two steps");
        assert_eq!(
            Mechanism::XOAuth2.initial_response(&c),
            Some(STANDARD.encode("user=jo\x01auth=Bearer pa55\x01\x01"))
        );
        assert_eq!(Mechanism::XOAuth2.step(0, "eyJzdGF0dXMiOiI0MDEifQ==", &c).as_deref(), Some(""));
        assert_eq!(Mechanism::XOAuth2.step(1, "", &c), None);
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }

    /// RFC 2195 2, the example exchange.
    #[test]
    fn cram_md5_golden() {
        let s = Secret::new("tanstaaftanstaaf".into());
        let c = creds("tim", &s);
        let challenge = STANDARD.encode("<1896.697170952@postoffice.reston.mci.net>");
        assert_eq!(challenge, "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+");
        assert_eq!(Mechanism::CramMd5.initial_response(&c), None);
        assert_eq!(
            Mechanism::CramMd5.step(0, &challenge, &c).as_deref(),
            Some("dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw")
        );
        assert_eq!(Mechanism::CramMd5.step(0, "not base64!", &c), None, "an unreadable challenge is cancelled");
        assert_eq!(Mechanism::CramMd5.step(1, &challenge, &c), None);
    }

    #[test]
    fn names_round_trip() {
        for m in [Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5, Mechanism::XOAuth2] {
            assert_eq!(Mechanism::parse(m.name()), Some(m));
            assert_eq!(Mechanism::parse(&m.name().to_ascii_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::parse("GSSAPI"), None);
    }

    #[test]
    fn choice() {
        use Mechanism::*;
        assert_eq!(choose(&[Login, Plain], Choice::Auto), Some(Plain));
        assert_eq!(choose(&[Login], Choice::Auto), Some(Login));
        assert_eq!(choose(&[XOAuth2], Choice::Auto), None);
        assert_eq!(choose(&[CramMd5], Choice::Auto), None);
        assert_eq!(choose(&[Plain], Choice::Exactly(Login)), None);
        assert_eq!(choose(&[Plain, Login], Choice::Exactly(Login)), Some(Login));
        assert_eq!(choose(&[Plain, CramMd5], Choice::Exactly(CramMd5)), Some(CramMd5));
    }
}
