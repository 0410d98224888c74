//! The SMTP client session (RFC 5321 3 and 4.1, RFC 2920 PIPELINING, RFC 3207
//! STARTTLS, RFC 4954 AUTH): greeting, EHLO with HELO fallback, STARTTLS,
//! AUTH, then any number of transactions, and QUIT.
//!
//! The session never touches a socket. It talks to a [`Transport`], which
//! moves bytes and enforces deadlines; tests drive it with scripted bytes.

use super::auth::{self, Choice, Secret};
use super::command::{self, Body, ClientName, MailFrom, RcptTo};
use super::dot::DotStuffer;
use super::ehlo::{Capabilities, Mechanism};
use super::error::{SmtpError, Stage};
use super::reply::{Reply, ReplyParser};
use crate::mime::address::Address;

/// How much message data is gathered before one write. Large enough that a
/// typical message is one write with its terminator; small enough to bound
/// memory when streaming.
pub const DATA_CHUNK: usize = 64 * 1024;
/// Read buffer size.
pub const READ_CHUNK: usize = 16 * 1024;

/// Transcript line origins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent by us.
    Client,
    /// Sent by the server.
    Server,
    /// A note (TLS started, a warning).
    Info,
}

/// What the session needs from the network.
pub trait Transport {
    /// Write `bytes` in full, as one write where the platform allows.
    fn send(&mut self, bytes: &[u8], stage: Stage) -> Result<(), SmtpError>;
    /// Mark the start of waiting for a reply in `stage`: the deadline for the
    /// whole reply starts now.
    fn start_reply(&mut self, stage: Stage);
    /// Read at least one byte into `buf`; `Ok(0)` at end of stream. Fails with
    /// `Timeout(stage)` when the deadline set by `start_reply` passes.
    fn recv(&mut self, buf: &mut [u8], stage: Stage) -> Result<usize, SmtpError>;
    /// Run the TLS handshake over the connection; returns a description of
    /// the negotiated protocol.
    fn start_tls(&mut self) -> Result<String, SmtpError>;
    /// True once the connection is encrypted.
    fn is_tls(&self) -> bool;
    /// Record a transcript line. Only called when [`Transport::verbose`].
    fn transcript(&mut self, direction: Direction, line: &str);
    /// Whether a transcript is wanted.
    fn verbose(&self) -> bool;
}

/// How the session secures the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext; AUTH allowed with a warning.
    None,
    /// STARTTLS when offered; otherwise plaintext without AUTH.
    StartTls,
    /// STARTTLS or fail.
    Required,
    /// The transport is TLS from the first byte.
    Implicit,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The EHLO name.
    pub client_name: ClientName,
    /// TLS policy.
    pub tls: TlsMode,
    /// AUTH user; `None` skips AUTH.
    pub user: Option<String>,
    /// AUTH mechanism choice.
    pub auth: Choice,
}

/// A message ready for the wire.
pub struct Outgoing<'a> {
    /// MAIL FROM.
    pub from: &'a Address,
    /// RCPT TO, in order.
    pub recipients: &'a [Address],
    /// Exact size in octets before dot-stuffing (for `SIZE=`).
    pub size: u64,
    /// The data has 8-bit octets (needs 8BITMIME).
    pub eight_bit: bool,
    /// An address needs SMTPUTF8.
    pub smtputf8: bool,
}

/// What a [`Source`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Message text; more follows.
    Text,
    /// Lines from [`crate::mime::encode::base64_lines`], which need no
    /// dot-stuffing; more follows.
    Base64,
    /// The last piece of message text.
    Last,
}

/// Produces the message data in chunks (CRLF lines, not stuffed).
pub trait Source {
    /// Append the next piece to `out` and say what it is.
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError>;
}

/// A message already in memory.
pub struct SliceSource<'a>(pub Option<&'a [u8]>);

impl Source for SliceSource<'_> {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        if let Some(b) = self.0.take() {
            out.extend_from_slice(b);
        }
        Ok(Chunk::Last)
    }
}

/// The result of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Accepted recipients.
    pub accepted: Vec<Address>,
    /// Refused recipients with the server's replies.
    pub rejected: Vec<(Address, Reply)>,
    /// The reply to the final dot.
    pub reply: Reply,
}

/// An open SMTP session.
pub struct Session<T: Transport> {
    io: T,
    parser: ReplyParser,
    rbuf: Vec<u8>,
    caps: Capabilities,
    esmtp: bool,
    /// A transaction ran since the last RSET.
    dirty: bool,
    /// The data phase failed part way (the source failed, or a write): the
    /// server is still inside DATA and will read anything we send as
    /// message text, so the connection must be closed, not reused.
    broken: bool,
    wbuf: Vec<u8>,
}

fn synthetic(text: String) -> Reply {
    Reply { code: 0, enhanced: None, lines: vec![text] }
}

impl<T: Transport> Session<T> {
    /// Greet, EHLO, secure and authenticate. `secret` is asked for only when
    /// AUTH actually happens.
    pub fn open(io: T, cfg: &Config, secret: impl FnOnce() -> Option<Secret>) -> Result<Self, SmtpError> {
        let mut s = Self {
            io,
            parser: ReplyParser::new(),
            rbuf: vec![0; READ_CHUNK],
            caps: Capabilities::default(),
            esmtp: false,
            dirty: false,
            broken: false,
            wbuf: Vec::with_capacity(DATA_CHUNK + 1024),
        };
        let greeting = s.read_reply(Stage::Greeting)?;
        if greeting.code != 220 {
            return Err(if greeting.is_transient() || greeting.is_permanent() {
                SmtpError::Rejected { stage: Stage::Greeting, reply: greeting, recipients: vec![] }
            } else {
                SmtpError::Protocol(format!("unexpected greeting {greeting}"))
            });
        }
        s.hello(&cfg.client_name)?;
        s.secure(cfg)?;
        if let Some(user) = &cfg.user {
            s.authenticate(cfg, user, secret)?;
        }
        Ok(s)
    }

    /// What the server offers (after TLS, the post-TLS EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The transport, e.g. to check TLS.
    pub fn transport(&self) -> &T {
        &self.io
    }

    fn note(&mut self, text: &str) {
        if self.io.verbose() {
            self.io.transcript(Direction::Info, text);
        }
    }

    /// Send a command (or a pipelined batch) in one write, logging each line.
    fn send_commands(&mut self, wire: &[u8], stage: Stage) -> Result<(), SmtpError> {
        if self.io.verbose() {
            for line in String::from_utf8_lossy(wire).split_terminator("\r\n") {
                self.io.transcript(Direction::Client, line);
            }
        }
        self.io.send(wire, stage)
    }

    /// Send a line carrying credentials: the transcript shows `redacted`.
    fn send_secret(&mut self, wire: &[u8], shown: &str) -> Result<(), SmtpError> {
        if self.io.verbose() {
            self.io.transcript(Direction::Client, shown);
        }
        self.io.send(wire, Stage::Auth)
    }

    fn read_reply(&mut self, stage: Stage) -> Result<Reply, SmtpError> {
        self.io.start_reply(stage);
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => {
                    if self.io.verbose() {
                        let n = reply.lines.len();
                        for (i, line) in reply.lines.iter().enumerate() {
                            let sep = if i + 1 == n { ' ' } else { '-' };
                            let enhanced = match (&reply.enhanced, i) {
                                (Some(e), 0) => format!("{e} "),
                                _ => String::new(),
                            };
                            let text = format!("{}{sep}{enhanced}{line}", reply.code);
                            self.io.transcript(Direction::Server, &text);
                        }
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(SmtpError::Protocol(e.to_string())),
            }
            let n = match self.io.recv(&mut self.rbuf, stage) {
                Ok(n) => n,
                Err(SmtpError::Timeout(_)) if stage == Stage::DataEnd => {
                    return Err(SmtpError::OutcomeUnknown(
                        "no reply to the end of data before the deadline; the message may have been delivered".into(),
                    ));
                }
                Err(SmtpError::Connect(m)) if stage == Stage::DataEnd => {
                    return Err(SmtpError::OutcomeUnknown(format!(
                        "connection lost after the end of data ({m}); the message may have been delivered"
                    )));
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(if stage == Stage::DataEnd {
                    SmtpError::OutcomeUnknown(
                        "the server closed the connection after the end of data, before replying; \
                         the message may have been delivered"
                            .into(),
                    )
                } else {
                    SmtpError::Connect(format!("the server closed the connection while we waited at {stage}"))
                });
            }
            self.parser.feed(&self.rbuf[..n]);
        }
    }

    fn hello(&mut self, name: &ClientName) -> Result<(), SmtpError> {
        self.send_commands(command::Ehlo(name).to_string().as_bytes(), Stage::Ehlo)?;
        let reply = self.read_reply(Stage::Ehlo)?;
        if reply.code == 250 {
            self.caps = Capabilities::from_ehlo(&reply);
            self.esmtp = true;
            return Ok(());
        }
        if reply.code == 421 || !reply.is_permanent() {
            return Err(SmtpError::Rejected { stage: Stage::Ehlo, reply, recipients: vec![] });
        }
        // RFC 5321 4.1.1.1: a server that does not know EHLO gets HELO.
        self.send_commands(command::Helo(name).to_string().as_bytes(), Stage::Ehlo)?;
        let reply = self.read_reply(Stage::Ehlo)?;
        if reply.code != 250 {
            return Err(SmtpError::Rejected { stage: Stage::Ehlo, reply, recipients: vec![] });
        }
        self.caps = Capabilities::default();
        self.esmtp = false;
        Ok(())
    }

    fn secure(&mut self, cfg: &Config) -> Result<(), SmtpError> {
        match cfg.tls {
            TlsMode::None | TlsMode::Implicit => return Ok(()),
            TlsMode::StartTls | TlsMode::Required => {}
        }
        if !self.caps.starttls {
            if cfg.tls == TlsMode::Required {
                return Err(SmtpError::Tls("the server does not offer STARTTLS and TLS is required".into()));
            }
            self.note("the server does not offer STARTTLS; continuing in plaintext (no AUTH)");
            return Ok(());
        }
        // RFC 3207 / "NO STARTTLS": nothing may be pending before STARTTLS...
        if self.parser.buffered() > 0 {
            return Err(SmtpError::Protocol("unexpected bytes from the server before STARTTLS".into()));
        }
        self.send_commands(command::StartTls.to_string().as_bytes(), Stage::Tls)?;
        let reply = self.read_reply(Stage::Tls)?;
        if reply.code != 220 {
            if cfg.tls == TlsMode::Required || reply.code == 421 {
                return Err(SmtpError::Tls(format!("STARTTLS refused: {reply}")));
            }
            self.note("STARTTLS refused; continuing in plaintext (no AUTH)");
            return Ok(());
        }
        // ...and nothing may follow the 220: it would be read as if it came
        // over TLS (response injection, CVE-2011-0411 style).
        if self.parser.buffered() > 0 {
            return Err(SmtpError::Tls(format!(
                "{} unexpected bytes after the STARTTLS reply (response injection); aborting",
                self.parser.buffered()
            )));
        }
        let protocol = self.io.start_tls()?;
        self.note(&format!("TLS started: {protocol}"));
        // RFC 3207 4.2: forget everything learnt in plaintext.
        self.caps = Capabilities::default();
        self.esmtp = false;
        self.hello(&cfg.client_name)
    }

    fn authenticate(
        &mut self,
        cfg: &Config,
        user: &str,
        secret: impl FnOnce() -> Option<Secret>,
    ) -> Result<(), SmtpError> {
        if !self.io.is_tls() {
            if cfg.tls != TlsMode::None {
                return Err(SmtpError::Tls(
                    "refusing to send credentials over an unencrypted connection (choose --tls none to allow it)"
                        .into(),
                ));
            }
            self.note("WARNING: AUTH over an unencrypted connection (--tls none)");
        }
        if user.contains(['\r', '\n', '\0']) {
            return Err(SmtpError::InvalidMessage("user: contains a line break or NUL".into()));
        }
        let mech = auth::choose(&self.caps.auth, cfg.auth).ok_or_else(|| {
            let offered: Vec<&str> = self.caps.auth.iter().map(|m| m.name()).collect();
            SmtpError::Auth(synthetic(format!(
                "no usable AUTH mechanism; the server offers [{}]",
                offered.join(" ")
            )))
        })?;
        let secret = secret().ok_or_else(|| SmtpError::Auth(synthetic("no password or token configured".into())))?;
        let reply = match mech {
            Mechanism::Login => {
                self.send_commands(b"AUTH LOGIN\r\n", Stage::Auth)?;
                let (u, p) = auth::login_responses(user, &secret);
                let r = self.read_reply(Stage::Auth)?;
                if r.code != 334 {
                    return Err(SmtpError::Auth(r));
                }
                self.send_secret(format!("{u}\r\n").as_bytes(), "<redacted>")?;
                let r = self.read_reply(Stage::Auth)?;
                if r.code != 334 {
                    return Err(SmtpError::Auth(r));
                }
                self.send_secret(format!("{p}\r\n").as_bytes(), "<redacted>")?;
                self.read_reply(Stage::Auth)?
            }
            Mechanism::Plain | Mechanism::XOAuth2 => {
                let ir = if mech == Mechanism::Plain {
                    auth::plain_response(user, &secret)
                } else {
                    auth::xoauth2_response(user, &secret)
                };
                let wire = command::Auth { mechanism: mech.name(), initial: Some(&ir) }.to_string();
                self.send_secret(wire.as_bytes(), &format!("AUTH {} <redacted>", mech.name()))?;
                let mut r = self.read_reply(Stage::Auth)?;
                if r.code == 334 {
                    // XOAUTH2 error details come as a 334 challenge; an empty
                    // response makes the server send the final reply.
                    self.send_commands(b"\r\n", Stage::Auth)?;
                    r = self.read_reply(Stage::Auth)?;
                }
                r
            }
        };
        if reply.code == 235 { Ok(()) } else { Err(SmtpError::Auth(reply)) }
    }

    /// Accept `reply` when `ok` says so; a 4xx/5xx is a rejection at `stage`,
    /// anything else (a 2xx where 354 belongs, a 3xx where 250 does) breaks
    /// the protocol.
    fn expect(
        stage: Stage,
        reply: Reply,
        ok: fn(&Reply) -> bool,
        recipients: &[(Address, Reply)],
    ) -> Result<Reply, SmtpError> {
        if ok(&reply) {
            Ok(reply)
        } else if reply.is_transient() || reply.is_permanent() {
            Err(SmtpError::Rejected { stage, reply, recipients: recipients.to_vec() })
        } else {
            Err(SmtpError::Protocol(format!("unexpected reply at {stage}: {reply}")))
        }
    }

    /// Sort one RCPT reply into accepted or refused.
    fn recipient(
        reply: Reply,
        to: &Address,
        accepted: &mut Vec<Address>,
        rejected: &mut Vec<(Address, Reply)>,
    ) -> Result<(), SmtpError> {
        if reply.is_positive() {
            accepted.push(to.clone());
        } else if reply.code == 421 {
            return Err(SmtpError::Rejected { stage: Stage::RcptTo, reply, recipients: rejected.clone() });
        } else if reply.is_transient() || reply.is_permanent() {
            rejected.push((to.clone(), reply));
        } else {
            return Err(SmtpError::Protocol(format!("unexpected reply to RCPT TO: {reply}")));
        }
        Ok(())
    }

    /// Without pipelining, a reply must be alone: bytes after it are replies
    /// to nothing, and would put every later command one reply out of step.
    fn expect_drained(&self, stage: Stage) -> Result<(), SmtpError> {
        match self.parser.buffered() {
            0 => Ok(()),
            n => Err(SmtpError::Protocol(format!("{n} unexpected bytes after the reply at {stage}"))),
        }
    }

    /// Run one mail transaction. The data comes from `source`, is dot-stuffed
    /// on the way out, and its last piece goes in one write with the
    /// terminator.
    pub fn send(&mut self, msg: &Outgoing<'_>, source: &mut dyn Source) -> Result<Delivery, SmtpError> {
        if msg.smtputf8 && !self.caps.smtputf8 {
            return Err(SmtpError::InvalidMessage(
                "address: a non-ASCII address needs SMTPUTF8, which the server does not offer".into(),
            ));
        }
        if msg.eight_bit && !self.caps.eight_bit_mime {
            return Err(SmtpError::InvalidMessage(
                "message: 8-bit data needs 8BITMIME, which the server does not offer".into(),
            ));
        }
        if let Some(max) = self.caps.size.filter(|&m| m > 0)
            && msg.size > max {
                return Err(SmtpError::InvalidMessage(format!(
                    "message: {} octets exceed the server's SIZE limit of {max}",
                    msg.size
                )));
            }
        let mail = MailFrom {
            from: Some(msg.from),
            size: self.caps.size.map(|_| msg.size),
            body: if msg.eight_bit || msg.smtputf8 && self.caps.eight_bit_mime { Body::EightBitMime } else { Body::SevenBit },
            smtputf8: msg.smtputf8,
        }
        .to_string();
        let mut accepted = Vec::with_capacity(msg.recipients.len());
        let mut rejected = Vec::new();
        let rset = self.dirty;
        self.dirty = true;

        if self.caps.pipelining {
            // RFC 2920: RSET, MAIL, every RCPT and DATA in one write.
            let mut batch = String::with_capacity(64 + 48 * msg.recipients.len());
            if rset {
                batch.push_str("RSET\r\n");
            }
            batch.push_str(&mail);
            for r in msg.recipients {
                batch.push_str(&RcptTo(r).to_string());
            }
            batch.push_str("DATA\r\n");
            self.send_commands(batch.as_bytes(), Stage::MailFrom)?;
            if rset {
                let r = self.read_reply(Stage::Rset)?;
                Self::expect(Stage::Rset, r, Reply::is_positive, &[])?;
            }
            let mail_reply = self.read_reply(Stage::MailFrom)?;
            let mut rcpt_replies = Vec::with_capacity(msg.recipients.len());
            for _ in msg.recipients {
                rcpt_replies.push(self.read_reply(Stage::RcptTo)?);
            }
            let data_reply = self.read_reply(Stage::Data)?;
            if let Err(e) = Self::expect(Stage::MailFrom, mail_reply, Reply::is_positive, &[]) {
                self.abort_data(&data_reply)?;
                return Err(e);
            }
            for (to, reply) in msg.recipients.iter().zip(rcpt_replies) {
                Self::recipient(reply, to, &mut accepted, &mut rejected)?;
            }
            if accepted.is_empty() {
                self.abort_data(&data_reply)?;
                return Err(Self::all_refused(rejected));
            }
            Self::expect(Stage::Data, data_reply, |r| r.code == 354, &rejected)?;
        } else {
            if rset {
                self.send_commands(b"RSET\r\n", Stage::Rset)?;
                let r = self.read_reply(Stage::Rset)?;
                self.expect_drained(Stage::Rset)?;
                Self::expect(Stage::Rset, r, Reply::is_positive, &[])?;
            }
            self.send_commands(mail.as_bytes(), Stage::MailFrom)?;
            let r = self.read_reply(Stage::MailFrom)?;
            self.expect_drained(Stage::MailFrom)?;
            Self::expect(Stage::MailFrom, r, Reply::is_positive, &[])?;
            for to in msg.recipients {
                self.send_commands(RcptTo(to).to_string().as_bytes(), Stage::RcptTo)?;
                let reply = self.read_reply(Stage::RcptTo)?;
                self.expect_drained(Stage::RcptTo)?;
                Self::recipient(reply, to, &mut accepted, &mut rejected)?;
            }
            if accepted.is_empty() {
                return Err(Self::all_refused(rejected));
            }
            self.send_commands(b"DATA\r\n", Stage::Data)?;
            let r = self.read_reply(Stage::Data)?;
            self.expect_drained(Stage::Data)?;
            Self::expect(Stage::Data, r, |r| r.code == 354, &rejected)?;
        }

        if let Err(e) = self.write_data(source) {
            self.broken = true;
            return Err(e);
        }
        let reply = self.read_reply(Stage::DataEnd)?;
        let reply = Self::expect(Stage::DataEnd, reply, Reply::is_positive, &rejected)?;
        self.expect_drained(Stage::DataEnd)?;
        Ok(Delivery { accepted, rejected, reply })
    }

    fn all_refused(mut rejected: Vec<(Address, Reply)>) -> SmtpError {
        let reply = rejected
            .last()
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| synthetic("no recipients".into()));
        rejected.shrink_to_fit();
        SmtpError::Rejected { stage: Stage::RcptTo, reply, recipients: rejected }
    }

    /// After a pipelined DATA that must not carry a message: if the server
    /// still said 354, end the empty data at once (RFC 2920 3.1).
    fn abort_data(&mut self, data_reply: &Reply) -> Result<(), SmtpError> {
        if data_reply.code == 354 {
            self.send_commands(b".\r\n", Stage::DataEnd)?;
            self.read_reply(Stage::DataEnd)?;
        }
        Ok(())
    }

    fn write_data(&mut self, source: &mut dyn Source) -> Result<(), SmtpError> {
        let mut stuffer = DotStuffer::new();
        let mut chunk = Vec::with_capacity(DATA_CHUNK);
        let mut sent: u64 = 0;
        self.wbuf.clear();
        loop {
            chunk.clear();
            let kind = source.next_chunk(&mut chunk)?;
            match kind {
                Chunk::Base64 => stuffer.encode_base64_lines(&chunk, &mut self.wbuf),
                Chunk::Text | Chunk::Last => stuffer.encode(&chunk, &mut self.wbuf),
            }
            sent += chunk.len() as u64;
            if kind == Chunk::Last {
                stuffer.finish(&mut self.wbuf);
                if self.io.verbose() {
                    self.io.transcript(Direction::Client, &format!("<{sent} octets of message data>"));
                    self.io.transcript(Direction::Client, ".");
                }
                // A failure here means the transport did not take all of the
                // last chunk, so the terminator never left: nothing was
                // delivered, and a retry is safe. Only a failure while waiting
                // for the reply to the dot leaves the outcome unknown.
                let r = self.io.send(&self.wbuf, Stage::DataBlock);
                self.wbuf.clear();
                return r;
            }
            if self.wbuf.len() >= DATA_CHUNK {
                self.io.send(&self.wbuf, Stage::DataBlock)?;
                self.wbuf.clear();
            }
        }
    }

    /// Send an already complete message, e.g. from memory.
    pub fn send_bytes(&mut self, msg: &Outgoing<'_>, data: &[u8]) -> Result<Delivery, SmtpError> {
        self.send(msg, &mut SliceSource(Some(data)))
    }

    /// False once the data phase failed part way: the session must be
    /// dropped (closing the connection), never used again or sent QUIT.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// QUIT and close. Errors are ignored: the mail is already sent.
    pub fn quit(mut self) {
        if self.send_commands(command::Quit.to_string().as_bytes(), Stage::Quit).is_ok() {
            let _ = self.read_reply(Stage::Quit);
        }
    }
}

#[cfg(test)]
mod tests;
