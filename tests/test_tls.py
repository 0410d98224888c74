"""Acceptance tests of the TLS issue: STARTTLS, implicit TLS, certificate
checks, downgrade and injection attacks, and secrets in the transcript.

Servers present certificates from the `certs` fixture; the client trusts
the test CA through `--ca-file` and reaches the servers as `localhost`
(which must resolve to 127.0.0.1, where they listen).
"""

from __future__ import annotations

import pytest

import oracle
from cli import (EXIT_OK, EXIT_UNAVAILABLE, PASSWORD, RECIPIENT, SENDER, USER, assert_exit,
                 describe, index_of, json_error, login, relay, secret_forms, transcript)
from scripted import Expect, Hold, Send, StartTLS
from servers import AuthInfo

# Client deadline (`--timeout`) in the tests that talk to fake servers.
CLIENT_TIMEOUT_S = 5


def send(*extra) -> list:
    """`send` with a fixed small message, plus `extra`."""
    return ["send", "--from", SENDER, "--to", RECIPIENT, "--subject", "TLS test",
            "--text", "hello over TLS", *extra]


def on_localhost(server) -> str:
    """`localhost:PORT`: the name the test certificates carry."""
    return f"localhost:{server.port}"


def assert_no_auth_and_no_mail(server) -> None:
    """Nothing beyond EHLO/STARTTLS: no AUTH, no transaction, no password."""
    record = server.record
    assert not record.auth_attempts
    assert server.messages == []
    for verb in ("AUTH", "MAIL"):
        assert not record.client_sent_line(verb), (verb, record.client_bytes())
    for secret in secret_forms(USER, PASSWORD):
        assert secret.encode() not in record.client_bytes()


# ---------------------------------------------------------------------------
# 1. STARTTLS with AUTH required inside TLS
# ---------------------------------------------------------------------------

def test_starttls_required_with_auth(run, smtpd, certs):
    server = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context(),
                   auth_require_tls=True)

    proc = run(send(*relay(on_localhost(server), "required", ca_file=certs.ca), *login(USER),
                    "--json"))

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert received.tls, "message not received inside TLS"
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")
    assert received.auth is not None and received.auth.login == USER
    assert all(a.tls for a in server.record.auth_attempts)
    # Only EHLO and STARTTLS travelled in plaintext.
    plain = [c.verb for c in server.record.commands if not c.tls]
    assert plain == ["EHLO", "STARTTLS"], plain
    oracle.assert_crlf_only(received.content)


# ---------------------------------------------------------------------------
# 2. Implicit TLS (RFC 8314)
# ---------------------------------------------------------------------------

def test_implicit_tls(run, smtpd, certs):
    server = smtpd(auth={USER: PASSWORD}, implicit_tls=certs.server_context())

    proc = run(send(*relay(on_localhost(server), "implicit", ca_file=certs.ca), *login(USER)))

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert received.tls
    assert received.auth is not None and received.auth.login == USER
    assert server.record.client_bytes(tls=False) == b"", "plaintext on an implicit TLS port"
    assert "STARTTLS" not in server.record.verbs()


# ---------------------------------------------------------------------------
# 3. Certificates that must not be accepted
# ---------------------------------------------------------------------------

BAD_CERTS = [
    # id, server certificate, --ca-file (None: the system roots)
    ("foreign-ca", "other", "ca"),
    ("wrong-name", "wrong", "ca"),
    ("test-ca-not-trusted-by-default", "server", None),
]


@pytest.mark.parametrize("mode", ["required", "implicit"])
@pytest.mark.parametrize("cert, ca", [c[1:] for c in BAD_CERTS], ids=[c[0] for c in BAD_CERTS])
def test_untrusted_certificate_is_refused(run, smtpd, certs, mode, cert, ca):
    context = certs.server_context(cert)
    server = (smtpd(auth={USER: PASSWORD}, starttls_context=context) if mode == "required"
              else smtpd(auth={USER: PASSWORD}, implicit_tls=context))

    proc = run(send(*relay(on_localhost(server), mode, ca_file=certs.ca if ca else None),
                    *login(USER), "--json"))

    assert_exit(proc, EXIT_UNAVAILABLE)
    assert json_error(proc)["kind"] == "tls"
    assert_no_auth_and_no_mail(server)


def test_tls_name_selects_the_name_to_verify(run, smtpd, certs):
    # The server presents wrong.example; --tls-name makes that the expected name.
    server = smtpd(starttls_context=certs.server_context("wrong"))

    proc = run(send(*relay(on_localhost(server), "required", tls_name="wrong.example",
                           ca_file=certs.ca)))

    assert_exit(proc, EXIT_OK)
    assert server.messages[0].tls


def test_ip_address_is_verified_against_ip_san(run, smtpd, certs):
    # server.pem carries IP:127.0.0.1, so the address itself is a valid name.
    server = smtpd(starttls_context=certs.server_context())

    proc = run(send(*relay(server.address, "required", ca_file=certs.ca)))

    assert_exit(proc, EXIT_OK)
    assert server.messages[0].tls


# ---------------------------------------------------------------------------
# 4. A server that offers no STARTTLS (but does offer AUTH in plaintext)
# ---------------------------------------------------------------------------

@pytest.fixture
def plaintext_server(smtpd):
    """No STARTTLS, AUTH announced in plaintext: the downgrade temptation."""
    return smtpd(auth={USER: PASSWORD}, auth_require_tls=False)


def test_required_tls_fails_without_starttls(run, plaintext_server):
    server = plaintext_server

    proc = run(send(*relay(server.address, "required"), *login(USER), "--json"))

    assert_exit(proc, EXIT_UNAVAILABLE)
    assert json_error(proc)["kind"] == "tls"
    assert_no_auth_and_no_mail(server)


def test_opportunistic_starttls_never_sends_auth_in_plaintext(run, plaintext_server):
    server = plaintext_server

    proc = run(send(*relay(server.address, "starttls"), *login(USER), "--json"))

    assert proc.returncode != EXIT_OK, describe(proc)
    assert json_error(proc)["kind"] in ("auth", "tls")
    assert_no_auth_and_no_mail(server)


def test_opportunistic_starttls_delivers_in_plaintext_without_auth(run, plaintext_server):
    server = plaintext_server

    proc = run(send(*relay(server.address, "starttls")))

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert not received.tls
    assert received.auth is None
    assert not server.record.client_sent_line("AUTH")


# ---------------------------------------------------------------------------
# 5. STARTTLS response injection (CVE-2011-0411 style)
# ---------------------------------------------------------------------------

def test_starttls_response_injection_is_refused(run, scripted, certs):
    server = scripted([
        Send(b"220 fake.example ESMTP\r\n"),
        Expect("EHLO"),
        Send(b"250-fake.example\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"),
        Expect("STARTTLS"),
        # The 220 and a forged EHLO reply in one write: a client that reads the
        # extra lines after the handshake would take them as the server's word.
        Send(b"220 Ready to start TLS\r\n250-evil.example\r\n250 AUTH LOGIN\r\n"),
        StartTLS(certs.server_context()),
        Expect("EHLO"),
        Send(b"250-fake.example\r\n250 AUTH PLAIN LOGIN\r\n"),
        Hold(CLIENT_TIMEOUT_S * 2),
    ])

    proc = run(send(*relay(on_localhost(server), "required", ca_file=certs.ca,
                           timeout=CLIENT_TIMEOUT_S), *login(USER), "--json"))

    server.wait()
    assert not server.client_sent_line("AUTH"), server.received()
    for secret in secret_forms(USER, PASSWORD):
        assert secret.encode() not in server.received()
    assert proc.returncode != EXIT_OK, describe(proc)
    assert json_error(proc)["kind"] in ("tls", "protocol")


# ---------------------------------------------------------------------------
# 6. A Gmail-like relay: 530 to anything before STARTTLS
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["starttls", "required"])
def test_relay_that_requires_starttls(run, smtpd, certs, mode):
    server = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context(),
                   require_starttls=True)

    proc = run(send(*relay(on_localhost(server), mode, ca_file=certs.ca), *login(USER)))

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert received.tls and received.auth is not None
    refusals = [r.line for r in server.record.replies if r.line.startswith("530")]
    assert refusals == [], "the client sent a command before STARTTLS"


# ---------------------------------------------------------------------------
# 7. The -v transcript shows TLS and hides the secrets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_verbose_transcript_redacts_credentials(run, smtpd, certs, mechanism):
    server = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context())

    proc = run(send(*relay(on_localhost(server), "required", ca_file=certs.ca),
                    *login(USER, auth=mechanism), "-v"))

    assert_exit(proc, EXIT_OK)
    assert server.messages[0].auth == AuthInfo(mechanism.upper(), USER)
    lines = transcript(proc.stderr)
    tls_note = index_of(lines, "*", "TLS")
    auth = index_of(lines, "C", "AUTH", tls_note)
    index_of(lines, "S", "235", auth)
    assert "<redacted>" in proc.stderr
    for secret in secret_forms(USER, PASSWORD):
        assert secret not in proc.stderr, f"secret {secret!r} in stderr"
        assert secret not in proc.stdout, f"secret {secret!r} in stdout"


# ---------------------------------------------------------------------------
# The system's trust store (rustls-native-certs): a CA the machine trusts
# works without --ca-file, as with msmtp.
# ---------------------------------------------------------------------------

def test_a_ca_from_the_system_store_needs_no_flag(run, smtpd, certs):
    server = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context(),
                   auth_require_tls=True)

    proc = run(send(*relay(on_localhost(server), "required"), *login(USER), "-v"),
               env={"SSL_CERT_FILE": str(certs.ca)})

    assert_exit(proc, EXIT_OK)
    [received] = server.messages
    assert received.tls

    # Without it, the same server is not trusted: nothing is sent.
    server2 = smtpd(auth={USER: PASSWORD}, starttls_context=certs.server_context(),
                    auth_require_tls=True)
    proc = run(send(*relay(on_localhost(server2), "required"), *login(USER), "--json"),
               env={"SSL_CERT_FILE": "/nonexistent.pem", "SSL_CERT_DIR": "/nonexistent"})
    assert_exit(proc, EXIT_UNAVAILABLE)
    assert json_error(proc)["kind"] == "tls", describe(proc)
    assert_no_auth_and_no_mail(server2)


def test_a_ca_file_with_an_unusable_certificate_is_a_config_error(run, tmp_path):
    """A certificate of `--ca-file` that cannot be a trust anchor was once
    skipped with a warning, and the relay's certificate then failed for
    another reason: it is refused before anything is sent, naming it."""
    bad = tmp_path / "bad-ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n")
    proc = run(send(*relay("127.0.0.1:1", "required", ca_file=bad), "--json"))
    assert_exit(proc, 78)  # EX_CONFIG
    assert "certificate 1 is not usable as a CA" in proc.stdout + proc.stderr, proc
