//! The wasmail plugin SDK: bindings for `world wasmail:mail/plugin` (plus the
//! monotonic clock) and small helpers, so a plugin is `impl Guest` and
//! `wasmail_plugin::export!(MyPlugin)`. Errors read as in the WIT
//! (`policy-denied: ...`, stage `mail-from`), replies as RFC 5321
//! `code [enhanced] text`.

/// The generated bindings (`Guest`, `wasi`, `wasmail`).
pub mod bindings {
    wit_bindgen::generate!({
    path: "../../wit",
    inline: "
        package wasmail:sdk;
        world plugin-sdk {
            include wasmail:mail/plugin@0.1.0;
            import wasi:clocks/monotonic-clock@0.2.12;
        }
    ",
    world: "wasmail:sdk/plugin-sdk",
    generate_all,
    pub_export_macro: true,
    default_bindings_module: "wasmail_plugin::bindings",
    });
}

pub use bindings::{Guest, export, wasi};
use bindings::wasmail;

pub use wasmail::mail::sender::{send, send_many};
pub use wasmail::mail::types::{Attachment, Content, Mailbox, Message, Priority, Receipt, Reply, SendError, Stage};

/// The most messages [`send_all`] hands to `send-many` per call: enough
/// for the host to spread each call over all of its relay sessions, and
/// for the call's last round trips (a call returns when its last message
/// is settled, and the sessions that finished first wait for it) to be a
/// small part of it. Against a full Postfix on 8 sessions, 4,096 a call
/// left the cores idle about a third less often than 1,024 did.
/// For messages of 2 KB or more, [`SEND_MANY_BYTES`] ends a call first.
pub const SEND_MANY_BATCH: usize = 4096;

/// The most octets of message text and in-memory attachments
/// ([`approximate_size`]) [`send_all`] gathers for one `send-many` call (the
/// message that passes it is the call's last), so a list of large
/// messages stays small in the plugin's memory.
pub const SEND_MANY_BYTES: usize = 8 << 20;

/// A message's octets as the plugin holds them: its subject, text, HTML and
/// in-memory attachments (a `file` attachment is read by the host).
pub fn approximate_size(msg: &Message) -> usize {
    let text = msg.text.as_ref().map_or(0, String::len) + msg.html.as_ref().map_or(0, String::len);
    let attached: usize = msg
        .attachments
        .iter()
        .map(|a| match &a.content {
            Content::Bytes(b) => b.len(),
            Content::File(path) => path.len(),
        })
        .sum();
    msg.subject.len() + text + attached
}

/// Send every message `msgs` yields with `send-many`, up to
/// [`SEND_MANY_BATCH`] messages or [`SEND_MANY_BYTES`] at a time, so a long
/// run is pipelined without being built whole in memory.
/// `each` gets every message's position (from 0) and result, in order, as
/// its batch settles; it returns `false` to stop before the next batch.
/// Returns how many messages were handed to the host.
pub fn send_all(
    msgs: impl IntoIterator<Item = Message>,
    mut each: impl FnMut(usize, Result<Receipt, SendError>) -> bool,
) -> usize {
    let mut msgs = msgs.into_iter();
    let mut sent = 0;
    loop {
        let mut batch: Vec<Message> = Vec::new();
        let mut bytes = 0;
        while batch.len() < SEND_MANY_BATCH && bytes < SEND_MANY_BYTES {
            let Some(msg) = msgs.next() else { break };
            bytes += approximate_size(&msg);
            batch.push(msg);
        }
        if batch.is_empty() {
            return sent;
        }
        let mut go_on = true;
        for result in send_many(&batch) {
            go_on &= each(sent, result);
            sent += 1;
        }
        if !go_on {
            return sent;
        }
    }
}

impl Stage {
    /// The stage as the WIT spells it, e.g. `mail-from`.
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

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Mailbox {
    /// A mailbox without a display name.
    pub fn addr(address: &str) -> Self {
        Self { name: None, address: address.to_owned() }
    }
}

impl Message {
    /// A plain-text message to `to`, From left to the host's policy.
    pub fn text(to: &[&str], subject: &str, text: &str) -> Self {
        Self {
            from: None,
            reply_to: None,
            to: to.iter().map(|a| Mailbox::addr(a)).collect(),
            cc: vec![],
            bcc: vec![],
            subject: subject.to_owned(),
            text: Some(text.to_owned()),
            html: None,
            attachments: vec![],
            priority: None,
            headers: vec![],
        }
    }
}

/// A server reply as `code [enhanced] text`.
pub fn reply(r: &Reply) -> String {
    match &r.enhanced {
        Some(enhanced) => format!("{} {} {}", r.code, enhanced, r.text),
        None => format!("{} {}", r.code, r.text),
    }
}

/// A `send-error` as `<case>: <detail>`, the case named as in the WIT.
pub fn describe(e: &SendError) -> String {
    match e {
        SendError::InvalidMessage(t) => format!("invalid-message: {t}"),
        SendError::PolicyDenied(t) => format!("policy-denied: {t}"),
        SendError::Connect(t) => format!("connect: {t}"),
        SendError::Tls(t) => format!("tls: {t}"),
        SendError::Auth(r) => format!("auth: {}", reply(r)),
        SendError::Rejected(r) => format!(
            "rejected ({}, stage {}): {}",
            if r.transient { "transient" } else { "permanent" },
            r.stage,
            reply(&r.reply)
        ),
        SendError::Timeout(stage) => format!("timeout in stage {stage}"),
        SendError::Protocol(t) => format!("protocol: {t}"),
        SendError::OutcomeUnknown(t) => format!("outcome-unknown: {t}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_in_the_wit() {
        let reply = Reply { code: 451, enhanced: Some("4.3.0".into()), text: "try later".into() };
        let rejected = SendError::Rejected(wasmail::mail::types::Rejection {
            stage: Stage::MailFrom,
            transient: true,
            reply,
            recipients: vec![],
        });
        assert_eq!(describe(&rejected), "rejected (transient, stage mail-from): 451 4.3.0 try later");
        assert_eq!(describe(&SendError::Timeout(Stage::DataEnd)), "timeout in stage data-end");
    }

    #[test]
    fn a_message_counts_its_text_and_in_memory_attachments() {
        let mut msg = Message::text(&["a@example.com"], "Hi", "héllo");
        assert_eq!(approximate_size(&msg), 2 + "héllo".len());
        msg.html = Some("<p>x</p>".into());
        msg.attachments = vec![
            Attachment { filename: "a.bin".into(), content_type: None, content: Content::Bytes(vec![0; 1000]), content_id: None },
            Attachment { filename: "b.pdf".into(), content_type: None, content: Content::File("b.pdf".into()), content_id: None },
        ];
        assert_eq!(approximate_size(&msg), 2 + "héllo".len() + 8 + 1000 + 5);
    }
}
