"""Fixtures for the wasmail integration tests.

* `wasmail`, `run`: the binary under test and a bounded way to run it.
* `plugins`: the example plugin components `wasmail run` is tested with.
* `certs`: a throw-away PKI made with the `openssl` CLI.
* `smtpd`: recording aiosmtpd servers (AUTH, STARTTLS, implicit TLS, rejects).
* `smtp_sink`: Postfix smtp-sink, for volume and ESMTP-less servers.
* `postfix_smtpd`: a private, strict Postfix smtpd that discards what it
  accepts and logs how the client behaved.
* `scripted`: a fake server that plays a script (see scripted.py).
* `nats`: a private nats-server with JetStream (`wasmail worker`'s queue).

Every server listens on 127.0.0.1 and is stopped at teardown.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from cli import CLI_TIMEOUT_S, PASSWORD, PASSWORD_ENV
from scripted import ScriptedServer
from servers import NatsServer, PostfixSmtpd, RecordingSmtpd, SmtpSink

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO / "target" / "debug" / "wasmail"
DEFAULT_PLUGIN_DIR = REPO / "target" / "wasm32-wasip2" / "release"

# How long `openssl` may take for one command.
OPENSSL_TIMEOUT_S = 30
# Certificates live a little longer than any test run.
CERT_DAYS = "7"


# ----------------------------------------------------------------------------
# The binary
# ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def wasmail() -> Path:
    """Path to the binary: $WASMAIL_BIN or target/debug/wasmail.

    A missing binary fails the test (not skips it): a green run must mean
    the CLI was exercised.
    """
    path = Path(os.environ.get("WASMAIL_BIN") or DEFAULT_BINARY)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"wasmail binary not found at {path}: run `cargo build` "
                    f"(or set WASMAIL_BIN)", pytrace=False)
    return path


@pytest.fixture
def run(wasmail: Path, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`run(args, input=None, timeout=60, *, cwd=None, env=None, password=PASSWORD)`.

    Runs `wasmail *args` in text mode with stdout/stderr captured, in a
    scratch working directory (so a default `./outbox` lands in tmp), with
    $WASMAIL_TEST_PASSWORD set to `password` (None leaves it unset). A run
    that outlives `timeout` seconds fails the test.
    """
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    def _run(args, input: Optional[str] = None, timeout: float = CLI_TIMEOUT_S, *,
             cwd: Optional[Path] = None, env: Optional[dict] = None,
             password: Optional[str] = PASSWORD) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        full_env.pop(PASSWORD_ENV, None)
        if password is not None:
            full_env[PASSWORD_ENV] = password
        full_env.update(env or {})
        cmd = [str(wasmail), *map(str, args)]
        try:
            return subprocess.run(cmd, input=input, capture_output=True, text=True,
                                  timeout=timeout, cwd=cwd or workdir, env=full_env,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            pytest.fail(f"wasmail did not finish within {timeout}s: {cmd}\n"
                        f"--- stdout ---\n{out}\n--- stderr ---\n{err}")

    return _run


@dataclass(frozen=True)
class Plugins:
    """The folder of built plugin components ($WASMAIL_PLUGINS).

    `plugins["hello"]` is `<dir>/wasmail_plugin_hello.wasm`; a missing file
    fails the test (not skips it), naming the path and how to build it.
    """
    dir: Path

    PREFIX = "wasmail_plugin_"

    def __getitem__(self, name: str) -> Path:
        path = self.dir / f"{self.PREFIX}{name}.wasm"
        if not path.is_file():
            present = sorted(p.name for p in self.dir.glob(f"{self.PREFIX}*.wasm"))
            pytest.fail(f"plugin {name!r} not found at {path} (present: {present or 'none'}): "
                        f"run `make build` (or set WASMAIL_PLUGINS)", pytrace=False)
        return path


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    """The plugin components: $WASMAIL_PLUGINS or
    target/wasm32-wasip2/release. A missing folder or plugin fails the test."""
    d = Path(os.environ.get("WASMAIL_PLUGINS") or DEFAULT_PLUGIN_DIR)
    if not d.is_dir():
        pytest.fail(f"plugin folder {d} not found: run `make build` "
                    f"(or set WASMAIL_PLUGINS)", pytrace=False)
    return Plugins(d)


# ----------------------------------------------------------------------------
# Certificates
# ----------------------------------------------------------------------------

_CA_CONFIG = """\
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = {cn}
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certs:
    """The test PKI. Paths are strings, ready for command lines.

    ca.pem           the test CA (pass it as --ca-file)
    server.pem/.key  CN/SAN localhost + IP 127.0.0.1, signed by ca.pem
    other-ca.pem     an unrelated CA
    other.pem/.key   CN/SAN localhost, signed by other-ca.pem
    wrong.pem/.key   SAN wrong.example only, signed by ca.pem
    """
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    @property
    def other_ca(self) -> str:
        return self.path("other-ca.pem")

    def server_context(self, name: str = "server") -> ssl.SSLContext:
        """A server-side SSL context presenting `<name>.pem`/`<name>.key`
        (name: server, other or wrong)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.path(f"{name}.pem"), self.path(f"{name}.key"))
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=OPENSSL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _make_ca(d: Path, stem: str, cn: str) -> None:
    (d / f"{stem}.cnf").write_text(_CA_CONFIG.format(cn=cn))
    _openssl("req", "-x509", "-new", "-config", f"{stem}.cnf",
             "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{stem}.key", "-out", f"{stem}.pem", "-days", CERT_DAYS, cwd=d)


def _make_leaf(d: Path, stem: str, cn: str, san: str, ca: str) -> None:
    (d / f"{stem}.ext").write_text(_LEAF_EXTENSIONS.format(san=san))
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={cn}",
             cwd=d)
    _openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-set_serial", f"0x{os.urandom(8).hex()}", "-days", CERT_DAYS,
             "-extfile", f"{stem}.ext", "-out", f"{stem}.pem", cwd=d)


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    """A test CA with a good, a wrong-name and a foreign-CA server cert."""
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca", "wasmail test CA")
    _make_ca(d, "other-ca", "wasmail other CA")
    _make_leaf(d, "server", "localhost", "DNS:localhost, IP:127.0.0.1", ca="ca")
    _make_leaf(d, "other", "localhost", "DNS:localhost, IP:127.0.0.1", ca="other-ca")
    _make_leaf(d, "wrong", "wrong.example", "DNS:wrong.example", ca="ca")
    return Certs(d)


# ----------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------

@pytest.fixture
def smtpd():
    """Factory: `smtpd(**options) -> RecordingSmtpd`, started on 127.0.0.1.

    Options (see servers.RecordingSmtpd): auth={user: password},
    auth_mechanisms={"LOGIN"}, auth_require_tls=True, auth_required=False,
    starttls_context=ctx, require_starttls=False, implicit_tls=ctx,
    reject={addresses}. Servers are stopped at teardown.
    """
    started: list[RecordingSmtpd] = []

    def _start(**options) -> RecordingSmtpd:
        server = RecordingSmtpd(**options).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def smtp_sink(tmp_path: Path):
    """Factory: `smtp_sink(flags=(), dump=False) -> SmtpSink`, started on
    127.0.0.1:<free port> with `-c` counters; killed at teardown."""
    started: list[SmtpSink] = []

    def _start(flags=(), dump: bool = False) -> SmtpSink:
        sink = SmtpSink(tmp_path / f"sink{len(started)}", flags=flags, dump=dump).start()
        started.append(sink)
        return sink

    yield _start
    for sink in started:
        sink.stop()


@pytest.fixture
def postfix_smtpd(tmp_path: Path):
    """Factory: `postfix_smtpd(chunking=True, options=None) -> PostfixSmtpd`,
    a private Postfix whose smtpd listens on 127.0.0.1:<free port>, started
    and stopped at teardown (its log is then kept as
    `<tmp_path>/postfixN/postfix.log`). Start-up takes some 35 ms, so each
    test gets its own. Needs root, like any Postfix master."""
    started: list[PostfixSmtpd] = []

    def _start(chunking: bool = True, options: Optional[dict[str, str]] = None) -> PostfixSmtpd:
        server = PostfixSmtpd(tmp_path / f"postfix{len(started)}", chunking=chunking,
                              options=options)
        started.append(server)
        return server.start()

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def scripted():
    """Factory: `scripted(steps) -> ScriptedServer`, listening and playing
    its steps against the first connection; stopped at teardown."""
    started: list[ScriptedServer] = []

    def _start(steps) -> ScriptedServer:
        server = ScriptedServer(list(steps)).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def nats(tmp_path: Path):
    """Factory: `nats() -> NatsServer`, a nats-server with JetStream on
    127.0.0.1:<free port>, its store under tmp (`restart()` keeps it);
    stopped at teardown (its log stays as `<tmp_path>/natsN/nats.log`)."""
    started: list[NatsServer] = []

    def _start() -> NatsServer:
        server = NatsServer(tmp_path / f"nats{len(started)}").start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
