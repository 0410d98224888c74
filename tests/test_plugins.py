"""Acceptance tests of the plugin issue: `wasmail run` and `wasmail inspect`
with the example plugins (hello, report, bulk, hostile, netgrab).

Mail that reaches a server or the outbox is read back with Python's `email`
package (oracle.py); every run is also checked through its `--json` report
and the audit log (one JSON object per line).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

import oracle
from cli import (BULK_TIMEOUT_S, PASSWORD, PASSWORD_ENV, RECIPIENT, USER, assert_exit,
                 describe, index_of, json_output, secret_forms, transcript)

# ---- exit codes of `wasmail run` ------------------------------------------------
EXIT_OK = 0
EXIT_PLUGIN_ERROR = 1   # the plugin's `run` returned Err
EXIT_STOPPED = 70       # a limit or a trap stopped the plugin
EXIT_USAGE = 64         # bad command line
EXIT_NOINPUT = 66       # an input or plugin file that cannot be read
EXIT_REFUSED = 77       # refused before it ran (imports, no policy table)
EXIT_CONFIG = 78        # bad config file

# The keys of the `--json` run report (it keeps counts; the records
# themselves are only in the audit log), of its `counts`, and of one audit
# record.
REPORT_KEYS = {"plugin", "job", "sha256", "output", "plugin_error", "stopped", "accepted", "counts",
               "messages", "unlisted", "audit"}
COUNT_KEYS = {"attempts", "accepted", "denied", "rejected", "errors", "kept", "skipped"}
# One entry per message in a report's `messages` (the first 1000).
MESSAGE_KEYS = {"seq", "id", "message_id", "outcome", "reason", "dead_letter"}
AUDIT_KEYS = {"time_ms", "plugin", "sha256", "from", "recipients", "rejected", "size",
              "message_id", "outcome", "reason"}
AUDIT_OPTIONAL_KEYS = {
    "id",           # the spool id (relay) or outbox file name: attempt and outcome alike
    "outbox",       # only on records of mail written to the outbox
    "dead_letter",  # where an undelivered message was kept for `wasmail retry`
    "omitted",      # characters and list entries cut to keep the record small
    "seq",          # which message of its run (1, 2, ...): every plugin record
    "job",          # the job the run was for (`--job`, a queue's job id)
    "client",       # who asked for a plain send (serve: the token's name); no plugin
}
# "attempt" is written ahead, before a message goes to the relay; the other
# outcomes end an attempt (or a call to send that never got that far).
OUTCOMES = {"attempt", "accepted", "rejected", "denied", "error", "skipped"}
# The longest audit line, newline included.
MAX_RECORD_BYTES = 8 * 1024
# The host's name for an outbox or dead-letter file: ms, pid, counter.
SPOOL_NAME = re.compile(r"\d{13}-\d+-\d{6}\.eml")

# `hostile loop` runs under this CPU budget and must be stopped well within
# the bound (start-up and compilation included).
LOOP_CPU_MS = 300
LOOP_BOUND_S = 15
# Messages in the one-session volume test.
BULK_VOLUME = 200


# ---------------------------------------------------------------------------
# Config files
# ---------------------------------------------------------------------------

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, *, relay: Optional[dict] = None, plugins: Optional[dict] = None,
                 **top) -> Path:
    """Write a wasmail.toml: top-level keys (`outbox`, `audit`), `[relay]`,
    and one `[plugins.NAME]` table per entry of `plugins`."""
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    if relay is not None:
        lines += ["", "[relay]", *(f"{k} = {toml_value(v)}" for k, v in relay.items())]
    for name, table in (plugins or {}).items():
        lines += ["", f"[plugins.{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def from_name(plugin: str) -> str:
    return f"{plugin.capitalize()} Plugin"


def from_address(plugin: str) -> str:
    return f"{plugin}@example.com"


def policy(plugin: str, **overrides) -> dict:
    """A policy table: From and recipients in example.com, X-Mailer allowed."""
    table = {
        "allowed_from": ["*@example.com"],
        "default_from": f"{from_name(plugin)} <{from_address(plugin)}>",
        "allowed_recipients": ["*@example.com"],
        "allowed_headers": ["X-Mailer"],
    }
    table.update(overrides)
    return table


def relay_table(server, **extra) -> dict:
    return {"server": server.address, "tls": "none", **extra}


# ---------------------------------------------------------------------------
# Running plugins, reading reports and the audit log
# ---------------------------------------------------------------------------

def run_plugin(run, plugins, name: str, *, config: Optional[Path] = None,
               input_text: Optional[str] = None, args=(), json_report: bool = True, **kwargs):
    """`wasmail run <plugin> [--config] [--input-text] [--json] *args`."""
    cmd = ["run", plugins[name]]
    if config is not None:
        cmd += ["--config", config]
    if input_text is not None:
        cmd += ["--input-text", input_text]
    if json_report:
        cmd.append("--json")
    return run([*cmd, *args], **kwargs)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_record(record: dict, where: str) -> dict:
    """One audit record has exactly the documented fields and a known outcome."""
    assert isinstance(record, dict), f"{where}: not an object: {record!r}"
    keys = set(record)
    assert AUDIT_KEYS <= keys, f"{where}: missing {sorted(AUDIT_KEYS - keys)}: {record}"
    assert keys <= AUDIT_KEYS | AUDIT_OPTIONAL_KEYS, (
        f"{where}: unexpected {sorted(keys - AUDIT_KEYS - AUDIT_OPTIONAL_KEYS)}: {record}")
    assert record["outcome"] in OUTCOMES, f"{where}: {record}"
    assert isinstance(record["time_ms"], int), f"{where}: {record}"
    assert isinstance(record["recipients"], list), f"{where}: {record}"
    assert isinstance(record["rejected"], list), f"{where}: {record}"
    return record


def read_audit(path: Path) -> list[dict]:
    """Every line of the audit log, each one JSON object of at most
    MAX_RECORD_BYTES with the documented fields, `attempt` records included."""
    assert path.is_file(), f"no audit log at {path}"
    records = []
    for n, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        assert len(line) + 1 <= MAX_RECORD_BYTES, f"{path} line {n}: {len(line) + 1} bytes"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(f"{path} line {n} is not JSON ({e}): {line[:300]!r}")
        records.append(check_record(value, f"{path} line {n}"))
    assert path.read_bytes().endswith(b"\n") or path.stat().st_size == 0, f"{path}: a cut line"
    return records


def outcomes(records: list[dict]) -> list[dict]:
    """The records that say how a call to send ended: all but the
    write-ahead `attempt` records."""
    return [r for r in records if r["outcome"] != "attempt"]


def check_write_ahead(records: list[dict]) -> None:
    """Deliveries in the log: each `attempt` (with its spool id or outbox file name, the
    Message-ID, size, From and recipients) comes before the one outcome
    record with the same id; no outcome record has an id without an attempt
    before it, and an attempt has at most one outcome."""
    attempts: dict[str, dict] = {}
    settled: set[str] = set()
    for n, r in enumerate(records):
        rid = r.get("id")
        if r["outcome"] == "attempt":
            assert rid and rid not in attempts, f"record {n}: attempt without a fresh id: {r}"
            assert r["message_id"] and r["size"] and r["from"] and r["recipients"], r
            assert r.get("dead_letter") is None, r
            attempts[rid] = r
        elif rid is not None:
            assert rid in attempts, f"record {n}: outcome {rid} without an attempt before it: {r}"
            assert rid not in settled, f"record {n}: a second outcome for {rid}: {r}"
            settled.add(rid)
            a = attempts[rid]
            assert (r["message_id"], r["from"], r["recipients"]) == (
                a["message_id"], a["from"], a["recipients"]), (a, r)
            # Outbox mail: the attempt names the file its outcome was written to.
            assert a.get("outbox") is None or a["outbox"] == r.get("outbox"), (a, r)


def run_report(proc) -> dict:
    """The `--json` report of a run that got as far as running the plugin."""
    report = json_output(proc)
    assert set(report) == REPORT_KEYS, f"report keys {sorted(report)}\n{describe(proc)}"
    counts = report["counts"]
    assert isinstance(counts, dict) and set(counts) == COUNT_KEYS, describe(proc)
    assert all(isinstance(v, int) and v >= 0 for v in counts.values()), describe(proc)
    assert report["accepted"] == counts["accepted"], describe(proc)
    # Every call to send is one attempt, and ends in at most one outcome.
    ended = counts["accepted"] + counts["denied"] + counts["rejected"] + counts["errors"]
    assert ended <= counts["attempts"], describe(proc)
    assert counts["kept"] <= counts["errors"] + counts["rejected"], describe(proc)
    assert isinstance(report["audit"], str) and report["audit"], describe(proc)
    # The report lists each settled message (up to 1000; the rest counted).
    for m in report["messages"]:
        assert set(m) == MESSAGE_KEYS and m["outcome"] in OUTCOMES - {"attempt"}, (m, describe(proc))
    assert len(report["messages"]) <= 1000 and report["unlisted"] >= 0, describe(proc)
    return report


def counts(attempts: int = 0, accepted: int = 0, denied: int = 0, rejected: int = 0,
           errors: int = 0, kept: int = 0, skipped: int = 0) -> dict:
    """A report's expected `counts`."""
    return {"attempts": attempts, "accepted": accepted, "denied": denied,
            "rejected": rejected, "errors": errors, "kept": kept, "skipped": skipped}


def check_accepted_run(proc, plugin_path: Path, name: str, count: int, audit: Path,
                       started_ms: int, *, relay: bool) -> list[dict]:
    """A run that succeeded and had `count` messages accepted: the report's
    counts and the audit log agree. Every delivery is written ahead: an
    `attempt` record before each outcome, tied by the spool id (relay) or
    the outbox file's name. Returns the outcome records."""
    assert_exit(proc, EXIT_OK)
    report = run_report(proc)
    assert report["plugin"] == name
    assert report["sha256"] == sha256_of(plugin_path)
    assert report["plugin_error"] is None and report["stopped"] is None, describe(proc)
    assert isinstance(report["output"], str) and report["output"], describe(proc)
    assert report["accepted"] == count, describe(proc)
    assert report["counts"] == counts(attempts=count, accepted=count), describe(proc)
    reported = Path(report["audit"])
    assert reported.name == audit.name, report["audit"]
    if reported.is_absolute():
        assert reported.resolve() == audit.resolve(), report["audit"]
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    records = outcomes(all_records)
    attempts = [r for r in all_records if r["outcome"] == "attempt"]
    # The log holds exactly this run's sends.
    assert len(records) == count, all_records
    assert len(attempts) == count, all_records
    assert all((r.get("outbox") is None) == relay for r in attempts), all_records
    ended_ms = int(time.time() * 1000)
    for r in all_records:
        assert r["plugin"] == name and r["sha256"] == report["sha256"], r
        assert started_ms - 1000 <= r["time_ms"] <= ended_ms + 1000, r
    for r in records:
        assert r["outcome"] == "accepted", r
        assert r["rejected"] == [], r
        assert r.get("omitted") is None, r
        if relay:
            assert r.get("id") and r.get("outbox") is None, r
        else:
            assert r.get("outbox") and Path(r["outbox"]).stem == r.get("id"), r
    return records


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_wire_format(raw: bytes) -> None:
    oracle.assert_crlf_only(raw)
    oracle.assert_line_lengths(raw)
    oracle.assert_ascii_headers(raw)


# ---------------------------------------------------------------------------
# What each mail plugin is asked to do and must produce
# ---------------------------------------------------------------------------

REPORT_TITLE = "Sales Q1 — Grüße"
REPORT_ROWS = [
    {"name": "north", "value": 12.5},
    {"name": 'a, "b" <c>', "value": -3},
    {"name": "süd", "value": 0.25},
]
# The rows as the plugin prints their values (Rust's f64 Display: -3, not -3.0).
REPORT_CELLS = [("north", "12.5"), ('a, "b" <c>', "-3"), ("süd", "0.25")]
REPORT_TO = ["boss@example.com", "team@example.com"]
# RFC 4180, as the plugin writes it (Rust's f64 Display: -3, not -3.0).
REPORT_CSV = (b'name,value\r\nnorth,12.5\r\n"a, ""b"" <c>",-3\r\n'
              + "süd,0.25\r\n".encode())

BULK_COUNT = 20
BULK_TO = "sink@example.com"
BULK_SIZE = 2048


def bulk_body(size: int) -> str:
    """The bulk plugin's text body, rebuilt independently."""
    out, n = "", 0
    while len(out) < size:
        n += 1
        line = f"{n:06} the quick brown fox jumps over the lazy dog, wasmail bulk test\n"
        room = size - len(out)
        if len(line) <= room:
            out += line
        elif room == 1:
            out += "\n"
        else:
            out += line[:room - 1] + "\n"
    return out


def check_hello(msgs) -> None:
    [msg] = msgs
    assert oracle.addresses(msg, "To") == [RECIPIENT]
    assert msg["Subject"] == "Hello from a wasmail plugin"
    assert msg["X-Mailer"] == "wasmail hello plugin"
    text = oracle.body(msg, "plain")
    assert text is not None, oracle.content_types(msg)
    assert text.startswith("Hello!") and "-- the wasmail hello plugin" in text, text


def check_report(msgs) -> None:
    [msg] = msgs
    assert oracle.addresses(msg, "To") == REPORT_TO
    assert msg["Subject"] == REPORT_TITLE
    assert msg["X-Mailer"] == "wasmail report plugin"
    alternative = oracle.find_multipart(msg, "alternative")
    assert alternative is not None, oracle.content_types(msg)
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]

    text = oracle.normalize_newlines(oracle.body(msg, "plain"))
    assert text.startswith(f"{REPORT_TITLE}\n{'=' * len(REPORT_TITLE)}\n"), text
    # Names padded to the widest (10 characters), values right-aligned to 5.
    for name, value in [*REPORT_CELLS, ("Total", "9.75")]:
        line = f"{name:<10}  {value:>5}\n"
        assert line in text + "\n", f"{line!r} not in\n{text}"

    html = oracle.body(msg, "html")
    assert f"<h1>{REPORT_TITLE}</h1>" in html, html
    assert "<td>a, &quot;b&quot; &lt;c&gt;</td>" in html, html
    assert "<td>süd</td>" in html and ">9.75</th>" in html, html

    [csv] = oracle.attachments(msg)
    assert (csv.filename, csv.content_type) == ("report.csv", "text/csv")
    assert csv.data == REPORT_CSV


def check_bulk(msgs) -> None:
    assert len(msgs) == BULK_COUNT
    assert [m["Subject"] for m in msgs] == [f"bulk {i}/{BULK_COUNT}" for i in range(1, BULK_COUNT + 1)]
    expected = oracle.normalize_newlines(bulk_body(BULK_SIZE))
    for msg in msgs:
        assert oracle.addresses(msg, "To") == [BULK_TO]
        assert msg["X-Mailer"] == "wasmail bulk plugin"
        assert oracle.normalize_newlines(oracle.body(msg, "plain")) == expected
    assert len({oracle.message_id(m) for m in msgs}) == BULK_COUNT, "Message-IDs repeat"


@dataclass(frozen=True)
class Case:
    input: str
    count: int                 # messages
    recipients: list[str]      # envelope recipients of each message
    check: Callable            # check(list of parsed messages, in sending order)


CASES = {
    "hello": Case(RECIPIENT, 1, [RECIPIENT], check_hello),
    "report": Case(json.dumps({"to": REPORT_TO, "title": REPORT_TITLE, "rows": REPORT_ROWS}),
                   1, REPORT_TO, check_report),
    "bulk": Case(json.dumps({"count": BULK_COUNT, "to": BULK_TO, "size": BULK_SIZE}),
                 BULK_COUNT, [BULK_TO], check_bulk),
}


# ---------------------------------------------------------------------------
# 1. hello, report and bulk through a relay
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_mail_plugins_through_relay(run, plugins, smtpd, tmp_path, name):
    case = CASES[name]
    server = smtpd()
    audit = tmp_path / "conf" / "audit.jsonl"
    dead = tmp_path / "conf" / "dead"
    config = write_config(tmp_path / "conf" / "wasmail.toml", audit="audit.jsonl",
                          dead_letter="dead", relay=relay_table(server),
                          plugins={name: policy(name)})

    started = now_ms()
    proc = run_plugin(run, plugins, name, config=config, input_text=case.input)

    records = check_accepted_run(proc, plugins[name], name, case.count, audit, started,
                                 relay=True)
    # Each message was written ahead to dead/pending/ and removed once delivered.
    assert [p for p in dead.rglob("*") if p.is_file()] == []
    assert len(server.messages) == case.count
    # All of a run's mail goes through one SMTP session.
    assert [c.verb for c in server.record.commands if c.verb in ("EHLO", "HELO")] == ["EHLO"]
    msgs = []
    for received, record in zip(server.messages, records):
        assert received.mail_from == from_address(name)
        assert received.rcpt_tos == case.recipients
        raw = received.content
        assert_wire_format(raw)
        msg = oracle.parse(raw)
        assert oracle.mailboxes(msg, "From") == [oracle.Mailbox(from_name(name), from_address(name))]
        assert msg["Date"].datetime.utcoffset() is not None
        assert msg["MIME-Version"] == "1.0"
        assert msg["Bcc"] is None
        # The audit record describes this very message.
        assert record["message_id"] == oracle.message_id(msg)
        assert record["from"] == from_address(name)
        assert record["recipients"] == case.recipients
        assert record["size"] == len(raw)
        assert str(record["reason"]).startswith("250"), record
        assert record.get("outbox") is None, record
        msgs.append(msg)
    case.check(msgs)


# ---------------------------------------------------------------------------
# 2. The same plugins without a relay: the outbox
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_mail_plugins_to_outbox(run, plugins, tmp_path, name):
    case = CASES[name]
    conf_dir = tmp_path / "conf"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    # Relative paths in the file are relative to the file, not to the cwd.
    config = write_config(conf_dir / "wasmail.toml", outbox="outbox", audit="log/audit.jsonl",
                          plugins={name: policy(name)})

    started = now_ms()
    proc = run_plugin(run, plugins, name, config=config, input_text=case.input, cwd=cwd)

    records = check_accepted_run(proc, plugins[name], name, case.count,
                                 conf_dir / "log" / "audit.jsonl", started, relay=False)
    assert list(cwd.iterdir()) == [], "nothing may land in the working directory"
    outbox = conf_dir / "outbox"
    files = sorted(outbox.iterdir())
    assert len(files) == case.count, files

    msgs = []
    for record in records:
        path = (cwd / record["outbox"]).resolve()
        assert path.parent == outbox.resolve(), record
        # The host names the file, never the message (a Message-ID can be
        # too long or hostile for a file name).
        assert SPOOL_NAME.fullmatch(path.name), path.name
        raw = path.read_bytes()
        assert_wire_format(raw)
        msg = oracle.parse(raw)
        assert oracle.message_id(msg) == record["message_id"]
        assert oracle.mailboxes(msg, "From") == [oracle.Mailbox(from_name(name), from_address(name))]
        assert msg["Date"].datetime.utcoffset() is not None
        assert msg["MIME-Version"] == "1.0"
        assert record["from"] == from_address(name)
        assert record["recipients"] == case.recipients
        assert record["size"] == len(raw)
        msgs.append(msg)
    assert sorted(p.resolve() for p in files) == sorted((cwd / r["outbox"]).resolve() for r in records)
    case.check(msgs)


def test_no_config_uses_permissive_outbox_default(run, plugins, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()

    started = now_ms()
    proc = run_plugin(run, plugins, "hello", cwd=cwd)

    [record] = check_accepted_run(proc, plugins["hello"], "hello", 1,
                                  cwd / "wasmail-audit.jsonl", started, relay=False)
    [path] = (cwd / "outbox").iterdir()
    assert (cwd / record["outbox"]).resolve() == path.resolve()
    msg = oracle.parse(path.read_bytes())
    assert oracle.addresses(msg, "From") == ["plugin@localhost"]
    # The hello plugin's default recipient.
    assert oracle.addresses(msg, "To") == ["demo@example.com"]
    assert record["from"] == "plugin@localhost"


def test_name_option_selects_policy_table(run, plugins, smtpd, tmp_path):
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"greeter": policy("greeter")})

    started = now_ms()
    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT,
                      args=["--name", "greeter"])

    [record] = check_accepted_run(proc, plugins["hello"], "greeter", 1, audit, started,
                                  relay=True)
    [received] = server.messages
    assert received.mail_from == from_address("greeter")
    assert record["from"] == from_address("greeter")


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_input_from_file_or_stdin(run, plugins, tmp_path, source):
    cwd = tmp_path / "work"
    cwd.mkdir()
    address = "from-input@example.com"
    if source == "file":
        (tmp_path / "input.txt").write_text(address + "\n")
        proc = run_plugin(run, plugins, "hello", args=["--input", tmp_path / "input.txt"], cwd=cwd)
    else:
        proc = run_plugin(run, plugins, "hello", args=["--input", "-"], input=address + "\n", cwd=cwd)

    assert_exit(proc, EXIT_OK)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=1, accepted=1), report
    [record] = outcomes(read_audit(cwd / "wasmail-audit.jsonl"))
    assert record["recipients"] == [address]


def test_input_errors(run, plugins, tmp_path):
    missing = tmp_path / "no-such-input.txt"
    proc = run_plugin(run, plugins, "hello", args=["--input", missing])
    assert_exit(proc, EXIT_NOINPUT)
    assert str(missing) in json_output(proc)["error"]["message"], describe(proc)

    proc = run_plugin(run, plugins, "hello", input_text=RECIPIENT, args=["--input", missing])
    assert_exit(proc, EXIT_USAGE)


# ---------------------------------------------------------------------------
# 3. Volume: one session for the whole run
# ---------------------------------------------------------------------------

def test_bulk_volume_in_one_session(run, plugins, smtp_sink, tmp_path):
    sink = smtp_sink()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit,
                          relay={"server": sink.address, "tls": "none"},
                          plugins={"bulk": policy("bulk", max_messages=BULK_VOLUME)})

    started = now_ms()
    proc = run_plugin(run, plugins, "bulk", config=config,
                      input_text=json.dumps({"count": BULK_VOLUME, "to": BULK_TO, "size": 1024}),
                      timeout=BULK_TIMEOUT_S)

    records = check_accepted_run(proc, plugins["bulk"], "bulk", BULK_VOLUME, audit, started,
                                 relay=True)
    counters = sink.wait_for(BULK_VOLUME)
    assert counters.messages == BULK_VOLUME, counters
    assert counters.sessions == 1, counters
    assert len({r["message_id"] for r in records}) == BULK_VOLUME


def test_max_messages_stops_bulk_with_a_denied_record(run, plugins, smtpd, tmp_path):
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    limit = 5
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"bulk": policy("bulk", max_messages=limit)})

    proc = run_plugin(run, plugins, "bulk", config=config,
                      input_text=json.dumps({"count": limit + 3, "to": BULK_TO, "one_by_one": True}))

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["accepted"] == limit
    assert report["counts"] == counts(attempts=limit + 1, accepted=limit, denied=1), report
    assert "policy-denied" in report["plugin_error"] and "max_messages" in report["plugin_error"], report
    assert len(server.messages) == limit
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    assert [r["outcome"] for r in all_records] == ["attempt", "accepted"] * limit + ["denied"]
    records = outcomes(all_records)
    assert records[-1]["reason"].startswith("policy-denied: max_messages: "), records[-1]
    # A denial is not an attempt on the relay: no id, no recipients listed.
    assert records[-1].get("id") is None and records[-1]["recipients"] == [], records[-1]


def test_max_messages_applies_to_each_message_of_a_send_many(run, plugins, smtpd, tmp_path):
    # The same limit through `send-many`: the batch is held to the policy
    # message by message, so the first `limit` go and the rest are denied,
    # each with its own record, none of them an attempt on the relay.
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    limit = 5
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"bulk": policy("bulk", max_messages=limit)})

    proc = run_plugin(run, plugins, "bulk", config=config,
                      input_text=json.dumps({"count": limit + 3, "to": BULK_TO}))

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=limit + 3, accepted=limit, denied=3), report
    assert "policy-denied" in report["plugin_error"] and "max_messages" in report["plugin_error"], report
    assert len(server.messages) == limit
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    # Denials are recorded as the policy meets them; the approved messages
    # are written ahead (attempt records) as one batch, then settled.
    assert [r["outcome"] for r in all_records] == ["denied"] * 3 + ["attempt"] * limit + ["accepted"] * limit
    for r in all_records[:3]:
        assert r["reason"].startswith("policy-denied: max_messages: "), r
        assert r.get("id") is None and r["recipients"] == [], r


# ---------------------------------------------------------------------------
# 4. Hostile plugins, refusals and config errors
# ---------------------------------------------------------------------------

def test_hostile_loop_is_stopped_by_cpu_limit(run, plugins, tmp_path):
    config = write_config(tmp_path / "wasmail.toml", outbox="outbox", audit="audit.jsonl",
                          plugins={"hostile": policy("hostile", cpu_ms=LOOP_CPU_MS,
                                                     wall_ms=LOOP_BOUND_S * 4 * 1000)})

    started = time.monotonic()
    proc = run_plugin(run, plugins, "hostile", config=config, input_text="loop",
                      json_report=False, timeout=LOOP_BOUND_S * 2)
    elapsed = time.monotonic() - started

    assert elapsed < LOOP_BOUND_S, f"took {elapsed:.1f}s\n{describe(proc)}"
    assert_exit(proc, EXIT_STOPPED)
    assert "cpu_ms" in proc.stderr, describe(proc)
    assert proc.stdout == "", describe(proc)

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="loop",
                      timeout=LOOP_BOUND_S * 2)
    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"].startswith("cpu_ms"), report
    assert (report["output"], report["plugin_error"], report["accepted"]) == (None, None, 0)
    assert report["counts"] == counts(), report


def test_hostile_spoofed_from_is_denied(run, plugins, smtpd, tmp_path):
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="spoof-from")

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["stopped"] is None and report["output"] is None
    assert "policy-denied" in report["plugin_error"], report
    assert report["accepted"] == 0
    assert report["counts"] == counts(attempts=1, denied=1), report
    [record] = read_audit(audit)
    assert record["outcome"] == "denied"
    assert record["from"] == "ceo@bank.example"
    assert record["reason"].startswith("policy-denied: allowed_from: "), record
    assert record["message_id"] is None and record["size"] is None
    # Denied records no longer list recipients; nothing was written ahead.
    assert record["recipients"] == [] and record.get("id") is None, record
    assert server.messages == []
    assert not {"MAIL", "RCPT", "DATA"} & set(server.record.verbs())


def test_netgrab_socket_is_denied_at_run_time(run, plugins, tmp_path):
    """netgrab imports wasi:sockets (libc links it into every toolchain's
    plugins): it runs, its connect fails cleanly, and the listener it was
    pointed at never sees a connection."""
    import socket
    cwd = tmp_path / "work"
    cwd.mkdir()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        target = "127.0.0.1:%d" % listener.getsockname()[1]

        proc = run_plugin(run, plugins, "netgrab", input_text=target, cwd=cwd)
        assert_exit(proc, EXIT_PLUGIN_ERROR)
        report = json_output(proc)
        assert report["stopped"] is None, report
        assert f"connecting to {target} failed" in report["plugin_error"], report
        with pytest.raises(BlockingIOError):
            listener.accept()
    # It never tried to send.
    audit = cwd / "wasmail-audit.jsonl"
    assert not audit.exists() or read_audit(audit) == []


def test_relay_without_policy_table_is_refused(run, plugins, smtpd, tmp_path):
    server = smtpd()
    replies_at_start = len(server.record.replies)
    audit = tmp_path / "audit.jsonl"
    # A table for another plugin only.
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"report": policy("report")})

    proc = run_plugin(run, plugins, "hello", config=config, json_report=False)
    assert_exit(proc, EXIT_REFUSED)
    assert "[plugins.hello]" in proc.stderr, describe(proc)

    proc = run_plugin(run, plugins, "hello", config=config)
    assert_exit(proc, EXIT_REFUSED)
    error = json_output(proc)["error"]
    assert error["kind"] == "refused" and "[plugins.hello]" in error["message"], error
    # Refused before it talked to the relay: no greeting beyond the one
    # aiosmtpd's own start-up probe got, and no command at all.
    assert len(server.record.replies) == replies_at_start, server.record.replies
    assert server.record.commands == []
    assert not audit.exists() or read_audit(audit) == []


@pytest.mark.parametrize("text, names", [
    ("[plugins.hello]\nallowed_recipient = [\"*\"]\n", "allowed_recipient"),
    ("[relay]\nserver = \"127.0.0.1:25\"\ntls = \"sometimes\"\n", "sometimes"),
], ids=["unknown-key", "bad-tls"])
def test_config_errors_exit_78(run, plugins, tmp_path, text, names):
    config = tmp_path / "wasmail.toml"
    config.write_text(text)

    proc = run_plugin(run, plugins, "hello", config=config)

    assert_exit(proc, EXIT_CONFIG)
    error = json_output(proc)["error"]
    assert error["kind"] == "config", error
    assert names in error["message"], error


# ---------------------------------------------------------------------------
# 5. wasmail inspect
# ---------------------------------------------------------------------------

def inspect_lines(proc) -> tuple[list[str], list[str], list[str]]:
    """(import lines, export lines, verdict lines) of `wasmail inspect`."""
    section, imports, exports, verdicts = None, [], [], []
    for line in proc.stdout.splitlines():
        if line.startswith("imports:"):
            section = imports
        elif line.startswith("exports:"):
            section = exports
        elif line.startswith("verdict:"):
            section = None
            verdicts.append(line)
        elif section is not None and line.strip():
            section.append(line.strip())
    return imports, exports, verdicts


def test_inspect_hello_can_run(run, plugins):
    proc = run(["inspect", plugins["hello"]])

    assert_exit(proc, EXIT_OK)
    assert sha256_of(plugins["hello"]) in proc.stdout, describe(proc)
    imports, exports, [verdict] = inspect_lines(proc)
    assert imports and all(line.startswith("ok ") for line in imports), describe(proc)
    assert any("wasmail:mail/sender@" in line for line in imports), describe(proc)
    assert not any("wasi:sockets" in line for line in imports), describe(proc)
    assert exports == ["run"], describe(proc)
    assert verdict.startswith("verdict: can run"), describe(proc)


def test_inspect_netgrab_shows_sockets_denied_at_run_time(run, plugins):
    proc = run(["inspect", plugins["netgrab"]])

    assert_exit(proc, EXIT_OK)
    imports, exports, [verdict] = inspect_lines(proc)
    denied = [line for line in imports if line.startswith("denied at run time ")]
    assert denied, describe(proc)
    # Exactly the socket interfaces are denied at run time, none refused.
    names = [line[len("denied at run time"):].split()[0] for line in denied]
    assert all(n.startswith("wasi:sockets/") for n in names), denied
    assert any(n.startswith("wasi:sockets/tcp") for n in names), denied
    assert all(line.startswith(("ok ", "denied at run time ")) for line in imports), describe(proc)
    assert not any("wasi:sockets" in line for line in imports if line.startswith("ok "))
    assert verdict.startswith("verdict: can run"), describe(proc)


def test_inspect_missing_file(run, tmp_path):
    missing = tmp_path / "nope.wasm"
    proc = run(["inspect", missing])
    assert_exit(proc, EXIT_NOINPUT)
    assert str(missing) in proc.stderr, describe(proc)


# ---------------------------------------------------------------------------
# 6. -v: the SMTP transcript, and prefixed plugin output
# ---------------------------------------------------------------------------

def test_verbose_relay_run_shows_transcript(run, plugins, smtpd, tmp_path):
    server = smtpd()
    config = write_config(tmp_path / "wasmail.toml", audit="audit.jsonl",
                          relay=relay_table(server), plugins={"hello": policy("hello")})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT,
                      json_report=False, args=["-v"])

    assert_exit(proc, EXIT_OK)
    lines = transcript(proc.stderr)
    ehlo = index_of(lines, "C", "EHLO")
    mail = index_of(lines, "C", f"MAIL FROM:<{from_address('hello')}>", ehlo)
    rcpt = index_of(lines, "C", f"RCPT TO:<{RECIPIENT}>", mail)
    index_of(lines, "C", "DATA", rcpt)
    index_of(lines, "S", "250", rcpt)
    # The transcript is on stderr only; stdout has the plugin's result,
    # every line of it prefixed with the plugin's name.
    assert "MAIL FROM" not in proc.stdout, describe(proc)
    assert proc.stdout.startswith("[hello] sent "), describe(proc)
    assert all(l.startswith("[hello] ") for l in proc.stdout.splitlines()), describe(proc)
    assert len(server.messages) == 1


@pytest.mark.parametrize("name", [None, "evil"], ids=["default-name", "name-option"])
def test_plugin_output_is_prefixed(run, plugins, smtpd, tmp_path, name):
    server = smtpd()
    table = name or "hostile"
    config = write_config(tmp_path / "wasmail.toml", audit="audit.jsonl",
                          relay=relay_table(server), plugins={table: policy(table)})
    args = ["-v"] + (["--name", name] if name else [])

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="panic",
                      json_report=False, args=args)

    assert_exit(proc, EXIT_STOPPED)
    # Every line the plugin wrote (Rust's panic message) carries its prefix.
    marks = ("panicked at", "hostile plugin panicked on purpose", "RUST_BACKTRACE")
    plugin_lines = [line for line in proc.stderr.splitlines() if any(m in line for m in marks)]
    assert len(plugin_lines) == 3, describe(proc)
    assert all(line.startswith(f"[{table}:stderr] ") for line in plugin_lines), describe(proc)
    assert not any(m in proc.stdout for m in marks), describe(proc)
    # The host's own verdict is not prefixed.
    assert f"wasmail: plugin {table} stopped:" in proc.stderr, describe(proc)


# ---------------------------------------------------------------------------
# 7. AUTH from the config, and the secret stays secret
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["auto", "plain", "login"])
def test_relay_auth_from_password_env(run, plugins, smtpd, tmp_path, auth):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False)
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit,
                          relay=relay_table(server, user=USER, password_env=PASSWORD_ENV,
                                            auth=auth),
                          plugins={"hello": policy("hello")})

    started = now_ms()
    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT, args=["-v"])

    check_accepted_run(proc, plugins["hello"], "hello", 1, audit, started, relay=True)
    [received] = server.messages
    assert received.auth is not None and received.auth.login == USER, received.auth
    if auth != "auto":
        assert received.auth.mechanism == auth.upper()
    assert [a.success for a in server.record.auth_attempts] == [True]
    index_of(transcript(proc.stderr), "C", "AUTH")
    everything = proc.stdout + proc.stderr + audit.read_text()
    for secret in secret_forms(USER, PASSWORD):
        assert secret not in everything, f"secret form {secret!r} leaked\n{describe(proc)}"


def test_relay_auth_wrong_password_fails_without_leaking(run, plugins, smtpd, tmp_path):
    server = smtpd(auth={USER: PASSWORD}, auth_require_tls=False)
    wrong = "not-the-password-4711"
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit,
                          relay=relay_table(server, user=USER, password_env=PASSWORD_ENV),
                          plugins={"hello": policy("hello")})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT, args=["-v"],
                      password=wrong)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert "auth" in report["plugin_error"], report
    assert report["counts"] == counts(attempts=1, errors=1), report
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    [record] = outcomes(all_records)
    assert record["outcome"] == "error" and record["reason"].startswith("auth"), record
    # A permanent failure is not kept for retry.
    assert record.get("dead_letter") is None, record
    assert server.messages == []
    everything = proc.stdout + proc.stderr + audit.read_text()
    for secret in secret_forms(USER, wrong):
        assert secret not in everything, f"secret form {secret!r} leaked\n{describe(proc)}"


def test_cpu_ms_counts_the_plugin_s_time_not_the_relay_s(run, plugins, smtpd, tmp_path):
    """A relay that takes 15 ms a message, and a plugin that sends 60 one by
    one under `cpu_ms = 200`: the time its sends wait on the relay (900 ms)
    is not the plugin's CPU. Each send once cost it an epoch tick (10 ms)."""
    import asyncio
    server = smtpd()
    handler = server.handler
    original = handler.handle_DATA

    async def slow(*args):
        await asyncio.sleep(0.015)
        return await original(*args)
    handler.handle_DATA = slow
    config = write_config(tmp_path / "wasmail.toml", audit=tmp_path / "audit.jsonl", relay=relay_table(server),
                          plugins={"bulk": policy("bulk", max_messages=200, cpu_ms=200)})
    proc = run_plugin(run, plugins, "bulk", config=config,
                      input_text=json.dumps({"count": 60, "to": BULK_TO, "one_by_one": True}))
    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"]["accepted"] == 60
