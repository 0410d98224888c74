"""Acceptance tests of `wasmail worker` (issue #15): plugin jobs from a NATS
JetStream work-queue stream, run at least once by several worker processes,
the job id keeping every message from reaching the relay twice.

A real nats-server (the `nats` fixture), real `wasmail worker` processes and
the recording aiosmtpd relay. Jobs are published, and the streams read back,
with nats-py. Each job runs the bulk plugin with a recipient of its own
(`<job>@example.com`) and numbered subjects (`bulk k/M`), so the relay's
record tells which message of which job arrived how often.
"""

from __future__ import annotations

import asyncio
import email
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import nats as natspy
import pytest

from servers import free_port
from test_plugins import policy, relay_table, write_config
from test_serve import START_TIMEOUT_S, TOKENS, Setup, serve, write_tokens  # noqa: F401 (serve: a fixture)

STREAM = "WASMAIL_RUNS"
SUBJECT = "wasmail.runs"
DEAD_STREAM = "WASMAIL_RUNS_DEAD"
DEAD_SUBJECT = "wasmail.runs.dead"
CONSUMER = "workers"

# How long a worker may take to start (loading the plugins: compiling them
# the first time) and to say so on stderr.
WORKER_START_TIMEOUT_S = 120
# How long a test's jobs may take, all together, on a loaded 2-core machine.
JOBS_TIMEOUT_S = 240
# How long a worker may take to exit after SIGTERM (it finishes its job).
WORKER_STOP_TIMEOUT_S = 60
# How long a NATS request from the test may take.
NATS_TIMEOUT_S = 10
POLL_S = 0.1
# The line `wasmail worker` logs (WASMAIL_LOG=wasmail::worker=info) once its
# stream and consumer are there.
READY = "worker started"
EXIT_OK = 0


# ---------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------

class Worker:
    """One `wasmail worker` process; stdout and stderr go to files."""

    def __init__(self, wasmail: Path, workdir: Path, name: str, config: Path, url: str,
                 extra: list[str]):
        self.name = name
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        env = dict(os.environ, WASMAIL_LOG="wasmail::worker=info")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [str(wasmail), "worker", "--config", str(config), "--nats", url, *extra],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=workdir, env=env)

    def lines(self) -> list[dict]:
        """The job lines so far (a last line still being written is left out)."""
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while READY not in self.stderr():
            if self.proc.poll() is not None:
                pytest.fail(f"worker {self.name} exited {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.name} not ready in {WORKER_START_TIMEOUT_S}s:\n{self.stderr()}")
            time.sleep(POLL_S)

    def stop(self) -> int:
        """SIGTERM, then wait: the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"worker {self.name} did not stop within {WORKER_STOP_TIMEOUT_S}s after SIGTERM")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def workers(wasmail: Path, tmp_path: Path):
    """Factory: `workers(config, url, n=1, extra=()) -> list[Worker]`, each
    ready (its stream and consumer exist). Killed at teardown if still up."""
    started: list[Worker] = []

    def _start(config: Path, url: str, n: int = 1, extra=()) -> list[Worker]:
        new = [Worker(wasmail, tmp_path, f"worker{len(started) + i}", config, url, list(extra))
               for i in range(n)]
        started.extend(new)
        for w in new:
            w.wait_ready()
        return new

    yield _start
    for w in started:
        w.kill()


def all_lines(ws: list[Worker]) -> list[dict]:
    return [dict(line, worker=w.name) for w in ws for line in w.lines()]


def diagnostics(ws: list[Worker]) -> str:
    return "\n".join(f"--- {w.name} (rc {w.proc.poll()}) stderr ---\n{w.stderr()[-3000:]}\n"
                     f"--- {w.name} stdout ---\n{w.out.read_text(errors='replace')[-3000:]}"
                     for w in ws)


# ---------------------------------------------------------------------------
# NATS, from the test's side
# ---------------------------------------------------------------------------

def nats_call(url: str, fn):
    """Run `await fn(js)` on a fresh connection."""
    async def go():
        nc = await natspy.connect(url, connect_timeout=NATS_TIMEOUT_S, max_reconnect_attempts=0,
                                  allow_reconnect=False)
        try:
            return await fn(nc.jetstream(timeout=NATS_TIMEOUT_S))
        finally:
            await nc.close()
    return asyncio.run(go())


def publish(url: str, jobs: list, *, retry_for: float = 0.0) -> None:
    """Publish each job (a dict, or raw bytes with its own message id) with
    `Nats-Msg-Id`, waiting for the stream's acknowledgement; with
    `retry_for`, keep trying that long (a server restarting)."""
    async def go(js):
        for job in jobs:
            if isinstance(job, tuple):
                msg_id, payload = job
            else:
                msg_id, payload = job["id"], json.dumps(job).encode()
            await js.publish(SUBJECT, payload, headers={"Nats-Msg-Id": msg_id})
    deadline = time.monotonic() + retry_for
    while True:
        try:
            return nats_call(url, go)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def queue_state(url: str, stream: str = STREAM) -> tuple[int, int, int]:
    """(messages in the job stream, unacknowledged deliveries, not yet delivered)."""
    async def go(js):
        si = await js.stream_info(stream)
        ci = await js.consumer_info(stream, CONSUMER)
        return si.state.messages, ci.num_ack_pending, ci.num_pending
    return nats_call(url, go)


def dead_letters(url: str) -> list[tuple[dict, bytes]]:
    """Every message of the dead-letter stream: (headers, payload)."""
    async def go(js):
        si = await js.stream_info(DEAD_STREAM)
        out = []
        if si.state.messages == 0:
            return out
        for seq in range(si.state.first_seq, si.state.last_seq + 1):
            m = await js.get_msg(DEAD_STREAM, seq)
            out.append((dict(m.headers or {}), m.data))
        return out
    return nats_call(url, go)


def wait_for(what: str, done: Callable[[], bool], ws: list[Worker], timeout: float = JOBS_TIMEOUT_S) -> float:
    """Poll `done` until true: the seconds it took."""
    start = time.monotonic()
    while True:
        try:
            if done():
                return time.monotonic() - start
        except Exception as e:  # a server restarting: ask again
            last = e
        else:
            last = None
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout}s (last error: {last!r})\n{diagnostics(ws)}")
        time.sleep(POLL_S)


def finished(ws: list[Worker], ids: set[str]) -> set[str]:
    return {l["job"] for l in all_lines(ws) if l.get("result") in ("done", "dead-letter")} & ids


def stream_messages(url: str, stream: str) -> int:
    async def go(js):
        return (await js.stream_info(stream)).state.messages
    return nats_call(url, go)


def drained(url: str, stream: str = STREAM) -> bool:
    messages, ack_pending, pending = queue_state(url, stream)
    return messages == 0 and ack_pending == 0 and pending == 0


# ---------------------------------------------------------------------------
# Jobs, the relay, the audit log
# ---------------------------------------------------------------------------

def bulk_job(job_id: str, count: int, size: int = 256) -> dict:
    return {"id": job_id, "plugin": "bulk",
            "input": json.dumps({"count": count, "to": f"{job_id}@example.com", "size": size})}


def relay_counts(server) -> Counter:
    """(job, subject) -> how many times the relay took it."""
    out: Counter = Counter()
    for m in list(server.messages):
        subject = email.message_from_bytes(m.content)["Subject"]
        for rcpt in m.rcpt_tos:
            out[(rcpt.split("@")[0], str(subject))] += 1
    return out


def expected(job_id: str, count: int) -> set:
    return {(job_id, f"bulk {k}/{count}") for k in range(1, count + 1)}


def audit_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


@pytest.fixture
def config_for(tmp_path: Path, plugins):
    """`config_for(relay, dead_letter=None)`: a wasmail.toml with the bulk
    plugin (its `path` set), the audit log and dead-letter folder in tmp."""
    def _make(relay: dict, dead_letter: Optional[Path] = None, max_messages: int = 500) -> Path:
        return write_config(
            tmp_path / "wasmail.toml",
            audit=tmp_path / "audit.jsonl",
            dead_letter=dead_letter or tmp_path / "dead-letter",
            relay=relay,
            plugins={"bulk": {**policy("bulk", max_messages=max_messages),
                              "path": plugins["bulk"]}})
    return _make


def slow_down(server, seconds: float) -> None:
    """Make the relay take `seconds` per message (after DATA, before its
    reply): a job of many messages is then in flight long enough to be
    interrupted."""
    handler = server.handler
    original = handler.handle_DATA

    async def slow(*args):
        await asyncio.sleep(seconds)
        return await original(*args)
    handler.handle_DATA = slow


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------

def test_three_workers_run_every_job_once(nats, smtpd, workers, config_for, tmp_path):
    server = nats()
    relay = smtpd()
    config = config_for(relay_table(relay))
    ws = workers(config, server.url, n=3)
    jobs_n, count = 24, 5
    jobs = [bulk_job(f"job{i}", count) for i in range(jobs_n)]
    # The same job published twice is stored once (Nats-Msg-Id).
    publish(server.url, jobs + jobs[:3])
    ids = {j["id"] for j in jobs}
    took = wait_for("every job done", lambda: finished(ws, ids) == ids and drained(server.url), ws)
    print(f"\n{jobs_n} jobs of {count} messages, 3 workers: {took:.1f} s, "
          f"{jobs_n / took:.1f} jobs/s, {jobs_n * count / took:.0f} messages/s")

    counts = relay_counts(relay)
    want = set().union(*(expected(j["id"], count) for j in jobs))
    assert set(counts) == want
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1]
    lines = all_lines(ws)
    done = Counter(l["job"] for l in lines if l["result"] == "done")
    assert done == Counter({i: 1 for i in ids}), done
    for l in lines:
        assert l["plugin"] == "bulk" and l["output"] == "ok" and l["answered"] is True
        assert l["counts"]["accepted"] == count and l["delivered"] == 1
    # Work was shared.
    assert len({l["worker"] for l in lines}) >= 2
    # Every audit record of a run names its job.
    records = [r for r in audit_records(tmp_path / "audit.jsonl") if r.get("outcome") == "accepted"]
    assert Counter(r["job"] for r in records) == Counter({i: count for i in ids})
    assert dead_letters(server.url) == []
    for w in ws:
        assert w.stop() == EXIT_OK, diagnostics([w])


def test_killed_worker_job_is_redelivered_not_sent_twice(nats, smtpd, workers, config_for, tmp_path):
    server = nats()
    relay = smtpd()
    slow_down(relay, 0.03)
    config = config_for(relay_table(relay))
    ack_wait = ["--ack-wait", "2"]
    (first,) = workers(config, server.url, n=1, extra=ack_wait)
    count = 120
    victim = bulk_job("victim", count, size=2048)
    publish(server.url, [victim])

    def victim_at_relay() -> int:
        return sum(n for (job, _), n in relay_counts(relay).items() if job == "victim")
    wait_for("the victim's first messages at the relay", lambda: victim_at_relay() >= 5, [first])
    first.kill()
    at_kill = victim_at_relay()
    assert at_kill < count, "the job finished before the kill: make it longer"

    others = workers(config, server.url, n=2, extra=ack_wait)
    more = [bulk_job(f"after{i}", 3) for i in range(4)]
    publish(server.url, more)
    ids = {"victim"} | {j["id"] for j in more}
    ws = [first, *others]
    wait_for("every job done", lambda: finished(ws, ids) == ids and drained(server.url), ws)

    counts = relay_counts(relay)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1]
    for j in more:
        assert {k for k in counts if k[0] == j["id"]} == expected(j["id"], 3)
    # The victim's messages: each at the relay once, or kept as outcome
    # unknown (written ahead to the spool, no outcome recorded): none lost.
    records = [r for r in audit_records(tmp_path / "audit.jsonl") if r.get("job") == "victim"]
    outcome: dict[int, set] = {}
    for r in records:
        outcome.setdefault(r["seq"], set()).add(r["outcome"])
    kept = b"".join(p.read_bytes() for p in (tmp_path / "dead-letter").rglob("*") if p.is_file())
    message_ids = {r["seq"]: r.get("message_id") for r in records if r.get("message_id")}
    for k in range(1, count + 1):
        seen = counts.get(("victim", f"bulk {k}/{count}"), 0)
        if seen == 0:
            assert "accepted" not in outcome.get(k, set()), k
            assert "attempt" in outcome.get(k, set()), (k, outcome.get(k))
            assert message_ids.get(k) and message_ids[k].encode() in kept, k
    # The redelivery sent nothing again: it skipped what the first attempted.
    # The redelivery skipped exactly what the killed delivery had attempted
    # (its batches written ahead before the kill) and sent the rest itself.
    first_skip = next(i for i, r in enumerate(records) if r["outcome"] == "skipped")
    skipped = {r["seq"] for r in records if r["outcome"] == "skipped"}
    attempted = {r["seq"] for r in records[:first_skip] if r["outcome"] == "attempt"}
    assert skipped and skipped == attempted, (skipped, attempted)
    unknown = [k for k in range(1, count + 1) if counts.get(("victim", f"bulk {k}/{count}"), 0) == 0]
    print(f"\nkilled with {at_kill} of {count} messages at the relay; redelivery skipped "
          f"{len(skipped)}; kept as outcome unknown, not at the relay: {len(unknown)}")
    victim_lines = [l for l in all_lines(ws) if l.get("job") == "victim"]
    assert [l["worker"] for l in victim_lines if l["result"] == "done"] != [first.name]
    assert max(l["delivered"] for l in victim_lines) >= 2
    for w in others:
        assert w.stop() == EXIT_OK, diagnostics([w])


def test_nats_restart_while_workers_run(nats, smtpd, workers, config_for):
    server = nats()
    relay = smtpd()
    config = config_for(relay_table(relay))
    ws = workers(config, server.url, n=3, extra=["--ack-wait", "3"])
    count = 4
    before = [bulk_job(f"before{i}", count) for i in range(10)]
    after = [bulk_job(f"after{i}", count) for i in range(10)]
    publish(server.url, before)
    wait_for("some jobs done", lambda: len(finished(ws, {j["id"] for j in before})) >= 2, ws)
    server.restart()
    publish(server.url, after, retry_for=60)
    ids = {j["id"] for j in before + after}
    wait_for("every job done", lambda: finished(ws, ids) == ids and drained(server.url), ws)

    counts = relay_counts(relay)
    want = set().union(*(expected(i, count) for i in ids))
    assert set(counts) == want
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1]
    for w in ws:
        assert w.proc.poll() is None, diagnostics([w])
        assert w.stop() == EXIT_OK, diagnostics([w])


def test_transient_failure_is_retried_after_a_nak(nats, smtpd, workers, config_for, tmp_path):
    """The host cannot keep the job's messages on its first delivery (the
    dead-letter folder is a file, so its spool cannot be made): the run is
    stopped by the host, the job nak'ed, and delivered again once the
    folder can be made; its messages reach the relay once."""
    server = nats()
    relay = smtpd()
    folder = tmp_path / "dl"
    folder.write_text("not a folder\n")
    config = config_for(relay_table(relay), dead_letter=folder)
    ws = workers(config, server.url, n=1, extra=["--nak-delay", "1", "--max-deliver", "5"])
    count = 5
    publish(server.url, [bulk_job("flaky", count)])
    wait_for("a retry", lambda: any(l["result"] == "retry" for l in all_lines(ws)), ws)
    folder.unlink()
    folder.mkdir()
    wait_for("the job done", lambda: finished(ws, {"flaky"}) == {"flaky"} and drained(server.url), ws)

    counts = relay_counts(relay)
    assert set(counts) == expected("flaky", count)
    assert all(n == 1 for n in counts.values())
    lines = all_lines(ws)
    retry = [l for l in lines if l["result"] == "retry"]
    assert retry and "host" in retry[0]["reason"] and retry[0]["answered"] is True
    (done,) = [l for l in lines if l["result"] == "done"]
    assert done["delivered"] >= 2 and done["counts"]["accepted"] == count
    assert dead_letters(server.url) == []
    assert ws[0].stop() == EXIT_OK


def test_failing_and_malformed_jobs_go_to_the_dead_letter_subject(nats, workers, config_for):
    """A relay that cannot be resolved: the run cannot start, every
    delivery is nak'ed until --max-deliver, then the job is dead-lettered.
    A malformed job and one for an unknown plugin go there at once."""
    server = nats()
    config = config_for({"server": "relay.invalid:2525", "tls": "none"})
    ws = workers(config, server.url, n=2, extra=["--nak-delay", "0.5", "--max-deliver", "3"])
    publish(server.url, [
        bulk_job("doomed", 2),
        ("garbage", b"this is not a job"),
        {"id": "stray", "plugin": "nosuch", "input": ""},
    ])
    wait_for("three dead letters",
             lambda: len(dead_letters(server.url)) == 3 and drained(server.url), ws)

    dead = {h.get("Wasmail-Job", "?"): (h, body) for h, body in dead_letters(server.url)}
    assert set(dead) == {"doomed", "stray", "?"}
    h, body = dead["doomed"]
    assert h["Wasmail-Delivered"] == "3" and "could not start" in h["Wasmail-Reason"]
    assert json.loads(body)["id"] == "doomed"
    assert dead["stray"][0]["Wasmail-Delivered"] == "1" and "nosuch" in dead["stray"][0]["Wasmail-Reason"]
    assert dead["?"][1] == b"this is not a job" and dead["?"][0]["Wasmail-Delivered"] == "1"
    lines = all_lines(ws)
    assert [l["result"] for l in lines if l.get("job") == "doomed"].count("retry") == 2
    for w in ws:
        assert w.stop() == EXIT_OK, diagnostics([w])


def test_sigterm_finishes_the_job_in_hand(nats, smtpd, workers, config_for):
    """SIGTERM mid-job: the worker stops fetching, finishes and acknowledges
    the job it has, and exits 0; the next job waits in the stream."""
    server = nats()
    relay = smtpd()
    slow_down(relay, 0.03)
    config = config_for(relay_table(relay))
    (w,) = workers(config, server.url, n=1)
    count = 60
    publish(server.url, [bulk_job("inhand", count), bulk_job("next", 2)])
    wait_for("the job under way", lambda: len(relay_counts(relay)) >= 3, [w])
    w.proc.send_signal(signal.SIGTERM)
    assert w.stop() == EXIT_OK, diagnostics([w])

    counts = relay_counts(relay)
    assert set(counts) == expected("inhand", count)
    assert all(n == 1 for n in counts.values())
    (line,) = [l for l in w.lines() if l.get("job") == "inhand"]
    assert line["result"] == "done" and line["answered"] is True
    messages, ack_pending, _ = queue_state(server.url)
    assert (messages, ack_pending) == (1, 0)


# ---------------------------------------------------------------------------
# `wasmail serve --queue`: runs handed to the workers
# ---------------------------------------------------------------------------

def bulk_input(tag: str, count: int) -> str:
    return json.dumps({"count": count, "to": f"{tag}@example.com", "size": 256})


def dead_letters_of(url: str, stream: str) -> int:
    async def go(js):
        return (await js.stream_info(stream + "_DEAD")).state.messages
    return nats_call(url, go)


def test_serve_queue_hands_runs_to_workers(nats, smtpd, serve, workers, config_for, tmp_path):
    """`serve --queue --stream S`: each POST is published as a job and
    answered 202 with its id; a POST repeated with its Idempotency-Key is
    stored once (Nats-Msg-Id), even with another input; two workers on S
    run every job once."""
    server = nats()
    relay = smtpd()
    stream = "SERVE_RUNS"
    config = config_for(relay_table(relay))
    setup = Setup(config, write_tokens(tmp_path / "tokens.toml", TOKENS),
                  tmp_path / "audit.jsonl", tmp_path / "dead-letter")
    api = serve(setup, "--queue", server.url, "--stream", stream)
    count = 3
    tag_of: dict[str, str] = {}  # job id -> the recipient tag of its input
    for i in range(5):
        a = api.run("bulk", bulk_input(f"plain{i}", count))
        assert a.status == 202, a
        body = a.json()
        assert set(body) == {"job", "plugin", "queued"}, body
        assert body["plugin"] == "bulk" and body["queued"] is True, body
        assert body["job"] not in tag_of, body
        tag_of[body["job"]] = f"plain{i}"
    for i in range(5):
        key = f"order-{i}:x_y.z"
        # The client's retry carries another input: the first one stands.
        for tag in (f"keyed{i}", f"retry{i}"):
            a = api.run("bulk", bulk_input(tag, count), headers={"Idempotency-Key": key})
            assert a.status == 202, a
            assert a.json() == {"job": key, "plugin": "bulk", "queued": True}, a
        tag_of[key] = f"keyed{i}"
    ids = set(tag_of)
    assert len(ids) == 10
    # Ten jobs in the stream, the repeated ones stored once.
    assert stream_messages(server.url, stream) == 10

    ws = workers(config, server.url, n=2, extra=["--stream", stream])
    took = wait_for("every job done",
                    lambda: finished(ws, ids) == ids and drained(server.url, stream), ws)
    print(f"\n10 jobs through serve, 2 workers: {took:.1f} s")

    counts = relay_counts(relay)
    want = set().union(*(expected(tag, count) for tag in tag_of.values()))
    assert set(counts) == want, sorted(set(counts) ^ want)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n != 1]
    lines = all_lines(ws)
    done = Counter(l["job"] for l in lines if l["result"] == "done")
    assert done == Counter({i: 1 for i in ids}), done
    for l in lines:
        assert l["plugin"] == "bulk" and l["output"] == "ok", l
        assert l["counts"]["accepted"] == count and l["delivered"] == 1, l
    records = audit_records(tmp_path / "audit.jsonl")
    accepted = [r for r in records if r.get("outcome") == "accepted"]
    assert Counter(r["job"] for r in accepted) == Counter({i: count for i in ids})
    assert not [r for r in records if r.get("outcome") == "skipped"]
    assert stream_messages(server.url, stream) == 0
    assert dead_letters_of(server.url, stream) == 0
    assert api.proc.poll() is None, api.stderr()
    for w in ws:
        assert w.stop() == EXIT_OK, diagnostics([w])


def test_serve_queue_without_a_nats_server_refuses_to_start(serve, smtpd, config_for, tmp_path):
    config = config_for(relay_table(smtpd()))
    setup = Setup(config, write_tokens(tmp_path / "tokens.toml", TOKENS),
                  tmp_path / "audit.jsonl", tmp_path / "dead-letter")
    url = f"nats://127.0.0.1:{free_port()}"
    api = serve(setup, "--queue", url, "--stream", "NOWHERE", wait=False)
    code = api.wait_exit(START_TIMEOUT_S)
    assert code != 0, api.stderr()
    assert f"queue {url}" in api.stderr(), api.stderr()
    assert "listening" not in api.stderr(), api.stderr()
