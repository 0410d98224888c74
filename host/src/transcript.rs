//! `wasmail:mail/transcript`: the SMTP dialogue (RFC 5321) as the mailer
//! reports it, for `-v`. The mailer redacts AUTH payloads before they get
//! here; the host adds TLS notes from its provider.

use crate::bindings::wasmail::mail::transcript::{Direction, Host};
use crate::mailer::MailerState;
use std::sync::Arc;

/// Where transcript lines go.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// A sink that writes each line to standard error.
pub fn stderr_sink() -> Sink {
    Arc::new(|line: &str| {
        use std::io::Write;
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    })
}

/// Format one line the way `-v` shows it: `C: `, `S: ` or `* `.
pub fn format_line(direction: Direction, text: &str) -> String {
    let prefix = match direction {
        Direction::Client => "C: ",
        Direction::Server => "S: ",
        Direction::Info => "* ",
    };
    format!("{prefix}{}", crate::report::printable(text))
}

impl Host for MailerState {
    async fn line(&mut self, direction: Direction, text: String) -> wasmtime::Result<()> {
        if let Some(sink) = &self.transcript {
            sink(&format_line(direction, &text));
        }
        Ok(())
    }
}
