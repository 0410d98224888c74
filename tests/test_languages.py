"""Plugins in Python and JavaScript (issue #11), as a plugin author gets them:
built with componentize-py and componentize-js against wit/ by `make
lang-plugins`, run with `wasmail run` against aiosmtpd; and the guide's Rust
section followed from an empty folder.

* python_hello / js_hello: HTML + text, a bytes attachment, and a policy
  denial caught and reported by the plugin itself.
* python_netgrab / js_netgrab: sockets, name lookups and fetch() from the
  languages' own libraries. The toolchains link wasi:sockets and wasi:http
  into every component; the host links them too and denies every call, so
  each attempt is a clean error in the plugin, never a connection.
* `wasmail inspect` says which imports are ok, denied at run time or
  refused; exit 65 for what cannot be loaded at all.

The components are compiled once ahead of time by `make test` (`wasmail
compile`); a run that still has to compile one may take a minute on two busy
cores, hence FIRST_RUN_TIMEOUT_S.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

import oracle
from cli import describe, json_output
from test_plugins import inspect_lines, policy, read_audit, relay_table, run_plugin, write_config

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "plugins.md"

EXIT_OK = 0
EXIT_PLUGIN_ERROR = 1
EXIT_LOAD = 65        # not a component, over a per-component limit, or its compile failed
EXIT_NOINPUT = 66

# A run that may have to compile an 18 MB component first.
FIRST_RUN_TIMEOUT_S = 300
# Building the guide's Rust plugin from scratch (wit-bindgen and the SDK).
GUIDE_BUILD_TIMEOUT_S = 900

LANGS = ["python", "js"]


def hello(lang: str) -> str:
    return f"{lang}_hello"


def netgrab(lang: str) -> str:
    return f"{lang}_netgrab"


def relay_config(tmp_path: Path, server, name: str) -> Path:
    """Relay = the aiosmtpd server (plaintext, no AUTH); a policy for `name`
    that allows example.com recipients and X-Mailer."""
    return write_config(tmp_path / "wasmail.toml", audit=tmp_path / "audit.jsonl",
                        relay=relay_table(server), plugins={name: policy(name)})


@pytest.mark.parametrize("lang", LANGS)
def test_hello_sends_html_and_an_attachment_and_reports_a_denial(run, plugins, smtpd, tmp_path,
                                                                  lang):
    name = hello(lang)
    server = smtpd()
    config = relay_config(tmp_path, server, name)

    # Several recipients go in one send-many call (the SDK's send_all /
    # sendAll): the denial in the middle must come back tied to its own
    # recipient, and the messages on either side of it must go.
    proc = run_plugin(run, plugins, name, config=config,
                      input_text="friend@example.com, stranger@elsewhere.test, other@example.com",
                      timeout=FIRST_RUN_TIMEOUT_S)

    assert proc.returncode == EXIT_OK, describe(proc)
    report = json_output(proc)
    assert report["stopped"] is None, report
    out = report["output"]
    for to in ("friend", "other"):
        assert re.search(rf"^sent \S+ to {to}@example\.com$", out, re.M), out
    # The denial came back to the plugin as a send-error it caught and reported.
    assert ("not sent: stranger@elsewhere.test: policy-denied: allowed_recipients"
            in out), out
    assert report["counts"]["accepted"] == 2 and report["counts"]["denied"] == 1, report

    assert sorted(m.rcpt_tos[0] for m in server.messages) == ["friend@example.com", "other@example.com"]
    received = next(m for m in server.messages if m.rcpt_tos == ["friend@example.com"])
    msg = oracle.parse(received.content)
    assert oracle.addresses(msg, "From") == [f"{name}@example.com"]
    assert msg["X-Mailer"] == f"wasmail {lang}-hello plugin"
    assert oracle.find_multipart(msg, "alternative") is not None, oracle.content_types(msg)
    assert "<h1>Hello!</h1>" in oracle.body(msg, "html")
    assert "WebAssembly component" in oracle.body(msg, "plain")
    part = oracle.part_named(oracle.attachments(msg), "hello.txt")
    assert part.content_type == "text/plain"
    assert part.data == f"Hello, friend@example.com!\nSent by {lang}-hello.\n".encode()

    outcomes = [r["outcome"] for r in read_audit(tmp_path / "audit.jsonl")]
    assert outcomes.count("accepted") == 2 and outcomes.count("denied") == 1, outcomes


@pytest.mark.parametrize("lang", LANGS)
def test_hello_fails_cleanly_when_nothing_is_sent(run, plugins, smtpd, tmp_path, lang):
    name = hello(lang)
    server = smtpd()
    config = relay_config(tmp_path, server, name)

    proc = run_plugin(run, plugins, name, config=config, input_text="x@elsewhere.test",
                      timeout=FIRST_RUN_TIMEOUT_S)

    assert proc.returncode == EXIT_PLUGIN_ERROR, describe(proc)
    report = json_output(proc)
    assert report["stopped"] is None, report
    assert report["plugin_error"].startswith("nothing sent; x@elsewhere.test: policy-denied"), report
    assert server.messages == []


@pytest.mark.parametrize("lang", LANGS)
def test_hello_to_the_outbox_without_a_config(run, plugins, tmp_path, lang):
    """The demo path: no config, mail goes to ./outbox."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    proc = run_plugin(run, plugins, hello(lang), input_text="demo@example.com", cwd=cwd,
                      timeout=FIRST_RUN_TIMEOUT_S)
    assert proc.returncode == EXIT_OK, describe(proc)
    [eml] = list((cwd / "outbox").glob("*.eml"))
    msg = oracle.parse(eml.read_bytes())
    assert oracle.addresses(msg, "To") == ["demo@example.com"]
    assert oracle.part_named(oracle.attachments(msg), "hello.txt")


# ---------------------------------------------------------------------------
# The network from Python and JavaScript: denied at run time, cleanly
# ---------------------------------------------------------------------------

@pytest.fixture
def listener():
    """A loopback TCP listener nobody may reach: (address, check), where
    check() fails the test if anything connected."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    sock.setblocking(False)
    address = "127.0.0.1:%d" % sock.getsockname()[1]

    def check():
        with pytest.raises(BlockingIOError):
            sock.accept()

    yield address, check
    sock.close()


@pytest.mark.parametrize("mode, error", [
    ("socket", "PermissionError"),          # socket.socket(): access-denied
    ("connect", "gaierror"),                # create_connection(): the lookup fails first
    ("resolve", "gaierror"),                # getaddrinfo(): permanent-resolver-failure
])
def test_python_network_calls_are_denied(run, plugins, listener, tmp_path, mode, error):
    address, check = listener
    target = "example.com" if mode == "resolve" else address
    cwd = tmp_path / "work"
    cwd.mkdir()

    proc = run_plugin(run, plugins, netgrab("python"), input_text=f"{mode} {target}", cwd=cwd,
                      timeout=FIRST_RUN_TIMEOUT_S)

    assert proc.returncode == EXIT_PLUGIN_ERROR, describe(proc)
    report = json_output(proc)
    assert report["stopped"] is None, report          # an exception, not a trap
    assert report["plugin_error"].startswith(f"{mode} {target}: {error}"), report
    assert "sandbox let" not in proc.stdout
    check()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_js_fetch_is_denied(run, plugins, listener, tmp_path, scheme):
    address, check = listener
    url = f"{scheme}://{address}/"
    cwd = tmp_path / "work"
    cwd.mkdir()

    proc = run_plugin(run, plugins, netgrab("js"), input_text=url, cwd=cwd,
                      timeout=FIRST_RUN_TIMEOUT_S)

    assert proc.returncode == EXIT_PLUGIN_ERROR, describe(proc)
    report = json_output(proc)
    assert report["stopped"] is None, report          # a rejected promise, not a trap
    assert report["plugin_error"].startswith(f"fetch {url}: TypeError"), report
    assert "sandbox let" not in proc.stdout
    check()


@pytest.mark.parametrize("lang, denied", [
    ("python", "wasi:sockets/"),
    ("js", "wasi:http/"),
])
def test_inspect_shows_what_is_denied_at_run_time(run, plugins, lang, denied):
    proc = run(["inspect", plugins[hello(lang)]], timeout=FIRST_RUN_TIMEOUT_S)

    assert proc.returncode == EXIT_OK, describe(proc)
    imports, exports, [verdict] = inspect_lines(proc)
    assert exports[-1] == "run" or "run" in exports, exports
    by_status = {"ok": [], "denied at run time": [], "refused": []}
    for line in imports:
        status = "denied at run time" if line.startswith("denied at run time") else line.split()[0]
        by_status[status].append(line)
    assert by_status["refused"] == [], describe(proc)
    assert by_status["denied at run time"], describe(proc)
    assert all(denied in line for line in by_status["denied at run time"]), describe(proc)
    # Every line says why.
    assert all(line.rstrip().endswith(")") for line in imports), describe(proc)
    assert any("wasmail:mail/sender@0.1.0" in line for line in by_status["ok"]), describe(proc)
    assert verdict.startswith("verdict: can run here"), describe(proc)


def test_not_a_component_exits_65_with_a_hint(run, tmp_path):
    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"\0asm\x01\0\0\0")          # a core module, not a component
    for args in (["run", bogus, "--json"], ["compile", bogus], ["inspect", bogus]):
        proc = run(args)
        assert proc.returncode == EXIT_LOAD, describe(proc)
        assert "core WebAssembly module" in proc.stdout + proc.stderr, describe(proc)
    proc = run(["run", bogus, "--json"])
    error = json_output(proc)["error"]
    assert error["kind"] == "load" and "hint:" in error["message"], error


def test_compile_says_when_it_is_already_cached(run, plugins):
    proc = run(["compile", plugins[hello("python")], plugins["hello"]],
               timeout=FIRST_RUN_TIMEOUT_S)
    assert proc.returncode == EXIT_OK, describe(proc)
    proc = run(["compile", plugins[hello("python")], plugins["hello"]])
    assert proc.returncode == EXIT_OK, describe(proc)
    assert proc.stdout.count("already compiled") == 2, describe(proc)
    proc = run(["compile", Path("/nonexistent/x.wasm")])
    assert proc.returncode == EXIT_NOINPUT, describe(proc)


# ---------------------------------------------------------------------------
# The guide's Rust section, from an empty folder
# ---------------------------------------------------------------------------

def guide_section(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def guide_script(section: str) -> str:
    """The section's steps as one bash script: ```sh blocks are run as
    they are; a ```toml or ```rust block whose first line names a file
    (`# Cargo.toml`, `// src/lib.rs`) is written to that file."""
    script = []
    for info, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        if info == "sh":
            script.append(body)
            continue
        first, _, _ = body.partition("\n")
        named = re.fullmatch(r"(?:#|//) ?(\S+)", first.strip())
        if named and "." in named.group(1):
            path = named.group(1)
            script.append(f"mkdir -p \"$(dirname {path})\"\ncat > {path} <<'GUIDE_EOF'\n{body}GUIDE_EOF\n")
    return "\n".join(script)


def test_the_rust_guide_works_from_an_empty_folder(wasmail, tmp_path):
    section = guide_section("A plugin in Rust")
    script = guide_script(section)
    assert "cargo build" in script and "wasmail run" in script, script
    # The guide's folder layout: the folder that holds the wasmail checkout.
    (tmp_path / "wasmail").symlink_to(REPO)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wasmail").symlink_to(wasmail)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    # The build's own output, kept between runs of the suite (the guide's
    # `target/` paths then point there).
    target = REPO / "target" / "guide"
    env["CARGO_TARGET_DIR"] = str(target)
    script = re.sub(r"(?<![\w/])target/", f"{target}/", script)
    (tmp_path / "guide.sh").write_text(script)

    proc = subprocess.run(["bash", "-euo", "pipefail", str(tmp_path / "guide.sh")], cwd=tmp_path,
                          env=env, capture_output=True, text=True,
                          timeout=GUIDE_BUILD_TIMEOUT_S)

    assert proc.returncode == 0, f"{describe(proc)}\n--- script ---\n{script}"
    emls = list((tmp_path / "hello-plugin" / "outbox").glob("*.eml"))
    assert len(emls) == 1, f"{emls}\n{describe(proc)}"
    msg = oracle.parse(emls[0].read_bytes())
    assert oracle.addresses(msg, "To") == ["you@example.com"], emls[0].read_text()
    assert proc.stdout.strip().endswith(emls[0].name), describe(proc)   # `ls outbox`
