//! Rendering (RFC 5322 3.6 header fields, RFC 2046 5.1 multiparts, RFC 2045
//! 6.7/6.8 transfer encodings, RFC 2183 dispositions): the MIME tree of a
//! checked draft and its bytes, checked once more by [`super::lint`].

use super::address::Address;
use super::draft::{Attachment, BuildContext, Content, Draft, InvalidMessage, Priority, Rendered, Segment};
use super::encode::{self, base64_lines, mime_parameter, quoted_printable, seven_bit_text};
use super::header::{HeaderWriter, format_date};
use super::lint;
use super::validate::Checked;

impl Priority {
    fn header_value(self) -> &'static str {
        match self {
            Self::Highest => "1 (Highest)",
            Self::High => "2 (High)",
            Self::Normal => "3 (Normal)",
            Self::Low => "4 (Low)",
            Self::Lowest => "5 (Lowest)",
        }
    }
}

impl Draft {
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
        if let Some(p) = self.priority {
            h.field("X-Priority", p.header_value());
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
            let ct = attachment_type(a);
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
                Content::Stream { index, len, .. } => {
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


/// The declared type of an attachment, or the one its file name suggests:
/// `application/octet-stream` when that is a container type (`x.eml` is
/// `message/rfc822`), which cannot go as base64 (RFC 2046 5.2.1).
pub fn declared_type(content_type: Option<&str>, filename: &str) -> String {
    match content_type {
        Some(ct) => ct.to_owned(),
        None => {
            let guessed = mime_guess::from_path(filename).first_or_octet_stream();
            if super::validate::is_container(guessed.type_().as_str()) {
                return mime_guess::mime::APPLICATION_OCTET_STREAM.essence_str().to_owned();
            }
            guessed.essence_str().to_owned()
        }
    }
}

/// True when `content_type` is text/* with no charset: its bytes must be
/// looked at to say which charset (RFC 2046 4.1.2: without one, a reader
/// takes US-ASCII).
pub fn needs_charset(content_type: &str) -> bool {
    let lower = content_type.to_ascii_lowercase();
    lower.trim_start().starts_with("text/") && !lower.contains("charset=")
}

/// The Content-Type of an attachment as sent: a text/* type without a
/// charset gets `charset=utf-8` when its bytes are UTF-8, and otherwise
/// stops claiming to be text (`application/octet-stream`), since its
/// charset is unknown.
pub fn attachment_type(a: &Attachment) -> String {
    let ct = declared_type(a.content_type.as_deref(), &a.filename);
    if !needs_charset(&ct) {
        return ct;
    }
    let utf8 = match &a.content {
        Content::Bytes(b) => std::str::from_utf8(b).is_ok(),
        Content::Stream { utf8, .. } => utf8.unwrap_or(false),
    };
    if utf8 { format!("{}; charset=utf-8", ct.trim_end().trim_end_matches(';')) } else { "application/octet-stream".to_owned() }
}
