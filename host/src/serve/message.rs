//! The JSON body of `POST /v1/messages`: a message (RFC 5322 fields) as a
//! client writes it, attachments in base64 (RFC 4648), checked field by
//! field into the WIT `message` before anything is assembled.

use crate::bindings::types::{Attachment, Content, Mailbox, Message, Priority};
use base64::Engine as _;
use serde::Deserialize;

/// An address: `"a@example.com"` or `{"name": "A", "address": "a@example.com"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Address {
    Plain(String),
    Named { name: Option<String>, address: String },
}

impl From<Address> for Mailbox {
    fn from(a: Address) -> Self {
        match a {
            Address::Plain(address) => Self { name: None, address },
            Address::Named { name, address } => Self { name, address },
        }
    }
}

/// One attachment: its bytes in base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentBody {
    filename: String,
    content_type: Option<String>,
    content_base64: String,
    content_id: Option<String>,
}

/// The request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    from: Option<Address>,
    reply_to: Option<Address>,
    #[serde(default)]
    to: Vec<Address>,
    #[serde(default)]
    cc: Vec<Address>,
    #[serde(default)]
    bcc: Vec<Address>,
    #[serde(default)]
    subject: String,
    text: Option<String>,
    html: Option<String>,
    /// `highest`, `high`, `normal`, `low` or `lowest`.
    priority: Option<String>,
    /// Extra header fields, `[name, value]` pairs.
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    attachments: Vec<AttachmentBody>,
}

impl MessageBody {
    /// The WIT message, or the first bad field, named.
    pub fn into_message(self) -> Result<Message, String> {
        let priority = match self.priority.as_deref() {
            None => None,
            Some("highest") => Some(Priority::Highest),
            Some("high") => Some(Priority::High),
            Some("normal") => Some(Priority::Normal),
            Some("low") => Some(Priority::Low),
            Some("lowest") => Some(Priority::Lowest),
            Some(other) => {
                return Err(format!(
                    "priority: {:?} is not one of highest, high, normal, low, lowest",
                    crate::text::clip(other, 64)
                ));
            }
        };
        let attachments = self
            .attachments
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(a.content_base64.as_bytes())
                    .map_err(|e| format!("attachments[{i}].content_base64: {e}"))?;
                Ok(Attachment { filename: a.filename, content_type: a.content_type, content: Content::Bytes(bytes), content_id: a.content_id })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Message {
            from: self.from.map(Into::into),
            reply_to: self.reply_to.map(Into::into),
            to: self.to.into_iter().map(Into::into).collect(),
            cc: self.cc.into_iter().map(Into::into).collect(),
            bcc: self.bcc.into_iter().map(Into::into).collect(),
            subject: self.subject,
            text: self.text,
            html: self.html,
            attachments,
            priority,
            headers: self.headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_attachments_and_bad_fields() {
        let body: MessageBody = serde_json::from_str(
            r#"{"from": {"name": "A", "address": "a@example.com"}, "to": ["b@example.org"], "subject": "hi",
                "text": "x", "attachments": [{"filename": "a.txt", "content_base64": "aGk="}]}"#,
        )
        .unwrap();
        let m = body.into_message().unwrap();
        assert_eq!(m.from.unwrap().name.as_deref(), Some("A"));
        assert_eq!(m.to[0].address, "b@example.org");
        assert!(matches!(&m.attachments[0].content, Content::Bytes(b) if b == b"hi"));
        let bad: MessageBody = serde_json::from_str(r#"{"attachments": [{"filename": "a", "content_base64": "!!"}]}"#).unwrap();
        assert!(bad.into_message().unwrap_err().starts_with("attachments[0].content_base64: "));
        let bad: MessageBody = serde_json::from_str(r#"{"priority": "urgent"}"#).unwrap();
        assert!(bad.into_message().unwrap_err().starts_with("priority: "));
        assert!(serde_json::from_str::<MessageBody>(r#"{"bcc_all": true}"#).is_err(), "unknown fields are refused");
    }
}
