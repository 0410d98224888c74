//! The component's exports (`wasmail:mail/sender`, `wasmail:mail/transport`)
//! and imports, bound to the native code: WIT values converted to the MIME
//! and SMTP types (RFC 5322 / RFC 5321) and back, the host's `blobs` as
//! [`Blobs`], its `signer` as the DKIM identity and signature (RFC 6376),
//! and one [`Connection`] per instance. What happens to a message
//! is decided in [`crate::deliver`].

use crate::bindings::exports::wasmail::mail::sender::Guest as SenderGuest;
use crate::bindings::exports::wasmail::mail::transport::{
    self as wt, AuthMechanism, Guest as TransportGuest, Relay as WitRelay, Rendered as WitRendered,
    TlsMode as WitTlsMode,
};
use crate::bindings::wasi::clocks::wall_clock;
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::bindings::wasi::random::random;
use crate::bindings::wasmail::mail::transcript::{self, Direction};
use crate::bindings::wasmail::mail::types as wit;
use crate::bindings::wasmail::mail::signer::{self, Algorithm as WitAlgorithm, Canonicalization as WitCanon};
use crate::bindings::wasmail::mail::{blobs, credentials, limits};
use crate::deliver::{
    BlobError, BlobRead, Blobs, Connection, DeliverError, Prepared, Relay, RelaySpec, Streams,
};
use crate::mime;
use crate::mime::address::Address;
use crate::mime::{Attachment, BuildContext, Content, Draft, Priority, RawMailbox, dkim};
use crate::net::{Net, Timeouts};
use crate::smtp::auth::{Choice, Mechanism, Secret};
use crate::smtp::session::{Session, TlsMode, TransactionResult};
use crate::smtp::{Reply, SmtpError, Stage};
use std::cell::RefCell;

/// The host's `blobs` interface.
struct HostBlobs;

impl BlobRead for InputStream {
    fn read(&mut self, max: usize, out: &mut Vec<u8>) -> Result<(), BlobError> {
        match self.blocking_read(max as u64) {
            Ok(data) => {
                out.extend_from_slice(&data);
                Ok(())
            }
            Err(StreamError::Closed) => Err(BlobError::Closed),
            Err(StreamError::LastOperationFailed(e)) => Err(BlobError::Failed(e.to_debug_string())),
        }
    }
}

impl Blobs for HostBlobs {
    type Reader = InputStream;
    fn open(&self, path: &str) -> Result<(u64, InputStream), String> {
        blobs::open(path)
    }
}

struct Settings {
    relay: Relay,
    timeouts: Timeouts,
}

#[derive(Default)]
struct State {
    settings: Option<Settings>,
    connection: Connection<Net>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

struct Mailer;

crate::bindings::export!(Mailer with_types_in crate::bindings);

impl From<&Reply> for wit::Reply {
    fn from(r: &Reply) -> Self {
        Self { code: r.code, enhanced: r.enhanced.clone(), text: r.text() }
    }
}

impl From<Stage> for wit::Stage {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Connect => Self::Connect,
            Stage::Greeting => Self::Greeting,
            Stage::Ehlo => Self::Ehlo,
            Stage::Tls => Self::Tls,
            Stage::Auth => Self::Auth,
            Stage::MailFrom => Self::MailFrom,
            Stage::RcptTo => Self::RcptTo,
            Stage::Data => Self::Data,
            Stage::DataBlock => Self::DataBlock,
            Stage::DataEnd => Self::DataEnd,
            Stage::Rset => Self::Rset,
            Stage::Quit => Self::Quit,
        }
    }
}

fn failures(list: &[(Address, Reply)]) -> Vec<wit::RecipientFailure> {
    list.iter().map(|(a, r)| wit::RecipientFailure { address: a.to_string(), reply: r.into() }).collect()
}

impl From<SmtpError> for wit::SendError {
    fn from(e: SmtpError) -> Self {
        let transient = e.is_transient();
        match e {
            SmtpError::InvalidMessage(m) => Self::InvalidMessage(m),
            SmtpError::Connect(m) => Self::Connect(m),
            SmtpError::Tls(m) => Self::Tls(m),
            SmtpError::Auth(r) => Self::Auth((&r).into()),
            SmtpError::Rejected { stage, reply, recipients } => Self::Rejected(wit::Rejection {
                stage: stage.into(),
                transient,
                reply: (&reply).into(),
                recipients: failures(&recipients),
            }),
            SmtpError::Timeout(s) => Self::Timeout(s.into()),
            SmtpError::Protocol(m) => Self::Protocol(m),
            SmtpError::OutcomeUnknown(m) => Self::OutcomeUnknown(m),
        }
    }
}

impl From<DeliverError> for wit::SendError {
    fn from(e: DeliverError) -> Self {
        match e {
            DeliverError::PolicyDenied(m) => Self::PolicyDenied(m),
            DeliverError::Smtp(e) => e.into(),
        }
    }
}

impl From<wit::Mailbox> for RawMailbox {
    fn from(m: wit::Mailbox) -> Self {
        Self { name: m.name, address: m.address }
    }
}

impl From<wit::Priority> for Priority {
    fn from(p: wit::Priority) -> Self {
        match p {
            wit::Priority::Highest => Self::Highest,
            wit::Priority::High => Self::High,
            wit::Priority::Normal => Self::Normal,
            wit::Priority::Low => Self::Low,
            wit::Priority::Lowest => Self::Lowest,
        }
    }
}

impl From<WitTlsMode> for TlsMode {
    fn from(t: WitTlsMode) -> Self {
        match t {
            WitTlsMode::None => Self::None,
            WitTlsMode::Starttls => Self::StartTls,
            WitTlsMode::Required => Self::Required,
            WitTlsMode::Implicit => Self::Implicit,
        }
    }
}

impl From<AuthMechanism> for Choice {
    fn from(a: AuthMechanism) -> Self {
        match a {
            AuthMechanism::Auto => Self::Auto,
            AuthMechanism::Plain => Self::Exactly(Mechanism::Plain),
            AuthMechanism::Login => Self::Exactly(Mechanism::Login),
            AuthMechanism::CramMd5 => Self::Exactly(Mechanism::CramMd5),
            AuthMechanism::Xoauth2 => Self::Exactly(Mechanism::XOAuth2),
        }
    }
}

impl From<wt::Timeouts> for Timeouts {
    fn from(t: wt::Timeouts) -> Self {
        let ms = |v: u32| u64::from(v.max(1));
        Self {
            connect: ms(t.connect_ms),
            greeting: ms(t.greeting_ms),
            command: ms(t.command_ms),
            data_init: ms(t.data_init_ms),
            data_block: ms(t.data_block_ms),
            data_end: ms(t.data_end_ms),
            reply_cap: ms(t.reply_cap_ms),
        }
    }
}

impl From<WitRelay> for RelaySpec {
    fn from(r: WitRelay) -> Self {
        Self {
            host: r.host,
            addresses: r.addresses,
            port: r.port,
            ehlo: r.ehlo,
            tls: r.tls.into(),
            user: r.user,
            auth: r.auth.into(),
            verbose: r.verbose,
        }
    }
}

/// The draft of `msg`, its attachment files measured into a new [`Streams`].
fn draft(msg: wit::Message) -> Result<(Draft, Streams<HostBlobs>), SmtpError> {
    Streams::<HostBlobs>::check_count(msg.attachments.len())?;
    let mut streams = Streams::new(HostBlobs);
    let mut attachments = Vec::with_capacity(msg.attachments.len());
    for (i, a) in msg.attachments.into_iter().enumerate() {
        let content = match a.content {
            wit::Content::Bytes(b) => Content::Bytes(b),
            wit::Content::File(path) => {
                let sniff = mime::render::needs_charset(&mime::render::declared_type(a.content_type.as_deref(), &a.filename));
                streams.attach(i, path, sniff)?
            }
        };
        attachments.push(Attachment { filename: a.filename, content_type: a.content_type, content, content_id: a.content_id });
    }
    let draft = Draft {
        from: msg.from.map(Into::into),
        reply_to: msg.reply_to.map(Into::into),
        to: msg.to.into_iter().map(Into::into).collect(),
        cc: msg.cc.into_iter().map(Into::into).collect(),
        bcc: msg.bcc.into_iter().map(Into::into).collect(),
        subject: msg.subject,
        text: msg.text,
        html: msg.html,
        attachments,
        priority: msg.priority.map(Into::into),
        headers: msg.headers,
    };
    Ok((draft, streams))
}

impl From<WitCanon> for dkim::Canonicalization {
    fn from(c: WitCanon) -> Self {
        match c {
            WitCanon::Simple => Self::Simple,
            WitCanon::Relaxed => Self::Relaxed,
        }
    }
}

impl From<signer::Identity> for dkim::Identity {
    fn from(i: signer::Identity) -> Self {
        Self {
            domain: i.domain,
            selector: i.selector,
            algorithm: match i.algorithm {
                WitAlgorithm::RsaSha256 => dkim::Algorithm::RsaSha256,
                WitAlgorithm::Ed25519Sha256 => dkim::Algorithm::Ed25519Sha256,
            },
            header_canon: i.header_canonicalization.into(),
            body_canon: i.body_canonicalization.into(),
            extra_headers: i.headers,
            expire_secs: i.expire_secs,
        }
    }
}

/// Build `msg` with the host's clock, randomness and size limit, and sign
/// it (DKIM) when the host has an identity for its From domain.
fn prepare(msg: wit::Message) -> Result<Prepared<HostBlobs>, DeliverError> {
    let (draft, streams) = draft(msg)?;
    let ctx = BuildContext { unix_time: wall_clock::now().seconds, random: random::get_random_u64() };
    let max = limits::max_message_bytes();
    let mut msg = Prepared::build(&draft, streams, &ctx, max)?;
    if let Some(identity) = signer::signing_identity() {
        let identity = dkim::Identity::from(identity);
        identity.check().map_err(|e| DeliverError::PolicyDenied(format!("dkim: {e}")))?;
        let (domain, selector) = (&identity.domain, &identity.selector);
        let signed = msg.sign(&identity, ctx.unix_time, |data| signer::sign(domain, selector, data))?;
        if signed.is_some() {
            msg.check_size(max)?;
        }
        let verbose = STATE.with_borrow(|st| st.settings.as_ref().is_some_and(|s| s.relay.verbose));
        if verbose {
            let note = if let Some(hashed) = signed {
                format!("DKIM: signed as {domain} (selector {selector}, {}); {}", identity.algorithm.name(), hashed.note())
            } else {
                format!("DKIM: not signed: the From domain is outside {domain}")
            };
            transcript::line(Direction::Info, &note);
        }
    }
    Ok(msg)
}

fn receipt(msg: &Prepared<HostBlobs>, t: TransactionResult) -> wit::Receipt {
    wit::Receipt {
        message_id: msg.rendered.message_id.clone(),
        accepted: t.accepted.iter().map(ToString::to_string).collect(),
        rejected: failures(&t.rejected),
        size: msg.rendered.size(),
        reply: (&t.reply).into(),
    }
}

fn wit_rendered(msg: &Prepared<HostBlobs>, bytes: Vec<u8>) -> WitRendered {
    let envelope = &msg.rendered.envelope;
    WitRendered {
        message_id: msg.rendered.message_id.clone(),
        envelope: wt::Envelope {
            from: envelope.from.to_string(),
            recipients: envelope.recipients.iter().map(ToString::to_string).collect(),
        },
        bytes,
    }
}

impl State {
    /// Send one message: a batch of one.
    fn send(&mut self, msg: &Prepared<HostBlobs>) -> Result<wit::Receipt, SmtpError> {
        self.send_many(&[msg]).pop().unwrap_or_else(|| Err(SmtpError::Protocol("a batch of one gave no result".into())))
    }

    /// Send `msgs` as one pipelined batch over the kept session, opening
    /// one with the host's network and credentials when needed.
    fn send_many(&mut self, msgs: &[&Prepared<HostBlobs>]) -> Vec<Result<wit::Receipt, SmtpError>> {
        let Some(s) = &self.settings else {
            return msgs.iter().map(|_| Err(SmtpError::Connect("no relay configured".into()))).collect();
        };
        let open = || {
            let r = &s.relay;
            let implicit = r.config.tls == TlsMode::Implicit;
            let net = Net::connect(&r.host, &r.addresses, r.port, implicit, s.timeouts, r.verbose)?;
            Session::open(net, &r.config, || credentials::secret().map(Secret::new))
        };
        let (results, encoded) = self.connection.send_many(open, msgs);
        if let Some(note) = encoded.note().filter(|_| s.relay.verbose) {
            transcript::line(Direction::Info, &note);
        }
        results.into_iter().zip(msgs).map(|(r, msg)| r.map(|t| receipt(msg, t))).collect()
    }
}

fn send(msg: &Prepared<HostBlobs>) -> Result<wit::Receipt, SmtpError> {
    STATE.with_borrow_mut(|st| st.send(msg))
}

/// Send the messages that were prepared as one batch; the others keep
/// their errors. One result per message, in order.
fn send_many(prepared: Vec<Result<Prepared<HostBlobs>, wit::SendError>>) -> Vec<Result<wit::Receipt, wit::SendError>> {
    let ready: Vec<&Prepared<HostBlobs>> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let mut sent = STATE.with_borrow_mut(|st| st.send_many(&ready)).into_iter();
    prepared
        .iter()
        .map(|p| match p {
            Ok(_) => sent.next().unwrap_or_else(|| Err(SmtpError::Protocol("the batch gave too few results".into()))).map_err(Into::into),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

impl SenderGuest for Mailer {
    fn send(msg: wit::Message) -> Result<wit::Receipt, wit::SendError> {
        let msg = prepare(msg)?;
        Ok(send(&msg)?)
    }

    fn send_many(msgs: Vec<wit::Message>) -> Vec<Result<wit::Receipt, wit::SendError>> {
        send_many(msgs.into_iter().map(|m| prepare(m).map_err(Into::into)).collect())
    }
}

impl TransportGuest for Mailer {
    fn configure(relay: WitRelay) -> Result<(), String> {
        let timeouts = relay.timeouts.into();
        let relay = RelaySpec::from(relay).check()?;
        STATE.with_borrow_mut(|st| {
            st.connection.close();
            st.settings = Some(Settings { relay, timeouts });
        });
        Ok(())
    }

    fn render(msg: wit::Message) -> Result<WitRendered, wit::SendError> {
        let msg = prepare(msg)?;
        let bytes = msg.to_bytes()?;
        Ok(wit_rendered(&msg, bytes))
    }

    fn deliver(msg: wit::Message) -> Result<wit::Receipt, wt::Undelivered> {
        let msg = prepare(msg).map_err(|e| wt::Undelivered { error: e.into(), kept: None })?;
        send(&msg).map_err(|e| {
            let error = DeliverError::from(e);
            let kept = msg.kept(&error).map(|bytes| wit_rendered(&msg, bytes));
            wt::Undelivered { error: error.into(), kept }
        })
    }

    fn submit(envelope: wt::Envelope, bytes: Vec<u8>) -> Result<wit::Receipt, wit::SendError> {
        let msg = Prepared::raw(&envelope.from, &envelope.recipients, bytes, HostBlobs)?;
        Ok(send(&msg)?)
    }

    fn submit_many(msgs: Vec<WitRendered>) -> Vec<Result<wit::Receipt, wit::SendError>> {
        send_many(
            msgs.into_iter()
                .map(|m| {
                    Prepared::raw_with_id(&m.envelope.from, &m.envelope.recipients, m.bytes, m.message_id, HostBlobs)
                        .map_err(Into::into)
                })
                .collect(),
        )
    }

    fn close() {
        STATE.with_borrow_mut(|st| st.connection.close());
    }
}
