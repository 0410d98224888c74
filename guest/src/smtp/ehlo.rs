//! EHLO reply parsing (RFC 5321 4.1.1.1, 2.2.2): the service extensions a
//! server advertises. Unknown keywords are ignored.

use super::auth::Mechanism;
use super::reply::Reply;

/// One advertised extension.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Extension {
    /// `SIZE [max]` (RFC 1870); `None` or 0 means no fixed limit.
    Size(Option<u64>),
    /// `PIPELINING` (RFC 2920).
    Pipelining,
    /// `8BITMIME` (RFC 6152).
    EightBitMime,
    /// `SMTPUTF8` (RFC 6531).
    SmtpUtf8,
    /// `AUTH mech...` (RFC 4954), with the mechanisms we know.
    Auth(Vec<Mechanism>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    EnhancedStatusCodes,
    /// `CHUNKING` (RFC 3030).
    Chunking,
}

impl Extension {
    /// Parse one EHLO line; `None` for keywords we do not know.
    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_ascii_whitespace();
        let keyword = words.next()?.to_ascii_uppercase();
        Some(match keyword.as_str() {
            "SIZE" => Self::Size(words.next().and_then(|w| w.parse().ok())),
            "PIPELINING" => Self::Pipelining,
            "8BITMIME" => Self::EightBitMime,
            "SMTPUTF8" => Self::SmtpUtf8,
            "AUTH" => Self::Auth(words.filter_map(Mechanism::parse).collect()),
            "STARTTLS" => Self::StartTls,
            "ENHANCEDSTATUSCODES" => Self::EnhancedStatusCodes,
            "CHUNKING" => Self::Chunking,
            _ => return None,
        })
    }
}

/// What the server offers, from its EHLO reply. `Default` is what a HELO
/// server offers: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// SIZE was advertised, with its limit (0 = none).
    pub size: Option<u64>,
    /// PIPELINING.
    pub pipelining: bool,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// AUTH mechanisms we can use, in the server's order.
    pub auth: Vec<Mechanism>,
    /// STARTTLS.
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
    /// CHUNKING.
    pub chunking: bool,
}

impl Capabilities {
    /// Parse a 250 reply to EHLO. The first line is the server's greeting
    /// name, not an extension.
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut caps = Self::default();
        for ext in reply.lines.iter().skip(1).filter_map(|l| Extension::parse(l)) {
            match ext {
                Extension::Size(n) => caps.size = Some(n.unwrap_or(0)),
                Extension::Pipelining => caps.pipelining = true,
                Extension::EightBitMime => caps.eight_bit_mime = true,
                Extension::SmtpUtf8 => caps.smtputf8 = true,
                Extension::Auth(m) => {
                    for m in m {
                        if !caps.auth.contains(&m) {
                            caps.auth.push(m);
                        }
                    }
                }
                Extension::StartTls => caps.starttls = true,
                Extension::EnhancedStatusCodes => caps.enhanced_status_codes = true,
                Extension::Chunking => caps.chunking = true,
            }
        }
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::ReplyParser;

    fn caps(input: &str) -> Capabilities {
        let mut p = ReplyParser::new();
        p.feed(input.as_bytes());
        Capabilities::from_ehlo(&p.next_reply().unwrap().unwrap())
    }

    #[test]
    fn postfix_style() {
        let c = caps(
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n\
             250-STARTTLS\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250-AUTH=PLAIN LOGIN\r\n\
             250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        assert_eq!(
            c,
            Capabilities {
                size: Some(10_240_000),
                pipelining: true,
                eight_bit_mime: true,
                smtputf8: true,
                auth: vec![Mechanism::Plain, Mechanism::Login, Mechanism::CramMd5],
                starttls: true,
                enhanced_status_codes: true,
                chunking: true,
            }
        );
    }

    #[test]
    fn first_line_is_not_an_extension() {
        let c = caps("250-PIPELINING\r\n250 SIZE\r\n");
        assert!(!c.pipelining, "the greeting name is not a keyword");
        assert_eq!(c.size, Some(0));
    }

    #[test]
    fn unknown_and_odd_keywords() {
        let c = caps("250-x\r\n250-X-EXPS GSSAPI\r\n250-size 12x\r\n250-auth login xoauth2 gssapi\r\n250 starttls\r\n");
        assert_eq!(c.size, Some(0));
        assert_eq!(c.auth, vec![Mechanism::Login, Mechanism::XOAuth2]);
        assert!(c.starttls);
        assert_eq!(Extension::parse("HELP"), None);
        assert_eq!(Extension::parse(""), None);
    }
}
