//! Builder tests (RFC 5322, RFC 2045-2047, RFC 2231): golden bytes for the
//! simple cases, and round trips through an independent parser (mail-parser)
//! for the rest.

use super::*;
use mail_parser::{MessageParser, MimeHeaders};

fn mb(name: Option<&str>, address: &str) -> RawMailbox {
    RawMailbox { name: name.map(str::to_owned), address: address.to_owned() }
}

fn ctx() -> BuildContext {
    BuildContext { unix_time: 1_795_707_464, random: 0x0123_4567_89ab_cdef }
}

fn draft() -> Draft {
    Draft {
        from: Some(mb(Some("Sender Name"), "sender@example.com")),
        to: vec![mb(None, "rcpt@example.org")],
        subject: "Hello".into(),
        text: Some("Line one\nLine two\n".into()),
        ..Draft::default()
    }
}

fn bytes(d: &Draft) -> Vec<u8> {
    d.build(&ctx()).unwrap().to_bytes().unwrap()
}

#[test]
fn golden_text_message() {
    let out = String::from_utf8(bytes(&draft())).unwrap();
    assert_eq!(
        out,
        "Date: Thu, 26 Nov 2026 15:37:44 +0000\r\n\
         From: Sender Name <sender@example.com>\r\n\
         To: rcpt@example.org\r\n\
         Subject: Hello\r\n\
         Message-ID: <0123456789abcdef.1795707464@example.com>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         Line one\r\nLine two\r\n"
    );
}

#[test]
fn csmtp_style_message_round_trips() {
    let mut d = draft();
    d.reply_to = Some(mb(None, "reply@example.com"));
    d.cc = vec![mb(Some("Copy"), "cc@example.org")];
    d.bcc = vec![mb(None, "hidden@example.net")];
    d.priority = Some(Priority::High);
    d.headers = vec![("X-Mailer".into(), "The Bat! (v3.02) Professional".into())];
    let png: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
    d.attachments = vec![
        Attachment { filename: "notes.txt".into(), content_type: None, content: Content::Bytes(b"a\r\nb".to_vec()), content_id: None },
        Attachment { filename: "pic.png".into(), content_type: None, content: Content::Bytes(png.clone()), content_id: None },
    ];
    let r = d.build(&ctx()).unwrap();
    assert_eq!(
        r.envelope.recipients.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["rcpt@example.org", "cc@example.org", "hidden@example.net"]
    );
    let raw = r.to_bytes().unwrap();
    assert_eq!(raw.len() as u64, r.size());
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(!text.to_ascii_lowercase().contains("hidden@"), "Bcc must not appear in the headers");
    let m = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(m.from().unwrap().first().unwrap().name(), Some("Sender Name"));
    assert_eq!(m.reply_to().unwrap().first().unwrap().address(), Some("reply@example.com"));
    assert_eq!(m.cc().unwrap().first().unwrap().name(), Some("Copy"));
    assert_eq!(m.header_raw("X-Priority").map(str::trim), Some("2 (High)"));
    assert_eq!(m.header_raw("X-Mailer").map(str::trim), Some("The Bat! (v3.02) Professional"));
    assert!(m.date().is_some());
    assert_eq!(m.message_id(), Some("0123456789abcdef.1795707464@example.com"));
    assert_eq!(m.body_text(0).unwrap().replace("\r\n", "\n"), "Line one\nLine two\n");
    let atts: Vec<_> = m.attachments().collect();
    assert_eq!(atts.len(), 2);
    assert_eq!(atts[0].attachment_name(), Some("notes.txt"));
    assert_eq!(atts[0].contents(), b"a\r\nb");
    assert_eq!(atts[0].content_type().unwrap().ctype(), "text");
    assert_eq!(atts[1].attachment_name(), Some("pic.png"));
    assert_eq!(atts[1].content_type().unwrap().subtype(), Some("png"));
    assert_eq!(atts[1].contents(), png.as_slice());
    lint::check_lines(&raw, true).unwrap();
}

#[test]
fn non_ascii_round_trips() {
    let mut d = draft();
    d.from = Some(mb(Some("Jürgen Müller"), "j@example.com"));
    d.subject = "Grüße 😀 — a subject long enough to need more than one encoded word, surely".into();
    d.text = Some("Café au lait\n".into());
    d.html = Some("<p>Café <img src=\"cid:logo\"></p>".into());
    d.attachments = vec![
        Attachment { filename: "résumé été.txt".into(), content_type: None, content: Content::Bytes(b"cv".to_vec()), content_id: None },
        Attachment { filename: "logo.png".into(), content_type: Some("image/png".into()), content: Content::Bytes(vec![1, 2, 3]), content_id: Some("logo".into()) },
    ];
    let raw = bytes(&d);
    lint::check_lines(&raw, true).unwrap();
    for line in raw.split(|&b| b == b'\n') {
        assert!(line.len() <= 79, "{}", String::from_utf8_lossy(line));
    }
    let m = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(m.subject(), Some(d.subject.as_str()));
    assert_eq!(m.from().unwrap().first().unwrap().name(), Some("Jürgen Müller"));
    assert_eq!(m.body_text(0).unwrap().trim_end(), "Café au lait");
    assert_eq!(m.body_html(0).unwrap(), "<p>Café <img src=\"cid:logo\"></p>");
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(text.contains("multipart/mixed"));
    assert!(text.contains("multipart/related"));
    assert!(text.contains("multipart/alternative"));
    assert!(text.contains("Content-ID: <logo>"));
    let names: Vec<_> = m.attachments().filter_map(|a| a.attachment_name().map(str::to_owned)).collect();
    assert!(names.contains(&"résumé été.txt".to_owned()), "{names:?}");
}

#[test]
fn hostile_filename_stays_one_parameter() {
    let mut d = draft();
    d.attachments = vec![Attachment {
        filename: "a.pdf\"; name=\"b.exe".into(),
        content_type: None,
        content: Content::Bytes(b"x".to_vec()),
        content_id: None,
    }];
    let raw = bytes(&d);
    let m = MessageParser::default().parse(&raw).unwrap();
    let a = m.attachments().next().unwrap();
    assert_eq!(a.attachment_name(), Some("a.pdf\"; name=\"b.exe"));
}

/// A change that spoils a draft.
type Spoil = Box<dyn Fn(&mut Draft)>;

#[test]
fn field_named_errors() {
    let cases: Vec<(Spoil, &str)> = vec![
        (Box::new(|d| d.subject = "a\r\nBcc: x@evil.example".into()), "subject"),
        (Box::new(|d| d.subject = "a\u{2028}b".into()), "subject"),
        (Box::new(|d| d.subject = "a\u{85}b".into()), "subject"),
        (Box::new(|d| d.to[0].address = "x@y.example>\r\nDATA".into()), "to[0].address"),
        (Box::new(|d| d.to.push(mb(Some("Eve\nBcc: x@y.example"), "e@example.com"))), "to[1].name"),
        (Box::new(|d| d.from = None), "from"),
        (Box::new(|d| d.from = Some(mb(None, "not-an-address"))), "from.address"),
        (Box::new(|d| d.reply_to = Some(mb(None, "a@b@c"))), "reply-to.address"),
        (Box::new(|d| d.bcc.push(mb(None, "\"q\"@example.com"))), "bcc[0].address"),
        (Box::new(|d| d.headers.push(("X-A:b".into(), "v".into()))), "headers[0].name"),
        (Box::new(|d| d.headers.push(("X A".into(), "v".into()))), "headers[0].name"),
        (Box::new(|d| d.headers.push((String::new(), "v".into()))), "headers[0].name"),
        (Box::new(|d| d.headers.push(("To".into(), "v@example.com".into()))), "headers[0].name"),
        (Box::new(|d| d.headers.push(("X-A".into(), "v\r\nX-B: w".into()))), "headers[0].value"),
        (
            Box::new(|d| {
                d.attachments.push(Attachment {
                    filename: "a\r\n.txt".into(),
                    content_type: None,
                    content: Content::Bytes(vec![]),
                    content_id: None,
                })
            }),
            "attachments[0].filename",
        ),
        (
            Box::new(|d| {
                d.attachments.push(Attachment {
                    filename: "a.txt".into(),
                    content_type: Some("text/plain\r\nX: y".into()),
                    content: Content::Bytes(vec![]),
                    content_id: None,
                })
            }),
            "attachments[0].content-type",
        ),
        (
            Box::new(|d| {
                d.attachments.push(Attachment {
                    filename: "fwd.eml".into(),
                    content_type: Some("message/rfc822".into()),
                    content: Content::Bytes(vec![]),
                    content_id: None,
                })
            }),
            "attachments[0].content-type",
        ),
        (
            Box::new(|d| {
                d.attachments.push(Attachment {
                    filename: "a.bin".into(),
                    content_type: Some(format!("application/{}", "x".repeat(1000))),
                    content: Content::Bytes(vec![]),
                    content_id: None,
                })
            }),
            "attachments[0].content-type",
        ),
        (Box::new(|d| d.to.clear()), "to"),
    ];
    for (i, (mutate, field)) in cases.into_iter().enumerate() {
        let mut d = draft();
        mutate(&mut d);
        let err = d.build(&ctx()).unwrap_err();
        assert_eq!(err.field, field, "case {i}: {err}");
    }
}

#[test]
fn smuggling_bodies_are_safe_before_stuffing() {
    for seq in ["\n.\n", "\r.\r", "\r\n\0.\r\n", "\r\n.\r\r\n"] {
        let mut d = draft();
        d.text = Some(format!("hello{seq}MAIL FROM:<x@evil.example>\r\n"));
        let raw = bytes(&d);
        lint::check_lines(&raw, true).unwrap();
        assert!(!raw.contains(&0));
    }
}

#[test]
fn boundaries_avoid_the_content() {
    let mut d = draft();
    d.text = Some(format!("--=_wm_{:016x}_0\n", ctx().random));
    d.html = Some("<p>x</p>".into());
    let raw = bytes(&d);
    let m = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(m.body_html(0).unwrap(), "<p>x</p>");
    assert!(m.body_text(0).unwrap().starts_with("--=_wm_"));
}

#[test]
fn streamed_attachment_size_is_exact() {
    let mut d = draft();
    d.attachments = vec![Attachment {
        filename: "big.bin".into(),
        content_type: None,
        content: Content::Stream { index: 0, len: 1_000_000, utf8: None },
        content_id: None,
    }];
    let r = d.build(&ctx()).unwrap();
    assert!(r.to_bytes().is_none());
    let mut stream = Vec::new();
    encode::base64_lines(&vec![7u8; 1_000_000], &mut stream);
    let literal: usize = r.segments.iter().map(|s| if let Segment::Bytes(b) = s { b.len() } else { 0 }).sum();
    assert_eq!(r.size(), (literal + stream.len()) as u64);
}

#[test]
fn text_attachments_say_their_charset_or_stop_claiming_to_be_text() {
    use super::render::attachment_type;
    let att = |name: &str, ct: Option<&str>, content: Content| Attachment {
        filename: name.into(),
        content_type: ct.map(Into::into),
        content,
        content_id: None,
    };
    let cases = [
        (att("notes.txt", None, Content::Bytes("Grüße".as_bytes().to_vec())), "text/plain; charset=utf-8"),
        (att("latin1.txt", None, Content::Bytes(vec![b'G', 0xfc, b'e'])), "application/octet-stream"),
        (att("a.csv", Some("text/csv; charset=iso-8859-1"), Content::Bytes(vec![0xfc])), "text/csv; charset=iso-8859-1"),
        (att("a.png", None, Content::Bytes(vec![0xff, 0xd8])), "image/png"),
        (att("big.log", Some("text/plain"), Content::Stream { index: 0, len: 9, utf8: Some(true) }), "text/plain; charset=utf-8"),
        (att("huge.log", Some("text/plain;"), Content::Stream { index: 0, len: 9, utf8: None }), "application/octet-stream"),
    ];
    for (a, want) in cases {
        assert_eq!(attachment_type(&a), want, "{}", a.filename);
    }
}

#[test]
fn folding_never_leaves_a_line_of_white_space() {
    use super::header::HeaderWriter;
    for subject in [
        format!("{} ", "a".repeat(69)),
        format!("{}  b", "a".repeat(68)),
        format!("{}{}", "word ".repeat(30), " ".repeat(5)),
        format!("x{}y", " ".repeat(200)),
        "   leading".to_owned(),
    ] {
        let mut w = HeaderWriter::default();
        w.unstructured("Subject", &subject);
        let bytes = w.into_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(!line.trim().is_empty(), "a white-space line in {text:?}");
            assert!(line.len() <= super::lint::MAX_LINE, "{line:?}");
        }
        let whole = [&bytes[..], b"\r\nbody\r\n"].concat();
        let parsed = MessageParser::default().parse(&whole).unwrap();
        // Unfolding keeps every space (RFC 5322 2.2.3); readers may collapse runs.
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(parsed.subject().map(words), Some(words(&subject)), "{text:?}");
        let unfolded = text.trim_start_matches("Subject:").trim_end_matches("\r\n").replace("\r\n", "");
        if !unfolded.contains("=?") {
            assert_eq!(&unfolded[1..], subject, "unfolding gives the subject back exactly");
        }
    }
}

#[test]
fn a_file_name_that_suggests_a_container_type_goes_as_octets() {
    use super::render::declared_type;
    assert_eq!(declared_type(None, "fwd.eml"), "application/octet-stream");
    assert_eq!(declared_type(None, "logo.png"), "image/png");
    assert_eq!(declared_type(Some("text/csv"), "fwd.eml"), "text/csv");
}
