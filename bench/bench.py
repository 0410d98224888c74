#!/usr/bin/env python3
"""`make bench`: wasmail against its anchors, all in one run, on one
Postfix smtp-sink on loopback and on a private full Postfix smtpd (and
DKIM-signed against unsigned sends). Every figure is the median of several
runs, interleaved tool by tool, and every comparison is a ratio taken in
this run (these machines are noisy).

Writes target/bench/results.json, results.md and throughput.svg. This is a
benchmark, not a test: it asserts nothing and never fails on a figure.
"""

from __future__ import annotations

import ast
import grp
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
WASMAIL = ROOT / "target" / "release" / "wasmail"
PLUGINS = ROOT / "target" / "wasm32-wasip2" / "release"
LETTRE = ROOT / "target" / "release" / "lettre-anchor"
MICRO = ROOT / "target" / "release" / "microbench"

#: Runs per figure; the median is reported.
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
#: The bulk plugin's run: 20,000 messages of 2 KB.
BULK_COUNT = int(os.environ.get("BENCH_BULK", "20000"))
#: `relay.sessions` of the send-many runs (`wasmail_run`); the
#: `_one_session` and `_one_by_one` rows use one session.
BENCH_SESSIONS = 8
#: Sessions of the `smtp-source` run that shows what the relay itself can
#: take on this machine (its ceiling for any client).
CEILING_SESSIONS = 8
#: Messages per run against the full Postfix smtpd (each one is queued by
#: cleanup and discarded by qmgr: a real relay's cost).
POSTFIX_COUNT = int(os.environ.get("BENCH_POSTFIX", "5000"))
MESSAGE_BYTES = 2048
#: Anchors that are much slower get fewer messages (their rate is what counts).
SMTPLIB_COUNT = 5000
LETTRE_COUNT = 200
#: One-shot latency: runs per tool.
ONESHOT_RUNS = 15
#: Instantiation rounds.
INSTANTIATE_ROUNDS = 2000
#: The large attachment.
ATTACHMENT_MIB = int(os.environ.get("BENCH_ATTACHMENT_MIB", "1024"))
# The hello plugin in each language: first run (its compile included, the
# mailer's not) and cached run, wall time and peak RSS of the process.
HELLO_PLUGINS = {
    "rust": "wasmail_plugin_hello.wasm",
    "python": "wasmail_plugin_python_hello.wasm",
    "js": "wasmail_plugin_js_hello.wasm",
}
# First runs compile 12-18 MB components (10-70 s each): fewer of them.
COMPILE_RUNS = int(os.environ.get("BENCH_COMPILE_RUNS", "2"))
#: DKIM: messages per `send --repeat` run, signed and unsigned interleaved.
DKIM_COUNT = int(os.environ.get("BENCH_DKIM", "5000"))
#: `wasmail serve` under load: runs of the hello plugin per round, by this
#: many concurrent keep-alive clients; against `wasmail run` once per
#: process, this many times in a row per round.
SERVE_RUNS = int(os.environ.get("BENCH_SERVE_RUNS", "2000"))
SERVE_CONCURRENCY = int(os.environ.get("BENCH_SERVE_CONCURRENCY", "16"))
SERVE_CLI_RUNS = int(os.environ.get("BENCH_SERVE_CLI_RUNS", "50"))
SERVE_START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def sink_binary() -> str:
    for cand in (shutil.which("smtp-sink"), "/usr/sbin/smtp-sink"):
        if cand and Path(cand).exists():
            return cand
    raise SystemExit("smtp-sink not found: make setup installs postfix")


def timed(cmd: list[str], **kw) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    return time.perf_counter() - t


def median(f, runs: int = RUNS) -> float:
    return statistics.median(f() for _ in range(runs))


def interleaved(tools: dict, runs: int = RUNS) -> dict[str, float]:
    """The median of each tool's figure, its runs interleaved round by round
    with the others', so drift on a shared machine hits every tool alike."""
    figures: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(runs):
        for name, f in tools.items():
            figures[name].append(f())
    return {name: statistics.median(v) for name, v in figures.items()}


# ---------------------------------------------------------------------------
# A private Postfix smtpd: a strict, complete relay beside smtp-sink (the same
# set-up as the tests' servers.PostfixSmtpd), for the relay a real user runs.
# ---------------------------------------------------------------------------

#: Where the Postfix configuration is written once, as literals.
SERVERS_PY = ROOT / "tests" / "servers.py"
POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")
POSTFIX_START_TIMEOUT_S = 10.0
POSTFIX_STOP_TIMEOUT_S = 5.0
POSTFIX_START_ATTEMPTS = 3
#: Configuration files are dated this far back: Postfix rereads a main.cf
#: younger than a second, 0.3 s apart, which would cost every start ~2 s.
POSTFIX_CONFIG_AGE_S = 10


def postfix_config() -> dict:
    """POSTFIX_MAIN_CF, POSTFIX_MASTER_CF, POSTFIX_DIRS and SMTPD_HOSTNAME
    from tests/servers.py. That module imports aiosmtpd, so it is parsed,
    not imported: the texts stay written once, and this script keeps to the
    standard library."""
    wanted = {"POSTFIX_MAIN_CF", "POSTFIX_MASTER_CF", "POSTFIX_DIRS", "SMTPD_HOSTNAME"}
    found = {}
    for node in ast.parse(SERVERS_PY.read_text()).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id in wanted):
            found[node.targets[0].id] = ast.literal_eval(node.value)
    missing = wanted - found.keys()
    if missing:
        raise RuntimeError(f"{SERVERS_PY} no longer defines {sorted(missing)} as literals")
    return found


def with_sessions(config: Path, sessions: int) -> Path:
    """A copy of `config` beside it whose [relay] has `sessions`."""
    out = config.with_name(f"{config.stem}-sessions{sessions}.toml")
    out.write_text(config.read_text().replace('tls = "none"\n', f'tls = "none"\nsessions = {sessions}\n', 1))
    return out


def start_postfix_smtpd(work: Path) -> tuple[subprocess.Popen, int, Path]:
    """A private Postfix under `work/postfix`, its smtpd on 127.0.0.1:<free
    port>, configured as the tests' PostfixSmtpd: any domain accepted from
    127.0.0.0/8 and discarded, PIPELINING and CHUNKING on, improper
    pipelining and bare LF refused, no size limit, no per-client limits.

    Returns (master process, port, log file) once the port greets with
    220. Needs root (Postfix's master runs as root, its daemons as
    `postfix`); makes `work` searchable (0711) so that they reach the queue.
    Stop it with `stop_postfix_smtpd` before `work` is removed.
    """
    if os.geteuid() != 0 or not os.access(POSTFIX_MASTER, os.X_OK):
        raise RuntimeError(f"a private Postfix needs root and {POSTFIX_MASTER}")
    cfg = postfix_config()
    work.chmod(0o711)
    root = work / "postfix"
    for path, owner, group, mode in cfg["POSTFIX_DIRS"]:
        d = root / path
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        d.chmod(mode)
    root.chmod(0o755)
    past = time.time() - POSTFIX_CONFIG_AGE_S

    def write(name: str, text: str) -> None:
        (root / "etc" / name).write_text(text)
        os.utime(root / "etc" / name, (past, past))

    write("main.cf", cfg["POSTFIX_MAIN_CF"].format(
        root=root, hostname=cfg["SMTPD_HOSTNAME"], discard_ehlo_keywords=""))
    logfile = root / "maillog"
    for _ in range(POSTFIX_START_ATTEMPTS):
        port = free_port()
        write("master.cf", cfg["POSTFIX_MASTER_CF"].format(address=f"127.0.0.1:{port}"))
        with open(root / "master.err", "wb") as err:
            # Foreground (-d); its own session makes it a process group
            # leader, which it must be to pass SIGTERM on to its daemons.
            proc = subprocess.Popen([str(POSTFIX_MASTER), "-d", "-c", str(root / "etc")],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    start_new_session=True)
        deadline = time.monotonic() + POSTFIX_START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=POSTFIX_START_TIMEOUT_S) as s:
                    f = s.makefile("rb")
                    if f.readline().startswith(b"220 "):
                        s.sendall(b"QUIT\r\n")
                        f.readline()
                        return proc, port, logfile
                    break
            except OSError:
                time.sleep(0.02)
        stop_postfix_smtpd(proc)
        logfile.unlink(missing_ok=True)
    raise RuntimeError(f"Postfix did not start: {(root / 'master.err').read_text(errors='replace')}")


def stop_postfix_smtpd(proc: subprocess.Popen) -> None:
    """SIGTERM to the master (which passes it on), SIGKILL to its whole
    process group if it outlives POSTFIX_STOP_TIMEOUT_S."""
    proc.terminate()
    try:
        proc.wait(POSTFIX_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def postfix_delivered(logfile: Path) -> int:
    """How many recipients the discard transport has taken so far."""
    try:
        text = logfile.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines()
               if "postfix/discard[" in line and " status=sent " in line)


SMTPLIB_SCRIPT = """
import smtplib, sys, time
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line = "x" * 70 + "\\r\\n"
body = (line * (size // len(line) + 1))[:size]
msg = "From: bench@example.com\\r\\nTo: sink@example.com\\r\\nSubject: smtplib\\r\\n\\r\\n" + body
s = smtplib.SMTP("127.0.0.1", port)
t = time.perf_counter()
for i in range(count):
    s.sendmail("bench@example.com", ["sink@example.com"], msg)
print(count / (time.perf_counter() - t))
s.quit()
"""


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wasmail-bench-"))
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([sink_binary(), *user, f"127.0.0.1:{port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        results = run_all(work, port)
    finally:
        sink.terminate()
        sink.wait(timeout=5)
        shutil.rmtree(work, ignore_errors=True)
    write_outputs(results)


def run_all(work: Path, port: int) -> dict:
    env = dict(os.environ, WASMAIL_CACHE_DIR=str(work / "cache"))
    server = f"127.0.0.1:{port}"
    config = work / "bench.toml"
    config.write_text(f"""
audit = "{work / 'audit.jsonl'}"
[relay]
server = "{server}"
tls = "none"
[plugins.bulk]
allowed_from = ["*"]
default_from = "bulk@example.com"
allowed_recipients = ["*"]
allowed_headers = ["X-Mailer"]
max_messages = 1000000
cpu_ms = 600000
wall_ms = 600000
[plugins.hello]
allowed_from = ["*"]
default_from = "hello@example.com"
allowed_recipients = ["*"]
allowed_headers = ["X-Mailer"]
[plugins.python_hello]
allowed_from = ["*"]
default_from = "hello@example.com"
allowed_recipients = ["*"]
allowed_headers = ["X-Mailer"]
[plugins.js_hello]
allowed_from = ["*"]
default_from = "hello@example.com"
allowed_recipients = ["*"]
allowed_headers = ["X-Mailer"]
""")
    body = work / "body.txt"
    line = "x" * 70 + "\n"
    body.write_text((line * (MESSAGE_BYTES // len(line) + 1))[:MESSAGE_BYTES])
    bulk = PLUGINS / "wasmail_plugin_bulk.wasm"
    # Warm the compile cache once (start-up without compiling is what we measure).
    subprocess.run([str(WASMAIL), "inspect", str(bulk)], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([str(WASMAIL), "send", "--from", "a@example.com", "--to", "b@example.com", "--text", "warm",
                    "--outbox", str(work / "outbox")], env=env, check=True, stdout=subprocess.DEVNULL)

    sessions_config = with_sessions(config, BENCH_SESSIONS)
    n = BULK_COUNT
    bulk_input = json.dumps({"count": n, "to": "sink@example.com", "size": MESSAGE_BYTES})
    one_by_one = json.dumps({"count": n, "to": "sink@example.com", "size": MESSAGE_BYTES, "one_by_one": True})
    tp = interleaved({
        # The bulk plugin through `send-many`: pipelined across messages,
        # batches on BENCH_SESSIONS sessions at once.
        "wasmail_run": lambda: n / timed(
            [str(WASMAIL), "run", str(bulk), "--config", str(sessions_config), "--input-text", bulk_input],
            env=env),
        # The same on one session.
        "wasmail_run_one_session": lambda: n / timed(
            [str(WASMAIL), "run", str(bulk), "--config", str(config), "--input-text", bulk_input], env=env),
        # The same plugin, one `send` call per message.
        "wasmail_run_one_by_one": lambda: n / timed(
            [str(WASMAIL), "run", str(bulk), "--config", str(config), "--input-text", one_by_one], env=env),
        "wasmail_send": lambda: n / timed(
            [str(WASMAIL), "send", "--server", server, "--tls", "none", "--from", "bench@example.com",
             "--to", "sink@example.com", "--subject", "send", "--body", str(body), "--repeat", str(n)], env=env),
        "smtp_source": lambda: n / timed(
            ["smtp-source", "-d", "-m", str(n), "-l", str(MESSAGE_BYTES), "-f", "bench@example.com",
             "-t", "sink@example.com", server]),
    })
    tp.update(interleaved({
        "python_smtplib": lambda: float(subprocess.run(
            [sys.executable, "-c", SMTPLIB_SCRIPT, str(port), str(SMTPLIB_COUNT), str(MESSAGE_BYTES)],
            check=True, capture_output=True, text=True).stdout),
        "lettre": lambda: float(subprocess.run(
            [str(LETTRE), "127.0.0.1", str(port), str(LETTRE_COUNT), str(MESSAGE_BYTES)],
            check=True, capture_output=True, text=True).stdout),
    }))
    postfix = postfix_throughput(work, env, config, bulk)

    oneshot: dict[str, float] = {}
    msg = f"From: bench@example.com\r\nTo: sink@example.com\r\nSubject: one\r\n\r\n{body.read_text()}"
    oneshot["wasmail_send"] = 1000 * statistics.median(timed(
        [str(WASMAIL), "send", "--server", server, "--tls", "none", "--from", "bench@example.com",
         "--to", "sink@example.com", "--subject", "one", "--body", str(body)], env=env) for _ in range(ONESHOT_RUNS))
    if shutil.which("msmtp"):
        oneshot["msmtp"] = 1000 * statistics.median(timed(
            ["msmtp", "--host=127.0.0.1", f"--port={port}", "--auth=off", "--tls=off",
             "--from=bench@example.com", "sink@example.com"], input=msg.encode()) for _ in range(ONESHOT_RUNS))
    if shutil.which("swaks"):
        oneshot["swaks"] = 1000 * statistics.median(timed(
            ["swaks", "--server", server, "--from", "bench@example.com", "--to", "sink@example.com",
             "--body", str(body), "--silent", "2"]) for _ in range(ONESHOT_RUNS))

    instantiate = float(subprocess.run(
        [str(MICRO), "instantiate", str(PLUGINS / "wasmail_plugin_hello.wasm"), str(INSTANTIATE_ROUNDS)],
        env=env, check=True, capture_output=True, text=True).stdout)

    dkim_keys = make_dkim_keys(work, env)
    dkim = dkim_throughput(work, env, server, body, dkim_keys)

    # The large attachment goes to a discard sink (microbench sink) so the
    # figure is the mailer's, not smtp-sink's parser's; the mailer's -v
    # transcript reports its own base64 time.
    big = work / "big.bin"
    with open(big, "wb") as f:
        f.truncate(ATTACHMENT_MIB << 20)
    discard_port = free_port()
    discard = subprocess.Popen([str(MICRO), "sink", str(discard_port)], stdout=subprocess.DEVNULL)
    att_runs, signed_att = [], []
    try:
        wait_port(discard_port)
        big_send = [str(WASMAIL), "send", "--server", f"127.0.0.1:{discard_port}", "--tls", "none",
                    "--from", "bench@example.com", "--to", "sink@example.com", "--subject", "big",
                    "--text", "attached", "--attach", str(big), "--timeout", "600", "-v"]
        for _ in range(max(1, RUNS - 1)):
            t = time.perf_counter()
            proc = subprocess.run(["/usr/bin/time", "-f", "%M", *big_send],
                                  env=env, check=True, capture_output=True, text=True)
            secs = time.perf_counter() - t
            lines = proc.stderr.strip().splitlines()
            rss_kib = int(lines[-1])
            note = next(l for l in lines if "base64-encoded in the mailer" in l)
            guest = float(note.rsplit("(", 1)[1].split()[0])
            att_runs.append((secs, rss_kib / 1024, guest))
            # Signed: a first pass over the file hashes its base64 (the
            # body hash), then the send streams it as before; -v gives the
            # hashing pass's own rate.
            t = time.perf_counter()
            proc = subprocess.run(["/usr/bin/time", "-f", "%M", *big_send, *dkim_flags(dkim_keys["ed25519"])],
                                  env=env, check=True, capture_output=True, text=True)
            secs = time.perf_counter() - t
            lines = proc.stderr.strip().splitlines()
            note = next(l for l in lines if "DKIM: signed" in l)
            signed_att.append((secs, int(lines[-1]) / 1024, float(note.rsplit("(", 1)[1].split()[0])))
    finally:
        discard.terminate()
        discard.wait(timeout=5)
    att_secs = statistics.median(r[0] for r in att_runs)
    hello = hello_plugins(work, env, config)
    serve = serve_load(work, env, config)
    native = median(lambda: float(subprocess.run([str(MICRO), "base64", str(ATTACHMENT_MIB)],
                                                 check=True, capture_output=True, text=True).stdout))
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "runs": RUNS,
        "message_bytes": MESSAGE_BYTES,
        "bulk_count": n,
        "throughput_msgs_per_s": {k: round(v, 1) for k, v in tp.items()},
        "postfix": postfix,
        "oneshot_wall_ms": {k: round(v, 2) for k, v in oneshot.items()},
        "instantiate_us_p50": round(instantiate, 2),
        "hello_plugins": hello,
        "serve": serve,
        "dkim": dict(dkim, attachment_signed_peak_rss_mib=round(max(r[1] for r in signed_att), 1),
                     attachment_signed_send_seconds=round(statistics.median(r[0] for r in signed_att), 2),
                     guest_body_hash_mb_s=round(statistics.median(r[2] for r in signed_att), 1)),
        "attachment_1gib": {
            "mib": ATTACHMENT_MIB,
            "peak_rss_mib": round(max(r[1] for r in att_runs), 1),
            "send_seconds": round(att_secs, 2),
            "end_to_end_mb_s": round(ATTACHMENT_MIB / att_secs, 1),
            "guest_b64_mb_s": round(statistics.median(r[2] for r in att_runs), 1),
            "native_b64_mb_s": round(native, 1),
        },
    }


def postfix_throughput(work: Path, env: dict, config: Path, bulk: Path) -> dict:
    """The bulk plugin (send-many, BDAT; and one send per call) and
    `smtp-source -d` against the same private Postfix smtpd, interleaved;
    every message is checked delivered (discarded) before the next round."""
    n = POSTFIX_COUNT
    proc, port, logfile = start_postfix_smtpd(work)
    try:
        pf_config = work / "bench-postfix.toml"
        pf_config.write_text(config.read_text().replace(
            f'server = "127.0.0.1:', f'server = "127.0.0.1:{port}" #', 1))
        pf_sessions = with_sessions(pf_config, BENCH_SESSIONS)
        expected = [0]

        def settled(rate: float) -> float:
            expected[0] += n
            deadline = time.monotonic() + 120
            while postfix_delivered(logfile) < expected[0] and time.monotonic() < deadline:
                time.sleep(0.2)
            return rate

        def run(flags: dict, cfg: Path = pf_config) -> float:
            text = json.dumps({"count": n, "to": "sink@example.com", "size": MESSAGE_BYTES, **flags})
            return settled(n / timed([str(WASMAIL), "run", str(bulk), "--config", str(cfg),
                                      "--input-text", text], env=env))

        def source(sessions: int) -> float:
            return settled(n / timed(
                ["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(MESSAGE_BYTES),
                 "-f", "bench@example.com", "-t", "sink@example.com", f"127.0.0.1:{port}"]))

        tp = interleaved({
            "wasmail_run": lambda: run({}, pf_sessions),
            "wasmail_run_one_session": lambda: run({}),
            "wasmail_run_one_by_one": lambda: run({"one_by_one": True}),
            "smtp_source": lambda: source(1),
            f"smtp_source_{CEILING_SESSIONS}_sessions": lambda: source(CEILING_SESSIONS),
        })
        log = logfile.read_text(errors="replace")
    finally:
        stop_postfix_smtpd(proc)
    # Trouble with the client; cleanup's notes on the file system clock are
    # about the machine.
    warnings = [l for l in log.splitlines()
                if any(w in l for w in ("warning:", "improper command pipelining", "bare <LF>", "error:", "fatal:"))
                and "file system clock" not in l and "resetting file time stamps" not in l]
    return {
        "messages": n,
        "throughput_msgs_per_s": {k: round(v, 1) for k, v in tp.items()},
        "bdat_sessions": sum(1 for l in log.splitlines() if " bdat=" in l),
        "delivered": postfix_delivered(logfile),
        "warnings": warnings[:20],
    }


def make_dkim_keys(work: Path, env: dict) -> dict[str, Path]:
    """One key of each type, from `wasmail dkim keygen`."""
    keys = {}
    for algorithm in ("ed25519", "rsa2048"):
        path = work / f"dkim-{algorithm}.private"
        subprocess.run([str(WASMAIL), "dkim", "keygen", "--domain", "example.com", "--selector", algorithm,
                        "--algorithm", algorithm, "--out", str(path)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        keys[algorithm] = path
    return keys


def dkim_flags(key: Path) -> list[str]:
    return ["--dkim-key", str(key), "--dkim-domain", "example.com", "--dkim-selector", key.stem.split("-", 1)[1]]


def dkim_throughput(work: Path, env: dict, server: str, body: Path, keys: dict[str, Path]) -> dict:
    """`send --repeat` unsigned, signed with Ed25519 and signed with RSA-2048,
    interleaved run by run so each ratio compares like with like."""
    n = DKIM_COUNT
    cmd = [str(WASMAIL), "send", "--server", server, "--tls", "none", "--from", "bench@example.com",
           "--to", "sink@example.com", "--subject", "dkim", "--body", str(body), "--repeat", str(n)]
    variants = {"unsigned": [], "ed25519": dkim_flags(keys["ed25519"]), "rsa2048": dkim_flags(keys["rsa2048"])}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(RUNS):
        for name, flags in variants.items():
            rates[name].append(n / timed([*cmd, *flags], env=env))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "messages": n,
        "throughput_msgs_per_s": {k: round(v, 1) for k, v in med.items()},
        "ed25519_vs_unsigned": round(med["ed25519"] / med["unsigned"], 3),
        "rsa2048_vs_unsigned": round(med["rsa2048"] / med["unsigned"], 3),
    }


def run_with_rss(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one run, under /usr/bin/time."""
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], env=env, check=True,
                          capture_output=True, text=True)
    secs = time.perf_counter() - t
    return secs, int(proc.stderr.strip().splitlines()[-1]) / 1024


def hello_plugins(work: Path, env: dict, config: Path) -> dict:
    """The hello plugin in Rust, Python and JavaScript, one message each to
    the sink: the first run (a cache holding the mailer but not the plugin,
    so the plugin's compile is in it) and a cached run."""
    import hashlib
    warm = Path(env["WASMAIL_CACHE_DIR"])
    out = {}
    for lang, file in HELLO_PLUGINS.items():
        path = PLUGINS / file
        if not path.exists():
            print(f"bench: {path} missing (make lang-plugins); skipping {lang}", file=sys.stderr)
            continue
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        cmd = [str(WASMAIL), "run", str(path), "--config", str(config), "--input-text", "sink@example.com"]
        first = []
        for i in range(COMPILE_RUNS):
            cold = work / f"cache-{lang}-{i}"
            shutil.copytree(warm, cold, ignore=lambda _d, names: [n for n in names if n.startswith(sha)])
            first.append(run_with_rss(cmd, dict(env, WASMAIL_CACHE_DIR=str(cold))))
            shutil.rmtree(cold, ignore_errors=True)
        run_with_rss(cmd, env)  # fills the warm cache
        cached = [run_with_rss(cmd, env) for _ in range(RUNS)]
        out[lang] = {
            "component_mb": round(path.stat().st_size / 1e6, 1),
            "first_run_s": round(statistics.median(r[0] for r in first), 2),
            "first_run_peak_rss_mib": round(max(r[1] for r in first), 1),
            "cached_run_ms": round(1000 * statistics.median(r[0] for r in cached), 1),
            "cached_run_peak_rss_mib": round(max(r[1] for r in cached), 1),
        }
    return out


def serve_load(work: Path, env: dict, config: Path, runs: int = SERVE_RUNS,
               concurrency: int = SERVE_CONCURRENCY, cli_runs: int = SERVE_CLI_RUNS) -> dict:
    """`wasmail serve` with the hello plugin against the sink: `concurrency`
    clients (threads, one keep-alive connection each) share `runs` runs a
    round (runs/s, and each run's latency); interleaved round by round with
    `wasmail run hello` once per process, `cli_runs` times in a row. The
    serve process's peak RSS (VmHWM) is read at the end."""
    import http.client
    import re
    import threading
    hello = PLUGINS / "wasmail_plugin_hello.wasm"
    serve_config = work / "bench-serve.toml"
    serve_config.write_text(config.read_text().replace(
        "[plugins.hello]\n", f"[plugins.hello]\npath = {json.dumps(str(hello))}\n", 1))
    token = "bench-" + os.urandom(16).hex()
    tokens = work / "bench-tokens.toml"
    tokens.write_text(f'[[token]]\nname = "bench"\ntoken = "{token}"\nplugins = ["hello"]\n')
    tokens.chmod(0o600)
    err_path = work / "serve.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([str(WASMAIL), "serve", "--config", str(serve_config), "--tokens", str(tokens),
                                 "--listen", "127.0.0.1:0", "--max-runs", str(concurrency),
                                 "--max-relay-connections", str(concurrency)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while True:
            found = re.search(r"listening on http://([0-9.]+):(\d+)", err_path.read_text(errors="replace"))
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wasmail serve did not start: {err_path.read_text(errors='replace')}")
            time.sleep(0.05)
        host, port = found.group(1), int(found.group(2))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        latencies: list[float] = []
        failures: list[str] = []

        def load(total: int) -> float:
            """`total` runs by the clients; runs/s."""
            left = [total]
            lock = threading.Lock()
            round_latencies: list[float] = []

            def client() -> None:
                conn = http.client.HTTPConnection(host, port, timeout=120)
                mine = []
                try:
                    while True:
                        with lock:
                            if left[0] == 0:
                                break
                            left[0] -= 1
                        t = time.perf_counter()
                        conn.request("POST", "/v1/plugins/hello/runs", body=b"sink@example.com", headers=headers)
                        resp = conn.getresponse()
                        body = resp.read()
                        mine.append(time.perf_counter() - t)
                        if resp.status != 200 or b'"accepted":1' not in body:
                            failures.append(f"{resp.status} {body[:200]!r}")
                finally:
                    conn.close()
                    with lock:
                        round_latencies.extend(mine)

            threads = [threading.Thread(target=client) for _ in range(concurrency)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            secs = time.perf_counter() - t
            latencies.extend(round_latencies)
            return total / secs

        load(min(runs, 4 * concurrency))  # warm-up: compile cache, relay sessions
        latencies.clear()
        cli = [str(WASMAIL), "run", str(hello), "--config", str(config), "--input-text", "sink@example.com"]
        rates = interleaved({
            "serve": lambda: load(runs),
            "cli": lambda: cli_runs / sum(timed(cli, env=env) for _ in range(cli_runs)),
        })
        with open(f"/proc/{proc.pid}/status") as f:
            hwm_kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    return {
        "runs_per_round": runs,
        "concurrency": concurrency,
        "cli_runs_per_round": cli_runs,
        "serve_runs_per_s": round(rates["serve"], 1),
        "cli_runs_per_s": round(rates["cli"], 1),
        "serve_vs_cli": round(rates["serve"] / rates["cli"], 2),
        "latency_ms_p50": round(pct(0.50), 2),
        "latency_ms_p99": round(pct(0.99), 2),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "serve_peak_rss_mib": round(hwm_kib / 1024, 1),
        "serve_exit": proc.returncode,
    }


def ratios(r: dict) -> dict:
    tp, one, att = r["throughput_msgs_per_s"], r["oneshot_wall_ms"], r["attachment_1gib"]
    out = {
        "run_vs_smtp_source": tp["wasmail_run"] / tp["smtp_source"],
        "run_one_by_one_vs_smtp_source": tp["wasmail_run_one_by_one"] / tp["smtp_source"],
        "run_one_session_vs_smtp_source": tp["wasmail_run_one_session"] / tp["smtp_source"],
        "postfix_run_one_session_vs_smtp_source": (r["postfix"]["throughput_msgs_per_s"]["wasmail_run_one_session"]
                                                   / r["postfix"]["throughput_msgs_per_s"]["smtp_source"]),
        "postfix_ceiling_vs_smtp_source": (
            r["postfix"]["throughput_msgs_per_s"][f"smtp_source_{CEILING_SESSIONS}_sessions"]
            / r["postfix"]["throughput_msgs_per_s"]["smtp_source"]),
        "postfix_run_vs_smtp_source": (r["postfix"]["throughput_msgs_per_s"]["wasmail_run"]
                                       / r["postfix"]["throughput_msgs_per_s"]["smtp_source"]),
        "postfix_run_one_by_one_vs_smtp_source": (r["postfix"]["throughput_msgs_per_s"]["wasmail_run_one_by_one"]
                                                  / r["postfix"]["throughput_msgs_per_s"]["smtp_source"]),
        "send_vs_smtp_source": tp["wasmail_send"] / tp["smtp_source"],
        "guest_vs_native_b64": att["guest_b64_mb_s"] / att["native_b64_mb_s"],
        "dkim_ed25519_vs_unsigned": r["dkim"]["ed25519_vs_unsigned"],
        "dkim_rsa2048_vs_unsigned": r["dkim"]["rsa2048_vs_unsigned"],
    }
    if "msmtp" in one:
        out["oneshot_vs_msmtp"] = one["wasmail_send"] / one["msmtp"]
    return {k: round(v, 3) for k, v in out.items()}


def svg(r: dict) -> str:
    """Two horizontal bar charts: throughput (higher is better) and one-shot
    latency (lower is better)."""
    rows = [("throughput, msg/s (higher is better)", r["throughput_msgs_per_s"]),
            ("one message from the CLI, ms (lower is better)", r["oneshot_wall_ms"])]
    width, bar_h, gap, left = 720, 22, 8, 170
    parts, y = [], 20
    for title, data in rows:
        parts.append(f'<text x="10" y="{y}" font-weight="bold">{title}</text>')
        y += 10
        top = max(data.values()) or 1
        for name, value in data.items():
            w = (width - left - 90) * value / top
            colour = "#2b7bb9" if name.startswith("wasmail") else "#999"
            parts.append(f'<text x="10" y="{y + 16}">{name}</text>')
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
            parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 16}">{value:,.1f}</text>')
            y += bar_h + gap
        y += 20
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'font-family="sans-serif" font-size="13">{"".join(parts)}</svg>\n')


def table(r: dict, q: dict) -> str:
    tp, one, att = r["throughput_msgs_per_s"], r["oneshot_wall_ms"], r["attachment_1gib"]
    lines = [f"Measured {r['date']} on {r['machine']}; median of {r['runs']} runs, "
             f"{r['message_bytes']}-byte messages, one smtp-sink on loopback.", "",
             "| throughput | msg/s | × smtp-source |", "|---|---:|---:|"]
    for k, v in tp.items():
        lines.append(f"| {k} | {v:,.0f} | {v / tp['smtp_source']:.2f} |")
    pf = r["postfix"]
    lines += ["", f"| against a full Postfix smtpd ({pf['messages']} messages a run, CHUNKING and PIPELINING on) "
              f"| msg/s | × smtp-source |", "|---|---:|---:|"]
    for k, v in pf["throughput_msgs_per_s"].items():
        lines.append(f"| {k} | {v:,.0f} | {v / pf['throughput_msgs_per_s']['smtp_source']:.2f} |")
    lines += ["", f"Postfix delivered {pf['delivered']} messages; sessions with BDAT: {pf['bdat_sessions']}; "
              f"warnings in its log: {len(pf['warnings'])}."]
    lines += ["", "| one message from the command line | wall ms |", "|---|---:|"]
    for k, v in one.items():
        lines.append(f"| {k} | {v:.1f} |")
    lines += ["", "| other | figure |", "|---|---:|",
              f"| plugin+mailer instantiation, p50 | {r['instantiate_us_p50']:.1f} µs |",
              f"| {att['mib']} MiB attachment: peak RSS of wasmail | {att['peak_rss_mib']:.1f} MiB |",
              f"| {att['mib']} MiB attachment: base64 inside the mailer | {att['guest_b64_mb_s']:.0f} MiB/s |",
              f"| {att['mib']} MiB attachment: file to socket, end to end | {att['end_to_end_mb_s']:.0f} MiB/s |",
              f"| native `base64` crate, same data | {att['native_b64_mb_s']:.0f} MiB/s |",
              f"| {att['mib']} MiB attachment, DKIM-signed: peak RSS | {r['dkim']['attachment_signed_peak_rss_mib']:.1f} MiB |",
              f"| {att['mib']} MiB attachment, DKIM-signed: send time (unsigned {att['send_seconds']:.1f} s) | "
              f"{r['dkim']['attachment_signed_send_seconds']:.1f} s |",
              f"| DKIM body hash inside the mailer (read, base64, canonicalize, SHA-256) | "
              f"{r['dkim']['guest_body_hash_mb_s']:.0f} MiB/s |",
              "", f"| DKIM, `send --repeat {r['dkim']['messages']}` (interleaved) | msg/s | × unsigned |",
              "|---|---:|---:|"]
    dk = r["dkim"]["throughput_msgs_per_s"]
    for k, v in dk.items():
        lines.append(f"| {k} | {v:,.0f} | {v / dk['unsigned']:.2f} |")
    lines += ["", "| hello plugin, one message | MB | first run (compile) | peak RSS | cached run | peak RSS |",
              "|---|---:|---:|---:|---:|---:|"]
    for lang, h in r.get("hello_plugins", {}).items():
        lines.append(f"| {lang} | {h['component_mb']:.1f} | {h['first_run_s']:.1f} s | "
                     f"{h['first_run_peak_rss_mib']:.0f} MiB | {h['cached_run_ms']:.0f} ms | "
                     f"{h['cached_run_peak_rss_mib']:.0f} MiB |")
    sv = r.get("serve")
    if sv:
        lines += ["", f"| `wasmail serve`, hello plugin, {sv['concurrency']} keep-alive clients "
                  f"({sv['runs_per_round']} runs a round) | figure |", "|---|---:|",
                  f"| runs/s | {sv['serve_runs_per_s']:,.0f} |",
                  f"| `wasmail run` once per process, {sv['cli_runs_per_round']} in a row: runs/s | "
                  f"{sv['cli_runs_per_s']:,.1f} |",
                  f"| serve / one process per run | {sv['serve_vs_cli']:.1f}× |",
                  f"| latency p50 / p99 | {sv['latency_ms_p50']:.1f} / {sv['latency_ms_p99']:.1f} ms |",
                  f"| peak RSS of the serve process | {sv['serve_peak_rss_mib']:.0f} MiB |",
                  f"| failed runs (not 200 with the message accepted) | {sv['failures']} |"]
    lines += ["", "| ratio (this run) | value | target |", "|---|---:|---:|",
              f"| wasmail run (send-many, {BENCH_SESSIONS} sessions) / smtp-source, smtp-sink | "
              f"{q['run_vs_smtp_source']:.2f} | ≥ 2.0 |",
              f"| wasmail run (send-many, one session) / smtp-source, smtp-sink | "
              f"{q['run_one_session_vs_smtp_source']:.2f} | |",
              f"| wasmail run (one send per call) / smtp-source, smtp-sink | "
              f"{q['run_one_by_one_vs_smtp_source']:.2f} | |",
              f"| wasmail run (send-many, BDAT, {BENCH_SESSIONS} sessions) / smtp-source, Postfix smtpd | "
              f"{q['postfix_run_vs_smtp_source']:.2f} | ≥ 1.5 |",
              f"| wasmail run (send-many, BDAT, one session) / smtp-source, Postfix smtpd | "
              f"{q['postfix_run_one_session_vs_smtp_source']:.2f} | |",
              f"| wasmail run (one send per call) / smtp-source, Postfix smtpd | "
              f"{q['postfix_run_one_by_one_vs_smtp_source']:.2f} | |",
              f"| Postfix's ceiling here: smtp-source with {CEILING_SESSIONS} sessions / with one | "
              f"{q['postfix_ceiling_vs_smtp_source']:.2f} | |",
              f"| wasmail send (one-shot) / msmtp | {q.get('oneshot_vs_msmtp', float('nan')):.2f} | ≤ 0.25 |",
              f"| guest base64 / native base64 | {q['guest_vs_native_b64']:.2f} | ≥ 0.5 |",
              f"| instantiate p50 | {r['instantiate_us_p50']:.1f} µs | ≤ 20 µs |",
              f"| peak RSS with a {att['mib']} MiB attachment | {att['peak_rss_mib']:.1f} MiB | ≤ 64 MiB |",
              f"| peak RSS with a {att['mib']} MiB attachment, DKIM-signed | "
              f"{r['dkim']['attachment_signed_peak_rss_mib']:.1f} MiB | ≤ 64 MiB |",
              f"| DKIM-signed / unsigned throughput, Ed25519 | {q['dkim_ed25519_vs_unsigned']:.2f} | |",
              f"| DKIM-signed / unsigned throughput, RSA-2048 | {q['dkim_rsa2048_vs_unsigned']:.2f} | |"]
    return "\n".join(lines) + "\n"


def write_outputs(r: dict) -> None:
    q = ratios(r)
    r["ratios"] = q
    (OUT / "results.json").write_text(json.dumps(r, indent=2) + "\n")
    (OUT / "throughput.svg").write_text(svg(r))
    md = table(r, q)
    (OUT / "results.md").write_text(md)
    print(md)
    print(f"wrote {OUT / 'results.json'}, {OUT / 'results.md'} and {OUT / 'throughput.svg'}")


if __name__ == "__main__":
    main()
