//! Many messages over one session, each reply tied to its own message:
//! cross-message pipelining (RFC 2920 3.1) and BDAT chunks (RFC 3030).
//!
//! The state machine, chosen from the server's EHLO:
//!
//! - **No PIPELINING**: one command per turn, message after message
//!   ([`Session::send_one`]).
//! - **PIPELINING** (DATA): a message's MAIL FROM, RCPT TO and DATA go in
//!   one write (after RSET when an earlier transaction may be open). After
//!   its `354`, its text, the final dot *and the next message's* MAIL FROM,
//!   RCPT TO and DATA go in the next write (RFC 2920 3.1: message content
//!   may open a group; the dot ends the transaction whatever its reply, RFC
//!   5321 4.1.1.4, so no RSET is needed). The replies come back in
//!   that order: the dot's, which settles this message, then the next
//!   message's envelope replies. One round trip per message.
//! - **PIPELINING and CHUNKING** (BDAT): a message of at most
//!   [`BDAT_CHUNK`](crate::smtp::data::BDAT_CHUNK) octets is one write (RSET, MAIL FROM, RCPT TO,
//!   `BDAT n LAST` and its bytes; no `354`, no dot-stuffing), and up to
//!   [`MAX_IN_FLIGHT`] messages are written before the oldest one's replies
//!   are read. Whole messages written ahead coalesce into one write
//!   ([`MAX_QUEUED`]), sent just before a read has to wait for the network.
//!   A larger message streams in chunks, one chunk's reply outstanding; a 4xx/5xx to a chunk stops the message (RFC 3030 4) and
//!   the next transaction starts with RSET. A read that has waited a
//!   while with nothing to write sends the next message's RSET early
//!   ([`Session::receive`]): it carries the ACK that the server's next
//!   reply may be waiting for, and its reply, which comes after those of
//!   the messages written before it, is passed over.
//!
//! Replies are read strictly in the order their commands were written, so
//! the n-th reply belongs to the n-th command; a message's result comes
//! from its own replies only ([`evaluate`] and [`judge`]).
//!
//! When the connection breaks or the server says `421` in the middle:
//! - a message whose end of data (the dot, or `BDAT LAST`) went out and
//!   whose final reply did not come back has outcome unknown; so has every
//!   whole BDAT message of a coalesced write that failed, since part of
//!   that write may have reached the server;
//! - a message none of whose data was completed (its envelope was written,
//!   or nothing) was not delivered: it is *unsent* ([`Batch::unsent`]), with
//!   a `connect` or `timeout` error, and may go again on a new session;
//! - so is every message written after a `421`: the server closed without
//!   reading it;
//! - messages settled before are settled: their results stand.

use super::*;
use crate::smtp::command::Bdat;
use crate::smtp::data::Chunker;
use std::collections::VecDeque;

/// Messages written ahead of their replies under BDAT: the most whose
/// outcome becomes unknown when the connection breaks, and a bound on the
/// replies left unread (a few hundred octets, far below any socket buffer,
/// so the server is never stuck writing replies nobody reads).
pub const MAX_IN_FLIGHT: usize = 8;

/// How long a read of a BDAT batch's replies waits, with nothing to write,
/// before it sends the next message's RSET early to carry our ACK
/// ([`Session::receive`]): longer than the server takes to answer a
/// message it is busy with (about 1 ms for Postfix on loopback), and much
/// shorter than the delayed-ACK timer (40 ms) that a server's reply held
/// back by Nagle waits for.
pub const NUDGE_AFTER_MS: u64 = 5;

/// Whole BDAT messages written ahead are coalesced into one write of about
/// this many octets at most (it is flushed once it reaches this size, and
/// before any wait for a reply): a pipeline refill is one write, so no
/// small write waits for the peer's ACK behind another (Nagle, RFC 896;
/// wasi:sockets cannot set `TCP_NODELAY`). Bounds the memory a batch holds
/// beyond one [`BDAT_CHUNK`](crate::smtp::data::BDAT_CHUNK).
pub const MAX_QUEUED: usize = 256 * 1024;

/// One message of a batch: its envelope and where its text comes from.
pub struct Item<'m, 's> {
    /// The envelope and what the server must support.
    pub msg: Outgoing<'m>,
    /// The message text, read once.
    pub source: &'s mut dyn Source,
}

/// What became of a batch.
#[derive(Debug)]
pub struct Batch {
    /// One result per item, in order.
    pub results: Vec<Result<TransactionResult, SmtpError>>,
    /// The items that were not delivered because the connection was lost
    /// before their data was complete (their results are `connect` or
    /// `timeout` errors): they may be sent again on a new session.
    pub unsent: Vec<usize>,
}

/// Results as they are settled, and whether the connection still works.
struct Tally {
    slots: Vec<Option<Result<TransactionResult, SmtpError>>>,
    unsent: Vec<usize>,
    /// Why the connection can carry nothing more, once it cannot.
    lost: Option<String>,
    /// The server said `421`: what was written after it went unread.
    closed: bool,
}

impl Tally {
    fn new(n: usize) -> Self {
        Self { slots: (0..n).map(|_| None).collect(), unsent: Vec::new(), lost: None, closed: false }
    }

    /// Settle message `i`. A `connect` or `timeout` error means its data
    /// never completed (after the end of data they become outcome unknown,
    /// see [`after_dot`]): it is unsent. An error that ends the session
    /// ends the batch's use of the connection.
    fn settle(&mut self, i: usize, result: Result<TransactionResult, SmtpError>) {
        if let Err(e) = &result {
            if matches!(e, SmtpError::Connect(_) | SmtpError::Timeout(_)) {
                self.unsent.push(i);
            }
            if e.kills_session() {
                self.lose(e.to_string());
            }
            if let SmtpError::Rejected { reply, .. } = e
                && reply.code == 421
            {
                self.closed = true;
            }
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Some(result);
        }
    }

    /// The connection can carry nothing more.
    fn lose(&mut self, why: String) {
        self.lost.get_or_insert(why);
    }

    /// Message `i` is not sent: the connection was lost before it.
    fn not_sent(&mut self, i: usize) {
        let why = self.lost.as_deref().unwrap_or("the session ended");
        let e = SmtpError::Connect(format!("not sent: the connection was lost earlier in the batch ({why})"));
        self.settle(i, Err(e));
    }

    fn finish(self) -> Batch {
        let results = self
            .slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Err(SmtpError::Protocol("the batch left this message unsettled".into()))))
            .collect();
        Batch { results, unsent: self.unsent }
    }
}

/// A BDAT message written whole, whose replies are not read yet.
struct Flight<'m> {
    index: usize,
    plan: Vec<Step<'m>>,
    last: Bdat,
    /// RSETs written after this message and before the next one (one at
    /// most): their replies come right after this message's.
    nudges_after: usize,
}

impl<T: Transport> Session<T> {
    /// Send every message of `items` over this session, pipelined across
    /// messages when the server allows it (see the module's notes). Each
    /// item gets its own result; a message the server cannot take (size,
    /// 8-bit, SMTPUTF8) is refused before anything of it is sent. After a
    /// batch that lost the connection the session is not usable.
    pub fn send_many(&mut self, items: &mut [Item<'_, '_>]) -> Batch {
        let mut tally = Tally::new(items.len());
        let mut order = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.check_fits(&item.msg) {
                Ok(()) => order.push(i),
                Err(e) => tally.settle(i, Err(e)),
            }
        }
        if !self.caps.pipelining {
            self.one_by_one(items, &order, &mut tally);
        } else {
            match DataPhase::choose(&self.caps) {
                DataPhase::DotStuffed => self.data_pipelined(items, &order, &mut tally),
                DataPhase::Chunked => self.bdat_pipelined(items, &order, &mut tally),
            }
        }
        if tally.lost.is_some() {
            self.broken = true;
        }
        tally.finish()
    }

    /// No PIPELINING: each message in its own turns.
    fn one_by_one(&mut self, items: &mut [Item<'_, '_>], order: &[usize], tally: &mut Tally) {
        for &i in order {
            if tally.lost.is_some() {
                tally.not_sent(i);
                continue;
            }
            let item = &mut items[i];
            let result = self.send_one(&item.msg, &mut *item.source);
            if self.broken {
                tally.lose("the data phase failed part way".into());
            }
            tally.settle(i, result);
        }
    }

    /// Read the replies to a pipelined `plan`, in order. A `421` ends the
    /// reading: the server is closing and the rest will not come.
    fn read_replies(&mut self, plan: &[Step<'_>]) -> Result<Vec<Reply>, SmtpError> {
        let mut replies = Vec::with_capacity(plan.len());
        for step in plan {
            let reply = self.read_reply(step.stage())?;
            let closing = reply.code == 421;
            replies.push(reply);
            if closing {
                break;
            }
        }
        Ok(replies)
    }

    /// PIPELINING with DATA: one round trip per message, the end of each
    /// message's data carrying the next message's envelope.
    fn data_pipelined(&mut self, items: &mut [Item<'_, '_>], order: &[usize], tally: &mut Tally) {
        let mut written: Option<Vec<Step<'_>>> = None;
        for (k, &i) in order.iter().enumerate() {
            if tally.lost.is_some() {
                tally.not_sent(i);
                continue;
            }
            let plan = match written.take() {
                Some(plan) => plan,
                None => {
                    let plan = self.plan(&items[i].msg, self.dirty, DataPhase::DotStuffed);
                    self.dirty = true;
                    if let Err(e) = self.write(&plan) {
                        tally.settle(i, Err(e));
                        continue;
                    }
                    plan
                }
            };
            let replies = match self.read_replies(&plan) {
                Ok(replies) => replies,
                Err(e) => {
                    tally.settle(i, Err(e));
                    continue;
                }
            };
            // The server may have said 354 to a DATA that must not carry a
            // message (no recipient accepted): end it empty (RFC 2920 3.1).
            let data_open = replies.len() == plan.len() && replies.last().is_some_and(|r| r.code == 354);
            let (accepted, rejected) = match evaluate(&plan, replies) {
                Ok(envelope) => envelope,
                Err(e) => {
                    if data_open
                        && !e.kills_session()
                        && let Err(abort) = self.abort_data()
                    {
                        tally.lose(abort.to_string());
                    }
                    tally.settle(i, Err(e));
                    continue;
                }
            };
            // No RSET before it: the dot ends this transaction, whatever its
            // reply, and clears the server's buffers (RFC 5321 4.1.1.4).
            let next = order.get(k + 1).map(|&j| self.plan(&items[j].msg, false, DataPhase::DotStuffed));
            let trailer = next.as_deref().map(encode).unwrap_or_default();
            if let Err(e) = data::dot_stuffed(&mut self.io, &mut self.wbuf, &mut *items[i].source, trailer.as_bytes()) {
                // The server is inside DATA and reads anything as text.
                self.broken = true;
                tally.lose("the data phase failed part way".into());
                tally.settle(i, Err(e));
                continue;
            }
            if let Some(plan) = &next {
                self.show(plan);
            }
            let reply = self.read_reply(Stage::DataEnd);
            if reply.is_ok() && next.is_none() {
                // The dot's reply, whatever it says, ended the transaction,
                // and none follows: the next one needs no RSET.
                self.dirty = false;
            }
            let result = match reply {
                Ok(reply) if reply.is_positive() => Ok(TransactionResult { accepted, rejected, reply }),
                Ok(reply) => Err(failure(Stage::DataEnd, reply, rejected)),
                Err(e) => Err(after_dot(e)),
            };
            tally.settle(i, result);
            written = next;
        }
    }

    /// PIPELINING with CHUNKING: whole messages written ahead, up to
    /// [`MAX_IN_FLIGHT`]; large ones streamed alone.
    fn bdat_pipelined(&mut self, items: &mut [Item<'_, '_>], order: &[usize], tally: &mut Tally) {
        let mut flights: VecDeque<Flight<'_>> = VecDeque::with_capacity(MAX_IN_FLIGHT);
        for &i in order {
            if tally.lost.is_some() {
                tally.not_sent(i);
                continue;
            }
            let plan = self.plan(&items[i].msg, self.dirty, DataPhase::Chunked);
            let mut chunker = Chunker::new(&mut *items[i].source);
            let mut wire = std::mem::take(&mut self.wbuf);
            wire.clear();
            wire.extend_from_slice(encode(&plan).as_bytes());
            let first = chunker.next(&mut wire);
            let first = match first {
                Ok(first) => first,
                Err(e) => {
                    // Nothing of it was written.
                    self.wbuf = wire;
                    tally.settle(i, Err(e));
                    continue;
                }
            };
            self.dirty = true;
            let stage = plan.first().map_or(Stage::MailFrom, Command::stage);
            if first.last {
                // Whole: it joins the queued write; its end of data counts
                // as gone from here on (a failed flush may have carried it).
                self.queue(&wire, stage);
                self.wbuf = wire;
                self.show(&plan);
                self.show_chunk(first);
                // An RSET sent early since the newest flight answers after it.
                let nudged = std::mem::take(&mut self.nudged);
                match flights.back_mut() {
                    Some(newest) => newest.nudges_after += nudged,
                    None => self.owed += nudged,
                }
                flights.push_back(Flight { index: i, plan, last: first, nudges_after: 0 });
                if self.queued.len() >= MAX_QUEUED
                    && let Err(e) = self.flush_queued()
                {
                    tally.lose(format!("a write failed: {e}"));
                }
                // Land the oldest once the window is full. Its replies may
                // be read already; the messages queued meanwhile go out in
                // one write just before the next read has to wait, and
                // that write carries the ACK of the replies read so far.
                if flights.len() >= MAX_IN_FLIGHT
                    && let Some(f) = flights.pop_front()
                {
                    self.land_flight(f, flights.is_empty(), true, tally);
                }
                continue;
            }
            // Drained without sending an RSET early: this message's own,
            // if it needs one, is in `wire` already.
            while let Some(f) = flights.pop_front() {
                self.land_flight(f, flights.is_empty(), false, tally);
            }
            if let Err(e) = self.flush_unless_ended(tally) {
                tally.lose(format!("a write failed: {e}"));
            }
            if tally.lost.is_some() || tally.closed {
                self.wbuf = wire;
                tally.not_sent(i);
                continue;
            }
            let sent = self.io.send(&wire, stage);
            self.wbuf = wire;
            if let Err(e) = sent {
                // The write did not complete, so the chunk's end never left.
                tally.settle(i, Err(e));
                tally.lose("a write failed".into());
                continue;
            }
            self.show(&plan);
            self.show_chunk(first);
            let result = self.stream_chunks(&plan, first, &mut chunker);
            tally.settle(i, result);
        }
        while let Some(f) = flights.pop_front() {
            self.land_flight(f, flights.is_empty(), true, tally);
        }
        // Every flight that read its replies flushed what was queued before
        // it; after a 421 the rest were not read, and what they queued must
        // not go out now (they are reported not sent).
        if let Err(e) = self.flush_unless_ended(tally) {
            tally.lose(format!("a write failed: {e}"));
        }
    }

    /// Flush what is queued, unless the connection is lost or the server
    /// said 421: then it is dropped, never written.
    fn flush_unless_ended(&mut self, tally: &Tally) -> Result<(), SmtpError> {
        if tally.lost.is_some() || tally.closed {
            self.queued.clear();
            return Ok(());
        }
        self.flush_queued()
    }

    fn show_chunk(&mut self, chunk: Bdat) {
        self.show(&[chunk]);
        if self.io.verbose() {
            self.io.transcript(Direction::Client, &format!("<{} octets of message data>", chunk.size));
        }
    }

    /// Land `f` (the `newest` flight when none was written after it). With
    /// `nudge`, while the connection stands, a read that waits with nothing
    /// to write sends the next message's RSET early ([`Session::receive`]).
    /// The replies to the RSETs written after `f` come next, and are passed
    /// over ([`Session::read_reply`]).
    fn land_flight(&mut self, f: Flight<'_>, newest: bool, nudge: bool, tally: &mut Tally) {
        let nudges_after = f.nudges_after;
        self.nudging = nudge && tally.lost.is_none() && !tally.closed;
        self.land(f, tally);
        self.nudging = false;
        self.owed += nudges_after;
        if newest {
            self.owed += std::mem::take(&mut self.nudged);
        }
    }

    /// Read a written BDAT message's replies and settle it. Its last chunk
    /// went out, so a reply that does not come leaves its outcome unknown.
    fn land(&mut self, f: Flight<'_>, tally: &mut Tally) {
        if tally.closed {
            tally.not_sent(f.index);
            return;
        }
        let result = self.land_replies(&f.plan, f.last);
        tally.settle(f.index, result);
    }

    fn land_replies(&mut self, plan: &[Step<'_>], last: Bdat) -> Result<TransactionResult, SmtpError> {
        let replies = self.read_replies(plan).map_err(after_dot)?;
        if replies.last().is_some_and(|r| r.code == 421) {
            // The server is closing; `evaluate` turns the 421 into the error.
            return evaluate(plan, replies).and(Err(SmtpError::Protocol("a 421 reply did not end the transaction".into())));
        }
        // A refused envelope still gets its reply to BDAT (a 5xx), read here
        // so the next reply belongs to the next message.
        let reply = self.read_reply(last.stage()).map_err(after_dot)?;
        let (accepted, rejected) = evaluate(plan, replies)?;
        if !reply.is_positive() {
            return Err(failure(Stage::DataEnd, reply, rejected));
        }
        Ok(TransactionResult { accepted, rejected, reply })
    }

    /// A message over [`BDAT_CHUNK`](crate::smtp::data::BDAT_CHUNK) octets: its envelope and first chunk are
    /// written; write the rest, reading each chunk's reply after the next
    /// chunk is written. A failed chunk, or a failed source, stops the
    /// message between chunks (RFC 3030 4), which leaves the session usable:
    /// the next transaction starts with RSET.
    fn stream_chunks(
        &mut self,
        plan: &[Step<'_>],
        first: Bdat,
        chunker: &mut Chunker<'_>,
    ) -> Result<TransactionResult, SmtpError> {
        let mut unread: VecDeque<Bdat> = VecDeque::from([first]);
        let mut envelope: Option<Recipients> = None;
        let mut plan_read = false;
        let mut failed: Option<SmtpError> = None;
        let mut writing = true;
        let mut last_reply = None;
        loop {
            if writing {
                let mut wire = std::mem::take(&mut self.wbuf);
                wire.clear();
                let next = chunker.next(&mut wire);
                let sent = next.as_ref().map_err(Clone::clone).and_then(|c| self.io.send(&wire, c.stage()));
                self.wbuf = wire;
                match (next, sent) {
                    (Ok(chunk), Ok(())) => {
                        self.show_chunk(chunk);
                        writing = !chunk.last;
                        unread.push_back(chunk);
                    }
                    (Ok(_), Err(e)) => {
                        // Not all of the chunk left; the end of data never did.
                        self.broken = true;
                        return Err(e);
                    }
                    (Err(e), _) => {
                        failed = Some(e);
                        writing = false;
                    }
                }
            }
            // Once the last chunk is out, a reply that does not come leaves
            // the outcome unknown.
            let ended = unread.iter().any(|c| c.last);
            let lost = |e: SmtpError| if ended { after_dot(e) } else { e };
            if !plan_read {
                plan_read = true;
                let replies = self.read_replies(plan).map_err(lost)?;
                match evaluate(plan, replies) {
                    Ok(e) => envelope = Some(e),
                    Err(e) if e.kills_session() => return Err(e),
                    Err(e) => {
                        failed.get_or_insert(e);
                        writing = false;
                    }
                }
            }
            let keep = usize::from(writing);
            while unread.len() > keep {
                let Some(chunk) = unread.pop_front() else { break };
                let reply = self.read_reply(chunk.stage()).map_err(lost)?;
                if reply.is_positive() {
                    if chunk.last {
                        last_reply = Some(reply);
                    }
                } else if failed.is_none() {
                    let rejected = envelope.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
                    failed = Some(failure(chunk.stage(), reply, rejected));
                    writing = false;
                }
                if let Some(e) = failed.take_if(|e| e.kills_session()) {
                    return Err(e);
                }
            }
            if !writing && unread.is_empty() {
                break;
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        match (envelope, last_reply) {
            (Some((accepted, rejected)), Some(reply)) => Ok(TransactionResult { accepted, rejected, reply }),
            _ => Err(SmtpError::Protocol("BDAT ended without a reply to its last chunk".into())),
        }
    }
}
