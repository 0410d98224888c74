"""Real SMTP servers on loopback for the integration tests.

Two kinds:

* `RecordingSmtpd`: an aiosmtpd server in a thread, with optional AUTH,
  STARTTLS, implicit TLS and per-recipient rejection. It records everything
  a test may want to check afterwards: the messages it accepted (envelope and
  raw bytes), every command it dispatched, every reply it sent, every AUTH
  attempt and every byte the client sent (after TLS decryption).
* `SmtpSink`: Postfix's `smtp-sink`, a fast throw-away server whose running
  counters let a test count delivered messages and sessions.

Both listen on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LOOPBACK = "127.0.0.1"

# How long a server may take to start listening.
SERVER_START_TIMEOUT_S = 10.0
# How long to wait for a server process to exit after SIGTERM before SIGKILL.
SERVER_STOP_TIMEOUT_S = 5.0
# The host name aiosmtpd announces (default would be a slow getfqdn()).
SMTPD_HOSTNAME = "mx.wasmail.test"

# The reply sent to a recipient in `reject`.
REJECT_REPLY = "550 5.1.1 No such user"

# aiosmtpd sends a few replies without an enhanced status code (RFC 3463);
# real relays do send them, so the test server rewrites them.
_ENHANCED_REWRITES = {
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "530 Must issue a STARTTLS command first":
        "530 5.7.0 Must issue a STARTTLS command first",
}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago.

    Only for servers that cannot bind port 0 and report it (smtp-sink);
    the caller retries on the rare collision.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _is_tls(transport) -> bool:
    """Whether an asyncio transport carries TLS.

    Works for STARTTLS (aiosmtpd sets `session.ssl`) and for implicit TLS
    (where `session.ssl` stays None and only the transport knows).
    """
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _tls_version(transport) -> Optional[str]:
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    return obj.version() if obj is not None else None


# --------------------------------------------------------------------------
# What an aiosmtpd server records
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class AuthInfo:
    """Who authenticated in a session, kept in `session.auth_data`."""
    mechanism: str
    login: str


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange that reached the authenticator."""
    mechanism: str
    login: str
    success: bool
    tls: bool


@dataclass(frozen=True)
class Command:
    """A command the server dispatched (after its own pre-checks)."""
    verb: str
    arg: str
    tls: bool


@dataclass(frozen=True)
class Reply:
    """One line the server sent."""
    line: str
    tls: bool


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the server accepted at the end of DATA."""
    mail_from: str
    rcpt_tos: list[str]
    mail_options: list[str]
    content: bytes          # the raw message, dot-unstuffed, CRLF line ends
    auth: Optional[AuthInfo]
    tls: bool
    tls_version: Optional[str]


@dataclass
class ServerRecord:
    """Everything one aiosmtpd server saw, over all its connections.

    Appended to by the server thread; read by the test once the client has
    exited (list appends are atomic, and the client only exits after the
    server answered).
    """
    messages: list[ReceivedMessage] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    auth_attempts: list[AuthAttempt] = field(default_factory=list)
    client_chunks: list[tuple[bool, bytes]] = field(default_factory=list)

    def verbs(self) -> list[str]:
        """The dispatched command verbs, in order."""
        return [c.verb for c in self.commands]

    def client_bytes(self, tls: Optional[bool] = None) -> bytes:
        """All bytes the client sent (decrypted), or only those sent in
        plaintext (`tls=False`) or inside TLS (`tls=True`)."""
        return b"".join(data for t, data in self.client_chunks if tls is None or t == tls)

    def client_sent_line(self, prefix: str, tls: Optional[bool] = None) -> bool:
        """Whether the client sent any line starting with `prefix`
        (case-insensitive), whether or not the server dispatched it.

        Scans raw lines, message content included: use it for "never sent"
        checks in tests whose message content does not start a line that way.
        """
        pattern = re.compile(rb"(?im)^" + re.escape(prefix.encode()))
        return pattern.search(self.client_bytes(tls)) is not None


# --------------------------------------------------------------------------
# aiosmtpd plumbing
# --------------------------------------------------------------------------

class _RecordingSMTP(SMTP):
    """aiosmtpd's SMTP protocol, recording bytes, commands and replies."""

    def __init__(self, handler: "_Handler", **kwargs):
        super().__init__(handler, **kwargs)
        self._record = handler.record
        for verb, method in list(self._smtp_methods.items()):
            self._smtp_methods[verb] = self._recorded(verb, method)

    def _recorded(self, verb, method):
        async def wrapper(arg):
            self._record.commands.append(Command(verb, arg or "", _is_tls(self.transport)))
            return await method(arg)
        return wrapper

    def data_received(self, data: bytes) -> None:
        # Called with plaintext both before STARTTLS and (by asyncio's
        # SSLProtocol) with decrypted bytes inside TLS.
        self._record.client_chunks.append((_is_tls(self.transport), bytes(data)))
        super().data_received(data)

    async def push(self, status):
        if isinstance(status, str):
            status = _ENHANCED_REWRITES.get(status, status)
            self._record.replies.append(Reply(status, _is_tls(self.transport)))
        else:
            self._record.replies.append(
                Reply(status.decode("utf-8", "replace"), _is_tls(self.transport)))
        await super().push(status)


class _Handler:
    """aiosmtpd handler hooks: envelope bookkeeping, rejection, recording."""

    def __init__(self, record: ServerRecord, reject: Iterable[str], users: dict[str, str]):
        self.record = record
        self.reject = {a.lower() for a in reject}
        self.users = dict(users)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # Announce RFC 2034 enhanced status codes, before the final line.
        return responses[:-1] + ["250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return REJECT_REPLY
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content
        if content is None:  # pragma: no cover - aiosmtpd always sets it
            content = envelope.content
        if isinstance(content, str):  # pragma: no cover - decode_data is off
            content = content.encode("utf-8", "surrogateescape")
        self.record.messages.append(ReceivedMessage(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            mail_options=list(envelope.mail_options),
            content=bytes(content),
            auth=session.auth_data if isinstance(session.auth_data, AuthInfo) else None,
            tls=_is_tls(server.transport),
            tls_version=_tls_version(server.transport),
        ))
        return f"250 2.0.0 OK queued as {len(self.record.messages)}"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        """aiosmtpd authenticator: check LOGIN/PLAIN against `users`.

        A failure returns `handled=False` so that aiosmtpd answers
        `535 5.7.8 Authentication credentials invalid` (with `handled=True`,
        its default, nothing would be answered at all).
        """
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = login in self.users and self.users[login] == password
        self.record.auth_attempts.append(
            AuthAttempt(mechanism, login, ok, _is_tls(server.transport)))
        if ok:
            return AuthResult(success=True, auth_data=AuthInfo(mechanism, login))
        return AuthResult(success=False, handled=False)


class _Controller(Controller):
    """A Controller that builds `_RecordingSMTP` and learns its port.

    It binds port 0 and reads the port the kernel chose before aiosmtpd's
    start-up probe connects, so there is no free-port race.
    """

    def factory(self):
        return _RecordingSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class RecordingSmtpd:
    """An aiosmtpd server on 127.0.0.1 with a free port.

    Options:
      auth: dict user -> password; enables AUTH LOGIN/PLAIN with those
        credentials. Without it AUTH is still announced by aiosmtpd (when TLS
        allows it) but every attempt fails.
      auth_mechanisms: restrict the announced mechanisms, e.g. {"LOGIN"}.
      auth_require_tls: announce/accept AUTH only inside TLS (default True).
      auth_required: refuse MAIL before a successful AUTH.
      starttls_context: a server ssl.SSLContext; announces STARTTLS.
      require_starttls: answer 530 to everything but EHLO/NOOP/QUIT/STARTTLS
        before TLS (needs starttls_context).
      implicit_tls: a server ssl.SSLContext; TLS from the first byte (AUTH
        is then always allowed: `auth_require_tls` does not apply).
      reject: recipient addresses answered with `550 5.1.1 No such user`.
    """

    BUILTIN_MECHANISMS = {"LOGIN", "PLAIN"}

    def __init__(
        self,
        *,
        auth: Optional[dict[str, str]] = None,
        auth_mechanisms: Optional[Iterable[str]] = None,
        auth_require_tls: bool = True,
        auth_required: bool = False,
        starttls_context: Optional[ssl.SSLContext] = None,
        require_starttls: bool = False,
        implicit_tls: Optional[ssl.SSLContext] = None,
        reject: Iterable[str] = (),
    ):
        if require_starttls and starttls_context is None:
            raise ValueError("require_starttls needs starttls_context")
        if starttls_context is not None and implicit_tls is not None:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        self.record = ServerRecord()
        self.handler = _Handler(self.record, reject, auth or {})
        allowed = {m.upper() for m in (auth_mechanisms or self.BUILTIN_MECHANISMS)}
        kwargs = dict(
            hostname=LOOPBACK,
            port=0,
            server_hostname=SMTPD_HOSTNAME,
            ready_timeout=SERVER_START_TIMEOUT_S,
            authenticator=self.handler.authenticate,
            auth_require_tls=auth_require_tls,
            auth_required=auth_required,
            auth_exclude_mechanism=sorted(self.BUILTIN_MECHANISMS - allowed),
        )
        if starttls_context is not None:
            kwargs.update(tls_context=starttls_context, require_starttls=require_starttls)
        if implicit_tls is not None:
            # aiosmtpd only counts STARTTLS as TLS: with auth_require_tls it
            # would neither announce nor accept AUTH on an implicit TLS port,
            # where every byte is encrypted anyway.
            kwargs.update(ssl_context=implicit_tls, auth_require_tls=False)
        self._controller = _Controller(self.handler, **kwargs)
        self.port: Optional[int] = None

    def start(self) -> "RecordingSmtpd":
        self._controller.start()
        self.port = self._controller.port
        return self

    def stop(self) -> None:
        self._controller.stop(no_assert=True)

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, for `--server`."""
        return f"{LOOPBACK}:{self.port}"

    # Shortcuts to the record.
    @property
    def messages(self) -> list[ReceivedMessage]:
        return self.record.messages


# --------------------------------------------------------------------------
# Postfix smtp-sink
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SinkCounters:
    """smtp-sink's running counters (`-c`)."""
    sessions: int
    quits: int
    messages: int


_COUNTER_RE = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


def find_smtp_sink() -> Optional[str]:
    for candidate in ("/usr/sbin/smtp-sink", shutil.which("smtp-sink")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port, without connecting
    (a probe connection would count as an smtp-sink session)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":  # 0A = LISTEN
                    return True
        return False
    except OSError:  # no procfs: fall back to a probe connection
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return True
        except OSError:
            return False


class SmtpSink:
    """Postfix `smtp-sink` on 127.0.0.1:<free port>.

    `flags` are extra smtp-sink options, e.g. ["-p"] (no PIPELINING) or
    ["-e"] (no ESMTP: EHLO is refused, the client must fall back to HELO).
    `-c` is always on: `counters()` reads the running counters from its
    stdout. With `dump=True`, each transaction is also written to its own
    file in `dump_dir` (see `dumps()`), removed at `stop()`.
    """

    START_ATTEMPTS = 3
    BACKLOG = "16"

    def __init__(self, workdir: Path, flags: Iterable[str] = (), dump: bool = False):
        binary = find_smtp_sink()
        if binary is None:
            raise RuntimeError("smtp-sink not found (apt-get install postfix)")
        self.binary = binary
        self.flags = list(flags)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dump = dump
        self.dump_dir: Optional[Path] = None
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._stdout_path = self.workdir / "smtp-sink.out"
        self._stderr_path = self.workdir / "smtp-sink.err"

    def _command(self, port: int) -> list[str]:
        cmd = [self.binary, "-c"]
        if os.geteuid() == 0:
            # smtp-sink refuses to run as root without dropping privileges.
            cmd += ["-u", "nobody"]
        if self.dump:
            if self.dump_dir is None:
                # As root smtp-sink writes as "nobody", which cannot reach
                # pytest's private tmp tree: dump under the public tmp dir.
                self.dump_dir = Path(tempfile.mkdtemp(prefix="wasmail-sink-"))
                self.dump_dir.chmod(0o777)
            cmd += ["-d", str(self.dump_dir) + "/%H%M%S."]
        return cmd + self.flags + [f"inet:{LOOPBACK}:{port}", self.BACKLOG]

    def start(self) -> "SmtpSink":
        last_error = ""
        for _ in range(self.START_ATTEMPTS):
            port = free_port()
            with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
                proc = subprocess.Popen(self._command(port), stdout=out, stderr=err,
                                        stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None and not _listening(port):
                time.sleep(0.05)
            if proc.poll() is None and _listening(port):
                self._proc, self.port = proc, port
                return self
            proc.kill()
            proc.wait()
            last_error = self._stderr_path.read_text(errors="replace")
        raise RuntimeError(f"smtp-sink did not start: {last_error}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
            self.dump_dir = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def counters(self) -> SinkCounters:
        """The latest counters; all zero before the first session ends."""
        found = _COUNTER_RE.findall(self._stdout_path.read_bytes())
        if not found:
            return SinkCounters(0, 0, 0)
        sess, quit_, mesg = (int(x) for x in found[-1])
        return SinkCounters(sess, quit_, mesg)

    def wait_for(self, messages: int, timeout: float = 5.0) -> SinkCounters:
        """Wait until the counters show `messages` messages and at least one
        ended session (smtp-sink updates them at ".", at QUIT and at session
        end), then return them. Returns the last counters on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.counters()
            if (c.messages >= messages and c.sessions >= 1) or time.monotonic() > deadline:
                return c
            time.sleep(0.05)

    def dumps(self) -> list[bytes]:
        """The dumped transactions (smtp-sink headers first), oldest first."""
        if self.dump_dir is None:
            raise RuntimeError("SmtpSink not started with dump=True")
        files = sorted(self.dump_dir.rglob("*"), key=lambda p: p.stat().st_mtime_ns)
        return [p.read_bytes() for p in files if p.is_file()]
