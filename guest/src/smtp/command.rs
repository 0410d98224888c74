//! SMTP commands (RFC 5321 4.1, RFC 1869, RFC 3207, RFC 4954, RFC 6152,
//! RFC 6531, RFC 1870, RFC 3030 BDAT): one type per verb whose `Display` is the exact wire
//! bytes, CRLF included.
//!
//! Arguments are typed (a validated [`Address`], a checked EHLO name), so a
//! command can only carry what its grammar allows. Every command the session
//! sends is one of these types: there are no literal command strings
//! elsewhere.

use super::error::Stage;
use crate::mime::address::Address;
use std::fmt;

/// A command the session sends: its `Display` is the wire bytes; it names
/// the stage its reply belongs to (the deadline, and the stage in errors)
/// and how the transcript shows it.
pub trait Command: fmt::Display {
    /// The stage of the reply to this command.
    fn stage(&self) -> Stage;
    /// What the transcript shows instead of the wire text, for a command
    /// that carries credentials; `None` shows the wire text.
    fn redacted(&self) -> Option<String> {
        None
    }
}

/// `impl Command` for a type whose reply belongs to one fixed stage.
macro_rules! stage {
    ($($ty:ty => $stage:ident),* $(,)?) => {
        $(impl Command for $ty {
            fn stage(&self) -> Stage {
                Stage::$stage
            }
        })*
    };
}

stage! {
    Ehlo<'_> => Ehlo,
    Helo<'_> => Ehlo,
    StartTls => Tls,
    MailFrom<'_> => MailFrom,
    RcptTo<'_> => RcptTo,
    Data => Data,
    EndOfData => DataEnd,
    Rset => Rset,
    Quit => Quit,
    AuthCancel => Auth,
}

/// An EHLO/HELO domain: a host name or address literal, printable ASCII,
/// no spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName(String);

/// The longest EHLO name we send.
pub const MAX_CLIENT_NAME: usize = 255;

impl ClientName {
    /// Validate an EHLO name.
    pub fn new(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("empty".into());
        }
        if name.len() > MAX_CLIENT_NAME {
            return Err(format!("longer than {MAX_CLIENT_NAME} octets"));
        }
        if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("contains {c:?}; only printable ASCII without spaces is allowed"));
        }
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `EHLO name`.
pub struct Ehlo<'a>(pub &'a ClientName);
impl fmt::Display for Ehlo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EHLO {}\r\n", self.0)
    }
}

/// `HELO name`.
pub struct Helo<'a>(pub &'a ClientName);
impl fmt::Display for Helo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HELO {}\r\n", self.0)
    }
}

/// `STARTTLS`.
pub struct StartTls;
impl fmt::Display for StartTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("STARTTLS\r\n")
    }
}

/// `BODY=` parameter values (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`, never sent: it is the default.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// `MAIL FROM:<addr>` with optional `SIZE=`, `BODY=` and `SMTPUTF8`.
pub struct MailFrom<'a> {
    /// The reverse path; `None` is the null path `<>`.
    pub from: Option<&'a Address>,
    /// `SIZE=` (RFC 1870), when the server advertises SIZE.
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}
impl fmt::Display for MailFrom<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MAIL FROM:<")?;
        if let Some(a) = self.from {
            write!(f, "{a}")?;
        }
        f.write_str(">")?;
        if let Some(size) = self.size {
            write!(f, " SIZE={size}")?;
        }
        if self.body == Body::EightBitMime {
            f.write_str(" BODY=8BITMIME")?;
        }
        if self.smtputf8 {
            f.write_str(" SMTPUTF8")?;
        }
        f.write_str("\r\n")
    }
}

/// `RCPT TO:<addr>`.
pub struct RcptTo<'a>(pub &'a Address);
impl fmt::Display for RcptTo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RCPT TO:<{}>\r\n", self.0)
    }
}

/// `DATA`.
pub struct Data;
impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DATA\r\n")
    }
}

/// The end-of-data line `.` alone (RFC 5321 4.1.1.4), sent by itself only to
/// end an empty data at once; a message's own terminator goes with its last
/// chunk (see [`super::dot`]).
pub struct EndOfData;
impl fmt::Display for EndOfData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(".\r\n")
    }
}

/// `BDAT size [LAST]` (RFC 3030 2): the next `size` octets that follow the
/// command line are message data, sent as they are (no dot-stuffing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdat {
    /// The chunk's exact size in octets.
    pub size: u64,
    /// The last chunk of the message: its reply is the transaction's.
    pub last: bool,
}
impl fmt::Display for Bdat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.last {
            write!(f, "BDAT {} LAST\r\n", self.size)
        } else {
            write!(f, "BDAT {}\r\n", self.size)
        }
    }
}
impl Command for Bdat {
    fn stage(&self) -> Stage {
        if self.last { Stage::DataEnd } else { Stage::DataBlock }
    }
}

/// `RSET`.
pub struct Rset;
impl fmt::Display for Rset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RSET\r\n")
    }
}

/// `QUIT`.
pub struct Quit;
impl fmt::Display for Quit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QUIT\r\n")
    }
}

/// `AUTH mechanism [initial-response]` (RFC 4954 4).
pub struct Auth<'a> {
    /// The SASL mechanism name.
    pub mechanism: &'a str,
    /// The base64 initial response, if any.
    pub initial: Option<&'a str>,
}
impl fmt::Display for Auth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.initial {
            Some(ir) => write!(f, "AUTH {} {ir}\r\n", self.mechanism),
            None => write!(f, "AUTH {}\r\n", self.mechanism),
        }
    }
}

impl Command for Auth<'_> {
    fn stage(&self) -> Stage {
        Stage::Auth
    }
    fn redacted(&self) -> Option<String> {
        self.initial.map(|_| format!("AUTH {} <redacted>", self.mechanism))
    }
}

/// A SASL continuation line: base64 text alone on a line (RFC 4954 4).
pub struct AuthResponse<'a>(pub &'a str);
impl fmt::Display for AuthResponse<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\r\n", self.0)
    }
}
impl Command for AuthResponse<'_> {
    fn stage(&self) -> Stage {
        Stage::Auth
    }
    fn redacted(&self) -> Option<String> {
        Some("<redacted>".into())
    }
}

/// `*`: the client cancels the SASL exchange; the server answers `501`
/// (RFC 4954 4).
pub struct AuthCancel;
impl fmt::Display for AuthCancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*\r\n")
    }
}

/// One command of a mail transaction's plan: what the session pipelines
/// (RFC 2920) or sends one per turn.
pub enum Step<'a> {
    /// `RSET`, before every transaction but the first of a session.
    Rset(Rset),
    /// `MAIL FROM`.
    MailFrom(MailFrom<'a>),
    /// One `RCPT TO`.
    RcptTo(RcptTo<'a>),
    /// `DATA`: ends the plan when the message goes dot-stuffed.
    Data(Data),
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rset(c) => c.fmt(f),
            Self::MailFrom(c) => c.fmt(f),
            Self::RcptTo(c) => c.fmt(f),
            Self::Data(c) => c.fmt(f),
        }
    }
}

impl Command for Step<'_> {
    fn stage(&self) -> Stage {
        match self {
            Self::Rset(c) => c.stage(),
            Self::MailFrom(c) => c.stage(),
            Self::RcptTo(c) => c.stage(),
            Self::Data(c) => c.stage(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn wire_bytes() {
        let name = ClientName::new("client.example").unwrap();
        assert_eq!(Ehlo(&name).to_string(), "EHLO client.example\r\n");
        assert_eq!(Helo(&name).to_string(), "HELO client.example\r\n");
        assert_eq!(StartTls.to_string(), "STARTTLS\r\n");
        assert_eq!(Data.to_string(), "DATA\r\n");
        assert_eq!(Rset.to_string(), "RSET\r\n");
        assert_eq!(EndOfData.to_string(), ".\r\n");
        assert_eq!(Quit.to_string(), "QUIT\r\n");
        assert_eq!(RcptTo(&addr("b@example.org")).to_string(), "RCPT TO:<b@example.org>\r\n");
        assert_eq!(Auth { mechanism: "LOGIN", initial: None }.to_string(), "AUTH LOGIN\r\n");
        assert_eq!(Auth { mechanism: "PLAIN", initial: Some("AGEAYg==") }.to_string(), "AUTH PLAIN AGEAYg==\r\n");
        assert_eq!(AuthResponse("dXNlcg==").to_string(), "dXNlcg==\r\n");
        assert_eq!(AuthCancel.to_string(), "*\r\n");
        assert_eq!(Bdat { size: 0, last: true }.to_string(), "BDAT 0 LAST\r\n");
        assert_eq!(Bdat { size: 1_048_576, last: false }.to_string(), "BDAT 1048576\r\n");
        assert_eq!(Bdat { size: 3, last: true }.stage(), Stage::DataEnd);
        assert_eq!(Bdat { size: 3, last: false }.stage(), Stage::DataBlock);
        let a = addr("a@example.com");
        let from = MailFrom { from: Some(&a), size: None, body: Body::SevenBit, smtputf8: false };
        assert_eq!(Step::MailFrom(from).to_string(), "MAIL FROM:<a@example.com>\r\n");
        assert_eq!(Step::Rset(Rset).to_string(), "RSET\r\n");
    }

    #[test]
    fn credentials_never_reach_the_transcript() {
        assert_eq!(Auth { mechanism: "LOGIN", initial: None }.redacted(), None);
        assert_eq!(Auth { mechanism: "PLAIN", initial: Some("AGEAYg==") }.redacted().as_deref(), Some("AUTH PLAIN <redacted>"));
        assert_eq!(AuthResponse("dXNlcg==").redacted().as_deref(), Some("<redacted>"));
        assert_eq!(Step::Data(Data).stage(), Stage::Data);
    }

    #[test]
    fn mail_from_parameters() {
        let a = addr("a@example.com");
        let plain = MailFrom { from: Some(&a), size: None, body: Body::SevenBit, smtputf8: false };
        assert_eq!(plain.to_string(), "MAIL FROM:<a@example.com>\r\n");
        let all = MailFrom { from: Some(&a), size: Some(2048), body: Body::EightBitMime, smtputf8: true };
        assert_eq!(all.to_string(), "MAIL FROM:<a@example.com> SIZE=2048 BODY=8BITMIME SMTPUTF8\r\n");
        let null = MailFrom { from: None, size: None, body: Body::SevenBit, smtputf8: false };
        assert_eq!(null.to_string(), "MAIL FROM:<>\r\n");
    }

    #[test]
    fn client_names() {
        assert!(ClientName::new("[127.0.0.1]").is_ok());
        assert!(ClientName::new("a b").is_err());
        assert!(ClientName::new("a\r\nMAIL FROM:<x@y>").is_err());
        assert!(ClientName::new("").is_err());
        assert!(ClientName::new("h\u{85}").is_err());
    }
}
