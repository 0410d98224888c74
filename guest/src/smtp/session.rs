//! The SMTP client session (RFC 5321 3 and 4.1, RFC 2920 PIPELINING, RFC 3207
//! STARTTLS, RFC 4954 AUTH): greeting, EHLO with HELO fallback, STARTTLS,
//! AUTH, then any number of transactions, and QUIT.
//!
//! The session never touches a socket. It talks to a [`Transport`], which
//! moves bytes and enforces deadlines; tests drive it with scripted bytes.
//!
//! Every command goes out through [`Session::write`], alone
//! ([`Session::command`]: one per turn) or as part of a pipelined group;
//! each is a type from [`super::command`] whose `Display` is the wire bytes.
//! Mail transactions, one message or many, run through
//! [`Session::send_many`] (see `session/batch.rs` for the pipelining state
//! machine of RFC 2920 3.1 and RFC 3030).

use super::auth::{self, Choice, Credentials, MAX_SASL_ROUNDS, Secret};
use super::command::{Auth, AuthCancel, AuthResponse, Body, ClientName, Command, Ehlo, EndOfData, Helo, MailFrom, Quit, RcptTo, Rset, StartTls, Step};
use super::data::{self, DATA_CHUNK, DataPhase, SliceSource, Source};
use super::ehlo::Capabilities;
use super::error::{SmtpError, Stage};
use super::reply::{MAX_KEPT_RCPT_REPLY_BYTES, Reply, ReplyParser};
use crate::mime::address::Address;
use std::fmt::Write as _;

mod batch;
pub use batch::{Batch, Item, MAX_IN_FLIGHT, NUDGE_AFTER_MS};

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
    /// As [`Transport::recv`], but `Ok(None)` when nothing arrives within
    /// `_ms` milliseconds. A transport that cannot tell reads as `recv`
    /// does, and a BDAT batch then never sends a message's RSET early
    /// (see [`Session::receive`]).
    fn recv_within(&mut self, buf: &mut [u8], stage: Stage, _ms: u64) -> Result<Option<usize>, SmtpError> {
        self.recv(buf, stage).map(Some)
    }
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
#[derive(Clone, Copy)]
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

/// The result of one mail transaction: the server took the message for
/// these recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// Accepted recipients.
    pub accepted: Vec<Address>,
    /// Refused recipients with the server's replies.
    pub rejected: Vec<(Address, Reply)>,
    /// The reply to the end of the data.
    pub reply: Reply,
}

/// An open SMTP session.
pub struct Session<T: Transport> {
    io: T,
    parser: ReplyParser,
    rbuf: Vec<u8>,
    caps: Capabilities,
    /// A transaction may be open: one began and its end of data was not
    /// answered (or it used BDAT, whose failures may leave it open), so the
    /// next one starts with RSET.
    dirty: bool,
    /// The data phase failed part way (the source failed, or a write): the
    /// server is still inside DATA and will read anything we send as
    /// message text, so the connection must be closed, not reused.
    broken: bool,
    wbuf: Vec<u8>,
    /// Commands and data written but not yet handed to the transport: BDAT
    /// messages written ahead coalesce here (see [`batch`]), so that a
    /// refill of the pipeline is one write and no small write waits behind
    /// another for the peer's ACK (Nagle). Sent before any wait for a reply.
    queued: Vec<u8>,
    /// The stage the first queued octets count for.
    queued_stage: Stage,
    /// Reading a BDAT batch's replies: a read that waits, with nothing to
    /// write, sends the next message's RSET early ([`Session::receive`]).
    nudging: bool,
    /// RSETs sent early since the newest message of the batch was written
    /// (one at most): their replies come after that message's.
    nudged: usize,
    /// Replies to RSETs that come before any other reply now, which
    /// [`Session::read_reply`] passes over.
    owed: usize,
}

fn synthetic(text: String) -> Reply {
    Reply { code: 0, enhanced: None, lines: vec![text] }
}

/// What one reply means for the command of the plan it answers: the one
/// table both [`Session::exchange`] (when to stop) and [`evaluate`] (what
/// happened) read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The command succeeded.
    Done,
    /// This recipient is refused; the transaction goes on without it.
    Refused,
    /// The transaction ends here.
    Fails,
}

fn judge(step: &Step<'_>, reply: &Reply) -> Verdict {
    let ok = match step {
        Step::Data(_) => reply.code == 354,
        Step::Rset(_) | Step::MailFrom(_) | Step::RcptTo(_) => reply.is_positive(),
    };
    if ok {
        Verdict::Done
    } else if matches!(step, Step::RcptTo(_)) && reply.code != 421 && (reply.is_transient() || reply.is_permanent()) {
        Verdict::Refused
    } else {
        Verdict::Fails
    }
}

/// The error for a reply that ends the transaction at `stage`: a 4xx/5xx is
/// a rejection, anything else (a 2xx where 354 belongs, a 3xx where 250
/// does) breaks the protocol.
fn failure(stage: Stage, reply: Reply, rejected: Vec<(Address, Reply)>) -> SmtpError {
    if reply.is_transient() || reply.is_permanent() {
        SmtpError::Rejected { stage, reply, recipients: rejected }
    } else {
        SmtpError::Protocol(format!("unexpected reply at {stage}: {reply}"))
    }
}

/// No recipient was accepted: the transaction ends before its data, with the
/// last refusal.
fn all_refused(mut rejected: Vec<(Address, Reply)>) -> SmtpError {
    let reply = rejected.last().map(|(_, r)| r.clone()).unwrap_or_else(|| synthetic("no recipients".into()));
    rejected.shrink_to_fit();
    SmtpError::Rejected { stage: Stage::RcptTo, reply, recipients: rejected }
}

/// The recipients the server accepted and refused.
type Recipients = (Vec<Address>, Vec<(Address, Reply)>);

/// The recipients a plan's replies accepted and refused, or why the
/// transaction ends before its data. `replies` may stop short of the plan
/// (one command per turn stops at the first failure).
fn evaluate(plan: &[Step<'_>], replies: Vec<Reply>) -> Result<Recipients, SmtpError> {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for (step, reply) in plan.iter().zip(replies) {
        if matches!(step, Step::Data(_)) && accepted.is_empty() {
            return Err(all_refused(rejected));
        }
        match (judge(step, &reply), step) {
            (Verdict::Done, Step::RcptTo(RcptTo(to))) => accepted.push((*to).clone()),
            (Verdict::Refused, Step::RcptTo(RcptTo(to))) => rejected.push(((*to).clone(), reply)),
            (Verdict::Done | Verdict::Refused, _) => {}
            (Verdict::Fails, _) => return Err(failure(step.stage(), reply, rejected)),
        }
    }
    if accepted.is_empty() {
        return Err(all_refused(rejected));
    }
    Ok((accepted, rejected))
}

/// After the final dot, a lost connection, a failed TLS session, a reply
/// that does not parse or a missed deadline leaves the outcome unknown: the
/// server may have taken the message.
fn after_dot(e: SmtpError) -> SmtpError {
    match e {
        SmtpError::Timeout(_) => SmtpError::OutcomeUnknown(
            "no reply to the end of data before the deadline; the message may have been delivered".into(),
        ),
        SmtpError::Connect(m) => SmtpError::OutcomeUnknown(format!(
            "connection lost after the end of data ({m}); the message may have been delivered"
        )),
        SmtpError::Tls(m) => SmtpError::OutcomeUnknown(format!(
            "the TLS session failed after the end of data ({m}); the message may have been delivered"
        )),
        SmtpError::Protocol(m) => SmtpError::OutcomeUnknown(format!(
            "a broken reply after the end of data ({m}); the message may have been delivered"
        )),
        e => e,
    }
}

/// The wire bytes of `commands`, one after the other.
fn encode<C: Command>(commands: &[C]) -> String {
    let mut wire = String::with_capacity(48 * commands.len());
    for c in commands {
        let _ = write!(wire, "{c}");
    }
    wire
}

/// A reply's lines as the server sent them: `code-text`, the last `code text`.
fn reply_lines(reply: &Reply) -> impl Iterator<Item = String> + '_ {
    let n = reply.lines.len();
    reply.lines.iter().enumerate().map(move |(i, line)| {
        let sep = if i + 1 == n { ' ' } else { '-' };
        match (&reply.enhanced, i) {
            (Some(e), 0) => format!("{}{sep}{e} {line}", reply.code),
            _ => format!("{}{sep}{line}", reply.code),
        }
    })
}

impl<T: Transport> Session<T> {
    /// Greet, EHLO, secure and authenticate. `secret` is asked for only when
    /// AUTH actually happens. When this fails while the connection still
    /// works (a refused AUTH, a `554` greeting), the session says `QUIT`.
    pub fn open(io: T, cfg: &Config, secret: impl FnOnce() -> Option<Secret>) -> Result<Self, SmtpError> {
        let mut s = Self {
            io,
            parser: ReplyParser::new(),
            rbuf: vec![0; READ_CHUNK],
            caps: Capabilities::default(),
            dirty: false,
            broken: false,
            wbuf: Vec::with_capacity(DATA_CHUNK + 1024),
            queued: Vec::new(),
            queued_stage: Stage::MailFrom,
            nudging: false,
            nudged: 0,
            owed: 0,
        };
        match s.start(cfg, secret) {
            Ok(()) => Ok(s),
            Err(e) => {
                if !e.kills_session() {
                    s.quit();
                }
                Err(e)
            }
        }
    }

    fn start(&mut self, cfg: &Config, secret: impl FnOnce() -> Option<Secret>) -> Result<(), SmtpError> {
        self.greeting()?;
        self.hello(&cfg.client_name)?;
        self.secure(cfg)?;
        if let Some(user) = &cfg.user {
            self.authenticate(cfg, user, secret)?;
        }
        Ok(())
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

    /// Show `commands` in the transcript (redacted when they carry
    /// credentials), as they go out.
    fn show<C: Command>(&mut self, commands: &[C]) {
        if !self.io.verbose() {
            return;
        }
        for c in commands {
            match c.redacted() {
                Some(shown) => self.io.transcript(Direction::Client, &shown),
                None => {
                    for line in c.to_string().split_terminator("\r\n") {
                        self.io.transcript(Direction::Client, line);
                    }
                }
            }
        }
    }

    /// Send `commands` in one write, each shown in the transcript. The write
    /// counts for the first one's stage.
    fn write<C: Command>(&mut self, commands: &[C]) -> Result<(), SmtpError> {
        let Some(first) = commands.first() else {
            return Ok(());
        };
        let stage = first.stage();
        self.show(commands);
        self.flush_queued()?;
        self.io.send(encode(commands).as_bytes(), stage)
    }

    /// Send one command and read its reply.
    fn command<C: Command>(&mut self, c: C) -> Result<Reply, SmtpError> {
        let stage = c.stage();
        self.write(std::slice::from_ref(&c))?;
        self.read_reply(stage)
    }

    /// Add `bytes` to what goes out with the next flush.
    fn queue(&mut self, bytes: &[u8], stage: Stage) {
        if self.queued.is_empty() {
            self.queued_stage = stage;
        }
        self.queued.extend_from_slice(bytes);
    }

    /// Hand the queued octets to the transport, in one write. When that
    /// fails, they are dropped: how much of them left is unknown.
    fn flush_queued(&mut self) -> Result<(), SmtpError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        let sent = self.io.send(&queued, self.queued_stage);
        self.queued = queued;
        self.queued.clear();
        sent
    }

    /// Read the next complete reply, waiting at `stage`'s deadline. What is
    /// queued goes out first, before the wait.
    fn read_reply(&mut self, stage: Stage) -> Result<Reply, SmtpError> {
        self.io.start_reply(stage);
        loop {
            if let Some(reply) = self.parser.next_reply().map_err(|e| SmtpError::Protocol(e.to_string()))? {
                if self.io.verbose() {
                    for line in reply_lines(&reply) {
                        self.io.transcript(Direction::Server, &line);
                    }
                }
                if self.owed > 0 {
                    // An RSET sent early. A 421 there ends the session: it
                    // stands for the reply awaited, which will not come.
                    self.owed -= 1;
                    if reply.code == 421 {
                        self.owed = 0;
                        return Ok(reply);
                    }
                    if !reply.is_positive() {
                        self.note(&format!("the early RSET was answered {}", reply.code));
                        // A transaction may be open still: unless a later
                        // RSET is on its way, the next message not yet
                        // written starts with RSET again.
                        if self.owed == 0 && self.nudged == 0 {
                            self.dirty = true;
                        }
                    }
                    continue;
                }
                if stage == Stage::RcptTo {
                    return Ok(reply.clipped(MAX_KEPT_RCPT_REPLY_BYTES));
                }
                return Ok(reply);
            }
            let flushed = !self.queued.is_empty();
            self.flush_queued()?;
            let n = self.receive(stage, flushed)?;
            if n == 0 {
                return Err(SmtpError::Connect(format!("the server closed the connection while we waited at {stage}")));
            }
            self.parser.feed(&self.rbuf[..n]);
        }
    }

    /// Read at least one byte. While a BDAT batch's replies are read
    /// (`nudging`), a read that has waited [`NUDGE_AFTER_MS`] with nothing
    /// just `flushed` sends the RSET that the next message would start
    /// with, then goes on waiting. Its octets carry the ACK of the replies
    /// read so far: a server whose next reply waits for that ACK (Nagle,
    /// RFC 896: Postfix writes a batch's replies in several small writes)
    /// sends it then instead of after our delayed ACK, up to 40 ms later.
    /// RSET may stand anywhere in a pipelined group (RFC 2920 3.1), and
    /// every message written before it ended (`BDAT LAST`). It is sent only
    /// while one is owed (`dirty`), so there is still one RSET between two
    /// messages, as before: Exim lets one through after each message
    /// (`smtp_accept_max_nonmail` counts the others, 10 a connection) and
    /// Postfix clears its junk-command count with each message it accepts.
    fn receive(&mut self, stage: Stage, flushed: bool) -> Result<usize, SmtpError> {
        if self.nudging && !flushed && self.dirty {
            if let Some(n) = self.io.recv_within(&mut self.rbuf, stage, NUDGE_AFTER_MS)? {
                return Ok(n);
            }
            // Failing, the write fails the read: how much of it left is
            // unknown, and so is which reply comes next.
            self.write(&[Rset])?;
            self.dirty = false;
            self.nudged += 1;
        }
        self.io.recv(&mut self.rbuf, stage)
    }

    /// Without pipelining, a reply must be alone: bytes after it are replies
    /// to nothing, and would put every later command one reply out of step.
    fn expect_drained(&self, stage: Stage) -> Result<(), SmtpError> {
        match self.parser.buffered() {
            0 => Ok(()),
            n => Err(SmtpError::Protocol(format!("{n} unexpected bytes after the reply at {stage}"))),
        }
    }

    fn greeting(&mut self) -> Result<(), SmtpError> {
        let reply = self.read_reply(Stage::Greeting)?;
        match reply.code {
            220 => Ok(()),
            _ if reply.is_transient() || reply.is_permanent() => {
                Err(SmtpError::Rejected { stage: Stage::Greeting, reply, recipients: vec![] })
            }
            _ => Err(SmtpError::Protocol(format!("unexpected greeting {reply}"))),
        }
    }

    fn hello(&mut self, name: &ClientName) -> Result<(), SmtpError> {
        let reply = self.command(Ehlo(name))?;
        if reply.code == 250 {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if reply.code == 421 || !reply.is_permanent() {
            return Err(SmtpError::Rejected { stage: Stage::Ehlo, reply, recipients: vec![] });
        }
        // RFC 5321 4.1.1.1: a server that does not know EHLO gets HELO.
        let reply = self.command(Helo(name))?;
        if reply.code != 250 {
            return Err(SmtpError::Rejected { stage: Stage::Ehlo, reply, recipients: vec![] });
        }
        self.caps = Capabilities::default();
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
        let reply = self.command(StartTls)?;
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
        self.hello(&cfg.client_name)
    }

    /// AUTH: the mechanism's initial response on the AUTH line, then one
    /// step per `334` challenge, at most [`MAX_SASL_ROUNDS`].
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
        let creds = Credentials { user, secret: &secret };
        let initial = mech.initial_response(&creds);
        let mut reply = self.command(Auth { mechanism: mech.name(), initial: initial.as_deref() })?;
        for round in 0..MAX_SASL_ROUNDS {
            if reply.code != 334 {
                break;
            }
            let challenge = reply.lines.first().map_or("", String::as_str);
            let Some(response) = mech.step(round, challenge, &creds) else {
                break;
            };
            reply = self.command(AuthResponse(&response))?;
        }
        match reply.code {
            235 => Ok(()),
            // A challenge the mechanism cannot answer (or one too many): RFC
            // 4954 4, `*` cancels and the server answers 501, so the
            // connection is ready for QUIT.
            334 => {
                self.command(AuthCancel)?;
                Err(SmtpError::Auth(reply))
            }
            _ => Err(SmtpError::Auth(reply)),
        }
    }

    /// Refuse, before anything is sent, what this server cannot take.
    fn check_fits(&self, msg: &Outgoing<'_>) -> Result<(), SmtpError> {
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
            && msg.size > max
        {
            return Err(SmtpError::InvalidMessage(format!(
                "message: {} octets exceed the server's SIZE limit of {max}",
                msg.size
            )));
        }
        Ok(())
    }

    /// The commands of one transaction: `[RSET?, MAIL FROM, RCPT TO..., DATA]`.
    fn plan<'a>(&self, msg: &Outgoing<'a>, rset: bool, phase: DataPhase) -> Vec<Step<'a>> {
        let mut plan = Vec::with_capacity(msg.recipients.len() + 3);
        if rset {
            plan.push(Step::Rset(Rset));
        }
        plan.push(Step::MailFrom(MailFrom {
            from: Some(msg.from),
            size: self.caps.size.map(|_| msg.size),
            body: if msg.eight_bit || msg.smtputf8 && self.caps.eight_bit_mime {
                Body::EightBitMime
            } else {
                Body::SevenBit
            },
            smtputf8: msg.smtputf8,
        }));
        plan.extend(msg.recipients.iter().map(|to| Step::RcptTo(RcptTo(to))));
        plan.extend(phase.opener().map(Step::Data));
        plan
    }

    /// Send `plan` one command per turn and collect its replies, each reply
    /// alone, stopping after the first that ends the transaction, and before
    /// DATA when no recipient was accepted.
    fn exchange(&mut self, plan: &[Step<'_>]) -> Result<Vec<Reply>, SmtpError> {
        let mut replies = Vec::with_capacity(plan.len());
        for step in plan {
            if matches!(step, Step::Data(_))
                && !plan.iter().zip(&replies).any(|(s, r)| matches!(s, Step::RcptTo(_)) && judge(s, r) == Verdict::Done)
            {
                break;
            }
            self.write(std::slice::from_ref(step))?;
            let reply = self.read_reply(step.stage())?;
            self.expect_drained(step.stage())?;
            let verdict = judge(step, &reply);
            replies.push(reply);
            if verdict == Verdict::Fails {
                break;
            }
        }
        Ok(replies)
    }

    /// Run one mail transaction, one command per turn (a server without
    /// PIPELINING): the message goes with DATA, dot-stuffed.
    fn send_one(&mut self, msg: &Outgoing<'_>, source: &mut dyn Source) -> Result<TransactionResult, SmtpError> {
        let plan = self.plan(msg, self.dirty, DataPhase::DotStuffed);
        self.dirty = true;
        let replies = self.exchange(&plan)?;
        let (accepted, rejected) = evaluate(&plan, replies)?;
        if let Err(e) = data::dot_stuffed(&mut self.io, &mut self.wbuf, source, &[]) {
            self.broken = true;
            return Err(e);
        }
        let reply = self.read_reply(Stage::DataEnd).map_err(after_dot)?;
        // Whatever it says, the transaction is over (RFC 5321 4.1.1.4).
        self.dirty = false;
        if !reply.is_positive() {
            return Err(failure(Stage::DataEnd, reply, rejected));
        }
        self.expect_drained(Stage::DataEnd)?;
        Ok(TransactionResult { accepted, rejected, reply })
    }

    /// Run one mail transaction: [`Session::send_many`] with one message.
    pub fn send(&mut self, msg: &Outgoing<'_>, source: &mut dyn Source) -> Result<TransactionResult, SmtpError> {
        let mut batch = self.send_many(&mut [Item { msg: *msg, source }]);
        batch.results.pop().unwrap_or_else(|| Err(SmtpError::Protocol("a batch of one gave no result".into())))
    }

    /// End an empty data at once after a `354` (RFC 2920 3.1).
    fn abort_data(&mut self) -> Result<(), SmtpError> {
        self.command(EndOfData).map(drop)
    }

    /// Send an already complete message, e.g. from memory.
    pub fn send_bytes(&mut self, msg: &Outgoing<'_>, data: &[u8]) -> Result<TransactionResult, SmtpError> {
        self.send(msg, &mut SliceSource(Some(data)))
    }

    /// False once the data phase failed part way: the session must be
    /// dropped (closing the connection), never used again or sent QUIT.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// QUIT and close. Errors are ignored: the mail is already sent.
    pub fn quit(mut self) {
        let _ = self.command(Quit);
    }
}

#[cfg(test)]
mod tests;
