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
    SendSlowly(b"220 x\r\n", 1.0)   write bytes one at a time, a pause before
                                   each (a trickling server)
    Flood(b"220 ", b"a", 10**7)    write a head, then a chunk many times, then
                                   an optional tail (huge lines or replies)
    ReadData()                     read the message after a 354, up to and
                                   including the first CRLF.CRLF; kept in
                                   `data` (and its stream offset in
                                   `data_offsets`)
    RawSend(b"\x15...")            write bytes on the TCP socket under TLS,
                                   bypassing it (a forged/garbage record)
    TLSClose()                     send a TLS close_notify and leave TLS
    Stall(10)                      neither read nor write for a while (a
                                   tarpit: the client's writes block once the
                                   socket buffers are full)
    Serve(30)                      like Hold, but answer the end of a session:
                                   RSET/NOOP get 250, QUIT gets 221 (and the
                                   step ends), anything else 503

A client that hangs up during SendSlowly or Flood ends the script with
`error` set; `bytes_sent` tells how far the server got.

Every byte the client sent is recorded (decrypted once TLS is on), and so is
the first thing that went wrong in the script (`error`), so a test can assert
both what the client did and that the script ran as intended.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

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


@dataclass(frozen=True)
class SendSlowly:
    data: bytes
    interval: float = 1.0


@dataclass(frozen=True)
class Flood:
    head: bytes
    chunk: bytes
    count: int
    tail: bytes = b""
    timeout: float = STEP_TIMEOUT_S


@dataclass(frozen=True)
class ReadData:
    timeout: float = STEP_TIMEOUT_S


@dataclass(frozen=True)
class RawSend:
    data: bytes


@dataclass(frozen=True)
class TLSClose:
    timeout: float = 2.0


@dataclass(frozen=True)
class Serve:
    seconds: float


@dataclass(frozen=True)
class Stall:
    seconds: float


@dataclass(frozen=True)
class Run:
    """Call `action` at this point of the script (to change the client's
    world between two replies, say)."""
    action: Callable[[], None]


Step = Union[Send, Expect, Sleep, StartTLS, Hold, Close, SendSlowly, Flood, ReadData, RawSend,
             TLSClose, Serve, Stall, Run]

# The end of the mail data (RFC 5321 4.1.1.4).
DATA_END = b"\r\n.\r\n"
# Bytes per write in a Flood.
FLOOD_WRITE = 64 * 1024


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
    # time.monotonic() when the client connected (for elapsed-time checks
    # that must not count the client's start-up).
    connected_at: Optional[float] = None
    # Bytes written by the steps (Send, SendSlowly, Flood, RawSend).
    bytes_sent: int = 0
    # What ReadData captured, and where each capture starts in received().
    data: list[bytes] = field(default_factory=list)
    data_offsets: list[int] = field(default_factory=list)

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
            self.connected_at = time.monotonic()
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

    def _received_len(self) -> int:
        with self._lock:
            return sum(len(d) for _, d in self.chunks)

    def _play(self, step: Step) -> None:
        if isinstance(step, Send):
            self._conn.sendall(step.data)
            self.bytes_sent += len(step.data)
        elif isinstance(step, SendSlowly):
            self._send_slowly(step)
        elif isinstance(step, Flood):
            self._flood(step)
        elif isinstance(step, ReadData):
            self._read_data(step)
        elif isinstance(step, RawSend):
            self._raw_send(step.data)
        elif isinstance(step, TLSClose):
            self._tls_close(step)
        elif isinstance(step, Serve):
            self._serve(step.seconds)
        elif isinstance(step, Stall):
            # Like Sleep, but the test's teardown can cut it short.
            self._stopping.wait(step.seconds)
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
        elif isinstance(step, Run):
            step.action()
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

    def _send_slowly(self, step: SendSlowly) -> None:
        for i in range(len(step.data)):
            deadline = time.monotonic() + step.interval
            while time.monotonic() < deadline:
                if self._stopping.is_set():
                    raise ScriptError("stopped")
                time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            try:
                self._conn.settimeout(STEP_TIMEOUT_S)
                self._conn.sendall(step.data[i:i + 1])
            except (BrokenPipeError, ConnectionError) as e:
                raise ScriptError(f"client hung up after {i} slow bytes ({e})")
            self.bytes_sent += 1

    def _flood(self, step: Flood) -> None:
        deadline = time.monotonic() + step.timeout
        block = step.chunk * max(1, FLOOD_WRITE // max(1, len(step.chunk)))
        per_block = len(block) // len(step.chunk)

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                if self._stopping.is_set():
                    raise ScriptError("stopped")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ScriptError(f"flood timed out after {self.bytes_sent} bytes")
                self._conn.settimeout(min(remaining, POLL_S))
                try:
                    n = self._conn.send(view)
                except socket.timeout:
                    continue
                except (BrokenPipeError, ConnectionError, ssl.SSLError) as e:
                    raise ScriptError(f"client hung up after {self.bytes_sent} flood bytes ({e})")
                self.bytes_sent += n
                view = view[n:]

        write(step.head)
        left = step.count
        while left > 0:
            k = min(left, per_block)
            write(block if k == per_block else step.chunk * k)
            left -= k
        write(step.tail)

    def _read_data(self, step: ReadData) -> None:
        start = self._received_len() - len(self._buffer)
        deadline = time.monotonic() + step.timeout
        while True:
            # The data ends at CRLF.CRLF, or at once if it is an empty message.
            if self._buffer.startswith(b".\r\n"):
                end = 3
                break
            i = self._buffer.find(DATA_END)
            if i >= 0:
                end = i + len(DATA_END)
                break
            try:
                data = self._recv(deadline)
            except socket.timeout:
                if time.monotonic() >= deadline:
                    raise ScriptError(f"timed out in DATA after {len(self._buffer)} bytes")
                continue
            if not data:
                raise ScriptError(f"client closed in DATA after {len(self._buffer)} bytes")
            self._buffer += data
        with self._lock:
            self.data.append(self._buffer[:end])
            self.data_offsets.append(start)
        self._buffer = self._buffer[end:]

    def _raw_send(self, data: bytes) -> None:
        """Write under TLS (or plainly when TLS is off): a dup of the socket's
        descriptor is a plain socket whatever the wrapper does."""
        # Closing the duplicate closes only that descriptor: no FIN is sent.
        with socket.socket(fileno=os.dup(self._conn.fileno())) as raw:
            raw.settimeout(STEP_TIMEOUT_S)
            raw.sendall(data)
            self.bytes_sent += len(data)

    def _tls_close(self, step: TLSClose) -> None:
        """Send close_notify; do not insist on the client's answer."""
        if not isinstance(self._conn, ssl.SSLSocket):
            raise ScriptError("TLSClose outside TLS")
        self._conn.settimeout(step.timeout)
        try:
            self._conn = self._conn.unwrap()
        except (OSError, ssl.SSLError):
            pass

    def _serve(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            while b"\n" in self._buffer:
                line, _, self._buffer = self._buffer.partition(b"\n")
                verb = line.strip().split(b" ", 1)[0].upper()
                if verb == b"QUIT":
                    self._conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                reply = (b"250 2.0.0 OK\r\n" if verb in (b"RSET", b"NOOP")
                         else b"503 5.5.1 Unexpected command\r\n")
                self._conn.sendall(reply)
            try:
                data = self._recv(deadline)
            except socket.timeout:
                continue
            except (ssl.SSLError, ConnectionError):
                return
            if not data:
                return  # the client closed the connection
            self._buffer += data
