"""Real SMTP servers on loopback for the integration tests.

Three kinds:

* `RecordingSmtpd`: an aiosmtpd server in a thread, with optional AUTH,
  STARTTLS, implicit TLS and per-recipient rejection. It records everything
  a test may want to check afterwards: the messages it accepted (envelope and
  raw bytes), every command it dispatched, every reply it sent, every AUTH
  attempt and every byte the client sent (after TLS decryption).
* `SmtpSink`: Postfix's `smtp-sink`, a fast throw-away server whose running
  counters let a test count delivered messages and sessions.
* `PostfixSmtpd`: a private, complete Postfix (master, smtpd, cleanup, qmgr)
  from a temporary folder, strict about pipelining and bare LF, that relays
  everything to the `discard` transport; its own log file tells a test what
  it accepted, delivered and complained about.

And `NatsServer`: a private `nats-server` with JetStream (the queue of
`wasmail worker`), its store in a folder of its own so a restart keeps it.

All listen on 127.0.0.1 only.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
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


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it outlives SERVER_STOP_TIMEOUT_S."""
    proc.terminate()
    try:
        proc.wait(SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
            terminate(self._proc)
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


# --------------------------------------------------------------------------
# A private Postfix smtpd
# --------------------------------------------------------------------------

POSTFIX_DAEMON_DIR = Path("/usr/lib/postfix/sbin")
# The account Postfix's daemons run as (main.cf `mail_owner`).
POSTFIX_MAIL_OWNER = "postfix"
# How long discard may take to report the deliveries a test waits for.
POSTFIX_DELIVERY_TIMEOUT_S = 10.0
# How far back the configuration files are dated (see write_postfix_file).
POSTFIX_CONFIG_AGE_S = 10

# The three texts below are plain literals on purpose: bench/bench.py, which
# uses only the standard library (no aiosmtpd, so it cannot import this
# module), reads them from this file with `ast.literal_eval`. Keep them
# literals, and keep the `str.format` fields they use.

# main.cf, for `str.format(root=, hostname=, discard_ehlo_keywords=)`.
POSTFIX_MAIN_CF = """\
# main.cf of a private Postfix (tests/servers.py, PostfixSmtpd): smtpd on
# 127.0.0.1 only; mail for any domain from 127.0.0.0/8 is accepted and
# handed to the discard transport, so nothing ever leaves the machine.
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8

# No local or relay domains: every recipient is remote, relayed for
# $mynetworks only, and every transport is discard.
mydestination =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions =
default_transport = discard
local_transport = discard
relay_transport = discard
virtual_transport = discard

# Strict with the client. PIPELINING and CHUNKING are announced (Postfix's
# defaults; smtpd_discard_ehlo_keywords can hide them). A command sent
# ahead of a reply it must wait for (RFC 2920) ends the session with
# "554 5.5.0 Error: SMTP protocol synchronization" and an "improper command
# pipelining" log line. A bare LF anywhere, commands and DATA or BDAT
# content alike, is refused with "550 5.5.2 Error: bare <LF> received" and
# logged, loopback included (the exclusions default to $mynetworks). On
# Postfix 3.7.10+, 3.8.5+ and 3.9 "yes" means "normalize", which takes a
# bare LF silently as CRLF: "reject" is the value that refuses and logs it.
smtpd_forbid_unauth_pipelining = yes
smtpd_forbid_bare_newline = reject
smtpd_forbid_bare_newline_exclusions =
smtpd_discard_ehlo_keywords = {discard_ehlo_keywords}
smtputf8_enable = yes

# No size limit (the bench sends a 1 GiB attachment), no reverse lookup of
# the client, no per-client limits (anvil) and no throttling or error
# sleeps: the figures must be the client's.
message_size_limit = 0
mailbox_size_limit = 0
smtpd_peername_lookup = no
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_error_sleep_time = 0
in_flow_delay = 0
biff = no

# Every daemon logs to this file, through postlogd (the postlog service).
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""

# master.cf, for `str.format(address=)` (`127.0.0.1:PORT`): the one smtpd,
# and the internal services that mail arriving there and going to discard
# needs. Nothing runs chrooted (the spool is not set up for it).
POSTFIX_MASTER_CF = """\
# service  type       private unpriv chroot wakeup maxproc command
{address}  inet       n       -      n      -      -       smtpd
cleanup    unix       n       -      n      -      0       cleanup
qmgr       unix       n       -      n      300    1       qmgr
rewrite    unix       -       -      n      -      -       trivial-rewrite
bounce     unix       -       -      n      -      0       bounce
defer      unix       -       -      n      -      0       bounce
trace      unix       -       -      n      -      0       bounce
verify     unix       -       -      n      -      1       verify
flush      unix       n       -      n      1000?  0       flush
proxymap   unix       -       -      n      -      -       proxymap
showq      unix       n       -      n      -      -       showq
error      unix       -       -      n      -      -       error
retry      unix       -       -      n      -      -       error
discard    unix       -       -      n      -      -       discard
anvil      unix       -       -      n      -      1       anvil
scache     unix       -       -      n      -      1       scache
postlog    unix-dgram n       -      n      -      1       postlogd
"""

# The folders under the root: (path, owner, group, mode), as Postfix's
# post-install makes them (`postfix check` would too, but takes 2 s).
POSTFIX_DIRS = (
    ("etc", "root", "root", 0o755),
    ("data", "postfix", "root", 0o700),
    ("spool", "root", "root", 0o755),
    ("spool/pid", "root", "root", 0o755),
    ("spool/active", "postfix", "root", 0o700),
    ("spool/bounce", "postfix", "root", 0o700),
    ("spool/corrupt", "postfix", "root", 0o700),
    ("spool/defer", "postfix", "root", 0o700),
    ("spool/deferred", "postfix", "root", 0o700),
    ("spool/flush", "postfix", "root", 0o700),
    ("spool/hold", "postfix", "root", 0o700),
    ("spool/incoming", "postfix", "root", 0o700),
    ("spool/private", "postfix", "root", 0o700),
    ("spool/saved", "postfix", "root", 0o700),
    ("spool/trace", "postfix", "root", 0o700),
    ("spool/maildrop", "postfix", "postdrop", 0o730),
    ("spool/public", "postfix", "postdrop", 0o710),
)

# Log lines a test treats as trouble: Postfix's own warnings and errors,
# and what smtpd logs about a client that breaks the protocol.
_POSTFIX_TROUBLE_RE = re.compile(
    r"\b(?:warning|error|fatal|panic):"
    r"|improper command pipelining"
    r"|bare <LF>"
    r"|\breject:"
    r"|lost connection after"
    r"|timeout after"
    r"|too many errors after")
# Warnings about the machine, not the client: cleanup notices the file
# system's clock running ahead of the local one (a busy or virtual disk).
_POSTFIX_HOST_NOISE_RE = re.compile(r"warning: (?:file system clock is|resetting file time stamps)")
_POSTFIX_DELIVERY_RE = re.compile(
    r"postfix/discard\[\d+\]: ([0-9A-Za-z]+): to=<([^>]*)>,.* status=sent ")
_POSTFIX_SESSION_RE = re.compile(r"postfix/smtpd\[\d+\]: disconnect from \S+ (.*)$")


def postfix_main_cf(root: Path, *, chunking: bool = True,
                    options: Optional[dict[str, str]] = None) -> str:
    """The main.cf text of a `PostfixSmtpd` rooted at `root`.

    `chunking=False` hides CHUNKING from the EHLO reply; `options` set
    further main.cf parameters, replacing a line of the template that sets
    the same one.
    """
    text = POSTFIX_MAIN_CF.format(
        root=root, hostname=SMTPD_HOSTNAME,
        discard_ehlo_keywords="" if chunking else "silent-discard, chunking")
    lines = text.splitlines()
    for name, value in (options or {}).items():
        line = f"{name} = {value}"
        for i, old in enumerate(lines):
            if old.split("=", 1)[0].strip() == name and not old.startswith("#"):
                lines[i] = line
                break
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_postfix_file(path: Path, text: str) -> None:
    """Write a configuration file, dated a while back.

    Postfix reads main.cf again and again, 0.3 s apart, until its mtime is
    over a second older than the moment it began (so that it never reads a
    file that an editor is still writing): a file written just now would
    cost every start 1.5-2 s.
    """
    path.write_text(text)
    past = time.time() - POSTFIX_CONFIG_AGE_S
    os.utime(path, (past, past))


def make_postfix_dirs(root: Path) -> None:
    """The configuration, data and queue folders of a private Postfix."""
    for path, owner, group, mode in POSTFIX_DIRS:
        d = root / path
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        d.chmod(mode)


@dataclass(frozen=True)
class Delivery:
    """One recipient of one message, handed to the discard transport."""
    queue_id: str
    recipient: str


class PostfixSmtpd:
    """A private Postfix: its smtpd on 127.0.0.1:<free port>.

    Everything lives in a fresh folder under the system's temporary folder
    (not pytest's, which the `postfix` account cannot enter): main.cf and
    master.cf in `etc/`, the queue in `spool/`, `data/`, and the log file
    `maillog`. The master runs in the foreground (`master -d -c etc`) as
    the leader of its own process group, so stopping it (SIGTERM, which it
    passes on to its daemons) leaves nothing behind; several instances run
    side by side. Needs root, like any Postfix master.

    The configuration (`POSTFIX_MAIN_CF`) accepts mail for any domain from
    127.0.0.0/8 and discards it, announces PIPELINING and CHUNKING
    (`chunking=False` hides CHUNKING), and is strict: a client that
    pipelines where it must wait, or sends a bare LF, is refused and logged
    (see `warnings()`). `options` set further main.cf parameters.

    `start()` returns once the port answers with a 220 greeting (a probe
    session, left out of `sessions()`). `stop()` copies the log to
    `workdir/postfix.log` (kept with the test's files) and removes the
    folder.
    """

    START_ATTEMPTS = 3
    MASTER = POSTFIX_DAEMON_DIR / "master"
    # How often to look at the port or the log while waiting.
    POLL_S = 0.02

    def __init__(self, workdir: Path, *, chunking: bool = True,
                 options: Optional[dict[str, str]] = None):
        if not os.access(self.MASTER, os.X_OK):
            raise RuntimeError(f"{self.MASTER} not found (apt-get install postfix)")
        if os.geteuid() != 0:
            raise RuntimeError("PostfixSmtpd needs root: Postfix's master runs as root")
        try:
            pwd.getpwnam(POSTFIX_MAIL_OWNER)
        except KeyError:
            raise RuntimeError(f"no {POSTFIX_MAIL_OWNER!r} account (apt-get install postfix)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chunking = chunking
        self.options = dict(options or {})
        self.root: Optional[Path] = None
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._probe_sessions = 0

    # ---- life cycle ------------------------------------------------------

    def start(self) -> "PostfixSmtpd":
        root = Path(tempfile.mkdtemp(prefix="wasmail-postfix-"))
        root.chmod(0o755)
        self.root = root
        make_postfix_dirs(root)
        write_postfix_file(root / "etc" / "main.cf",
                           postfix_main_cf(root, chunking=self.chunking, options=self.options))
        last_error = ""
        for _ in range(self.START_ATTEMPTS):
            port = free_port()
            write_postfix_file(root / "etc" / "master.cf",
                               POSTFIX_MASTER_CF.format(address=f"{LOOPBACK}:{port}"))
            with open(root / "master.err", "wb") as err:
                # -d: stay in the foreground (and keep stderr for start-up
                # errors); a session of its own makes the master a process
                # group leader, which it must be to pass SIGTERM on.
                proc = subprocess.Popen([str(self.MASTER), "-d", "-c", str(root / "etc")],
                                        stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                        start_new_session=True)
            self._proc, self.port = proc, port
            if self._greeted():
                self._probe_sessions = 1
                self._wait(lambda: len(self._all_sessions()) >= 1, SERVER_START_TIMEOUT_S)
                return self
            last_error = ((root / "master.err").read_text(errors="replace")
                          + "".join(l + "\n" for l in self.warnings()))
            self._stop_master()
            # A port taken meanwhile is the likely cause: try another, with
            # a clean log.
            (root / "maillog").unlink(missing_ok=True)
        self.stop()
        raise RuntimeError(f"Postfix did not start: {last_error}")

    def _greeted(self) -> bool:
        """Wait for the port to answer with `220 `, then QUIT."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                with socket.create_connection((LOOPBACK, self.port),
                                              timeout=SERVER_START_TIMEOUT_S) as s:
                    f = s.makefile("rb")
                    if not f.readline().startswith(b"220 "):
                        return False
                    s.sendall(b"QUIT\r\n")
                    f.readline()
                    return True
            except OSError:
                time.sleep(self.POLL_S)
        return False

    def _stop_master(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Still alive, so its group still exists: the master and every
            # daemon it started.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        self._stop_master()
        if self.root is not None:
            for name, keep in (("maillog", "postfix.log"), ("master.err", "postfix-master.err")):
                try:
                    shutil.copyfile(self.root / name, self.workdir / keep)
                except OSError:
                    pass
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "PostfixSmtpd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, for `--server`."""
        return f"{LOOPBACK}:{self.port}"

    # ---- what the log says ------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self.root is None:
            raise RuntimeError("PostfixSmtpd not started")
        return self.root / "maillog"

    def log_lines(self) -> list[str]:
        """Every line Postfix logged so far, start-up included."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def warnings(self) -> list[str]:
        """Log lines about trouble: `warning:`, `error:`, `fatal:` and
        `panic:` lines, and smtpd's complaints about a client (improper
        command pipelining, bare <LF>, a rejected command, a lost connection,
        a timeout, too many errors). Cleanup's notes about the file system
        clock are about the machine, not the client, and are left out."""
        return [l for l in self.log_lines()
                if _POSTFIX_TROUBLE_RE.search(l) and not _POSTFIX_HOST_NOISE_RE.search(l)]

    def deliveries(self) -> list[Delivery]:
        """What the discard transport took so far: one per recipient."""
        found = (_POSTFIX_DELIVERY_RE.search(l) for l in self.log_lines())
        return [Delivery(m[1], m[2]) for m in found if m]

    def _all_sessions(self) -> list[dict[str, str]]:
        found = (_POSTFIX_SESSION_RE.search(l) for l in self.log_lines())
        return [dict(kv.split("=", 1) for kv in m[1].split() if "=" in kv)
                for m in found if m]

    def sessions(self) -> list[dict[str, str]]:
        """The ended client sessions (the start-up probe left out), each as
        smtpd's command counts, e.g. {"ehlo": "1", "mail": "1", "rcpt": "1",
        "data": "1", "quit": "1", "commands": "5"}. A count like "0/1"
        means a command was refused (ok/total)."""
        return self._all_sessions()[self._probe_sessions:]

    def _wait(self, done, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(self.POLL_S)
        return True

    def delivered(self, count: int, *, sessions: int = 1,
                  timeout: float = POSTFIX_DELIVERY_TIMEOUT_S) -> int:
        """Wait until discard has taken `count` recipients and `sessions`
        client sessions have ended (so their log lines are all there), then
        return how many recipients it took. Returns what there is on
        timeout."""
        self._wait(lambda: len(self.deliveries()) >= count
                   and len(self.sessions()) >= sessions, timeout)
        return len(self.deliveries())


# --------------------------------------------------------------------------
# NATS with JetStream
# --------------------------------------------------------------------------

def find_nats_server() -> Optional[str]:
    """Debian's package puts it in /usr/sbin."""
    for candidate in ("/usr/sbin/nats-server", shutil.which("nats-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class NatsServer:
    """`nats-server -js` on 127.0.0.1:<free port>, its JetStream store in
    `<workdir>/store`. `restart()` stops it and starts it again on the same
    port with the same store (streams, consumers and unacknowledged
    messages survive). Its log is `<workdir>/nats.log`."""

    START_ATTEMPTS = 3

    def __init__(self, workdir: Path):
        binary = find_nats_server()
        if binary is None:
            raise RuntimeError("nats-server not found (apt-get install nats-server)")
        self.binary = binary
        self.workdir = Path(workdir)
        self.store = self.workdir / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "nats.log"
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None

    def _spawn(self, port: int) -> bool:
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                [self.binary, "-js", "-a", LOOPBACK, "-p", str(port), "-sd", str(self.store)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None and not _listening(port):
            time.sleep(0.05)
        if proc.poll() is None and _listening(port):
            self._proc, self.port = proc, port
            return True
        proc.kill()
        proc.wait()
        return False

    def start(self) -> "NatsServer":
        for _ in range(self.START_ATTEMPTS):
            if self._spawn(free_port()):
                return self
        raise RuntimeError(f"nats-server did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (the server flushes its store), SIGKILL if it lingers."""
        if self._proc is not None:
            terminate(self._proc)
            self._proc = None

    def restart(self) -> "NatsServer":
        """Stop, then start on the same port with the same store."""
        port = self.port
        self.stop()
        if port is None:
            return self.start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not _listening(port) and self._spawn(port):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"nats-server did not restart on port {port}: "
                           f"{self.log.read_text(errors='replace')[-2000:]}")

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"
