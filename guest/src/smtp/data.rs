//! The data phase of a mail transaction (RFC 5321 4.1.1.4 DATA and 4.5.2
//! transparency, RFC 3030 CHUNKING): where the message text comes from
//! ([`Source`]) and how it goes to the server ([`DataPhase`]).
//!
//! The strategy is chosen per session from the server's capabilities:
//! `DATA` with dot-stuffing, or `BDAT` chunks of at most [`BDAT_CHUNK`]
//! octets sent as they are. The session decides when each write goes out
//! and which replies it waits for (see `session/batch.rs`); this module
//! only turns a source into wire bytes.

use super::command::{Bdat, Data};
use super::dot::DotStuffer;
use super::ehlo::Capabilities;
use super::error::{SmtpError, Stage};
use super::session::{Direction, Transport};

/// How much message data is gathered before one write. Large enough that a
/// typical message is one write with its terminator; small enough to bound
/// memory when streaming.
pub const DATA_CHUNK: usize = 64 * 1024;

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

/// The largest BDAT chunk (RFC 3030 2), and so the most message data held
/// in memory while a message streams. A message up to this size goes as
/// one `BDAT n LAST`, in the same write as its MAIL and RCPT commands.
pub const BDAT_CHUNK: usize = 1 << 20;

/// How the message text reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPhase {
    /// `DATA`, a `354`, the text dot-stuffed, then `CRLF.CRLF`.
    DotStuffed,
    /// `BDAT` chunks (RFC 3030), no `354` to wait for and no dot-stuffing.
    /// Chosen when the server offers CHUNKING together with PIPELINING:
    /// BDAT's gain is that the whole transaction is one pipelined write.
    Chunked,
}

impl DataPhase {
    /// The strategy for a server with these capabilities.
    pub fn choose(caps: &Capabilities) -> Self {
        if caps.chunking && caps.pipelining { Self::Chunked } else { Self::DotStuffed }
    }

    /// The command that ends the transaction's plan and opens the data
    /// phase, if the strategy has one (BDAT has not: its chunks are
    /// commands of their own).
    pub fn opener(self) -> Option<Data> {
        match self {
            Self::DotStuffed => Some(Data),
            Self::Chunked => None,
        }
    }
}

/// Cuts a message into BDAT chunks (RFC 3030 2) of at most [`BDAT_CHUNK`]
/// octets: the message's bytes as they are, each chunk after its command.
pub struct Chunker<'s> {
    source: &'s mut dyn Source,
    /// Read from the source, not yet sent.
    pending: Vec<u8>,
    /// The source gave its last piece.
    ended: bool,
    /// Message octets handed out so far.
    sent: u64,
}

impl<'s> Chunker<'s> {
    /// Nothing read yet.
    pub fn new(source: &'s mut dyn Source) -> Self {
        Self { source, pending: Vec::new(), ended: false, sent: 0 }
    }

    /// Append the next chunk, its `BDAT` command line and then its bytes,
    /// to `out`; the command is returned. The chunk is [`BDAT_CHUNK`]
    /// octets, or what is left when the source has ended (then `LAST`).
    pub fn next(&mut self, out: &mut Vec<u8>) -> Result<Bdat, SmtpError> {
        let mut piece = Vec::new();
        while !self.ended && self.pending.len() < BDAT_CHUNK {
            piece.clear();
            self.ended = self.source.next_chunk(&mut piece)? == Chunk::Last;
            self.pending.extend_from_slice(&piece);
        }
        let size = self.pending.len().min(BDAT_CHUNK);
        let command = Bdat { size: size as u64, last: self.ended && size == self.pending.len() };
        out.extend_from_slice(command.to_string().as_bytes());
        out.extend(self.pending.drain(..size));
        self.sent += size as u64;
        Ok(command)
    }

    /// Message octets handed out so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
}

/// Stream the message dot-stuffed in writes of about [`DATA_CHUNK`]; the last
/// piece goes in one write with the terminator and then `trailer`: the next
/// message's commands, which RFC 2920 3.1 lets follow the end of data in the
/// same group. `wbuf` is the session's write buffer, reused from message to
/// message.
pub fn dot_stuffed<T: Transport>(
    io: &mut T,
    wbuf: &mut Vec<u8>,
    source: &mut dyn Source,
    trailer: &[u8],
) -> Result<(), SmtpError> {
    let mut stuffer = DotStuffer::new();
    let mut chunk = Vec::with_capacity(DATA_CHUNK);
    let mut sent: u64 = 0;
    wbuf.clear();
    loop {
        chunk.clear();
        let kind = source.next_chunk(&mut chunk)?;
        match kind {
            Chunk::Base64 => stuffer.encode_base64_lines(&chunk, wbuf),
            Chunk::Text | Chunk::Last => stuffer.encode(&chunk, wbuf),
        }
        sent += chunk.len() as u64;
        if kind == Chunk::Last {
            stuffer.finish(wbuf);
            if io.verbose() {
                io.transcript(Direction::Client, &format!("<{sent} octets of message data>"));
                io.transcript(Direction::Client, ".");
            }
            // With no trailer, a failure here means the transport did not
            // take all of the last chunk, so the terminator never left:
            // nothing was delivered, and a retry is safe. With a trailer
            // (the next message's envelope, pipelined) the part that failed
            // may have come after the terminator: the message may have been
            // delivered. (A failure of an earlier chunk is before it.)
            wbuf.extend_from_slice(trailer);
            let r = io.send(wbuf, Stage::DataBlock);
            wbuf.clear();
            return match r {
                Err(SmtpError::Connect(m) | SmtpError::Tls(m)) if !trailer.is_empty() => Err(SmtpError::OutcomeUnknown(
                    format!("the write that ended the data failed ({m}); the message may have been delivered"),
                )),
                Err(SmtpError::Timeout(_)) if !trailer.is_empty() => Err(SmtpError::OutcomeUnknown(
                    "the write that ended the data timed out; the message may have been delivered".into(),
                )),
                r => r,
            };
        }
        if wbuf.len() >= DATA_CHUNK {
            io.send(wbuf, Stage::DataBlock)?;
            wbuf.clear();
        }
    }
}
