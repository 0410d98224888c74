"""`wasmail serve`, from the outside: its HTTP API as a client (and an
attacker) sees it, against real relays on 127.0.0.1.

The service is started as a subprocess on `127.0.0.1:0` (the port it chose
is read from its "listening" line on stderr) and killed at teardown. HTTP is
spoken with the standard library only (http.client).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

import oracle
from cli import RECIPIENT, describe
from scripted import Expect, ReadData, Send, Serve, Stall
from test_deadletter import letters, pending
from test_plugins import (CASES, REPORT_KEYS, check_hello, check_write_ahead, counts,
                          outcomes, policy, read_audit, relay_table, sha256_of, write_config)

# How long the service may take to start (a debug build compiling plugins).
START_TIMEOUT_S = 180
# Any one HTTP request (a run included).
HTTP_TIMEOUT_S = 90
# How long the service may take to exit once told to.
EXIT_TIMEOUT_S = 60
# How long a reload may take to show on stderr.
RELOAD_TIMEOUT_S = 60
POLL_S = 0.05

LISTENING = re.compile(r"serve: listening on http://(\d+\.\d+\.\d+\.\d+):(\d+)")

# The service's limits (host/src/serve/mod.rs).
MAX_INPUT_BYTES = 1 << 20
MAX_BODY_BYTES = 32 << 20
MIN_TOKEN_CHARS = 16

TOKEN_ALL = "tok-all-0123456789abcdef0123"
TOKEN_HELLO = "tok-hello-0123456789abcdef01"
TOKEN_SEND = "tok-send-0123456789abcdef012"
TOKEN_NOSEND = "tok-nosend-0123456789abcdef0"
TOKEN_NEW = "tok-new-0123456789abcdef01234"

TOKENS = [
    {"name": "admin", "token": TOKEN_ALL, "plugins": ["*"], "send": True},
    {"name": "hello-only", "token": TOKEN_HELLO, "plugins": ["hello"]},
    {"name": "sender", "token": TOKEN_SEND, "plugins": [], "send": True},
    {"name": "no-send", "token": TOKEN_NOSEND, "plugins": ["*"], "send": False},
]

# A Prometheus text line: name{labels} value (labels optional).
METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? '
    r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------

def write_tokens(path: Path, tokens: list[dict], mode: int = 0o600) -> Path:
    lines = []
    for t in tokens:
        lines.append("[[token]]")
        for k, v in t.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(mode)
    return path


@dataclass
class Setup:
    config: Path
    tokens: Path
    audit: Path
    dead: Path


def plugin_table(plugins, name: str, **extra) -> dict:
    return {"path": str(plugins[name]), **policy(name), **extra}


def make_setup(tmp_path: Path, plugins, relay, tables: dict, tokens=TOKENS,
               relay_extra: Optional[dict] = None) -> Setup:
    """A config serving `tables` (name -> extra policy keys) through
    `relay`, and the tokens file."""
    conf = tmp_path / "conf"
    config = write_config(conf / "wasmail.toml", audit=str(conf / "audit.jsonl"),
                          dead_letter=str(conf / "dead"),
                          relay=relay_table(relay, **{"timeout_secs": 30, **(relay_extra or {})}),
                          plugins={n: plugin_table(plugins, n, **extra) for n, extra in tables.items()})
    return Setup(config, write_tokens(conf / "tokens.toml", tokens), conf / "audit.jsonl",
                 conf / "dead")


# ---------------------------------------------------------------------------
# The service and HTTP
# ---------------------------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise AssertionError(f"not JSON ({e}): {self.status} {self.body[:500]!r}")

    def __str__(self) -> str:
        return f"{self.status} {self.headers} {self.body[:2000]!r}"


@dataclass
class Server:
    proc: subprocess.Popen
    host: str
    port: int
    stderr_path: Path
    extra: list = field(default_factory=list)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def connection(self, timeout: float = HTTP_TIMEOUT_S) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body=None, *, token: Optional[str] = None,
                headers: Optional[dict] = None, timeout: float = HTTP_TIMEOUT_S,
                conn: Optional[http.client.HTTPConnection] = None) -> Answer:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if isinstance(body, str):
            body = body.encode("utf-8")
        own = conn is None
        conn = conn or self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
            return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
        finally:
            if own:
                conn.close()

    def run(self, plugin: str, input_text, token: str = TOKEN_ALL, **kw) -> Answer:
        return self.request("POST", f"/v1/plugins/{plugin}/runs", input_text, token=token, **kw)

    def send(self, message, token: str = TOKEN_SEND, **kw) -> Answer:
        body = message if isinstance(message, (bytes, str)) else json.dumps(message)
        return self.request("POST", "/v1/messages", body, token=token,
                            headers={"Content-Type": "application/json"}, **kw)

    def metrics(self) -> dict:
        a = self.request("GET", "/metrics")
        assert a.status == 200, a
        return parse_metrics(a.body.decode())

    def wait_stderr(self, pattern: str, timeout: float = RELOAD_TIMEOUT_S, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stderr()
            if text.count(pattern) >= count:
                return text
            time.sleep(POLL_S)
        raise AssertionError(f"{pattern!r} (x{count}) not on stderr within {timeout}s:\n{self.stderr()}")

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"serve did not exit within {timeout}s:\n{self.stderr()}")


def parse_metrics(text: str) -> dict:
    """(name, frozenset of labels) -> value, checking every line's syntax."""
    values = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#"):
            if line.startswith("# TYPE "):
                assert len(line.split()) == 4, f"line {n}: {line!r}"
            continue
        m = METRIC_LINE.match(line)
        assert m, f"line {n} is not `name{{labels}} value`: {line!r}\n{text}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        key = (m.group(1), labels)
        assert key not in values, f"line {n}: repeated series {line!r}"
        values[key] = float(m.group(3))
    return values


def metric(values: dict, name: str, **labels) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


@pytest.fixture
def serve(wasmail, tmp_path):
    """Factory: `serve(setup, *args) -> Server`, listening on 127.0.0.1 (a
    port it chose); killed at teardown."""
    started: list[Server] = []

    def _start(setup: Setup, *args, wait: bool = True) -> Server:
        n = len(started)
        err_path = tmp_path / f"serve{n}.err"
        with open(tmp_path / f"serve{n}.out", "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                [str(wasmail), "serve", "--config", str(setup.config), "--tokens", str(setup.tokens),
                 "--listen", "127.0.0.1:0", *map(str, args)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path)
        server = Server(proc, "", 0, err_path)
        started.append(server)
        if not wait:
            return server
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            m = LISTENING.search(server.stderr())
            if m:
                server.host, server.port = m.group(1), int(m.group(2))
                return server
            if proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode} before listening:\n{server.stderr()}")
            time.sleep(POLL_S)
        pytest.fail(f"serve did not listen within {START_TIMEOUT_S}s:\n{server.stderr()}")

    yield _start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait()


def in_background(fn, *args, **kwargs):
    """Run fn in a thread; returns (thread, result dict with 'value' or 'error')."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def in_flight(server: Server) -> int:
    return int(metric(server.metrics(), "wasmail_runs_in_flight"))


def check_report(report: dict, name: str, plugins) -> dict:
    assert set(report) == REPORT_KEYS, sorted(report)
    assert report["plugin"] == name
    assert report["sha256"] == sha256_of(plugins[name])
    return report


def check_refusal(a: Answer, status: int) -> dict:
    assert a.status == status, a
    assert a.headers.get("content-type", "").startswith("application/json"), a
    body = a.json()
    assert isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str), a
    return body["error"]


# ---------------------------------------------------------------------------
# 1. Health, and a run whose message reaches the relay and the audit log
# ---------------------------------------------------------------------------

def test_healthz_and_a_hello_run(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)

    a = server.request("GET", "/healthz")
    assert a.status == 200 and a.body == b"ok\n", a

    a = server.run("hello", RECIPIENT, headers={"Idempotency-Key": "order-42.v1:a_b"})
    assert a.status == 200, a
    report = check_report(a.json(), "hello", plugins)
    assert report["job"] == "order-42.v1:a_b"
    assert report["plugin_error"] is None and report["stopped"] is None, report
    assert report["counts"] == counts(attempts=1, accepted=1), report
    [entry] = report["messages"]
    assert entry["outcome"] == "accepted" and entry["seq"] == 1, entry

    check_hello([oracle.parse(m.content) for m in relay.messages])
    [received] = relay.messages
    assert received.rcpt_tos == [RECIPIENT]

    records = read_audit(setup.audit)
    check_write_ahead(records)
    assert {r["id"] for r in records} == {entry["id"]}, records
    assert [r["outcome"] for r in records] == ["attempt", "accepted"], records
    assert all(r["job"] == "order-42.v1:a_b" and r["plugin"] == "hello" for r in records), records
    [done] = outcomes(records)
    assert done["message_id"] == entry["message_id"] == oracle.message_id(oracle.parse(received.content))
    assert Path(report["audit"]).name == setup.audit.name

    # Without a key the service makes a job id; a hostile key is refused.
    a = server.run("hello", RECIPIENT)
    assert a.status == 200, a
    job = a.json()["job"]
    assert isinstance(job, str) and job and job != "order-42.v1:a_b"
    for bad in ("has space", "x" * 129, "a/../b", "new\u00e9"):
        a = server.run("hello", RECIPIENT, headers={"Idempotency-Key": bad.encode("utf-8")})
        check_refusal(a, 400)
    assert len(relay.messages) == 2


# ---------------------------------------------------------------------------
# 2. Bearer tokens
# ---------------------------------------------------------------------------

def test_tokens_are_required_and_scoped(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}, "report": {}})
    server = serve(setup)

    a = server.run("hello", RECIPIENT, token=None)
    check_refusal(a, 401)
    assert a.headers.get("www-authenticate", "").startswith("Bearer"), a
    for wrong in ("tok-all-0123456789abcdef0124", TOKEN_ALL[:-1], "", TOKEN_ALL + "x"):
        a = server.run("hello", RECIPIENT, token=wrong)
        check_refusal(a, 401)
        assert a.headers.get("www-authenticate", "").startswith("Bearer"), a
    # The scheme is required; Basic with the token is not a bearer token.
    a = server.run("hello", RECIPIENT, token=None, headers={"Authorization": TOKEN_ALL})
    check_refusal(a, 401)
    a = server.run("hello", RECIPIENT, token=None, headers={
        "Authorization": "Basic " + base64.b64encode(f"x:{TOKEN_ALL}".encode()).decode()})
    check_refusal(a, 401)

    check_refusal(server.run("report", "{}", token=TOKEN_HELLO), 403)
    check_refusal(server.run("report", "{}", token=TOKEN_SEND), 403)
    check_refusal(server.run("nosuch", RECIPIENT, token=TOKEN_ALL), 404)
    check_refusal(server.run("..%2F..%2Fetc%2Fpasswd", RECIPIENT, token=TOKEN_ALL), 404)
    # A token without the plugin learns nothing about which plugins exist.
    check_refusal(server.run("nosuch", RECIPIENT, token=TOKEN_HELLO), 403)
    assert relay.messages == []

    a = server.run("hello", RECIPIENT, token=TOKEN_HELLO)
    assert a.status == 200, a
    assert len(relay.messages) == 1

    m = server.metrics()
    assert metric(m, "wasmail_requests_refused_total", reason="unauthorized") == 7
    assert metric(m, "wasmail_requests_refused_total", reason="forbidden") == 3
    assert metric(m, "wasmail_requests_refused_total", reason="not-found") == 2


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_tokens_file_others_can_read_is_refused(serve, plugins, smtpd, tmp_path, mode):
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    setup.tokens.chmod(mode)
    server = serve(setup, wait=False)
    code = server.wait_exit(START_TIMEOUT_S)
    assert code != 0, server.stderr()
    assert "chmod 600" in server.stderr(), server.stderr()
    assert "listening" not in server.stderr()


def test_a_short_token_is_refused_at_start(serve, plugins, smtpd, tmp_path):
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}},
                       tokens=[*TOKENS, {"name": "weak", "token": "x" * (MIN_TOKEN_CHARS - 1),
                                         "plugins": ["*"]}])
    server = serve(setup, wait=False)
    code = server.wait_exit(START_TIMEOUT_S)
    assert code != 0, server.stderr()
    assert "weak" in server.stderr() and str(MIN_TOKEN_CHARS) in server.stderr(), server.stderr()
    assert "listening" not in server.stderr()


# ---------------------------------------------------------------------------
# 3. Concurrency limits: 429 with Retry-After, never a queue
# ---------------------------------------------------------------------------

# A hostile `loop` run spins until this wall-clock limit stops it.
SPIN_MS = 4000


def test_busy_plugin_and_busy_service_answer_429(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    spin = {"cpu_ms": SPIN_MS, "wall_ms": SPIN_MS}
    setup = make_setup(tmp_path, plugins, relay,
                       {"hostile": {"max_concurrent_runs": 1, **spin}, "hello": {}})
    server = serve(setup)

    # One run of `hostile` at a time.
    t, first = in_background(server.run, "hostile", "loop")
    wait_until(lambda: in_flight(server) == 1, 60, "the first run to start")
    a = server.run("hostile", "loop")
    check_refusal(a, 429)
    assert a.headers.get("retry-after") == "1", a
    # Another plugin still runs meanwhile.
    b = server.run("hello", RECIPIENT)
    assert b.status == 200, b
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in first, first
    done = first["value"]
    assert done.status == 200, done
    assert done.json()["stopped"] is not None, done
    # Once it finished, the plugin runs again.
    wait_until(lambda: in_flight(server) == 0, 30, "no run in flight")
    a = server.run("hostile", "send-ok")
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert metric(server.metrics(), "wasmail_requests_refused_total", reason="busy") == 1


def test_max_runs_counts_every_plugin(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay,
                       {"hostile": {"cpu_ms": SPIN_MS, "wall_ms": SPIN_MS}, "hello": {}})
    server = serve(setup, "--max-runs", "1")

    t, first = in_background(server.run, "hostile", "loop")
    wait_until(lambda: in_flight(server) == 1, 60, "the first run to start")
    refused = [server.run("hello", RECIPIENT), server.run("hostile", "loop")]
    for a in refused:
        check_refusal(a, 429)
        assert a.headers.get("retry-after") == "1", a
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in first, first
    assert first["value"].status == 200, first["value"]
    wait_until(lambda: in_flight(server) == 0, 30, "no run in flight")
    assert server.run("hello", RECIPIENT).status == 200
    assert len(relay.messages) == 1
    m = server.metrics()
    assert metric(m, "wasmail_requests_refused_total", reason="busy") == 2
    assert metric(m, "wasmail_runs_total", plugin="hello") == 1


# ---------------------------------------------------------------------------
# 4. Metrics
# ---------------------------------------------------------------------------

def test_metrics_count_runs_messages_and_stops(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay,
                       {"hello": {}, "hostile": {"cpu_ms": 300, "wall_ms": 20000}})
    server = serve(setup)

    text = server.request("GET", "/metrics")
    assert text.status == 200, text
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4"), text
    parse_metrics(text.body.decode())

    for _ in range(3):
        assert server.run("hello", RECIPIENT).status == 200
    a = server.run("hostile", "cc-outside")
    assert a.status == 200 and a.json()["counts"]["denied"] == 1, a
    a = server.run("hostile", "loop")
    assert a.status == 200, a
    assert a.json()["stopped"] is not None, a

    text = server.request("GET", "/metrics").body.decode()
    m = parse_metrics(text)
    assert metric(m, "wasmail_runs_total", plugin="hello", result="ok") == 3, text
    assert metric(m, "wasmail_runs_total", plugin="hostile", result="plugin-error") == 1, text
    assert metric(m, "wasmail_runs_total", plugin="hostile", result="stopped") == 1, text
    assert metric(m, "wasmail_messages_total", plugin="hello", outcome="accepted") == 3, text
    assert metric(m, "wasmail_messages_total", plugin="hostile", outcome="denied") == 1, text
    assert metric(m, "wasmail_limit_stops_total", plugin="hostile", limit="cpu_ms") == 1, text
    assert metric(m, "wasmail_limit_stops_total", plugin="hostile") == 1, text
    assert metric(m, "wasmail_run_duration_seconds_count", plugin="hello") == 3, text
    assert metric(m, "wasmail_run_duration_seconds_count", plugin="hostile") == 2, text
    assert metric(m, "wasmail_run_duration_seconds_bucket", plugin="hello", le="+Inf") == 3, text
    assert metric(m, "wasmail_run_duration_seconds_sum", plugin="hello") > 0, text
    # Buckets are cumulative.
    buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in m.items()
                      if n == "wasmail_run_duration_seconds_bucket" and ("plugin", "hello") in ls))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), buckets
    assert metric(m, "wasmail_runs_in_flight") == 0, text
    # Every family has its TYPE line before its samples.
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for (name, _), _v in m.items():
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith(
            "wasmail_run_duration_seconds") else name
        assert family in types, f"{name} has no TYPE line\n{text}"
    assert types["wasmail_run_duration_seconds"] == "histogram"


def test_metrics_count_a_trapped_run_as_stopped(serve, plugins, smtpd, tmp_path):
    setup = make_setup(tmp_path, plugins, smtpd(), {"hostile": {}})
    server = serve(setup)
    a = server.run("hostile", "panic")
    assert a.status == 200 and a.json()["stopped"] is not None, a
    m = server.metrics()
    assert metric(m, "wasmail_runs_total", plugin="hostile", result="failed") == 0, m
    assert metric(m, "wasmail_runs_total", plugin="hostile", result="stopped") == 1, m


# ---------------------------------------------------------------------------
# 5. Plain sends
# ---------------------------------------------------------------------------

def test_plain_send_reaches_the_relay(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    attachment = b"\x00\x01binary \xff data\r\n" * 10
    message = {
        "from": {"name": "Sender Ünïcode", "address": "sender@example.com"},
        "to": ["to@example.org", {"name": "Two", "address": "two@example.org"}],
        "cc": ["cc@example.org"],
        "bcc": ["hidden@example.org"],
        "reply_to": "replies@example.com",
        "subject": "Grüße — über HTTP",
        "text": "plain body ✓\n",
        "html": "<p>html body ✓</p>",
        "priority": "high",
        "headers": [["X-Campaign", "spring"]],
        "attachments": [{"filename": "data.bin", "content_type": "application/octet-stream",
                         "content_base64": base64.b64encode(attachment).decode()}],
    }
    a = server.send(message)
    assert a.status == 200, a
    receipt = a.json()
    [received] = relay.messages
    assert sorted(received.rcpt_tos) == sorted(["to@example.org", "two@example.org",
                                                "cc@example.org", "hidden@example.org"])
    assert received.mail_from == "sender@example.com"
    msg = oracle.parse(received.content)
    assert msg["Subject"] == "Grüße — über HTTP"
    assert msg["Bcc"] is None
    assert msg["X-Campaign"] == "spring"
    assert oracle.message_id(msg) in json.dumps(receipt), receipt
    [att] = oracle.attachments(msg)
    assert att.filename == "data.bin" and att.data == attachment
    m = server.metrics()
    assert metric(m, "wasmail_sends_total", result="accepted") == 1
    # Audited with no plugin, under the name of the token that asked.
    [record] = read_audit(setup.audit)
    assert (record["outcome"], record["plugin"], record["client"]) == ("accepted", "", "sender"), record
    assert record["from"] == "sender@example.com"
    assert sorted(record["recipients"]) == sorted(received.rcpt_tos)
    assert record["message_id"] == receipt["message_id"], (record, receipt)


def test_a_refused_plain_send_is_audited_and_kept(serve, plugins, scripted, tmp_path):
    """A plain send the relay refuses for now (451 after the data) gets a
    `rejected` record naming the token, and its exact message is kept for
    `wasmail retry`, the record saying where."""
    relay = scripted([Send(GREETING), Expect("EHLO"), Send(EHLO_PLAIN),
                      Expect("MAIL FROM"), Send(b"250 2.1.0 OK\r\n"), Expect("RCPT TO"),
                      Send(b"250 2.1.5 OK\r\n"), Expect("DATA"), Send(b"354 go ahead\r\n"),
                      ReadData(), Send(b"451 4.3.0 try again later\r\n"), Serve(60)])
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    a = server.send({"from": "sender@example.com", "to": ["to@example.org"], "subject": "s", "text": "t\n"})
    assert a.status == 502, a
    [record] = read_audit(setup.audit)
    assert (record["outcome"], record["plugin"], record["client"]) == ("rejected", "", "sender"), record
    assert record["reason"].startswith("rejected") and "451" in record["reason"], record
    assert record["dead_letter"] and Path(record["dead_letter"]).exists(), record
    assert a.json()["kept"] == record["dead_letter"], (a.json(), record)


def test_plain_send_refuses_bad_bodies(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    good = {"from": "sender@example.com", "to": ["to@example.org"], "subject": "s", "text": "t"}

    err = check_refusal(server.send({**good, "attachments": [
        {"filename": "a", "content_base64": "not base64!!"}]}), 400)
    assert "attachments[0].content_base64" in err["message"], err
    err = check_refusal(server.send({**good, "bcc_all": True}), 400)
    assert "bcc_all" in err["message"], err
    err = check_refusal(server.send({**good, "priority": "urgent"}), 400)
    assert "priority" in err["message"], err
    check_refusal(server.send({**good, "to": "not-a-list"}), 400)
    check_refusal(server.send("{not json"), 400)
    check_refusal(server.send("[]"), 400)
    # Header injection through a field is refused, not sent.
    a = server.send({**good, "subject": "hi\r\nBcc: victim@elsewhere.example"})
    assert a.status == 400, a
    a = server.send({**good, "headers": [["Bcc", "victim@elsewhere.example"]]})
    assert a.status == 400, a
    # Not UTF-8.
    a = server.send(b'{"subject": "\xff\xfe"}')
    assert a.status in (400, 415), a
    # Tokens: none, or one without `send`.
    check_refusal(server.send(good, token=None), 401)
    check_refusal(server.send(good, token=TOKEN_NOSEND), 403)
    check_refusal(server.send(good, token=TOKEN_HELLO), 403)
    assert relay.messages == []
    # The service still works.
    assert server.send(good).status == 200
    assert len(relay.messages) == 1


def post_oversized(server: Server, path: str, size: int, token: str) -> Answer:
    """POST `size` bytes; the service may answer (and close) before it has
    read them all, so write in pieces and read whatever answer came."""
    sock = socket.create_connection((server.host, server.port), timeout=HTTP_TIMEOUT_S)
    try:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {size}\r\n\r\n").encode())
        chunk = b"a" * (1 << 20)
        sent = 0
        try:
            while sent < size:
                n = min(len(chunk), size - sent)
                sock.sendall(chunk[:n])
                sent += n
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        sock.close()


def test_oversized_bodies_are_refused(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    a = post_oversized(server, "/v1/messages", MAX_BODY_BYTES + 1, TOKEN_SEND)
    assert a.status == 413, a
    a = post_oversized(server, "/v1/plugins/hello/runs", MAX_BODY_BYTES + 1, TOKEN_ALL)
    assert a.status == 413, a
    assert relay.messages == []
    assert server.request("GET", "/healthz").status == 200


def test_a_request_without_a_token_is_refused_before_its_body_is_read(serve, plugins, smtpd, tmp_path):
    """A body is read only after its token was checked: a client without
    one that announces 31 MB and sends none gets 401 at once, and holds no
    memory of the host's (its body once was read first, up to 32 MiB)."""
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    server = serve(setup)
    for path in ("/v1/messages", "/v1/plugins/hello/runs"):
        with socket.create_connection((server.host, server.port), timeout=HTTP_TIMEOUT_S) as sock:
            sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {server.host}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: 31000000\r\n\r\n").encode())
            sock.settimeout(10)
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            assert resp.status == 401, (path, resp.status)


# ---------------------------------------------------------------------------
# 6. SIGHUP
# ---------------------------------------------------------------------------

def test_sighup_reloads_tokens_and_policy_and_keeps_the_old_on_failure(serve, plugins, smtpd,
                                                                        tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    check_refusal(server.run("hello", RECIPIENT, token=TOKEN_NEW), 401)
    a = server.run("hello", RECIPIENT)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a

    # A new token, and a policy that no longer allows the recipient.
    write_tokens(setup.tokens, [*TOKENS, {"name": "new", "token": TOKEN_NEW, "plugins": ["hello"]}])
    make_setup(tmp_path, plugins, relay, {"hello": {"allowed_recipients": ["*@example.org"]}},
               tokens=[*TOKENS, {"name": "new", "token": TOKEN_NEW, "plugins": ["hello"]}])
    server.proc.send_signal(signal.SIGHUP)
    server.wait_stderr("serve: reloaded")
    a = server.run("hello", RECIPIENT, token=TOKEN_NEW)
    assert a.status == 200, a
    assert a.json()["counts"]["denied"] == 1 and a.json()["counts"]["accepted"] == 0, a
    a = server.run("hello", "someone@example.org", token=TOKEN_NEW)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a

    # A broken config: the old one keeps serving.
    good_config = setup.config.read_text()
    setup.config.write_text(good_config + "\n[[[ not toml\n")
    server.proc.send_signal(signal.SIGHUP)
    err = server.wait_stderr("reload failed")
    assert "still serving the old config" in err, err
    assert server.proc.poll() is None
    a = server.run("hello", "someone@example.org", token=TOKEN_NEW)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a

    # Tokens made readable by others: refused on reload too, the old kept.
    setup.config.write_text(good_config)
    setup.tokens.chmod(0o644)
    server.proc.send_signal(signal.SIGHUP)
    err = server.wait_stderr("reload failed", count=2)
    assert "chmod 600" in err, err
    assert server.run("hello", "someone@example.org", token=TOKEN_NEW).status == 200
    # A plugin file that is not a component: refused, the old kept.
    setup.tokens.chmod(0o600)
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"\x00asm garbage")
    write_config(setup.config, audit=str(setup.audit), dead_letter=str(setup.dead),
                 relay=relay_table(relay),
                 plugins={"hello": {**plugin_table(plugins, "hello"), "path": str(bogus)}})
    server.proc.send_signal(signal.SIGHUP)
    server.wait_stderr("reload failed", count=3)
    a = server.run("hello", "someone@example.org", token=TOKEN_NEW)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert len(relay.messages) == 5
    m = server.metrics()
    assert metric(m, "wasmail_reloads_total", result="ok") == 1, m
    assert metric(m, "wasmail_reloads_total", result="failed") == 3, m


# ---------------------------------------------------------------------------
# 7. SIGTERM
# ---------------------------------------------------------------------------

GREETING = b"220 fake.example ESMTP\r\n"
EHLO_PLAIN = b"250-fake.example\r\n250 ENHANCEDSTATUSCODES\r\n"


def slow_relay_steps(delay: float) -> list:
    """One message, its final reply `delay` seconds after the dot."""
    return [Send(GREETING), Expect("EHLO"), Send(EHLO_PLAIN),
            Expect("MAIL FROM"), Send(b"250 2.1.0 OK\r\n"), Expect("RCPT TO"),
            Send(b"250 2.1.5 OK\r\n"), Expect("DATA"), Send(b"354 go ahead\r\n"),
            ReadData(), Stall(delay), Send(b"250 2.0.0 queued as S1\r\n"), Serve(60)]


def refused(server: Server) -> bool:
    try:
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            # Accepted by a backlog nobody reads: not refused, but no answer.
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(2)
            return s.recv(100) == b""
    except ConnectionRefusedError:
        return True
    except (socket.timeout, ConnectionResetError):
        return True


def test_sigterm_lets_the_run_in_flight_finish(serve, plugins, scripted, tmp_path):
    relay = scripted(slow_relay_steps(3.0))
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup, "--shutdown-secs", "60")

    t, out = in_background(server.run, "hello", RECIPIENT)
    wait_until(lambda: relay.data, 60, "the message at the relay")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_stderr("serve: stopping", timeout=30)
    # Refused once the listener is closed (a moment after the note).
    wait_until(lambda: refused(server), 30, "new connections to be refused after SIGTERM")
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in out, out
    a = out["value"]
    assert a.status == 200, a
    report = a.json()
    assert report["counts"]["accepted"] == 1, report
    assert server.wait_exit() == 0, server.stderr()
    assert relay.error is None, relay.error
    assert pending(setup.dead) == [] and letters(setup.dead) == []


def test_sigterm_deadline_leaves_the_message_in_the_spool(serve, run, plugins, scripted, tmp_path):
    relay = scripted(slow_relay_steps(120.0))
    setup = make_setup(tmp_path, plugins, relay, {"hello": {"wall_ms": 300_000}},
                       relay_extra={"timeout_secs": 300})
    server = serve(setup, "--shutdown-secs", "1")

    t, out = in_background(server.run, "hello", RECIPIENT)
    wait_until(lambda: relay.data, 60, "the message at the relay")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.wait_exit(30)
    took = time.monotonic() - signalled
    assert code == 0, server.stderr()
    assert took < 15, f"exited {took:.1f}s after SIGTERM with --shutdown-secs 1"
    assert "stay in the spool" in server.stderr(), server.stderr()
    t.join(HTTP_TIMEOUT_S)
    assert "error" in out, f"the cut-short run answered: {out.get('value')}"

    # Nothing lost: the message is in the spool (an attempt in the audit
    # log, no outcome), and `wasmail retry` adopts it as outcome unknown.
    records = read_audit(setup.audit)
    assert [r["outcome"] for r in records] == ["attempt"], records
    assert len(pending(setup.dead)) == 1, list(setup.dead.rglob("*"))
    proc = run(["retry", "--config", setup.config, "--json"])
    kept = letters(setup.dead)
    assert len(kept) == 1, f"{kept}\n{describe(proc)}"
    assert kept[0]["message_id"] == records[0]["message_id"], kept



def test_sigterm_is_not_held_by_a_half_sent_request(serve, plugins, smtpd, tmp_path):
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    server = serve(setup, "--shutdown-secs", "20")
    idle = server.connection()
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b"ok\n"
    with socket.create_connection((server.host, server.port), timeout=30) as half:
        half.sendall(b"POST /v1/plugins/hello/runs HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.5)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.wait_exit(60) == 0, server.stderr()
        took = time.monotonic() - signalled
    idle.close()
    assert "runs in flight" not in server.stderr().split("stopping", 1)[1], server.stderr()
    assert took < 10, f"exited {took:.1f}s after SIGTERM, with no run in flight"

# ---------------------------------------------------------------------------
# 8. Relay sessions pooled between runs
# ---------------------------------------------------------------------------

def test_consecutive_runs_share_one_relay_session(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}, "report": {}})
    server = serve(setup)
    for _ in range(2):
        a = server.run("hello", RECIPIENT)
        assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    a = server.run("report", CASES["report"].input)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert len(relay.messages) == 3
    verbs = relay.record.verbs()
    # Sessions are pooled per plugin (their grants differ): hello's two runs
    # share one, report has its own.
    assert [v for v in verbs if v in ("EHLO", "HELO")] == ["EHLO", "EHLO"], verbs
    first_two = verbs[:verbs.index("EHLO", 1)]
    assert first_two.count("MAIL") == 2 and first_two.count("EHLO") == 1, verbs
    assert verbs.count("MAIL") == 3 and "QUIT" not in verbs, verbs
    # Each run's mail has its own envelope: the first run's From/To are not
    # carried into the next (the session is reset between messages).
    assert [m.mail_from for m in relay.messages] == ["hello@example.com"] * 2 + ["report@example.com"]
    assert relay.messages[2].rcpt_tos == CASES["report"].recipients


# ---------------------------------------------------------------------------
# 9. Inputs
# ---------------------------------------------------------------------------

def test_non_ascii_input_and_the_input_limit(serve, plugins, smtpd, tmp_path):
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"report": {}, "hello": {}})
    server = serve(setup)

    case = CASES["report"]
    a = server.run("report", case.input, headers={"Content-Type": "application/json; charset=utf-8"})
    assert a.status == 200, a
    assert a.json()["counts"]["accepted"] == 1, a
    case.check([oracle.parse(m.content) for m in relay.messages])

    # Input over the limit: 413, and the plugin never ran.
    a = server.run("hello", "a" * (MAX_INPUT_BYTES + 1))
    assert a.status == 413, a
    a = server.run("hello", "é" * (MAX_INPUT_BYTES // 2) + "a")  # 1 MiB + 1 bytes in UTF-8
    assert a.status == 413, a
    # At the limit it runs (and the plugin finds the address invalid).
    a = server.run("hello", " " * (MAX_INPUT_BYTES - len(RECIPIENT)) + RECIPIENT)
    assert a.status == 200, a
    assert a.json()["counts"]["accepted"] == 1, a
    # Not UTF-8: refused before the plugin runs.
    a = server.run("hello", b"rcpt@example.com\xff")
    assert a.status == 400, a
    assert len(relay.messages) == 2
    m = server.metrics()
    assert metric(m, "wasmail_runs_total", plugin="hello") == 1


def test_max_runs_at_once_all_get_their_instances(serve, plugins, smtpd, tmp_path):
    # --max-runs 12 and 12 runs at once: each run holds three component
    # instances (the plugin and its two mailers) and the pool keeps idle
    # mailers besides, so the engine must be sized for the service's
    # concurrency, not for one command (where 32 slots did, and half of
    # these runs once failed with "maximum concurrent limit ... reached").
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup, "--max-runs", "12", "--max-relay-connections", "12")
    answers: list[Answer] = [None] * 12
    barrier = threading.Barrier(12)

    def one(i: int) -> None:
        barrier.wait(timeout=60)
        answers[i] = server.run("hello", f"u{i}@example.com")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    statuses = [a.status if a else None for a in answers]
    assert statuses == [200] * 12, [(a.status, a.body[:200]) for a in answers if a]
    for a in answers:
        assert a.json()["counts"]["accepted"] == 1, a.body[:300]
    assert len(relay.messages) == 12


def read_bytes_of(proc: subprocess.Popen) -> int:
    """Octets the process has read through read(2) and the like so far
    (/proc/<pid>/io `rchar`)."""
    for line in Path(f"/proc/{proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{proc.pid}/io")


def test_a_run_without_a_key_does_not_read_the_audit_log(serve, plugins, smtpd, tmp_path):
    # The log of a long-lived service: 40 MB of other jobs' records.
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    record = json.dumps({"time_ms": 1, "plugin": "hello", "sha256": "0" * 64, "outcome": "accepted",
                         "from": "hello@example.com", "recipients": [RECIPIENT], "rejected": [],
                         "job": "job-of-another-run", "seq": 1, "id": "x", "message_id": "m@example.com"})
    big = 40 << 20
    with open(setup.audit, "w") as f:
        f.write((record + "\n") * (big // (len(record) + 1)))
    server = serve(setup)
    assert server.run("hello", RECIPIENT).status == 200  # warm: plugin and relay session

    # A job id the service makes cannot have run before: the log is not
    # searched, whatever its size.
    before = read_bytes_of(server.proc)
    a = server.run("hello", RECIPIENT)
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert read_bytes_of(server.proc) - before < big // 4

    # A client's key may have: its earlier deliveries are looked up.
    before = read_bytes_of(server.proc)
    a = server.run("hello", RECIPIENT, headers={"Idempotency-Key": "order-7"})
    assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert read_bytes_of(server.proc) - before >= big // 2


def test_a_repeated_key_while_its_run_goes_on_answers_409(serve, plugins, scripted, tmp_path):
    """The same Idempotency-Key while its first run is still sending: that
    run would be read as not yet attempted and its message sent twice. It
    answers 409 `job-running`; asked again once the first run has ended,
    the key gets that run's receipt and nothing is sent again."""
    relay = scripted(slow_relay_steps(3.0))
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    key = {"Idempotency-Key": "order-9"}

    t, first = in_background(server.run, "hello", RECIPIENT, headers=key)
    wait_until(lambda: relay.data, 60, "the message at the relay")
    again = check_refusal(server.run("hello", RECIPIENT, headers=key), 409)
    assert again["kind"] == "job-running" and "order-9" in again["message"], again
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in first, first
    assert first["value"].status == 200 and first["value"].json()["counts"]["accepted"] == 1, first
    a = server.run("hello", RECIPIENT, headers=key)
    assert a.status == 200 and a.json()["counts"]["skipped"] == 1, a
    assert len(relay.data) == 1


def test_after_a_reload_runs_go_to_the_new_relay(serve, plugins, scripted, smtpd, tmp_path):
    """A run in flight across a SIGHUP returns its session to the pool when
    it ends: that session is the old relay's, and no later run takes it."""
    old = scripted(slow_relay_steps(3.0))
    setup = make_setup(tmp_path, plugins, old, {"hello": {}})
    server = serve(setup)
    t, first = in_background(server.run, "hello", RECIPIENT)
    wait_until(lambda: old.data, 60, "the message at the old relay")
    new = smtpd()
    make_setup(tmp_path, plugins, new, {"hello": {}})
    server.proc.send_signal(signal.SIGHUP)
    server.wait_stderr("serve: reloaded")
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in first and first["value"].status == 200, first
    for _ in range(2):
        a = server.run("hello", RECIPIENT)
        assert a.status == 200 and a.json()["counts"]["accepted"] == 1, a
    assert len(old.data) == 1 and len(new.messages) == 2


def test_a_plain_send_counts_against_max_runs(serve, plugins, scripted, tmp_path):
    """`POST /v1/messages` is a run like any other: with `--max-runs 1`, a
    second send while the first waits for its relay answers 429 (each once
    opened a relay connection of its own, past every limit)."""
    relay = scripted(slow_relay_steps(3.0))
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup, "--max-runs", "1")
    message = {"from": "sender@example.com", "to": ["to@example.org"], "subject": "s", "text": "t\n"}
    t, first = in_background(server.send, message)
    wait_until(lambda: relay.data, 60, "the message at the relay")
    check_refusal(server.send(message), 429)
    t.join(HTTP_TIMEOUT_S)
    assert "error" not in first and first["value"].status == 200, first


def test_a_plain_send_finishes_when_its_client_hangs_up(serve, plugins, scripted, tmp_path):
    """A client that closes its connection while its message is at the
    relay: the send goes on to its end and is counted (it was once cut off
    mid-dialogue, with the message at the relay and nothing kept)."""
    relay = scripted(slow_relay_steps(2.0))
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup)
    body = json.dumps({"from": "sender@example.com", "to": ["to@example.org"], "subject": "s", "text": "t\n"}).encode()
    with socket.create_connection((server.host, server.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall((f"POST /v1/messages HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: Bearer {TOKEN_SEND}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        wait_until(lambda: relay.data, 60, "the message at the relay")
    wait_until(lambda: metric(server.metrics(), "wasmail_sends_total", result="accepted") == 1, 30,
               "the send to be counted after the hang-up")
    assert relay.error is None, relay.error


# ---------------------------------------------------------------------------
# 10. Connections: a deadline on every request head and body, a cap on how
#     many are open
# ---------------------------------------------------------------------------

# The deadlines the connection tests set (--header-read-secs,
# --body-read-secs): long enough for a busy two-core machine to answer a
# request that came in time.
SHORT_DEADLINE_S = 2
# How long a test waits for a connection to be closed, or answered, past
# such a deadline.
CLOSE_WAIT_S = 20
# How long a request past the connection cap is watched to see it is not
# answered.
NOT_SERVED_WAIT_S = 1.5


def read_until_eof(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """What `sock` receives until the server closes it, and when (seconds
    from now); fails if it is still open after `timeout`."""
    start = time.monotonic()
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout}s; got {got!r}")
    return got, time.monotonic() - start


@pytest.mark.parametrize("flag, value", [
    ("--max-connections", "0"), ("--max-connections", str((1 << 20) + 1)),
    ("--header-read-secs", "0"), ("--header-read-secs", "86401"),
    ("--body-read-secs", "0"), ("--body-read-secs", "86401"),
])
def test_connection_limits_out_of_range_are_usage_errors(serve, plugins, smtpd, tmp_path, flag, value):
    """A cap of 0 would serve nobody, and a deadline of years overflows the
    timer: both are refused at start (64), naming the flag."""
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    server = serve(setup, flag, value, wait=False)
    assert server.wait_exit(START_TIMEOUT_S) == 64, server.stderr()
    assert flag in server.stderr() and "listening" not in server.stderr(), server.stderr()


def test_a_connection_without_a_request_head_is_closed_at_the_deadline(serve, plugins, smtpd, tmp_path):
    """A client that connects and sends nothing, one that sends half a head
    and stops, and an idle keep-alive connection each hold a connection slot
    for --header-read-secs, no longer (they were held for ever)."""
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    server = serve(setup, "--header-read-secs", str(SHORT_DEADLINE_S))
    address = (server.host, server.port)
    with socket.create_connection(address) as silent, socket.create_connection(address) as half, \
            socket.create_connection(address) as kept:
        half.sendall(b"POST /v1/plugins/hello/runs HTTP/1.1\r\nHost: x\r\nAuthoriz")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got, _ = read_until_eof(silent, CLOSE_WAIT_S)
        assert got == b"", got
        got, _ = read_until_eof(half, CLOSE_WAIT_S)
        assert got == b"" or got.startswith(b"HTTP/1.1 408 "), got
        got, _ = read_until_eof(kept, CLOSE_WAIT_S)
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"ok\n"), got
    assert server.request("GET", "/healthz").status == 200


def test_connections_past_the_cap_wait_for_a_free_slot(serve, plugins, smtpd, tmp_path):
    """With --max-connections 2 and two connections open, a third is not
    served until one of them closes; then it is, and the service is fine."""
    setup = make_setup(tmp_path, plugins, smtpd(), {"hello": {}})
    server = serve(setup, "--max-connections", "2")
    address = (server.host, server.port)
    # Accepted in order: these two take the two slots.
    held = [socket.create_connection(address) for _ in range(2)]
    try:
        with socket.create_connection(address) as third:
            third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            third.settimeout(NOT_SERVED_WAIT_S)
            with pytest.raises(TimeoutError):
                third.recv(1)
            held.pop().close()
            got, _ = read_until_eof(third, CLOSE_WAIT_S)
            assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"ok\n"), got
    finally:
        for sock in held:
            sock.close()
    assert server.request("GET", "/healthz").status == 200


@pytest.mark.parametrize("path, token", [("/v1/messages", TOKEN_SEND), ("/v1/plugins/hello/runs", TOKEN_ALL)])
def test_a_body_sent_too_slowly_is_answered_408(serve, plugins, smtpd, tmp_path, path, token):
    """A client with a good token that announces 100 octets of body and
    sends 10 is answered 408 once --body-read-secs has passed, on a
    connection that is then closed, and nothing
    is run or sent."""
    relay = smtpd()
    setup = make_setup(tmp_path, plugins, relay, {"hello": {}})
    server = serve(setup, "--body-read-secs", str(SHORT_DEADLINE_S))
    with socket.create_connection((server.host, server.port), timeout=HTTP_TIMEOUT_S) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode() + b"{" * 10)
        sock.settimeout(CLOSE_WAIT_S)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
    assert resp.status == 408, (resp.status, body)
    error = json.loads(body)
    assert f"within {SHORT_DEADLINE_S} s" in json.dumps(error), error
    assert resp.getheader("Connection") == "close"
    assert relay.messages == []
    values = server.metrics()
    assert metric(values, "wasmail_runs_total") == 0 and metric(values, "wasmail_sends_total") == 0, values
