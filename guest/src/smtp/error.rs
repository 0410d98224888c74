//! Typed SMTP client errors (RFC 5321 4.2.1 reply classes): each says where
//! it happened and whether a retry can help.

use super::reply::Reply;
use crate::mime::address::Address;
use std::fmt;

/// The step of the dialogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// The `220` greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS or the implicit TLS handshake.
    Tls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA, up to `354`.
    Data,
    /// Writing the message.
    DataBlock,
    /// The reply to the final dot.
    DataEnd,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
}

impl Stage {
    /// The stage's name as the WIT spells it (`mail-from`, `data-end`): the
    /// one table of stage names, used by `Display` and the transcript.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::Tls => "tls",
            Self::Auth => "auth",
            Self::MailFrom => "mail-from",
            Self::RcptTo => "rcpt-to",
            Self::Data => "data",
            Self::DataBlock => "data-block",
            Self::DataEnd => "data-end",
            Self::Rset => "rset",
            Self::Quit => "quit",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpError {
    /// The message cannot be sent as it is (names the field).
    InvalidMessage(String),
    /// The connection could not be made, or it broke before the final dot.
    Connect(String),
    /// TLS failed, or was required and is not available.
    Tls(String),
    /// The server refused the credentials (code 0: the client refused to try).
    Auth(Reply),
    /// The server refused at `stage`.
    Rejected {
        /// Where.
        stage: Stage,
        /// The server's reply.
        reply: Reply,
        /// Recipients refused before that.
        recipients: Vec<(Address, Reply)>,
    },
    /// A deadline passed.
    Timeout(Stage),
    /// The server broke the protocol.
    Protocol(String),
    /// The connection failed after the final dot and before its reply.
    OutcomeUnknown(String),
}

impl SmtpError {
    /// True when the same message may go through later: 4xx replies, timeouts
    /// and broken connections. The mailer's one answer to "is this
    /// transient?": the WIT `rejection.transient` and the keep-for-retry
    /// decision both come from here.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Auth(r) => r.is_transient(),
            Self::Rejected { reply, .. } => reply.is_transient(),
            Self::InvalidMessage(_) | Self::Tls(_) | Self::Protocol(_) | Self::OutcomeUnknown(_) => false,
        }
    }

    /// True when the message is worth keeping for a later try: a retry may
    /// succeed ([`SmtpError::is_transient`]), or nobody knows whether it was
    /// delivered (resent only when the operator says so).
    pub fn worth_keeping(&self) -> bool {
        self.is_transient() || matches!(self, Self::OutcomeUnknown(_))
    }

    /// True when the connection cannot carry another command: it broke, timed
    /// out, TLS failed or was refused, the server broke the protocol, or it
    /// said `421` (closing). Otherwise the server answered and is waiting for
    /// the next command, so the session ends with `QUIT` (or goes on).
    pub fn kills_session(&self) -> bool {
        match self {
            Self::InvalidMessage(_) => false,
            Self::Auth(reply) | Self::Rejected { reply, .. } => reply.code == 421,
            Self::Connect(_) | Self::Tls(_) | Self::Timeout(_) | Self::Protocol(_) | Self::OutcomeUnknown(_) => true,
        }
    }
}

impl fmt::Display for SmtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMessage(m) => write!(f, "invalid message: {m}"),
            Self::Connect(m) => write!(f, "connection: {m}"),
            Self::Tls(m) => write!(f, "TLS: {m}"),
            Self::Auth(r) => write!(f, "authentication failed: {r}"),
            Self::Rejected { stage, reply, .. } => write!(f, "rejected at {stage}: {reply}"),
            Self::Timeout(stage) => write!(f, "timed out at {stage}"),
            Self::Protocol(m) => write!(f, "protocol error: {m}"),
            Self::OutcomeUnknown(m) => write!(f, "outcome unknown: {m}"),
        }
    }
}

impl std::error::Error for SmtpError {}
