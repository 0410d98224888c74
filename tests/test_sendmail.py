"""`wasmail sendmail`: the sendmail interface cron, git send-email, mutt and
PHP `mail()` use, with real messages piped through it to aiosmtpd.

The relay comes from the config found in the usual places (here
`$WASMAIL_CONFIG`); the message keeps its own headers, loses Bcc, gains Date
and Message-ID when missing, and still goes through the mailer's wire
checks.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
from pathlib import Path

from cli import describe

CRON_MAIL = (
    "From: Cron Daemon <cron@example.com>\n"
    "To: ops@example.com\n"
    "Cc: \"Smith, Jo\" <jo@example.com>\n"
    "Bcc: audit@example.com\n"
    "Subject: Cron <root@host> backup\n"
    "\n"
    "backup done\n"
    ".hidden line\n"
)


def config(tmp_path: Path, server) -> Path:
    path = tmp_path / "wasmail.toml"
    path.write_text(f"""
[relay]
server = "{server.address}"
tls = "none"
timeout_secs = 5
""")
    return path


def sendmail(wasmail: Path, args: list, message: str | bytes, cfg: Path, *, argv0: Path | None = None,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WASMAIL_CONFIG=str(cfg))
    data = message.encode() if isinstance(message, str) else message
    cmd = [str(argv0), *args] if argv0 else [str(wasmail), "sendmail", *args]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60, env=env, cwd=cwd)


def test_dash_t_takes_recipients_from_the_headers_and_drops_bcc(wasmail, smtpd, tmp_path):
    server = smtpd()
    proc = sendmail(wasmail, ["-t", "-i"], CRON_MAIL, config(tmp_path, server))
    assert proc.returncode == 0, proc.stderr
    [m] = server.messages
    assert m.mail_from == "cron@example.com"
    assert sorted(m.rcpt_tos) == ["audit@example.com", "jo@example.com", "ops@example.com"]
    assert b"audit@example.com" not in m.content, "Bcc must not be in the message"
    parsed = email.message_from_bytes(m.content, policy=email.policy.default)
    assert parsed["Subject"] == "Cron <root@host> backup"
    assert parsed["Date"] and parsed["Message-ID"], "Date and Message-ID are added"
    assert parsed.get_content().replace("\r\n", "\n") == "backup done\n.hidden line\n"


def test_invoked_as_sendmail_with_recipients_and_a_lone_dot(wasmail, smtpd, tmp_path):
    """As PHP and cron call it: a `sendmail` symlink, recipients as
    arguments, `-f` for the envelope; without `-i` a lone dot ends input."""
    server = smtpd()
    link = tmp_path / "sendmail"
    link.symlink_to(wasmail)
    message = "Subject: php\n\nfirst\n.\nnever sent\n"
    proc = sendmail(wasmail, ["-f", "www@example.com", "-F", "Web Site", "dest@example.com"], message,
                    config(tmp_path, server), argv0=link)
    assert proc.returncode == 0, proc.stderr
    [m] = server.messages
    assert (m.mail_from, m.rcpt_tos) == ("www@example.com", ["dest@example.com"])
    parsed = email.message_from_bytes(m.content, policy=email.policy.default)
    assert parsed["From"] == "Web Site <www@example.com>"
    assert "never sent" not in parsed.get_content()


def test_smuggling_and_bad_input_cannot_pass(wasmail, smtpd, tmp_path):
    server = smtpd()
    cfg = config(tmp_path, server)
    smuggle = b"From: a@example.com\nTo: b@example.com\n\nhello\n\r\n.\r\nMAIL FROM:<x@evil.example>\n"
    proc = sendmail(wasmail, ["-t", "-i"], smuggle, cfg)
    assert proc.returncode == 0, proc.stderr
    [m] = server.messages
    assert m.mail_from == "a@example.com" and m.rcpt_tos == ["b@example.com"], "one transaction only"
    assert b"MAIL FROM:<x@evil.example>" in m.content, "the smuggled command stayed message text"
    for bad, field in [
        (b"From: a@example.com\nTo: b@example.com\n\nbare\rCR\n", b"carriage return"),
        (b"From: a@example.com\nTo: alice@example.org(<bob@evil.example>\n\nhi\n", b"To[0]"),
        (b"To: b@example.com\n\nno sender\n", b"From"),
        (b"From: a@example.com\nTo: b@example.com\n\n" + b"x" * 2000 + b"\n", b"998"),
    ]:
        proc = sendmail(wasmail, ["-t", "-i"], bad, cfg)
        assert proc.returncode == 65, (bad, proc.returncode, proc.stderr)
        assert field.lower() in proc.stderr.lower(), (field, proc.stderr)
    assert len(server.messages) == 1, "nothing else was sent"


def test_without_a_relay_the_message_goes_to_the_outbox(wasmail, tmp_path):
    cfg = tmp_path / "wasmail.toml"
    cfg.write_text(f'outbox = "{tmp_path / "outbox"}"\n')
    proc = sendmail(wasmail, ["-t"], CRON_MAIL, cfg)
    assert proc.returncode == 0, proc.stderr
    [eml] = list((tmp_path / "outbox").glob("*.eml"))
    assert b"Bcc" not in eml.read_bytes() and b"\r\n\r\nbackup done\r\n" in eml.read_bytes()
