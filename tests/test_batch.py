"""`sender.send-many`: a plugin's batch goes through the policy, the
write-ahead spool and its `attempt` record message by message, then to the
relay as one pipelined batch (guest/src/smtp/session/batch.rs), and every
message gets its own outcome record from its own replies.

Against scripted servers (byte-exact, with a second connection where the
mailer must open one), and against a real, strict Postfix smtpd
(servers.PostfixSmtpd): 200 messages in one session, with BDAT when
CHUNKING is offered and with DATA when it is not, and the same with one
`send` call per message.

- PIPELINING without CHUNKING: the end of a message's data carries the next
  message's MAIL FROM, RCPT TO and DATA (RFC 2920 3.1), with no RSET (the
  dot ends the transaction, RFC 5321 4.1.1.4); a message whose envelope
  fails sends no text, and the next one's envelope goes out fresh, after
  RSET.
- PIPELINING and CHUNKING: each message is one write (RSET, MAIL FROM, RCPT
  TO, `BDAT n LAST` and its n octets), several written before any reply.
- No PIPELINING: one command per turn, message after message.
- A break: a message whose end of data went out unanswered is outcome
  unknown (kept, not resent); messages whose data never completed (or that
  were written after a 421) are unsent and go once more on a new
  connection, which `BatchServer` (ScriptedServer plus `Reconnect`) serves;
  with the relay gone by then they are kept as `connect` errors.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from cli import BULK_TIMEOUT_S, assert_exit, describe, index_of, transcript
from scripted import (STEP_TIMEOUT_S, Close, Expect, ReadData, Run, ScriptError,
                      ScriptedServer, Send, Serve)
from test_deadletter import letters, pending
from test_plugins import (EXIT_OK, EXIT_PLUGIN_ERROR, EXIT_STOPPED, check_write_ahead, counts, outcomes,
                          policy, read_audit, relay_table, run_plugin, run_report, write_config)
from test_postfix import assert_clean_session, content_command

TO = "sink@example.com"
# The bulk plugin's body size in the scripted tests.
SIZE = 2048
# Messages in the Postfix volume tests: several of the host's batches.
VOLUME = 200
# The host's batches (plugin/sender.rs MAX_BATCH_MESSAGES).
MAX_BATCH_MESSAGES = 64
# `timeout_secs` of the relay in the scripted tests: a script that goes
# wrong shows up as a timeout, not as a hung test.
RELAY_TIMEOUT_S = 5
# How long a scripted server answers the end of a session.
HOLD_S = 20

GREETING = b"220 fake.example ESMTP\r\n"
EHLO_PIPELINING = b"250-fake.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_CHUNKING = (b"250-fake.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n"
                 b"250 ENHANCEDSTATUSCODES\r\n")

OK_MAIL = b"250 2.1.0 OK\r\n"
OK_RCPT = b"250 2.1.5 OK\r\n"
OK_RSET = b"250 2.0.0 reset\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"


def queued(n: int) -> bytes:
    return b"250 2.0.0 queued as M%d\r\n" % n


# ---------------------------------------------------------------------------
# A scripted server that reads BDAT and can take a second connection
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ReadBdat:
    """Read a `BDAT <n> [LAST]` line and exactly n octets after it; the
    size, LAST and the octets are kept in `bdat`."""
    timeout: float = STEP_TIMEOUT_S


@dataclass(frozen=True)
class Reconnect:
    """Close this connection and accept the next one (the script goes on
    against it)."""
    timeout: float = 30.0


@dataclass(frozen=True)
class StopListening:
    """Close the listening socket: a new connection is refused."""


@dataclass
class BatchServer(ScriptedServer):
    """ScriptedServer plus ReadBdat, Reconnect and StopListening.
    `connections` counts the accepted connections and `connection_offsets`
    says where each one's bytes start in `received()`."""
    bdat: list[tuple[int, bool, bytes]] = field(default_factory=list)
    connections: int = 0
    connection_offsets: list[int] = field(default_factory=list)

    def _accept(self):
        conn = super()._accept()
        if conn is not None:
            self.connections += 1
            self.connection_offsets.append(self._received_len())
        return conn

    def _play(self, step) -> None:
        if isinstance(step, ReadBdat):
            self._read_bdat(step)
        elif isinstance(step, Reconnect):
            self._conn.close()
            self._buffer = b""
            saved, self.accept_timeout = self.accept_timeout, step.timeout
            try:
                conn = self._accept()
            finally:
                self.accept_timeout = saved
            if conn is None:
                raise ScriptError("the client did not connect again")
            self._conn = conn
        elif isinstance(step, StopListening):
            self._listener.close()
        else:
            super()._play(step)

    def _fill(self, deadline: float, enough, what: str) -> None:
        while not enough():
            try:
                data = self._recv(deadline)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise ScriptError(f"timed out waiting for {what}")
                continue
            if not data:
                raise ScriptError(f"client closed while {what} was expected")
            self._buffer += data

    def _read_bdat(self, step: ReadBdat) -> None:
        deadline = time.monotonic() + step.timeout
        self._fill(deadline, lambda: b"\n" in self._buffer, "BDAT")
        line, _, self._buffer = self._buffer.partition(b"\n")
        m = re.fullmatch(rb"BDAT (\d+)( LAST)?\r", line, re.IGNORECASE)
        if not m:
            raise ScriptError(f"expected 'BDAT <n> [LAST]', got {line!r}")
        size = int(m[1])
        self._fill(deadline, lambda: len(self._buffer) >= size, f"{size} octets of BDAT")
        self.bdat.append((size, m[2] is not None, self._buffer[:size]))
        self._buffer = self._buffer[size:]

    def connection_waiting(self, wait: float = 0.5) -> bool:
        """After the script: whether another connection came in (it waits
        in the listener's backlog, unaccepted)."""
        self._listener.settimeout(wait)
        try:
            conn, _ = self._listener.accept()
        except (socket.timeout, OSError):
            return False
        conn.close()
        return True

    def connection_bytes(self, n: int) -> bytes:
        """What the client sent over its n-th connection (from 0)."""
        offsets = self.connection_offsets + [None]
        return self.received()[offsets[n]:offsets[n + 1]]

    def chunk_at(self, offset: int) -> tuple[int, bytes]:
        """The recorded read (start offset, bytes) holding stream offset
        `offset`: bytes in one read arrived together."""
        start = 0
        with self._lock:
            for _, data in self.chunks:
                if start <= offset < start + len(data):
                    return start, data
                start += len(data)
        raise AssertionError(f"offset {offset} beyond the {start} octets received")


@pytest.fixture
def batch_server():
    """Factory: `batch_server(steps) -> BatchServer`, stopped at teardown."""
    started: list[BatchServer] = []

    def _start(steps) -> BatchServer:
        server = BatchServer(list(steps))
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.stop()


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------

def bulk_config(tmp_path: Path, server, *, max_messages: int = 1000) -> tuple[Path, Path, Path]:
    """A config for the bulk plugin through `server`; returns (config,
    audit log, dead-letter folder)."""
    audit, folder = tmp_path / "audit.jsonl", tmp_path / "dead"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, dead_letter=folder,
                          relay=relay_table(server, timeout_secs=RELAY_TIMEOUT_S),
                          plugins={"bulk": policy("bulk", max_messages=max_messages)})
    return config, audit, folder


def run_bulk(run, plugins, config: Path, count: int, *, one_by_one: bool = False,
             size: int = SIZE, timeout: float = 60):
    """`wasmail run bulk --json -v` sending `count` messages to TO."""
    spec = {"count": count, "to": TO, "size": size}
    if one_by_one:
        spec["one_by_one"] = True
    return run_plugin(run, plugins, "bulk", config=config, input_text=json.dumps(spec),
                      args=["-v"], timeout=timeout)


def split_audit(audit: Path, count: int, *, batched: bool = True) -> tuple[list[dict], list[dict]]:
    """The `count` attempts (written ahead, in order) and the outcome record
    of each, in the attempts' order; the log holds nothing else. `batched`:
    all of them went in one send-many, so all attempts come first."""
    records = read_audit(audit)
    check_write_ahead(records)
    attempts = [r for r in records if r["outcome"] == "attempt"]
    assert len(attempts) == count, records
    by_id = {r["id"]: r for r in outcomes(records)}
    assert len(by_id) == len(outcomes(records)) == count, records
    if batched:
        # Batches of at most MAX_BATCH_MESSAGES: each written ahead whole
        # (its attempts) before any of it went to the relay (its outcomes).
        kinds = ["attempt" if r["outcome"] == "attempt" else "outcome" for r in records]
        runs = [(k, len(list(g))) for k, g in itertools.groupby(kinds)]
        assert [k for k, _ in runs] == ["attempt", "outcome"] * (len(runs) // 2), runs
        assert all(0 < n <= MAX_BATCH_MESSAGES for _, n in runs), runs
        assert all(runs[i][1] == runs[i + 1][1] for i in range(0, len(runs), 2)), runs
    else:
        # One send call per message: its attempt, then its outcome.
        assert [r["outcome"] for r in records] == ["attempt", "accepted"] * count, records
    return attempts, [by_id[a["id"]] for a in attempts]


def letters_by_message_id(folder: Path) -> dict[str, dict]:
    return {m["message_id"]: m for m in letters(folder)}


def assert_kept(record: dict, folder: Path) -> dict:
    """The outcome record points at a kept letter in `folder`, named after
    the spool id; returns the letter's `.json`."""
    assert record.get("dead_letter"), f"not kept: {record}"
    eml = Path(record["dead_letter"])
    assert eml.parent == folder and eml.suffix == ".eml" and eml.is_file(), record
    assert eml.stem == record["id"], record
    meta = json.loads(eml.with_suffix(".json").read_text())
    assert meta["message_id"] == record["message_id"], (meta, record)
    return meta


def subject_of(data: bytes) -> Optional[str]:
    m = re.search(rb"^Subject: (.*)\r$", data, re.MULTILINE)
    return m[1].decode() if m else None


def command_lines(stream: bytes) -> list[str]:
    """The command lines of a BDAT session's bytes, BDAT payloads skipped."""
    lines, pos = [], 0
    while pos < len(stream):
        end = stream.index(b"\r\n", pos)
        line = stream[pos:end].decode("ascii")
        lines.append(line)
        pos = end + 2
        m = re.fullmatch(r"BDAT (\d+)( LAST)?", line, re.IGNORECASE)
        if m:
            pos += int(m[1])
    return lines


def verbs(lines: list[str]) -> list[str]:
    return [l.split(" ", 1)[0].split(":", 1)[0].upper() for l in lines]


# ===========================================================================
# 1. PIPELINING without CHUNKING: every reply settles its own message
# ===========================================================================

ENVELOPE = [Expect("MAIL FROM"), Expect("RCPT TO"), Expect("DATA")]
# After a dot: the transaction ended, whatever its reply.
AFTER_DOT = ENVELOPE
# After a transaction that did not reach its end of data.
FRESH_ENVELOPE = [Expect("RSET"), *ENVELOPE]


def test_pipelined_batch_each_message_gets_its_own_outcome(run, plugins, batch_server, tmp_path):
    server = batch_server([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        # Message 1: its envelope in one write.
        *ENVELOPE, Send(OK_MAIL + OK_RCPT + GO_AHEAD),
        # Its text and dot, and message 2's envelope with them, before any
        # reply (the server says nothing until it has read them all).
        ReadData(), *AFTER_DOT,
        # Message 1 queued; message 2's only recipient refused for now, so
        # its DATA fails and no text may follow.
        Send(queued(1) + OK_MAIL + b"452 4.2.2 mailbox full\r\n"
             + b"554 5.5.1 no valid recipients\r\n"),
        # Message 3: its envelope written fresh, after RSET.
        *FRESH_ENVELOPE, Send(OK_RSET + OK_MAIL + OK_RCPT + GO_AHEAD),
        # Its text and dot carry message 4's envelope.
        ReadData(), *AFTER_DOT,
        Send(b"554 5.7.1 rejected\r\n" + OK_MAIL + OK_RCPT + GO_AHEAD),
        # Message 4's text and dot, then the server is gone without a reply.
        ReadData(), Close(),
    ])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 4)

    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert server.connections == 1, describe(proc)
    # Message 4's outcome is unknown: it is not sent again, so the mailer
    # had no reason to connect again.
    assert not server.connection_waiting(), describe(proc)
    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=4, accepted=1, rejected=2, errors=1, kept=2), \
        describe(proc)
    assert "message 2 failed" in report["plugin_error"], report

    attempts, (one, two, three, four) = split_audit(audit, 4)
    assert one["outcome"] == "accepted" and one.get("dead_letter") is None, one
    assert one["reason"].startswith("250 "), one

    assert two["outcome"] == "rejected", two
    assert two["reason"].startswith("rejected: rejected temporarily at rcpt-to: 452 4.2.2"), two
    assert two["rejected"] == [TO], two
    meta = assert_kept(two, folder)
    assert meta["reason"]["kind"] == "rejected" and meta["reason"]["transient"] is True, meta
    assert meta["outcome_unknown"] is False, meta

    assert three["outcome"] == "rejected", three
    assert three["reason"].startswith("rejected: rejected permanently at data-end: 554 5.7.1"), three
    assert three.get("dead_letter") is None, three

    assert four["outcome"] == "error", four
    assert four["reason"].startswith("outcome-unknown: "), four
    meta = assert_kept(four, folder)
    assert meta["outcome_unknown"] is True and meta["reason"]["kind"] == "outcome-unknown", meta

    # Exactly messages 2 and 4 are kept, and the write-ahead spool is empty.
    assert set(letters_by_message_id(folder)) == {two["message_id"], four["message_id"]}
    assert pending(folder) == []

    # The server got the text of messages 1, 3 and 4 (2 sent none), each
    # message's own.
    assert [subject_of(d) for d in server.data] == ["bulk 1/4", "bulk 3/4", "bulk 4/4"], \
        server.received()
    for data in server.data:
        assert data.endswith(b"\r\n.\r\n")
    assert b"bulk 2/4" not in server.received()
    # Cross-message pipelining, where it can be seen: message 1's final dot
    # and message 2's MAIL, RCPT and DATA arrived in one read, and so did
    # message 3's dot and message 4's envelope.
    stream = server.received()
    for k in (0, 1):
        end = server.data_offsets[k] + len(server.data[k])
        start, chunk = server.chunk_at(end - 1)
        after = chunk[end - start:]
        assert re.fullmatch(rb"MAIL FROM:<[^>]+>[^\r\n]*\r\nRCPT TO:<%s>\r\nDATA\r\n"
                            % re.escape(TO.encode()), after), (
            f"message {2 * k + 1}'s dot and the next envelope came apart: {after!r}\n"
            f"{stream!r}")
    # No text went out for message 2: its DATA was followed by message 3's
    # RSET, the only one (a dot needs none after it).
    lines = stream.split(b"\r\n")
    assert lines.count(b"RSET") == 1, stream


def test_pipelined_batch_transcript_shows_the_next_envelope_before_the_dot_reply(
        run, plugins, batch_server, tmp_path):
    """The same pipelining seen in `-v`: message 2's envelope is written
    before the reply to message 1's dot is read."""
    server = batch_server([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        *ENVELOPE, Send(OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), *AFTER_DOT,
        Send(queued(1) + OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), Send(queued(2)),
        Serve(HOLD_S),
    ])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 2)

    assert_exit(proc, EXIT_OK)
    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    lines = transcript(proc.stderr)
    second_mail = index_of(lines, "C", "MAIL FROM", index_of(lines, "C", "MAIL FROM") + 1)
    first_reply = index_of(lines, "S", "250 2.0.0 queued as M1")
    assert second_mail < first_reply, describe(proc)
    assert server.client_sent_line("QUIT")
    assert letters(folder) == [] and pending(folder) == []


def chattr(flag: str, path: Path) -> bool:
    """`chattr +i` / `-i`: an immutable folder takes no new file, even from
    root. False where that is not permitted (no CAP_LINUX_IMMUTABLE)."""
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


def test_a_letter_the_folder_will_not_take_after_delivery_stops_the_run(
        run, plugins, batch_server, tmp_path):
    """Message 1 is delivered; message 2 gets a 451 and must become a
    letter, but the dead-letter folder takes no new file by then: the run
    stops (the host failed), with message 1 recorded as accepted and message
    2 with its reply and why it is not kept, and message 2's bytes stay in
    the spool for `retry`."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not chattr("+i", probe):
        pytest.skip("chattr +i is not permitted here")
    chattr("-i", probe)
    folder = tmp_path / "dead"
    server = batch_server([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        *ENVELOPE, Send(OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), *AFTER_DOT,
        # Both messages are written ahead (pending/ is inside the folder).
        Run(lambda: chattr("+i", folder)),
        Send(queued(1) + OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), Send(b"451 4.3.0 try again later\r\n"),
        Serve(HOLD_S),
    ])
    config, audit, dead = bulk_config(tmp_path, server)
    assert dead == folder
    try:
        proc = run_bulk(run, plugins, config, 2)
    finally:
        chattr("-i", folder)

    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"].startswith("host: the spool could not keep a message"), report
    attempts, (one, two) = split_audit(audit, 2)
    assert one["outcome"] == "accepted" and one["reason"].endswith("M1"), one
    assert two["outcome"] == "rejected", two
    assert "451 4.3.0" in two["reason"] and "the spool could not settle it" in two["reason"], two
    assert two.get("dead_letter") is None, two
    assert letters(folder) == []
    # The batch's spool file stays, message 2 unsettled in it.
    [spool] = pending(folder)
    assert two["message_id"].encode() in spool.read_bytes()
    assert [subject_of(d) for d in server.data] == ["bulk 1/2", "bulk 2/2"], server.received()


# ===========================================================================
# 2. The connection breaks before message 3's data: 3 and 4 are unsent
# ===========================================================================

def first_connection_breaking_at_message_3(then) -> list:
    """Messages 1 and 2 accepted; message 3's envelope, written with
    message 2's dot, is read and the server hangs up without answering it
    (after the `then` steps)."""
    return [
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        *ENVELOPE, Send(OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), *AFTER_DOT,
        Send(queued(1) + OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), *AFTER_DOT,
        Send(queued(2)),
        *then,
        Close(),
    ]


def test_break_before_data_resends_the_unsent_once_on_a_new_connection(
        run, plugins, batch_server, tmp_path):
    server = batch_server([
        *first_connection_breaking_at_message_3([]),
        # The mailer comes back once for messages 3 and 4, in a fresh
        # session (no RSET first).
        Reconnect(),
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        *ENVELOPE, Send(OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), *AFTER_DOT,
        Send(queued(3) + OK_MAIL + OK_RCPT + GO_AHEAD),
        ReadData(), Send(queued(4)),
        Serve(HOLD_S),
    ])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 4)

    assert_exit(proc, EXIT_OK)
    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert server.connections == 2
    assert run_report(proc)["counts"] == counts(attempts=4, accepted=4), describe(proc)
    _, records = split_audit(audit, 4)
    assert [r["outcome"] for r in records] == ["accepted"] * 4, records
    assert [r["reason"].rsplit(" ", 1)[-1] for r in records] == ["M1", "M2", "M3", "M4"], records
    # Each message's text went out once: 1 and 2 on the first connection,
    # 3 and 4 on the second.
    assert [subject_of(d) for d in server.data] == [f"bulk {i}/4" for i in range(1, 5)]
    first, second = server.connection_bytes(0), server.connection_bytes(1)
    assert b"bulk 3/4" not in first and b"bulk 1/4" not in second and b"bulk 2/4" not in second
    assert second.startswith(b"EHLO ") and b"\r\nMAIL FROM:" in second
    assert not second.split(b"\r\n", 1)[1].startswith(b"RSET"), second
    assert letters(folder) == [] and pending(folder) == []


def test_break_before_data_with_the_relay_gone_keeps_the_unsent(
        run, plugins, batch_server, tmp_path):
    # The listener is closed before the connection, so the mailer's one
    # new connection is refused.
    server = batch_server(first_connection_breaking_at_message_3([StopListening()]))
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 4)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    report = run_report(proc)
    assert report["counts"] == counts(attempts=4, accepted=2, errors=2, kept=2), describe(proc)
    _, (one, two, three, four) = split_audit(audit, 4)
    assert one["outcome"] == two["outcome"] == "accepted", (one, two)
    for r in (three, four):
        # Not sent, so not outcome unknown: a connect error, kept for retry.
        assert r["outcome"] == "error" and r["reason"].startswith("connect: "), r
        meta = assert_kept(r, folder)
        assert meta["reason"]["kind"] == "connect" and meta["reason"]["transient"] is True, meta
        assert meta["outcome_unknown"] is False, meta
    assert set(letters_by_message_id(folder)) == {three["message_id"], four["message_id"]}
    assert pending(folder) == []
    # Message 3's envelope was written, but none of its text.
    assert [subject_of(d) for d in server.data] == ["bulk 1/4", "bulk 2/4"]
    assert b"bulk 3/4" not in server.received() and b"bulk 4/4" not in server.received()


# ===========================================================================
# 3. PIPELINING and CHUNKING: BDAT, written ahead
# ===========================================================================

BDAT_ENVELOPE = [Expect("MAIL FROM"), Expect("RCPT TO"), ReadBdat()]
BDAT_NEXT = [Expect("RSET"), *BDAT_ENVELOPE]

# Message 2 of the CHUNKING batch: the replies to its RSET, MAIL, RCPT and
# BDAT, and what becomes of it (audit outcome, reason prefix, kept).
SECOND_MESSAGE = {
    "bdat-552": (OK_RSET + OK_MAIL + OK_RCPT + b"552 5.3.4 too big\r\n",
                 "rejected: rejected permanently at data-end: 552 5.3.4", False),
    # A refused envelope still gets its reply to BDAT, and the client must
    # read it so the next reply belongs to message 3.
    "rcpt-452": (OK_RSET + OK_MAIL + b"452 4.2.2 mailbox full\r\n"
                 + b"554 5.5.1 no valid recipients\r\n",
                 "rejected: rejected temporarily at rcpt-to: 452 4.2.2", True),
}


@pytest.mark.parametrize("second", sorted(SECOND_MESSAGE))
def test_chunking_batch_uses_bdat_and_settles_each_message(run, plugins, batch_server, tmp_path,
                                                           second):
    replies, reason, kept = SECOND_MESSAGE[second]
    server = batch_server([
        Send(GREETING), Expect("EHLO"), Send(EHLO_CHUNKING),
        # All three messages are written before any reply is read.
        *BDAT_ENVELOPE, *BDAT_NEXT, *BDAT_NEXT,
        Send(OK_MAIL + OK_RCPT + queued(1)
             + replies
             + OK_RSET + OK_MAIL + OK_RCPT + queued(3)),
        Serve(HOLD_S),
    ])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 3)

    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert run_report(proc)["counts"] == counts(attempts=3, accepted=2, rejected=1,
                                                kept=int(kept)), describe(proc)
    attempts, (one, two, three) = split_audit(audit, 3)
    assert one["outcome"] == three["outcome"] == "accepted", (one, three)
    assert one["reason"].endswith("M1") and three["reason"].endswith("M3"), (one, three)
    assert two["outcome"] == "rejected" and two["reason"].startswith(reason), two
    if kept:
        assert_kept(two, folder)
        assert set(letters_by_message_id(folder)) == {two["message_id"]}
    else:
        assert two.get("dead_letter") is None, two
        assert letters(folder) == []
    assert pending(folder) == []

    # BDAT n LAST, n the message's exact size, then exactly those octets:
    # no DATA, no dot-stuffing, no terminating dot.
    assert [(n, last) for n, last, _ in server.bdat] == [(a["size"], True) for a in attempts]
    for (n, _, octets), subject in zip(server.bdat, ["bulk 1/3", "bulk 2/3", "bulk 3/3"]):
        assert len(octets) == n and subject_of(octets) == subject, octets[:300]
        assert octets.endswith(b"\r\n") and not octets.endswith(b"\r\n.\r\n"), octets[-20:]
    commands = command_lines(server.received())
    assert verbs(commands) == ["EHLO", "MAIL", "RCPT", "BDAT", "RSET", "MAIL", "RCPT", "BDAT",
                               "RSET", "MAIL", "RCPT", "BDAT", "QUIT"], commands
    assert not server.client_sent_line("DATA"), server.received()


def test_chunking_421_mid_batch_sends_the_rest_on_a_new_connection(
        run, plugins, batch_server, tmp_path):
    # The server says 421 to message 2's MAIL and closes: message 2 is a
    # transient rejection (kept); message 3, written after the 421 and never
    # read, is unsent and goes on a new connection.
    server = batch_server([
        Send(GREETING), Expect("EHLO"), Send(EHLO_CHUNKING),
        *BDAT_ENVELOPE, *BDAT_NEXT, *BDAT_NEXT,
        Send(OK_MAIL + OK_RCPT + queued(1) + OK_RSET + b"421 4.3.2 shutting down\r\n"),
        Reconnect(),
        Send(GREETING), Expect("EHLO"), Send(EHLO_CHUNKING),
        *BDAT_ENVELOPE,
        Send(OK_MAIL + OK_RCPT + queued(3)),
        Serve(HOLD_S),
    ])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 3)

    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert server.connections == 2
    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert run_report(proc)["counts"] == counts(attempts=3, accepted=2, rejected=1, kept=1), \
        describe(proc)
    _, (one, two, three) = split_audit(audit, 3)
    assert one["outcome"] == three["outcome"] == "accepted", (one, three)
    assert three["reason"].endswith("M3"), three
    assert two["outcome"] == "rejected", two
    assert two["reason"].startswith("rejected: rejected temporarily at mail-from: 421 4.3.2"), two
    assert assert_kept(two, folder)["outcome_unknown"] is False
    assert pending(folder) == []
    # Message 3 went twice (written ahead, then unread), message 2 once.
    assert [subject_of(o) for _, _, o in server.bdat] == ["bulk 1/3", "bulk 2/3", "bulk 3/3",
                                                         "bulk 3/3"]
    assert b"bulk 2/3" not in server.connection_bytes(1)


def test_without_pipelining_one_command_per_turn(run, plugins, batch_server, tmp_path):
    ehlo_plain = b"250-fake.example\r\n250 ENHANCEDSTATUSCODES\r\n"
    steps = [Send(GREETING), Expect("EHLO"), Send(ehlo_plain)]
    for n in (1, 2):
        # No RSET before message 2: message 1's dot ended its transaction.
        steps += [Expect("MAIL FROM"), Send(OK_MAIL), Expect("RCPT TO"), Send(OK_RCPT),
                  Expect("DATA"), Send(GO_AHEAD), ReadData(), Send(queued(n))]
    server = batch_server([*steps, Serve(HOLD_S)])
    config, audit, folder = bulk_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, 2)

    assert_exit(proc, EXIT_OK)
    assert server.wait(), server.error
    assert server.error is None, f"{server.error}\n{describe(proc)}"
    assert [subject_of(d) for d in server.data] == ["bulk 1/2", "bulk 2/2"]
    # Nothing was written ahead of a reply: every read of a command holds
    # that one line (the script answers each before the next may come).
    data_spans = [(o, o + len(d)) for o, d in zip(server.data_offsets, server.data)]
    offset = 0
    for _, chunk in server.chunks:
        inside = any(a <= offset < b for a, b in data_spans)
        if not inside:
            assert chunk.count(b"\r\n") == 1, (chunk, server.received())
        offset += len(chunk)


# ===========================================================================
# 4-5. A real Postfix: 200 messages in one session
# ===========================================================================

def check_postfix_run(proc, server, audit: Path, chunking: bool, *, batched: bool = True) -> dict:
    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=VOLUME, accepted=VOLUME), describe(proc)
    _, records = split_audit(audit, VOLUME, batched=batched)
    assert all(r["outcome"] == "accepted" for r in records)
    assert len({r["message_id"] for r in records}) == VOLUME
    assert server.delivered(VOLUME) == VOLUME, "\n".join(server.log_lines())
    # One session, every command accepted, QUIT at the end, no warning.
    session = assert_clean_session(server, VOLUME, content_command(chunking))
    assert session.get("rcpt") == str(VOLUME), session
    if chunking:
        # One `BDAT n LAST` per message.
        assert session.get("bdat") == str(VOLUME), session
    # What the transcript says the client sent agrees.
    sent = [l.text.upper() for l in transcript(proc.stderr) if l.who == "C"]
    bdat = [t for t in sent if t.startswith("BDAT ")]
    data = [t for t in sent if t == "DATA"]
    if chunking:
        assert len(bdat) == VOLUME and data == [], describe(proc)
        assert all(t.endswith(" LAST") for t in bdat), bdat[:5]
    else:
        assert len(data) == VOLUME and bdat == [], describe(proc)
    return session


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_postfix_takes_a_batch_of_200_in_one_session(run, plugins, postfix_smtpd, tmp_path,
                                                      chunking):
    server = postfix_smtpd(chunking=chunking)
    config, audit, folder = bulk_config(tmp_path, server, max_messages=VOLUME)

    proc = run_bulk(run, plugins, config, VOLUME, size=1024, timeout=BULK_TIMEOUT_S)

    session = check_postfix_run(proc, server, audit, chunking)
    # One transaction after another. BDAT: one RSET between two messages (a
    # refused chunk may leave a transaction open), sent early, before the
    # earlier one's replies are read, when a read has waited with nothing
    # to write (its octets carry the ACK Postfix's next reply waits for); so
    # also at most one after the last. DATA: none, as every dot ended its
    # transaction.
    if chunking:
        client = [l.text for l in transcript(proc.stderr) if l.who == "C"]
        order = "".join(t[0] for t in client if t.startswith(("MAIL FROM", "RSET")))
        assert order.removesuffix("R") == "M" + "RM" * (VOLUME - 1), order
        assert session.get("rset") == str(order.count("R")), session
    else:
        assert session.get("rset") is None, session
    assert letters(folder) == [] and pending(folder) == []
    if not chunking:
        # Cross-message pipelining: message 2's envelope went out before
        # message 1's final reply was read.
        lines = transcript(proc.stderr)
        second_mail = index_of(lines, "C", "MAIL FROM", index_of(lines, "C", "MAIL FROM") + 1)
        queued_1 = index_of(lines, "S", "250 2.0.0 Ok: queued as")
        assert second_mail < queued_1, describe(proc)


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_postfix_takes_200_sent_one_by_one(run, plugins, postfix_smtpd, tmp_path, chunking):
    server = postfix_smtpd(chunking=chunking)
    config, audit, folder = bulk_config(tmp_path, server, max_messages=VOLUME)

    proc = run_bulk(run, plugins, config, VOLUME, size=1024, one_by_one=True,
                    timeout=BULK_TIMEOUT_S)

    session = check_postfix_run(proc, server, audit, chunking, batched=False)
    assert session.get("rset") == (str(VOLUME - 1) if chunking else None), session
    assert letters(folder) == [] and pending(folder) == []
