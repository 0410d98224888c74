"""`wasmail send` against a real, strict Postfix smtpd (servers.PostfixSmtpd).

A private Postfix on loopback takes mail for any domain and discards it;
its log tells whether it delivered each message and whether it had anything
to say about the client. It refuses, and logs, a command pipelined where
RFC 2920 says to wait (`smtpd_forbid_unauth_pipelining`) and a bare LF
(`smtpd_forbid_bare_newline = reject`), so "Postfix logged no warning" is a
real check of the mailer's protocol manners. The control tests at the end
prove that: a raw client that breaks those rules is refused and logged.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from typing import Optional

import pytest

from cli import (EXIT_OK, RECIPIENT, SENDER, assert_exit, describe, index_of, json_output,
                 relay, transcript)

# Messages in the one-session `--repeat` test.
REPEAT_COUNT = 50
# Messages smtp-source sends over its one connection.
SMTP_SOURCE_COUNT = 10
# How long a raw control client waits for one reply.
RAW_REPLY_TIMEOUT_S = 10
# How long smtp-source may take.
SMTP_SOURCE_TIMEOUT_S = 60

SUBJECT = "Grüße aus Köln 😀: the numbers"
TEXT = "Grüße aus München 😀\nZweite Zeile: ÄÖÜ äöü ß\n.a line that starts with a dot\n"
# Binary attachment bytes, a bare CR, LF and NUL among them: base64 must
# carry them without a bare LF reaching the wire.
ATTACHMENT = bytes(range(256)) * 40 + b"\r\n.\r\nend\n"

QUEUED_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


def send_args(server, *extra) -> list:
    return ["send", "--from", SENDER, "--to", RECIPIENT, *relay(server.address, "none"), *extra]


def queue_id(receipt: dict) -> str:
    """The Postfix queue ID in a receipt's final reply (`Ok: queued as ID`)."""
    assert receipt["reply"]["code"] == 250, receipt
    assert receipt["reply"]["enhanced"] == "2.0.0", receipt
    m = QUEUED_RE.search(receipt["reply"]["text"])
    assert m, receipt
    return m[1]


def assert_clean_session(server, messages: int, content: Optional[str] = None) -> dict:
    """The one client session sent `messages` messages, every command of it
    was accepted, it ended with QUIT, and Postfix logged no complaint.
    `content` "DATA" or "BDAT" says how the content must have gone (DATA
    once per message, or BDAT and no DATA); None takes either."""
    [session] = server.sessions()
    assert "/" not in " ".join(session.values()), f"a command was refused: {session}"
    assert session.get("quit") == "1", session
    assert int(session.get("mail", 0)) == messages, session
    if content == "DATA":
        assert int(session.get("data", 0)) == messages and "bdat" not in session, session
    elif content == "BDAT":
        assert int(session.get("bdat", 0)) >= messages and "data" not in session, session
    else:
        assert content is None, content
        assert int(session.get("data", 0)) == messages or "bdat" in session, session
    assert server.warnings() == [], "\n".join(server.log_lines())
    return session


def content_command(chunking: bool) -> str:
    """How wasmail sends the content to Postfix, which always announces
    PIPELINING: BDAT when CHUNKING is announced too (RFC 3030), else DATA."""
    return "BDAT" if chunking else "DATA"


def client_commands(lines, verb: str) -> list[str]:
    """The client's `verb` lines in a -v transcript (`DATA` alone, or
    `BDAT n [LAST]`)."""
    return [l.text for l in lines
            if l.who == "C" and l.text.upper().split(" ", 1)[0] == verb]


def ehlo_keywords(lines) -> set[str]:
    """The EHLO keywords a -v transcript shows the server announcing."""
    first = index_of(lines, "S", "250-")
    words = set()
    for line in lines[first + 1:]:
        if line.who != "S" or not line.text.startswith("250"):
            break
        words.add(line.text[4:].split()[0].upper())
        if line.text.startswith("250 "):
            break
    return words


# ---------------------------------------------------------------------------
# wasmail send against Postfix
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("chunking", [True, False], ids=["chunking", "no-chunking"])
def test_plain_message_is_queued_and_discarded(run, postfix_smtpd, chunking):
    server = postfix_smtpd(chunking=chunking)

    proc = run(send_args(server, "--subject", "plain", "--text", "hello", "--json", "-v"))

    assert_exit(proc, EXIT_OK)
    qid = queue_id(json_output(proc))
    assert server.delivered(1) == 1, "\n".join(server.log_lines())
    assert [(d.queue_id, d.recipient) for d in server.deliveries()] == [(qid, RECIPIENT)]
    assert_clean_session(server, 1, content_command(chunking))
    lines = transcript(proc.stderr)
    assert ("CHUNKING" in ehlo_keywords(lines)) == chunking, describe(proc)
    # BDAT when CHUNKING is offered (one `BDAT n LAST` for a small
    # message), DATA when it is not; never both.
    if chunking:
        [bdat] = client_commands(lines, "BDAT")
        assert bdat.upper().endswith(" LAST"), describe(proc)
        assert client_commands(lines, "DATA") == [], describe(proc)
    else:
        assert client_commands(lines, "DATA") == ["DATA"], describe(proc)
        assert client_commands(lines, "BDAT") == [], describe(proc)


def test_attachment_and_non_ascii_subject(run, postfix_smtpd, tmp_path):
    server = postfix_smtpd()
    attachment = tmp_path / "résumé été.bin"
    attachment.write_bytes(ATTACHMENT)

    proc = run(send_args(server, "--subject", SUBJECT, "--text", TEXT,
                         "--attach", attachment, "--json", "-v"))

    assert_exit(proc, EXIT_OK)
    receipt = json_output(proc)
    qid = queue_id(receipt)
    assert server.delivered(1) == 1, "\n".join(server.log_lines())
    assert [d.queue_id for d in server.deliveries()] == [qid]
    assert_clean_session(server, 1, "BDAT")
    # Postfix's own count of the message it queued is the size we sent,
    # give or take the Received: header it adds.
    [active] = [l for l in server.log_lines() if f"{qid}: from=<{SENDER}>" in l]
    size = int(re.search(r"size=(\d+)", active)[1])
    assert size > receipt["size"] > len(ATTACHMENT), (size, receipt["size"])


@pytest.mark.parametrize("chunking", [True, False], ids=["chunking", "no-chunking"])
def test_repeat_pipelines_without_complaint(run, postfix_smtpd, chunking):
    server = postfix_smtpd(chunking=chunking)

    proc = run(send_args(server, "--subject", "repeat", "--text", "one of many",
                         "--repeat", REPEAT_COUNT, "--json", "-v"))

    assert_exit(proc, EXIT_OK)
    receipts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(receipts) == REPEAT_COUNT, describe(proc)
    qids = [queue_id(r) for r in receipts]
    assert len(set(qids)) == REPEAT_COUNT
    assert server.delivered(REPEAT_COUNT) == REPEAT_COUNT, "\n".join(server.log_lines())
    assert sorted(d.queue_id for d in server.deliveries()) == sorted(qids)
    content = content_command(chunking)
    assert_clean_session(server, REPEAT_COUNT, content)
    lines = transcript(proc.stderr)
    assert len(client_commands(lines, content)) == REPEAT_COUNT, describe(proc)
    assert client_commands(lines, "BDAT" if content == "DATA" else "DATA") == [], describe(proc)
    # The mailer did pipeline (RFC 2920): MAIL, RCPT and DATA (or BDAT and
    # its octets) go out before the reply to MAIL, and Postfix, which
    # refuses a command sent where it must wait, took all of them.
    mail = index_of(lines, "C", "MAIL FROM")
    data = index_of(lines, "C", content, mail)
    assert not any(l.who == "S" for l in lines[mail:data]), describe(proc)


def test_smtp_source_is_accepted(postfix_smtpd):
    """Postfix's own load generator, as the bench runs it, is a clean
    client too (so the server's strictness is no bias against anyone)."""
    server = postfix_smtpd()
    binary = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    assert os.access(binary, os.X_OK), "smtp-source not found (apt-get install postfix)"

    proc = subprocess.run([binary, "-d", "-m", str(SMTP_SOURCE_COUNT), "-f", SENDER,
                           "-t", RECIPIENT, server.address],
                          capture_output=True, text=True, timeout=SMTP_SOURCE_TIMEOUT_S)

    assert proc.returncode == 0, describe(proc)
    assert server.delivered(SMTP_SOURCE_COUNT) == SMTP_SOURCE_COUNT
    assert_clean_session(server, SMTP_SOURCE_COUNT, "DATA")


def test_two_servers_side_by_side(run, postfix_smtpd):
    first, second = postfix_smtpd(), postfix_smtpd(chunking=False)
    assert first.port != second.port and first.root != second.root

    for server, subject in ((first, "first"), (second, "second")):
        assert_exit(run(send_args(server, "--subject", subject, "--text", "x")), EXIT_OK)

    for server, content in ((first, "BDAT"), (second, "DATA")):
        assert server.delivered(1) == 1
        assert_clean_session(server, 1, content)


# ---------------------------------------------------------------------------
# Controls: the log does show a client that breaks the rules
# ---------------------------------------------------------------------------

class RawClient:
    """A plain socket that sends exactly the bytes it is given."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RAW_REPLY_TIMEOUT_S)
        self.file = self.sock.makefile("rb")

    def reply(self) -> str:
        """One whole reply (all its lines); "" once the server closed."""
        lines = []
        while True:
            line = self.file.readline().decode("utf-8", "replace")
            if not line:
                break
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                break
        return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


ENVELOPE = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\n".encode()


def greeted_client(server) -> RawClient:
    client = RawClient(server.port)
    assert client.reply().startswith("220 ")
    return client


def open_transaction(server) -> RawClient:
    """A client after EHLO, MAIL and RCPT, each sent after the last reply."""
    client = greeted_client(server)
    client.send(b"EHLO client.test\r\n")
    assert client.reply().startswith("250")
    for line in ENVELOPE.splitlines(keepends=True):
        client.send(line)
        assert client.reply().startswith("250 2.1."), line
    return client


def test_control_rfc2920_pipelining_is_not_a_warning(postfix_smtpd):
    """What a pipelining client may do: MAIL, RCPT and DATA in one write
    after the EHLO reply, the content after the 354."""
    server = postfix_smtpd()
    client = greeted_client(server)
    client.send(b"EHLO client.test\r\n")
    assert client.reply().startswith("250")
    client.send(ENVELOPE + b"DATA\r\n")
    assert client.reply().startswith("250 2.1.0")
    assert client.reply().startswith("250 2.1.5")
    assert client.reply().startswith("354")
    client.send(b"Subject: control\r\n\r\nok\r\n.\r\nQUIT\r\n")
    assert client.reply().startswith("250 2.0.0 Ok: queued as")
    assert client.reply().startswith("221")
    client.close()

    assert server.delivered(1) == 1
    assert_clean_session(server, 1, "DATA")


@pytest.mark.parametrize("before, pipelined, after", [
    (b"", b"EHLO client.test\r\n" + ENVELOPE, "EHLO"),
    (b"EHLO client.test\r\n", ENVELOPE + b"DATA\r\nSubject: early\r\n\r\nx\r\n.\r\n", "DATA"),
], ids=["after-ehlo", "content-before-354"])
def test_control_improper_pipelining_is_refused_and_logged(postfix_smtpd, before, pipelined, after):
    server = postfix_smtpd()
    client = greeted_client(server)
    if before:
        client.send(before)
        assert client.reply().startswith("250")
    client.send(pipelined)
    replies = []
    while reply := client.reply():
        replies.append(reply)
    client.close()

    assert replies[-1] == "554 5.5.0 Error: SMTP protocol synchronization", replies
    assert server.delivered(0, sessions=1) == 0
    assert any(f"improper command pipelining after {after} from" in l
               for l in server.warnings()), "\n".join(server.log_lines())


@pytest.mark.parametrize("command", ["DATA", "BDAT"])
def test_control_bare_lf_is_refused_and_logged(postfix_smtpd, command):
    server = postfix_smtpd()
    client = open_transaction(server)
    content = b"Subject: bare\r\n\r\na line ending in a bare\nLF\r\n"
    if command == "DATA":
        client.send(b"DATA\r\n")
        assert client.reply().startswith("354")
        client.send(content + b".\r\n")
    else:
        client.send(b"BDAT %d LAST\r\n" % len(content) + content)
    reply = client.reply()
    client.send(b"QUIT\r\n")
    assert client.reply().startswith("221")
    client.close()

    assert reply.startswith("550 5.5.2") and "bare <LF> received" in reply, reply
    assert server.delivered(0, sessions=1) == 0
    assert any("bare <LF> received" in l for l in server.warnings()), \
        "\n".join(server.log_lines())
