//! Draft validation (RFC 5322 2.2 field names, 3.4 addresses, 3.6 field
//! counts; RFC 2045 5.1 content types; RFC 2392 content ids): every field
//! checked and named in the error, every limit a constant here.

use super::address::{Address, AddressError, Mailbox, check_no_controls};
use super::draft::{Draft, Envelope, InvalidMessage, RawMailbox};
use super::encode;

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
/// The longest custom header field name: one that still fits a folded line
/// with its colon (RFC 5322 2.1.1, 78 characters).
pub const MAX_HEADER_NAME: usize = 76;
/// The longest content id, without its angle brackets (RFC 2392).
pub const MAX_CONTENT_ID: usize = 250;

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
    // Only the mailer signs (RFC 6376), with the host's key.
    "dkim-signature",
];

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
    if name.len() > MAX_HEADER_NAME {
        return Err(format!("header name longer than {MAX_HEADER_NAME} characters"));
    }
    match name.bytes().find(|b| !(33..=126).contains(b) || *b == b':') {
        Some(b) => Err(format!("header name contains {:?}", b as char)),
        None => Ok(()),
    }
}

/// The longest type, and the longest subtype, of a content type: RFC 6838
/// 4.2 registers none longer.
pub const MAX_MEDIA_TYPE_NAME: usize = 127;

/// Whether a top-level media type is a container: `multipart` or
/// `message` (RFC 2046 5).
pub fn is_container(ty: &str) -> bool {
    ty.eq_ignore_ascii_case("multipart") || ty.eq_ignore_ascii_case("message")
}

/// An attachment's content type: `type/subtype`, MIME tokens of at most
/// [`MAX_MEDIA_TYPE_NAME`] characters each. Not a container (`multipart/*`,
/// `message/*`): an attachment goes as base64, which RFC 2046 5.1 and
/// 5.2.1 forbid for them, and a multipart part would need a boundary.
fn check_content_type(ct: &str) -> Result<(), String> {
    let (ty, sub) = ct.split_once('/').ok_or("not of the form type/subtype")?;
    if !encode::is_token(ty) || !encode::is_token(sub) {
        return Err("type and subtype must be MIME tokens".into());
    }
    if ty.len() > MAX_MEDIA_TYPE_NAME || sub.len() > MAX_MEDIA_TYPE_NAME {
        return Err(format!("type and subtype must be at most {MAX_MEDIA_TYPE_NAME} characters each"));
    }
    if is_container(ty) {
        return Err(format!(
            "{ty}/* is a container type, which cannot be sent as base64 (RFC 2046); attach it as application/octet-stream"
        ));
    }
    Ok(())
}

fn check_content_id(cid: &str) -> Result<(), String> {
    if cid.is_empty() || cid.len() > MAX_CONTENT_ID {
        return Err(format!("must be 1 to {MAX_CONTENT_ID} characters"));
    }
    match cid.bytes().find(|b| !b.is_ascii_graphic() || b"<>\"\\()[],;:".contains(b)) {
        Some(b) => Err(format!("contains {:?}", b as char)),
        None => Ok(()),
    }
}

/// A validated draft: every field checked, addresses parsed.
pub(super) struct Checked<'a> {
    pub(super) from: Mailbox,
    pub(super) reply_to: Option<Mailbox>,
    pub(super) to: Vec<Mailbox>,
    pub(super) cc: Vec<Mailbox>,
    pub(super) envelope: Envelope,
    pub(super) draft: &'a Draft,
}

fn validate_list(field: &str, list: &[RawMailbox]) -> Result<Vec<Mailbox>, InvalidMessage> {
    list.iter().enumerate().map(|(i, m)| m.validate(&format!("{field}[{i}]"))).collect()
}

impl Draft {
    /// Validate every field, naming the first bad one.
    pub(super) fn check(&self) -> Result<Checked<'_>, InvalidMessage> {
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
}
