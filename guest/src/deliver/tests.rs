//! Delivery tests, native: fake attachment files and scripted servers in
//! place of the host's imports (RFC 5321 transactions, RFC 2045 base64).

use super::*;
use crate::mime::encode::base64_encoded_len;
use crate::mime::{Attachment, RawMailbox};
use crate::smtp::Reply;
use crate::smtp::error::Stage;
use crate::smtp::session::Direction;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

/// A fake file: `len` octets, all `fill` (cheap at any size), or `bytes`.
#[derive(Clone)]
struct Fake {
    len: u64,
    fill: u8,
    bytes: Option<Rc<[u8]>>,
    /// `open` reports this many more octets than the file has, from the
    /// second open on (the file changed after it was measured).
    grows: u64,
}

impl Fake {
    fn zeros(len: u64) -> Self {
        Self { len, fill: 0, bytes: None, grows: 0 }
    }
    fn bytes(b: &[u8]) -> Self {
        Self { len: b.len() as u64, fill: 0, bytes: Some(b.into()), grows: 0 }
    }
}

/// Files by path, counting opens.
#[derive(Clone, Default)]
struct Files {
    files: Vec<(&'static str, Fake)>,
    opens: Rc<Cell<u32>>,
}

struct Reader {
    file: Fake,
    pos: u64,
    /// Where the bytes end: the file may be shorter than `open` said.
    end: u64,
}

impl BlobRead for Reader {
    fn read(&mut self, max: usize, out: &mut Vec<u8>) -> Result<(), BlobError> {
        if self.pos == self.end {
            return Err(BlobError::Closed);
        }
        let n = (max as u64).min(self.end - self.pos) as usize;
        match &self.file.bytes {
            Some(b) => out.extend_from_slice(&b[self.pos as usize..self.pos as usize + n]),
            // Copied from a block: filling byte by byte is slow in a debug build.
            None => {
                let block = [self.file.fill; 4096];
                let mut left = n;
                while left > 0 {
                    let k = left.min(block.len());
                    out.extend_from_slice(&block[..k]);
                    left -= k;
                }
            }
        }
        self.pos += n as u64;
        Ok(())
    }
}

impl Blobs for Files {
    type Reader = Reader;
    fn open(&self, path: &str) -> Result<(u64, Reader), String> {
        let (_, file) = self.files.iter().find(|(p, _)| *p == path).ok_or("no such file")?;
        let n = self.opens.get();
        self.opens.set(n + 1);
        let reported = if n > 0 { file.len + file.grows } else { file.len };
        Ok((reported, Reader { file: file.clone(), pos: 0, end: file.len }))
    }
}

fn mb(address: &str) -> RawMailbox {
    RawMailbox { name: None, address: address.into() }
}

fn ctx() -> BuildContext {
    BuildContext { unix_time: 1_795_707_464, random: 0x0123_4567_89ab_cdef }
}

/// A draft with one attachment per file in `files`, streamed.
fn prepared(files: &Files) -> Prepared<Files> {
    let mut streams = Streams::new(files.clone());
    let mut attachments = Vec::new();
    for (i, (path, _)) in files.files.iter().enumerate() {
        let content = streams.attach(i, (*path).to_owned(), false).unwrap();
        attachments.push(Attachment { filename: (*path).into(), content_type: None, content, content_id: None });
    }
    let draft = Draft {
        from: Some(mb("a@example.com")),
        to: vec![mb("b@example.org")],
        subject: "files".into(),
        text: Some("see attached\n".into()),
        attachments,
        ..Draft::default()
    };
    Prepared::build(&draft, streams, &ctx(), None).unwrap()
}

#[test]
fn streamed_files_give_the_same_bytes_as_files_in_memory() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files = Files { files: vec![("a.bin", Fake::bytes(&data))], ..Files::default() };
    let streamed = prepared(&files).to_bytes().unwrap();
    let mut draft = Draft {
        from: Some(mb("a@example.com")),
        to: vec![mb("b@example.org")],
        subject: "files".into(),
        text: Some("see attached\n".into()),
        ..Draft::default()
    };
    draft.attachments = vec![Attachment {
        filename: "a.bin".into(),
        content_type: None,
        content: Content::Bytes(data),
        content_id: None,
    }];
    let in_memory = draft.build(&ctx()).unwrap().to_bytes().unwrap();
    assert_eq!(streamed, in_memory);
}

#[test]
fn a_file_that_changed_is_refused() {
    let mut file = Fake::bytes(b"hello");
    file.grows = 3;
    let files = Files { files: vec![("a.txt", file)], ..Files::default() };
    let e = prepared(&files).to_bytes().unwrap_err();
    assert!(matches!(e, SmtpError::InvalidMessage(ref m) if m.contains("changed size from 5 to 8")), "{e:?}");

    let mut short = Fake::zeros(10);
    short.len = 4;
    short.grows = 0;
    let files = Files { files: vec![("b.bin", Fake { len: 4, ..Fake::zeros(4) })], ..Files::default() };
    let mut p = prepared(&files);
    // The file shrinks between measuring and streaming: open says 10, 4 come.
    p.streams.files[0].1 = 10;
    p.rendered.segments.iter_mut().for_each(|s| {
        if let Segment::Base64Stream { len, .. } = s {
            *len = 10;
        }
    });
    let files_10 = Files { files: vec![("b.bin", Fake { grows: 6, ..short })], opens: Rc::new(Cell::new(1)) };
    p.streams.blobs = files_10;
    let e = p.to_bytes().unwrap_err();
    assert!(matches!(e, SmtpError::InvalidMessage(ref m) if m.contains("ended 6 bytes early")), "{e:?}");
}

#[test]
fn too_many_attachments_are_refused_before_any_file_is_opened() {
    assert!(Streams::<Files>::check_count(mime::MAX_ATTACHMENTS).is_ok());
    let e = Streams::<Files>::check_count(mime::MAX_ATTACHMENTS + 1).unwrap_err();
    assert!(matches!(e, SmtpError::InvalidMessage(m) if m.starts_with("attachments: ")));
    let mut streams = Streams::new(Files::default());
    let e = streams.attach(3, "missing.pdf".into(), false).unwrap_err();
    assert_eq!(e, SmtpError::InvalidMessage("attachments[3].content: missing.pdf: no such file".into()));
}

#[test]
fn the_outbox_and_the_kept_copy_stop_at_the_in_memory_limit() {
    let files = Files { files: vec![("big.iso", Fake::zeros(MAX_IN_MEMORY_BYTES))], ..Files::default() };
    let p = prepared(&files);
    assert!(p.rendered.size() > MAX_IN_MEMORY_BYTES);
    let opens = files.opens.get();
    assert!(matches!(p.to_bytes(), Err(SmtpError::InvalidMessage(m)) if m.contains("too large for the outbox")));
    assert_eq!(p.kept(&DeliverError::Smtp(SmtpError::Timeout(Stage::DataBlock))), None);
    assert_eq!(files.opens.get(), opens, "nothing was read");
}

fn reply(code: u16) -> Reply {
    Reply { code, enhanced: None, lines: vec!["x".into()] }
}

#[test]
fn only_what_a_retry_may_fix_is_kept() {
    let files = Files { files: vec![("a.txt", Fake::bytes(b"abc"))], ..Files::default() };
    let p = prepared(&files);
    let rejected = |code| SmtpError::Rejected { stage: Stage::RcptTo, reply: reply(code), recipients: vec![] };
    let keep = [
        SmtpError::Connect("refused".into()),
        SmtpError::Timeout(Stage::Greeting),
        SmtpError::OutcomeUnknown("lost".into()),
        rejected(451),
        SmtpError::Auth(reply(454)),
    ];
    for e in keep {
        assert_eq!(p.kept(&e.clone().into()), Some(p.to_bytes().unwrap()), "{e:?}");
    }
    let drop = [
        DeliverError::Smtp(rejected(550)),
        DeliverError::Smtp(SmtpError::Auth(reply(535))),
        DeliverError::Smtp(SmtpError::InvalidMessage("x".into())),
        DeliverError::Smtp(SmtpError::Tls("no".into())),
        DeliverError::Smtp(SmtpError::Protocol("no".into())),
        DeliverError::PolicyDenied("max".into()),
    ];
    for e in drop {
        assert_eq!(p.kept(&e), None, "{e:?}");
    }
}

#[test]
fn the_size_limit_is_a_policy_denial() {
    let draft = Draft {
        from: Some(mb("a@example.com")),
        to: vec![mb("b@example.org")],
        text: Some("hi".into()),
        ..Draft::default()
    };
    let e = Prepared::build(&draft, Streams::new(Files::default()), &ctx(), Some(10)).err().unwrap();
    assert!(matches!(e, DeliverError::PolicyDenied(ref m) if m.starts_with("max_message_bytes: ")), "{e:?}");
    assert!(!e.worth_keeping());
}

#[test]
fn raw_submissions() {
    let bytes = b"Message-ID: <x.1@example.com>\r\nSubject: hi\r\n\r\nbody\r\n".to_vec();
    let p = Prepared::raw("a@example.com", &["b@example.org".into()], bytes.clone(), Files::default()).unwrap();
    assert_eq!(p.rendered.message_id, "x.1@example.com");
    // A known Message-ID (the host's, from `render`) is taken as given.
    let known = Prepared::raw_with_id("a@example.com", &["b@example.org".into()], bytes.clone(), "k@x".into(), Files::default());
    assert_eq!(known.unwrap().rendered.message_id, "k@x");
    assert_eq!(p.outgoing().size, bytes.len() as u64);
    assert!(!p.outgoing().eight_bit && !p.outgoing().smtputf8);
    assert_eq!(p.to_bytes().unwrap(), bytes);

    let e = |from: &str, to: &[&str], b: &[u8]| {
        let to: Vec<String> = to.iter().map(|s| (*s).to_owned()).collect();
        match Prepared::raw(from, &to, b.to_vec(), Files::default()) {
            Err(SmtpError::InvalidMessage(m)) => m,
            _ => panic!("expected invalid-message"),
        }
    };
    assert!(e("not an address", &["b@example.org"], b"A: b\r\n\r\n").starts_with("envelope.from: "));
    assert!(e("a@example.com", &["b@example.org", "x"], b"A: b\r\n\r\n").starts_with("envelope.recipients[1]: "));
    assert_eq!(e("a@example.com", &[], b"A: b\r\n\r\n"), "envelope.recipients: empty");
    assert!(e("a@example.com", &["b@example.org"], b"A: b\n\nbare LF\n").starts_with("bytes: "));

    let p = Prepared::raw("δ@example.com", &["b@example.org".into()], "Subject: é\r\n\r\n".into(), Files::default());
    let p = p.unwrap();
    assert!(p.outgoing().smtputf8 && p.outgoing().eight_bit);
    assert_eq!(p.rendered.message_id, "", "no Message-ID header");
}

#[test]
fn message_ids_are_read_from_the_header_section_only() {
    assert_eq!(message_id_of(b"message-id:   <a@b>\r\n\r\n").as_deref(), Some("a@b"));
    assert_eq!(message_id_of(b"Subject: x\r\n\r\nMessage-ID: <body@b>\r\n"), None);
    assert_eq!(message_id_of(b"\xff\xfe"), None);
}

#[test]
fn relay_settings_are_checked() {
    let spec = || RelaySpec {
        host: "mx.example".into(),
        addresses: vec!["192.0.2.1".into()],
        port: 25,
        ehlo: "client.example".into(),
        tls: TlsMode::StartTls,
        user: None,
        auth: Choice::Auto,
        verbose: false,
    };
    assert!(spec().check().is_ok());
    assert_eq!(RelaySpec { ehlo: "a b".into(), ..spec() }.check().err().unwrap().split(':').next(), Some("ehlo"));
    assert_eq!(RelaySpec { host: "mx example".into(), ..spec() }.check().err().unwrap(), "host: must be a host name or IP address");
    assert_eq!(RelaySpec { user: Some("jo\n".into()), ..spec() }.check().err().unwrap(), "user: contains a control character");
}

/// A scripted server: replies in order, each at the next read. It keeps the
/// commands, and only counts the message data (and keeps its last bytes).
struct Peer {
    replies: VecDeque<&'static str>,
    commands: Rc<std::cell::RefCell<Vec<String>>>,
    in_data: bool,
    data: u64,
    tail: Vec<u8>,
}

/// How many of the last data bytes a [`Peer`] keeps.
const TAIL: usize = 64;

impl Peer {
    fn new(replies: &[&'static str]) -> Self {
        let replies = replies.iter().copied().collect();
        Self { replies, commands: Rc::default(), in_data: false, data: 0, tail: Vec::new() }
    }
}

impl Transport for Peer {
    fn send(&mut self, bytes: &[u8], _stage: Stage) -> Result<(), SmtpError> {
        if !self.in_data {
            self.commands.borrow_mut().push(String::from_utf8_lossy(bytes).into_owned());
            return Ok(());
        }
        self.data += bytes.len() as u64;
        self.tail.extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL)..]);
        self.tail.drain(..self.tail.len().saturating_sub(TAIL));
        self.in_data = !bytes.ends_with(b"\r\n.\r\n");
        Ok(())
    }
    fn start_reply(&mut self, _stage: Stage) {}
    fn recv(&mut self, buf: &mut [u8], _stage: Stage) -> Result<usize, SmtpError> {
        match self.replies.pop_front() {
            Some("<reset>") => Err(SmtpError::Connect("connection reset".into())),
            Some(r) => {
                self.in_data = r.ends_with("354 go\r\n");
                buf[..r.len()].copy_from_slice(r.as_bytes());
                Ok(r.len())
            }
            None => Ok(0),
        }
    }
    fn start_tls(&mut self) -> Result<String, SmtpError> {
        Err(SmtpError::Tls("no TLS here".into()))
    }
    fn is_tls(&self) -> bool {
        false
    }
    fn transcript(&mut self, _d: Direction, _line: &str) {}
    fn verbose(&self) -> bool {
        false
    }
}

fn config() -> Config {
    Config { client_name: ClientName::new("client.example").unwrap(), tls: TlsMode::None, user: None, auth: Choice::Auto }
}

const HELLO: [&str; 2] = ["220 mx\r\n", "250-mx\r\n250 PIPELINING\r\n"];

/// Opens sessions over the peers in `peers`, in order.
fn opener(peers: Vec<Peer>) -> impl FnMut() -> Result<Session<Peer>, SmtpError> {
    let mut peers: VecDeque<Peer> = peers.into();
    move || match peers.pop_front() {
        Some(p) => Session::open(p, &config(), || None),
        None => Err(SmtpError::Connect("no more peers".into())),
    }
}

fn text_message() -> Prepared<Files> {
    let bytes = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
    Prepared::raw("a@example.com", &["b@example.org".into()], bytes, Files::default()).unwrap()
}

#[test]
fn a_session_the_server_closed_is_reopened_once() {
    let first = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n250 ok\r\n354 go\r\n", "250 queued\r\n"]);
    // The kept session finds its connection gone at the next send.
    let second = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n250 ok\r\n354 go\r\n", "250 queued again\r\n"]);
    let second_commands = second.commands.clone();
    let mut conn = Connection::default();
    let mut open = opener(vec![first, second]);
    let msg = text_message();
    assert!(conn.send(&mut open, &msg).0.is_ok());
    let (r, encoded) = conn.send(&mut open, &msg);
    assert_eq!(r.unwrap().reply.lines, ["queued again"]);
    assert_eq!(encoded, Encoded::default());
    assert_eq!(second_commands.borrow()[0], "EHLO client.example\r\n", "a new session, not a retry on the old one");

    // Only once: a new session that fails too is the error.
    let first = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n250 ok\r\n354 go\r\n", "250 queued\r\n"]);
    let mut conn = Connection::default();
    let mut open = opener(vec![first]);
    assert!(conn.send(&mut open, &msg).0.is_ok());
    assert!(matches!(conn.send(&mut open, &msg).0, Err(SmtpError::Connect(m)) if m == "no more peers"));
}

#[test]
fn a_fresh_session_is_not_reopened() {
    let peer = Peer::new(&[HELLO[0], HELLO[1], "<reset>"]);
    let mut conn = Connection::default();
    let mut open = opener(vec![peer, Peer::new(&HELLO)]);
    assert!(matches!(conn.send(&mut open, &text_message()).0, Err(SmtpError::Connect(m)) if m == "connection reset"));
    assert!(conn.session.is_none(), "a broken connection is dropped");
}

#[test]
fn a_refusal_keeps_the_session_a_failure_inside_data_drops_it() {
    let peer = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n550 5.1.1 no\r\n554 no valid recipients\r\n"]);
    let mut conn = Connection::default();
    let mut open = opener(vec![peer]);
    let (r, _) = conn.send(&mut open, &text_message());
    assert!(matches!(r, Err(SmtpError::Rejected { stage: Stage::RcptTo, .. })));
    assert!(conn.session.is_some(), "the server answered: the session goes on");

    // The file is shorter than measured: the server is left inside DATA.
    let mut shrunk = Fake::zeros(10);
    shrunk.len = 4;
    let files = Files { files: vec![("f.bin", Fake::zeros(10))], ..Files::default() };
    let mut msg = prepared(&files);
    msg.streams.blobs = Files { files: vec![("f.bin", Fake { grows: 6, ..shrunk })], opens: Rc::new(Cell::new(1)) };
    let peer = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n250 ok\r\n354 go\r\n"]);
    let mut conn = Connection::default();
    let (r, _) = conn.send(opener(vec![peer]), &msg);
    assert!(matches!(r, Err(SmtpError::InvalidMessage(ref m)) if m.contains("early")), "{r:?}");
    assert!(conn.session.is_none(), "dropped without QUIT");
}

#[test]
fn close_says_quit() {
    let peer = Peer::new(&[HELLO[0], HELLO[1], "250 ok\r\n250 ok\r\n354 go\r\n", "250 queued\r\n", "221 bye\r\n"]);
    let commands = peer.commands.clone();
    let mut conn = Connection::default();
    assert!(conn.send(opener(vec![peer]), &text_message()).0.is_ok());
    conn.close();
    assert_eq!(commands.borrow().last().map(String::as_str), Some("QUIT\r\n"));
    assert!(conn.session.is_none());
}

/// More than 4 GiB of attachment streams through in constant memory, with
/// the exact base64 length announced in `SIZE=` and one terminator.
#[test]
fn streams_more_than_4_gib() {
    // 4 GiB + 1 leaves a remainder of 2 bytes: the last group is `AAA=`.
    const LEN: u64 = (4 << 30) + 1;
    let files = Files { files: vec![("huge.bin", Fake::zeros(LEN))], ..Files::default() };
    let msg = prepared(&files);
    let size = msg.rendered.size();
    assert!(base64_encoded_len(LEN) > u64::from(u32::MAX) && size > base64_encoded_len(LEN));
    let peer = Peer::new(&["220 mx\r\n", "250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n", "250 ok\r\n250 ok\r\n354 go\r\n", "250 ok\r\n"]);
    let commands = peer.commands.clone();
    let mut conn = Connection::default();
    let (r, encoded) = conn.send(opener(vec![peer]), &msg);
    r.unwrap();
    assert_eq!(encoded.bytes, LEN);
    assert!(commands.borrow()[1].starts_with(&format!("MAIL FROM:<a@example.com> SIZE={size}\r\n")));
    let Some(peer) = conn.session.as_ref().map(|s| s.transport()) else { panic!("the session is kept") };
    // No line of this message starts with a dot: the data is the message
    // and `.CRLF`.
    assert_eq!(peer.data, size + 3);
    let end = b"AAAAAAA=\r\n--=_wm_0123456789abcdef_0--\r\n.\r\n";
    assert!(peer.tail.ends_with(end), "{:?}", String::from_utf8_lossy(&peer.tail));
}

#[test]
fn a_small_text_file_is_read_ahead_to_learn_its_charset() {
    let files = Files {
        files: vec![
            ("notes.txt", Fake::bytes("Grüße\n".as_bytes())),
            ("latin1.txt", Fake::bytes(&[b'G', 0xfc, b'e'])),
            ("huge.log", Fake::zeros(MAX_SNIFF_BYTES + 1)),
        ],
        ..Files::default()
    };
    let mut streams = Streams::new(files);
    let utf8 = |c: Content| match c {
        Content::Stream { utf8, .. } => utf8,
        Content::Bytes(_) => panic!("a file is a stream"),
    };
    assert_eq!(utf8(streams.attach(0, "notes.txt".into(), true).unwrap()), Some(true));
    assert_eq!(utf8(streams.attach(1, "latin1.txt".into(), true).unwrap()), Some(false));
    assert_eq!(utf8(streams.attach(2, "huge.log".into(), true).unwrap()), None, "too big to read ahead");
    assert_eq!(utf8(streams.attach(3, "notes.txt".into(), false).unwrap()), None, "not text: not read");
}

fn identity(domain: &str) -> dkim::Identity {
    dkim::Identity {
        domain: domain.into(),
        selector: "s1".into(),
        algorithm: dkim::Algorithm::Ed25519Sha256,
        header_canon: dkim::Canonicalization::Relaxed,
        body_canon: dkim::Canonicalization::Simple,
        extra_headers: vec![],
        expire_secs: None,
    }
}

/// The header section and body of whole message bytes.
fn split(bytes: &[u8]) -> (&[u8], &[u8]) {
    let i = memchr::memmem::find(bytes, b"\r\n\r\n").unwrap();
    (&bytes[..i + 2], &bytes[i + 4..])
}

#[test]
fn signing_hashes_streamed_files_and_every_copy_carries_the_one_signature() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let files = Files { files: vec![("a.bin", Fake::bytes(&data))], ..Files::default() };
    let mut msg = prepared(&files);
    let unsigned_size = msg.rendered.size();
    let mut signed_data = Vec::new();
    let signed = msg
        .sign(&identity("example.com"), 1_795_707_464, |data| {
            signed_data = data.to_vec();
            Ok(vec![0x42; 64])
        })
        .unwrap();
    let hashed = signed.unwrap();
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(bytes.len() as u64, msg.rendered.size());
    assert!(msg.rendered.size() > unsigned_size);
    assert!(bytes.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/simple; d=example.com;\r\n s=s1;"));
    // The body hash is the hash of the body as sent, file included.
    let (section, body) = split(&bytes);
    let field = dkim::header_fields(section)[0];
    let bare: String = String::from_utf8_lossy(field).split_whitespace().collect();
    let bh = bare.split("bh=").nth(1).unwrap().split(';').next().unwrap().to_owned();
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode(dkim::body_hash(dkim::Canonicalization::Simple, body));
    assert_eq!(bh, want);
    assert_eq!(hashed.bytes, body.len() as u64);
    // The signed data ends with the field itself, b= empty.
    assert!(signed_data.ends_with(b"; b="));
    assert!(signed_data.starts_with(b"from:a@example.com\r\n"));
    // The kept copy is the same bytes, signature included.
    let error = DeliverError::Smtp(SmtpError::Timeout(Stage::DataEnd));
    assert_eq!(msg.kept(&error).unwrap(), bytes);
    // And it is what the bytes-in-memory message signs to.
    let mut draft = Draft {
        from: Some(mb("a@example.com")),
        to: vec![mb("b@example.org")],
        subject: "files".into(),
        text: Some("see attached\n".into()),
        ..Draft::default()
    };
    draft.attachments =
        vec![Attachment { filename: "a.bin".into(), content_type: None, content: Content::Bytes(data), content_id: None }];
    let mut in_memory = Prepared::build(&draft, Streams::new(Files::default()), &ctx(), None).unwrap();
    let mut in_memory_data = Vec::new();
    in_memory
        .sign(&identity("example.com"), 1_795_707_464, |data| {
            in_memory_data = data.to_vec();
            Ok(vec![0x42; 64])
        })
        .unwrap();
    assert_eq!(in_memory_data, signed_data);
    assert_eq!(in_memory.to_bytes().unwrap(), bytes);
}

#[test]
fn mail_from_another_domain_is_not_signed() {
    let files = Files::default();
    let mut msg = prepared(&files);
    let before = msg.to_bytes().unwrap();
    let called = Cell::new(false);
    for domain in ["mail.example.com", "xample.com", "com.example"] {
        let signed = msg
            .sign(&identity(domain), 1, |_| {
                called.set(true);
                Ok(vec![1])
            })
            .unwrap();
        assert!(signed.is_none(), "{domain}");
    }
    assert!(!called.get());
    assert_eq!(msg.to_bytes().unwrap(), before);
    // The parent domain covers it.
    assert!(msg.sign(&identity("com"), 1, |_| Ok(vec![1])).unwrap().is_some());
}

#[test]
fn a_refused_signature_is_a_policy_denial_and_nothing_is_sent() {
    let mut msg = prepared(&Files::default());
    let e = msg.sign(&identity("example.com"), 1, |_| Err("no key".into())).unwrap_err();
    assert_eq!(e, DeliverError::PolicyDenied("dkim: no key".into()));
    assert!(!e.worth_keeping());
}

#[test]
fn the_size_limit_counts_the_signature() {
    let mut msg = prepared(&Files::default());
    let size = msg.rendered.size();
    msg.sign(&identity("example.com"), 1, |_| Ok(vec![0; 64])).unwrap();
    assert!(msg.check_size(Some(size)).is_err());
    assert!(msg.check_size(Some(msg.rendered.size())).is_ok());
}

#[test]
fn a_batch_broken_in_the_middle_sends_the_unsent_rest_on_a_new_session() {
    // Message 0 is delivered; message 1's dot goes out with message 2's
    // envelope, then the connection resets: 1 is outcome unknown (never
    // sent again), 2 and 3 go on a new session.
    let first = Peer::new(&[
        HELLO[0],
        HELLO[1],
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 zero\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "<reset>",
    ]);
    let second = Peer::new(&[
        HELLO[0],
        HELLO[1],
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 two\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 three\r\n",
    ]);
    let second_commands = second.commands.clone();
    let mut conn = Connection::default();
    let mut open = opener(vec![first, second]);
    let msg = text_message();
    let (results, _) = conn.send_many(&mut open, &[&msg, &msg, &msg, &msg]);
    let lines: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(t) => t.reply.lines.join(" "),
            Err(SmtpError::OutcomeUnknown(_)) => "unknown".into(),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(lines, ["zero", "unknown", "two", "three"]);
    assert_eq!(second_commands.borrow()[0], "EHLO client.example\r\n");
    assert!(conn.session.is_some());
}
