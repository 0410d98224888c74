"""Self-checks of the test servers, with Python's smtplib as the client.

They need no wasmail binary: when a wasmail test fails, these tell whether
the harness or the CLI is at fault.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess

import pytest

import oracle
from cli import PASSWORD, USER
from scripted import (Expect, Flood, Hold, RawSend, ReadData, Send, SendSlowly, Serve,
                      StartTLS, TLSClose)

SMTPLIB_TIMEOUT_S = 10
MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def client_context(certs) -> ssl.SSLContext:
    """A verifying client context that trusts the test CA."""
    return ssl.create_default_context(cafile=certs.ca)


def test_smtpd_plain_auth_and_reject(smtpd):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False, reject={"no@example.com"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        code, _ = c.ehlo("client.test")
        assert c.has_extn("enhancedstatuscodes")
        with pytest.raises(smtplib.SMTPAuthenticationError) as bad:
            c.login(USER, "wrong")
        assert bad.value.smtp_code == 535
        assert b"5.7.8" in bad.value.smtp_error
        c.login(USER, PASSWORD)
        refused = c.sendmail("a@example.com", ["b@example.com", "no@example.com"], MESSAGE)
        assert refused == {"no@example.com": (550, b"5.1.1 No such user")}
    [msg] = server.messages
    assert msg.rcpt_tos == ["b@example.com"]
    assert msg.content == MESSAGE
    assert msg.auth is not None and msg.auth.login == USER
    assert msg.tls is False
    # smtplib tries each offered mechanism with the wrong password, then succeeds.
    attempts = server.record.auth_attempts
    assert [a.success for a in attempts] == [False] * (len(attempts) - 1) + [True]
    assert server.record.client_sent_line("AUTH")


def test_smtpd_auth_mechanism_is_recorded(smtpd):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False, auth_mechanisms={"LOGIN"})
    with smtplib.SMTP("127.0.0.1", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        assert c.esmtp_features["auth"].split() == ["LOGIN"]
        c.login(USER, PASSWORD)
        c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert server.messages[0].auth.mechanism == "LOGIN"


def test_smtpd_starttls_with_test_ca(smtpd, certs):
    server = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context(),
                   require_starttls=True)
    with smtplib.SMTP("localhost", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        assert "auth" not in c.esmtp_features  # auth_require_tls
        code, reply = c.mail("a@example.com")
        assert (code, reply) == (530, b"5.7.0 Must issue a STARTTLS command first")
        c.rset()
        c.starttls(context=client_context(certs))
        c.ehlo("client.test")
        c.login(USER, PASSWORD)
        c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [msg] = server.messages
    assert msg.tls and msg.tls_version.startswith("TLSv1")
    assert server.record.auth_attempts[0].tls


def test_smtpd_implicit_tls(smtpd, certs):
    server = smtpd(implicit_tls=certs.server_context())
    with smtplib.SMTP_SSL("localhost", server.port, timeout=SMTPLIB_TIMEOUT_S,
                          context=client_context(certs)) as c:
        c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert server.messages[0].tls


@pytest.mark.parametrize("cert", [
    "other",    # signed by a CA the client does not trust
    "wrong",    # trusted CA, wrong name
])
def test_bad_certs_are_rejected_by_a_verifying_client(smtpd, certs, cert):
    server = smtpd(starttls_context=certs.server_context(cert))
    with smtplib.SMTP("localhost", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=client_context(certs))
    assert "MAIL" not in server.record.verbs()


def test_certs_verify_as_intended(certs):
    def verify(ca, cert, *check):
        proc = subprocess.run(["openssl", "verify", "-CAfile", ca, *check, cert],
                              capture_output=True, text=True, timeout=SMTPLIB_TIMEOUT_S)
        return proc.returncode == 0

    server, other, wrong = (certs.path(f"{n}.pem") for n in ("server", "other", "wrong"))
    assert verify(certs.ca, server, "-verify_hostname", "localhost")
    assert verify(certs.ca, server, "-verify_ip", "127.0.0.1")
    assert verify(certs.other_ca, other, "-verify_hostname", "localhost")
    assert not verify(certs.ca, other)
    assert verify(certs.ca, wrong, "-verify_hostname", "wrong.example")
    assert not verify(certs.ca, wrong, "-verify_hostname", "localhost")


def test_smtp_sink_counts_and_falls_back(smtp_sink):
    sink = smtp_sink()
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        assert c.has_extn("pipelining")
        for _ in range(3):
            c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    counters = sink.wait_for(3)
    assert (counters.sessions, counters.messages) == (1, 3)

    no_esmtp = smtp_sink(["-e"], dump=True)
    with smtplib.SMTP("127.0.0.1", no_esmtp.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        code, _ = c.ehlo("client.test")
        assert code >= 500
        c.helo("client.test")
        c.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert no_esmtp.wait_for(1).messages == 1
    [dump] = no_esmtp.dumps()
    assert b"X-Client-Proto: SMTP" in dump and b"Subject: hi" in dump


def test_scripted_records_and_does_tls(scripted, certs):
    server = scripted([
        Send(b"220 fake ESMTP\r\n"),
        Expect("EHLO"),
        Send(b"250-fake\r\n250 STARTTLS\r\n"),
        Expect("STARTTLS"),
        Send(b"220 go ahead\r\n"),
        StartTLS(certs.server_context()),
        Hold(5),
    ])
    with smtplib.SMTP("localhost", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        c.starttls(context=client_context(certs))
        c.sock.sendall(b"NOOP inside\r\n")
        c.close()
    assert server.wait()
    assert server.error is None, server.error
    assert server.tls_started
    assert server.received(tls=False).upper().startswith(b"EHLO CLIENT.TEST\r\nSTARTTLS\r\n")
    assert server.received(tls=True) == b"NOOP inside\r\n"
    assert server.client_sent_line("noop")


def test_scripted_never_greets_and_times_out_the_client(scripted):
    server = scripted([Hold(30)])
    with pytest.raises((smtplib.SMTPServerDisconnected, socket.timeout, TimeoutError)):
        smtplib.SMTP("127.0.0.1", server.port, timeout=1)
    assert server.wait()
    assert server.connected and server.received() == b""


def test_scripted_captures_data_and_serves_quit(scripted):
    server = scripted([
        Send(b"220 fake ESMTP\r\n"), Expect("EHLO"), Send(b"250 fake\r\n"),
        Expect("MAIL"), Send(b"250 ok\r\n"), Expect("RCPT"), Send(b"250 ok\r\n"),
        Expect("DATA"), Send(b"354 go\r\n"), ReadData(), Send(b"250 queued\r\n"), Serve(10),
    ])
    with smtplib.SMTP("127.0.0.1", server.port, timeout=SMTPLIB_TIMEOUT_S) as c:
        c.ehlo("client.test")
        c.sendmail("a@example.com", ["b@example.com"], MESSAGE + b".dot\r\n")
        assert c.noop()[0] == 250
    assert server.wait()
    assert server.error is None, server.error
    # smtplib dot-stuffs and terminates; the capture is exactly that.
    assert server.data == [MESSAGE + b"..dot\r\n.\r\n"]
    [start] = server.data_offsets
    assert server.received()[start:start + len(server.data[0])] == server.data[0]
    assert server.received().upper().endswith(b"NOOP\r\nQUIT\r\n")


def test_scripted_sends_slowly_and_floods(scripted):
    server = scripted([SendSlowly(b"220 x\r\n", 0.05), Flood(b"250-", b"y", 100_000, b"\r\n")])
    with socket.create_connection(("127.0.0.1", server.port), timeout=SMTPLIB_TIMEOUT_S) as c:
        data = b""
        while len(data) < 7 + 4 + 100_000 + 2:
            chunk = c.recv(65536)
            assert chunk, data[:40]
            data += chunk
    assert data == b"220 x\r\n250-" + b"y" * 100_000 + b"\r\n"
    assert server.wait()
    assert server.bytes_sent == len(data)


@pytest.mark.parametrize("teardown", ["raw", "close-notify"])
def test_scripted_breaks_tls(scripted, certs, teardown):
    steps = [RawSend(b"\x15\x03\x03\x00\x02\x02\x28")] if teardown == "raw" else [TLSClose()]
    server = scripted([StartTLS(certs.server_context()), Send(b"220 inside\r\n"), *steps,
                       Hold(1)])
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=SMTPLIB_TIMEOUT_S)
    with client_context(certs).wrap_socket(raw, server_hostname="localhost") as c:
        assert c.recv(100) == b"220 inside\r\n"
        if teardown == "raw":
            with pytest.raises(ssl.SSLError):
                c.recv(100)
        else:
            assert c.recv(100) == b""  # close_notify: a clean end of the TLS stream
    assert server.wait()


def test_oracle_reads_a_python_built_message():
    from email.message import EmailMessage
    m = EmailMessage()
    m["From"] = "Jürgen Müller <j@example.com>"
    m["Subject"] = "Grüße 😀"
    m.set_content("hello\n")
    m.add_alternative("<p>hello</p>", subtype="html")
    m.add_attachment(b"\x00\x01", maintype="image", subtype="png", filename="résumé été.png")
    raw = m.as_bytes(policy=m.policy.clone(linesep="\r\n"))
    oracle.assert_crlf_only(raw)
    oracle.assert_ascii_headers(raw)
    back = oracle.parse(raw)
    assert oracle.mailboxes(back, "From")[0].name == "Jürgen Müller"
    assert back["Subject"] == "Grüße 😀"
    assert oracle.body(back, "html").strip() == "<p>hello</p>"
    assert oracle.find_multipart(back, "alternative") is not None
    [att] = oracle.attachments(back)
    assert (att.filename, att.data, att.content_type) == ("résumé été.png", b"\x00\x01", "image/png")
