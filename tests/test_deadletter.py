"""No lost mail: what the relay does not take goes to the dead-letter folder
with its exact bytes, envelope and reason; `wasmail retry` resends it; a
message whose outcome is unknown is kept, marked, and only resent with
--force. And the relay killed in the middle of a plugin run: every message is
either accepted or kept."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from cli import assert_exit, describe, relay
from scripted import Close, Expect, Send

FROM = "sender@example.com"
TO = "rcpt@example.com"


def letters(folder: Path) -> list[dict]:
    """The `.json` of every complete letter in `folder`."""
    if not folder.exists():
        return []
    out = []
    for meta in sorted(folder.glob("*.json")):
        assert meta.with_suffix(".eml").exists(), f"{meta} has no .eml"
        out.append(json.loads(meta.read_text()))
    return out


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
    eml = (folder / f"{meta['message_id']}.json").with_suffix(".eml").read_bytes()
    assert b"Subject: keep me\r\n" in eml and eml.endswith(b"\r\n")

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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (audit.exists() and audit.read_text().count("\n") >= 200):
        time.sleep(0.05)
    sink.stop()  # kill the relay mid-run
    out, err = proc.communicate(timeout=60)
    records = [json.loads(l) for l in audit.read_text().splitlines() if l.strip()]
    accepted = [r for r in records if r["outcome"] == "accepted"]
    failed = [r for r in records if r["outcome"] != "accepted"]
    assert len(accepted) >= 200, (len(accepted), err)
    assert failed, f"the relay died, so a send must have failed: {err}"
    kept = letters(folder)
    for r in failed:
        assert r.get("dead_letter"), f"not kept: {r}"
        assert Path(r["dead_letter"]).exists()
    assert {m["message_id"] for m in kept} >= {r["message_id"] for r in failed if r.get("message_id")}
    assert len(kept) == len(failed)
    report = json.loads(out)
    assert report["accepted"] == len(accepted)

    # Bring a relay back and retry: the folder empties.
    sink2 = smtp_sink()
    proc2 = run(["retry", *relay(f"127.0.0.1:{sink2.port}"), "--dead-letter", folder])
    unknown = [m for m in kept if m["outcome_unknown"]]
    assert proc2.returncode == 0, describe(proc2)
    assert len(letters(folder)) == len(unknown)
