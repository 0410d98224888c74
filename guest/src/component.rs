//! The component's exports (`wasmail:mail/sender`, `wasmail:mail/transport`):
//! converts WIT values to the pure MIME and SMTP types (RFC 5322 / RFC 5321),
//! keeps one SMTP session open across sends, and streams attachment files
//! the host opens through `wasmail:mail/blobs`.

use crate::bindings::exports::wasmail::mail::sender::Guest as SenderGuest;
use crate::bindings::exports::wasmail::mail::transport::{
    self as wt, AuthMechanism, Envelope as WitEnvelope, Guest as TransportGuest, Relay, Rendered as WitRendered,
    TlsMode as WitTlsMode,
};
use crate::bindings::wasi::clocks::{monotonic_clock, wall_clock};
use crate::bindings::wasmail::mail::transcript::{self, Direction};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::bindings::wasi::random::random;
use crate::bindings::wasmail::mail::types as wit;
use crate::bindings::wasmail::mail::{blobs, credentials, limits};
use crate::mime::address::Address;
use crate::mime::encode::{BASE64_LINE_BYTES, base64_lines};
use crate::mime::{self, Attachment, BuildContext, Content, Draft, Priority, RawMailbox, Rendered, Segment};
use crate::net::{Net, Timeouts};
use crate::smtp::auth::{Choice, Secret};
use crate::smtp::command::ClientName;
use crate::smtp::auth::Mechanism;
use crate::smtp::data::{Chunk, Source};
use crate::smtp::session::{Config, Outgoing, Session, TlsMode, TransactionResult};
use crate::smtp::{Reply, SmtpError, Stage};
use std::cell::RefCell;

/// The largest message the mailer assembles whole in memory: for the outbox
/// (`render`) and for the dead-letter folder (`deliver`). Larger messages
/// (huge streamed attachments) are only ever streamed to a relay; a kept copy
/// is skipped (the caller still has the files) and the outbox refuses them.
const MAX_IN_MEMORY_BYTES: u64 = 64 << 20;

/// Raw bytes read from an attachment stream per base64 chunk: a whole number
/// of 57-byte lines, about 56 KiB.
const STREAM_CHUNK: usize = BASE64_LINE_BYTES * 1024;

struct Settings {
    host: String,
    addresses: Vec<String>,
    port: u16,
    config: Config,
    timeouts: Timeouts,
    verbose: bool,
}

#[derive(Default)]
struct State {
    settings: Option<Settings>,
    session: Option<Session<Net>>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Mailer;

crate::bindings::export!(Mailer with_types_in crate::bindings);

fn invalid(e: impl std::fmt::Display) -> wit::SendError {
    wit::SendError::InvalidMessage(e.to_string())
}

fn wit_reply(r: &Reply) -> wit::Reply {
    wit::Reply { code: r.code, enhanced: r.enhanced.clone(), text: r.text() }
}

fn wit_stage(s: Stage) -> wit::Stage {
    match s {
        Stage::Connect => wit::Stage::Connect,
        Stage::Greeting => wit::Stage::Greeting,
        Stage::Ehlo => wit::Stage::Ehlo,
        Stage::Tls => wit::Stage::Tls,
        Stage::Auth => wit::Stage::Auth,
        Stage::MailFrom => wit::Stage::MailFrom,
        Stage::RcptTo => wit::Stage::RcptTo,
        Stage::Data => wit::Stage::Data,
        Stage::DataBlock => wit::Stage::DataBlock,
        Stage::DataEnd => wit::Stage::DataEnd,
        Stage::Rset => wit::Stage::Rset,
        Stage::Quit => wit::Stage::Quit,
    }
}

fn failures(list: &[(Address, Reply)]) -> Vec<wit::RecipientFailure> {
    list.iter().map(|(a, r)| wit::RecipientFailure { address: a.to_string(), reply: wit_reply(r) }).collect()
}

impl From<SmtpError> for wit::SendError {
    fn from(e: SmtpError) -> Self {
        match e {
            SmtpError::InvalidMessage(m) => Self::InvalidMessage(m),
            SmtpError::Connect(m) => Self::Connect(m),
            SmtpError::Tls(m) => Self::Tls(m),
            SmtpError::Auth(r) => Self::Auth(wit_reply(&r)),
            SmtpError::Rejected { stage, reply, recipients } => Self::Rejected(wit::Rejection {
                stage: wit_stage(stage),
                transient: reply.is_transient(),
                reply: wit_reply(&reply),
                recipients: failures(&recipients),
            }),
            SmtpError::Timeout(s) => Self::Timeout(wit_stage(s)),
            SmtpError::Protocol(m) => Self::Protocol(m),
            SmtpError::OutcomeUnknown(m) => Self::OutcomeUnknown(m),
        }
    }
}

fn raw_mailbox(m: wit::Mailbox) -> RawMailbox {
    RawMailbox { name: m.name, address: m.address }
}

/// Attachment files, indexed by `Content::Stream`: their paths and the
/// lengths they had when measured. A file is opened only when its part is
/// streamed, so a message holds at most one file handle at a time.
#[derive(Default)]
struct Streams {
    paths: Vec<String>,
    lens: Vec<u64>,
}

impl Streams {
    fn new() -> Self {
        Self::default()
    }

    /// Open file `i` for streaming; it must still have the length it was
    /// measured with.
    fn open(&self, i: usize) -> Result<InputStream, SmtpError> {
        let (Some(path), Some(&want)) = (self.paths.get(i), self.lens.get(i)) else {
            return Err(SmtpError::InvalidMessage("attachment stream missing".into()));
        };
        let (len, stream) =
            blobs::open(path).map_err(|e| SmtpError::InvalidMessage(format!("attachment {path}: {e}")))?;
        if len != want {
            return Err(SmtpError::InvalidMessage(format!(
                "attachment {path}: it changed size from {want} to {len} octets while the message was being made"
            )));
        }
        Ok(stream)
    }
}

fn draft(msg: wit::Message, streams: &mut Streams) -> Result<Draft, wit::SendError> {
    // Counted before any file is opened, so a message cannot hold the host's
    // file handles by the thousand.
    if msg.attachments.len() > mime::MAX_ATTACHMENTS {
        return Err(invalid(format!("attachments: {} is more than {}", msg.attachments.len(), mime::MAX_ATTACHMENTS)));
    }
    let mut attachments = Vec::with_capacity(msg.attachments.len());
    for (i, a) in msg.attachments.into_iter().enumerate() {
        let content = match a.content {
            wit::Content::Bytes(b) => Content::Bytes(b),
            wit::Content::File(path) => {
                // Measured now, opened again when streamed.
                let (len, _stream) = blobs::open(&path)
                    .map_err(|e| invalid(format!("attachments[{i}].content: {path}: {e}")))?;
                streams.paths.push(path);
                streams.lens.push(len);
                Content::Stream { index: streams.paths.len() - 1, len }
            }
        };
        attachments.push(Attachment { filename: a.filename, content_type: a.content_type, content, content_id: a.content_id });
    }
    Ok(Draft {
        from: msg.from.map(raw_mailbox),
        reply_to: msg.reply_to.map(raw_mailbox),
        to: msg.to.into_iter().map(raw_mailbox).collect(),
        cc: msg.cc.into_iter().map(raw_mailbox).collect(),
        bcc: msg.bcc.into_iter().map(raw_mailbox).collect(),
        subject: msg.subject,
        text: msg.text,
        html: msg.html,
        attachments,
        priority: match msg.priority {
            wit::Priority::Highest => Priority::Highest,
            wit::Priority::High => Priority::High,
            wit::Priority::Normal => Priority::Normal,
            wit::Priority::Low => Priority::Low,
            wit::Priority::Lowest => Priority::Lowest,
        },
        headers: msg.headers,
    })
}

fn build(msg: wit::Message, streams: &mut Streams) -> Result<Rendered, wit::SendError> {
    let draft = draft(msg, streams)?;
    let now = wall_clock::now();
    let ctx = BuildContext { unix_time: now.seconds, random: random::get_random_u64() };
    let rendered = draft.build(&ctx).map_err(invalid)?;
    if let Some(max) = limits::max_message_bytes() {
        let size = rendered.size();
        if size > max {
            return Err(wit::SendError::PolicyDenied(format!(
                "max_message_bytes: the message is {size} octets, the limit is {max}"
            )));
        }
    }
    Ok(rendered)
}

/// Feeds a rendered message to the session, base64-encoding attachment
/// streams chunk by chunk so a large file is never held whole.
struct SegmentSource<'a> {
    segments: &'a [Segment],
    streams: &'a Streams,
    next: usize,
    /// The file of the current stream segment, while it is read.
    current: Option<InputStream>,
    /// Bytes left in the current stream segment.
    left: u64,
    carry: Vec<u8>,
    /// Attachment bytes base64-encoded so far, and the time spent on it.
    encoded: u64,
    encode_ns: u64,
}

impl<'a> SegmentSource<'a> {
    fn new(segments: &'a [Segment], streams: &'a Streams) -> Self {
        Self { segments, streams, next: 0, current: None, left: 0, carry: Vec::with_capacity(STREAM_CHUNK), encoded: 0, encode_ns: 0 }
    }
}

impl Source for SegmentSource<'_> {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        loop {
            if self.left > 0 {
                if self.current.is_none() {
                    let Some(Segment::Base64Stream { index, .. }) = self.segments.get(self.next - 1) else {
                        return Err(SmtpError::InvalidMessage("attachment stream out of order".into()));
                    };
                    self.current = Some(self.streams.open(*index)?);
                }
                let Some(stream) = self.current.as_ref() else {
                    return Err(SmtpError::InvalidMessage("attachment stream missing".into()));
                };
                // `left` may pass 4 GiB: compare as u64 before narrowing.
                let want = (STREAM_CHUNK - self.carry.len()) as u64;
                let want = want.min(self.left);
                match stream.blocking_read(want) {
                    Ok(data) => {
                        self.left = self.left.saturating_sub(data.len() as u64);
                        self.carry.extend_from_slice(&data);
                    }
                    Err(StreamError::Closed) => {
                        return Err(SmtpError::InvalidMessage(format!(
                            "attachment file ended {} bytes early (it changed while being sent)",
                            self.left
                        )));
                    }
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(SmtpError::InvalidMessage(format!("attachment read failed: {}", e.to_debug_string())));
                    }
                }
                if self.carry.len() == STREAM_CHUNK || self.left == 0 {
                    let t = monotonic_clock::now();
                    base64_lines(&self.carry, out);
                    self.encode_ns += monotonic_clock::now().saturating_sub(t);
                    self.encoded += self.carry.len() as u64;
                    self.carry.clear();
                    if self.left == 0 {
                        self.current = None;
                    }
                    return Ok(Chunk::Base64);
                }
                continue;
            }
            let Some(seg) = self.segments.get(self.next) else {
                return Ok(Chunk::Last);
            };
            self.next += 1;
            match seg {
                Segment::Bytes(b) => {
                    out.extend_from_slice(b);
                    return Ok(if self.next < self.segments.len() { Chunk::Text } else { Chunk::Last });
                }
                Segment::Base64Stream { len, .. } => self.left = *len,
            }
        }
    }
}

fn receipt(message_id: String, size: u64, d: TransactionResult) -> wit::Receipt {
    wit::Receipt {
        message_id,
        accepted: d.accepted.iter().map(ToString::to_string).collect(),
        rejected: failures(&d.rejected),
        size,
        reply: wit_reply(&d.reply),
    }
}

impl State {
    fn session(&mut self) -> Result<&mut Session<Net>, SmtpError> {
        let Some(s) = &self.settings else {
            return Err(SmtpError::Connect("no relay configured".into()));
        };
        if self.session.is_none() {
            let implicit = s.config.tls == TlsMode::Implicit;
            let net = Net::connect(&s.host, &s.addresses, s.port, implicit, s.timeouts, s.verbose)?;
            let session = Session::open(net, &s.config, || credentials::secret().map(Secret::new))?;
            self.session = Some(session);
        }
        self.session.as_mut().ok_or_else(|| SmtpError::Connect("no session".into()))
    }

    /// Run a transaction, reconnecting once if a kept-open session turns out
    /// to have been closed by the server before anything was accepted.
    fn transact(&mut self, out: &Outgoing<'_>, rendered_segments: &[Segment], streams: &Streams) -> Result<TransactionResult, SmtpError> {
        let reused = self.session.is_some();
        let mut source = SegmentSource::new(rendered_segments, streams);
        let result = self.session().and_then(|s| s.send(out, &mut source));
        let result = match result {
            Err(SmtpError::Connect(_)) if reused && source.encoded == 0 => {
                self.session = None;
                source = SegmentSource::new(rendered_segments, streams);
                self.session().and_then(|s| s.send(out, &mut source))
            }
            r => r,
        };
        if source.encoded > 0 && self.settings.as_ref().is_some_and(|s| s.verbose) {
            let secs = source.encode_ns as f64 / 1e9;
            let mib = source.encoded as f64 / f64::from(1 << 20);
            transcript::line(
                Direction::Info,
                &format!("attachments: {mib:.1} MiB base64-encoded in the mailer in {:.3} s ({:.0} MiB/s)", secs, mib / secs.max(1e-9)),
            );
        }
        if let Err(e) = &result
            && (e.kills_session() || self.session.as_ref().is_some_and(|s| !s.is_usable()))
        {
            self.session = None;
        }
        result
    }
}

/// Build and send; on failure, the rendered message and its streams too.
fn send_rendered(msg: wit::Message) -> Result<wit::Receipt, (wit::SendError, Option<(Rendered, Streams)>)> {
    let mut streams = Streams::new();
    let r = build(msg, &mut streams).map_err(|e| (e, None))?;
    let size = r.size();
    let out = Outgoing {
        from: &r.envelope.from,
        recipients: &r.envelope.recipients,
        size,
        eight_bit: r.eight_bit(),
        smtputf8: r.smtputf8,
    };
    match STATE.with_borrow_mut(|st| st.transact(&out, &r.segments, &streams)) {
        Ok(delivery) => Ok(receipt(r.message_id, size, delivery)),
        Err(e) => Err((e.into(), Some((r, streams)))),
    }
}

/// True when a retry may succeed, or the outcome is unknown: worth keeping.
fn worth_keeping(e: &wit::SendError) -> bool {
    match e {
        wit::SendError::Connect(_) | wit::SendError::Timeout(_) | wit::SendError::OutcomeUnknown(_) => true,
        wit::SendError::Rejected(r) => r.transient,
        wit::SendError::Auth(r) => (400..500).contains(&r.code),
        _ => false,
    }
}

fn wit_rendered(r: &Rendered, bytes: Vec<u8>) -> WitRendered {
    WitRendered {
        message_id: r.message_id.clone(),
        envelope: WitEnvelope {
            from: r.envelope.from.to_string(),
            recipients: r.envelope.recipients.iter().map(ToString::to_string).collect(),
        },
        bytes,
    }
}

impl SenderGuest for Mailer {
    fn send(msg: wit::Message) -> Result<wit::Receipt, wit::SendError> {
        send_rendered(msg).map_err(|(e, _)| e)
    }
}

fn expand(r: &Rendered, streams: &Streams) -> Result<Vec<u8>, SmtpError> {
    let mut bytes = Vec::with_capacity(r.size() as usize);
    let mut src = SegmentSource::new(&r.segments, streams);
    while src.next_chunk(&mut bytes)? != Chunk::Last {}
    Ok(bytes)
}

impl TransportGuest for Mailer {
    fn configure(relay: Relay) -> Result<(), String> {
        let client_name = ClientName::new(&relay.ehlo).map_err(|e| format!("ehlo: {e}"))?;
        if relay.host.is_empty() || relay.host.contains(|c: char| c.is_control() || c == ' ') {
            return Err("host: must be a host name or IP address".into());
        }
        if let Some(user) = &relay.user {
            if user.contains(|c: char| c.is_control()) {
                return Err("user: contains a control character".into());
            }
        }
        let t = relay.timeouts;
        let ms = |v: u32| u64::from(v.max(1));
        let settings = Settings {
            host: relay.host,
            addresses: relay.addresses,
            port: relay.port,
            config: Config {
                client_name,
                tls: match relay.tls {
                    WitTlsMode::None => TlsMode::None,
                    WitTlsMode::Starttls => TlsMode::StartTls,
                    WitTlsMode::Required => TlsMode::Required,
                    WitTlsMode::Implicit => TlsMode::Implicit,
                },
                user: relay.user,
                auth: match relay.auth {
                    AuthMechanism::Auto => Choice::Auto,
                    AuthMechanism::Plain => Choice::Exactly(Mechanism::Plain),
                    AuthMechanism::Login => Choice::Exactly(Mechanism::Login),
                    AuthMechanism::Xoauth2 => Choice::Exactly(Mechanism::XOAuth2),
                },
            },
            timeouts: Timeouts {
                connect: ms(t.connect_ms),
                greeting: ms(t.greeting_ms),
                command: ms(t.command_ms),
                data_init: ms(t.data_init_ms),
                data_block: ms(t.data_block_ms),
                data_end: ms(t.data_end_ms),
                reply_cap: ms(t.reply_cap_ms),
            },
            verbose: relay.verbose,
        };
        STATE.with_borrow_mut(|st| {
            if let Some(s) = st.session.take() {
                s.quit();
            }
            st.settings = Some(settings);
        });
        Ok(())
    }

    fn render(msg: wit::Message) -> Result<WitRendered, wit::SendError> {
        let mut streams = Streams::new();
        let r = build(msg, &mut streams)?;
        if r.size() > MAX_IN_MEMORY_BYTES {
            return Err(invalid(format!(
                "message: {} octets is too large for the outbox (at most {MAX_IN_MEMORY_BYTES}); send it to a relay",
                r.size()
            )));
        }
        let bytes = expand(&r, &streams)?;
        Ok(wit_rendered(&r, bytes))
    }

    fn deliver(msg: wit::Message) -> Result<wit::Receipt, wt::Undelivered> {
        send_rendered(msg).map_err(|(error, rendered)| {
            let kept = match rendered {
                Some((r, streams)) if worth_keeping(&error) && r.size() <= MAX_IN_MEMORY_BYTES => {
                    // The files are opened afresh for the kept copy.
                    expand(&r, &streams).ok().map(|bytes| wit_rendered(&r, bytes))
                }
                _ => None,
            };
            wt::Undelivered { error, kept }
        })
    }

    fn submit(envelope: wt::Envelope, bytes: Vec<u8>) -> Result<wit::Receipt, wit::SendError> {
        let from = Address::parse(&envelope.from).map_err(|e| invalid(format!("envelope.from: {e}")))?;
        let recipients = envelope
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| Address::parse(r).map_err(|e| invalid(format!("envelope.recipients[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(invalid("envelope.recipients: empty"));
        }
        mime::check::check_lines(&bytes, true).map_err(|e| invalid(format!("bytes: {e}")))?;
        let size = bytes.len() as u64;
        let smtputf8 = from.needs_smtputf8() || recipients.iter().any(Address::needs_smtputf8);
        let out = Outgoing { from: &from, recipients: &recipients, size, eight_bit: !bytes.is_ascii(), smtputf8 };
        let message_id = message_id_of(&bytes).unwrap_or_default();
        let segments = [Segment::Bytes(bytes)];
        let delivery = STATE.with_borrow_mut(|st| st.transact(&out, &segments, &Streams::new()))?;
        Ok(receipt(message_id, size, delivery))
    }

    fn close() {
        STATE.with_borrow_mut(|st| {
            if let Some(s) = st.session.take() {
                s.quit();
            }
        });
    }
}

/// The Message-ID of raw message bytes, from its header section.
fn message_id_of(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let headers = text.split("\r\n\r\n").next()?;
    headers.split("\r\n").find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id")
            .then(|| value.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}
