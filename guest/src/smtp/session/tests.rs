//! Session tests (RFC 5321 dialogue, RFC 2920 pipelining, RFC 3207 STARTTLS,
//! RFC 4954 AUTH): scripted server bytes in, exact client bytes out.

use super::*;
use crate::smtp::auth::Mechanism;
use crate::smtp::data::Chunk;
use std::collections::VecDeque;

/// A transport that plays server chunks in order and records every write.
/// A `<wait>` chunk is a while with nothing to read: `recv_within` says so,
/// and `recv` waits it out.
struct Script {
    server: VecDeque<Vec<u8>>,
    writes: Vec<Vec<u8>>,
    tls: bool,
    tls_allowed: bool,
    log: Vec<String>,
    /// The index of the first write that fails (a broken pipe).
    fail_write: Option<usize>,
}

impl Script {
    fn new(chunks: &[&str]) -> Self {
        Self {
            server: chunks.iter().map(|c| c.as_bytes().to_vec()).collect(),
            writes: vec![],
            tls: false,
            tls_allowed: true,
            log: vec![],
            fail_write: None,
        }
    }
}

impl Transport for Script {
    fn send(&mut self, bytes: &[u8], _stage: Stage) -> Result<(), SmtpError> {
        if self.fail_write.is_some_and(|n| self.writes.len() >= n) {
            return Err(SmtpError::Connect("broken pipe".into()));
        }
        self.writes.push(bytes.to_vec());
        Ok(())
    }
    fn start_reply(&mut self, _stage: Stage) {}
    fn recv(&mut self, buf: &mut [u8], stage: Stage) -> Result<usize, SmtpError> {
        match self.server.pop_front() {
            Some(chunk) if chunk == b"<timeout>" => Err(SmtpError::Timeout(stage)),
            Some(chunk) if chunk == b"<tls>" => Err(SmtpError::Tls("a bad record".into())),
            Some(chunk) if chunk == b"<wait>" => self.recv(buf, stage),
            Some(chunk) => {
                buf[..chunk.len()].copy_from_slice(&chunk);
                Ok(chunk.len())
            }
            None => Ok(0),
        }
    }
    fn recv_within(&mut self, buf: &mut [u8], stage: Stage, _ms: u64) -> Result<Option<usize>, SmtpError> {
        if self.server.front().is_some_and(|c| c == b"<wait>") {
            self.server.pop_front();
            return Ok(None);
        }
        self.recv(buf, stage).map(Some)
    }
    fn start_tls(&mut self) -> Result<String, SmtpError> {
        if !self.tls_allowed {
            return Err(SmtpError::Tls("handshake failed".into()));
        }
        self.tls = true;
        Ok("TLSv1.3".into())
    }
    fn is_tls(&self) -> bool {
        self.tls
    }
    fn transcript(&mut self, d: Direction, line: &str) {
        self.log.push(format!("{d:?}: {line}"));
    }
    fn verbose(&self) -> bool {
        true
    }
}

fn cfg(tls: TlsMode, user: Option<&str>) -> Config {
    Config {
        client_name: ClientName::new("client.example").unwrap(),
        tls,
        user: user.map(str::to_owned),
        auth: Choice::Auto,
    }
}

fn secret() -> Option<Secret> {
    Some(Secret::new("hunter2".into()))
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

/// A session opened over `script`, plaintext, without AUTH.
fn opened(script: &[&str]) -> Session<Script> {
    Session::open(Script::new(script), &cfg(TlsMode::None, None), secret).unwrap()
}

/// Send `data` from a@example.com to `to`, announcing its exact size.
fn send_to(s: &mut Session<Script>, to: &[&str], data: &[u8]) -> Result<TransactionResult, SmtpError> {
    let from = addr("a@example.com");
    let recipients: Vec<Address> = to.iter().map(|a| addr(a)).collect();
    let msg = Outgoing { from: &from, recipients: &recipients, size: data.len() as u64, eight_bit: false, smtputf8: false };
    s.send_bytes(&msg, data)
}

fn writes(s: &Session<Script>) -> String {
    s.io.writes.iter().map(|w| String::from_utf8_lossy(w).into_owned()).collect::<Vec<_>>().join("|")
}

#[test]
fn pipelined_transaction_with_partial_acceptance() {
    let mut s = opened(&[
        "220 mx ESMTP\r\n",
        "250-mx\r\n250-PIPELINING\r\n250 SIZE 100000\r\n",
        "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
        "250 2.0.0 queued as X\r\n",
    ]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@example.com"), addr("bad@example.com"), addr("c@example.com")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 9, eight_bit: false, smtputf8: false };
    let d = s.send_bytes(&msg, b".hi\r\nyou\r\n").unwrap();
    assert_eq!(d.accepted, vec![rcpts[0].clone(), rcpts[2].clone()]);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].1.code, 550);
    assert_eq!(d.rejected[0].1.enhanced.as_deref(), Some("5.1.1"));
    assert_eq!(d.reply.lines, vec!["queued as X"]);
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n|MAIL FROM:<a@example.com> SIZE=9\r\nRCPT TO:<b@example.com>\r\n\
         RCPT TO:<bad@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n|..hi\r\nyou\r\n.\r\n"
    );
}

#[test]
fn a_second_message_after_a_dot_needs_no_rset() {
    // Even a refused end of data ends the transaction (RFC 5321 4.1.1.4).
    let mut s = opened(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "554 5.7.1 no thanks\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 ok\r\n",
        "221 bye\r\n",
    ]);
    send_to(&mut s, &["b@example.com"], b"one").unwrap_err();
    send_to(&mut s, &["b@example.com"], b"two").unwrap();
    assert!(s.io.writes[3].starts_with(b"MAIL FROM:<a@example.com>\r\n"));
    assert_eq!(s.io.writes[4], b"two\r\n.\r\n");
    s.quit();
}

#[test]
fn a_message_after_a_failed_envelope_pipelines_rset() {
    // No recipient was accepted, so no data ended the transaction: the
    // server may still hold its MAIL FROM.
    let mut s = opened(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
        "250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 ok\r\n",
        "221 bye\r\n",
    ]);
    send_to(&mut s, &["b@example.com"], b"one").unwrap_err();
    send_to(&mut s, &["b@example.com"], b"two").unwrap();
    assert!(s.io.writes[2].starts_with(b"RSET\r\nMAIL FROM:<a@example.com>\r\n"));
    assert_eq!(s.io.writes[3], b"two\r\n.\r\n");
    s.quit();
}

#[test]
fn without_pipelining_one_command_per_turn() {
    let mut s = opened(&[
        "220 mx\r\n",
        "250 mx\r\n",
        "250 ok\r\n",
        "250 ok\r\n",
        "354 go\r\n",
        "250 ok\r\n",
    ]);
    send_to(&mut s, &["b@example.com"], b"abc").unwrap();
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n|MAIL FROM:<a@example.com>\r\n|RCPT TO:<b@example.com>\r\n|DATA\r\n|abc\r\n.\r\n"
    );
}

#[test]
fn helo_fallback() {
    let s = opened(&["220 old\r\n", "502 5.5.2 what?\r\n", "250 old\r\n"]);
    assert_eq!(writes(&s), "EHLO client.example\r\n|HELO client.example\r\n");
    assert_eq!(s.capabilities(), &Capabilities::default());
}

#[test]
fn auth_plain_and_login_are_redacted() {
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN LOGIN\r\n", "235 2.7.0 ok\r\n"]);
    let s = Session::open(io, &cfg(TlsMode::None, Some("jo")), secret).unwrap();
    assert_eq!(writes(&s), "EHLO client.example\r\n|AUTH PLAIN AGpvAGh1bnRlcjI=\r\n");
    assert!(s.io.log.iter().any(|l| l == "Client: AUTH PLAIN <redacted>"));
    assert!(s.io.log.iter().any(|l| l.contains("WARNING")));
    assert!(!s.io.log.iter().any(|l| l.contains("AGpvAGh1bnRlcjI") || l.contains("hunter2")));

    let io = Script::new(&[
        "220 mx\r\n",
        "250-mx\r\n250 AUTH LOGIN\r\n",
        "334 VXNlcm5hbWU6\r\n",
        "334 UGFzc3dvcmQ6\r\n",
        "235 ok\r\n",
    ]);
    let s = Session::open(io, &cfg(TlsMode::None, Some("jo")), secret).unwrap();
    assert_eq!(writes(&s), "EHLO client.example\r\n|AUTH LOGIN\r\n|am8=\r\n|aHVudGVyMg==\r\n");
    assert!(!s.io.log.iter().any(|l| l.contains("aHVudGVyMg") || l.contains("am8=")));
}

#[test]
fn wrong_password_is_a_typed_auth_error() {
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN\r\n", "535 5.7.8 Authentication credentials invalid\r\n"]);
    let Err(SmtpError::Auth(r)) = Session::open(io, &cfg(TlsMode::None, Some("jo")), secret) else {
        panic!("expected an auth error");
    };
    assert_eq!(r.code, 535);
    assert_eq!(r.enhanced.as_deref(), Some("5.7.8"));
}

#[test]
fn starttls_then_ehlo_again() {
    let io = Script::new(&[
        "220 mx\r\n",
        "250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
        "220 go ahead\r\n",
        "250-mx\r\n250 AUTH LOGIN\r\n",
        "334 VXNlcm5hbWU6\r\n",
        "334 UGFzc3dvcmQ6\r\n",
        "235 ok\r\n",
    ]);
    let s = Session::open(io, &cfg(TlsMode::Required, Some("jo")), secret).unwrap();
    assert!(s.io.tls);
    assert_eq!(s.capabilities().auth, vec![Mechanism::Login], "pre-TLS capabilities are forgotten");
    assert!(writes(&s).starts_with("EHLO client.example\r\n|STARTTLS\r\n|EHLO client.example\r\n|AUTH LOGIN"));
    assert!(s.io.log.iter().any(|l| l == "Info: TLS started: TLSv1.3"));
}

#[test]
fn starttls_response_injection_is_refused() {
    let io = Script::new(&[
        "220 mx\r\n",
        "250-mx\r\n250 STARTTLS\r\n",
        "220 Ready to start TLS\r\n250-evil.example\r\n250 AUTH LOGIN\r\n",
    ]);
    let r = Session::open(io, &cfg(TlsMode::Required, Some("jo")), secret);
    assert!(matches!(r, Err(SmtpError::Tls(ref m)) if m.contains("injection")), "{:?}", r.err());
}

#[test]
fn required_tls_without_starttls_fails_before_auth() {
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"]);
    let r = Session::open(io, &cfg(TlsMode::Required, Some("jo")), secret);
    assert!(matches!(r, Err(SmtpError::Tls(_))));
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"]);
    let r = Session::open(io, &cfg(TlsMode::StartTls, Some("jo")), secret);
    assert!(matches!(r, Err(SmtpError::Tls(ref m)) if m.contains("unencrypted")), "opportunistic mode never AUTHs in clear");
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN\r\n"]);
    assert!(Session::open(io, &cfg(TlsMode::StartTls, None), secret).is_ok());
}

#[test]
fn starttls_refused_in_required_mode() {
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 STARTTLS\r\n", "454 4.7.0 TLS not available\r\n"]);
    let r = Session::open(io, &cfg(TlsMode::Required, None), secret);
    assert!(matches!(r, Err(SmtpError::Tls(ref m)) if m.contains("454")));
}

#[test]
fn timeout_after_final_dot_is_outcome_unknown() {
    let mut s = opened(&["220 mx\r\n", "250 mx\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n", "<timeout>"]);
    assert!(matches!(send_to(&mut s, &["b@example.com"], b"abc"), Err(SmtpError::OutcomeUnknown(_))));

    let mut s = opened(&["220 mx\r\n", "250 mx\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"]);
    assert!(matches!(send_to(&mut s, &["b@example.com"], b"abc"), Err(SmtpError::OutcomeUnknown(_))), "EOF after the dot");
}

#[test]
fn greeting_errors() {
    let io = Script::new(&["<timeout>"]);
    assert!(matches!(Session::open(io, &cfg(TlsMode::None, None), secret), Err(SmtpError::Timeout(Stage::Greeting))));
    let io = Script::new(&["554 5.3.2 go away\r\n"]);
    let r = Session::open(io, &cfg(TlsMode::None, None), secret);
    assert!(matches!(r, Err(SmtpError::Rejected { stage: Stage::Greeting, .. })));
    let io = Script::new(&["SSH-2.0-OpenSSH_9.2\r\n"]);
    assert!(matches!(Session::open(io, &cfg(TlsMode::None, None), secret), Err(SmtpError::Protocol(_))));
    let io = Script::new(&["220-a\r\n421 b\r\n"]);
    assert!(matches!(Session::open(io, &cfg(TlsMode::None, None), secret), Err(SmtpError::Protocol(_))));
}

#[test]
fn all_recipients_refused_pipelined() {
    let mut s = opened(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
    ]);
    let Err(SmtpError::Rejected { stage, reply, recipients }) = send_to(&mut s, &["b@example.com"], b"abc") else {
        panic!("expected a rejection");
    };
    assert_eq!(stage, Stage::RcptTo);
    assert_eq!(reply.code, 550);
    assert_eq!(recipients.len(), 1);
}

#[test]
fn capability_mismatches_fail_clearly() {
    let mut s = opened(&["220 mx\r\n", "250-mx\r\n250 SIZE 10\r\n"]);
    let from = addr("δ@example.com");
    let rcpts = [addr("b@example.com")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 3, eight_bit: false, smtputf8: true };
    assert!(matches!(s.send_bytes(&msg, b"abc"), Err(SmtpError::InvalidMessage(m)) if m.contains("SMTPUTF8")));
    let from = addr("a@example.com");
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 11, eight_bit: false, smtputf8: false };
    assert!(matches!(s.send_bytes(&msg, b"abc"), Err(SmtpError::InvalidMessage(m)) if m.contains("SIZE")));
    assert!(s.io.writes.len() == 1, "nothing but EHLO was sent");
}

/// A source whose file shrank: it fails after its first chunk.
struct Shrinking(u8);

impl Source for Shrinking {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        self.0 += 1;
        if self.0 > 1 {
            return Err(SmtpError::InvalidMessage("attachment file ended 10 bytes early".into()));
        }
        out.extend_from_slice(&[b'a'; DATA_CHUNK + 1]);
        Ok(Chunk::Text)
    }
}

#[test]
fn a_failure_inside_data_makes_the_session_unusable() {
    let mut s = opened(&[
        "220 mx ESMTP\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n",
    ]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@example.com")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 9, eight_bit: false, smtputf8: false };
    assert!(s.is_usable());
    let e = s.send(&msg, &mut Shrinking(0)).unwrap_err();
    assert!(matches!(e, SmtpError::InvalidMessage(_)), "{e:?}");
    assert!(!s.is_usable(), "the server is still in DATA: the connection must be dropped");
}

#[test]
fn a_refused_auth_ends_with_quit() {
    let io = Script::new(&["220 mx\r\n", "250-mx\r\n250 AUTH PLAIN\r\n", "535 5.7.8 no\r\n", "221 bye\r\n"]);
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let r = Session::open(Recording { inner: io, writes: log.clone() }, &cfg(TlsMode::None, Some("jo")), secret);
    let e = r.err().unwrap();
    assert!(matches!(e, SmtpError::Auth(ref r) if r.code == 535));
    assert!(!e.kills_session(), "the server answered: the connection still works");
    assert_eq!(log.borrow().last().map(Vec::as_slice), Some(&b"QUIT\r\n"[..]));
}

#[test]
fn a_rejected_greeting_ends_with_quit_a_broken_one_does_not() {
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let io = Recording { inner: Script::new(&["554 5.3.2 go away\r\n", "221 bye\r\n"]), writes: log.clone() };
    assert!(Session::open(io, &cfg(TlsMode::None, None), secret).is_err());
    assert_eq!(*log.borrow(), vec![b"QUIT\r\n".to_vec()]);
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let io = Recording { inner: Script::new(&["421 4.3.2 closing\r\n"]), writes: log.clone() };
    assert!(Session::open(io, &cfg(TlsMode::None, None), secret).is_err());
    assert!(log.borrow().is_empty(), "421: the server is gone, nothing is sent");
}

/// Shares the writes of a transport that `Session::open` keeps or drops.
struct Recording {
    inner: Script,
    writes: std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
}

impl Transport for Recording {
    fn send(&mut self, bytes: &[u8], stage: Stage) -> Result<(), SmtpError> {
        self.writes.borrow_mut().push(bytes.to_vec());
        self.inner.send(bytes, stage)
    }
    fn start_reply(&mut self, stage: Stage) {
        self.inner.start_reply(stage)
    }
    fn recv(&mut self, buf: &mut [u8], stage: Stage) -> Result<usize, SmtpError> {
        self.inner.recv(buf, stage)
    }
    fn start_tls(&mut self) -> Result<String, SmtpError> {
        self.inner.start_tls()
    }
    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
    fn transcript(&mut self, d: Direction, line: &str) {
        self.inner.transcript(d, line)
    }
    fn verbose(&self) -> bool {
        false
    }
}

#[test]
fn cram_md5_answers_the_challenge() {
    let io = Script::new(&[
        "220 mx\r\n",
        "250-mx\r\n250 AUTH PLAIN CRAM-MD5\r\n",
        "334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n",
        "235 2.7.0 ok\r\n",
    ]);
    let mut c = cfg(TlsMode::None, Some("tim"));
    c.auth = Choice::Exactly(Mechanism::CramMd5);
    let s = Session::open(io, &c, || Some(Secret::new("tanstaaftanstaaf".into()))).unwrap();
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n|AUTH CRAM-MD5\r\n|dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n"
    );
    assert!(s.io.log.iter().any(|l| l == "Client: <redacted>"));
    assert!(!s.io.log.iter().any(|l| l.contains("dGltIGI5")));
}

#[test]
fn endless_challenges_are_cancelled() {
    let io = Script::new(&[
        "220 mx\r\n",
        "250-mx\r\n250 AUTH LOGIN\r\n",
        "334 VXNlcm5hbWU6\r\n",
        "334 UGFzc3dvcmQ6\r\n",
        "334 TW9yZTo=\r\n",
        "501 5.7.0 cancelled\r\n",
        "221 bye\r\n",
    ]);
    let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let r = Session::open(Recording { inner: io, writes: log.clone() }, &cfg(TlsMode::None, Some("jo")), secret);
    assert!(matches!(r, Err(SmtpError::Auth(ref reply)) if reply.code == 334), "{:?}", r.err());
    let log = log.borrow();
    let tail: Vec<&[u8]> = log.iter().rev().take(2).map(Vec::as_slice).collect();
    assert_eq!(tail, [&b"QUIT\r\n"[..], b"*\r\n"], "cancelled with `*`, then QUIT");
}

#[test]
fn pipelined_mail_refusal_ends_the_open_data_at_once() {
    let mut s = opened(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "550 5.7.1 sender refused\r\n250 ok\r\n354 go\r\n",
        "554 5.5.1 no transaction\r\n",
    ]);
    let e = send_to(&mut s, &["b@example.com"], b"abc").unwrap_err();
    assert!(matches!(e, SmtpError::Rejected { stage: Stage::MailFrom, ref reply, .. } if reply.code == 550), "{e:?}");
    assert_eq!(s.io.writes.last().map(Vec::as_slice), Some(&b".\r\n"[..]), "the empty data is ended, the message never sent");
    assert!(s.is_usable());
}

#[test]
fn pipelined_rset_refusal_reads_every_reply() {
    let mut s = opened(&[
        "220 mx\r\n",
        "250-mx\r\n250 PIPELINING\r\n",
        "250 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
        "452 4.3.1 busy\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 ok\r\n",
    ]);
    send_to(&mut s, &["b@example.com"], b"one").unwrap_err();
    let e = send_to(&mut s, &["b@example.com"], b"two").unwrap_err();
    assert!(matches!(e, SmtpError::Rejected { stage: Stage::Rset, .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(s.io.writes.last().map(Vec::as_slice), Some(&b".\r\n"[..]));
    assert_eq!(s.parser.buffered(), 0, "no reply is left to be read as the next command's");
}

#[test]
fn one_at_a_time_all_refused_sends_no_data() {
    let mut s = opened(&["220 mx\r\n", "250 mx\r\n", "250 ok\r\n", "550 5.1.1 no\r\n", "450 4.2.1 later\r\n"]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@example.com"), addr("c@example.com")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 3, eight_bit: false, smtputf8: false };
    let Err(SmtpError::Rejected { stage, reply, recipients }) = s.send_bytes(&msg, b"abc") else {
        panic!("expected a rejection");
    };
    assert_eq!((stage, reply.code, recipients.len()), (Stage::RcptTo, 450, 2));
    assert!(!writes(&s).contains("DATA"));
}

#[test]
fn one_at_a_time_stops_at_a_421() {
    let mut s = opened(&["220 mx\r\n", "250 mx\r\n", "250 ok\r\n", "421 4.3.0 closing\r\n"]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@example.com"), addr("c@example.com")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 3, eight_bit: false, smtputf8: false };
    let e = s.send_bytes(&msg, b"abc").unwrap_err();
    assert!(matches!(e, SmtpError::Rejected { stage: Stage::RcptTo, ref reply, .. } if reply.code == 421));
    assert!(e.kills_session());
    assert_eq!(s.io.writes.len(), 3, "EHLO, MAIL, one RCPT: nothing after the 421");
}

// ---- Batches (RFC 2920 3.1 across messages, RFC 3030 BDAT) ----

/// Three-letter bodies `m0`, `m1`, ... to `rcpts[i]`, from a@example.com.
struct Batch3 {
    from: Address,
    rcpts: Vec<Vec<Address>>,
    bodies: Vec<Vec<u8>>,
}

impl Batch3 {
    fn new(rcpts: &[&[&str]]) -> Self {
        Self {
            from: addr("a@example.com"),
            rcpts: rcpts.iter().map(|r| r.iter().map(|a| addr(a)).collect()).collect(),
            bodies: (0..rcpts.len()).map(|i| format!("m{i}\r\n").into_bytes()).collect(),
        }
    }

    fn send(&self, s: &mut Session<Script>) -> Batch {
        let mut sources: Vec<SliceSource<'_>> = self.bodies.iter().map(|b| SliceSource(Some(b))).collect();
        let mut items: Vec<Item<'_, '_>> = self
            .rcpts
            .iter()
            .zip(&self.bodies)
            .zip(sources.iter_mut())
            .map(|((r, b), src)| Item {
                msg: Outgoing { from: &self.from, recipients: r, size: b.len() as u64, eight_bit: false, smtputf8: false },
                source: src,
            })
            .collect();
        s.send_many(&mut items)
    }
}

/// Each message's reply text, or its error.
fn texts(b: &Batch) -> Vec<String> {
    b.results.iter().map(|r| r.as_ref().map_or_else(|e| e.to_string(), |t| t.reply.lines.join(" "))).collect()
}

fn codes(b: &Batch) -> Vec<String> {
    b.results
        .iter()
        .map(|r| match r {
            Ok(t) => format!("ok {}", t.reply.code),
            Err(SmtpError::Rejected { stage, reply, .. }) => format!("{stage} {}", reply.code),
            Err(SmtpError::OutcomeUnknown(_)) => "unknown".into(),
            Err(SmtpError::Connect(_)) => "connect".into(),
            Err(e) => format!("{e}"),
        })
        .collect()
}

/// A message that streams in the pieces given, the last one `Last`.
struct Pieces<'a>(VecDeque<&'a [u8]>);

impl Source for Pieces<'_> {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        if let Some(piece) = self.0.pop_front() {
            out.extend_from_slice(piece);
        }
        Ok(if self.0.is_empty() { Chunk::Last } else { Chunk::Text })
    }
}

const PIPELINING: &str = "250-mx\r\n250 PIPELINING\r\n";
const CHUNKING: &str = "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n";

#[test]
fn data_batch_is_one_round_trip_per_message() {
    let mut s = opened(&[
        "220 mx\r\n",
        PIPELINING,
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 one\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 two\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 three\r\n",
    ]);
    let b = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]);
    let out = b.send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "ok 250", "ok 250"]);
    assert_eq!(out.results[1].as_ref().unwrap().reply.lines, ["two"]);
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n\
         |MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n\
         |m0\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@x.org>\r\nDATA\r\n\
         |m1\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@x.org>\r\nDATA\r\n\
         |m2\r\n.\r\n"
    );
    assert!(out.unsent.is_empty());
    assert!(s.is_usable());
    // The transcript shows the wire in its order: the end of data, then the
    // next message's commands, with no RSET (the dot ended the transaction).
    let log = s.io.log.join("\n");
    let dot = log.find("Client: .\nClient: MAIL FROM").expect("dot then MAIL FROM in the transcript");
    assert!(!log.contains("RSET"), "{log}");
    assert!(log[..dot].contains("<4 octets of message data>"));
}

#[test]
fn data_batch_a_452_on_one_recipient_stays_with_its_message() {
    // Message 1 has two recipients, one refused 452: it goes to the other.
    // Message 2's only recipient is refused 452: its DATA is refused too, no
    // text is sent, and message 3 still goes.
    let mut s = opened(&[
        "220 mx\r\n",
        PIPELINING,
        "250 ok\r\n250 ok\r\n452 4.5.3 too many\r\n354 go\r\n",
        "250 one\r\n250 ok\r\n452 4.2.2 full\r\n554 5.5.1 no valid recipients\r\n",
        "250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 three\r\n",
    ]);
    let b = Batch3::new(&[&["b@x.org", "full@x.org"], &["full@x.org"], &["d@x.org"]]);
    let out = b.send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "rcpt-to 452", "ok 250"]);
    let first = out.results[0].as_ref().unwrap();
    assert_eq!(first.accepted, [addr("b@x.org")]);
    assert_eq!(first.rejected[0].1.code, 452);
    assert!(out.results[1].as_ref().unwrap_err().is_transient());
    let w = writes(&s);
    assert!(!w.contains("m1\r\n"), "no text for the refused message: {w}");
    assert!(w.ends_with("|RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@x.org>\r\nDATA\r\n|m2\r\n.\r\n"), "{w}");
}

#[test]
fn data_batch_a_554_after_one_dot_fails_that_message_only() {
    let mut s = opened(&[
        "220 mx\r\n",
        PIPELINING,
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "554 5.7.1 spam\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 two\r\n250 ok\r\n250 ok\r\n354 go\r\n",
        "250 three\r\n",
    ]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["data-end 554", "ok 250", "ok 250"]);
    assert!(!out.results[0].as_ref().unwrap_err().worth_keeping());
}

#[test]
fn data_batch_a_disconnect_after_a_dot_is_exact() {
    // Message 0 is settled; message 1's dot went out with message 2's
    // envelope and the server vanished: 1 is outcome unknown, 2 and 3 were
    // never sent.
    let mut s = opened(&[
        "220 mx\r\n",
        PIPELINING,
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 zero\r\n250 ok\r\n250 ok\r\n354 go\r\n",
    ]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"], &["e@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "unknown", "connect", "connect"]);
    assert_eq!(out.unsent, [2, 3]);
    assert!(!s.is_usable());
}

#[test]
fn data_batch_a_disconnect_before_data_leaves_the_message_unsent() {
    let mut s = opened(&["220 mx\r\n", PIPELINING, "250 ok\r\n"]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["connect", "connect"]);
    assert_eq!(out.unsent, [0, 1]);
}

#[test]
fn data_batch_a_421_closes_and_the_rest_is_unsent() {
    let mut s = opened(&[
        "220 mx\r\n",
        PIPELINING,
        "250 ok\r\n250 ok\r\n354 go\r\n",
        "250 zero\r\n421 4.3.2 shutting down\r\n",
    ]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "mail-from 421", "connect"]);
    assert_eq!(out.unsent, [2]);
}

#[test]
fn bdat_batch_writes_ahead_and_reads_in_order() {
    let mut s = opened(&[
        "220 mx\r\n",
        CHUNKING,
        "250 ok\r\n250 ok\r\n250 zero\r\n\
         250 reset\r\n250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n\
         250 reset\r\n250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n\
         250 reset\r\n250 ok\r\n250 ok\r\n250 three\r\n",
    ]);
    let out = Batch3::new(&[&["b@x.org"], &["nobody@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "rcpt-to 550", "data-end 552", "ok 250"]);
    assert_eq!(out.results[3].as_ref().unwrap().reply.lines, ["three"]);
    // The four messages are one write; none waited for a reply.
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n\
         |MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nBDAT 4 LAST\r\nm0\r\n\
         RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<nobody@x.org>\r\nBDAT 4 LAST\r\nm1\r\n\
         RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@x.org>\r\nBDAT 4 LAST\r\nm2\r\n\
         RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@x.org>\r\nBDAT 4 LAST\r\nm3\r\n"
    );
}

#[test]
fn bdat_batch_a_read_that_would_wait_at_its_end_sends_an_rset_first() {
    // The last message's replies are late: while it waits for them the
    // client sends the RSET the next message would start with (its octets
    // carry the ACK the server's next write may wait for), and it passes
    // over that RSET's reply, which comes first, before the next batch's
    // own. The next message has no RSET of its own.
    let mut s = opened(&[
        "220 mx\r\n",
        CHUNKING,
        "250 ok\r\n250 ok\r\n250 zero\r\n",
        "<wait>",
        "250 reset\r\n250 ok\r\n250 ok\r\n250 one\r\n",
        "250 2.0.0 nudge\r\n250 ok\r\n250 ok\r\n250 two\r\n",
    ]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "ok 250"]);
    assert_eq!(out.results[1].as_ref().unwrap().reply.lines, ["one"]);
    let next = Batch3::new(&[&["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&next), ["ok 250"]);
    assert_eq!(next.results[0].as_ref().unwrap().reply.lines, ["two"]);
    assert_eq!(
        writes(&s),
        "EHLO client.example\r\n\
         |MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nBDAT 4 LAST\r\nm0\r\n\
         RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@x.org>\r\nBDAT 4 LAST\r\nm1\r\n\
         |RSET\r\n\
         |MAIL FROM:<a@example.com>\r\nRCPT TO:<d@x.org>\r\nBDAT 4 LAST\r\nm0\r\n"
    );
    assert!(s.is_usable());
}

#[test]
fn bdat_batch_sends_one_rset_between_two_messages_and_quit_passes_over_its_reply() {
    // Every reply of six messages is late. The first read follows the
    // write; the second waits and sends the next message's RSET; the 21
    // after it wait without one, as one RSET is all that two messages
    // need. QUIT's reply comes after the RSET's.
    let mut script = vec!["220 mx\r\n", CHUNKING];
    for reply in ["250 ok\r\n", "250 ok\r\n", "250 zero\r\n"] {
        script.extend(["<wait>", reply]);
    }
    for _ in 0..5 {
        for reply in ["250 reset\r\n", "250 ok\r\n", "250 ok\r\n", "250 sent\r\n"] {
            script.extend(["<wait>", reply]);
        }
    }
    script.push("250 2.0.0 early\r\n");
    script.push("221 bye\r\n");
    let mut s = opened(&script);
    let rcpts: Vec<&[&str]> = vec![&["b@x.org"]; 6];
    let out = Batch3::new(&rcpts).send(&mut s);
    assert!(codes(&out).iter().all(|c| c == "ok 250"), "{:?}", codes(&out));
    let w = writes(&s);
    assert_eq!(w.matches("RSET\r\n").count(), 6, "{w}");
    assert!(w.ends_with("|RSET\r\n"), "{w}");
    assert_eq!(s.command(Quit).unwrap().code, 221);
}

/// One message whose RCPT reply is late, so the RSET of the message after
/// it goes early; then a batch of two (to c@ and d@) answered with `then`,
/// which begins with that RSET's reply. Returns the session and the batch.
fn after_an_early_rset(then: &str) -> (Session<Script>, Batch) {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n", "<wait>", "250 ok\r\n250 zero\r\n", then]);
    let out = Batch3::new(&[&["b@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250"]);
    let next = Batch3::new(&[&["c@x.org"], &["d@x.org"]]).send(&mut s);
    (s, next)
}

#[test]
fn bdat_batch_a_refused_early_rset_is_passed_over_and_the_replies_stay_in_step() {
    // The early RSET after message 0 is answered 500: its reply is still
    // passed over, and the next batch's messages keep their own replies;
    // the second of them, written while no later RSET was on its way,
    // starts with its own RSET.
    let (s, next) = after_an_early_rset(
        "500 5.5.1 what\r\n250 ok\r\n250 ok\r\n250 one\r\n250 reset\r\n250 ok\r\n250 ok\r\n250 two\r\n",
    );
    assert_eq!(texts(&next), ["one", "two"]);
    assert!(writes(&s).ends_with("|RSET\r\n|MAIL FROM:<a@example.com>\r\nRCPT TO:<c@x.org>\r\nBDAT 4 LAST\r\nm0\r\n\
         RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@x.org>\r\nBDAT 4 LAST\r\nm1\r\n"), "{}", writes(&s));
}

#[test]
fn bdat_batch_a_nudge_in_the_middle_is_answered_after_the_newest_message() {
    // Ten messages, eight written at once. Message 1's replies are late
    // when message 8 is the newest written: message 9's RSET, sent then,
    // is answered after message 8, and each message keeps its own reply.
    let replies = |i: usize| format!("250 reset\r\n250 ok\r\n250 ok\r\n250 m{i}\r\n");
    let rest: String = (2..=8).map(replies).collect::<String>() + "250 2.0.0 nudge\r\n250 ok\r\n250 ok\r\n250 m9\r\n";
    let mut s = opened(&[
        "220 mx\r\n",
        CHUNKING,
        "250 ok\r\n250 ok\r\n250 m0\r\n",
        "250 reset\r\n",
        "<wait>",
        "250 ok\r\n250 ok\r\n250 m1\r\n",
        &rest,
    ]);
    let rcpts: Vec<&[&str]> = vec![&["b@x.org"]; 10];
    let out = Batch3::new(&rcpts).send(&mut s);
    let wanted: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&out), wanted);
    let w = writes(&s);
    let parts: Vec<&str> = w.split('|').collect();
    assert_eq!(parts.len(), 5, "{w}");
    assert!(parts[2].ends_with("m8\r\n") && parts[3] == "RSET\r\n", "{w}");
    assert!(parts[4].starts_with("MAIL FROM") && parts[4].ends_with("m9\r\n"), "{w}");
    assert!(s.is_usable());
}

#[test]
fn bdat_batch_a_421_in_place_of_a_nudge_reply_ends_the_next_batch() {
    let (_, next) = after_an_early_rset("421 4.3.2 shutting down\r\n");
    assert_eq!(codes(&next), ["mail-from 421", "connect"]);
    assert_eq!(next.unsent, [1]);
}

#[test]
fn bdat_batch_refills_the_pipeline_in_one_write() {
    let first = "250 ok\r\n250 ok\r\n250 sent\r\n".to_owned() + &"250 reset\r\n250 ok\r\n250 ok\r\n250 sent\r\n".repeat(7);
    let rest = "250 reset\r\n250 ok\r\n250 ok\r\n250 sent\r\n".repeat(4);
    let mut s = opened(&["220 mx\r\n", CHUNKING, &first, &rest]);
    let rcpts: Vec<&[&str]> = vec![&["b@x.org"]; MAX_IN_FLIGHT + 4];
    let out = Batch3::new(&rcpts).send(&mut s);
    assert!(codes(&out).iter().all(|c| c == "ok 250"), "{:?}", codes(&out));
    // EHLO; the first eight messages in one write; the last four, queued
    // while the first eight's replies were read from one receive, in one
    // write before the next receive.
    let w = writes(&s);
    let parts: Vec<&str> = w.split('|').collect();
    assert_eq!(parts.len(), 3, "{w}");
    assert_eq!(parts[1].matches(" LAST\r\n").count(), MAX_IN_FLIGHT);
    assert_eq!(parts[2].matches(" LAST\r\n").count(), 4);
}

#[test]
fn bdat_batch_coalesced_writes_stay_near_max_queued() {
    use super::batch::MAX_QUEUED;
    // Six whole messages of 100,000 octets: the queue is flushed once it
    // reaches MAX_QUEUED, so no write carries much more than that.
    let size = 100_000;
    let replies = "250 ok\r\n250 ok\r\n250 sent\r\n".to_owned() + &"250 reset\r\n250 ok\r\n250 ok\r\n250 sent\r\n".repeat(5);
    let mut s = opened(&["220 mx\r\n", CHUNKING, &replies]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@x.org")];
    let body = vec![b'x'; size];
    let mut sources: Vec<SliceSource<'_>> = (0..6).map(|_| SliceSource(Some(&body))).collect();
    let mut items: Vec<Item<'_, '_>> = sources
        .iter_mut()
        .map(|src| Item {
            msg: Outgoing { from: &from, recipients: &rcpts, size: size as u64, eight_bit: false, smtputf8: false },
            source: src,
        })
        .collect();
    let out = s.send_many(&mut items);
    assert!(out.results.iter().all(Result::is_ok), "{:?}", codes(&out));
    let writes: Vec<usize> = s.io.writes[1..].iter().map(Vec::len).collect();
    assert!(writes.len() >= 2, "{writes:?}");
    assert!(writes.iter().all(|&n| n < MAX_QUEUED + size + 200), "{writes:?}");
    // Every message went out whole.
    assert!(writes.iter().sum::<usize>() > 6 * size, "{writes:?}");
}

#[test]
fn bdat_batch_a_failed_coalesced_write_leaves_each_message_in_it_unknown() {
    let mut script = Script::new(&["220 mx\r\n", CHUNKING]);
    script.fail_write = Some(1);
    let mut s = Session::open(script, &cfg(TlsMode::None, None), secret).unwrap();
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    // Part of the write may have reached the server: none is unsent.
    assert_eq!(codes(&out), ["unknown", "unknown", "unknown"]);
    assert!(out.unsent.is_empty());
    assert!(!s.is_usable());
}

#[test]
fn data_batch_a_failed_write_of_the_dot_and_the_next_envelope_is_outcome_unknown() {
    // The write that fails holds message 0's last data, its dot and
    // message 1's envelope: the dot may have reached the server.
    let mut script = Script::new(&["220 mx\r\n", PIPELINING, "250 ok\r\n250 ok\r\n354 go\r\n"]);
    script.fail_write = Some(2);
    let mut s = Session::open(script, &cfg(TlsMode::None, None), secret).unwrap();
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["unknown", "connect"]);
    assert_eq!(out.unsent, [1]);
    // A failed write of an earlier chunk of a large message is before its
    // dot, trailer or not: not delivered, sent again.
    let mut script = Script::new(&["220 mx\r\n", PIPELINING, "250 ok\r\n250 ok\r\n354 go\r\n"]);
    script.fail_write = Some(2);
    let mut s = Session::open(script, &cfg(TlsMode::None, None), secret).unwrap();
    let (from, to) = (addr("a@example.com"), [addr("b@x.org")]);
    let (big, small) = (b"x\r\n".repeat(crate::smtp::data::DATA_CHUNK), b"m1\r\n".to_vec());
    // The large message streams: two text pieces of a chunk each, then the rest.
    let chunk = crate::smtp::data::DATA_CHUNK;
    let mut streamed = Pieces(vec![&big[..chunk], &big[chunk..2 * chunk], &big[2 * chunk..]].into());
    let mut whole = SliceSource(Some(&small));
    let mut items = vec![
        Item {
            msg: Outgoing { from: &from, recipients: &to, size: big.len() as u64, eight_bit: false, smtputf8: false },
            source: &mut streamed,
        },
        Item {
            msg: Outgoing { from: &from, recipients: &to, size: small.len() as u64, eight_bit: false, smtputf8: false },
            source: &mut whole,
        },
    ];
    let out = s.send_many(&mut items);
    assert_eq!(codes(&out), ["connect", "connect"]);
    assert_eq!(out.unsent, [0, 1]);
    // The last message's dot ends its write: a failure there is before it.
    let mut script = Script::new(&["220 mx\r\n", PIPELINING, "250 ok\r\n250 ok\r\n354 go\r\n"]);
    script.fail_write = Some(2);
    let mut s = Session::open(script, &cfg(TlsMode::None, None), secret).unwrap();
    let out = Batch3::new(&[&["b@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["connect"]);
    assert_eq!(out.unsent, [0]);
}

#[test]
fn a_refused_recipient_keeps_a_clipped_reply() {
    // Five lines of 1,000 octets: a message keeps one such reply for each
    // refused recipient, and may have a thousand.
    let long = format!("550-{}\r\n", "x".repeat(1000)).repeat(5) + "550 no\r\n";
    let replies = format!("250 ok\r\n{long}250 ok\r\n354 go\r\n");
    let mut s = opened(&["220 mx\r\n", PIPELINING, &replies, "250 done\r\n"]);
    let out = Batch3::new(&[&["b@x.org", "c@x.org"]]).send(&mut s);
    let sent = out.results[0].as_ref().unwrap();
    assert_eq!(sent.rejected.len(), 1);
    assert_eq!(sent.rejected[0].1.code, 550);
    assert!(sent.rejected[0].1.text().len() <= crate::smtp::reply::MAX_KEPT_RCPT_REPLY_BYTES);
}

#[test]
fn bdat_sends_dots_as_they_are() {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 done\r\n"]);
    send_to(&mut s, &["b@x.org"], b".\r\n..x\r\n").unwrap();
    assert_eq!(s.io.writes[1], b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.org>\r\nBDAT 8 LAST\r\n.\r\n..x\r\n");
}

#[test]
fn bdat_batch_a_disconnect_leaves_every_written_message_unknown() {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 zero\r\n250 reset\r\n"]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "unknown", "unknown"]);
    assert!(out.unsent.is_empty());
}

#[test]
fn bdat_batch_after_a_421_the_written_messages_are_unsent() {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 zero\r\n421 4.3.2 bye\r\n"]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"], &["d@x.org"]]).send(&mut s);
    assert_eq!(codes(&out), ["ok 250", "rset 421", "connect"]);
    assert_eq!(out.unsent, [2]);
}

#[test]
fn bdat_batch_a_tls_failure_after_the_data_is_outcome_unknown() {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 one\r\n", "<tls>"]);
    let out = Batch3::new(&[&["b@x.org"], &["c@x.org"]]).send(&mut s);
    // Message 2's BDAT LAST went out: the server may have taken it.
    assert_eq!(codes(&out), ["ok 250", "unknown"]);
    assert!(out.unsent.is_empty() && !s.is_usable());
}

#[test]
fn bdat_batch_after_a_421_what_was_queued_is_never_written() {
    // Message 1 is answered and message 2's RSET gets a 421 in the same
    // read; message 9, queued once message 1 landed, must not go out.
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 zero\r\n421 4.3.2 bye\r\n"]);
    let rcpts: Vec<String> = (0..10).map(|i| format!("r{i}@x.org")).collect();
    let lists: Vec<Vec<&str>> = rcpts.iter().map(|r| vec![r.as_str()]).collect();
    let refs: Vec<&[&str]> = lists.iter().map(Vec::as_slice).collect();
    let out = Batch3::new(&refs).send(&mut s);
    assert_eq!(codes(&out)[..2], ["ok 250", "rset 421"]);
    assert!(codes(&out)[2..].iter().all(|c| c == "connect"), "{:?}", codes(&out));
    let mut unsent = out.unsent.clone();
    unsent.sort_unstable();
    assert_eq!(unsent, (2..10).collect::<Vec<_>>());
    let w = writes(&s);
    assert!(w.contains("<r7@x.org>") && !w.contains("<r8@x.org>") && !w.contains("<r9@x.org>"), "{w}");
}

/// `n` octets of `x` lines, in source pieces of at most 50,000 octets.
struct Large {
    left: usize,
}

impl Source for Large {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        let n = self.left.min(50_000);
        self.left -= n;
        out.extend(std::iter::repeat_n(b'x', n));
        Ok(if self.left == 0 { Chunk::Last } else { Chunk::Text })
    }
}

#[test]
fn bdat_streams_a_large_message_in_bounded_chunks() {
    use crate::smtp::data::BDAT_CHUNK;
    let size = 2 * BDAT_CHUNK + 10;
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 c1\r\n250 c2\r\n250 done\r\n"]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@x.org")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: size as u64, eight_bit: false, smtputf8: false };
    let t = s.send(&msg, &mut Large { left: size }).unwrap();
    assert_eq!(t.reply.lines, ["done"]);
    let heads: Vec<String> = s.io.writes[1..]
        .iter()
        .map(|w| {
            let text = String::from_utf8_lossy(w);
            let start = text.find("BDAT").unwrap();
            text[start..].lines().next().unwrap().to_owned()
        })
        .collect();
    assert_eq!(heads, [format!("BDAT {BDAT_CHUNK}"), format!("BDAT {BDAT_CHUNK}"), "BDAT 10 LAST".into()]);
    assert!(s.io.writes.iter().all(|w| w.len() <= BDAT_CHUNK + 200));
}

#[test]
fn bdat_a_refused_chunk_stops_the_message_and_the_session_goes_on() {
    use crate::smtp::data::BDAT_CHUNK;
    let size = 4 * BDAT_CHUNK;
    // Chunk 1 is refused (RFC 3030 4): chunk 2 was already in the pipe, its
    // reply is read and dropped; no chunk 3 goes out.
    let mut s = opened(&[
        "220 mx\r\n",
        CHUNKING,
        "250 ok\r\n250 ok\r\n452 4.3.1 disk full\r\n503 5.5.1 no transaction\r\n",
        "250 reset\r\n250 ok\r\n250 ok\r\n250 small\r\n",
    ]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@x.org")];
    let msg = Outgoing { from: &from, recipients: &rcpts, size: size as u64, eight_bit: false, smtputf8: false };
    let e = s.send(&msg, &mut Large { left: size }).unwrap_err();
    assert!(matches!(&e, SmtpError::Rejected { stage: Stage::DataBlock, reply, .. } if reply.code == 452), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(s.io.writes.len(), 3, "EHLO, envelope + chunk 1, chunk 2; nothing more");
    assert!(s.is_usable());
    send_to(&mut s, &["b@x.org"], b"hi\r\n").unwrap();
    assert!(s.io.writes[3].starts_with(b"RSET\r\n"));
}

#[test]
fn bdat_a_failing_source_between_chunks_keeps_the_session() {
    let mut s = opened(&["220 mx\r\n", CHUNKING, "250 ok\r\n250 ok\r\n250 c1\r\n"]);
    let from = addr("a@example.com");
    let rcpts = [addr("b@x.org")];
    // Shrinking gives DATA_CHUNK + 1 octets, then fails: less than one
    // BDAT chunk, so it fails before anything is written.
    let msg = Outgoing { from: &from, recipients: &rcpts, size: 9, eight_bit: false, smtputf8: false };
    let e = s.send(&msg, &mut Shrinking(0)).unwrap_err();
    assert!(matches!(e, SmtpError::InvalidMessage(_)), "{e:?}");
    assert_eq!(s.io.writes.len(), 1, "nothing of the message was written");
    assert!(s.is_usable());
}
