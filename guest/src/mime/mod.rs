//! MIME assembly: turns a validated draft into the exact message bytes
//! (RFC 5322 header fields, RFC 2045-2049 bodies and multiparts, RFC 2047
//! encoded words, RFC 2231 parameters, RFC 2392 content ids).
//!
//! Pure code: the caller supplies the date, the Message-ID and a seed for
//! boundaries, so the same draft always gives the same bytes.

pub mod address;
pub mod lint;
pub mod encode;
pub mod header;
pub mod pattern;

use address::{Address, AddressError, Mailbox, check_no_controls};
use encode::{base64_lines, mime_parameter, quoted_printable, seven_bit_text};
use header::{HeaderWriter, format_date};

/// The most recipients (To + Cc + Bcc) one message may have. RFC 5321
/// 4.5.3.1.8 asks servers to take at least 100 per transaction; more than this
/// is a mistake or abuse.
pub const MAX_RECIPIENTS: usize = 1000;
/// The most custom header fields.
pub const MAX_CUSTOM_HEADERS: usize = 100;
/// The longest custom header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 4096;
/// The longest subject, in bytes.
pub const MAX_SUBJECT: usize = 4096;
/// The longest attachment file name, in bytes.
pub const MAX_FILENAME: usize = 1024;
/// The most attachments.
pub const MAX_ATTACHMENTS: usize = 1000;

/// Header fields the builder writes itself; a custom header may not repeat them.
pub const RESERVED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "content-id",
    "x-priority",
    "return-path",
    "received",
];

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

impl RawMailbox {
    /// Validate, naming `field` in the error.
    pub fn validate(&self, field: &str) -> Result<Mailbox, InvalidMessage> {
        Mailbox::new(self.name.as_deref(), &self.address).map_err(|e| {
            let sub = match e {
                AddressError::TooLong { what: "display name", .. } => "name",
                AddressError::ControlCharacter(_)
                    if self.name.as_deref().is_some_and(|n| check_no_controls(n).is_err()) =>
                {
                    "name"
                }
                _ => "address",
            };
            InvalidMessage::new(format!("{field}.{sub}"), e)
        })
    }
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
    /// 3: no header.
    #[default]
    Normal,
    /// 4 (Low).
    Low,
    /// 5 (Lowest).
    Lowest,
}

impl Priority {
    fn header_value(self) -> Option<&'static str> {
        match self {
            Self::Highest => Some("1 (Highest)"),
            Self::High => Some("2 (High)"),
            Self::Normal => None,
            Self::Low => Some("4 (Low)"),
            Self::Lowest => Some("5 (Lowest)"),
        }
    }
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
    /// `X-Priority`.
    pub priority: Priority,
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

fn check_text(field: &str, value: &str, max: usize) -> Result<(), InvalidMessage> {
    check_no_controls(value).map_err(|e| InvalidMessage::new(field, e))?;
    if value.len() > max {
        return Err(InvalidMessage::new(field, format!("is {} bytes, the limit is {max}", value.len())));
    }
    Ok(())
}

/// A header field name: printable ASCII except `:` (RFC 5322 2.2).
pub fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if name.len() > 76 {
        return Err("header name longer than 76 characters".into());
    }
    match name.bytes().find(|b| !(33..=126).contains(b) || *b == b':') {
        Some(b) => Err(format!("header name contains {:?}", b as char)),
        None => Ok(()),
    }
}

fn check_content_type(ct: &str) -> Result<(), String> {
    let (ty, sub) = ct.split_once('/').ok_or("not of the form type/subtype")?;
    if !encode::is_token(ty) || !encode::is_token(sub) {
        return Err("type and subtype must be MIME tokens".into());
    }
    Ok(())
}

fn check_content_id(cid: &str) -> Result<(), String> {
    if cid.is_empty() || cid.len() > 250 {
        return Err("must be 1 to 250 characters".into());
    }
    match cid.bytes().find(|b| !b.is_ascii_graphic() || b"<>\"\\()[],;:".contains(b)) {
        Some(b) => Err(format!("contains {:?}", b as char)),
        None => Ok(()),
    }
}

/// A validated draft: every field checked, addresses parsed.
struct Checked<'a> {
    from: Mailbox,
    reply_to: Option<Mailbox>,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    envelope: Envelope,
    draft: &'a Draft,
}

fn validate_list(field: &str, list: &[RawMailbox]) -> Result<Vec<Mailbox>, InvalidMessage> {
    list.iter().enumerate().map(|(i, m)| m.validate(&format!("{field}[{i}]"))).collect()
}

impl Draft {
    /// Validate every field, naming the first bad one.
    fn check(&self) -> Result<Checked<'_>, InvalidMessage> {
        let from = self
            .from
            .as_ref()
            .ok_or_else(|| InvalidMessage::new("from", "missing"))?
            .validate("from")?;
        let reply_to = self.reply_to.as_ref().map(|m| m.validate("reply-to")).transpose()?;
        let to = validate_list("to", &self.to)?;
        let cc = validate_list("cc", &self.cc)?;
        let bcc = validate_list("bcc", &self.bcc)?;
        let total = to.len() + cc.len() + bcc.len();
        if total == 0 {
            return Err(InvalidMessage::new("to", "no recipients in to, cc or bcc"));
        }
        if total > MAX_RECIPIENTS {
            return Err(InvalidMessage::new("to", format!("{total} recipients, the limit is {MAX_RECIPIENTS}")));
        }
        check_text("subject", &self.subject, MAX_SUBJECT)?;
        // Bodies may hold any text: NUL, bare CR and long lines make them
        // quoted-printable, so they never reach the wire raw.
        if self.attachments.len() > MAX_ATTACHMENTS {
            return Err(InvalidMessage::new("attachments", format!("more than {MAX_ATTACHMENTS}")));
        }
        for (i, a) in self.attachments.iter().enumerate() {
            let field = format!("attachments[{i}]");
            if a.filename.trim().is_empty() {
                return Err(InvalidMessage::new(format!("{field}.filename"), "empty"));
            }
            check_text(&format!("{field}.filename"), &a.filename, MAX_FILENAME)?;
            if let Some(ct) = &a.content_type {
                check_content_type(ct).map_err(|e| InvalidMessage::new(format!("{field}.content-type"), e))?;
            }
            if let Some(cid) = &a.content_id {
                check_content_id(cid).map_err(|e| InvalidMessage::new(format!("{field}.content-id"), e))?;
            }
        }
        if self.headers.len() > MAX_CUSTOM_HEADERS {
            return Err(InvalidMessage::new("headers", format!("more than {MAX_CUSTOM_HEADERS}")));
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            check_header_name(name).map_err(|e| InvalidMessage::new(format!("headers[{i}].name"), e))?;
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(InvalidMessage::new(
                    format!("headers[{i}].name"),
                    format!("{name} is written by the builder and cannot be set"),
                ));
            }
            check_text(&format!("headers[{i}].value"), value, MAX_HEADER_VALUE)?;
        }
        let mut recipients: Vec<Address> = Vec::with_capacity(total);
        for m in to.iter().chain(&cc).chain(&bcc) {
            if !recipients.iter().any(|r| r.local() == m.address.local() && r.domain().eq_ignore_ascii_case(m.address.domain())) {
                recipients.push(m.address.clone());
            }
        }
        let envelope = Envelope { from: from.address.clone(), recipients };
        Ok(Checked { from, reply_to, to, cc, envelope, draft: self })
    }

    /// Validate and assemble the message.
    pub fn build(&self, ctx: &BuildContext) -> Result<Rendered, InvalidMessage> {
        let c = self.check()?;
        let smtputf8 = c.envelope.from.needs_smtputf8() || c.envelope.recipients.iter().any(Address::needs_smtputf8)
            || c.reply_to.as_ref().is_some_and(|m| m.address.needs_smtputf8());
        let id_domain = match c.from.address.domain() {
            d if d.starts_with('[') => "wasmail.invalid",
            d => d,
        };
        let message_id = format!("{:016x}.{}@{}", ctx.random, ctx.unix_time, id_domain);

        let mut h = HeaderWriter::default();
        h.field("Date", &format_date(ctx.unix_time));
        h.mailboxes("From", std::slice::from_ref(&c.from));
        if let Some(r) = &c.reply_to {
            h.mailboxes("Reply-To", std::slice::from_ref(r));
        }
        if !c.to.is_empty() {
            h.mailboxes("To", &c.to);
        }
        if !c.cc.is_empty() {
            h.mailboxes("Cc", &c.cc);
        }
        h.unstructured("Subject", &self.subject);
        h.field("Message-ID", &format!("<{message_id}>"));
        if let Some(p) = self.priority.header_value() {
            h.field("X-Priority", p);
        }
        for (name, value) in &self.headers {
            h.unstructured(name, value);
        }
        h.field("MIME-Version", "1.0");

        let mut out = Out { segments: Vec::new(), cur: h.into_bytes() };
        let tree = c.tree();
        let mut seed = ctx.random;
        let boundary = loop {
            let b = format!("=_wm_{:016x}", seed);
            if matches!(tree, Node::Text { .. }) || !c.text_bodies_contain(&b) {
                break b;
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        };
        let mut counter = 0;
        write_node(&tree, &mut out, &boundary, &mut counter);
        if !out.cur.ends_with(b"\r\n") {
            out.cur.extend_from_slice(b"\r\n");
        }
        out.flush();
        let rendered = Rendered { message_id, envelope: c.envelope, segments: out.segments, smtputf8 };
        for (i, s) in rendered.segments.iter().enumerate() {
            if let Segment::Bytes(b) = s {
                lint::check_lines(b, i == 0).map_err(|e| InvalidMessage::new("message", e))?;
            }
        }
        Ok(rendered)
    }
}

/// A node of the MIME tree.
enum Node<'a> {
    Text { subtype: &'static str, text: &'a str },
    File(&'a Attachment),
    Multi { subtype: &'static str, parts: Vec<Node<'a>> },
}

impl Checked<'_> {
    fn tree(&self) -> Node<'_> {
        let d = self.draft;
        let text = d.text.as_deref().map(|t| Node::Text { subtype: "plain", text: t });
        let html = d.html.as_deref().map(|t| Node::Text { subtype: "html", text: t });
        let mut body = match (text, html) {
            (Some(t), Some(h)) => Node::Multi { subtype: "alternative", parts: vec![t, h] },
            (Some(t), None) => t,
            (None, Some(h)) => h,
            (None, None) => Node::Text { subtype: "plain", text: "" },
        };
        let inline: Vec<Node<'_>> = d.attachments.iter().filter(|a| a.content_id.is_some()).map(Node::File).collect();
        if !inline.is_empty() {
            let mut parts = vec![body];
            parts.extend(inline);
            body = Node::Multi { subtype: "related", parts };
        }
        let files: Vec<Node<'_>> = d.attachments.iter().filter(|a| a.content_id.is_none()).map(Node::File).collect();
        if !files.is_empty() {
            let mut parts = vec![body];
            parts.extend(files);
            body = Node::Multi { subtype: "mixed", parts };
        }
        body
    }

    fn text_bodies_contain(&self, needle: &str) -> bool {
        [&self.draft.text, &self.draft.html].into_iter().flatten().any(|t| t.contains(needle))
    }
}

struct Out {
    segments: Vec<Segment>,
    cur: Vec<u8>,
}

impl Out {
    fn flush(&mut self) {
        if !self.cur.is_empty() {
            self.segments.push(Segment::Bytes(std::mem::take(&mut self.cur)));
        }
    }
}

fn write_node(node: &Node<'_>, out: &mut Out, boundary_base: &str, counter: &mut usize) {
    match node {
        Node::Text { subtype, text } => {
            out.cur.extend_from_slice(format!("Content-Type: text/{subtype}; charset=utf-8\r\n").as_bytes());
            const SEVEN: &[u8] = b"Content-Transfer-Encoding: 7bit\r\n\r\n";
            out.cur.extend_from_slice(SEVEN);
            if !seven_bit_text(text, encode::HEADER_FOLD, &mut out.cur) {
                out.cur.truncate(out.cur.len() - SEVEN.len());
                out.cur.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
                quoted_printable(text, &mut out.cur);
            }
        }
        Node::File(a) => {
            let ct = match &a.content_type {
                Some(ct) => ct.clone(),
                None => mime_guess::from_path(&a.filename).first_or_octet_stream().essence_str().to_owned(),
            };
            let mut h = format!("Content-Type: {ct}{}\r\n", mime_parameter("name", &a.filename));
            let disposition = if a.content_id.is_some() { "inline" } else { "attachment" };
            h.push_str(&format!("Content-Disposition: {disposition}{}\r\n", mime_parameter("filename", &a.filename)));
            if let Some(cid) = &a.content_id {
                h.push_str(&format!("Content-ID: <{cid}>\r\n"));
            }
            h.push_str("Content-Transfer-Encoding: base64\r\n\r\n");
            out.cur.extend_from_slice(h.as_bytes());
            match &a.content {
                Content::Bytes(b) => base64_lines(b, &mut out.cur),
                Content::Stream { index, len } => {
                    out.flush();
                    out.segments.push(Segment::Base64Stream { index: *index, len: *len });
                }
            }
        }
        Node::Multi { subtype, parts } => {
            let boundary = format!("{boundary_base}_{counter}");
            *counter += 1;
            out.cur.extend_from_slice(
                format!("Content-Type: multipart/{subtype};\r\n boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
            );
            for part in parts {
                out.cur.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                write_node(part, out, boundary_base, counter);
                // The CRLF before a delimiter belongs to the delimiter (RFC 2046
                // 5.1.1); a non-empty base64 body already ends with one.
                let ends_with_crlf = match part {
                    Node::File(a) => match &a.content {
                        Content::Bytes(b) => !b.is_empty(),
                        Content::Stream { len, .. } => *len > 0,
                    },
                    _ => false,
                };
                if !ends_with_crlf {
                    out.cur.extend_from_slice(b"\r\n");
                }
            }
            out.cur.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
