//! `wasmail:mail/transcript`: the SMTP dialogue (RFC 5321) as the mailer
//! reports it, for `-v`. The mailer redacts AUTH payloads before they get
//! here; the host adds TLS notes from its provider.

use crate::bindings::wasmail::mail::transcript::{Direction, Host};
use crate::mailer::MailerState;

pub use crate::text::LineSink as Sink;

/// Format one line the way `-v` shows it: `C: `, `S: ` or `* `.
pub fn format_line(direction: Direction, text: &str) -> String {
    let prefix = match direction {
        Direction::Client => "C: ",
        Direction::Server => "S: ",
        Direction::Info => "* ",
    };
    format!("{prefix}{}", crate::text::printable(text))
}

impl Host for MailerState {
    async fn line(&mut self, direction: Direction, text: String) -> wasmtime::Result<()> {
        if let Some(sink) = &self.transcript {
            sink(&format_line(direction, &text));
        }
        Ok(())
    }
}
