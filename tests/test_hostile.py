"""Security tests: hostile servers, SMTP smuggling and injection via the CLI.

1. Hostile servers (scripted.py): silence, trickling, huge lines and
   replies, code changes mid-reply, 421/4xx/5xx at every stage, a hang-up
   after the final dot, a non-SMTP banner, TLS torn down mid-session. Each
   run has a tight subprocess timeout and must end in the typed error (kind,
   stage, transient flag, exit code), never in a false success.
2. SMTP smuggling: bodies with every bare-CR/LF/NUL variant of the end-of-data
   sequence must go out as clean CRLF lines with exactly one CRLF.CRLF, and
   the server must see exactly one MAIL FROM.
3. Injection via the CLI: line separators in headers, display names and file
   names, malformed header names, SMTP-path tricks and over-long addresses
   are refused (exit 65, naming the field) before any MAIL reaches a server.

Servers announce no PIPELINING unless a case needs it, so that each command
gets its own reply and the failing stage is unambiguous.
"""

from __future__ import annotations

import re
import time
from typing import Optional

import pytest

import oracle
from cli import (EXIT_DATAERR, EXIT_OK, EXIT_PROTOCOL, EXIT_TEMPFAIL, EXIT_UNAVAILABLE,
                 RECIPIENT, SENDER, assert_exit, describe, json_error, json_output, relay)
from scripted import (Close, Expect, Flood, Hold, RawSend, ReadData, Send, SendSlowly,
                      Serve, Stall, StartTLS, TLSClose)

# `--timeout` for runs against scripted servers that are expected to answer
# (a failure then shows up as a timeout error, not as a hung test).
CLIENT_TIMEOUT_S = 5
# Subprocess bound for any one run here (start-up, a cold compile included);
# the elapsed-time checks below are tighter and start at the connection.
RUN_TIMEOUT_S = 15
# How long a scripted server holds the connection after its last reply.
HOLD_S = 20
# Slack between a client deadline and the moment the run must have ended.
SLACK_S = 2.5

SUBJECT = "hostile"
TEXT = "hello from the hostile suite"

GREETING = b"220 fake.example ESMTP\r\n"
# EHLO replies: ESMTP without PIPELINING, and with it.
EHLO_PLAIN = b"250-fake.example\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_PIPELINING = b"250-fake.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


def send_args(*extra, text: Optional[str] = TEXT) -> list:
    body = ["--text", text] if text is not None else []
    return ["send", "--from", SENDER, "--to", RECIPIENT, "--subject", SUBJECT, *body,
            *extra]


def run_against(run, server, *extra, timeout: int = CLIENT_TIMEOUT_S,
                run_timeout: float = RUN_TIMEOUT_S, text: Optional[str] = TEXT):
    """Run `send --json` against a scripted server; returns (proc, seconds from
    the client's connection to its exit, or None if it never connected)."""
    proc = run(send_args(*relay(server.address, "none", timeout=timeout), "--json",
                         *extra, text=text), timeout=run_timeout)
    ended = time.monotonic()
    elapsed = ended - server.connected_at if server.connected_at is not None else None
    return proc, elapsed


def assert_no_success(proc) -> None:
    """No exit 0 and no receipt on stdout."""
    assert proc.returncode != EXIT_OK, f"false success\n{describe(proc)}"
    value = json_output(proc)
    assert "error" in value and "message_id" not in value, describe(proc)


def assert_error(proc, kind: str, *, exit_code: int, transient: Optional[bool] = None,
                 stage: Optional[str] = None, code: Optional[int] = None) -> dict:
    """The typed `--json` error: kind, exit code, and transient/stage/reply
    code where given."""
    assert_no_success(proc)
    assert_exit(proc, exit_code)
    error = json_error(proc)
    assert error["kind"] == kind, describe(proc)
    if transient is not None:
        assert error["transient"] is transient, describe(proc)
    if stage is not None:
        assert error.get("stage") == stage, describe(proc)
    if code is not None:
        assert error["reply"]["code"] == code, describe(proc)
    return error


def session_to(stage: str, *, ehlo: bytes = EHLO_PLAIN) -> list:
    """A well-behaved script up to (not including) the reply at `stage`:
    the last step reads the command (or the data) that `stage` answers."""
    steps: list = []
    if stage == "greeting":
        return steps
    steps += [Send(GREETING), Expect("EHLO")]
    if stage == "ehlo":
        return steps
    steps += [Send(ehlo), Expect("MAIL FROM")]
    if stage == "mail-from":
        return steps
    steps += [Send(b"250 2.1.0 OK\r\n"), Expect("RCPT TO")]
    if stage == "rcpt-to":
        return steps
    steps += [Send(b"250 2.1.5 OK\r\n"), Expect("DATA")]
    if stage == "data":
        return steps
    steps += [Send(b"354 End data with <CR><LF>.<CR><LF>\r\n"), ReadData()]
    assert stage == "data-end", stage
    return steps


# Commands the client must not send after a refusal at each stage.
LATER_COMMANDS = {
    "greeting": ["EHLO", "HELO", "MAIL", "RCPT", "DATA"],
    "ehlo": ["HELO", "MAIL", "RCPT", "DATA"],
    "mail-from": ["RCPT", "DATA"],
    "rcpt-to": ["DATA"],
    "data": [],        # the body must not follow; checked separately
    "data-end": [],
}


def assert_stopped_after(server, stage: str) -> None:
    for verb in LATER_COMMANDS[stage]:
        assert not server.client_sent_line(verb), (
            f"{verb} sent after a refusal at {stage}: {server.received()!r}")
    if stage == "data":
        assert TEXT.encode() not in server.received(), server.received()


# ===========================================================================
# 1. Hostile servers
# ===========================================================================

def test_never_greets_times_out_at_greeting(run, scripted):
    server = scripted([Hold(30)])

    proc, elapsed = run_against(run, server, timeout=2, run_timeout=RUN_TIMEOUT_S)

    assert_error(proc, "timeout", exit_code=EXIT_TEMPFAIL, transient=True, stage="greeting")
    assert elapsed is not None and elapsed < 10, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert not server.client_sent_line("EHLO")


# A valid greeting, one byte a second: 26 s in all, far beyond `--timeout 3`.
TRICKLED_GREETING = b"220 trickle.example ESMTP\r\n"


def test_greeting_trickled_byte_by_byte_hits_the_reply_cap(run, scripted):
    server = scripted([SendSlowly(TRICKLED_GREETING, 1.0), Expect("EHLO"), Hold(30)])

    proc, elapsed = run_against(run, server, timeout=3, run_timeout=RUN_TIMEOUT_S)

    # Each byte arrives well within any idle timeout: only a cap on the whole
    # reply ends this in time.
    assert_error(proc, "timeout", exit_code=EXIT_TEMPFAIL, transient=True, stage="greeting")
    assert elapsed < 3 + SLACK_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert server.bytes_sent < len(TRICKLED_GREETING), "the whole greeting was read"


def test_ehlo_reply_trickled_line_by_line_hits_the_reply_cap(run, scripted):
    # One continuation line a second, 30 lines: each line is a complete,
    # valid line, yet the reply as a whole takes 30 s.
    lines = b"".join(b"250-line%02d\r\n" % i for i in range(30)) + b"250 end\r\n"
    server = scripted([Send(GREETING), Expect("EHLO"), SendSlowly(lines, 1.0 / 12), Hold(30)])

    proc, elapsed = run_against(run, server, timeout=3, run_timeout=RUN_TIMEOUT_S)

    assert_error(proc, "timeout", exit_code=EXIT_TEMPFAIL, transient=True, stage="ehlo")
    assert elapsed < 3 + SLACK_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert not server.client_sent_line("MAIL")


TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize("tail", [b"", b"\r\n"], ids=["no-newline", "with-newline"])
def test_ten_megabyte_greeting_line_is_a_protocol_error(run, scripted, tail):
    server = scripted([Flood(b"220 ", b"a", TEN_MB, tail, timeout=25), Hold(10)])

    proc, elapsed = run_against(run, server, timeout=CLIENT_TIMEOUT_S)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    # The 2048-byte line cap stops the read long before the client deadline.
    assert elapsed < CLIENT_TIMEOUT_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert not server.client_sent_line("EHLO")


def test_million_continuation_lines_are_a_protocol_error(run, scripted):
    server = scripted([Send(GREETING), Expect("EHLO"),
                       Flood(b"", b"250-x\r\n", 1_000_000, b"250 x\r\n", timeout=25), Hold(10)])

    proc, elapsed = run_against(run, server, timeout=CLIENT_TIMEOUT_S)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    assert elapsed < CLIENT_TIMEOUT_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert not server.client_sent_line("MAIL")


def test_huge_reply_of_long_lines_is_a_protocol_error(run, scripted):
    # 64 continuation lines of 2000 bytes: each line and the line count are
    # within bounds, the reply (~128 KiB) is not.
    line = b"250-" + b"b" * 1996 + b"\r\n"
    server = scripted([Send(GREETING), Expect("EHLO"),
                       Flood(b"", line, 64, b"250 x\r\n"), Hold(10)])

    proc, elapsed = run_against(run, server, timeout=CLIENT_TIMEOUT_S)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    assert not server.client_sent_line("MAIL")


def test_code_change_mid_reply_is_a_protocol_error(run, scripted):
    server = scripted([Send(GREETING), Expect("EHLO"), Send(b"250-a\r\n251 b\r\n"), Serve(HOLD_S)])

    proc, _ = run_against(run, server)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    assert not server.client_sent_line("MAIL")


def test_non_smtp_banner_is_a_protocol_error(run, scripted):
    server = scripted([Send(b"SSH-2.0-OpenSSH_9.2\r\n"), Serve(HOLD_S)])

    proc, _ = run_against(run, server)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    assert not server.client_sent_line("MAIL")


def test_2xx_reply_to_data_is_a_protocol_error(run, scripted):
    server = scripted([*session_to("data"), Send(b"250 2.0.0 OK\r\n"), Serve(HOLD_S)])

    proc, _ = run_against(run, server)

    assert_error(proc, "protocol", exit_code=EXIT_PROTOCOL, transient=False)
    assert TEXT.encode() not in server.received()


# A body far larger than the loopback socket buffers: once they are full,
# every further write blocks until the server reads.
TARPIT_BODY_BYTES = 32 * 1024 * 1024
TARPIT_STALL_S = 8
TARPIT_CLIENT_TIMEOUT_S = 2


def test_server_that_stops_reading_during_data_times_out(run, scripted, tmp_path):
    body = tmp_path / "big.txt"
    with open(body, "wb") as f:
        line = b"x" * 70 + b"\n"
        f.write(line * (TARPIT_BODY_BYTES // len(line)))
    server = scripted([*session_to("data"), Send(b"354 Go ahead\r\n"), Stall(TARPIT_STALL_S)])

    proc, elapsed = run_against(run, server, "--body", body, timeout=TARPIT_CLIENT_TIMEOUT_S,
                                text=None)

    # The client must give up on its own deadline, not when the server lets go.
    assert elapsed < TARPIT_CLIENT_TIMEOUT_S + SLACK_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    # The end of data never left the client: the message was not delivered.
    assert_error(proc, "timeout", exit_code=EXIT_TEMPFAIL, transient=True, stage="data-block")


# ---------------------------------------------------------------------------
# Server text on the terminal
# ---------------------------------------------------------------------------

# OSC 0 (set the window title) ended by BEL, ED (clear screen), SGR (red),
# and the 8-bit CSI U+009B: a terminal acts on each of them.
TERMINAL_ESCAPES = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\xc2\x9b2J"
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@pytest.mark.parametrize("outcome, verbose", [
    pytest.param("rejected", False, id="rejection"),
    pytest.param("rejected", True, id="rejection-transcript"),
    pytest.param("accepted", False, id="receipt"),
])
def test_server_text_cannot_drive_the_terminal(run, scripted, outcome, verbose):
    if outcome == "rejected":
        steps = [*session_to("mail-from"), Send(b"550 5.7.1 bad " + TERMINAL_ESCAPES + b"\r\n")]
    else:
        steps = [*session_to("data-end"), Send(b"250 2.0.0 ok " + TERMINAL_ESCAPES + b"\r\n")]
    server = scripted([*steps, Serve(HOLD_S)])

    # Human output, not --json (whose string escaping makes it safe).
    proc = run(send_args(*relay(server.address, "none", timeout=CLIENT_TIMEOUT_S),
                         *(["-v"] if verbose else [])), timeout=RUN_TIMEOUT_S)

    assert_exit(proc, EXIT_UNAVAILABLE if outcome == "rejected" else EXIT_OK)
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        found = CONTROL_CHARACTERS.search(text)
        # repr: the failure report must not drive the terminal either.
        assert found is None, (f"control character {found.group()!r} on {name}: "
                               f"exit {proc.returncode}, stdout {proc.stdout!r}, "
                               f"stderr {proc.stderr!r}")
    # Neutralised, not swallowed: the reply is still shown.
    assert ("550 5.7.1 bad" if outcome == "rejected" else "250") in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# Refusals at each stage
# ---------------------------------------------------------------------------

STAGES = ["greeting", "ehlo", "mail-from", "rcpt-to", "data", "data-end"]


@pytest.mark.parametrize("stage", STAGES)
def test_421_at_each_stage_is_a_transient_rejection(run, scripted, stage):
    server = scripted([*session_to(stage),
                       Send(b"421 4.3.2 Service shutting down\r\n"), Serve(HOLD_S)])

    proc, _ = run_against(run, server)

    error = assert_error(proc, "rejected", exit_code=EXIT_TEMPFAIL, transient=True,
                         stage=stage, code=421)
    assert error["reply"]["enhanced"] == "4.3.2", describe(proc)
    assert_stopped_after(server, stage)


REFUSALS = [
    # stage, reply
    ("mail-from", b"451 4.3.0 Try again later\r\n"),
    ("mail-from", b"550 5.7.1 Sender refused\r\n"),
    ("rcpt-to", b"450 4.2.1 Mailbox busy\r\n"),
    ("rcpt-to", b"550 5.1.1 No such user\r\n"),
    ("data", b"451 4.3.0 Not now\r\n"),
    ("data", b"554 5.5.1 No valid recipients\r\n"),
    ("data-end", b"451 4.7.1 Greylisted\r\n"),
    ("data-end", b"554 5.7.1 Message refused as spam\r\n"),
]


@pytest.mark.parametrize("stage, reply", REFUSALS,
                         ids=[f"{s}-{r[:3].decode()}" for s, r in REFUSALS])
def test_4xx_and_5xx_at_each_stage(run, scripted, stage, reply):
    server = scripted([*session_to(stage), Send(reply), Serve(HOLD_S)])

    proc, _ = run_against(run, server)

    code = int(reply[:3])
    transient = code < 500
    error = assert_error(proc, "rejected",
                         exit_code=EXIT_TEMPFAIL if transient else EXIT_UNAVAILABLE,
                         transient=transient, stage=stage, code=code)
    assert error["reply"]["enhanced"] == reply[4:9].decode(), describe(proc)
    assert_stopped_after(server, stage)


def test_pipelined_rcpt_550_is_a_permanent_rejection_at_rcpt(run, scripted):
    server = scripted([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        # RFC 2920: MAIL, RCPT and DATA arrive before any reply.
        Expect("MAIL FROM"), Expect("RCPT TO"), Expect("DATA"),
        Send(b"250 2.1.0 OK\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n"),
        Serve(HOLD_S),
    ])

    proc, _ = run_against(run, server)

    error = assert_error(proc, "rejected", exit_code=EXIT_UNAVAILABLE, transient=False,
                         stage="rcpt-to", code=550)
    assert error["reply"]["enhanced"] == "5.1.1", describe(proc)
    assert TEXT.encode() not in server.received(), server.received()


def test_pipelined_354_after_all_recipients_refused_sends_no_message(run, scripted):
    # Some servers answer the pipelined DATA with 354 although every RCPT
    # failed; the client must then end the data at once (RFC 2920 3.1), not
    # deliver the message to nobody.
    server = scripted([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PIPELINING),
        Expect("MAIL FROM"), Expect("RCPT TO"), Expect("DATA"),
        Send(b"250 2.1.0 OK\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n"),
        Expect("."),
        Send(b"554 5.5.1 No valid recipients\r\n"),
        Serve(HOLD_S),
    ])

    proc, _ = run_against(run, server)

    assert_error(proc, "rejected", exit_code=EXIT_UNAVAILABLE, transient=False,
                 stage="rcpt-to", code=550)
    assert TEXT.encode() not in server.received(), server.received()
    assert not server.client_sent_line("Subject:"), server.received()
    # The data was the lone terminating dot.
    assert server.received().split(b"DATA\r\n", 1)[1].startswith(b".\r\n"), server.received()


# ---------------------------------------------------------------------------
# The connection breaks after the final dot
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("after_dot", [[Close()], [Send(b"250 2.0.0 Qu"), Close()]],
                         ids=["close", "partial-250-then-close"])
def test_hang_up_after_final_dot_is_outcome_unknown(run, scripted, after_dot):
    server = scripted([*session_to("data-end"), *after_dot])

    proc, elapsed = run_against(run, server)

    error = assert_error(proc, "outcome-unknown", exit_code=EXIT_TEMPFAIL)
    assert error["kind"] not in ("rejected", "connect")
    # The whole message did go out before the hang-up.
    [data] = server.data
    assert data.endswith(b"\r\n.\r\n")
    assert elapsed < CLIENT_TIMEOUT_S, f"took {elapsed:.1f}s (waited for a timeout?)"


# ---------------------------------------------------------------------------
# TLS torn down mid-session
# ---------------------------------------------------------------------------

# A fatal handshake_failure alert as a plaintext record: inside an
# established TLS session it cannot be authentic.
PLAINTEXT_ALERT = b"\x15\x03\x03\x00\x02\x02\x28"
# An application-data record whose contents are noise (bad_record_mac).
GARBAGE_RECORD = b"\x17\x03\x03\x00\x20" + bytes(range(0x20))


@pytest.mark.parametrize("teardown", [
    [RawSend(PLAINTEXT_ALERT), Close()],
    [RawSend(GARBAGE_RECORD), Close()],
    [RawSend(b"this is not TLS at all\r\n"), Close()],
    [TLSClose(), Close()],
], ids=["plaintext-alert", "garbage-record", "cleartext-junk", "close-notify"])
def test_tls_torn_down_mid_session(run, scripted, certs, teardown):
    server = scripted([
        Send(GREETING), Expect("EHLO"),
        Send(b"250-fake.example\r\n250 STARTTLS\r\n"), Expect("STARTTLS"),
        Send(b"220 2.0.0 Ready to start TLS\r\n"), StartTLS(certs.server_context()),
        Expect("EHLO"), Send(EHLO_PLAIN),
        Expect("MAIL FROM"),
        *teardown,
    ])

    proc = run(send_args(*relay(f"localhost:{server.port}", "required", ca_file=certs.ca,
                                timeout=CLIENT_TIMEOUT_S), "--json"), timeout=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - server.connected_at

    assert server.tls_started, server.error
    assert_no_success(proc)
    error = json_error(proc)
    assert error["kind"] in ("tls", "connect", "protocol"), describe(proc)
    # The break is seen at once, not after the client deadline.
    assert elapsed < CLIENT_TIMEOUT_S, f"took {elapsed:.1f}s\n{describe(proc)}"


# ===========================================================================
# 2. SMTP smuggling
# ===========================================================================

SMUGGLING_SEQUENCES = [
    b"\n.\n", b"\n.\r", b"\r.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n.\r\r\n", b"\r\r\n.\r\r\n",
]
SMUGGLED_COMMAND = b"MAIL FROM:<x@evil.example>\r\n"


def crlf_normalized(data: bytes) -> bytes:
    """Every line end (CRLF, bare CR, bare LF) as CRLF."""
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def unstuff(data: bytes) -> bytes:
    """The message in captured DATA bytes: the terminating `.` line removed,
    the leading dot of stuffed lines dropped (RFC 5321 4.5.2)."""
    assert data.endswith(b"\r\n.\r\n"), data[-20:]
    lines = data[:-3].split(b"\r\n")
    out = []
    for line in lines:
        if line.startswith(b"."):
            assert line.startswith(b".."), f"unstuffed line starting with a dot: {line!r}"
            line = line[1:]
        out.append(line)
    return b"\r\n".join(out)


def commands_outside_data(server) -> list[bytes]:
    """The lines the client sent outside the captured message data."""
    received = server.received()
    [start] = server.data_offsets
    [data] = server.data
    outside = received[:start] + received[start + len(data):]
    return [line for line in outside.split(b"\r\n") if line]


@pytest.mark.parametrize("seq", SMUGGLING_SEQUENCES, ids=[repr(s)[2:-1] for s in SMUGGLING_SEQUENCES])
def test_body_cannot_smuggle_a_second_transaction(run, scripted, tmp_path, seq):
    body = b"hello" + seq + SMUGGLED_COMMAND + b"more"
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(body)
    server = scripted([*session_to("data-end"), Send(b"250 2.0.0 OK queued\r\n"),
                       Serve(HOLD_S)])

    proc, _ = run_against(run, server, "--body", body_file, text=None)

    assert_exit(proc, EXIT_OK)
    assert server.error is None, server.error
    [data] = server.data

    # The wire: CRLF lines only, no NUL, one end-of-data, at the very end.
    oracle.assert_crlf_only(data)
    assert b"\x00" not in data, data
    assert data.count(b"\r\n.\r\n") == 1 and data.endswith(b"\r\n.\r\n"), data
    # Nothing but QUIT after the end of the data; one MAIL FROM in the session.
    commands = commands_outside_data(server)
    mail_froms = [c for c in commands if re.match(rb"(?i)MAIL FROM", c)]
    assert len(mail_froms) == 1, commands
    assert b"evil.example" not in b"\r\n".join(commands), commands
    tail = server.received()[server.data_offsets[0] + len(data):]
    assert tail.upper() in (b"", b"QUIT\r\n"), tail

    # The message, read back, carries the body with normalised line ends.
    msg = oracle.parse(unstuff(data))
    got = oracle.body(msg, "plain")
    assert got is not None, oracle.content_types(msg)
    want = crlf_normalized(body).decode("utf-8")
    assert oracle.normalize_newlines(got) == oracle.normalize_newlines(want), (got, want)


# ===========================================================================
# 3. Injection via the CLI
# ===========================================================================

LINE_SEPARATORS = {"nel": "\u0085", "ls": "\u2028", "ps": "\u2029"}


def assert_refused_before_mail(proc, server, field: str) -> None:
    assert_exit(proc, EXIT_DATAERR)
    error = json_error(proc)
    assert error["kind"] == "invalid-message", describe(proc)
    assert field in error["message"], describe(proc)
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()
    assert not server.record.client_sent_line("MAIL"), server.record.client_bytes()


def label(n: int, ch: str = "a") -> str:
    return ch * n


# A domain of 256 octets, every label within 63.
DOMAIN_256 = ".".join([label(63, "a"), label(63, "b"), label(63, "c"), label(60, "d"), "com"])
# A mailbox of 64 + 1 + 200 octets: each part within its limit, but the path
# `<...>` is longer than 256 octets (RFC 5321 4.5.3.1.3).
DOMAIN_200 = ".".join([label(63, "e"), label(63, "f"), label(63, "g"), label(4, "h"), "com"])
LONG_PATH = f"{label(64, 'l')}@{DOMAIN_200}"
assert len(DOMAIN_256) == 256 and len(DOMAIN_200) == 200 and len(LONG_PATH) + 2 > 256

INJECTIONS = [
    # id, arguments (--from and --subject default to fixed values), field named
    *[(f"subject-{k}", ["--to", RECIPIENT, "--subject", f"Hi{c}Bcc: victim@example.com"],
       "subject") for k, c in LINE_SEPARATORS.items()],
    *[(f"display-name-{k}", ["--to", RECIPIENT, "--from", f"Bad{c}Name <a@example.com>"],
       "from") for k, c in LINE_SEPARATORS.items()],
    *[(f"header-value-{k}", ["--to", RECIPIENT, "--header", f"X-A: v{c}w"], "header")
      for k, c in LINE_SEPARATORS.items()],
    ("header-name-space", ["--to", RECIPIENT, "--header", "X A: v"], "header"),
    ("header-name-empty", ["--to", RECIPIENT, "--header", ": v"], "header"),
    ("rcpt-quoted-orcpt", ["--to", '"a@b.example> ORCPT=x@y"@c.example'], "to[0]"),
    ("rcpt-angle-crlf-data", ["--to", "x@y.example>\r\nDATA"], "to[0]"),
    ("local-part-65", ["--to", f"{label(65)}@example.com"], "to[0]"),
    ("domain-256", ["--to", f"user@{DOMAIN_256}"], "to[0]"),
    ("path-over-256", ["--to", LONG_PATH], "to[0]"),
]


@pytest.mark.parametrize("args, field", [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_injection_is_refused_before_mail(run, smtpd, args, field):
    server = smtpd()
    sender = [] if "--from" in args else ["--from", SENDER]
    subject = [] if "--subject" in args else ["--subject", SUBJECT]

    proc = run(["send", *sender, *subject, "--text", TEXT, *args,
                *relay(server.address, "none", timeout=CLIENT_TIMEOUT_S), "--json"],
               timeout=RUN_TIMEOUT_S)

    assert_refused_before_mail(proc, server, field)


SHAPE_CASES = [
    pytest.param(args, id=id_)
    for id_, args, field in INJECTIONS
] + [pytest.param(["--to", RECIPIENT, "--ehlo", "a\r\nMAIL FROM:<x@evil.example>"],
                  id="ehlo-crlf")]


@pytest.mark.parametrize("args", SHAPE_CASES)
def test_refusal_json_has_the_error_shape(run, tmp_path, args):
    # The outbox path: validation happens before any relay is involved.
    sender = [] if "--from" in args else ["--from", SENDER]
    subject = [] if "--subject" in args else ["--subject", SUBJECT]
    ehlo_only = "--ehlo" in args
    relay_args = relay("127.0.0.1:9", "none") if ehlo_only else ["--outbox", tmp_path / "out"]

    proc = run(["send", *sender, *subject, "--text", TEXT, *args, *relay_args, "--json"],
               timeout=RUN_TIMEOUT_S)

    assert_no_success(proc)
    error = json_error(proc)
    assert error.get("transient") is False, describe(proc)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("sep", LINE_SEPARATORS.values(), ids=LINE_SEPARATORS.keys())
def test_line_separator_in_attachment_name_is_refused(run, smtpd, tmp_path, sep):
    server = smtpd()
    ok = tmp_path / "ok.txt"
    ok.write_bytes(b"fine\n")
    bad = tmp_path / f"bad{sep}name.txt"
    bad.write_bytes(b"the name has a line separator\n")

    proc = run(send_args("--attach", ok, "--attach", bad,
                         *relay(server.address, "none", timeout=CLIENT_TIMEOUT_S), "--json"),
               timeout=RUN_TIMEOUT_S)

    assert_refused_before_mail(proc, server, "attachments[1]")


def test_crlf_in_ehlo_name_never_reaches_the_server(run, smtpd):
    server = smtpd()

    proc = run(send_args("--ehlo", "a\r\nMAIL FROM:<x@evil.example>",
                         *relay(server.address, "none", timeout=CLIENT_TIMEOUT_S), "--json"),
               timeout=RUN_TIMEOUT_S)

    assert_no_success(proc)
    error = json_error(proc)
    assert "ehlo" in error["message"].lower(), describe(proc)
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()
    assert not server.record.client_sent_line("MAIL"), server.record.client_bytes()
    assert b"evil.example" not in server.record.client_bytes()


def test_filename_with_quotes_stays_one_parameter(run, smtpd, tmp_path):
    server = smtpd()
    name = 'a.pdf"; name="b.exe'
    attachment = tmp_path / name
    attachment.write_bytes(b"%PDF-1.4 not really\n")

    proc = run(send_args("--attach", attachment,
                         *relay(server.address, "none", timeout=CLIENT_TIMEOUT_S), "--json"),
               timeout=RUN_TIMEOUT_S)

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    oracle.assert_crlf_only(received.content)
    msg = oracle.parse(received.content)
    [part] = oracle.attachments(msg)
    assert part.filename == name, part
    assert part.data == b"%PDF-1.4 not really\n"
    # No part anywhere is called b.exe, by either parameter.
    for p in msg.walk():
        assert p.get_param("name", header="content-type") in (None, name), p.items()
        assert p.get_filename() in (None, name), p.items()


def test_header_value_may_contain_a_colon(run, smtpd):
    # `X:A: v` splits at the first colon: header X, value "A: v".
    server = smtpd()

    proc = run(send_args("--header", "X:A: v",
                         *relay(server.address, "none", timeout=CLIENT_TIMEOUT_S), "--json"),
               timeout=RUN_TIMEOUT_S)

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    msg = oracle.parse(received.content)
    assert msg.get_all("X") == ["A: v"], received.content


# ---------------------------------------------------------------------------
# Address confusion in the CLI (the CPython CVE-2023-27043 class): a display
# name must be an RFC 5322 phrase, or the address is refused, naming the
# field. Nothing is sent.
# ---------------------------------------------------------------------------

CONFUSABLE = [
    "alice@example.org(<bob@evil.example>",
    "alice@example.org <bob@evil.example>",
    "Alice (alice@example.org) <bob@evil.example>",
    "alice@example.org, <bob@evil.example>",
    "\"alice@example.org\" <bob@evil.example> <carol@evil.example>",
    "[alice@example.org] <bob@evil.example>",
    "alice:@example.org <bob@evil.example>",
]


@pytest.mark.parametrize("flag", ["--from", "--to", "--cc", "--bcc", "--reply-to"])
@pytest.mark.parametrize("value", CONFUSABLE)
def test_confusable_addresses_are_refused_naming_the_field(run, flag, value, tmp_path):
    args = {"--from": "me@example.com", "--to": "you@example.com"}
    args[flag] = value
    cmd = ["send", "--subject", "s", "--text", "t", "--outbox", tmp_path / "out"]
    for k, v in args.items():
        cmd += [k, v]
    proc = run(cmd)
    assert proc.returncode == 65, describe(proc)
    assert flag.lstrip("-").replace("-", "_") in proc.stderr.replace("-", "_"), describe(proc)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------
# CRAM-MD5 (RFC 2195), end to end with the RFC's own example: aiosmtpd does
# not offer the mechanism, so a scripted server plays the RFC's challenge
# and checks the client's answer byte for byte.
# ---------------------------------------------------------------------------

RFC2195_CHALLENGE = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
RFC2195_RESPONSE = "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw"


def test_cram_md5_answers_the_rfc_2195_example(run, scripted):
    server = scripted([
        Send(GREETING), Expect("EHLO"), Send(b"250-fake.example\r\n250 AUTH CRAM-MD5\r\n"),
        Expect("AUTH CRAM-MD5"), Send(b"334 " + RFC2195_CHALLENGE + b"\r\n"),
        Expect(RFC2195_RESPONSE), Send(b"235 2.7.0 ok\r\n"),
        Expect("MAIL FROM"), Send(b"250 ok\r\n"), Expect("RCPT TO"), Send(b"250 ok\r\n"),
        Expect("DATA"), Send(b"354 go\r\n"), ReadData(), Send(b"250 ok\r\n"),
        Expect("QUIT"), Send(b"221 bye\r\n"),
    ])
    proc = run(send_args(*relay(server.address, "none", timeout=5), "--user", "tim",
                         "--password-env", "WASMAIL_TEST_PASSWORD", "--auth", "cram-md5", "--json"),
               password="tanstaaftanstaaf")
    assert proc.returncode == 0, describe(proc)
    assert server.client_sent_line(RFC2195_RESPONSE)
    assert b"tanstaaf" not in server.received()
