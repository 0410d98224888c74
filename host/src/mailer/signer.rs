//! `wasmail:mail/signer`: DKIM signing (RFC 6376, RFC 8463) for the mailer,
//! and only for the mailer (a plugin's linker has no such import). The
//! mailer reads the identity (domain, selector, algorithm, how to
//! canonicalize, which extra headers) and hands over the canonical header
//! data; the host checks it ([`crate::mail::dkim::check_data`]) and returns
//! the signature. The key stays in host memory: it is never copied into the
//! store's linear memory, and neither is anything derived from it but the
//! signature.

use crate::bindings::wasmail::mail::signer::{Host, Identity};
use crate::mailer::MailerState;

impl Host for MailerState {
    async fn signing_identity(&mut self) -> wasmtime::Result<Option<Identity>> {
        Ok(self.signing.as_ref().map(|s| s.identity()))
    }

    async fn sign(
        &mut self,
        domain: String,
        selector: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<Vec<u8>, String>> {
        let Some(signing) = &self.signing else {
            return Ok(Err("no DKIM key is configured".into()));
        };
        let result = signing.sign(&domain, &selector, &data);
        match &result {
            Ok(_) => self.signatures += 1,
            Err(e) => tracing::warn!("refused to sign for the mailer: {e}"),
        }
        Ok(result)
    }
}
