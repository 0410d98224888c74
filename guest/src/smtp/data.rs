//! The data phase of a mail transaction (RFC 5321 4.1.1.4 DATA and 4.5.2
//! transparency): where the message text comes from ([`Source`]) and how it
//! goes to the server ([`DataPhase`]).
//!
//! The strategy is chosen per transaction. Today there is one, DATA with
//! dot-stuffing; BDAT chunks (RFC 3030 CHUNKING) will be a second variant of
//! [`DataPhase`], chosen by [`DataPhase::choose`] and sent by a function of
//! its own here.

use super::command::Data;
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

/// How the message text reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPhase {
    /// `DATA`, a `354`, the text dot-stuffed, then `CRLF.CRLF`.
    DotStuffed,
}

impl DataPhase {
    /// The strategy for a server with these capabilities.
    pub fn choose(_caps: &Capabilities) -> Self {
        Self::DotStuffed
    }

    /// The command that ends the transaction's plan and opens the data
    /// phase, if the strategy has one (BDAT will not: its chunks are
    /// commands of their own).
    pub fn opener(self) -> Option<Data> {
        match self {
            Self::DotStuffed => Some(Data),
        }
    }

    /// Send the whole message from `source`. `wbuf` is the session's write
    /// buffer, reused from message to message.
    pub fn send<T: Transport>(self, io: &mut T, wbuf: &mut Vec<u8>, source: &mut dyn Source) -> Result<(), SmtpError> {
        match self {
            Self::DotStuffed => dot_stuffed(io, wbuf, source),
        }
    }
}

/// Stream the message dot-stuffed in writes of about [`DATA_CHUNK`]; the last
/// piece goes in one write with the terminator.
fn dot_stuffed<T: Transport>(io: &mut T, wbuf: &mut Vec<u8>, source: &mut dyn Source) -> Result<(), SmtpError> {
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
            // A failure here means the transport did not take all of the
            // last chunk, so the terminator never left: nothing was
            // delivered, and a retry is safe. Only a failure while waiting
            // for the reply to the dot leaves the outcome unknown.
            let r = io.send(wbuf, Stage::DataBlock);
            wbuf.clear();
            return r;
        }
        if wbuf.len() >= DATA_CHUNK {
            io.send(wbuf, Stage::DataBlock)?;
            wbuf.clear();
        }
    }
}
