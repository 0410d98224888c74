//! `wasmail:mail/sender` as a plugin sees it: the host's implementation of
//! `send`. Each call is an attempt against the run's budget; a message that
//! passes the policy is assembled by the run's mailer, written ahead to the
//! spool with an `attempt` audit record, delivered over SMTP (RFC 5321) or
//! written to the outbox, and its outcome recorded: nothing a plugin handed
//! over is lost or unaudited, whatever stops the run.

use crate::mail::audit::{AuditLog, Outcome, Record};
use crate::bindings::transport::Rendered;
use crate::bindings::types::{Message, Receipt, Reply, SendError};
use crate::mail::deadletter::{DeadLetters, Pending};
use crate::mailer::Mailer;
use crate::mail::policy::{Approved, Policy, Refusal};
use crate::plugin::sandbox::Stop;
use crate::mail::outbox;
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

/// What the run counted; the records themselves are in the audit log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Calls to `send`.
    pub attempts: u64,
    /// Messages the relay (or the outbox) took.
    pub accepted: u64,
    /// Messages the policy refused.
    pub denied: u64,
    /// Messages the relay refused.
    pub rejected: u64,
    /// Messages that failed otherwise (invalid, network, TLS, timeout).
    pub errors: u64,
    /// Messages kept in the dead-letter folder for `wasmail retry`.
    pub kept: u64,
}

/// A send the run was in the middle of, for when a limit stops it there.
#[derive(Debug)]
pub enum InFlight {
    /// The mailer was assembling it; nothing was written or sent yet.
    Assembling(Approved),
    /// It is in the spool and was being delivered.
    Delivering(Approved, Pending, String),
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
    /// Where undelivered messages are kept, and the write-ahead spool.
    pub dead_letters: DeadLetters,
    /// What the run counted.
    pub counts: Counts,
    /// The send in progress, if any.
    pub in_flight: Option<InFlight>,
    /// Why the host stopped the run from inside `send`, if it did.
    pub stop: Option<Stop>,
}

fn base(approved: Option<&Approved>, outcome: Outcome, reason: Option<String>) -> Record {
    let mut r = Record::new(outcome);
    if let Some(a) = approved {
        r.from = Some(a.from.clone());
        r.recipients = a.recipients.clone();
    }
    r.reason = reason;
    r
}

fn outcome_of(e: &SendError) -> Outcome {
    match e {
        SendError::Rejected(_) => Outcome::Rejected,
        SendError::PolicyDenied(_) => Outcome::Denied,
        _ => Outcome::Error,
    }
}

impl Forwarder {
    fn record(&mut self, mut r: Record) -> Result<()> {
        match r.outcome {
            Outcome::Attempt => {}
            Outcome::Accepted => self.counts.accepted += 1,
            Outcome::Denied => self.counts.denied += 1,
            Outcome::Rejected => self.counts.rejected += 1,
            Outcome::Error => self.counts.errors += 1,
        }
        if r.dead_letter.is_some() {
            self.counts.kept += 1;
        }
        r.plugin.clone_from(&self.plugin);
        r.sha256.clone_from(&self.sha256);
        self.audit.append(&r).map_err(|e| self.stop(Stop::Host(format!("the audit log could not be written: {e:#}"))))
    }

    /// Stop the run from inside `send`: remember why (typed), and return the
    /// error that traps the plugin.
    fn stop(&mut self, stop: Stop) -> anyhow::Error {
        let e = anyhow::anyhow!("{stop}");
        self.stop = Some(stop);
        e
    }

    /// The host side of `sender.send`. `Err` stops the run (a trap);
    /// refusals are `send-error`s.
    pub async fn send(&mut self, mut msg: Message) -> Result<Result<Receipt, SendError>> {
        self.counts.attempts += 1;
        match self.policy.attempt() {
            Ok(Ok(())) => {}
            Ok(Err(denied)) => {
                self.record(base(None, Outcome::Denied, Some(format!("policy-denied: {denied}"))))?;
                return Ok(Err(SendError::PolicyDenied(denied.to_string())));
            }
            Err(exhausted) => {
                self.record(base(None, Outcome::Denied, Some(format!("stopped: {exhausted}"))))?;
                return Err(self.stop(Stop::Budget(exhausted)));
            }
        }
        let approved = match self.policy.check(&mut msg) {
            Ok(a) => a,
            Err(Refusal::Denied(denied)) => {
                let mut r = base(None, Outcome::Denied, Some(format!("policy-denied: {denied}")));
                r.from = msg.from.as_ref().map(|m| m.address.clone());
                self.record(r)?;
                return Ok(Err(SendError::PolicyDenied(denied.to_string())));
            }
            Err(Refusal::Invalid(invalid)) => {
                self.record(base(None, Outcome::Error, Some(format!("invalid-message: {invalid}"))))?;
                return Ok(Err(SendError::InvalidMessage(invalid)));
            }
        };
        self.in_flight = Some(InFlight::Assembling(approved.clone()));
        let rendered = match self.mailer.render(&msg).await {
            Ok(r) => r,
            Err(e) => {
                self.in_flight = None;
                let why = format!("{e:#}");
                self.record(base(Some(&approved), Outcome::Error, Some(format!("mailer: {why}"))))?;
                return Err(self.stop(Stop::Mailer(why)));
            }
        };
        self.in_flight = None;
        let rendered = match rendered {
            Ok(r) => r,
            Err(e) => {
                self.record(base(Some(&approved), outcome_of(&e), Some(format!("{}: {}", &e.kind(), &e.describe()))))?;
                return Ok(Err(e));
            }
        };
        match self.delivery.clone() {
            Delivery::Outbox(dir) => self.to_outbox(&dir, approved, rendered),
            Delivery::Relay => self.to_relay(approved, rendered).await,
        }
    }

    fn to_outbox(&mut self, dir: &std::path::Path, approved: Approved, rendered: Rendered) -> Result<Result<Receipt, SendError>> {
        let path = match outbox::write(dir, &rendered.bytes) {
            Ok(p) => p,
            Err(e) => return Err(self.could_not_keep("outbox", &approved, rendered.message_id, &e)),
        };
        let mut r = base(Some(&approved), Outcome::Accepted, None);
        r.size = Some(rendered.bytes.len() as u64);
        r.message_id = Some(rendered.message_id.clone());
        r.outbox = Some(path.display().to_string());
        if let Err(e) = self.record(r) {
            // No mail without its record: take the file back.
            if let Err(undo) = std::fs::remove_file(&path) {
                tracing::error!("removing {} after its audit record failed: {undo}", path.display());
            }
            return Err(e);
        }
        Ok(Ok(Receipt {
            message_id: rendered.message_id,
            accepted: rendered.envelope.recipients,
            rejected: vec![],
            size: rendered.bytes.len() as u64,
            reply: Reply { code: 250, enhanced: None, text: format!("written to {}", path.display()) },
        }))
    }

    async fn to_relay(&mut self, approved: Approved, rendered: Rendered) -> Result<Result<Receipt, SendError>> {
        let pending = match self.dead_letters.write_ahead(&rendered, Some(&self.plugin)) {
            Ok(p) => p,
            Err(e) => return Err(self.could_not_keep("spool", &approved, rendered.message_id, &e)),
        };
        let mut attempt = base(Some(&approved), Outcome::Attempt, None);
        attempt.id = Some(pending.id.clone());
        attempt.message_id = Some(rendered.message_id.clone());
        attempt.size = Some(rendered.bytes.len() as u64);
        if let Err(e) = self.record(attempt) {
            // Not sent, and not to be sent later by `retry` unaudited.
            if let Err(undo) = pending.done() {
                tracing::error!("removing a spooled message after its audit record failed: {undo:#}");
            }
            return Err(e);
        }
        let id = pending.id.clone();
        self.in_flight = Some(InFlight::Delivering(approved, pending, rendered.message_id.clone()));
        let result = self.mailer.submit(&rendered.envelope, &rendered.bytes).await;
        let Some(InFlight::Delivering(approved, pending, message_id)) = self.in_flight.take() else {
            anyhow::bail!("the send in flight went missing");
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                let why = format!("{e:#}");
                self.settle_unknown(approved, pending, message_id, &format!("the mailer failed during delivery: {why}"))?;
                return Err(self.stop(Stop::Mailer(why)));
            }
        };
        let mut r = match &result {
            Ok(receipt) => {
                let mut r = base(Some(&approved), Outcome::Accepted, Some(format!("{} {}", receipt.reply.code, receipt.reply.text)));
                r.size = Some(receipt.size);
                r.rejected = receipt.rejected.iter().map(|f| f.address.clone()).collect();
                if let Err(e) = pending.done() {
                    // Delivered; only the spool copy lingers, where `retry`
                    // sees it as outcome unknown (`--force` only).
                    tracing::error!("removing the spool copy of a delivered message: {e:#}");
                }
                r
            }
            Err(e) => {
                let mut r = base(Some(&approved), outcome_of(e), Some(format!("{}: {}", e.kind(), e.describe())));
                if let SendError::Rejected(rej) = e {
                    r.rejected = rej.recipients.iter().map(|f| f.address.clone()).collect();
                }
                let kept = if e.worth_keeping() {
                    pending.keep(e).map(|p| Some(p.display().to_string()))
                } else {
                    pending.done().map(|()| None)
                };
                match kept {
                    Ok(path) => r.dead_letter = path,
                    Err(keep_error) => {
                        let why = format!("{keep_error:#}");
                        r.reason = Some(format!("{}; the spool could not settle it: {why}", r.reason.unwrap_or_default()));
                        r.id = Some(id);
                        r.message_id = Some(message_id);
                        self.record(r)?;
                        return Err(self.stop(Stop::Host(format!("the spool could not keep a message: {why}"))));
                    }
                }
                r
            }
        };
        r.id = Some(id);
        r.message_id = Some(message_id);
        self.record(r)?;
        Ok(result)
    }

    /// The `outbox` or the `spool` could not keep a message, so it was not
    /// sent: audit that, and stop the run (the host, not the plugin, failed).
    fn could_not_keep(&mut self, place: &str, approved: &Approved, message_id: String, e: &anyhow::Error) -> anyhow::Error {
        let why = format!("{e:#}");
        let mut r = base(Some(approved), Outcome::Error, Some(format!("{place}: {why}; not sent")));
        r.message_id = Some(message_id);
        if let Err(e) = self.record(r) {
            return e;
        }
        self.stop(Stop::Host(format!("the {place} could not keep a message: {why}")))
    }

    fn settle_unknown(&mut self, approved: Approved, pending: Pending, message_id: String, why: &str) -> Result<()> {
        let mut r = base(Some(&approved), Outcome::Error, Some(format!("outcome-unknown: {why}")));
        r.id = Some(pending.id.clone());
        r.message_id = Some(message_id);
        r.dead_letter = Some(pending.keep_unknown(why)?.display().to_string());
        self.record(r)
    }

    /// The run was stopped (`why`) in the middle of a send: record what
    /// became of that message. One being delivered is kept as
    /// `outcome-unknown`; one being assembled was neither written nor sent.
    pub fn abandon(&mut self, why: &str) -> Result<()> {
        match self.in_flight.take() {
            None => Ok(()),
            Some(InFlight::Assembling(approved)) => self.record(base(
                Some(&approved),
                Outcome::Error,
                Some(format!("stopped: {why}, while the message was assembled; nothing was sent")),
            )),
            Some(InFlight::Delivering(approved, pending, message_id)) => {
                self.settle_unknown(approved, pending, message_id, &format!("the run was stopped during delivery ({why})"))
            }
        }
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
