//! The hello plugin: sends one short greeting to the address given as input.


use wasmail_plugin::{Mailbox, Message, describe, send};

/// The recipient when the input is empty.
const DEFAULT_TO: &str = "demo@example.com";

struct Hello;

impl wasmail_plugin::Guest for Hello {
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
            priority: None,
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

wasmail_plugin::export!(Hello);


