//! `wasmail:mail/sender` as a plugin sees it: the host's implementation of
//! `send`, which checks the plugin's policy, hands the message to the run's
//! mailer (SMTP, RFC 5321) or renders it into the outbox, writes an audit
//! record, and copies the receipt or error back into the plugin's store.

use crate::audit::{self, AuditLog, Outcome, Record};
use crate::bindings::types::{Message, Receipt, Reply, SendError};
use crate::deadletter::DeadLetters;
use crate::mailer::Mailer;
use crate::policy::{Approved, Policy};
use crate::{outbox, report};
use anyhow::Result;
use std::path::PathBuf;
use wasmtime::component::Linker;

/// The WIT name of the interface, as the plugin imports it.
pub const INTERFACE: &str = "wasmail:mail/sender@0.1.0";
/// The shared types interface a plugin imports along with it.
pub const TYPES_INTERFACE: &str = "wasmail:mail/types@0.1.0";

/// Where a run's mail goes.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Over SMTP through the mailer's session.
    Relay,
    /// Rendered by the mailer, written to this folder.
    Outbox(PathBuf),
}

/// Everything `send` needs during one run.
pub struct Forwarder {
    /// The plugin's name, for the audit log.
    pub plugin: String,
    /// The plugin component's SHA-256.
    pub sha256: String,
    /// Its policy for this run.
    pub policy: Policy,
    /// Where mail goes.
    pub delivery: Delivery,
    /// The run's mailer (one SMTP session for all sends).
    pub mailer: Mailer,
    /// The audit log.
    pub audit: AuditLog,
    /// Where undelivered messages are kept.
    pub dead_letters: DeadLetters,
    /// Every record of this run, in order.
    pub records: Vec<Record>,
}

impl Forwarder {
    fn record(&mut self, mut r: Record) -> Result<()> {
        r.plugin = self.plugin.clone();
        r.sha256 = self.sha256.clone();
        self.audit.append(&r)?;
        self.records.push(r);
        Ok(())
    }

    fn base(approved: Option<&Approved>, outcome: Outcome, reason: Option<String>) -> Record {
        Record {
            time_ms: audit::now_ms(),
            plugin: String::new(),
            sha256: String::new(),
            from: approved.map(|a| a.from.clone()),
            recipients: approved.map(|a| a.recipients.clone()).unwrap_or_default(),
            rejected: vec![],
            size: None,
            message_id: None,
            outcome,
            reason,
            outbox: None,
            dead_letter: None,
        }
    }

    /// The host side of `sender.send`. Errors are host failures (they trap
    /// the plugin); refusals are `send-error`s.
    pub async fn send(&mut self, mut msg: Message) -> Result<Result<Receipt, SendError>> {
        let approved = match self.policy.check(&mut msg) {
            Ok(a) => a,
            Err(Ok(denied)) => {
                let mut r = Self::base(None, Outcome::Denied, Some(format!("policy-denied: {}", denied.0)));
                r.from = msg.from.as_ref().map(|m| m.address.clone());
                r.recipients = msg.to.iter().chain(&msg.cc).chain(&msg.bcc).map(|m| m.address.clone()).collect();
                self.record(r)?;
                return Ok(Err(SendError::PolicyDenied(denied.0)));
            }
            Err(Err(invalid)) => {
                self.record(Self::base(None, Outcome::Error, Some(format!("invalid-message: {invalid}"))))?;
                return Ok(Err(SendError::InvalidMessage(invalid)));
            }
        };
        let mut kept_at = None;
        let result = match &self.delivery {
            Delivery::Relay => match self.mailer.deliver(&msg).await? {
                Ok(receipt) => Ok(receipt),
                Err(undelivered) => {
                    if let Some(kept) = &undelivered.kept {
                        kept_at = Some(self.dead_letters.keep(kept, &undelivered.error, Some(&self.plugin))?);
                    }
                    Err(undelivered.error)
                }
            },
            Delivery::Outbox(dir) => {
                let dir = dir.clone();
                match self.mailer.render(&msg).await? {
                    Ok(rendered) => {
                        let path = outbox::write(&dir, &rendered.message_id, &rendered.bytes)?;
                        let mut r = Self::base(Some(&approved), Outcome::Accepted, None);
                        r.size = Some(rendered.bytes.len() as u64);
                        r.message_id = Some(rendered.message_id.clone());
                        r.outbox = Some(path.display().to_string());
                        self.record(r)?;
                        return Ok(Ok(Receipt {
                            message_id: rendered.message_id,
                            accepted: rendered.envelope.recipients,
                            rejected: vec![],
                            size: rendered.bytes.len() as u64,
                            reply: Reply { code: 250, enhanced: None, text: format!("written to {}", path.display()) },
                        }));
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let record = match &result {
            Ok(receipt) => {
                let mut r = Self::base(Some(&approved), Outcome::Accepted, Some(format!("{} {}", receipt.reply.code, receipt.reply.text)));
                r.size = Some(receipt.size);
                r.message_id = Some(receipt.message_id.clone());
                r.rejected = receipt.rejected.iter().map(|f| f.address.clone()).collect();
                r
            }
            Err(e) => {
                let outcome = match e {
                    SendError::Rejected(_) => Outcome::Rejected,
                    SendError::PolicyDenied(_) => Outcome::Denied,
                    _ => Outcome::Error,
                };
                let mut r = Self::base(Some(&approved), outcome, Some(format!("{}: {}", report::kind(e), report::describe(e))));
                if let SendError::Rejected(rej) = e {
                    r.rejected = rej.recipients.iter().map(|f| f.address.clone()).collect();
                }
                r.dead_letter = kept_at.map(|p| p.display().to_string());
                r
            }
        };
        self.record(record)?;
        Ok(result)
    }
}

/// Link `sender.send` (and the type-only `types` interface) for plugins.
/// `get` finds the run's forwarder in the store data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut Forwarder,
) -> wasmtime::Result<()> {
    linker.instance(TYPES_INTERFACE)?;
    let mut inst = linker.instance(INTERFACE)?;
    inst.func_wrap_async("send", move |mut store, (msg,): (Message,)| {
        Box::new(async move {
            let forwarder = get(store.data_mut());
            let result = forwarder.send(msg).await.map_err(wasmtime::Error::from_anyhow)?;
            Ok((result,))
        })
    })
}
