"""The write-ahead spool under SIGKILL: a plugin's message is in
`<dead_letter>/pending/` (and has an `attempt` audit record) before its first
byte goes to the relay, so whenever the host is killed, every message is
either at the relay or in the spool (or both, when the kill fell between the
final dot and the outcome record: that is what outcome_unknown is for), and
`wasmail retry --force` delivers what the relay may not have.

The bulk plugin sends to a recording aiosmtpd relay; the host is killed at
a random point, many times, over one audit log and one dead-letter folder.
The schedule is seeded: set WASMAIL_CRASH_SEED to replay one (the seed is
printed, and shown with the failure).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from cli import assert_exit, describe, relay

ROUNDS = 40
# Rounds stop starting once this much time has gone, so the test stays
# well under a minute even on a slow machine.
BUDGET_S = 40.0
# The most a round waits for the run to send anything before killing it.
ROUND_TIMEOUT_S = 10.0
# Kill after this many new audit lines (attempt and outcome records) ...
KILL_AFTER_LINES = (1, 300)
# ... or this long after the run's first audit line.
KILL_AFTER_S = (0.05, 0.8)
POLL_S = 0.001
# The warm-up run may compile both components (a debug build is slow at it).
WARM_UP_TIMEOUT_S = 180
MESSAGES = 100_000
BODY_BYTES = 512
MAX_RECORD_BYTES = 8 * 1024

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^<>\r\n]+)>", re.IGNORECASE | re.MULTILINE)


def received_ids(server) -> list[str]:
    """The Message-IDs of what the relay took, in order (repeats kept)."""
    ids = []
    for m in server.messages:
        found = MESSAGE_ID.search(m.content.split(b"\r\n\r\n", 1)[0])
        assert found, m.content[:500]
        ids.append(found.group(1).decode())
    return ids


def spool(folder: Path) -> dict[str, dict[str, dict]]:
    """Message-ID -> {spool id: its metadata} for what keeps it: letters in
    the dead-letter folder (a `.json` always has its `.eml`) and files in
    its `pending/` spool (one file per batch: a JSON line, then the message,
    for each; a torn one was never sent). A letter and a spool file of the same id are one copy:
    `retry` makes the one of the other."""
    kept: dict[str, dict[str, dict]] = {}
    for meta in sorted(folder.glob("*.json")):
        assert meta.with_suffix(".eml").is_file(), f"{meta} without its .eml"
        m = json.loads(meta.read_text())
        kept.setdefault(m["message_id"], {})[meta.stem] = m
    for spooled in sorted((folder / "pending").glob("*.pending")):
        # One file per batch: for each message a JSON line, then its bytes.
        rest = spooled.read_bytes()
        while rest:
            head, nl, rest = rest.partition(b"\n")
            try:
                header = json.loads(head)
            except ValueError:
                break  # torn inside a header: that message was never sent
            body, rest = rest[:header["size"]], rest[header["size"]:]
            if not nl or len(body) != header["size"]:
                break  # torn inside its bytes: never sent
            m = header["meta"]
            kept.setdefault(m["message_id"], {}).setdefault(header.get("id") or spooled.stem, m)
    return kept


def audit_records(path: Path) -> list[dict]:
    """Every record; each line whole, JSON, and within the size bound (a
    record is one write of one line, so a kill cannot cut one)."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), f"the audit log ends in a cut line: {raw[-200:]!r}"
    records = []
    for n, line in enumerate(raw.split(b"\n")[:-1], 1):
        assert len(line) + 1 <= MAX_RECORD_BYTES, f"line {n}: {len(line) + 1} bytes"
        records.append(json.loads(line))
    return records


def test_sigkill_at_random_points_loses_nothing(wasmail, plugins, smtpd, tmp_path, run):
    seed = int(os.environ.get("WASMAIL_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"crash schedule seed {seed} (replay: WASMAIL_CRASH_SEED={seed})")
    rng = random.Random(seed)
    server = smtpd()
    folder = tmp_path / "dead"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "wasmail.toml"
    config.write_text(f"""
audit = "{audit}"
dead_letter = "{folder}"
[relay]
server = "{server.address}"
tls = "none"
timeout_secs = 5
[plugins.bulk]
allowed_from = ["*@example.com"]
default_from = "bulk@example.com"
allowed_recipients = ["*@example.com"]
allowed_headers = ["X-Mailer"]
max_messages = {MESSAGES}
""")
    cmd = [str(wasmail), "run", str(plugins["bulk"]), "--config", str(config), "--input-text",
           json.dumps({"count": MESSAGES, "to": "sink@example.com", "size": BODY_BYTES})]

    # Warm the compile cache (bulk and the mailer) in a run of its own, to
    # the outbox: a killed first compile would never be cached.
    warm = tmp_path / "warm"
    warm.mkdir()
    proc = run(["run", plugins["bulk"], "--input-text", "1"], cwd=warm, timeout=WARM_UP_TIMEOUT_S)
    assert_exit(proc, 0)

    started = time.monotonic()
    rounds = []
    audit.touch()
    for n in range(ROUNDS):
        if time.monotonic() - started > BUDGET_S:
            break
        if rng.random() < 0.5:
            plan = ("lines", rng.randint(*KILL_AFTER_LINES))
        else:
            plan = ("seconds", rng.uniform(*KILL_AFTER_S))
        err = tmp_path / f"round{n}.stderr"
        with open(audit, "rb") as log, open(err, "wb") as err_file:
            log.seek(0, os.SEEK_END)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file,
                                    stdin=subprocess.DEVNULL, cwd=tmp_path)
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            lines, first_at = 0, None
            while proc.poll() is None and time.monotonic() < deadline:
                lines += log.read().count(b"\n")
                if lines and first_at is None:
                    first_at = time.monotonic()
                if plan[0] == "lines" and lines >= plan[1]:
                    break
                if plan[0] == "seconds" and first_at is not None \
                        and time.monotonic() - first_at >= plan[1]:
                    break
                time.sleep(POLL_S)
            proc.kill()
            # Reaped, so its pid is gone from /proc and retry may take its spool.
            code = proc.wait()
        rounds.append((plan, lines, code))
        assert code == -signal.SIGKILL, (
            f"round {n} ({plan}) ended by itself, exit {code}, seed {seed}:\n{err.read_text()}")
        assert lines > 0, f"round {n}: the run sent nothing in {ROUND_TIMEOUT_S}s, seed {seed}:\n" \
                          f"{err.read_text()}"
    print(f"{len(rounds)} rounds in {time.monotonic() - started:.1f}s: {rounds}")
    assert len(rounds) >= 5, f"only {len(rounds)} rounds within {BUDGET_S}s"

    records = audit_records(audit)
    attempted = {r["message_id"] for r in records if r["outcome"] == "attempt"}
    accepted = {r["message_id"] for r in records if r["outcome"] == "accepted"}
    relay_has = set(received_ids(server))
    kept = spool(folder)
    unrecorded = set(kept) - attempted
    context = (f"seed {seed}: {len(attempted)} attempted, {len(relay_has)} at the relay, "
               f"{len(kept)} in the spool ({len(unrecorded)} of them without an attempt "
               f"record: killed between the spool write and the audit write)")
    print(context)
    assert attempted, context

    # (a) Nothing reaches the relay without an attempt record first; and an
    # `accepted` record means the relay has it.
    assert relay_has <= attempted, (sorted(relay_has - attempted)[:5], context)
    assert accepted <= relay_has, (sorted(accepted - relay_has)[:5], context)
    # (b) Every attempted message is at the relay or in the spool, or both.
    lost = attempted - relay_has - set(kept)
    assert not lost, (sorted(lost)[:5], context)
    both = attempted & relay_has & set(kept)
    print(f"{len(both)} message(s) both at the relay and in the spool (outcome unknown)")
    for metas in kept.values():
        for meta, m in metas.items():
            # Killed runs leave their mail marked outcome_unknown, with a
            # process that no longer runs.
            assert m["outcome_unknown"] is True, (meta, m)
            if m.get("pid") is not None:
                assert not Path(f"/proc/{m['pid']}").exists(), (meta, m)
    assert kept, f"no kill fell inside a delivery in {len(rounds)} rounds; {context}"

    # (c) retry leaves outcome-unknown mail alone ...
    at_relay = len(server.messages)
    proc = run(["retry", *relay(server.address, "none", timeout=5), "--dead-letter", folder,
                "--json"])
    assert_exit(proc, 0)
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    assert sorted(l["message_id"] for l in lines) == sorted(
        mid for mid, metas in kept.items() for _ in metas), describe(proc)
    assert {l["outcome"] for l in lines} == {"skipped"}, describe(proc)
    assert {mid: set(ids) for mid, ids in spool(folder).items()} == {mid: set(ids) for mid, ids in kept.items()}
    assert len(server.messages) == at_relay

    # ... and with --force delivers it all and empties the spool.
    proc = run(["retry", *relay(server.address, "none", timeout=5), "--dead-letter", folder,
                "--audit", audit, "--json", "--force"])
    assert_exit(proc, 0)
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    assert {l["outcome"] for l in lines} == {"delivered"}, describe(proc)
    assert len(lines) == sum(len(m) for m in kept.values()), describe(proc)
    assert spool(folder) == {}
    assert list(folder.glob("*.json")) == [] and list((folder / "pending").glob("*.pending")) == []
    relay_has = set(received_ids(server))
    assert attempted <= relay_has, (sorted(attempted - relay_has)[:5], context)
    # What retry delivered was in the spool; nothing else reached the relay.
    assert relay_has <= attempted | set(kept), context
    # And retry writes ahead too: every message at the relay now has an
    # `attempt` record, including those spooled by a run killed before its
    # own record was written.
    audited = {r["message_id"] for r in audit_records(audit) if r["outcome"] == "attempt"}
    assert relay_has <= audited, (sorted(relay_has - audited)[:5], context)
