"""DKIM signing (issue #13), checked by an independent implementation:
dkimpy verifies every signature with a `dnsfunc` that serves the public key
`wasmail dkim keygen` printed. Both algorithms (rsa-sha256, ed25519-sha256),
both canonicalizations for header and body, non-ASCII and long folded
headers, attachments as bytes (a plugin's) and as streamed files, a body
with trailing blank lines; and a signature that breaks when one byte of the
body or of a signed header changes. The key never enters the sandbox: that
is tested in host/tests/plugins.rs (`the_private_key_never_enters_a_store`).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import dkim
import pytest

from cli import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, assert_exit, describe, relay

DOMAIN = "example.com"
FROM = "Sender Name <sender@example.com>"
TO = "rcpt@example.com"
CANONICALIZATIONS = ["simple/simple", "relaxed/relaxed", "relaxed/simple", "simple/relaxed"]
ALGORITHMS = {"rsa2048": "rsa-sha256", "ed25519": "ed25519-sha256"}
# sysexits.h EX_CANTCREAT: keygen will not overwrite a key.
EXIT_CANTCREAT = 73


class Key:
    """A key made by `wasmail dkim keygen`, and its published record."""

    def __init__(self, path: Path, name: str, value: str, algorithm: str):
        self.path, self.name, self.value, self.algorithm = path, name, value, algorithm

    def dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        """What DNS would answer for the record, and nothing for any other name."""
        if name.decode().rstrip(".") == self.name:
            return self.value.encode()
        return b""


def keygen(run, folder: Path, algorithm: str, selector: str = "s1", domain: str = DOMAIN) -> Key:
    path = folder / f"{selector}-{algorithm}.private"
    proc = run(["dkim", "keygen", "--domain", domain, "--selector", selector,
                "--algorithm", algorithm, "--out", path, "--json"])
    assert_exit(proc, EXIT_OK)
    out = json.loads(proc.stdout)
    assert out["name"] == f"{selector}._domainkey.{domain}"
    assert out["algorithm"] == ALGORITHMS[algorithm]
    return Key(path, out["name"], out["value"], out["algorithm"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory, wasmail):
    """One key of each type, made once for the module."""
    import subprocess
    folder = tmp_path_factory.mktemp("keys")

    def run(args):
        return subprocess.run([str(wasmail), *map(str, args)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    return {a: keygen(run, folder, a) for a in ALGORITHMS}


def sign_args(key: Key, canonicalization: str = "relaxed/relaxed", domain: str = DOMAIN,
              selector: str = "s1") -> list:
    return ["--dkim-key", key.path, "--dkim-domain", domain, "--dkim-selector", selector,
            "--dkim-canonicalization", canonicalization]


def verify(raw: bytes, key: Key) -> bool:
    return dkim.verify(raw, dnsfunc=key.dnsfunc)


def signature_tags(raw: bytes) -> dict:
    """The tags of the (first) DKIM-Signature field."""
    m = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", raw, re.S | re.M | re.I)
    assert m, raw[:500]
    value = re.sub(rb"\s", b"", m.group(1)).decode()
    return dict(t.split("=", 1) for t in value.split(";") if t)


def outbox_message(proc, outbox: Path) -> bytes:
    assert_exit(proc, EXIT_OK)
    [path] = sorted(outbox.glob("*.eml"))
    return path.read_bytes()


def assert_breaks(raw: bytes, key: Key) -> None:
    """Verified as is; one byte changed in the body, or in a signed header,
    or a second From, a Reply-To, a Cc or a second Subject added, and it
    fails."""
    assert verify(raw, key), raw.decode(errors="replace")
    head, body = raw.split(b"\r\n\r\n", 1)
    i = len(body) // 2
    while body[i:i + 1] in (b"\r", b"\n", b" ", b"\t", b"="):
        i += 1
    flipped = bytes([body[i] ^ 0x01])
    assert not verify(head + b"\r\n\r\n" + body[:i] + flipped + body[i + 1:], key), "body byte"
    m = re.search(rb"\r\nSubject: ", raw)
    j = m.end()
    assert not verify(raw[:j] + bytes([raw[j] ^ 0x01]) + raw[j + 1:], key), "subject byte"
    assert not verify(raw.replace(b"\r\nTo: ", b"\r\nTo: x", 1), key), "to"
    assert not verify(b"From: Someone Else <ceo@example.com>\r\n" + raw, key), "a second From"
    # Every signed field is oversigned: one that is absent, or a second
    # copy of one that is there, cannot be added either.
    if b"\r\nReply-To:" not in b"\r\n" + head:
        assert not verify(b"Reply-To: attacker@evil.example\r\n" + raw, key), "an added Reply-To"
    assert not verify(b"Subject: another subject\r\n" + raw, key), "a second Subject"
    assert not verify(b"Cc: attacker@evil.example\r\n" + raw, key), "an added Cc"
    # An unsigned header may be added on the way (relays add Received).
    assert verify(b"Received: from relay by mx; Thu, 1 Jan 2026 00:00:00 +0000\r\n" + raw, key)


# ----------------------------------------------------------------------------
# keygen
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_keygen_writes_a_private_key_and_prints_the_record(run, tmp_path, algorithm):
    cwd = tmp_path / "k"
    cwd.mkdir()
    proc = run(["dkim", "keygen", "--domain", DOMAIN, "--selector", "mail2026",
                "--algorithm", algorithm], cwd=cwd)
    assert_exit(proc, EXIT_OK)
    key = cwd / "mail2026.private"
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    # The zone-file line, its value cut into strings of at most 255 octets.
    assert proc.stdout.startswith(f"mail2026._domainkey.{DOMAIN}. IN TXT ( \""), proc.stdout
    strings = re.findall(r'"([^"]*)"', proc.stdout)
    assert all(len(s) <= 255 for s in strings)
    value = "".join(strings)
    k = "ed25519" if algorithm == "ed25519" else "rsa"
    assert re.fullmatch(rf"v=DKIM1; k={k}; p=[A-Za-z0-9+/]+=*", value), value
    assert "mail2026._domainkey.example.com" in proc.stderr and "0600" in proc.stderr
    # `dkim record` prints the same record for the key file.
    again = run(["dkim", "record", "--key", key, "--domain", DOMAIN, "--selector", "mail2026"], cwd=cwd)
    assert_exit(again, EXIT_OK)
    assert again.stdout == proc.stdout
    # Never over an existing key.
    proc = run(["dkim", "keygen", "--domain", DOMAIN, "--selector", "mail2026"], cwd=cwd)
    assert_exit(proc, EXIT_CANTCREAT)
    assert "mail2026.private" in proc.stderr


def test_keygen_refuses_bad_names(run, tmp_path):
    proc = run(["dkim", "keygen", "--domain", "exa mple.com", "--selector", "s1", "--out", tmp_path / "k"])
    assert_exit(proc, EXIT_USAGE)
    assert not (tmp_path / "k").exists()


def test_a_key_others_can_read_is_refused(run, tmp_path, keys):
    loose = tmp_path / "loose.private"
    loose.write_bytes(keys["ed25519"].path.read_bytes())
    loose.chmod(0o644)
    proc = run(["send", "--from", FROM, "--to", TO, "--text", "x", "--outbox", tmp_path / "out",
                *sign_args(Key(loose, "", "", ""))])
    assert_exit(proc, EXIT_CONFIG)
    assert "other users can read or write it (mode 0644)" in proc.stderr, describe(proc)
    assert "chmod 600" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_mail_from_another_domain_is_not_signed_by_this_one(run, tmp_path, keys):
    proc = run(["send", "--from", "me@example.org", "--to", TO, "--text", "x",
                "--outbox", tmp_path / "out", *sign_args(keys["ed25519"])])
    assert_exit(proc, EXIT_USAGE)
    assert "does not cover the From domain example.org" in proc.stderr, describe(proc)
    # Lookalikes are other domains too.
    proc = run(["send", "--from", "me@notexample.com", "--to", TO, "--text", "x",
                "--outbox", tmp_path / "out", *sign_args(keys["ed25519"])])
    assert_exit(proc, EXIT_USAGE)


def test_dkim_flags_come_together(run, tmp_path, keys):
    proc = run(["send", "--from", FROM, "--to", TO, "--text", "x", "--outbox", tmp_path / "out",
                "--dkim-key", keys["ed25519"].path])
    assert_exit(proc, EXIT_USAGE)


# ----------------------------------------------------------------------------
# Signatures dkimpy verifies
# ----------------------------------------------------------------------------

LONG_SUBJECT = " ".join(["Quarterly", "numbers", "with", "a", "subject", "long", "enough", "to", "fold"] * 8)


@pytest.mark.parametrize("canonicalization", CANONICALIZATIONS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_outbox_messages_verify_and_break(run, tmp_path, keys, algorithm, canonicalization):
    """Non-ASCII (encoded words, and a raw UTF-8 address), long folded
    headers (a long subject, ten recipients), an extra header, a body with
    trailing white space and trailing blank lines."""
    key = keys[algorithm]
    outbox = tmp_path / "out"
    recipients = [f"--to=Rëcipient Nümber {i} <r{i}@example.org>" for i in range(10)]
    proc = run(["send", "--from", "Jörg Ünïcode <joerg@example.com>", *recipients,
                "--cc", "ü@example.org", "--reply-to", "replies@example.com",
                "--subject", f"Grüße: {LONG_SUBJECT}", "--header", "X-Report-Id: 42",
                "--x-mailer", "wasmail tests", "--priority", "high",
                "--text", "Hello  there, \t\nsecond line\n\n\n\n",
                "--outbox", outbox, *sign_args(key, canonicalization)])
    raw = outbox_message(proc, outbox)
    assert raw.startswith(b"DKIM-Signature: "), raw[:200]
    tags = signature_tags(raw)
    assert tags["a"] == ALGORITHMS[algorithm] and tags["c"] == canonicalization
    assert tags["d"] == DOMAIN and tags["s"] == "s1" and "l" not in tags
    assert int(tags["t"]) > 1_700_000_000
    signed = tags["h"].split(":")
    assert signed[:2] == ["from", "from"], signed
    for name in ["reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
                 "content-type", "x-priority", "x-mailer", "x-report-id"]:
        assert name in signed, (name, signed)
    assert b"\r\nSubject: =?utf-8?" in raw and "ü@example.org".encode() in raw
    head = raw.split(b"\r\n\r\n", 1)[0]
    to = re.search(rb"\r\nTo: .*?\r\n(?![ \t])", head, re.S).group(0)
    assert to.count(b"\r\n ") >= 5, to
    assert max(len(l) for l in head.split(b"\r\n")) <= 78
    assert_breaks(raw, key)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_streamed_attachments_to_a_relay_verify(run, tmp_path, keys, smtpd, algorithm):
    """`send` streams files to the relay (a first pass hashes them); the
    message the server received verifies, for each canonicalization."""
    key = keys[algorithm]
    server = smtpd()
    data = random.Random(13).randbytes(3 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "notes.txt").write_text("line one  \nline two\n\n\n")
    for canonicalization in ["simple/simple", "relaxed/relaxed"]:
        proc = run(["send", "--from", FROM, "--to", TO, "--subject", "files",
                    "--text", "attached\n", "--attach", tmp_path / "big.bin",
                    "--attach", tmp_path / "notes.txt", *relay(server.address),
                    *sign_args(key, canonicalization)])
        assert_exit(proc, EXIT_OK)
    assert len(server.messages) == 2
    for m in server.messages:
        assert len(m.content) > len(data)
        assert_breaks(m.content, key)


def test_repeat_signs_each_message(run, tmp_path, keys, smtpd):
    server = smtpd()
    proc = run(["send", "--from", FROM, "--to", TO, "--text", "x", "--repeat", "3", "-v",
                *relay(server.address), *sign_args(keys["ed25519"]), "--dkim-expire", "3600"])
    assert_exit(proc, EXIT_OK)
    assert proc.stderr.count("* DKIM: signed as example.com (selector s1, ed25519-sha256)") == 3, proc.stderr
    tags = [signature_tags(m.content) for m in server.messages]
    assert len({t["b"] for t in tags}) == 3, "each message has its own Message-ID and signature"
    for m, t in zip(server.messages, tags):
        assert int(t["x"]) == int(t["t"]) + 3600
        assert verify(m.content, keys["ed25519"])


def test_a_subdomain_is_signed_by_its_parent(run, tmp_path, keys):
    outbox = tmp_path / "out"
    proc = run(["send", "--from", "alerts@mail.example.com", "--to", TO, "--text", "x",
                "--outbox", outbox, *sign_args(keys["rsa2048"])])
    raw = outbox_message(proc, outbox)
    assert signature_tags(raw)["d"] == DOMAIN
    assert verify(raw, keys["rsa2048"])


def test_the_kept_copy_is_what_was_signed_and_retry_resends_it(run, tmp_path, keys):
    """An unreachable relay: the dead-letter copy carries the signature, and
    `retry` sends exactly those bytes, which still verify."""
    from aiosmtpd.controller import Controller
    from servers import free_port

    class Collect:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.original_content)
            return "250 2.0.0 Ok"

    key = keys["ed25519"]
    folder = tmp_path / "dead"
    (tmp_path / "a.bin").write_bytes(os.urandom(200_000))
    port = free_port()
    proc = run(["send", "--from", FROM, "--to", TO, "--subject", "kept", "--text", "body\n",
                "--attach", tmp_path / "a.bin", *relay(f"127.0.0.1:{port}", timeout=5),
                "--dead-letter", folder, *sign_args(key)])
    assert proc.returncode != 0, describe(proc)
    [eml] = sorted(folder.glob("*.eml"))
    kept = eml.read_bytes()
    assert_breaks(kept, key)

    handler = Collect()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        proc = run(["retry", "--dead-letter", folder, "--audit", tmp_path / "audit.jsonl"])
        assert_exit(proc, EXIT_OK)
    finally:
        controller.stop()
    [sent] = handler.messages
    assert sent == kept
    assert verify(sent, key)


# ----------------------------------------------------------------------------
# Plugins
# ----------------------------------------------------------------------------

def plugin_config(path: Path, key: Key, *, relay_address: str | None = None, outbox: Path | None = None,
                  canonicalization: str = "relaxed/relaxed", plugin: str = "hello") -> Path:
    relay_table = (f'[relay]\nserver = "{relay_address}"\ntls = "none"\ntimeout_secs = 5\n'
                   if relay_address else "")
    path.write_text(f"""
audit = "{path.parent / 'audit.jsonl'}"
dead_letter = "{path.parent / 'dead'}"
outbox = "{outbox or path.parent / 'outbox'}"
{relay_table}
[dkim.main]
domain = "{DOMAIN}"
selector = "s1"
key_file = "{key.path}"
algorithm = "{key.algorithm}"
canonicalization = "{canonicalization}"
headers = ["List-Unsubscribe"]

[plugins.{plugin}]
allowed_from = ["*@example.com"]
default_from = "Plugin <plugin@example.com>"
allowed_recipients = ["*@example.com"]
allowed_headers = ["X-Mailer"]
dkim = "main"
""")
    return path


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_plugin_mail_to_a_relay_is_signed(run, plugins, smtpd, tmp_path, keys, algorithm):
    key = keys[algorithm]
    server = smtpd()
    config = plugin_config(tmp_path / "wasmail.toml", key, relay_address=server.address,
                           canonicalization="simple/simple")
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--json"])
    assert_exit(proc, EXIT_OK)
    [m] = server.messages
    signed = signature_tags(m.content)["h"].split(":")
    assert "x-mailer" in signed and "list-unsubscribe" in signed, signed
    assert_breaks(m.content, key)


def test_plugin_bytes_attachment_in_the_outbox_is_signed(run, plugins, tmp_path, keys):
    """The report plugin attaches its CSV as bytes."""
    key = keys["rsa2048"]
    outbox = tmp_path / "out"
    config = plugin_config(tmp_path / "wasmail.toml", key, outbox=outbox, plugin="report")
    report = {"to": [TO], "title": "Sales — Q3", "rows": [{"name": "north", "value": 12.5}]}
    proc = run(["run", plugins["report"], "--config", config, "--input-text", json.dumps(report)])
    raw = outbox_message(proc, outbox)
    assert b"report.csv" in raw
    assert_breaks(raw, key)


def test_a_plugin_without_an_identity_is_not_signed(run, plugins, tmp_path, keys):
    outbox = tmp_path / "out"
    config = plugin_config(tmp_path / "wasmail.toml", keys["ed25519"], outbox=outbox)
    config.write_text(config.read_text().replace('dkim = "main"\n', ""))
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO])
    raw = outbox_message(proc, outbox)
    assert b"DKIM-Signature" not in raw


def test_a_plugin_naming_a_missing_identity_is_a_config_error(run, plugins, tmp_path, keys):
    config = plugin_config(tmp_path / "wasmail.toml", keys["ed25519"])
    config.write_text(config.read_text().replace('dkim = "main"', 'dkim = "other"'))
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO])
    assert_exit(proc, EXIT_CONFIG)
    assert "plugins.hello.dkim: there is no [dkim.other] table" in proc.stderr, describe(proc)


def test_nobody_sets_their_own_dkim_signature(run, tmp_path):
    """DKIM-Signature is a header only the mailer writes."""
    proc = run(["send", "--from", FROM, "--to", TO, "--text", "x", "--outbox", tmp_path / "out",
                "--header", "DKIM-Signature: v=1; forged"])
    assert proc.returncode == 65, describe(proc)
    assert "DKIM-Signature is written by the builder" in proc.stderr
