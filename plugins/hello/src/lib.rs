//! The hello plugin: sends one short greeting to the address given as input.

wit_bindgen::generate!({
    path: "../../wit",
    world: "wasmail:mail/plugin",
    // Needed to parse the package: `world mailer` imports the gated wasi:tls.
    features: ["tls"],
    generate_all,
});

use wasmail::mail::sender::send;
use wasmail::mail::types::{Mailbox, Message, Priority, Reply, SendError};

/// The recipient when the input is empty.
const DEFAULT_TO: &str = "demo@example.com";

struct Hello;

impl Guest for Hello {
    fn run(input: String) -> Result<String, String> {
        let to = match input.trim() {
            "" => DEFAULT_TO,
            address => address,
        };
        let msg = Message {
            // The host's policy supplies the From.
            from: None,
            reply_to: None,
            to: vec![Mailbox {
                name: None,
                address: to.to_string(),
            }],
            cc: Vec::new(),
            bcc: Vec::new(),
            subject: "Hello from a wasmail plugin".to_string(),
            text: Some(
                "Hello!\n\
                 \n\
                 This message was built by a WebAssembly component running in\n\
                 the wasmail sandbox and handed to the host through\n\
                 wasmail:mail/sender.\n\
                 \n\
                 -- the wasmail hello plugin\n"
                    .to_string(),
            ),
            html: None,
            attachments: Vec::new(),
            priority: Priority::Normal,
            headers: vec![("X-Mailer".to_string(), "wasmail hello plugin".to_string())],
        };
        let receipt =
            send(&msg).map_err(|e| format!("sending to {to} failed: {}", describe(&e)))?;
        Ok(format!(
            "sent {} to {} recipient(s)",
            receipt.message_id,
            receipt.accepted.len()
        ))
    }
}

export!(Hello);

/// Renders a `send-error` as `<case>: <detail>`, the case named as in the WIT.
fn describe(e: &SendError) -> String {
    match e {
        SendError::InvalidMessage(t) => format!("invalid-message: {t}"),
        SendError::PolicyDenied(t) => format!("policy-denied: {t}"),
        SendError::Connect(t) => format!("connect: {t}"),
        SendError::Tls(t) => format!("tls: {t}"),
        SendError::Auth(r) => format!("auth: {}", reply(r)),
        SendError::Rejected(r) => format!(
            "rejected ({}, stage {:?}): {}",
            if r.transient {
                "transient"
            } else {
                "permanent"
            },
            r.stage,
            reply(&r.reply)
        ),
        SendError::Timeout(stage) => format!("timeout in stage {stage:?}"),
        SendError::Protocol(t) => format!("protocol: {t}"),
        SendError::OutcomeUnknown(t) => format!("outcome-unknown: {t}"),
    }
}

/// Renders a server reply as `code [enhanced] text`.
fn reply(r: &Reply) -> String {
    match &r.enhanced {
        Some(enhanced) => format!("{} {} {}", r.code, enhanced, r.text),
        None => format!("{} {}", r.code, r.text),
    }
}
