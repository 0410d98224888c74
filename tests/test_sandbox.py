"""The sandbox keeps its promises under attack: the policy rules a hostile
plugin would try next (display names that read as addresses, Reply-To,
source-routed addresses), the limits on what a plugin may make the host do
(its component's size, its attempts, the size of its audit records, the
output it prints) and what becomes of a message when a limit stops the run
in the middle of its delivery.

Runs go through `wasmail run --json` (the report and the audit log) or the
human output (prefixed plugin lines, one summary line). Modes of the hostile
plugin that this build may not have are looked up first: a test that needs a
missing one is skipped with the mode list in its reason, never passed.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

import oracle
from cli import CLI_TIMEOUT_S, EXIT_DATAERR, RECIPIENT, SENDER, assert_exit, describe, json_error, relay
from scripted import Expect, Hold, ReadData, Send
from test_plugins import (EXIT_CONFIG, EXIT_OK, EXIT_PLUGIN_ERROR, EXIT_REFUSED, EXIT_STOPPED,
                          MAX_RECORD_BYTES, SPOOL_NAME, check_write_ahead, counts,
                          from_address, json_output, outcomes, policy, read_audit, relay_table,
                          run_plugin, run_report, write_config)

# A display name that passes for an address, with each of the characters
# that read as `@`: the ASCII one, FULLWIDTH and SMALL COMMERCIAL AT.
AT_SIGNS = {"ascii": "@", "fullwidth": "\uff20", "small": "\ufe6b"}
# Addresses whose local part is a source route (RFC 5321 Appendix C): the
# percent hack and a UUCP bang path. `*@example.com` would pass them, and a
# relay may forward them to elsewhere.example.
SOURCE_ROUTES = {
    "percent": "victim%elsewhere.example@example.com",
    "bang": "elsewhere.example!victim@example.com",
}
# The largest `max_message_bytes` a plugin may be given (written ahead whole).
MAX_SPOOLED_MESSAGE_BYTES = 64 << 20
# The `deny-loop` run: its message budget, the attempt budget that follows
# (3 per message) and the most memory the host may take meanwhile.
DENY_LOOP_MESSAGES = 1000
DENY_LOOP_ATTEMPTS = 3 * DENY_LOOP_MESSAGES
DENY_LOOP_RSS_LIMIT_KIB = 512 * 1024
DENY_LOOP_TIMEOUT_S = 120
# The summary line of a human-readable `wasmail run`.
SUMMARY = re.compile(
    r"wasmail: (\d+) message\(s\) accepted, (\d+) denied, (\d+) rejected, (\d+) failed "
    r"\((\d+) kept for retry\) in (\d+) attempt\(s\) \(see (.+)\)")
# Characters that could drive a terminal or reorder what an operator reads.
UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
OUTPUT_LIMIT_NOTE = "<output limit of {} bytes (max_output_bytes) reached; the rest is dropped>"

GREETING = b"220 fake.example ESMTP\r\n"
EHLO_PLAIN = b"250-fake.example\r\n250 ENHANCEDSTATUSCODES\r\n"


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile_modes(wasmail, plugins, tmp_path_factory) -> set[str]:
    """The modes this build's hostile plugin knows: it lists them when asked
    for one it does not know."""
    cwd = tmp_path_factory.mktemp("hostile-modes")
    proc = subprocess.run([str(wasmail), "run", str(plugins["hostile"]), "--input-text",
                           "no-such-mode", "--json"], cwd=cwd, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)
    error = json_output(proc).get("plugin_error") or ""
    found = re.search(r"modes: (.*)$", error)
    assert found, f"the hostile plugin did not list its modes\n{describe(proc)}"
    return {m.strip() for m in found.group(1).split(",") if m.strip()}


def need_mode(modes: set[str], mode: str) -> None:
    if mode not in modes:
        pytest.skip(f"the hostile plugin has no {mode!r} mode in this build "
                    f"(it has: {', '.join(sorted(modes))})")


def summary(stderr: str) -> tuple:
    """The one summary line: (accepted, denied, rejected, failed, kept,
    attempts, audit path)."""
    found = [m for line in stderr.splitlines() if (m := SUMMARY.fullmatch(line))]
    assert len(found) == 1, f"not one summary line in:\n{stderr}"
    g = found[0].groups()
    return (*map(int, g[:6]), g[6])


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------
# 1. Display names that pass for addresses
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("at", AT_SIGNS.values(), ids=AT_SIGNS.keys())
def test_display_name_holding_an_at_sign_is_denied_unless_allowed(run, plugins, tmp_path, at):
    # The policy's own default From carries the name: the rule applies to
    # whatever goes on the wire, not only to what a plugin sets.
    name = f"ceo{at}bank.example"
    default_from = f'"{name}" <{from_address("hello")}>'
    audit = tmp_path / "audit.jsonl"
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path / "wasmail.toml", outbox=outbox, audit=audit,
                          plugins={"hello": policy("hello", default_from=default_from)})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=1, denied=1), report
    assert "allow_address_in_display_name" in report["plugin_error"], report
    [record] = read_audit(audit)
    assert record["outcome"] == "denied", record
    assert record["reason"].startswith("policy-denied: allow_address_in_display_name: "), record
    assert "from" in record["reason"], record
    assert files_in(outbox) == []

    allowed = write_config(tmp_path / "allowed.toml", outbox=outbox, audit=audit,
                           plugins={"hello": policy("hello", default_from=default_from,
                                                    allow_address_in_display_name=True)})
    proc = run_plugin(run, plugins, "hello", config=allowed, input_text=RECIPIENT)

    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=1, accepted=1)
    [path] = files_in(outbox)
    msg = oracle.parse(path.read_bytes())
    assert oracle.mailboxes(msg, "From") == [oracle.Mailbox(name, from_address("hello"))]


def test_display_at_mode_is_denied_unless_allowed(run, plugins, smtpd, tmp_path, hostile_modes):
    need_mode(hostile_modes, "display-at")
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="display-at")

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert run_report(proc)["counts"] == counts(attempts=1, denied=1)
    [record] = read_audit(audit)
    assert record["reason"].startswith("policy-denied: allow_address_in_display_name: "), record
    assert server.messages == []
    assert not {"MAIL", "RCPT", "DATA"} & set(server.record.verbs())

    allowed = write_config(tmp_path / "allowed.toml", audit=audit, relay=relay_table(server),
                           plugins={"hostile": policy("hostile",
                                                      allow_address_in_display_name=True)})
    proc = run_plugin(run, plugins, "hostile", config=allowed, input_text="display-at")
    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=1, accepted=1)
    assert len(server.messages) == 1


# ---------------------------------------------------------------------------
# 2. Reply-To
# ---------------------------------------------------------------------------

def test_reply_to_outside_the_policy_is_denied(run, plugins, smtpd, tmp_path, hostile_modes):
    need_mode(hostile_modes, "reply-to-outside")
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="reply-to-outside")

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=1, denied=1), report
    assert "allowed_reply_to" in report["plugin_error"], report
    [record] = read_audit(audit)
    assert record["outcome"] == "denied", record
    found = re.fullmatch(r"policy-denied: allowed_reply_to: (\S+) is not an allowed Reply-To address",
                         record["reason"])
    assert found, record
    reply_to = found.group(1)
    assert server.messages == []
    assert not {"MAIL", "RCPT", "DATA"} & set(server.record.verbs())

    # Allowed by `allowed_reply_to`, or (without it) by the allowed_from patterns.
    for table in (policy("hostile", allowed_reply_to=[reply_to]),
                  policy("hostile", allowed_from=["*@example.com", reply_to])):
        before = len(server.messages)
        allowed = write_config(tmp_path / "allowed.toml", audit=audit, relay=relay_table(server),
                               plugins={"hostile": table})
        proc = run_plugin(run, plugins, "hostile", config=allowed, input_text="reply-to-outside")
        assert_exit(proc, EXIT_OK)
        assert len(server.messages) == before + 1, table
        msg = oracle.parse(server.messages[-1].content)
        assert oracle.addresses(msg, "Reply-To") == [reply_to]
    check_write_ahead(read_audit(audit))


# ---------------------------------------------------------------------------
# 3. Source routes in the local part
# ---------------------------------------------------------------------------

SEND_FIELDS = [("--to", "to[0]"), ("--cc", "cc[0]"), ("--bcc", "bcc[0]"),
               ("--reply-to", "reply-to"), ("--from", "from")]


@pytest.mark.parametrize("address", SOURCE_ROUTES.values(), ids=SOURCE_ROUTES.keys())
@pytest.mark.parametrize("flag, field", SEND_FIELDS, ids=[f for f, _ in SEND_FIELDS])
def test_send_refuses_source_routes(run, smtpd, flag, field, address):
    server = smtpd()
    args = ["--from", SENDER] if flag != "--from" else []
    args += ["--to", RECIPIENT] if flag != "--to" else []

    proc = run(["send", *args, flag, address, "--subject", "route", "--text", "hi",
                *relay(server.address, "none", timeout=5), "--json"])

    assert_exit(proc, EXIT_DATAERR)
    error = json_error(proc)
    assert error["kind"] == "invalid-message", describe(proc)
    assert field in error["message"], describe(proc)
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()


@pytest.mark.parametrize("address", SOURCE_ROUTES.values(), ids=SOURCE_ROUTES.keys())
def test_plugin_cannot_send_to_a_source_route(run, plugins, smtpd, tmp_path, address):
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hello": policy("hello")})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=address)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["counts"] == counts(attempts=1, errors=1), report
    assert "invalid" in report["plugin_error"], report
    [record] = read_audit(audit)
    assert record["outcome"] == "error", record
    assert record["reason"].startswith("invalid-message: to[0]"), record
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()


def test_hostile_percent_route_is_refused(run, plugins, smtpd, tmp_path, hostile_modes):
    need_mode(hostile_modes, "percent-route")
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="percent-route")

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert run_report(proc)["counts"] == counts(attempts=1, errors=1)
    [record] = read_audit(audit)
    assert record["reason"].startswith("invalid-message: to[0]"), record
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()


# ---------------------------------------------------------------------------
# 4. Limits in the config
# ---------------------------------------------------------------------------

def test_max_component_bytes_refuses_a_bigger_plugin(run, plugins, tmp_path):
    component = tmp_path / "plugins" / "wasmail_plugin_hello.wasm"
    component.parent.mkdir()
    shutil.copyfile(plugins["hello"], component)
    size = component.stat().st_size
    audit = tmp_path / "audit.jsonl"

    config = write_config(tmp_path / "small.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hello": policy("hello", max_component_bytes=size - 1)})
    proc = run(["run", component, "--config", config, "--input-text", RECIPIENT, "--json"])
    assert_exit(proc, EXIT_REFUSED)
    error = json_output(proc)["error"]
    assert error["kind"] == "refused", error
    assert "max_component_bytes" in error["message"], error
    proc = run(["run", component, "--config", config, "--input-text", RECIPIENT])
    assert_exit(proc, EXIT_REFUSED)
    assert "max_component_bytes" in proc.stderr, describe(proc)
    assert not audit.exists() or read_audit(audit) == []

    # A component of exactly the limit runs.
    config = write_config(tmp_path / "exact.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hello": policy("hello", max_component_bytes=size)})
    proc = run(["run", component, "--config", config, "--input-text", RECIPIENT, "--json"])
    assert_exit(proc, EXIT_OK)


def test_max_message_bytes_over_64_mib_is_a_config_error(run, plugins, tmp_path):
    config = write_config(tmp_path / "big.toml", outbox=tmp_path / "outbox",
                          audit=tmp_path / "audit.jsonl",
                          plugins={"hello": policy("hello",
                                                   max_message_bytes=MAX_SPOOLED_MESSAGE_BYTES + 1)})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT)
    assert_exit(proc, EXIT_CONFIG)
    error = json_output(proc)["error"]
    assert error["kind"] == "config", error
    assert "plugins.hello.max_message_bytes" in error["message"], error
    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT,
                      json_report=False)
    assert_exit(proc, EXIT_CONFIG)
    assert "plugins.hello.max_message_bytes" in proc.stderr, describe(proc)
    assert files_in(tmp_path / "outbox") == []

    config = write_config(tmp_path / "limit.toml", outbox=tmp_path / "outbox",
                          audit=tmp_path / "audit.jsonl",
                          plugins={"hello": policy("hello",
                                                   max_message_bytes=MAX_SPOOLED_MESSAGE_BYTES)})
    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT)
    assert_exit(proc, EXIT_OK)


def test_max_attachments_is_checked_before_any_file_is_opened(run, plugins, tmp_path,
                                                               hostile_modes):
    # 30,000 attachments of one granted file: refused by the default limit
    # (100) before the host opens any of them.
    need_mode(hostile_modes, "many-files")
    grant = tmp_path / "grant"
    grant.mkdir()
    (grant / "report.csv").write_text("a,b\n1,2\n")
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hostile": policy("hostile", folder=grant)})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="many-files")

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert run_report(proc)["counts"] == counts(attempts=1, denied=1)
    [record] = read_audit(audit)
    assert record["reason"] == ("policy-denied: max_attachments: 30000 attachments, "
                                "the limit is 100"), record
    assert files_in(tmp_path / "outbox") == []


def test_max_attempts_stops_the_run(run, plugins, smtpd, tmp_path):
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"bulk": policy("bulk", max_messages=100, max_attempts=3)})
    stopped = "max_attempts: the plugin called send more than 3 times in this run"

    proc = run_plugin(run, plugins, "bulk", config=config,
                      input_text=json.dumps({"count": 10, "to": "sink@example.com"}))

    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"] == stopped, report
    assert report["counts"] == counts(attempts=4, accepted=3, denied=1), report
    assert len(server.messages) == 3
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    records = outcomes(all_records)
    assert [r["outcome"] for r in records] == ["accepted"] * 3 + ["denied"], records
    assert records[-1]["reason"].startswith("stopped: max_attempts"), records[-1]

    proc = run_plugin(run, plugins, "bulk", config=config, json_report=False,
                      input_text=json.dumps({"count": 10, "to": "sink@example.com"}))
    assert_exit(proc, EXIT_STOPPED)
    assert f"wasmail: plugin bulk stopped: {stopped}" in proc.stderr.splitlines(), describe(proc)
    assert summary(proc.stderr) == (3, 1, 0, 0, 0, 4, str(audit))
    assert proc.stdout == "", describe(proc)


@pytest.mark.parametrize("mode, rule", [("deny-loop", "allowed_recipients"),
                                        ("huge-header-loop", "allowed_headers"),
                                        ("deny-many-loop", "allowed_recipients")])
def test_deny_loop_is_stopped_at_max_attempts_in_bounded_memory(wasmail, plugins, tmp_path,
                                                                 hostile_modes, mode, rule):
    """A plugin that keeps calling send with a message the policy denies
    (a recipient outside it; a 1 MiB header name): the run stops past
    max_attempts (3 per allowed message), the log holds at most one bounded
    record per attempt, and the host's memory stays bounded."""
    need_mode(hostile_modes, mode)
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hostile": policy("hostile", max_messages=DENY_LOOP_MESSAGES)})
    cmd = [str(wasmail), "run", str(plugins["hostile"]), "--config", str(config),
           "--input-text", mode, "--json"]
    time_v = Path("/usr/bin/time")
    measured = time_v.is_file()
    if measured:
        cmd = [str(time_v), "-v", *cmd]

    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path,
                          timeout=DENY_LOOP_TIMEOUT_S, stdin=subprocess.DEVNULL)

    if measured:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        assert found, describe(proc)
        peak_kib = int(found.group(1))
    else:
        # The largest of all children so far: an upper bound for this one.
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert_exit(proc, EXIT_STOPPED)
    report = json_output(proc)
    assert report["stopped"].startswith("max_attempts"), report
    assert str(DENY_LOOP_ATTEMPTS) in report["stopped"], report
    assert report["counts"]["attempts"] == DENY_LOOP_ATTEMPTS + 1, report
    assert report["counts"]["accepted"] == 0, report
    raw = audit.read_bytes()
    lines = raw.split(b"\n")[:-1]
    assert len(lines) <= DENY_LOOP_ATTEMPTS + 1, len(lines)
    assert max(len(l) + 1 for l in lines) <= MAX_RECORD_BYTES
    assert len(raw) < (DENY_LOOP_ATTEMPTS + 1) * MAX_RECORD_BYTES, len(raw)
    records = read_audit(audit)
    assert all(r["outcome"] == "denied" for r in records), {r["outcome"] for r in records}
    assert records[-1]["reason"].startswith("stopped: max_attempts"), records[-1]
    for r in records[:-1]:
        assert r["reason"].startswith(f"policy-denied: {rule}: "), r
        # Plugin text in a denial is clipped: the reason stays short.
        assert len(r["reason"]) < 400, r["reason"][:500]
    assert peak_kib < DENY_LOOP_RSS_LIMIT_KIB, f"peak RSS {peak_kib} KiB"
    assert files_in(tmp_path / "outbox") == []


def test_audit_record_of_many_recipients_is_cut_and_counted(run, plugins, tmp_path):
    audit = tmp_path / "audit.jsonl"
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path / "wasmail.toml", outbox=outbox, audit=audit,
                          plugins={"hostile": policy("hostile", max_recipients=1000)})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="many-recipients")

    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=1, accepted=1)
    attempt, record = read_audit(audit)   # at most MAX_RECORD_BYTES, checked there
    assert (attempt["outcome"], record["outcome"]) == ("attempt", "accepted"), (attempt, record)
    assert attempt["recipients"] == record["recipients"] and attempt["omitted"] == record["omitted"]
    listed = record["recipients"]
    assert 0 < len(listed) < 1000, len(listed)
    assert listed == [f"user{i}@example.com" for i in range(len(listed))]
    assert record["omitted"] >= 1000 - len(listed), record["omitted"]
    # The message itself has every recipient.
    [path] = files_in(outbox)
    assert SPOOL_NAME.fullmatch(path.name), path.name
    assert len(oracle.addresses(oracle.parse(path.read_bytes()), "To")) == 1000


# ---------------------------------------------------------------------------
# 5. A limit that stops the run during a delivery
# ---------------------------------------------------------------------------

WALL_MS = 3000


def test_wall_ms_during_delivery_keeps_the_message_as_outcome_unknown(run, plugins, scripted,
                                                                       tmp_path):
    # The relay takes the whole message and never answers the final dot.
    server = scripted([
        Send(GREETING), Expect("EHLO"), Send(EHLO_PLAIN),
        Expect("MAIL FROM"), Send(b"250 2.1.0 OK\r\n"),
        Expect("RCPT TO"), Send(b"250 2.1.5 OK\r\n"),
        Expect("DATA"), Send(b"354 go ahead\r\n"), ReadData(), Hold(30),
    ])
    audit = tmp_path / "audit.jsonl"
    folder = tmp_path / "dead"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, dead_letter=folder,
                          relay={"server": server.address, "tls": "none", "timeout_secs": 30},
                          plugins={"hello": policy("hello", wall_ms=WALL_MS)})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT)

    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"].startswith("wall_ms"), report
    assert report["counts"] == counts(attempts=1, errors=1, kept=1), report
    [data] = server.data
    assert data.endswith(b"\r\n.\r\n")
    all_records = read_audit(audit)
    check_write_ahead(all_records)
    assert [r["outcome"] for r in all_records] == ["attempt", "error"], all_records
    record = all_records[-1]
    assert record["reason"].startswith("outcome-unknown:"), record
    kept = Path(record["dead_letter"])
    assert kept.parent == folder and kept.is_file(), record
    assert SPOOL_NAME.fullmatch(kept.name), kept.name
    meta = json.loads(kept.with_suffix(".json").read_text())
    assert meta["message_id"] == record["message_id"], meta
    assert meta["outcome_unknown"] is True and meta["reason"]["kind"] == "outcome-unknown", meta
    assert kept.stem == record["id"], record
    assert [p for p in files_in(folder / "pending") if p.suffix == ".pending"] == []

    # retry leaves it alone without --force.
    proc = run(["retry", *relay("127.0.0.1:9", "none"), "--dead-letter", folder, "--json"])
    assert_exit(proc, 0)
    [line] = [json.loads(l) for l in proc.stdout.splitlines()]
    assert (line["message_id"], line["outcome"]) == (record["message_id"], "skipped"), line
    assert kept.is_file()


# The host hands a `send-many` list to the mailer in batches of at most this
# many messages (plugin/sender.rs MAX_BATCH_MESSAGES).
MAX_BATCH_MESSAGES = 64


def test_send_many_is_held_to_max_messages_and_max_attempts(run, plugins, tmp_path, hostile_modes):
    # One call with 5,000 allowed messages and a budget of 10: ten go, the
    # next twenty are denied, and the attempt that passes max_attempts (3
    # per message) stops the run inside the call.
    need_mode(hostile_modes, "many:N")
    audit = tmp_path / "audit.jsonl"
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path / "wasmail.toml", outbox=outbox, audit=audit,
                          plugins={"hostile": policy("hostile", max_messages=10)})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="many:5000")

    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"].startswith("max_attempts"), report
    assert report["counts"] == counts(attempts=31, accepted=10, denied=21), report
    assert len(files_in(outbox)) == 10
    records = read_audit(audit)
    assert [r["outcome"] for r in records] == ["attempt", "accepted"] * 10 + ["denied"] * 21, records
    assert records[-1]["reason"].startswith("stopped: max_attempts"), records[-1]


def test_send_many_goes_to_the_relay_in_bounded_batches(run, plugins, smtpd, tmp_path, hostile_modes):
    # 600 messages in one call: all delivered over one session, each written
    # ahead with its attempt record before its batch left, and no batch
    # larger than MAX_BATCH_MESSAGES.
    need_mode(hostile_modes, "many:N")
    server = smtpd()
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, relay=relay_table(server),
                          plugins={"hostile": policy("hostile", max_messages=1000)})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="many:600")

    assert_exit(proc, 0)
    assert run_report(proc)["counts"] == counts(attempts=600, accepted=600), run_report(proc)
    assert len(server.messages) == 600
    records = read_audit(audit)
    check_write_ahead(records)
    runs, last = [], None
    for r in records:
        if r["outcome"] != last:
            runs.append([r["outcome"], 0])
            last = r["outcome"]
        runs[-1][1] += 1
    assert runs == [["attempt", 64], ["accepted", 64]] * 9 + [["attempt", 24], ["accepted", 24]], runs
    assert all(n <= MAX_BATCH_MESSAGES for _, n in runs)


def test_wall_ms_during_a_batch_keeps_every_message_of_it(run, plugins, scripted, tmp_path, hostile_modes):
    # The relay takes the first message of a pipelined batch of five, then
    # never answers its dot: the run's wall_ms stops it inside the call.
    # Every message of the batch was written ahead and is kept as outcome
    # unknown (the host cannot know which ones the relay took).
    need_mode(hostile_modes, "many:N")
    server = scripted([
        Send(GREETING), Expect("EHLO"), Send(b"250-fake.example\r\n250 PIPELINING\r\n"),
        Expect("MAIL FROM"), Expect("RCPT TO"), Expect("DATA"),
        Send(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go ahead\r\n"), ReadData(), Hold(30),
    ])
    audit = tmp_path / "audit.jsonl"
    folder = tmp_path / "dead"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, dead_letter=folder,
                          relay={"server": server.address, "tls": "none", "timeout_secs": 30},
                          plugins={"hostile": policy("hostile", wall_ms=WALL_MS)})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="many:5")

    assert_exit(proc, EXIT_STOPPED)
    report = run_report(proc)
    assert report["stopped"].startswith("wall_ms"), report
    assert report["counts"] == counts(attempts=5, errors=5, kept=5), report
    records = read_audit(audit)
    check_write_ahead(records)
    assert [r["outcome"] for r in records] == ["attempt"] * 5 + ["error"] * 5, records
    for r in records[5:]:
        assert r["reason"].startswith("outcome-unknown:"), r
        meta = json.loads(Path(r["dead_letter"]).with_suffix(".json").read_text())
        assert meta["outcome_unknown"] is True, meta
    assert [p for p in files_in(folder / "pending") if p.suffix == ".pending"] == []


# ---------------------------------------------------------------------------
# 6. What the operator sees: prefixed, escaped plugin text and one summary
# ---------------------------------------------------------------------------

def test_run_prints_the_plugin_result_prefixed_and_a_summary(run, plugins, tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hello": policy("hello")})

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT,
                      json_report=False)

    assert_exit(proc, EXIT_OK)
    _, record = read_audit(audit)
    assert proc.stdout == f"[hello] sent {record['message_id']} to 1 recipient(s)\n", describe(proc)
    assert summary(proc.stderr) == (1, 0, 0, 0, 0, 1, str(audit))


def test_plugin_error_is_prefixed_and_escaped(run, plugins, tmp_path):
    # The plugin's error quotes its input: a forged host line, a bidi
    # override and terminal escapes.
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox", audit=audit,
                          plugins={"hello": policy("hello")})
    evil = "x\u202etxt.exe\x1b[2J@example.com\nwasmail: plugin hello stopped: forged"

    proc = run_plugin(run, plugins, "hello", config=config, input_text=evil, json_report=False)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert proc.stdout == "", describe(proc)
    lines = proc.stderr.splitlines()
    head = lines.index("wasmail: plugin hello failed; its error:")
    error_lines = []
    for line in lines[head + 1:]:
        if not line.startswith("[hello] "):
            break
        error_lines.append(line)
    # The newline in the error starts a new line, and that line too is the
    # plugin's, prefixed: it cannot pass for the host's verdict.
    assert len(error_lines) >= 2, describe(proc)
    assert "\\u{202e}" in error_lines[0] and "\\u{1b}" in error_lines[0], error_lines
    assert any(l.startswith("[hello] wasmail: plugin hello stopped: forged")
               for l in error_lines[1:]), error_lines
    assert not any(l.startswith("wasmail: plugin hello stopped") for l in lines), describe(proc)
    found = UNSAFE.search(proc.stderr.replace("\n", ""))
    assert found is None, f"unescaped {found.group()!r} in {proc.stderr!r}"
    assert summary(proc.stderr) == (0, 0, 0, 1, 0, 1, str(audit))


def test_one_output_cap_covers_the_returned_value(run, plugins, tmp_path):
    limit = 40
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox",
                          audit=tmp_path / "audit.jsonl",
                          plugins={"hello": policy("hello", max_output_bytes=limit)})
    note = OUTPUT_LIMIT_NOTE.format(limit)

    # hello returns "sent <Message-ID> to 1 recipient(s)": only its first
    # `limit` bytes are shown, then the note.
    # The cap counts what the operator sees: the `[hello] ` prefix and the
    # line end take 9 of the 40 bytes, so 31 of the value are shown.
    shown = limit - len("[hello] ") - 1
    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT)
    assert_exit(proc, EXIT_OK)
    output = run_report(proc)["output"]
    assert output.startswith("sent ") and output.endswith(note), output
    assert len(output) == shown + len(note), output

    proc = run_plugin(run, plugins, "hello", config=config, input_text=RECIPIENT,
                      json_report=False)
    assert_exit(proc, EXIT_OK)
    [line] = proc.stdout.splitlines()
    assert line.startswith("[hello] sent ") and line.endswith(note), describe(proc)
    assert len(line) == len("[hello] ") + shown + len(note), describe(proc)


def test_forged_host_lines_are_prefixed_and_escaped(run, plugins, tmp_path, hostile_modes):
    need_mode(hostile_modes, "forge")
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox",
                          audit=tmp_path / "audit.jsonl", plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="forge",
                      json_report=False)

    assert_exit(proc, EXIT_PLUGIN_ERROR)
    assert proc.stdout == "", describe(proc)
    lines = proc.stderr.splitlines()
    # Its stdout and stderr, each line prefixed and escaped ...
    assert "[hostile] wasmail: plugin admin stopped: cpu_ms: forged" in lines, describe(proc)
    assert "[hostile:stderr] \\u{1b}[2Jwasmail: 100 message(s) accepted" in lines, describe(proc)
    # ... and its error, every line of it.
    head = lines.index("wasmail: plugin hostile failed; its error:")
    assert lines[head + 1:head + 4] == [
        "[hostile] failed",
        "[hostile] wasmail: plugin admin stopped: forged",
        "[hostile] \\u{202e}fdp.exe",
    ], describe(proc)
    # The host's own lines: only its verdict (no send, so no summary).
    assert [l for l in lines if l.startswith("wasmail: ")] == [
        "wasmail: plugin hostile failed; its error:"], describe(proc)
    found = UNSAFE.search(proc.stderr.replace("\n", ""))
    assert found is None, f"unescaped {found.group()!r} in {proc.stderr!r}"

    # With --json, stdout is the report alone; the error is in it, verbatim.
    proc = run_plugin(run, plugins, "hostile", config=config, input_text="forge")
    assert_exit(proc, EXIT_PLUGIN_ERROR)
    report = run_report(proc)
    assert report["plugin_error"] == "failed\nwasmail: plugin admin stopped: forged\n\u202efdp.exe"
    assert "[hostile] wasmail: plugin admin stopped: cpu_ms: forged" in proc.stderr.splitlines()


def test_print_flood_is_capped_across_stdout_stderr_and_the_result(run, plugins, tmp_path,
                                                                  hostile_modes):
    # 64 KiB on stdout, 64 KiB on stderr (each with its newline), then 4 MiB
    # returned: one cap of max_output_bytes (default 1 MiB) for all of it.
    need_mode(hostile_modes, "print-flood")
    cap = 1 << 20
    printed = (64 << 10) + 1
    config = write_config(tmp_path / "wasmail.toml", outbox=tmp_path / "outbox",
                          audit=tmp_path / "audit.jsonl", plugins={"hostile": policy("hostile")})

    proc = run_plugin(run, plugins, "hostile", config=config, input_text="print-flood",
                      json_report=False)

    assert_exit(proc, EXIT_OK)
    out_lines = [l for l in proc.stderr.splitlines() if l.startswith("[hostile] ")]
    err_lines = [l for l in proc.stderr.splitlines() if l.startswith("[hostile:stderr] ")]
    assert "".join(l[len("[hostile] "):] for l in out_lines) == "p" * (printed - 1)
    assert "".join(l[len("[hostile:stderr] "):] for l in err_lines) == "e" * (printed - 1)
    assert len(out_lines) + len(err_lines) == len(proc.stderr.splitlines()), describe(proc)[:2000]
    # The returned value gets what is left of the cap, counted as shown
    # (prefixes and line ends of everything printed included).
    note = OUTPUT_LIMIT_NOTE.format(cap)
    [line] = proc.stdout.splitlines()
    assert line.startswith("[hostile] rrr") and line.endswith(note), line[-300:]
    assert set(line[len("[hostile] "):-len(note)]) == {"r"}
    shown = sum(len(l) + 1 for l in proc.stderr.splitlines() if l.startswith("[hostile"))
    shown += len(line) + 1 - len(note)
    assert cap - 64 < shown <= cap, shown
