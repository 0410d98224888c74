//! How outcomes leave the CLI: `sysexits.h` exit codes (as sendmail and
//! msmtp use them), one-line error texts and the `--json` objects for
//! receipts (RFC 5321 replies, RFC 3463 enhanced codes) and errors.

use crate::bindings::types::{Receipt, Rejection, Reply, SendError};
use serde_json::{Value, json};

/// Exit codes from sysexits.h.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Command line usage error.
    pub const USAGE: u8 = 64;
    /// The message is malformed (`send`), or a plugin component cannot be
    /// loaded: not a component, over the engine's per-component limits, or
    /// its compile failed (`run`, `compile`, `inspect`).
    pub const DATAERR: u8 = 65;
    /// An input file cannot be read.
    pub const NOINPUT: u8 = 66;
    /// The relay is unreachable, refused the message for good, or TLS failed.
    pub const UNAVAILABLE: u8 = 69;
    /// Internal error.
    pub const SOFTWARE: u8 = 70;
    /// An output file cannot be created (`dkim keygen`: it exists, or the
    /// folder is not writable).
    pub const CANTCREAT: u8 = 73;
    /// Try again later: 4xx, timeouts, an unknown outcome.
    pub const TEMPFAIL: u8 = 75;
    /// The server broke the protocol.
    pub const PROTOCOL: u8 = 76;
    /// Authentication failed or the policy denied the message.
    pub const NOPERM: u8 = 77;
    /// Bad configuration.
    pub const CONFIG: u8 = 78;
}


/// A reply as JSON.
pub fn reply_json(r: &Reply) -> Value {
    json!({ "code": r.code, "enhanced": r.enhanced, "text": r.text })
}




/// The exit code for a send error.
pub fn exit_code(e: &SendError) -> u8 {
    match e {
        SendError::InvalidMessage(_) => exit::DATAERR,
        SendError::PolicyDenied(_) | SendError::Auth(_) => exit::NOPERM,
        SendError::Connect(_) | SendError::Tls(_) => exit::UNAVAILABLE,
        SendError::Rejected(Rejection { transient: true, .. }) => exit::TEMPFAIL,
        SendError::Rejected(_) => exit::UNAVAILABLE,
        SendError::Timeout(_) | SendError::OutcomeUnknown(_) => exit::TEMPFAIL,
        SendError::Protocol(_) => exit::PROTOCOL,
    }
}


/// `{"error": {...}}` for `--json`.
pub fn error_json(e: &SendError) -> Value {
    let mut err = json!({ "kind": e.kind(), "message": e.describe(), "transient": e.is_transient() });
    match e {
        SendError::Auth(r) => err["reply"] = reply_json(r),
        SendError::Rejected(r) => {
            err["reply"] = reply_json(&r.reply);
            err["stage"] = json!(r.stage.as_str());
            err["rejected"] = json!(r
                .recipients
                .iter()
                .map(|f| json!({ "address": f.address, "reply": reply_json(&f.reply) }))
                .collect::<Vec<_>>());
        }
        SendError::Timeout(s) => err["stage"] = json!(*s.as_str()),
        _ => {}
    }
    json!({ "error": err })
}

/// An error that is not a `send-error` (usage, files, configuration, or a
/// malformed address caught before the mailer runs). Same shape as
/// [`error_json`].
pub fn other_error_json(kind: &str, message: &str) -> Value {
    json!({ "error": { "kind": kind, "message": message, "transient": false } })
}

pub use crate::text::printable;

/// A receipt as JSON.
pub fn receipt_json(r: &Receipt) -> Value {
    json!({
        "message_id": r.message_id,
        "accepted": r.accepted,
        "rejected": r.rejected.iter().map(|f| json!({ "address": f.address, "reply": reply_json(&f.reply) })).collect::<Vec<_>>(),
        "size": r.size,
        "reply": reply_json(&r.reply),
    })
}

/// A failure of the CLI itself (usage, files, configuration): an exit code,
/// a JSON kind and a message.
#[derive(Debug)]
pub struct CliError {
    /// The exit code.
    pub code: u8,
    /// `error.kind` in JSON.
    pub kind: &'static str,
    /// What went wrong, naming the field or file.
    pub message: String,
}

impl CliError {
    /// A new error.
    pub fn new(code: u8, kind: &'static str, message: impl Into<String>) -> Self {
        Self { code, kind, message: message.into() }
    }

    /// Print it (as JSON with `json`) and return the exit code.
    pub fn print(&self, json: bool) -> u8 {
        if json {
            println!("{}", other_error_json(self.kind, &self.message));
        } else {
            say(&self.message);
        }
        self.code
    }
}

impl From<crate::mailer::relay::RelayError> for CliError {
    fn from(e: crate::mailer::relay::RelayError) -> Self {
        use crate::mailer::relay::RelayError;
        match e {
            RelayError::Usage(m) => Self::new(exit::USAGE, "usage", m),
            RelayError::Config(m) => Self::new(exit::CONFIG, "config", m),
            RelayError::Unreachable(m) => Self::new(exit::UNAVAILABLE, "connect", m),
        }
    }
}

/// Tell the operator something on standard error, prefixed `wasmail: `,
/// with control characters escaped (see [`printable`]).
pub fn say(message: impl std::fmt::Display) {
    use std::io::Write;
    let text = message.to_string();
    let _ = writeln!(std::io::stderr().lock(), "wasmail: {}", printable(&text));
}
