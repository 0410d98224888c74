//! Host bindings for the wasmail WIT package (`wasmail:mail@0.1.0`, the
//! mail API of RFC 5322 messages and RFC 5321 delivery), generated once from
//! the vendored WIT set by the component model's `bindgen!`.
//!
//! The `mailer` world (package `wasmail:mailer`, wit/mailer/, which imports
//! wasi:tls and so lives apart from wit/, the folder plugin toolchains read)
//! is the one bindgen! covers: its exports (`sender`,
//! `transport`) are what the host calls, its imports (`credentials`, `blobs`,
//! `transcript`) are what the host implements, and `wasmail:mail/types` is
//! shared with the plugin side, whose single import (`sender.send`) and
//! export (`run`) are linked by hand in `sender.rs` with these same types.

wasmtime::component::bindgen!({
    path: "../wit/mailer",
    world: "wasmail:mailer/mailer",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
        "wasi:tls": wasmtime_wasi_tls::p2::bindings,
    },
    require_store_data_send: true,
});

pub use exports::wasmail::mail::transport;
pub use self::wasmail::mail::types;

use std::fmt;
use types::{Reply, SendError, Stage};

/// The few facts about the WIT types that every layer needs, said once:
/// a stage's WIT name, an error's kind, whether a retry may help, and the
/// one-line description.
impl Stage {
    /// The WIT spelling (`mail-from`, `data-end`, ...).
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

impl Reply {
    /// `code enhanced text`, the lines of the text joined with ` / `.
    pub fn line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = &self.enhanced {
            s.push(' ');
            s.push_str(e);
        }
        if !self.text.is_empty() {
            s.push(' ');
            s.push_str(&self.text.replace('\n', " / "));
        }
        s
    }
}

impl SendError {
    /// The WIT case name, used as `error.kind` in JSON and in audit reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidMessage(_) => "invalid-message",
            Self::PolicyDenied(_) => "policy-denied",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Auth(_) => "auth",
            Self::Rejected(_) => "rejected",
            Self::Timeout(_) => "timeout",
            Self::Protocol(_) => "protocol",
            Self::OutcomeUnknown(_) => "outcome-unknown",
        }
    }

    /// True for failures a later retry may fix (4xx, timeouts, broken
    /// connections).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Rejected(r) => r.transient,
            Self::Auth(r) => (400..500).contains(&r.code),
            _ => false,
        }
    }

    /// True when the message is worth keeping for `wasmail retry`: a retry
    /// may help, or the relay may already have it.
    pub fn worth_keeping(&self) -> bool {
        self.is_transient() || matches!(self, Self::OutcomeUnknown(_))
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Self::InvalidMessage(m) => format!("invalid message: {m}"),
            Self::PolicyDenied(m) => format!("denied by policy: {m}"),
            Self::Connect(m) => format!("connection to the relay failed: {m}"),
            Self::Tls(m) => format!("TLS failed: {m}"),
            Self::Auth(r) if r.code == 0 => format!("authentication not possible: {}", r.text),
            Self::Auth(r) => format!("authentication failed: {}", r.line()),
            Self::Rejected(r) => {
                let kind = if r.transient { "temporarily" } else { "permanently" };
                format!("rejected {kind} at {}: {}", r.stage, r.reply.line())
            }
            Self::Timeout(s) => format!("timed out waiting at {s}"),
            Self::Protocol(m) => format!("protocol error: {m}"),
            Self::OutcomeUnknown(m) => format!("outcome unknown: {m}"),
        }
    }
}
