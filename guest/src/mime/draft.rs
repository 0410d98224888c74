//! The builder's types (RFC 5322 3.3-3.6 fields, RFC 2045 parts, RFC 5321
//! 3.3 envelope): a [`Draft`] as the caller gives it, and the [`Rendered`]
//! message, in segments so attachment files can be streamed.

use super::address::Address;
use super::encode;

/// A field-named error: the message is malformed and nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidMessage {
    /// The field, e.g. `to[1].address` or `attachments[0].filename`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidMessage {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self { field: field.into(), reason: reason.to_string() }
    }
}

impl std::fmt::Display for InvalidMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidMessage {}

/// A mailbox as the caller gave it, not yet validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawMailbox {
    /// The display name.
    pub name: Option<String>,
    /// The address.
    pub address: String,
}

/// Where an attachment's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// In memory.
    Bytes(Vec<u8>),
    /// A stream the transport opens: `index` names it, `len` is its exact size.
    Stream {
        /// The caller's handle for the stream.
        index: usize,
        /// Its length in bytes.
        len: u64,
        /// Whether its bytes are UTF-8, when the caller read them to know
        /// (see `render::attachment_type`); `None` when it did not.
        utf8: Option<bool>,
    },
}

/// An attachment or inline part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name shown to the recipient.
    pub filename: String,
    /// The MIME type; guessed from `filename` when absent.
    pub content_type: Option<String>,
    /// The bytes.
    pub content: Content,
    /// Set for inline parts (multipart/related).
    pub content_id: Option<String>,
}

/// The `X-Priority` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// 1 (Highest).
    Highest,
    /// 2 (High).
    High,
    /// 3 (Normal), written out.
    #[default]
    Normal,
    /// 4 (Low).
    Low,
    /// 5 (Lowest).
    Lowest,
}

/// A message as the caller gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// The author.
    pub from: Option<RawMailbox>,
    /// `Reply-To`.
    pub reply_to: Option<RawMailbox>,
    /// `To`.
    pub to: Vec<RawMailbox>,
    /// `Cc`.
    pub cc: Vec<RawMailbox>,
    /// Envelope-only recipients.
    pub bcc: Vec<RawMailbox>,
    /// The subject.
    pub subject: String,
    /// Plain-text body.
    pub text: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Attachments and inline parts.
    pub attachments: Vec<Attachment>,
    /// `X-Priority`; none writes no header.
    pub priority: Option<Priority>,
    /// Extra header fields.
    pub headers: Vec<(String, String)>,
}

/// What the builder needs from the outside world.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Seconds since the Unix epoch, for `Date`.
    pub unix_time: u64,
    /// Random bits for the Message-ID and boundaries.
    pub random: u64,
}

/// The envelope: the reverse path and forward paths (RFC 5321 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `MAIL FROM`.
    pub from: Address,
    /// `RCPT TO`, To then Cc then Bcc, duplicates removed.
    pub recipients: Vec<Address>,
}

/// A piece of the rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal bytes (CRLF lines, not dot-stuffed).
    Bytes(Vec<u8>),
    /// The base64 of stream `index`, `len` bytes long, in 76-column CRLF lines.
    Base64Stream {
        /// The stream's handle.
        index: usize,
        /// Its length in bytes.
        len: u64,
    },
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The Message-ID without angle brackets.
    pub message_id: String,
    /// The envelope.
    pub envelope: Envelope,
    /// The message, in order.
    pub segments: Vec<Segment>,
    /// True when an address needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

impl Rendered {
    /// The exact size in octets (what `SIZE=` announces).
    pub fn size(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Bytes(b) => b.len() as u64,
                Segment::Base64Stream { len, .. } => encode::base64_encoded_len(*len),
            })
            .sum()
    }

    /// True when the literal bytes carry 8-bit data (needs 8BITMIME).
    pub fn eight_bit(&self) -> bool {
        self.segments.iter().any(|s| matches!(s, Segment::Bytes(b) if !b.is_ascii()))
    }

    /// The whole message as bytes, when it has no streamed part.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.size() as usize);
        for s in &self.segments {
            match s {
                Segment::Bytes(b) => out.extend_from_slice(b),
                Segment::Base64Stream { .. } => return None,
            }
        }
        Some(out)
    }
}

