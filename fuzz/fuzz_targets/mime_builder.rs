//! mime_builder: any draft the builder accepts renders to CRLF-only lines of at most 998 octets that pass `check_lines`, survive dot-stuffing byte for byte with exactly one end-of-data marker, and parse with an independent parser (mail-parser) back to the same subject, From, To, text body and attachments; any draft it refuses names the bad field (never the builder's own `message` safety net).
//!
//! The input is `arbitrary`-derived. Most fields pick either from a small set
//! of valid, awkward values (so the fuzzer reaches `build`'s success path
//! often) or take arbitrary text (so it also reaches every refusal).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mail_parser::{MessageParser, MimeHeaders};
use wasmail_mailer::mime::address::Mailbox;
use wasmail_mailer::mime::lint::{MAX_LINE, check_lines};
use wasmail_mailer::mime::{Attachment, BuildContext, Content, Draft, Priority, RawMailbox};
use wasmail_mailer::smtp::dot::{stuff, unstuff};

const ADDRESSES: &[&str] = &[
    "rcpt@example.org",
    "jo.smith+tag@Example.COM",
    "o'brien@example.ie",
    "a!#$%&'*+-/=?^_`{|}~@example.com",
    "root@[127.0.0.1]",
    "root@[IPv6:::1]",
    "δοκιμή@παράδειγμα.δοκιμή",
    "x@a-b.c-d.example",
];
const DOMAINS: &[&str] = &["example.com", "EXAMPLE.org", "παράδειγμα.δοκιμή", "[192.0.2.1]", "[IPv6:2001:db8::1]", "x.y.z.example"];
const NAMES: &[&str] = &[
    "Jo Smith",
    "Smith, Jo",
    "Jürgen Müller",
    "a \"quoted\" \\back\\slash",
    "=?utf-8?B?SGk=?=",
    "  padded  ",
    "李小龙",
    "O'Brien (work)",
    "Sender <not an address>",
];
const SUBJECTS: &[&str] = &[
    "Hello",
    "",
    "Grüße 😀 — a subject long enough to need more than one encoded word, surely",
    "a subject with many words that must be folded somewhere before the seventy eighth column, and then again",
    "=?utf-8?B?SGk=?= not encoded",
    "averyveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryveryverylongword",
    "trailing dot.",
];
const TEXTS: &[&str] = &[
    "Line one\nLine two\n",
    "",
    ".\r\n..\r\n.hidden\r\n",
    "hello\n.\nMAIL FROM:<x@evil.example>\r\n",
    "hello\r.\rDATA\r\n",
    "Café au lait\n",
    "nul\0byte",
    "--=_wm_0000000000000000_0\n",
    "trailing space \nand tab\t\n",
    "a line far longer than seventy-eight characters, which forces quoted-printable on this body part",
    "=?utf-8?B?SGk=?= and = signs =3D",
];
const FILENAMES: &[&str] = &[
    "report.pdf",
    "notes.txt",
    "my report (final).docx",
    "résumé été.txt",
    "a.pdf\"; name=\"b.exe",
    "pic.png",
    "forwarded.eml",
    "semi;colon.bin",
    "page.html",
];
const CONTENT_TYPES: &[&str] = &["application/octet-stream", "text/plain", "image/png", "text/html", "application/pdf"];
const CONTENT_IDS: &[&str] = &["logo", "part1.abc@example.com", "x"];
const HEADER_NAMES: &[&str] =
    &["X-Mailer", "X-Tag", "Keywords", "Comments", "List-Unsubscribe", "Subject", "X-Priority", "Content-Language"];
const HEADER_VALUES: &[&str] = &["The Bat! (v3.02) Professional", "<mailto:unsub@example.com>", "ünïcödé", "a, b, c", ""];

/// A value from a list of good ones, or anything.
#[derive(Arbitrary, Debug)]
enum Pick {
    Known(u8),
    Any(String),
}

impl Pick {
    fn get(&self, list: &[&str]) -> String {
        match self {
            Self::Known(i) => list[usize::from(*i) % list.len()].to_owned(),
            Self::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum AddressIn {
    Known(u8),
    /// An arbitrary local part at a known domain.
    Local(String, u8),
    Any(String),
}

impl AddressIn {
    fn get(&self) -> String {
        match self {
            Self::Known(i) => ADDRESSES[usize::from(*i) % ADDRESSES.len()].to_owned(),
            Self::Local(l, d) => format!("{l}@{}", DOMAINS[usize::from(*d) % DOMAINS.len()]),
            Self::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct MailboxIn {
    name: Option<Pick>,
    address: AddressIn,
}

impl MailboxIn {
    fn get(&self) -> RawMailbox {
        RawMailbox { name: self.name.as_ref().map(|n| n.get(NAMES)), address: self.address.get() }
    }
}

#[derive(Arbitrary, Debug)]
struct AttachmentIn {
    filename: Pick,
    content_type: Option<Pick>,
    bytes: Vec<u8>,
    content_id: Option<Pick>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    from: MailboxIn,
    reply_to: Option<MailboxIn>,
    to: Vec<MailboxIn>,
    cc: Vec<MailboxIn>,
    bcc: Vec<MailboxIn>,
    subject: Pick,
    text: Option<Pick>,
    html: Option<String>,
    attachments: Vec<AttachmentIn>,
    priority: u8,
    headers: Vec<(Pick, Pick)>,
    unix_time: u64,
    random: u64,
}

impl Input {
    fn draft(&self) -> Draft {
        let list = |v: &[MailboxIn]| v.iter().map(MailboxIn::get).collect();
        Draft {
            from: Some(self.from.get()),
            reply_to: self.reply_to.as_ref().map(MailboxIn::get),
            to: list(&self.to),
            cc: list(&self.cc),
            bcc: list(&self.bcc),
            subject: self.subject.get(SUBJECTS),
            text: self.text.as_ref().map(|t| t.get(TEXTS)),
            html: self.html.clone(),
            attachments: self
                .attachments
                .iter()
                .map(|a| Attachment {
                    filename: a.filename.get(FILENAMES),
                    content_type: a.content_type.as_ref().map(|c| c.get(CONTENT_TYPES)),
                    content: Content::Bytes(a.bytes.clone()),
                    content_id: a.content_id.as_ref().map(|c| c.get(CONTENT_IDS)),
                })
                .collect(),
            priority: match self.priority % 6 {
                0 => Some(Priority::Highest),
                1 => Some(Priority::High),
                2 => Some(Priority::Normal),
                3 => Some(Priority::Low),
                4 => Some(Priority::Lowest),
                _ => None,
            },
            headers: self.headers.iter().map(|(n, v)| (n.get(HEADER_NAMES), v.get(HEADER_VALUES))).collect(),
        }
    }
}

/// A body as mail-parser's text and the draft's text are compared: CRLF, CR
/// and LF all end a line (the builder normalises every one of them to CRLF),
/// trailing white space on each line is dropped (7bit keeps it, but readers
/// and the final CRLF the builder adds make it noise), and so are trailing
/// empty lines (the builder ends an unterminated body with CRLF).
fn norm_body(s: &str) -> Vec<String> {
    let s = s.replace("\r\n", "\n").replace('\r', "\n");
    let mut lines: Vec<String> = s.split('\n').map(|l| l.trim_end().to_owned()).collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// mail-parser 0.11 reads a bare addr-spec whose domain literal holds a
/// colon (`root@[IPv6:::1]`, valid RFC 5322 3.4.1: dtext includes `:`) as
/// group syntax (`root@[IPv6` becomes a group name), and the rest of that
/// address list with it. The builder writes a mailbox with no display name
/// as a bare addr-spec, so such a header cannot be checked with this oracle;
/// with a display name the address is in angle brackets and mail-parser
/// reads it correctly, so those are still checked.
fn mail_parser_misreads(m: &Mailbox) -> bool {
    m.name.is_none() && m.address.domain().starts_with('[') && m.address.domain().contains(':')
}

fn check_wire(raw: &[u8]) {
    assert!(raw.ends_with(b"\r\n"), "the message does not end with CRLF");
    let mut line_start = 0;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR at octet {i}"),
            b'\n' => {
                assert!(i > 0 && raw[i - 1] == b'\r', "bare LF at octet {i}");
                let len = i - 1 - line_start;
                assert!(
                    len <= MAX_LINE,
                    "line of {len} octets at {line_start}: {:?}",
                    String::from_utf8_lossy(&raw[line_start..(line_start + 120).min(i)])
                );
                line_start = i + 1;
            }
            _ => {}
        }
    }
    check_lines(raw, true).expect("check_lines refuses the builder's output");
    // DATA: stuffing is lossless on builder output and ends it exactly once.
    let wire = stuff(raw);
    assert_eq!(wire.windows(5).filter(|w| *w == b"\r\n.\r\n").count(), 1, "end-of-data markers");
    assert!(wire.ends_with(b"\r\n.\r\n"));
    assert_eq!(unstuff(&wire).as_deref(), Some(raw), "unstuff(stuff(m)) != m");
}

fuzz_target!(|input: Input| {
    let draft = input.draft();
    let ctx = BuildContext { unix_time: input.unix_time, random: input.random };
    let rendered = match draft.build(&ctx) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.field.is_empty(), "an error with no field: {e:?}");
            // `message` is the builder's last look at its own output
            // (check_lines): it names no field of the draft, and it firing
            // means validation passed but the builder produced a bad line.
            assert_ne!(e.field, "message", "valid draft, bad output: {e}");
            return;
        }
    };
    let raw = rendered.to_bytes().expect("no streamed parts, so the bytes are all there");
    assert_eq!(raw.len() as u64, rendered.size());
    check_wire(&raw);

    let m = MessageParser::default().parse(&raw).expect("mail-parser cannot parse the message");

    // Subject. mail-parser trims the unfolded value (an unstructured value
    // with leading or trailing spaces loses them), so compare trimmed.
    assert_eq!(m.subject().unwrap_or("").trim(), draft.subject.trim(), "Subject");

    // From: the display name (the builder trims it) and the address.
    let raw_from = draft.from.as_ref().unwrap();
    let from = Mailbox::new(raw_from.name.as_deref(), &raw_from.address).expect("build accepted it");
    if !mail_parser_misreads(&from) {
        let got = m.from().and_then(|a| a.first()).expect("no From");
        assert_eq!(got.address(), Some(from.address.to_string().as_str()), "From address");
        assert_eq!(got.name(), from.name.as_deref(), "From display name");
    }

    // To: every address, in order.
    let to: Vec<Mailbox> = draft.to.iter().map(|r| Mailbox::new(r.name.as_deref(), &r.address).unwrap()).collect();
    if !to.iter().any(mail_parser_misreads) {
        let want: Vec<String> = to.iter().map(|m| m.address.to_string()).collect();
        let got: Vec<String> =
            m.to().map(|a| a.iter().map(|x| x.address().unwrap_or("").to_owned()).collect()).unwrap_or_default();
        assert_eq!(got, want, "To addresses");
    }

    // The text body.
    if let Some(t) = &draft.text {
        let got = m.body_text(0).unwrap_or_default();
        assert_eq!(norm_body(&got), norm_body(t), "text body");
    }

    // Attachments: inline parts (multipart/related) come first, then files.
    let want: Vec<&Attachment> = draft
        .attachments
        .iter()
        .filter(|a| a.content_id.is_some())
        .chain(draft.attachments.iter().filter(|a| a.content_id.is_none()))
        .collect();
    let got: Vec<_> = m.attachments().collect();
    assert_eq!(got.len(), want.len(), "attachment count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.attachment_name(), Some(w.filename.as_str()), "attachment {i} name");
        let Content::Bytes(bytes) = &w.content else { unreachable!() };
        if let Some(text) = g.text_contents() {
            // mail-parser decodes every text-like part (text/*, and types it
            // falls back to text for) into a String, replacing invalid UTF-8
            // with U+FFFD: compare with the same lossy view.
            assert_eq!(text, String::from_utf8_lossy(bytes), "attachment {i} text contents");
        } else {
            assert_eq!(g.contents(), bytes.as_slice(), "attachment {i} contents");
        }
    }
});
