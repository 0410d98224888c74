"""`relay.sessions`: a run's `send-many` batches go out on up to N SMTP
sessions at once (host/src/plugin/sender.rs `Sessions`), each batch written
ahead and settled message by message exactly as on one session.

Against a real, strict Postfix smtpd (servers.PostfixSmtpd):
- 600 messages over `sessions = 3`: more than one session and at most
  three, every command of each accepted, each message delivered once, each message's `attempt` record
  before its outcome.
- A relay that takes one connection from us (Postfix with
  `smtpd_client_connection_count_limit = 1`, loopback not exempt): the
  further sessions are refused with a 421 greeting. Their batches, which
  they certainly did not send, go again over the first session; no more
  sessions are opened, and every message is delivered once.
- `wall_ms` hit while three batches are on the wire (Postfix sleeps before
  every end-of-data reply): each of their messages is kept as outcome
  unknown, and every message Postfix took has an `attempt` record.
- A call of 48 messages goes as three batches of 16, one on each session.
- `relay.sessions` out of range: a config error that names the key.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from cli import BULK_TIMEOUT_S, assert_exit, describe
from test_batch import MAX_BATCH_MESSAGES, RELAY_TIMEOUT_S, TO, run_bulk
from test_deadletter import letters, pending
from test_plugins import (EXIT_CONFIG, EXIT_OK, EXIT_STOPPED, check_write_ahead,
                          counts, outcomes, policy, read_audit, relay_table, run_plugin, run_report,
                          write_config)

SESSIONS = 3
# How long Postfix may take to log a session that has ended.
SESSION_LOG_TIMEOUT_S = 10
# Enough messages for several batches on each session.
VOLUME = 600
# The fewest messages the host cuts a call's batches to when it spreads
# them over the sessions (plugin/sender.rs MIN_BATCH_MESSAGES).
MIN_BATCH_MESSAGES = 16
# Postfix's cleanup logs each message's Message-ID.
MESSAGE_ID_RE = re.compile(r"cleanup\[\d+\]: \w+: message-id=<([^>]*)>")


def sessions_config(tmp_path: Path, server, *, sessions=SESSIONS, max_messages: int = VOLUME,
                    **limits) -> tuple[Path, Path, Path]:
    audit, folder = tmp_path / "audit.jsonl", tmp_path / "dead"
    config = write_config(tmp_path / "wasmail.toml", audit=audit, dead_letter=folder,
                          relay=relay_table(server, timeout_secs=RELAY_TIMEOUT_S, sessions=sessions),
                          plugins={"bulk": policy("bulk", max_messages=max_messages, **limits)})
    return config, audit, folder


def taken_message_ids(server) -> list[str]:
    """The Message-IDs Postfix's cleanup took (without the angle brackets,
    as in the audit log)."""
    return [m[1] for m in map(MESSAGE_ID_RE.search, server.log_lines()) if m]


def settled_by_id(records: list[dict]) -> dict[str, dict]:
    """Each written-ahead message's outcome record, by spool id; every
    attempt has exactly one."""
    check_write_ahead(records)
    attempts = [r["id"] for r in records if r["outcome"] == "attempt"]
    settled = {r["id"]: r for r in outcomes(records) if r.get("id")}
    assert sorted(settled) == sorted(attempts), "an attempt without its outcome record"
    return settled


def test_postfix_takes_600_over_three_sessions(run, plugins, postfix_smtpd, tmp_path):
    server = postfix_smtpd(chunking=True)
    config, audit, folder = sessions_config(tmp_path, server)

    proc = run_bulk(run, plugins, config, VOLUME, size=1024, timeout=BULK_TIMEOUT_S)

    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=VOLUME, accepted=VOLUME), describe(proc)
    assert server.delivered(VOLUME, sessions=2) == VOLUME, "\n".join(server.log_lines())
    # Every session has ended (the run QUIT them all): wait for their lines.
    deadline = time.monotonic() + SESSION_LOG_TIMEOUT_S
    while (sum(int(s.get("mail", 0)) for s in server.sessions()) < VOLUME
           and time.monotonic() < deadline):
        time.sleep(0.05)
    # A further session opens when a batch is ready while every open one is
    # busy: more than one here, never more than `relay.sessions`.
    sessions = server.sessions()
    assert 2 <= len(sessions) <= SESSIONS, sessions
    for session in sessions:
        assert "/" not in " ".join(session.values()), f"a command was refused: {session}"
        assert session.get("quit") == "1" and session.get("mail") == session.get("bdat"), session
    assert sum(int(s["mail"]) for s in sessions) == VOLUME, sessions
    assert server.warnings() == [], "\n".join(server.log_lines())
    records = read_audit(audit)
    settled = settled_by_id(records)
    assert len(settled) == VOLUME and all(r["outcome"] == "accepted" for r in settled.values())
    # Each message reached Postfix once.
    taken = taken_message_ids(server)
    assert sorted(taken) == sorted(r["message_id"] for r in settled.values())
    assert letters(folder) == [] and pending(folder) == []


def test_refused_further_sessions_send_their_batches_again_over_the_first(
        run, plugins, postfix_smtpd, tmp_path):
    server = postfix_smtpd(chunking=True, options={
        "smtpd_client_connection_count_limit": "1",
        "smtpd_client_event_limit_exceptions": "",
    })
    count = 5 * MAX_BATCH_MESSAGES
    config, audit, folder = sessions_config(tmp_path, server, max_messages=count)

    proc = run_bulk(run, plugins, config, count, size=1024, timeout=BULK_TIMEOUT_S)

    # The further sessions were refused at the greeting (421): their
    # batches, which they certainly did not send, went again over the one
    # session Postfix allows. Nothing failed, nothing was kept.
    assert_exit(proc, EXIT_OK)
    assert run_report(proc)["counts"] == counts(attempts=count, accepted=count), describe(proc)
    records = read_audit(audit)
    settled = settled_by_id(records)
    assert len(settled) == count and all(r["outcome"] == "accepted" for r in settled.values())
    # One attempt record per message, though some went to a session twice.
    assert len([r for r in records if r["outcome"] == "attempt"]) == count
    assert server.delivered(count) == count
    assert sorted(taken_message_ids(server)) == sorted(r["message_id"] for r in settled.values())
    assert len([s for s in server.sessions() if s.get("mail")]) == 1, server.sessions()
    refused = [l for l in server.log_lines() if "Connection concurrency limit exceeded" in l]
    assert 1 <= len(refused) <= SESSIONS - 1, "\n".join(server.log_lines())
    assert letters(folder) == [] and pending(folder) == []


def test_a_limit_with_three_batches_on_the_wire_keeps_each_as_outcome_unknown(
        run, plugins, postfix_smtpd, tmp_path):
    # Every end of data waits 1 s: three sessions each hold a batch when
    # the wall-clock limit stops the run.
    server = postfix_smtpd(chunking=True, options={"smtpd_end_of_data_restrictions": "sleep 1"})
    count = 5 * MAX_BATCH_MESSAGES
    config, audit, folder = sessions_config(tmp_path, server, max_messages=count, wall_ms=3000)

    proc = run_bulk(run, plugins, config, count, size=1024, timeout=BULK_TIMEOUT_S)

    assert_exit(proc, EXIT_STOPPED)
    records = read_audit(audit)
    settled = settled_by_id(records)
    unknown = [r for r in settled.values() if r["reason"].startswith("outcome-unknown")]
    # Three batches were on the wire, whole: each of their messages is
    # unknown (none was answered while the run lived) and kept.
    assert len(unknown) == SESSIONS * MAX_BATCH_MESSAGES, describe(proc)
    kept = {m["message_id"]: m for m in letters(folder)}
    assert {r["message_id"] for r in unknown} <= set(kept)
    assert all(r["dead_letter"] for r in unknown)
    # Every message Postfix took was written ahead first.
    attempted = {r["message_id"] for r in records if r["outcome"] == "attempt"}
    server.delivered(1, sessions=SESSIONS, timeout=10)
    assert set(taken_message_ids(server)) <= attempted
    assert pending(folder) == []


def test_a_short_call_is_spread_over_every_session(run, plugins, postfix_smtpd, tmp_path):
    # One call of 48 messages on 3 sessions goes as three batches of
    # MIN_BATCH_MESSAGES, one a session, not as one batch on one session
    # while the others stand idle. Every end of data waits 1 s, so all
    # three batches are still on the wire when wall_ms stops the run.
    server = postfix_smtpd(chunking=True, options={"smtpd_end_of_data_restrictions": "sleep 1"})
    count = SESSIONS * MIN_BATCH_MESSAGES
    config, audit, folder = sessions_config(tmp_path, server, max_messages=count, wall_ms=3000)

    proc = run_bulk(run, plugins, config, count, size=1024, timeout=BULK_TIMEOUT_S)

    assert_exit(proc, EXIT_STOPPED)
    server.delivered(1, sessions=SESSIONS, timeout=SESSION_LOG_TIMEOUT_S)
    carried = [s for s in server.sessions() if s.get("mail")]
    assert len(carried) == SESSIONS, server.sessions()
    # Each message was written ahead, and each one the run did not see
    # answered is kept.
    records = read_audit(audit)
    assert len([r for r in records if r["outcome"] == "attempt"]) == count, describe(proc)
    settled = settled_by_id(records)
    unknown = [r for r in settled.values() if r["reason"].startswith("outcome-unknown")]
    assert len(settled) == count and unknown, describe(proc)
    assert {r["message_id"] for r in unknown} <= {m["message_id"] for m in letters(folder)}


@pytest.mark.parametrize("sessions", [0, 9])
def test_relay_sessions_out_of_range_is_a_config_error_naming_the_key(run, plugins, tmp_path,
                                                                       sessions):
    config = write_config(tmp_path / "wasmail.toml", audit=tmp_path / "audit.jsonl",
                          relay={"server": "127.0.0.1:9", "tls": "none", "sessions": sessions},
                          plugins={"bulk": policy("bulk")})

    proc = run_plugin(run, plugins, "bulk", config=config, input_text='{"count": 1, "to": "%s"}' % TO)

    assert_exit(proc, EXIT_CONFIG)
    error = json.loads(proc.stdout)["error"]
    assert error["kind"] == "config", describe(proc)
    assert f"relay.sessions: {sessions} is not between 1 and 8" in error["message"], describe(proc)
