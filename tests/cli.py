"""The `wasmail` CLI contract, as the tests see it: exit codes, the `--json`
output, the `-v` transcript and a few argument builders."""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from typing import Optional

# ---- exit codes (sysexits.h) ------------------------------------------------
EXIT_OK = 0
EXIT_USAGE = 64        # EX_USAGE: bad command line
EXIT_DATAERR = 65      # EX_DATAERR: invalid message
EXIT_NOINPUT = 66      # EX_NOINPUT: unreadable input file
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: connect failed, permanent rejection, TLS
EXIT_TEMPFAIL = 75     # EX_TEMPFAIL: 4xx, timeout, outcome unknown
EXIT_PROTOCOL = 76     # EX_PROTOCOL: the server broke the protocol
EXIT_NOPERM = 77       # EX_NOPERM: authentication failed
EXIT_CONFIG = 78       # EX_CONFIG: configuration error

# The exit code each `--json` error kind must come with.
EXIT_FOR_KIND = {
    "usage": EXIT_USAGE,
    "invalid-message": EXIT_DATAERR,
    "io": EXIT_NOINPUT,
    "connect": EXIT_UNAVAILABLE,
    "tls": EXIT_UNAVAILABLE,
    "timeout": EXIT_TEMPFAIL,
    "outcome-unknown": EXIT_TEMPFAIL,
    "protocol": EXIT_PROTOCOL,
    "auth": EXIT_NOPERM,
}

# ---- time bounds --------------------------------------------------------------
# Any one CLI run (the first run also compiles the wasm component).
CLI_TIMEOUT_S = 60
# A run that sends 1,000 messages.
BULK_TIMEOUT_S = 180

# ---- fixed test identities ----------------------------------------------------
USER = "alice@example.com"
PASSWORD = "Tr0ub4dor&3-wasmail-secret"
PASSWORD_ENV = "WASMAIL_TEST_PASSWORD"
SENDER = "sender@example.com"
RECIPIENT = "rcpt@example.com"


def describe(proc: subprocess.CompletedProcess) -> str:
    """A run, for assertion messages."""
    return (f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}"
            f"\n--- stderr ---\n{proc.stderr}")


def json_output(proc: subprocess.CompletedProcess) -> dict:
    """The one JSON object `--json` prints on stdout."""
    try:
        value = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"stdout is not one JSON object ({e})\n{describe(proc)}")
    assert isinstance(value, dict), f"JSON is not an object\n{describe(proc)}"
    return value


def json_error(proc: subprocess.CompletedProcess) -> dict:
    """The `error` object of a failed `--json` run; also checks the exit code
    against the kind."""
    value = json_output(proc)
    assert "error" in value, f"no error object\n{describe(proc)}"
    error = value["error"]
    kind = error.get("kind")
    assert isinstance(error.get("message"), str), f"error without message\n{describe(proc)}"
    if kind in EXIT_FOR_KIND:
        assert proc.returncode == EXIT_FOR_KIND[kind], (
            f"kind {kind!r} must exit {EXIT_FOR_KIND[kind]}\n{describe(proc)}")
    return error


def assert_exit(proc: subprocess.CompletedProcess, code: int) -> None:
    assert proc.returncode == code, f"expected exit {code}\n{describe(proc)}"


# ---- the -v transcript ----------------------------------------------------------

@dataclass(frozen=True)
class Line:
    who: str    # "C" client, "S" server, "*" note
    text: str


def transcript(stderr: str) -> list[Line]:
    """The `C: `, `S: ` and `* ` lines of a `-v` run; other stderr is ignored."""
    lines = []
    for raw in stderr.splitlines():
        if raw.startswith(("C: ", "S: ")):
            lines.append(Line(raw[0], raw[3:]))
        elif raw.startswith("* "):
            lines.append(Line("*", raw[2:]))
    return lines


def index_of(lines: list[Line], who: str, prefix: str, start: int = 0) -> int:
    """Index of the first line from `who` starting with `prefix` (case-insensitive)."""
    for i in range(start, len(lines)):
        if lines[i].who == who and lines[i].text.upper().startswith(prefix.upper()):
            return i
    raise AssertionError(f"no {who}: {prefix!r} line in transcript after {start}:\n"
                         + "\n".join(f"{l.who}: {l.text}" for l in lines))


def secret_forms(user: str, password: str) -> list[str]:
    """The password and the base64 forms it takes in AUTH PLAIN and LOGIN:
    none may appear in any output."""
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    return [
        password,
        b64(password),
        b64(f"\0{user}\0{password}"),
        b64(f"{user}\0{user}\0{password}"),
    ]


# ---- argument builders ----------------------------------------------------------

def relay(address: str, tls: str = "none", *, tls_name: Optional[str] = None,
          ca_file: Optional[str] = None, timeout: Optional[int] = None) -> list[str]:
    """`--server ... --tls ...` and friends."""
    args = ["--server", address, "--tls", tls]
    if tls_name:
        args += ["--tls-name", tls_name]
    if ca_file:
        args += ["--ca-file", str(ca_file)]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    return args


def login(user: str = USER, auth: Optional[str] = None) -> list[str]:
    """`--user U --password-env VAR [--auth MECH]`; the run must set VAR
    (see the `run` fixture's `password`)."""
    args = ["--user", user, "--password-env", PASSWORD_ENV]
    if auth:
        args += ["--auth", auth]
    return args
