//! Delivery of one message over the kept-open session (RFC 5321 3.3 mail
//! transactions), with attachment files streamed as base64 (RFC 2045 6.8):
//! the rules the component's exports follow, in plain Rust.
//!
//! - A message is [`Prepared`]: built from its draft (attachment files
//!   measured, opened again only when streamed, through [`Blobs`]), or taken
//!   as already rendered bytes (`submit`).
//! - [`Connection`] keeps one session open from send to send, sends a batch
//!   of messages pipelined over it, sends once more on a new session the
//!   messages a lost connection left unsent, and drops a session whose
//!   connection can no longer be trusted.
//! - What is kept for a retry, and how much may be held in memory
//!   ([`MAX_IN_MEMORY_BYTES`]), is decided here.
//! - A message is signed (DKIM, RFC 6376) once, after it is built: a first
//!   pass over its body (files included) for the body hash, the signature
//!   from the host, the field on top. The send, the outbox copy and the
//!   dead-letter copy all carry that one field.
//!
//! The component supplies the host's imports (files, the network, the
//! clock); tests supply fakes.

use crate::mime::address::Address;
use crate::mime::encode::{BASE64_LINE_BYTES, base64_lines};
use crate::mime::{self, BuildContext, Content, Draft, Envelope, Rendered, Segment, dkim};
use crate::smtp::SmtpError;
use crate::smtp::auth::Choice;
use crate::smtp::command::ClientName;
use crate::smtp::data::{Chunk, Source};
use crate::smtp::session::{Batch, Config, Item, Outgoing, Session, TlsMode, TransactionResult, Transport};
use std::time::{Duration, Instant};

/// The largest message the mailer assembles whole in memory: for the outbox
/// (`render`) and for the dead-letter folder (`deliver`). Larger messages
/// (huge streamed attachments) are only ever streamed to a relay; a kept copy
/// is skipped (the caller still has the files) and the outbox refuses them.
pub const MAX_IN_MEMORY_BYTES: u64 = 64 << 20;

/// Raw bytes read from an attachment file per base64 chunk: a whole number
/// of 57-byte lines, about 56 KiB.
pub const STREAM_CHUNK: usize = BASE64_LINE_BYTES * 1024;

/// Why reading an attachment file stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    /// The file ended.
    Closed,
    /// The read failed.
    Failed(String),
}

/// An open attachment file.
pub trait BlobRead {
    /// Append at most `max` bytes to `out`, waiting for at least one.
    fn read(&mut self, max: usize, out: &mut Vec<u8>) -> Result<(), BlobError>;
}

/// Opens attachment files by the path a message names (the host's `blobs`).
pub trait Blobs {
    /// An open file.
    type Reader: BlobRead;
    /// Open `path`: its length in octets and its bytes.
    fn open(&self, path: &str) -> Result<(u64, Self::Reader), String>;
}

/// The largest text attachment file read ahead to learn its charset.
pub const MAX_SNIFF_BYTES: u64 = 1 << 20;

/// Whether the `len` bytes of `file` are UTF-8.
fn is_utf8(file: &mut impl BlobRead, len: u64) -> Result<bool, String> {
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    while (bytes.len() as u64) < len {
        let want = usize::try_from(len - bytes.len() as u64).unwrap_or(usize::MAX);
        match file.read(want, &mut bytes) {
            Ok(()) => {}
            Err(BlobError::Closed) => return Err("it ended early".into()),
            Err(BlobError::Failed(e)) => return Err(e),
        }
    }
    Ok(std::str::from_utf8(&bytes).is_ok())
}

/// The attachment files of one message, indexed by `Content::Stream`: their
/// paths and the lengths they had when measured. A file is opened only when
/// its part is streamed, so a message holds at most one file at a time.
pub struct Streams<B: Blobs> {
    blobs: B,
    files: Vec<(String, u64)>,
}

impl<B: Blobs> Streams<B> {
    /// No files yet.
    pub fn new(blobs: B) -> Self {
        Self { blobs, files: Vec::new() }
    }

    /// Refuse a message with too many attachments before any file is
    /// opened, so a message cannot hold the host's file handles by the
    /// thousand.
    pub fn check_count(attachments: usize) -> Result<(), SmtpError> {
        if attachments > mime::MAX_ATTACHMENTS {
            return Err(SmtpError::InvalidMessage(format!(
                "attachments: {attachments} is more than {}",
                mime::MAX_ATTACHMENTS
            )));
        }
        Ok(())
    }

    /// Measure the file of attachment `i` now; it is opened again when
    /// streamed. With `sniff` (a text/* type without a charset) a file of at
    /// most [`MAX_SNIFF_BYTES`] is read through to learn whether it is
    /// UTF-8; a larger one is not, and goes out as a binary type.
    pub fn attach(&mut self, i: usize, path: String, sniff: bool) -> Result<Content, SmtpError> {
        let field = |e: String| SmtpError::InvalidMessage(format!("attachments[{i}].content: {path}: {e}"));
        let (len, mut file) = self.blobs.open(&path).map_err(field)?;
        let utf8 = if sniff && len <= MAX_SNIFF_BYTES { Some(is_utf8(&mut file, len).map_err(field)?) } else { None };
        self.files.push((path, len));
        Ok(Content::Stream { index: self.files.len() - 1, len, utf8 })
    }

    /// Open file `index` for streaming; it must still have the length it was
    /// measured with.
    fn open(&self, index: usize) -> Result<B::Reader, SmtpError> {
        let Some((path, want)) = self.files.get(index) else {
            return Err(SmtpError::InvalidMessage("attachment stream missing".into()));
        };
        let (len, file) =
            self.blobs.open(path).map_err(|e| SmtpError::InvalidMessage(format!("attachment {path}: {e}")))?;
        if len != *want {
            return Err(SmtpError::InvalidMessage(format!(
                "attachment {path}: it changed size from {want} to {len} octets while the message was being made"
            )));
        }
        Ok(file)
    }
}

/// Feeds a rendered message to the session, base64-encoding attachment
/// files chunk by chunk so a large file is never held whole.
struct SegmentSource<'a, B: Blobs> {
    segments: &'a [Segment],
    streams: &'a Streams<B>,
    next: usize,
    /// The file of the current stream segment, while it is read.
    current: Option<B::Reader>,
    /// Bytes left in the current stream segment.
    left: u64,
    carry: Vec<u8>,
    encoded: Encoded,
}

/// Attachment bytes base64-encoded by the mailer for one send, and the time
/// it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encoded {
    /// Raw attachment bytes encoded.
    pub bytes: u64,
    /// Time spent encoding.
    pub time: Duration,
}

impl Encoded {
    fn add(&mut self, other: Self) {
        self.bytes += other.bytes;
        self.time += other.time;
    }

    /// The transcript note, when anything was encoded.
    pub fn note(&self) -> Option<String> {
        if self.bytes == 0 {
            return None;
        }
        let secs = self.time.as_secs_f64();
        let mib = self.bytes as f64 / f64::from(1 << 20);
        Some(format!(
            "attachments: {mib:.1} MiB base64-encoded in the mailer in {secs:.3} s ({:.0} MiB/s)",
            mib / secs.max(1e-9)
        ))
    }
}

impl<'a, B: Blobs> SegmentSource<'a, B> {
    fn new(segments: &'a [Segment], streams: &'a Streams<B>) -> Self {
        Self {
            segments,
            streams,
            next: 0,
            current: None,
            left: 0,
            carry: Vec::with_capacity(STREAM_CHUNK),
            encoded: Encoded::default(),
        }
    }

    /// Read from the current file into `carry`; once it holds a whole chunk
    /// (or the file's end), encode it to `out`. False while more must be read.
    fn stream(&mut self, out: &mut Vec<u8>) -> Result<bool, SmtpError> {
        if self.current.is_none() {
            let Some(Segment::Base64Stream { index, .. }) = self.next.checked_sub(1).and_then(|i| self.segments.get(i))
            else {
                return Err(SmtpError::InvalidMessage("attachment stream out of order".into()));
            };
            self.current = Some(self.streams.open(*index)?);
        }
        let Some(file) = self.current.as_mut() else {
            return Err(SmtpError::InvalidMessage("attachment stream missing".into()));
        };
        // `left` may pass 4 GiB: compare as u64 before narrowing.
        let want = ((STREAM_CHUNK - self.carry.len()) as u64).min(self.left) as usize;
        let before = self.carry.len();
        match file.read(want, &mut self.carry) {
            Ok(()) => {}
            Err(BlobError::Closed) => {
                return Err(SmtpError::InvalidMessage(format!(
                    "attachment file ended {} bytes early (it changed while being sent)",
                    self.left
                )));
            }
            Err(BlobError::Failed(e)) => return Err(SmtpError::InvalidMessage(format!("attachment read failed: {e}"))),
        }
        // A reader that gives more than asked for must not push past the part.
        self.carry.truncate(before + want);
        self.left -= (self.carry.len() - before) as u64;
        if self.carry.len() < STREAM_CHUNK && self.left > 0 {
            return Ok(false);
        }
        let t = Instant::now();
        base64_lines(&self.carry, out);
        self.encoded.time += t.elapsed();
        self.encoded.bytes += self.carry.len() as u64;
        self.carry.clear();
        if self.left == 0 {
            self.current = None;
        }
        Ok(true)
    }
}

impl<B: Blobs> Source for SegmentSource<'_, B> {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<Chunk, SmtpError> {
        loop {
            if self.left > 0 {
                if self.stream(out)? {
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

/// The DKIM body hash of one message: the body's octets (as sent, files
/// base64-encoded) and the time the pass over them took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    /// Body octets hashed.
    pub bytes: u64,
    /// Time spent reading, encoding and hashing them.
    pub time: Duration,
}

impl Hashed {
    /// For the transcript: how much was hashed, how fast.
    pub fn note(&self) -> String {
        let secs = self.time.as_secs_f64();
        let mib = self.bytes as f64 / f64::from(1 << 20);
        format!("body hash over {mib:.1} MiB in {secs:.3} s ({:.0} MiB/s)", mib / secs.max(1e-9))
    }
}

/// Why a message was not sent: the policy's size limit, or anything the
/// SMTP side says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// Over the policy's `max_message_bytes`; nothing was sent.
    PolicyDenied(String),
    /// Invalid, or refused or failed on the way.
    Smtp(SmtpError),
}

impl From<SmtpError> for DeliverError {
    fn from(e: SmtpError) -> Self {
        Self::Smtp(e)
    }
}

impl DeliverError {
    /// See [`SmtpError::worth_keeping`]; a policy denial never is.
    pub fn worth_keeping(&self) -> bool {
        match self {
            Self::PolicyDenied(_) => false,
            Self::Smtp(e) => e.worth_keeping(),
        }
    }
}

/// A message ready to send: its rendered form and the files its streamed
/// parts come from.
pub struct Prepared<B: Blobs> {
    /// The rendered message.
    pub rendered: Rendered,
    streams: Streams<B>,
}

impl<B: Blobs> Prepared<B> {
    /// Build `draft`, whose files are in `streams`, and hold it to the
    /// policy's size limit `max_bytes` before anything is sent.
    pub fn build(
        draft: &Draft,
        streams: Streams<B>,
        ctx: &BuildContext,
        max_bytes: Option<u64>,
    ) -> Result<Self, DeliverError> {
        let rendered = draft.build(ctx).map_err(|e| SmtpError::InvalidMessage(e.to_string()))?;
        let msg = Self { rendered, streams };
        msg.check_size(max_bytes)?;
        Ok(msg)
    }

    /// Hold the message to the policy's size limit `max_bytes`.
    pub fn check_size(&self, max_bytes: Option<u64>) -> Result<(), DeliverError> {
        if let Some(max) = max_bytes {
            let size = self.rendered.size();
            if size > max {
                return Err(DeliverError::PolicyDenied(format!(
                    "max_message_bytes: the message is {size} octets, the limit is {max}"
                )));
            }
        }
        Ok(())
    }

    /// Sign the message with DKIM (RFC 6376) as `identity`, at `time`
    /// (seconds since the epoch, `t=`): the body hash from a first pass over
    /// the body (attachment files read through, chunk by chunk, as they will
    /// be sent), then `sign` (the host, which holds the key) signs the
    /// canonical header data, and the DKIM-Signature field goes on top. A
    /// message whose From domain is neither the signing domain nor one of
    /// its subdomains is left unsigned: `Ok(None)`.
    pub fn sign(
        &mut self,
        identity: &dkim::Identity,
        time: u64,
        sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<Option<Hashed>, DeliverError> {
        if !identity.covers(self.rendered.envelope.from.domain()) {
            return Ok(None);
        }
        let header_len = match self.rendered.segments.first() {
            Some(Segment::Bytes(b)) => memchr::memmem::find(b, b"\r\n\r\n").map(|i| i + 2),
            _ => None,
        };
        let Some(header_len) = header_len else {
            return Err(SmtpError::InvalidMessage("message: no header section to sign".into()).into());
        };
        let t = Instant::now();
        let (body_hash, bytes) = self.body_hash(identity.body_canon, header_len + 2)?;
        let hashed = Hashed { bytes, time: t.elapsed() };
        let Some(Segment::Bytes(first)) = self.rendered.segments.first_mut() else {
            return Err(SmtpError::InvalidMessage("message: no header section to sign".into()).into());
        };
        let unsigned = dkim::unsigned(identity, &first[..header_len], &body_hash, time);
        let signature = sign(&unsigned.data).map_err(|e| DeliverError::PolicyDenied(format!("dkim: {e}")))?;
        let field = unsigned.signed(&signature);
        mime::lint::check_lines(field.as_bytes(), true)
            .map_err(|e| SmtpError::InvalidMessage(format!("dkim-signature: {e}")))?;
        first.splice(0..0, field.into_bytes());
        Ok(Some(hashed))
    }

    /// The hash of the body (everything after the first `skip` bytes), in
    /// one pass over the segments as they would be sent.
    /// With the body's length.
    fn body_hash(&self, canon: dkim::Canonicalization, mut skip: usize) -> Result<([u8; 32], u64), SmtpError> {
        let mut hasher = dkim::BodyHasher::new(canon);
        let mut src = SegmentSource::new(&self.rendered.segments, &self.streams);
        let mut buf = Vec::with_capacity(2 * STREAM_CHUNK);
        let mut bytes = 0;
        loop {
            buf.clear();
            let chunk = src.next_chunk(&mut buf)?;
            let n = skip.min(buf.len());
            skip -= n;
            hasher.update(&buf[n..]);
            bytes += (buf.len() - n) as u64;
            if chunk == Chunk::Last {
                return Ok((hasher.finish(), bytes));
            }
        }
    }

    /// Already rendered bytes with their envelope (`submit`, e.g. from the
    /// dead-letter folder): checked as the builder checks its own output,
    /// sent unchanged.
    pub fn raw(from: &str, recipients: &[String], bytes: Vec<u8>, blobs: B) -> Result<Self, SmtpError> {
        Self::raw_with_id(from, recipients, bytes, String::new(), blobs)
    }

    /// [`Prepared::raw`] with its Message-ID already known (the host's
    /// `rendered` record, from `render`): the header section is not read
    /// for it. An empty one is read from the bytes.
    pub fn raw_with_id(from: &str, recipients: &[String], bytes: Vec<u8>, message_id: String, blobs: B) -> Result<Self, SmtpError> {
        let invalid = SmtpError::InvalidMessage;
        let from = Address::parse(from).map_err(|e| invalid(format!("envelope.from: {e}")))?;
        let recipients = recipients
            .iter()
            .enumerate()
            .map(|(i, r)| Address::parse(r).map_err(|e| invalid(format!("envelope.recipients[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(invalid("envelope.recipients: empty".into()));
        }
        mime::lint::check_lines(&bytes, true).map_err(|e| invalid(format!("bytes: {e}")))?;
        let smtputf8 = from.needs_smtputf8() || recipients.iter().any(Address::needs_smtputf8);
        let rendered = Rendered {
            message_id: if message_id.is_empty() { message_id_of(&bytes).unwrap_or_default() } else { message_id },
            envelope: Envelope { from, recipients },
            segments: vec![Segment::Bytes(bytes)],
            smtputf8,
        };
        Ok(Self { rendered, streams: Streams::new(blobs) })
    }

    /// The envelope and what the server must support.
    pub fn outgoing(&self) -> Outgoing<'_> {
        let r = &self.rendered;
        Outgoing {
            from: &r.envelope.from,
            recipients: &r.envelope.recipients,
            size: r.size(),
            eight_bit: r.eight_bit(),
            smtputf8: r.smtputf8,
        }
    }

    /// The whole message in memory, attachment files read again (the
    /// outbox). Refused over [`MAX_IN_MEMORY_BYTES`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, SmtpError> {
        let size = self.rendered.size();
        if size > MAX_IN_MEMORY_BYTES {
            return Err(SmtpError::InvalidMessage(format!(
                "message: {size} octets is too large for the outbox (at most {MAX_IN_MEMORY_BYTES}); send it to a relay"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        let mut src = SegmentSource::new(&self.rendered.segments, &self.streams);
        while src.next_chunk(&mut bytes)? != Chunk::Last {}
        Ok(bytes)
    }

    /// The exact bytes to keep after `error` (the dead-letter folder): only
    /// when a retry may help or the outcome is unknown, and the message fits
    /// in memory. The files are read afresh.
    pub fn kept(&self, error: &DeliverError) -> Option<Vec<u8>> {
        if !error.worth_keeping() {
            return None;
        }
        self.to_bytes().ok()
    }
}

/// The Message-ID of raw message bytes, from its header section (read
/// only as far as the blank line that ends it).
fn message_id_of(bytes: &[u8]) -> Option<String> {
    let end = memchr::memmem::find(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let headers = std::str::from_utf8(bytes.get(..end)?).ok()?;
    headers.split("\r\n").find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("message-id")
            .then(|| value.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

/// The relay as `configure` gives it, before any check.
pub struct RelaySpec {
    /// The name the certificate must match.
    pub host: String,
    /// The addresses the host resolved it to.
    pub addresses: Vec<String>,
    /// The TCP port.
    pub port: u16,
    /// The EHLO name.
    pub ehlo: String,
    /// How to secure the connection.
    pub tls: TlsMode,
    /// The AUTH user, if any.
    pub user: Option<String>,
    /// The AUTH mechanism.
    pub auth: Choice,
    /// Whether to report the dialogue.
    pub verbose: bool,
}

/// A checked relay: where to connect and the session's settings.
pub struct Relay {
    /// The name the certificate must match.
    pub host: String,
    /// The addresses to connect to, in order.
    pub addresses: Vec<String>,
    /// The TCP port.
    pub port: u16,
    /// The session's settings.
    pub config: Config,
    /// Whether to report the dialogue.
    pub verbose: bool,
}

impl RelaySpec {
    /// Check every field, naming the first bad one.
    pub fn check(self) -> Result<Relay, String> {
        let client_name = ClientName::new(&self.ehlo).map_err(|e| format!("ehlo: {e}"))?;
        if self.host.is_empty() || self.host.contains(|c: char| c.is_control() || c == ' ') {
            return Err("host: must be a host name or IP address".into());
        }
        if self.user.as_deref().is_some_and(|u| u.contains(char::is_control)) {
            return Err("user: contains a control character".into());
        }
        Ok(Relay {
            host: self.host,
            addresses: self.addresses,
            port: self.port,
            config: Config { client_name, tls: self.tls, user: self.user, auth: self.auth },
            verbose: self.verbose,
        })
    }
}

/// The session kept open from send to send.
pub struct Connection<T: Transport> {
    session: Option<Session<T>>,
}

impl<T: Transport> Default for Connection<T> {
    fn default() -> Self {
        Self { session: None }
    }
}

impl<T: Transport> Connection<T> {
    /// Send `msg`: [`Connection::send_many`] with one message.
    pub fn send<B: Blobs>(
        &mut self,
        open: impl FnMut() -> Result<Session<T>, SmtpError>,
        msg: &Prepared<B>,
    ) -> (Result<TransactionResult, SmtpError>, Encoded) {
        let (mut results, encoded) = self.send_many(open, &[msg]);
        let result = results.pop().unwrap_or_else(|| Err(SmtpError::Protocol("a batch of one gave no result".into())));
        (result, encoded)
    }

    /// Send `msgs` over the kept session, pipelined across messages when the
    /// server allows it ([`Session::send_many`]), opening a session with
    /// `open` when none is kept. The messages a lost connection left unsent
    /// (a kept session the server closed meanwhile, or a break in the middle)
    /// go once more, on a new session. A session whose connection can no
    /// longer be trusted is dropped without QUIT. One result per message, in
    /// order.
    ///
    /// The second session is opened only when the first one was kept from
    /// before or delivered something: a new session that fails before any
    /// message went through is the error, not a reason to hammer the relay.
    pub fn send_many<B: Blobs>(
        &mut self,
        mut open: impl FnMut() -> Result<Session<T>, SmtpError>,
        msgs: &[&Prepared<B>],
    ) -> (Vec<Result<TransactionResult, SmtpError>>, Encoded) {
        let mut encoded = Encoded::default();
        let all: Vec<usize> = (0..msgs.len()).collect();
        let reused = self.session.is_some();
        let first = self.pass(&mut open, msgs, &all, &mut encoded);
        let mut results = first.results;
        if !first.unsent.is_empty() && (reused || results.iter().any(Result::is_ok)) {
            let again = self.pass(&mut open, msgs, &first.unsent, &mut encoded);
            for (&i, result) in first.unsent.iter().zip(again.results) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = result;
                }
            }
        }
        (results, encoded)
    }

    /// One batch of `msgs[which]` over the kept or a new session. Results
    /// are in the order of `which`; `unsent` holds indices into `msgs`.
    fn pass<B: Blobs>(
        &mut self,
        open: &mut impl FnMut() -> Result<Session<T>, SmtpError>,
        msgs: &[&Prepared<B>],
        which: &[usize],
        encoded: &mut Encoded,
    ) -> Batch {
        let picked: Vec<&Prepared<B>> = which.iter().filter_map(|&i| msgs.get(i).copied()).collect();
        let mut session = match self.session.take() {
            Some(s) => s,
            None => match open() {
                Ok(s) => s,
                Err(e) => return Batch { results: picked.iter().map(|_| Err(e.clone())).collect(), unsent: vec![] },
            },
        };
        let mut sources: Vec<SegmentSource<'_, B>> =
            picked.iter().map(|m| SegmentSource::new(&m.rendered.segments, &m.streams)).collect();
        let mut items: Vec<Item<'_, '_>> = picked
            .iter()
            .zip(sources.iter_mut())
            .map(|(m, source)| Item { msg: m.outgoing(), source })
            .collect();
        let batch = session.send_many(&mut items);
        drop(items);
        for s in &sources {
            encoded.add(s.encoded);
        }
        if session.is_usable() {
            self.session = Some(session);
        }
        let unsent = batch.unsent.iter().filter_map(|&k| which.get(k).copied()).collect();
        Batch { results: batch.results, unsent }
    }

    /// QUIT and close the kept session, if any.
    pub fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.quit();
        }
    }
}

#[cfg(test)]
mod tests;
