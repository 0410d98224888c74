//! `wasmail:mail/limits`: the policy's limits on what the mailer assembles
//! (the RFC 1870 size of a message), read by the mailer when it builds one.

use crate::bindings::wasmail::mail::limits::Host;
use crate::mailer::MailerState;

impl Host for MailerState {
    async fn max_message_bytes(&mut self) -> wasmtime::Result<Option<u64>> {
        Ok(self.max_message_bytes)
    }
}
