"""No lost mail: what the relay does not take goes to the dead-letter folder
with its exact bytes, envelope and reason; `wasmail retry` resends it; a
message whose outcome is unknown is kept, marked, and only resent with
--force. And the relay killed in the middle of a plugin run: every message is
either accepted or kept. File names are the host's (`<ms>-<pid>-<n>.eml`),
never the Message-ID, which is in the `.json`. (A plugin's mail is written
ahead to `pending/` before delivery; test_crash.py kills the host itself.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from cli import assert_exit, describe, relay
from scripted import Close, Expect, Hold, ReadData, Send
from servers import free_port

FROM = "sender@example.com"
TO = "rcpt@example.com"
# The host's name for a kept message: ms since the epoch, pid, counter.
LETTER_NAME = re.compile(r"\d{13}-\d+-\d{6}\.json")


def letter_files(folder: Path) -> list[Path]:
    """The `.json` of every complete letter in `folder` (not in `pending/`),
    each with its `.eml` beside it and a host-made name."""
    if not folder.exists():
        return []
    files = sorted(folder.glob("*.json"))
    for meta in files:
        assert LETTER_NAME.fullmatch(meta.name), meta.name
        assert meta.with_suffix(".eml").exists(), f"{meta} has no .eml"
    return files


def letters(folder: Path) -> list[dict]:
    """The `.json` of every complete letter in `folder`."""
    return [json.loads(meta.read_text()) for meta in letter_files(folder)]


def pending(folder: Path) -> list[Path]:
    """What is left in the write-ahead spool, `pending/`."""
    spool = folder / "pending"
    return sorted(spool.iterdir()) if spool.exists() else []


def send_args(address: str, folder: Path, subject: str = "keep me") -> list:
    return ["send", "--from", FROM, "--to", TO, "--subject", subject, "--text", "body line\n",
            *relay(address, timeout=5), "--dead-letter", folder]


def test_unreachable_relay_keeps_the_message_and_retry_delivers_it(run, tmp_path, smtp_sink):
    folder = tmp_path / "dead"
    sink = smtp_sink()
    dead_port = sink.port
    sink.stop()  # nothing listens there now
    proc = run(send_args(f"127.0.0.1:{dead_port}", folder))
    assert proc.returncode != 0, describe(proc)
    [meta] = letters(folder)
    assert meta["reason"]["kind"] == "connect" and meta["reason"]["transient"] is True
    assert meta["envelope"] == {"from": FROM, "recipients": [TO]}
    assert meta["outcome_unknown"] is False
    [json_path] = letter_files(folder)
    eml = json_path.with_suffix(".eml").read_bytes()
    assert b"Subject: keep me\r\n" in eml and eml.endswith(b"\r\n")
    assert f"Message-ID: <{meta['message_id']}>\r\n".encode() in eml, eml[:400]
    # `wasmail send` does not write ahead: nothing is left in pending/.
    assert pending(folder) == []

    sink2 = smtp_sink()
    proc = run(["retry", *relay(f"127.0.0.1:{sink2.port}"), "--dead-letter", folder])
    assert_exit(proc, 0)
    assert "delivered" in proc.stdout, describe(proc)
    assert letters(folder) == [], "a delivered letter is removed"
    assert sink2.wait_for(1).messages == 1


def test_4xx_keeps_the_message(run, tmp_path, scripted):
    folder = tmp_path / "dead"
    server = scripted([
        Send(b"220 mx ESMTP\r\n"), Expect("EHLO"), Send(b"250 mx\r\n"),
        Expect("MAIL FROM"), Send(b"451 4.3.0 try again later\r\n"),
        Expect("QUIT"), Send(b"221 bye\r\n"), Close(),
    ])
    proc = run(send_args(f"127.0.0.1:{server.port}", folder))
    assert_exit(proc, 75)
    [meta] = letters(folder)
    assert meta["reason"]["kind"] == "rejected" and meta["reason"]["transient"] is True
    assert "451" in meta["reason"]["message"]


def test_permanent_rejection_is_not_kept(run, tmp_path, scripted):
    folder = tmp_path / "dead"
    server = scripted([
        Send(b"220 mx ESMTP\r\n"), Expect("EHLO"), Send(b"250 mx\r\n"),
        Expect("MAIL FROM"), Send(b"550 5.7.1 go away\r\n"),
        Expect("QUIT"), Send(b"221 bye\r\n"), Close(),
    ])
    proc = run(send_args(f"127.0.0.1:{server.port}", folder))
    assert_exit(proc, 69)
    assert letters(folder) == []


def test_outcome_unknown_is_kept_marked_and_needs_force(run, tmp_path, scripted, smtp_sink):
    folder = tmp_path / "dead"
    server = scripted([
        Send(b"220 mx ESMTP\r\n"), Expect("EHLO"), Send(b"250 mx\r\n"),
        Expect("MAIL FROM"), Send(b"250 ok\r\n"),
        Expect("RCPT TO"), Send(b"250 ok\r\n"),
        Expect("DATA"), Send(b"354 go\r\n"),
        Expect("."), Close(),  # gone after the final dot, before the reply
    ])
    proc = run(send_args(f"127.0.0.1:{server.port}", folder))
    assert_exit(proc, 75)
    assert "outcome unknown" in proc.stderr, describe(proc)
    [meta] = letters(folder)
    assert meta["outcome_unknown"] is True and meta["reason"]["kind"] == "outcome-unknown"

    sink = smtp_sink()
    proc = run(["retry", *relay(f"127.0.0.1:{sink.port}"), "--dead-letter", folder])
    assert_exit(proc, 0)
    assert "skipped" in proc.stdout, describe(proc)
    assert len(letters(folder)) == 1, "not resent without --force"

    proc = run(["retry", *relay(f"127.0.0.1:{sink.port}"), "--dead-letter", folder, "--force"])
    assert_exit(proc, 0)
    assert letters(folder) == []
    assert sink.wait_for(1).messages == 1


def plugin_config(path: Path, server: str, audit: Path, folder: Path) -> Path:
    path.write_text(f"""
audit = "{audit}"
dead_letter = "{folder}"
[relay]
server = "{server}"
tls = "none"
timeout_secs = 5
[plugins.hello]
allowed_from = ["*@example.com"]
default_from = "hello@example.com"
allowed_recipients = ["*@example.com"]
allowed_headers = ["X-Mailer"]
""")
    return path


def test_plugin_mail_refused_for_good_leaves_the_spool(run, plugins, smtpd, tmp_path):
    """Written ahead, then refused with a 5xx: an `attempt` record, a
    `rejected` record with the same id, and nothing kept."""
    server = smtpd(reject={TO})
    folder, audit = tmp_path / "dead", tmp_path / "audit.jsonl"
    config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)

    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--json"])

    assert_exit(proc, 1)
    assert json.loads(proc.stdout)["counts"] == {
        "attempts": 1, "accepted": 0, "denied": 0, "rejected": 1, "errors": 0, "kept": 0, "skipped": 0}
    attempt, outcome = [json.loads(l) for l in audit.read_text().splitlines()]
    assert attempt["outcome"] == "attempt" and outcome["outcome"] == "rejected", (attempt, outcome)
    assert attempt["id"] == outcome["id"] and attempt["message_id"] == outcome["message_id"]
    assert outcome["rejected"] == [TO] and outcome.get("dead_letter") is None, outcome
    assert letters(folder) == [] and pending(folder) == []


def test_plugin_mail_refused_for_now_is_moved_out_of_the_spool(run, plugins, scripted, tmp_path):
    """Written ahead, then a 4xx: kept in the folder with its reason (moved
    up from pending/), under the id of its audit records."""
    server = scripted([
        Send(b"220 mx ESMTP\r\n"), Expect("EHLO"), Send(b"250 mx\r\n"),
        Expect("MAIL FROM"), Send(b"451 4.3.0 try again later\r\n"),
        Expect("QUIT"), Send(b"221 bye\r\n"), Close(),
    ])
    folder, audit = tmp_path / "dead", tmp_path / "audit.jsonl"
    config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)

    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--json"])

    assert_exit(proc, 1)
    assert json.loads(proc.stdout)["counts"] == {
        "attempts": 1, "accepted": 0, "denied": 0, "rejected": 1, "errors": 0, "kept": 1, "skipped": 0}
    attempt, outcome = [json.loads(l) for l in audit.read_text().splitlines()]
    assert attempt["outcome"] == "attempt" and outcome["outcome"] == "rejected", (attempt, outcome)
    assert attempt["id"] == outcome["id"]
    [json_path] = letter_files(folder)
    assert Path(outcome["dead_letter"]) == json_path.with_suffix(".eml"), outcome
    assert json_path.stem == outcome["id"]
    [meta] = letters(folder)
    assert meta["message_id"] == outcome["message_id"]
    assert meta["reason"]["kind"] == "rejected" and meta["reason"]["transient"] is True, meta
    assert meta["outcome_unknown"] is False and meta.get("pid") is None, meta
    assert meta["envelope"] == {"from": "hello@example.com", "recipients": [TO]}
    assert pending(folder) == []


def test_unwritable_spool_stops_the_run_before_sending(run, plugins, smtpd, tmp_path):
    """A message that cannot be written ahead is not sent: the run stops."""
    server = smtpd()
    folder, audit = tmp_path / "not-a-folder", tmp_path / "audit.jsonl"
    folder.write_text("a file where the dead-letter folder should be\n")
    config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)

    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--json"])

    assert_exit(proc, 70)
    report = json.loads(proc.stdout)
    assert report["stopped"].startswith("host: the spool could not keep a message"), report
    [record] = [json.loads(l) for l in audit.read_text().splitlines()]
    assert record["outcome"] == "error" and record["reason"].startswith("spool: "), record
    assert record["reason"].endswith("not sent"), record
    assert server.messages == []
    assert "MAIL" not in server.record.verbs(), server.record.verbs()


def test_relay_killed_mid_run_loses_nothing(wasmail, tmp_path, smtp_sink, plugins, run):
    """The bulk plugin sends over one session; the relay dies under it.
    Every attempted message is accepted or in the dead-letter folder."""
    sink = smtp_sink()
    folder = tmp_path / "dead"
    audit = tmp_path / "audit.jsonl"
    config = tmp_path / "wasmail.toml"
    config.write_text(f"""
audit = "{audit}"
dead_letter = "{folder}"
[relay]
server = "127.0.0.1:{sink.port}"
tls = "none"
timeout_secs = 5
[plugins.bulk]
allowed_from = ["*@example.com"]
default_from = "bulk@example.com"
allowed_recipients = ["*@example.com"]
allowed_headers = ["X-Mailer"]
max_messages = 100000
""")
    proc = subprocess.Popen(
        [str(wasmail), "run", str(plugins["bulk"]), "--config", str(config), "--input-text",
         json.dumps({"count": 100000, "to": "sink@example.com", "size": 512}), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # 200 messages accepted (each also has its `attempt` record before it).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
            audit.exists() and audit.read_text().count('"outcome":"accepted"') >= 200):
        time.sleep(0.05)
    sink.stop()  # kill the relay mid-run
    out, err = proc.communicate(timeout=60)
    all_records = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()]
    # Each message to the relay is written ahead: an `attempt` record, then
    # its outcome with the same spool id.
    attempts = {r["id"]: r for r in all_records if r["outcome"] == "attempt"}
    records = [r for r in all_records if r["outcome"] != "attempt"]
    accepted = [r for r in records if r["outcome"] == "accepted"]
    failed = [r for r in records if r["outcome"] != "accepted"]
    assert len(accepted) >= 200, (len(accepted), err)
    assert failed, f"the relay died, so a send must have failed: {err}"
    assert {r.get("id") for r in records} == set(attempts), "an attempt without an outcome"
    kept = letters(folder)
    for r in failed:
        assert r.get("dead_letter"), f"not kept: {r}"
        assert Path(r["dead_letter"]).exists()
        assert Path(r["dead_letter"]).parent == folder, r
    assert {m["message_id"] for m in kept} >= {r["message_id"] for r in failed if r.get("message_id")}
    assert len(kept) == len(failed)
    # The run ended: nothing is left in the write-ahead spool.
    assert [p for p in pending(folder) if p.suffix == ".pending"] == [], pending(folder)
    report = json.loads(out)
    assert report["accepted"] == len(accepted)
    assert report["counts"]["kept"] == len(kept), report
    assert report["counts"]["attempts"] == len(records), report

    # Bring a relay back and retry: the folder empties.
    sink2 = smtp_sink()
    proc2 = run(["retry", *relay(f"127.0.0.1:{sink2.port}"), "--dead-letter", folder])
    unknown = [m for m in kept if m["outcome_unknown"]]
    assert proc2.returncode == 0, describe(proc2)
    assert len(letters(folder)) == len(unknown)
    resent = len(kept) - len(unknown)
    if resent:
        assert sink2.wait_for(resent).messages == resent


def test_retry_with_no_flags_resends_to_the_relay_each_letter_recorded(run, tmp_path):
    """As `msmtpq -r`: the `.json` records where the message was going (never
    the secret), and `wasmail retry` with no relay flags sends it there."""
    from aiosmtpd.controller import Controller
    from servers import free_port

    class Collect:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append(envelope.content)
            return "250 2.0.0 Ok"

    folder = tmp_path / "dead"
    port = free_port()  # nothing listens there yet
    proc = run([*send_args(f"127.0.0.1:{port}", folder), "--ehlo", "client.example"])
    assert proc.returncode != 0, describe(proc)
    [meta] = letters(folder)
    assert meta["relay"] == {"server": f"127.0.0.1:{port}", "tls": "none", "auth": "auto",
                             "ehlo": "client.example"}, meta
    assert "password" not in json.dumps(meta).lower()

    handler = Collect()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        proc = run(["retry", "--dead-letter", folder, "--audit", tmp_path / "audit.jsonl"])
        assert_exit(proc, 0)
        assert "delivered" in proc.stdout, describe(proc)
    finally:
        controller.stop()
    assert len(handler.messages) == 1
    assert letters(folder) == []
    records = [json.loads(l) for l in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["attempt", "accepted"]


def test_retry_without_a_recorded_relay_needs_one(run, tmp_path):
    folder = tmp_path / "dead"
    folder.mkdir()
    (folder / "1-1-000001.eml").write_bytes(b"Subject: x\r\n\r\nhi\r\n")
    (folder / "1-1-000001.json").write_text(json.dumps({
        "message_id": "x@example.com", "envelope": {"from": FROM, "recipients": [TO]},
        "reason": {"kind": "connect", "message": "down", "transient": True},
        "outcome_unknown": False, "attempts": 1, "first_failure_ms": 1, "last_failure_ms": 1}))
    proc = run(["retry", "--dead-letter", folder])
    assert_exit(proc, 64)
    assert "records no relay" in proc.stderr, describe(proc)


# A relay that takes one message and never answers its dot.
HOLDS_AFTER_DATA = [
    Send(b"220 mx ESMTP\r\n"), Expect("EHLO"), Send(b"250 mx\r\n"),
    Expect("MAIL FROM"), Send(b"250 ok\r\n"), Expect("RCPT TO"), Send(b"250 ok\r\n"),
    Expect("DATA"), Send(b"354 go\r\n"), ReadData(), Hold(60),
]


def wait_for_data(server, timeout: float = 60) -> None:
    """Until `server` (scripted) has the whole message."""
    deadline = time.monotonic() + timeout
    while not server.data and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.data, server.received()


def keep_one_letter(run, folder: Path) -> dict:
    """A letter kept because nothing listened on the relay's port."""
    proc = run(send_args(f"127.0.0.1:{free_port()}", folder))
    assert proc.returncode != 0, describe(proc)
    [meta] = letters(folder)
    assert meta["outcome_unknown"] is False
    return meta


def test_a_retry_in_flight_is_passed_over_and_one_killed_in_flight_needs_force(wasmail, run, tmp_path, scripted, smtpd):
    """`retry` holds a letter while it sends it, and marks it in flight
    before its first byte: a second retry meanwhile passes over it, and
    after the first is killed (the relay may have the message) a retry
    resends it only with --force. Once each of these sent it twice."""
    folder = tmp_path / "dead"
    keep_one_letter(run, folder)
    hang = scripted(HOLDS_AFTER_DATA)
    first = subprocess.Popen([str(wasmail), "retry", *relay(hang.address), "--dead-letter", str(folder)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_for_data(hang)
        server = smtpd()
        proc = run(["retry", *relay(server.address), "--dead-letter", folder])
        assert_exit(proc, 0)
        assert "skipped" in proc.stdout and "another process" in proc.stdout, describe(proc)
    finally:
        first.kill()
        first.wait(timeout=30)
    [meta] = letters(folder)
    assert meta["outcome_unknown"] is True and "retry was sending it" in meta["reason"]["message"], meta
    proc = run(["retry", *relay(server.address), "--dead-letter", folder])
    assert_exit(proc, 0)
    assert "skipped" in proc.stdout and "--force" in proc.stdout, describe(proc)
    assert server.messages == []
    proc = run(["retry", *relay(server.address), "--dead-letter", folder, "--force"])
    assert_exit(proc, 0)
    assert len(server.messages) == 1 and letters(folder) == []


def test_odd_files_in_the_folder_are_named_and_the_good_letter_still_goes(run, tmp_path, smtpd):
    """A FIFO, a folder and an empty file where retry looks: each is named
    and left for an operator; the good letter is delivered, and retry ends
    (a FIFO once blocked it for good) with 75, not 0."""
    folder = tmp_path / "dead"
    keep_one_letter(run, folder)
    spool = folder / "pending"
    spool.mkdir(exist_ok=True)
    dead_writer = "0000000000000-4294967295-000001"
    os.mkfifo(spool / f"{dead_writer}.pending")
    (spool / "0000000000000-4294967295-000002.pending").mkdir()
    (folder / "empty.eml").write_text("x")
    (folder / "empty.json").write_text("")
    server = smtpd()
    proc = run(["retry", *relay(server.address), "--dead-letter", folder], timeout=30)
    assert_exit(proc, 75)
    assert len(server.messages) == 1, describe(proc)
    assert proc.stdout.count("unreadable") == 3 and "empty.json" in proc.stdout, describe(proc)
    assert (spool / f"{dead_writer}.pending").exists() and (folder / "empty.json").exists()


def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(run, tmp_path):
    """`--timeout -1` and `nan` once panicked (exit 70) at the first connect."""
    for value in ("-1", "nan", "0", "inf"):
        proc = run(["send", "--from", FROM, "--to", TO, "--text", "x", "--server", "127.0.0.1:1", "--tls", "none",
                    f"--timeout={value}"])
        assert_exit(proc, 64)  # EX_USAGE
        assert "--timeout" in proc.stderr and "panick" not in proc.stderr, describe(proc)
    config = tmp_path / "bad.toml"
    config.write_text('[relay]\nserver = "127.0.0.1:1"\ntls = "none"\ntimeout_secs = -1.0\n')
    proc = run(["retry", "--config", config, "--dead-letter", tmp_path / "none"])
    assert proc.returncode not in (0, 70, 101), describe(proc)
    assert "relay.timeout_secs" in proc.stderr, describe(proc)


def test_a_job_runs_once_at_a_time(wasmail, run, plugins, scripted, smtpd, tmp_path):
    """A second run of a job while the first goes on (a client's repeated
    Idempotency-Key, a redelivered job) would find its messages not yet
    attempted and send them again: it does not start (75, `job-running`).
    Once the first has ended, a run of the job sends nothing again."""
    folder, audit = tmp_path / "dead", tmp_path / "audit.jsonl"
    hang = scripted(HOLDS_AFTER_DATA)
    slow = plugin_config(tmp_path / "slow.toml", hang.address, audit, folder)
    slow.write_text(slow.read_text().replace("timeout_secs = 5", "timeout_secs = 60"))
    first = subprocess.Popen([str(wasmail), "run", str(plugins["hello"]), "--config", str(slow), "--input-text", TO,
                              "--job", "order-3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        wait_for_data(hang)
        server = smtpd()
        config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)
        proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-3", "--json"])
        assert_exit(proc, 75)
        assert "job order-3 is already running" in proc.stdout + proc.stderr, describe(proc)
        assert server.messages == []
        # Another job is not held up.
        proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-4", "--json"])
        assert_exit(proc, 0)
        assert len(server.messages) == 1
    finally:
        first.kill()
        first.wait(timeout=30)
    # The first run was killed with its message at the relay: the job's
    # next run does not send it again.
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-3", "--json"])
    assert json.loads(proc.stdout)["counts"]["skipped"] == 1, describe(proc)
    assert len(server.messages) == 1


def test_a_job_run_again_with_another_message_in_a_place_sends_it(run, plugins, smtpd, tmp_path):
    """A job's messages are known by their place in the run; a redelivery
    whose message at a place has other recipients (the plugin's input or
    data changed) has a message that was never sent: it goes. The same
    message again does not."""
    folder, audit = tmp_path / "dead", tmp_path / "audit.jsonl"
    server = smtpd()
    config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)
    other = "other@example.com"
    for to, sent in ((TO, 1), (other, 2), (other, 2)):
        proc = run(["run", plugins["hello"], "--config", config, "--input-text", to, "--job", "order-5", "--json"])
        assert_exit(proc, 0)
        assert len(server.messages) == sent, describe(proc)
    assert [m.rcpt_tos for m in server.messages] == [[TO], [other]]


def test_an_outbox_job_killed_before_its_file_writes_it_on_redelivery(run, plugins, tmp_path):
    """Outbox mail is written ahead too: an `attempt` record naming the
    file, then the file, then `accepted`. A redelivery after a kill between
    the record and the file writes it; after the file, it does not."""
    outbox, audit = tmp_path / "outbox", tmp_path / "audit.jsonl"
    config = tmp_path / "wasmail.toml"
    config.write_text(f"""
audit = "{audit}"
outbox = "{outbox}"
[plugins.hello]
allowed_from = ["*@example.com"]
default_from = "hello@example.com"
allowed_recipients = ["*@example.com"]
allowed_headers = ["X-Mailer"]
""")
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-6", "--json"])
    assert_exit(proc, 0)
    records = [json.loads(l) for l in audit.read_text().splitlines()]
    assert [r["outcome"] for r in records] == ["attempt", "accepted"], records
    assert records[0]["outbox"] == records[1]["outbox"] and Path(records[0]["outbox"]).exists()
    # As if killed after the attempt record: no file, no `accepted`.
    Path(records[0]["outbox"]).unlink()
    audit.write_text(json.dumps(records[0]) + "\n")
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-6", "--json"])
    assert_exit(proc, 0)
    assert json.loads(proc.stdout)["counts"]["accepted"] == 1, describe(proc)
    assert len(list(outbox.glob("*.eml"))) == 1
    # Killed after the file, before `accepted`: the file is the record.
    records = [json.loads(l) for l in audit.read_text().splitlines()]
    audit.write_text("".join(json.dumps(r) + "\n" for r in records if r["outcome"] != "accepted"))
    proc = run(["run", plugins["hello"], "--config", config, "--input-text", TO, "--job", "order-6", "--json"])
    assert_exit(proc, 0)
    assert json.loads(proc.stdout)["counts"]["skipped"] == 1, describe(proc)
    assert len(list(outbox.glob("*.eml"))) == 1


def test_a_job_id_is_the_plugin_s(run, plugins, smtpd, tmp_path):
    """Two plugins given the same job id (one client key, two plugins) run
    two jobs: the second plugin's message is not taken as already sent."""
    folder, audit = tmp_path / "dead", tmp_path / "audit.jsonl"
    server = smtpd()
    config = plugin_config(tmp_path / "wasmail.toml", server.address, audit, folder)
    hello_table = config.read_text().split("[plugins.hello]")[1]
    config.write_text(config.read_text() + "[plugins.twin]" + hello_table)
    for name, sent in (("hello", 1), ("twin", 2), ("twin", 2)):
        proc = run(["run", plugins["hello"], "--name", name, "--config", config, "--input-text", TO,
                    "--job", "order-8", "--json"])
        assert_exit(proc, 0)
        assert len(server.messages) == sent, describe(proc)


def test_retry_s_password_goes_to_no_relay_of_several_without_server(run, tmp_path):
    """Letters kept for two relays, and one password given: retry cannot
    say which relay it is for, and sends it to neither (it once went to
    both)."""
    folder = tmp_path / "dead"
    for _ in range(2):
        proc = run(send_args(f"127.0.0.1:{free_port()}", folder))
        assert proc.returncode != 0, describe(proc)
    assert len({m["relay"]["server"] for m in letters(folder)}) == 2
    proc = run(["retry", "--dead-letter", folder, "--user", "u", "--password-env", "WASMAIL_TEST_PASSWORD"])
    assert_exit(proc, 64)
    assert "give --server" in proc.stderr + proc.stdout, describe(proc)
    assert len(letters(folder)) == 2


def test_retry_s_password_goes_to_no_account_of_several_on_one_relay(run, tmp_path):
    """Letters kept for two users of the same relay: one password given,
    and no --server to say whose it is: refused."""
    folder = tmp_path / "dead"
    port = free_port()
    for user in ("u1", "u2"):
        proc = run([*send_args(f"127.0.0.1:{port}", folder), "--user", user, "--password-env", "WASMAIL_TEST_PASSWORD"])
        assert proc.returncode != 0, describe(proc)
    assert sorted(m["relay"]["user"] for m in letters(folder)) == ["u1", "u2"]
    proc = run(["retry", "--dead-letter", folder, "--password-env", "WASMAIL_TEST_PASSWORD"])
    assert_exit(proc, 64)
    assert "relay accounts" in proc.stderr + proc.stdout, describe(proc)
