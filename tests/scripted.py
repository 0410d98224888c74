"""A scripted fake SMTP server, for misbehaviour no real server shows.

A `ScriptedServer` listens on 127.0.0.1 (a free port chosen by the kernel),
accepts one connection and plays a list of steps against it:

    Send(b"220 fake ESMTP\\r\\n")   write bytes
    Expect("EHLO")                 read until a whole line arrives; it must
                                   start with this prefix (case-insensitive)
    Sleep(1.0)                     do nothing for a while
    StartTLS(ctx)                  do the server side of a TLS handshake
    Hold(30)                       read and record until the client closes
                                   or the time is up (e.g. "never greets")
    Close()                        close the connection

Every byte the client sent is recorded (decrypted once TLS is on), and so is
the first thing that went wrong in the script (`error`), so a test can assert
both what the client did and that the script ran as intended.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Union

LOOPBACK = "127.0.0.1"

# How long the server waits for the client to connect at all.
ACCEPT_TIMEOUT_S = 60.0
# Default wait for an expected line or a TLS handshake.
STEP_TIMEOUT_S = 15.0
# Granularity of reads while holding a connection.
POLL_S = 0.2


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Expect:
    prefix: str
    timeout: float = STEP_TIMEOUT_S


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class StartTLS:
    context: ssl.SSLContext
    timeout: float = STEP_TIMEOUT_S


@dataclass(frozen=True)
class Hold:
    seconds: float


@dataclass(frozen=True)
class Close:
    pass


Step = Union[Send, Expect, Sleep, StartTLS, Hold, Close]


class ScriptError(Exception):
    """The client did not follow the script (closed early, sent another line)."""


@dataclass
class ScriptedServer:
    steps: list[Step]
    accept_timeout: float = ACCEPT_TIMEOUT_S

    # Filled in while running.
    port: int = 0
    connected: bool = False
    tls_started: bool = False
    finished: bool = False
    error: Optional[str] = None
    chunks: list[tuple[bool, bytes]] = field(default_factory=list)

    def __post_init__(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(1)
        self._listener.settimeout(POLL_S)
        self.port = self._listener.getsockname()[1]
        self._conn: Optional[socket.socket] = None
        self._buffer = b""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scripted-{self.port}",
                                        daemon=True)

    # ---- public API ------------------------------------------------------

    def start(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def wait(self, timeout: float = STEP_TIMEOUT_S) -> bool:
        """Wait for the script to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Close everything and wait for the thread."""
        self._stopping.set()
        self._thread.join(STEP_TIMEOUT_S)
        for sock in (self._conn, self._listener):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def received(self, tls: Optional[bool] = None) -> bytes:
        """Everything the client sent, or only its plaintext (`tls=False`)
        or TLS (`tls=True`) part."""
        with self._lock:
            return b"".join(d for t, d in self.chunks if tls is None or t == tls)

    def client_sent_line(self, prefix: str) -> bool:
        """Whether any line the client sent starts with `prefix` (case-insensitive)."""
        pattern = re.compile(rb"(?im)^" + re.escape(prefix.encode()))
        return pattern.search(self.received()) is not None

    # ---- the script --------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._accept()
            if conn is None:
                self.error = "the client never connected"
                return
            self._conn = conn
            self.connected = True
            for step in self.steps:
                self._play(step)
        except ScriptError as e:
            self.error = str(e)
        except (OSError, ssl.SSLError) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.finished = True
            if self._conn is not None:
                try:
                    self._conn.close()
                except OSError:
                    pass

    def _accept(self) -> Optional[socket.socket]:
        deadline = time.monotonic() + self.accept_timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
                return conn
            except socket.timeout:
                continue
        return None

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.chunks.append((self.tls_started, data))

    def _recv(self, deadline: float) -> bytes:
        """One read, bounded by `deadline`; b"" at EOF; raises socket.timeout."""
        if self._stopping.is_set():
            raise ScriptError("stopped")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        self._conn.settimeout(min(remaining, POLL_S))
        data = self._conn.recv(65536)
        if data:
            self._record(data)
        return data

    def _play(self, step: Step) -> None:
        if isinstance(step, Send):
            self._conn.sendall(step.data)
        elif isinstance(step, Sleep):
            time.sleep(step.seconds)
        elif isinstance(step, Close):
            self._conn.close()
        elif isinstance(step, Expect):
            self._expect(step)
        elif isinstance(step, StartTLS):
            self._start_tls(step)
        elif isinstance(step, Hold):
            self._hold(step.seconds)
        else:  # pragma: no cover
            raise TypeError(f"unknown step {step!r}")

    def _expect(self, step: Expect) -> None:
        deadline = time.monotonic() + step.timeout
        while b"\r\n" not in self._buffer and b"\n" not in self._buffer:
            try:
                data = self._recv(deadline)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise ScriptError(f"timed out waiting for {step.prefix!r}")
                continue
            if not data:
                raise ScriptError(f"client closed while {step.prefix!r} was expected")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if not text.upper().startswith(step.prefix.upper()):
            raise ScriptError(f"expected {step.prefix!r}, got {text!r}")

    def _start_tls(self, step: StartTLS) -> None:
        # Plaintext the client pipelined after STARTTLS would be an attack
        # vector too; it was recorded, and is dropped here as RFC 3207 says.
        self._buffer = b""
        self._conn.settimeout(step.timeout)
        self._conn = step.context.wrap_socket(self._conn, server_side=True)
        self.tls_started = True

    def _hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if not self._recv(deadline):
                    return  # the client closed the connection
            except socket.timeout:
                continue
            except (ssl.SSLError, ConnectionError):
                return
