"""Acceptance tests of the mailer issue: `wasmail send` against real servers.

Every message that reaches a server is read back with Python's `email`
package (see oracle.py); every failure is checked through `--json`, the
exit code and what the server did (not) receive.
"""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

import os

import pytest

import oracle
from cli import (BULK_TIMEOUT_S, EXIT_DATAERR, EXIT_NOINPUT, EXIT_NOPERM, EXIT_OK,
                 EXIT_TEMPFAIL, EXIT_UNAVAILABLE, EXIT_USAGE, PASSWORD, RECIPIENT, SENDER,
                 USER, assert_exit, describe, index_of, json_error, json_output, login,
                 relay, secret_forms, transcript)
from scripted import Hold
from servers import AuthInfo

# A run against a server that never greets must end within this, `--timeout 2`
# included (the rest is start-up).
NEVER_GREETS_BOUND_S = 10
# Messages in the one-session volume test.
BULK_COUNT = 1000

SUBJECT = "Quarterly report: the numbers"
X_MAILER = "The Bat! (v3.02) Professional"
# Several lines, one starting with a dot (dot-stuffing) and one with "From ".
BODY = ("Hello,\n"
        "\n"
        "please find the report attached.\n"
        ".this line starts with a dot\n"
        "..and this one with two\n"
        "From here on, nothing special.\n"
        "\n"
        "Regards,\n"
        "Sender\n")
A_TXT = b"alpha\nbeta\ngamma\n"
# Random bytes behind a PNG signature (whose \r\n and \x1a must survive too).
PNG = b"\x89PNG\r\n\x1a\n" + random.Random(20240601).randbytes(6000)


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def assert_wire_format(raw: bytes) -> None:
    """RFC 5322 hygiene every sent or stored message must have."""
    oracle.assert_crlf_only(raw)
    oracle.assert_line_lengths(raw)
    oracle.assert_ascii_headers(raw)


def assert_nothing_sent(server) -> None:
    """The server got no transaction at all."""
    assert server.messages == []
    verbs = server.record.verbs()
    assert not {"MAIL", "RCPT", "DATA"} & set(verbs), verbs


# ---------------------------------------------------------------------------
# 1. The CSmtp usage example, with AUTH LOGIN and AUTH PLAIN
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["login", "plain"])
def test_csmtp_example_with_auth(run, smtpd, tmp_path, mechanism):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False)
    body = write(tmp_path / "body.txt", BODY)
    a_txt = write(tmp_path / "a.txt", A_TXT)
    b_png = write(tmp_path / "b.png", PNG)
    # One run reads the password from the environment, the other from a file.
    if mechanism == "login":
        credentials = login(USER, auth="login")
    else:
        secret = write(tmp_path / "password", PASSWORD)
        credentials = ["--user", USER, "--password-file", secret, "--auth", "plain"]

    proc = run(["send",
                "--from", f"Sender Name <{SENDER}>",
                "--reply-to", "reply@example.com",
                "--to", RECIPIENT,
                "--subject", SUBJECT,
                "--priority", "high",
                "--x-mailer", X_MAILER,
                "--body", body,
                "--attach", a_txt,
                "--attach", b_png,
                *relay(server.address, "none"),
                *credentials,
                "--json"])

    assert_exit(proc, EXIT_OK)
    receipt = json_output(proc)
    [received] = server.messages
    assert received.auth == AuthInfo(mechanism.upper(), USER)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == [RECIPIENT]

    raw = received.content
    assert_wire_format(raw)
    msg = oracle.parse(raw)
    assert oracle.mailboxes(msg, "From") == [oracle.Mailbox("Sender Name", SENDER)]
    assert oracle.addresses(msg, "Reply-To") == ["reply@example.com"]
    assert oracle.addresses(msg, "To") == [RECIPIENT]
    assert msg["Subject"] == SUBJECT
    assert str(msg["X-Priority"]).startswith("2")
    assert msg["X-Mailer"] == X_MAILER
    assert msg["Date"].datetime.utcoffset() is not None, msg["Date"]
    assert msg["MIME-Version"] == "1.0"
    assert oracle.normalize_newlines(oracle.body(msg, "plain")) == oracle.normalize_newlines(BODY)

    parts = oracle.attachments(msg)
    assert [p.filename for p in parts] == ["a.txt", "b.png"]
    a, b = parts
    assert (a.content_type, a.data) == ("text/plain", A_TXT)
    assert (b.content_type, b.data) == ("image/png", PNG)

    # The receipt agrees with what the server got.
    assert receipt["message_id"] == oracle.message_id(msg)
    assert receipt["accepted"] == [RECIPIENT]
    assert receipt["rejected"] == []
    assert receipt["reply"]["code"] == 250
    assert receipt["reply"]["enhanced"] == "2.0.0"
    assert receipt["size"] == len(raw)
    assert f"SIZE={len(raw)}" in [o.upper() for o in received.mail_options]


# ---------------------------------------------------------------------------
# 2. Wrong password
# ---------------------------------------------------------------------------

def test_wrong_password_is_a_typed_auth_error(run, smtpd):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False)
    wrong = "not-the-password-4711"

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", SUBJECT,
                "--text", "hello", *relay(server.address, "none"), *login(USER), "--json"],
               password=wrong)

    assert_exit(proc, EXIT_NOPERM)
    error = json_error(proc)
    assert error["kind"] == "auth"
    assert error["reply"]["code"] == 535
    assert error["reply"]["enhanced"] == "5.7.8"
    assert "Authentication credentials invalid" in error["reply"]["text"]
    assert [a.success for a in server.record.auth_attempts] == [False]
    assert_nothing_sent(server)
    for secret in secret_forms(USER, wrong):
        assert secret not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# 3. Non-ASCII, alternative bodies, inline images
# ---------------------------------------------------------------------------

def test_non_ascii_subject_names_and_filename_round_trip(run, smtpd, tmp_path):
    server = smtpd()
    subject = "Grüße 😀 aus Köln"
    text = "Grüße aus München 😀\nZweite Zeile: ÄÖÜ äöü ß\n"
    attachment = write(tmp_path / "résumé été.txt", "Ça va très bien.\n".encode())

    proc = run(["send",
                "--from", "Jürgen Müller <juergen@example.com>",
                "--to", "Zoë Ørsted <zoe@example.com>",
                "--subject", subject,
                "--text", text,
                "--attach", attachment,
                *relay(server.address, "none"), "--json"])

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert received.rcpt_tos == ["zoe@example.com"]
    raw = received.content
    assert_wire_format(raw)  # non-ASCII only as RFC 2047 / RFC 2231 encodings
    msg = oracle.parse(raw)
    assert msg["Subject"] == subject
    assert oracle.mailboxes(msg, "From") == [oracle.Mailbox("Jürgen Müller", "juergen@example.com")]
    assert oracle.mailboxes(msg, "To") == [oracle.Mailbox("Zoë Ørsted", "zoe@example.com")]
    assert oracle.normalize_newlines(oracle.body(msg, "plain")) == oracle.normalize_newlines(text)
    [part] = oracle.attachments(msg)
    assert part.filename == "résumé été.txt"
    assert part.data == "Ça va très bien.\n".encode()


def test_text_and_html_make_multipart_alternative(run, smtpd, tmp_path):
    server = smtpd()
    text = "Plain version, with ümlauts.\n"
    html = "<html><body><p>HTML version, with <b>ümlauts</b>.</p></body></html>\n"
    html_file = write(tmp_path / "body.html", html)

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "Both bodies",
                "--text", text, "--html", html_file, *relay(server.address, "none")])

    assert_exit(proc, EXIT_OK)
    raw = server.messages[0].content
    assert_wire_format(raw)
    msg = oracle.parse(raw)
    alternative = oracle.find_multipart(msg, "alternative")
    assert alternative is not None, oracle.content_types(msg)
    # RFC 2046 5.1.4: the preferred (richer) alternative comes last.
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert oracle.normalize_newlines(oracle.body(msg, "plain")) == oracle.normalize_newlines(text)
    assert oracle.normalize_newlines(oracle.body(msg, "html")) == oracle.normalize_newlines(html)


def test_inline_image_makes_multipart_related(run, smtpd, tmp_path):
    server = smtpd()
    logo_bytes = b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(2000)
    logo = write(tmp_path / "logo.png", logo_bytes)
    html = '<html><body><p>Our logo:</p><img src="cid:logo.png" alt="logo"></body></html>\n'
    html_file = write(tmp_path / "mail.html", html)
    report = write(tmp_path / "report.txt", b"numbers\n")

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "With logo",
                "--text", "See the HTML part.", "--html", html_file,
                "--inline", logo, "--attach", report, *relay(server.address, "none")])

    assert_exit(proc, EXIT_OK)
    raw = server.messages[0].content
    assert_wire_format(raw)
    msg = oracle.parse(raw)
    assert msg.get_content_type() == "multipart/mixed", oracle.content_types(msg)
    related = oracle.find_multipart(msg, "related")
    assert related is not None, oracle.content_types(msg)
    # The HTML and the image it refers to travel together in the related part.
    assert oracle.contains(related, "text/html") and oracle.contains(related, "image/png")
    assert "cid:logo.png" in oracle.body(msg, "html")
    assert oracle.find_multipart(msg, "alternative") is not None, oracle.content_types(msg)

    [inline] = oracle.inline_parts(msg)
    assert inline.content_id == "<logo.png>"
    assert inline.content_type == "image/png"
    assert inline.data == logo_bytes
    assert inline.disposition != "attachment"
    # The real attachment stays an attachment, outside the related part.
    [attachment] = oracle.attachments(msg)
    assert (attachment.filename, attachment.data) == ("report.txt", b"numbers\n")


# ---------------------------------------------------------------------------
# 4. Partial and total rejection of recipients
# ---------------------------------------------------------------------------

def test_one_of_three_recipients_rejected(run, smtpd):
    rejected = "nobody@example.com"
    server = smtpd(reject={rejected})
    recipients = ["one@example.com", rejected, "three@example.com"]

    proc = run(["send", "--from", SENDER, *[a for r in recipients for a in ("--to", r)],
                "--subject", SUBJECT, "--text", "hello", *relay(server.address, "none"),
                "--json"])

    assert_exit(proc, EXIT_OK)
    receipt = json_output(proc)
    assert receipt["accepted"] == ["one@example.com", "three@example.com"]
    [failure] = receipt["rejected"]
    assert failure["address"] == rejected
    assert failure["reply"]["code"] == 550
    assert failure["reply"]["enhanced"] == "5.1.1"
    assert "No such user" in failure["reply"]["text"]
    [received] = server.messages
    assert received.rcpt_tos == ["one@example.com", "three@example.com"]
    # The header still names every addressee.
    assert oracle.addresses(oracle.parse(received.content), "To") == recipients


def test_every_recipient_rejected_is_a_permanent_failure(run, smtpd):
    server = smtpd(reject={"a@example.com", "b@example.com"})

    proc = run(["send", "--from", SENDER, "--to", "a@example.com", "--to", "b@example.com",
                "--subject", SUBJECT, "--text", "hello", *relay(server.address, "none"),
                "--json"])

    assert_exit(proc, EXIT_UNAVAILABLE)
    error = json_error(proc)
    assert error["kind"] == "rejected"
    assert error["stage"] == "rcpt-to"
    assert error["reply"]["code"] == 550
    assert server.messages == []
    assert "DATA" not in server.record.verbs()


def test_cc_bcc_headers_and_ehlo(run, smtpd):
    server = smtpd()

    proc = run(["send", "--from", SENDER, "--to", "to@example.com", "--cc", "Carl <cc@example.com>",
                "--bcc", "hidden@example.com", "--subject", SUBJECT, "--text", "hello",
                "--header", "X-Campaign: spring 2025", "--ehlo", "client.wasmail.test",
                *relay(server.address, "none")])

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert sorted(received.rcpt_tos) == ["cc@example.com", "hidden@example.com", "to@example.com"]
    msg = oracle.parse(received.content)
    assert oracle.mailboxes(msg, "Cc") == [oracle.Mailbox("Carl", "cc@example.com")]
    assert msg["X-Campaign"] == "spring 2025"
    # Bcc is on the envelope only.
    assert msg["Bcc"] is None
    assert b"hidden@example.com" not in received.content
    assert [c.arg for c in server.record.commands if c.verb == "EHLO"] == ["client.wasmail.test"]


# ---------------------------------------------------------------------------
# 5. Volume over one session, pipelining, fallbacks (Postfix smtp-sink)
# ---------------------------------------------------------------------------

def test_thousand_messages_in_one_session(run, smtp_sink):
    sink = smtp_sink()

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "bulk",
                "--text", "one of many", "--repeat", BULK_COUNT,
                *relay(sink.address, "none")], timeout=BULK_TIMEOUT_S)

    assert_exit(proc, EXIT_OK)
    counters = sink.wait_for(BULK_COUNT)
    assert counters.messages == BULK_COUNT, counters
    assert counters.sessions == 1, counters


@pytest.mark.parametrize("flags", [[], ["-p"], ["-e"]], ids=["pipelining", "no-pipelining", "no-esmtp"])
def test_repeat_transcript_follows_server_capabilities(run, smtp_sink, flags):
    sink = smtp_sink(flags)

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "three",
                "--text", "hello", "--repeat", 3, *relay(sink.address, "none"), "-v"])

    assert_exit(proc, EXIT_OK)
    counters = sink.wait_for(3)
    assert (counters.messages, counters.sessions) == (3, 1), counters
    lines = transcript(proc.stderr)
    mail = index_of(lines, "C", "MAIL FROM")
    rcpt = index_of(lines, "C", "RCPT TO", mail)
    if flags == []:
        # RFC 2920: MAIL, RCPT and DATA go out before the reply to MAIL.
        data = index_of(lines, "C", "DATA", rcpt)
        assert not any(l.who == "S" for l in lines[mail:data]), describe(proc)
    elif flags == ["-p"]:
        # No PIPELINING announced: each command waits for its reply.
        assert any(l.who == "S" for l in lines[mail:rcpt]), describe(proc)
    else:
        # No ESMTP: EHLO is refused and the client falls back to HELO.
        index_of(lines, "C", "HELO")


# ---------------------------------------------------------------------------
# 6. A server that accepts the connection and never greets
# ---------------------------------------------------------------------------

def test_server_that_never_greets_times_out(run, scripted):
    server = scripted([Hold(NEVER_GREETS_BOUND_S * 3)])

    started = time.monotonic()
    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", SUBJECT,
                "--text", "hello", *relay(server.address, "none", timeout=2), "--json"],
               timeout=NEVER_GREETS_BOUND_S * 2)
    elapsed = time.monotonic() - started

    assert elapsed < NEVER_GREETS_BOUND_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert_exit(proc, EXIT_TEMPFAIL)
    error = json_error(proc)
    assert error["kind"] == "timeout"
    assert error["stage"] == "greeting"
    assert server.connected


# ---------------------------------------------------------------------------
# 7. The outbox (no --server)
# ---------------------------------------------------------------------------

# The host's name for an outbox file: ms since the epoch, pid, counter; never
# the Message-ID (a long one made ENAMETOOLONG).
OUTBOX_NAME = re.compile(r"\d{13}-\d+-\d{6}\.eml")


def assert_complete_outbox_message(path: Path, *, text: str) -> str:
    """Check the one message in the outbox; returns its Message-ID."""
    raw = path.read_bytes()
    assert_wire_format(raw)
    msg = oracle.parse(raw)
    assert OUTBOX_NAME.fullmatch(path.name), path.name
    # The folder holds this message and nothing else (no temp file left).
    assert [p.resolve() for p in path.parent.iterdir()] == [path.resolve()]
    assert oracle.mailboxes(msg, "From") == [oracle.Mailbox("Sender Name", SENDER)]
    assert oracle.addresses(msg, "To") == [RECIPIENT]
    assert oracle.addresses(msg, "Cc") == ["cc@example.com"]
    assert oracle.addresses(msg, "Reply-To") == ["reply@example.com"]
    assert msg["Subject"] == "Outbox Grüße"
    assert msg["Date"].datetime.utcoffset() is not None
    assert msg["MIME-Version"] == "1.0"
    assert str(msg["X-Priority"]).startswith("4")
    assert oracle.normalize_newlines(oracle.body(msg, "plain")) == oracle.normalize_newlines(text)
    [part] = oracle.attachments(msg)
    assert (part.filename, part.content_type, part.data) == ("b.png", "image/png", PNG)
    return oracle.message_id(msg)


def outbox_args(tmp_path: Path) -> list:
    return ["send", "--from", f"Sender Name <{SENDER}>", "--to", RECIPIENT,
            "--cc", "cc@example.com", "--reply-to", "reply@example.com",
            "--subject", "Outbox Grüße", "--priority", "low",
            "--attach", write(tmp_path / "b.png", PNG)]


def test_outbox_default_directory(run, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    text = "Read from standard input.\nSecond line.\n"

    proc = run([*outbox_args(tmp_path), "--body", "-"], input=text, cwd=cwd)

    assert_exit(proc, EXIT_OK)
    path = cwd / proc.stdout.strip()  # a relative path is relative to the cwd
    assert path.parent.resolve() == (cwd / "outbox").resolve(), describe(proc)
    assert_complete_outbox_message(path, text=text)


def test_outbox_directory_option_with_json(run, tmp_path):
    outbox = tmp_path / "elsewhere" / "out"
    text = "Stored, not sent.\n"

    proc = run([*outbox_args(tmp_path), "--text", text, "--outbox", outbox, "--json"])

    assert_exit(proc, EXIT_OK)
    receipt = json_output(proc)
    path = Path(receipt["outbox"])
    assert path.parent.resolve() == outbox.resolve(), describe(proc)
    [found] = outbox.iterdir()
    assert found.resolve() == path.resolve()
    assert assert_complete_outbox_message(found, text=text) == receipt["message_id"]


# ---------------------------------------------------------------------------
# 8. Bad input never reaches the server
# ---------------------------------------------------------------------------

# id, arguments, exit code, text the error message must contain. "{ok}",
# "{bad}" (a file whose name has a line feed) and "{missing}" stand for paths
# made by the test.
BAD_INPUT = [
    ("crlf-in-subject",
     ["--to", RECIPIENT, "--subject", "Hello\r\nBcc: victim@example.com"], EXIT_DATAERR, "subject"),
    ("lf-in-display-name",
     ["--to", f"Evil\nBcc: victim@example.com <{RECIPIENT}>"], EXIT_DATAERR, "to[0]"),
    ("malformed-address",
     ["--to", RECIPIENT, "--to", "not-an-address@@example..com"], EXIT_DATAERR, "to[1]"),
    ("crlf-in-extra-header",
     ["--to", RECIPIENT, "--header", "X-Note: a\r\nBcc: victim@example.com"], EXIT_DATAERR, "header"),
    ("reserved-extra-header",
     ["--to", RECIPIENT, "--header", "From: evil@example.com"], EXIT_DATAERR, "header"),
    ("control-in-attachment-name",
     ["--to", RECIPIENT, "--attach", "{ok}", "--attach", "{bad}"], EXIT_DATAERR, "attachments[1]"),
    ("missing-attachment",
     ["--to", RECIPIENT, "--attach", "{missing}"], EXIT_NOINPUT, "{missing}"),
]


@pytest.mark.parametrize("args, code, names", [c[1:] for c in BAD_INPUT],
                         ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_before_sending(run, smtpd, tmp_path, args, code, names):
    server = smtpd()
    files = {
        "ok": write(tmp_path / "ok.txt", b"fine\n"),
        "bad": write(tmp_path / "bad\nname.txt", b"the name has a line feed\n"),
        "missing": tmp_path / "no-such-dir" / "missing.txt",
    }
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    names = names.format(**files) if names.startswith("{") else names

    subject = [] if "--subject" in args else ["--subject", SUBJECT]
    proc = run(["send", "--from", SENDER, *subject, "--text", "hello", *args,
                *relay(server.address, "none"), "--json"])

    assert_exit(proc, code)
    error = json_error(proc)
    assert error["kind"] == ("invalid-message" if code == EXIT_DATAERR else "io")
    assert names in error["message"], error
    assert_nothing_sent(server)


@pytest.mark.parametrize("args", [
    ["--password", PASSWORD],              # secrets never on the command line
    ["--tls", "sometimes"],
    ["--priority", "urgent"],
    ["--auth", "digest-md5"],
    ["--no-such-option"],
], ids=["password-flag", "tls-value", "priority-value", "auth-value", "unknown-option"])
def test_usage_errors_exit_64(run, smtpd, args):
    server = smtpd()

    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--text", "hello",
                *relay(server.address, "none"), *args])

    assert_exit(proc, EXIT_USAGE)
    assert_nothing_sent(server)


def test_a_failed_auth_still_ends_with_quit(run, smtpd):
    """Every session that ends while its connection works ends with QUIT:
    servers log a dropped one (`lost connection after AUTH`)."""
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False)
    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", SUBJECT,
                "--text", "hello", *relay(server.address, "none"), *login(USER)],
               password="wrong-again")
    assert_exit(proc, EXIT_NOPERM)
    assert server.record.verbs()[-1] == "QUIT", server.record.verbs()


def test_a_refused_message_still_ends_with_quit(run, smtpd):
    server = smtpd(reject={RECIPIENT})
    proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", SUBJECT,
                "--text", "hello", *relay(server.address, "none")])
    assert proc.returncode != 0, describe(proc)
    assert server.record.verbs()[-1] == "QUIT", server.record.verbs()


def _run_on_a_terminal(cmd: list) -> tuple[int, bytes]:
    """Run `cmd` with stdout and stderr on a pseudo-terminal; return its exit
    code and everything it wrote there."""
    import os
    import pty
    import subprocess
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return proc.wait(timeout=60), out


def test_a_large_send_shows_progress_on_a_terminal_only(wasmail, smtp_sink, tmp_path):
    sink = smtp_sink()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 << 20))
    base = [wasmail, "send", "--from", SENDER, "--to", RECIPIENT, "--subject", "big",
            "--text", "see attachment", "--attach", big, *relay(f"127.0.0.1:{sink.port}", "none")]
    code, out = _run_on_a_terminal(base)
    assert code == 0, out
    assert b"MiB" in out and b"left" in out, out[-400:]
    code, out = _run_on_a_terminal([*base, "--json"])
    assert code == 0, out
    assert b"left" not in out, "no progress bar with --json"


def test_explicit_normal_priority_is_written_and_unset_is_not(run, tmp_path):
    """CSmtp's SetXPriority(XPRIORITY_NORMAL) writes `X-Priority: 3 (Normal)`;
    leaving the priority unset writes no header."""
    for extra, expected in [(["--priority", "normal"], b"X-Priority: 3 (Normal)\r\n"), ([], None)]:
        out = tmp_path / f"out{len(extra)}"
        proc = run(["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "p", "--text", "t",
                    "--outbox", out, *extra])
        assert_exit(proc, EXIT_OK)
        [eml] = list(out.glob("*.eml"))
        data = eml.read_bytes()
        if expected:
            assert expected in data, data[:500]
        else:
            assert b"X-Priority" not in data, data[:500]


def test_a_body_from_standard_input_is_read_up_to_its_limit(wasmail, tmp_path):
    """`--body -` fed without end (once read whole, until the mailer ran
    out of memory): refused with 65 once past 32 MiB, naming the field."""
    proc = subprocess.Popen([str(wasmail), "send", "--from", "a@example.com", "--to", "b@example.com",
                             "--body", "-", "--outbox", str(tmp_path / "outbox")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    # communicate() passes over the pipe the command closed once past it.
    _, err = proc.communicate(input=b"x" * (40 << 20), timeout=60)
    assert proc.returncode == 65, err
    assert b"body" in err and b"more than" in err, err
    assert not (tmp_path / "outbox").exists()
