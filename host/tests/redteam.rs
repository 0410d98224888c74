//! Red-team tests: a hostile plugin author or a careless operator against
//! the promises of README.md's Security table and docs/plugins.md.
//!
//! A test marked `#[ignore = "redteam: ..."]` asserts the CORRECT behaviour
//! and fails today: it is a finding, to be unmarked when fixed. The other
//! tests are attacks that held, kept as regression tests.
//!
//! Run one with `cargo test -p wasmail --test redteam NAME`; the ignored
//! ones with `-- --ignored`. The hostile plugin must be built first
//! (`cargo build --target wasm32-wasip2 --release -p wasmail-plugin-hostile`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmail::config::{Config, PluginConfig, RelayConfig, Tls};
use wasmail::mail::audit::{AuditLog, Outcome};
use wasmail::plugin::output::{PluginOutput, Stream};
use wasmail::plugin::sandbox::Stop;
use wasmail::plugin::{HostOptions, LoadFailed, PluginHost, Refused, RunReport};

// ---------------------------------------------------------------------------
// Fixtures (the same shape as host/tests/plugins.rs)
// ---------------------------------------------------------------------------

mod common;
use common::{Dir, plugin, runtime};

struct Fixture {
    dir: Dir,
    config: Config,
    audit: PathBuf,
    outbox: PathBuf,
    data: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

fn fixture_with(tag: &str, tweak: impl FnOnce(&mut PluginConfig, &mut Config)) -> Fixture {
    let dir = Dir::new(tag);
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("report.csv"), "a,b\n1,2\n").unwrap();
    let mut policy = PluginConfig::outbox_default();
    policy.allowed_from = vec!["*@example.com".into()];
    policy.default_from = Some("Hostile Test <plugin@example.com>".into());
    policy.allowed_recipients = vec!["*@example.com".into()];
    policy.max_recipients = 10;
    policy.max_messages = 5;
    policy.max_message_bytes = 1 << 20;
    policy.memory_mib = 32;
    policy.cpu_ms = 2_000;
    policy.wall_ms = 20_000;
    policy.max_resources = 200;
    policy.folder = Some(data.clone());
    let mut config = Config::default();
    let audit = dir.0.join("audit.jsonl");
    let outbox = dir.0.join("outbox");
    config.audit = Some(audit.clone());
    config.outbox = Some(outbox.clone());
    config.dead_letter = Some(dir.0.join("dead-letter"));
    config.plugins.insert("hello".into(), policy.clone());
    tweak(&mut policy, &mut config);
    config.plugins.insert("hostile".into(), policy);
    Fixture { dir, config, audit, outbox, data, lines: Arc::default() }
}

fn fixture(tag: &str) -> Fixture {
    fixture_with(tag, |_, _| {})
}

fn host(f: &Fixture) -> PluginHost {
    let lines = Arc::clone(&f.lines);
    let options = HostOptions {
        output: Some(Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_owned()))),
        ..HostOptions::default()
    };
    PluginHost::new(runtime(), f.config.clone(), options).expect("host")
}

async fn run(host: &PluginHost, name: &str, input: &str) -> RunReport {
    let p = host.load(&plugin(name), None).expect("load");
    host.run(&p, input).await.expect("run")
}

fn output_err(r: &RunReport) -> &str {
    match &r.output {
        Some(Err(e)) => e,
        other => panic!("expected the plugin to return an error, got {other:?} / {:?}", r.stopped),
    }
}

fn component_file(f: &Fixture, name: &str, wat: &str) -> (PathBuf, String) {
    let bytes = wat::parse_str(wat).unwrap();
    let path = f.dir.0.join(format!("{name}.wasm"));
    std::fs::write(&path, &bytes).unwrap();
    (path, wasmail::engine::sha256_hex(&bytes))
}

fn cache_entries(sha256: &str) -> Vec<String> {
    runtime();
    let dir = PathBuf::from(std::env::var_os("WASMAIL_CACHE_DIR").unwrap());
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(sha256)).collect())
        .unwrap_or_default()
}

fn outbox_files(f: &Fixture) -> usize {
    std::fs::read_dir(&f.outbox).map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))).count()).unwrap_or(0)
}

/// The characters `text::is_unsafe` escapes: what must never reach a terminal.
fn has_unsafe(s: &str) -> bool {
    s.chars().any(wasmail::text::is_unsafe)
}

// ---------------------------------------------------------------------------
// Findings (ignored: they fail until fixed)
// ---------------------------------------------------------------------------

/// FINDING (output forgery): `wasmail inspect` is what an operator runs on a
/// plugin they do not trust, and it prints the component's import and
/// export names as they are in the binary. The scan reads them with
/// wasmparser's `Parser`, which does not validate names, so a name can hold
/// ESC, CR, LF and bidi overrides: an import can clear the screen and print
/// a forged "verdict: can run here" line. Every name should go through
/// `text::printable` (host/src/cli/inspect.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_escapes_names_from_the_binary() {
    let f = fixture("inspect-names");
    let forged = "x\\1b[2J\\1b[H\\0averdict: can run here\\0d\\e2\\80\\ae";
    let (path, _) = component_file(
        &f,
        "evil",
        &format!(
            r#"(component
                (import "{forged}" (instance))
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func (export "run") (canon lift (core func $i "f")))
                (func (export "{forged}") (canon lift (core func $i "f"))))"#
        ),
    );
    let (text, code) = wasmail::cli::inspect::inspect(runtime(), &path).expect("inspect");
    assert_eq!(code, 77, "the import is refused: {text}");
    for line in text.lines() {
        assert!(!has_unsafe(line), "an unescaped control or bidi character reaches the terminal: {line:?}");
    }
    assert_eq!(
        text.lines().filter(|l| l.starts_with("verdict:")).count(),
        1,
        "a component's name printed a verdict line of its own:\n{text}"
    );
    // A version with line breaks, in the reason that quotes it.
    let (path, _) = component_file(
        &f,
        "evil-version",
        r#"(component
            (import "wasi:io/poll@0.3.0-x\0a  ok  y\0averdict: can run here" (instance))
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func (export "run") (canon lift (core func $i "f"))))"#,
    );
    let (text, code) = wasmail::cli::inspect::inspect(runtime(), &path).expect("inspect");
    assert_eq!(code, 77, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("verdict:")).count(), 1, "{text}");
}

/// An import of the right name and another type (a `sender` with a `send`
/// of no arguments): `inspect` once said "can run here" and `run` then
/// refused it. Both now link it the same way, and refuse it (65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_links_a_plugin_as_run_does() {
    let f = fixture("inspect-links");
    let (path, _) = component_file(
        &f,
        "hostile",
        r#"(component
            (import "wasmail:mail/sender@0.1.0" (instance (export "send" (func))))
            (core module $m
              (memory (export "mem") 1)
              (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
              (func (export "run") (param i32 i32) (result i32) unreachable))
            (core instance $a (instantiate $m))
            (func (export "run") (param "input" string) (result (result string (error string)))
              (canon lift (core func $a "run") (memory (core memory $a "mem")) (realloc (core func $a "realloc")))))"#,
    );
    let (text, code) = wasmail::cli::inspect::inspect(runtime(), &path).expect("inspect");
    assert_eq!(code, 65, "{text}");
    assert!(text.contains("cannot run here") && text.contains("linking"), "{text}");
    let e = host(&f).load(&path, None).err().expect("refused at load");
    assert!(e.is::<LoadFailed>(), "{e:#}");
}

/// FINDING (degraded): `check_component` only checks that some function is
/// exported as `run`, not its type. A `run: func()` (or any other
/// signature) passes `load`, `wasmail compile` and `wasmail inspect`
/// ("verdict: can run here"), is instantiated (its start function runs)
/// and only then fails at `get_typed_func`, reported as "the plugin
/// trapped" (exit 70) instead of the documented refusal (exit 77, "it does
/// not export `run: func(input: string) -> result<string, string>`").
/// host/src/plugin/mod.rs `check_component`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_export_of_another_type_is_refused_at_load() {
    let f = fixture("run-signature");
    let host = host(&f);
    for (label, wat) in [
        (
            "func()",
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func (export "run") (canon lift (core func $i "f"))))"#,
        ),
        (
            "func(input: u32) -> u32",
            r#"(component
                (core module $m (func (export "f") (param i32) (result i32) local.get 0))
                (core instance $i (instantiate $m))
                (func (export "run") (param "input" u32) (result u32) (canon lift (core func $i "f"))))"#,
        ),
    ] {
        let (path, _) = component_file(&f, "hostile", wat);
        match host.load(&path, None) {
            Err(e) => assert!(e.is::<Refused>() && format!("{e:#}").contains("run"), "{label}: {e:#}"),
            Ok(p) => {
                let r = host.run(&p, "").await.expect("run");
                panic!("{label}: loaded as a plugin; the run ended with stopped={:?} exit={}", r.stopped, r.exit_code());
            }
        }
    }
}

/// FINDING (degraded): the preflight count of core instances and memories
/// ("refused before it is compiled", docs/plugins.md) counts a nested
/// component's instances once, however many times it is instantiated. A
/// component that instantiates a 4-instance nested component 8 times
/// (33 core instances, 32 memories; the limit is 8) passes the preflight, is compiled
/// (the cost the preflight exists to avoid), and only then fails.
/// host/src/plugin/imports.rs `scan` (ComponentInstanceSection is not
/// counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "redteam: preflight counts a nested component's core instances once, however often it is instantiated; the component is compiled before it fails"]
async fn nested_component_instances_are_counted_before_compiling() {
    let f = fixture("nested");
    let host = host(&f);
    let inner_instances = "(core instance (instantiate $m))\n".repeat(4);
    let outer_instances = "(instance (instantiate $inner))\n".repeat(8);
    let (path, sha) = component_file(
        &f,
        "hostile",
        &format!(
            r#"(component
                (component $inner
                  (core module $m (memory 1) (func (export "f")))
                  {inner_instances})
                {outer_instances}
                (core module $n (func (export "f")))
                (core instance $i (instantiate $n))
                (func (export "run") (canon lift (core func $i "f"))))"#
        ),
    );
    let scan = wasmail::plugin::imports::scan(&std::fs::read(&path).unwrap()).unwrap();
    let err = host.load(&path, None).err();
    assert!(
        matches!(&err, Some(e) if e.is::<LoadFailed>()),
        "33 core instances and 32 memories loaded: scan counted {} instances and {} memories; {err:?}",
        scan.core_instances,
        scan.memories
    );
    assert_eq!(cache_entries(&sha), Vec::<String>::new(), "it was compiled before it was refused (scan counted {} instances)", scan.core_instances);
}

/// FINDING (degraded): `max_output_bytes` counts the plugin's bytes, not
/// what the operator is shown. Every line gets the `[name] ` prefix and
/// every control character becomes a `\u{..}` escape, so one byte of
/// plugin output becomes up to `len(name) + 3` bytes (a line end) or 6
/// bytes (ESC) on the terminal. With the cap at 100,000 bytes a plugin
/// printing only line ends makes 100,000 lines, about 1.1 MB, of host
/// output. (host/src/plugin/output.rs `write`: `s.written += take` charges
/// the input, not the emitted lines.) Correct: what is emitted, prefixes
/// and escapes included, stays within the cap (plus one note).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_cap_bounds_what_the_operator_sees() {
    // In-process, on the output type itself.
    for (what, bytes) in [("line ends", vec![b'\n'; 1 << 20]), ("ESC", vec![0x1b; 1 << 20])] {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = Arc::clone(&seen);
        let out = PluginOutput::new("hostile", 100_000, Arc::new(move |l: &str| s.lock().unwrap().push(l.to_owned())));
        out.write(Stream::Stdout, &bytes);
        out.finish();
        let emitted: usize = seen.lock().unwrap().iter().map(|l| l.len() + 1).sum();
        assert!(emitted < 100_000 + 4_096, "{what}: 100,000 bytes of plugin output became {emitted} bytes of host output");
    }
    // And through a real plugin run.
    let f = fixture_with("newline-flood", |p, _| p.max_output_bytes = 100_000);
    let host = host(&f);
    let r = run(&host, "hostile", "newline-flood").await;
    assert!(r.stopped.is_none(), "{:?}", r.stopped);
    let lines = f.lines.lock().unwrap();
    let emitted: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(emitted < 100_000 + 4_096, "{} lines, {emitted} bytes from a 100,000-byte cap", lines.len());
}

/// FINDING (promise broken: "nothing it hands over is ... unaudited"):
/// without a relay, `to_outbox` writes the message into the outbox first
/// and appends its `accepted` record after. When the audit log cannot be
/// written (here: /dev/full, i.e. a full disk), the run is stopped with
/// `host: the audit log could not be written`, but the message stays in
/// the outbox with no record at all. host/src/plugin/sender.rs
/// `to_outbox` (the relay path writes ahead and audits `attempt` before
/// sending; the outbox path has no equivalent). Correct: no mail leaves
/// the plugin's hands without its record: the outbox file is removed (or
/// never written) when its record cannot be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_audit_log_leaves_no_unaudited_mail() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let f = fixture_with("audit-full", |_, c| c.audit = Some(PathBuf::from("/dev/full")));
    let host = host(&f);
    let r = run(&host, "hostile", "send-ok").await;
    assert!(matches!(&r.stop, Some(Stop::Host(why)) if why.contains("audit log")), "{:?} {:?}", r.stopped, r.output);
    assert_eq!(outbox_files(&f), 0, "a message is in the outbox and no audit record says so ({:?})", f.outbox);
}

// ---------------------------------------------------------------------------
// Attacks that held (regression tests)
// ---------------------------------------------------------------------------

/// Text the policy's size floor does not count (the subject, a header
/// value, a display name), 48 MiB of it: refused as `invalid-message`
/// naming the field (the mailer's per-field limits), never a mailer
/// failure, and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_text_outside_the_bodies_is_refused_naming_the_field() {
    let f = fixture_with("huge-text", |p, _| {
        p.memory_mib = 160;
        p.cpu_ms = 20_000;
        p.wall_ms = 60_000;
    });
    let host = host(&f);
    for (mode, field) in [("huge-subject:48", "subject"), ("huge-header:48", "headers[0]"), ("huge-name:48", "to[0]")] {
        let r = run(&host, "hostile", mode).await;
        assert!(r.stopped.is_none(), "{mode}: the run was stopped: {:?}", r.stopped);
        let e = output_err(&r);
        assert!(e.starts_with(&format!("invalid-message: {field}")) || e.starts_with("policy-denied"), "{mode}: {e:.300}");
        assert!(e.len() < 1_000, "{mode}: a {}-byte error", e.len());
        let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
        assert_eq!(last.outcome, Outcome::Error, "{mode}: {last:?}");
    }
    assert_eq!(outbox_files(&f), 0);
}


/// Loops of every refusal kind, and of accepted sends, end at the attempt
/// budget with one bounded audit record per call: invalid-message,
/// policy-denied (the rate, and max_messages once the run has sent its
/// messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_of_every_refusal_kind_end_at_the_attempt_budget() {
    for (mode, tweak) in [
        ("invalid-loop", (|_: &mut PluginConfig| {}) as fn(&mut PluginConfig)),
        ("send-loop", |p: &mut PluginConfig| p.rate_per_minute = Some(2)),
        ("send-loop", |p: &mut PluginConfig| p.rate_per_minute = Some(0)),
        ("send-loop", |_: &mut PluginConfig| {}),
    ] {
        let f = fixture_with("loops", |p, _| {
            p.max_messages = 5;
            p.max_attempts = Some(50);
            tweak(p);
        });
        let host = host(&f);
        let r = run(&host, "hostile", mode).await;
        assert!(matches!(&r.stop, Some(Stop::Budget(e)) if e.key == "max_attempts"), "{mode}: {:?} {:?}", r.stopped, r.output);
        assert_eq!(r.counts.attempts, 51, "{mode}");
        let records = AuditLog::read(&f.audit).unwrap();
        // One record per call, and an `attempt` ahead of each accepted one.
        assert_eq!(records.len() as u64, 51 + r.counts.accepted, "{mode}: one record per call");
        assert!(r.counts.accepted <= 5, "{mode}: {:?}", r.counts);
        assert_eq!(records.iter().filter(|x| x.outcome == Outcome::Accepted).count() as u64, r.counts.accepted);
        assert_eq!(outbox_files(&f) as u64, r.counts.accepted, "{mode}");
    }
}

/// Odd files in the grant, attached by reference: each refused with a
/// reason, at once, without blocking or reading them; a huge sparse file is
/// refused by its size, not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_files_in_the_grant_are_refused_quickly() {
    let f = fixture_with("odd-files", |p, _| p.wall_ms = 10_000);
    let outside = f.dir.0.join("secret.txt");
    std::fs::write(&outside, "TOPSECRET").unwrap();
    let d = &f.data;
    std::os::unix::fs::symlink(&outside, d.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", d.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("loop-b", d.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", d.join("loop-b")).unwrap();
    std::os::unix::fs::symlink("report.csv", d.join("inner-link")).unwrap();
    std::fs::create_dir(d.join("dir.csv")).unwrap();
    std::os::unix::fs::symlink("..", d.join("up")).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let c = std::ffi::CString::new(d.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let sparse = std::fs::File::create(d.join("sparse.bin")).unwrap();
    sparse.set_len(100 << 30).unwrap();
    std::fs::write(d.join("unreadable.csv"), "x").unwrap();
    std::fs::set_permissions(d.join("unreadable.csv"), std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    std::fs::write(d.join("é ü б\u{202e}.csv"), "ok").unwrap();
    let host = host(&f);
    for name in ["abs-link", "rel-link", "loop-a", "inner-link", "dir.csv", "up/secret.txt", "sock", "fifo", "sparse.bin", "missing", "report.csv/", "./report.csv"] {
        let started = std::time::Instant::now();
        let r = run(&host, "hostile", &format!("attach:{name}")).await;
        let e = output_err(&r).to_owned();
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{name}: took {:?}", started.elapsed());
        assert!(e.starts_with("invalid-message") || e.starts_with("policy-denied: max_message_bytes"), "{name}: {e}");
        assert_eq!(outbox_files(&f), 0, "{name}: {e}");
    }
    // Non-ASCII names are fine (and a root-run test can read mode 000).
    let r = run(&host, "hostile", "attach:é ü б\u{202e}.csv").await;
    assert!(matches!(&r.output, Some(Ok(o)) if o.starts_with("sent")), "{:?}", r.output);
    drop(sock);
}

/// A dead-letter folder that cannot hold the write-ahead copy (it is a
/// file): the message is not sent, the run stops with `host:` and the
/// attempt is audited as not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_spool_stops_the_run_and_sends_nothing() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let f = fixture_with("spool-file", |_, c| {
        c.relay = Some(toml::from_str::<RelayConfig>(&format!("server = \"{server}\"\ntls = \"none\"\n")).unwrap());
    });
    let dead = f.dir.0.join("dead-letter");
    std::fs::write(&dead, "not a folder").unwrap();
    assert!(matches!(f.config.relay.as_ref().map(|r| r.tls), Some(Tls::None)));
    let host = host(&f);
    let r = run(&host, "hostile", "send-ok").await;
    assert!(matches!(&r.stop, Some(Stop::Host(why)) if why.contains("spool")), "{:?} {:?}", r.stopped, r.output);
    let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
    assert_eq!(last.outcome, Outcome::Error);
    assert!(last.reason.as_deref().unwrap().contains("not sent"), "{last:?}");
    assert!(listener.accept().is_err(), "nothing may reach the relay");
}

/// Config values at their edges: empty and half patterns allow nothing,
/// `max_message_bytes = 0` and `max_messages = 0` send nothing, and huge
/// numbers neither panic nor overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_config_values_fail_closed() {
    for pattern in ["", "@", "*@", "*@*.", "@example.com", "*@.example.com", "*@example.com.", " ", "*@*.*", "\u{FF0A}@example.com"] {
        let f = fixture_with("patterns", |p, _| p.allowed_recipients = vec![pattern.into()]);
        let host = host(&f);
        let r = run(&host, "hostile", "send-ok").await;
        assert!(output_err(&r).starts_with("policy-denied: allowed_recipients"), "{pattern:?}: {:?}", r.output);
    }
    for (label, tweak) in [
        ("max_message_bytes = 0", (|p: &mut PluginConfig| p.max_message_bytes = 0) as fn(&mut PluginConfig)),
        ("max_messages = 0", |p: &mut PluginConfig| p.max_messages = 0),
        ("max_recipients = 0", |p: &mut PluginConfig| p.max_recipients = 0),
    ] {
        let f = fixture_with("zero", |p, _| tweak(p));
        let host = host(&f);
        let r = run(&host, "hostile", "send-ok").await;
        assert!(output_err(&r).starts_with("policy-denied"), "{label}: {:?} {:?}", r.output, r.stopped);
        assert_eq!(outbox_files(&f), 0, "{label}");
    }
    let f = fixture_with("huge", |p, _| {
        p.cpu_ms = u64::MAX;
        p.wall_ms = u64::MAX;
        p.memory_mib = u64::MAX;
        p.max_output_bytes = usize::MAX;
        p.max_attempts = Some(u64::MAX);
        p.max_resources = usize::MAX;
        p.rate_per_minute = Some(u32::MAX);
    });
    let host = host(&f);
    let r = run(&host, "hostile", "send-ok").await;
    assert!(matches!(&r.output, Some(Ok(o)) if o.starts_with("sent")), "{:?} {:?}", r.output, r.stopped);
    // A config file over the spool's size cap is refused at load.
    let path = f.dir.0.join("wasmail.toml");
    std::fs::write(&path, "[plugins.x]\nmax_message_bytes = 67108865\n").unwrap();
    assert!(Config::load(&path).is_err());
    // So is a config built in code (the library), and a plugin naming a
    // [dkim] table that is not there.
    let over = fixture_with("over", |p, _| p.max_message_bytes = 1 << 40);
    let e = PluginHost::new(runtime(), over.config.clone(), HostOptions::default()).err().expect("refused");
    assert!(format!("{e:#}").contains("plugins.hostile.max_message_bytes"), "{e:#}");
    let unsigned = fixture_with("nodkim", |p, _| p.dkim = Some("missing".into()));
    let e = PluginHost::new(runtime(), unsigned.config.clone(), HostOptions::default()).err().expect("refused");
    assert!(format!("{e:#}").contains("no [dkim.missing] table"), "{e:#}");
}

/// Non-ASCII everywhere a plugin or operator can put it: the policy, the
/// output prefix, the audit log and the outbox take it without a panic or
/// a forged line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_and_control_characters_in_the_plugin_name() {
    let f = fixture("names");
    let mut config = f.config.clone();
    let name = "é\u{1b}[2J\nwasmail: ok\u{202e}";
    config.plugins.insert(name.into(), config.plugins["hostile"].clone());
    let lines = Arc::clone(&f.lines);
    let options = HostOptions { output: Some(Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_owned()))), ..HostOptions::default() };
    let host = PluginHost::new(runtime(), config, options).unwrap();
    let p = host.load(&plugin("hostile"), Some(name)).unwrap();
    let r = host.run(&p, "forge").await.unwrap();
    assert!(r.stopped.is_none());
    let lines = f.lines.lock().unwrap();
    assert!(!lines.is_empty());
    for l in lines.iter() {
        assert!(!has_unsafe(l) && l.starts_with("[é\\u{1b}[2J\\u{a}wasmail: ok\\u{202e}"), "{l:?}");
    }
    let r = host.run(&p, "send-ok").await.unwrap();
    assert!(matches!(&r.output, Some(Ok(_))), "{:?}", r.output);
    let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
    assert_eq!(last.plugin, name, "the audit log keeps the name, JSON-escaped");
    let text = std::fs::read_to_string(&f.audit).unwrap();
    assert_eq!(text.lines().count(), AuditLog::read(&f.audit).unwrap().len(), "one line per record");
}

/// Code that runs while the component is instantiated (a core module's
/// `start` function), before `run` is called: the CPU limit stops an
/// endless one, and the memory limit one that grows without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_while_the_component_is_instantiated() {
    let f = fixture_with("start", |p, _| {
        p.cpu_ms = 300;
        p.memory_mib = 16;
    });
    let host = host(&f);
    for (label, body, expect) in [
        ("spin", "(loop $l (br $l))", "cpu_ms"),
        ("grow", "(loop $l (drop (memory.grow (i32.const 16))) (br $l))", "memory_mib"),
    ] {
        let (path, _) = component_file(
            &f,
            "hostile",
            &format!(
                r#"(component
                    (core module $m
                      (memory (export "mem") 1)
                      (func $start {body})
                      (start $start)
                      (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
                      (func (export "run") (param i32 i32) (result i32) unreachable))
                    (core instance $a (instantiate $m))
                    (func (export "run") (param "input" string) (result (result string (error string)))
                      (canon lift (core func $a "run") (memory (core memory $a "mem")) (realloc (core func $a "realloc")))))"#
            ),
        );
        let p = host.load(&path, None).expect("load");
        let started = std::time::Instant::now();
        let r = host.run(&p, "").await.expect("run");
        assert!(r.stopped.as_deref().is_some_and(|s| s.starts_with(expect)), "{label}: {:?}", r.stopped);
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{label}: {:?}", started.elapsed());
    }
}

/// The core module (and its aliases, `$mem` and `$realloc`) of the
/// hand-written components below: `pages` of memory, and a `realloc` that
/// hands out memory upwards from `heap`, never freeing.
fn memory_module(pages: usize, heap: usize) -> String {
    format!(
        r#"  (core module $A
    (memory (export "mem") {pages})
    (global $bump (mut i32) (i32.const {heap}))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (local $r i32)
      (local.set $r (i32.and (i32.add (global.get $bump) (i32.const 7)) (i32.const -8)))
      (global.set $bump (i32.add (local.get $r) (local.get 3)))
      (local.get $r)))
  (core instance $a (instantiate $A))
  (alias core export $a "mem" (core memory $mem))
  (alias core export $a "realloc" (core func $realloc))
"#
    )
}

/// The end of a hand-written plugin's core `run`: it returns `ok("")` (the
/// result record at 0x3000 of the memory of [`memory_module`]).
const RETURN_OK: &str = "(i32.store (i32.const 0x3000) (i32.const 0))
      (i32.store (i32.const 0x3004) (i32.const 0x2000))
      (i32.store (i32.const 0x3008) (i32.const 0))
      (i32.const 0x3000)";

/// The end of a hand-written plugin: its core module `$B`, given the memory
/// of [`memory_module`] as `a` and the lowered imports `$hi` as `h`, lifted
/// as the world's `run`.
const LIFT_RUN: &str = r#"  (core instance $b (instantiate $B (with "a" (instance $a)) (with "h" (instance $hi))))
  (func (export "run") (param "input" string) (result (result string (error string)))
    (canon lift (core func $b "run") (memory $mem) (realloc $realloc)))
"#;

/// The WAT of a plugin that builds `requests` wasi:http requests, never
/// sent, each with a body of two `chunk`-octet writes, and keeps them all
/// (one resource each); it traps when a write is refused.
fn http_bodies_wat(requests: usize, chunk: usize) -> String {
    let memory = memory_module(40, 0x20_0000);
    format!(
        r#"(component $C
  (import "wasi:io/error@0.2.0" (instance $ioerr (export "error" (type (sub resource)))))
  (alias export $ioerr "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
     (export "output-stream" (type $os (sub resource)))
     (alias outer $C $error (type $err))
     (type $se (variant (case "last-operation-failed" (own $err)) (case "closed")))
     (export "stream-error" (type $se2 (eq $se)))
     (export "[method]output-stream.write" (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se2)))))))
  (alias export $streams "output-stream" (type $os))
  (import "wasi:http/types@0.2.0" (instance $http
     (alias outer $C $os (type $os1))
     (export "output-stream" (type $os2 (eq $os1)))
     (export "fields" (type $fields (sub resource)))
     (export "outgoing-request" (type $req (sub resource)))
     (export "outgoing-body" (type $body (sub resource)))
     (export "[constructor]fields" (func (result (own $fields))))
     (export "[constructor]outgoing-request" (func (param "headers" (own $fields)) (result (own $req))))
     (export "[method]outgoing-request.body" (func (param "self" (borrow $req)) (result (result (own $body)))))
     (export "[method]outgoing-body.write" (func (param "self" (borrow $body)) (result (result (own $os2)))))))
  (alias export $http "outgoing-body" (type $body))
{memory}  (core func $fields (canon lower (func $http "[constructor]fields")))
  (core func $req (canon lower (func $http "[constructor]outgoing-request")))
  (core func $rbody (canon lower (func $http "[method]outgoing-request.body") (memory $mem)))
  (core func $bwrite (canon lower (func $http "[method]outgoing-body.write") (memory $mem)))
  (core func $oswrite (canon lower (func $streams "[method]output-stream.write") (memory $mem)))
  (core func $dropos (canon resource.drop $os))
  (core func $dropbody (canon resource.drop $body))
  (core module $B
    (import "a" "mem" (memory 1))
    (import "h" "fields" (func $fields (result i32)))
    (import "h" "req" (func $req (param i32) (result i32)))
    (import "h" "rbody" (func $rbody (param i32 i32)))
    (import "h" "bwrite" (func $bwrite (param i32 i32)))
    (import "h" "oswrite" (func $oswrite (param i32 i32 i32 i32)))
    (import "h" "dropos" (func $dropos (param i32)))
    (import "h" "dropbody" (func $dropbody (param i32)))
    (func (export "run") (param i32 i32) (result i32) (local $i i32) (local $r i32) (local $b i32) (local $o i32)
      (block $done (loop $l
        (br_if $done (i32.ge_u (local.get $i) (i32.const {requests})))
        (local.set $r (call $req (call $fields)))
        (call $rbody (local.get $r) (i32.const 0x100))
        (if (i32.load8_u (i32.const 0x100)) (then unreachable))
        (local.set $b (i32.load (i32.const 0x104)))
        (call $bwrite (local.get $b) (i32.const 0x110))
        (if (i32.load8_u (i32.const 0x110)) (then unreachable))
        (local.set $o (i32.load (i32.const 0x114)))
        (call $oswrite (local.get $o) (i32.const 0x10000) (i32.const {chunk}) (i32.const 0x120))
        (if (i32.load8_u (i32.const 0x120)) (then unreachable))
        (call $oswrite (local.get $o) (i32.const 0x10000) (i32.const {chunk}) (i32.const 0x120))
        (if (i32.load8_u (i32.const 0x120)) (then unreachable))
        (call $dropos (local.get $o))
        (call $dropbody (local.get $b))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
      {RETURN_OK}))
  (core instance $hi (export "fields" (func $fields)) (export "req" (func $req)) (export "rbody" (func $rbody))
     (export "bwrite" (func $bwrite)) (export "oswrite" (func $oswrite)) (export "dropos" (func $dropos)) (export "dropbody" (func $dropbody)))
{LIFT_RUN})
"#
    )
}

/// The peak resident memory of this process (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// wasi:http request bodies live in the host, outside the plugin's
/// `memory_mib`: with wasmtime-wasi-http's defaults each request held 2 MiB
/// of writes, and 900 requests took the host past 1.8 GB. A write is now
/// held to `HTTP_BODY_CHUNK_BYTES`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_a_plugin_never_sends_hold_little_host_memory() {
    let f = fixture_with("httpbody", |p, _| {
        p.max_resources = 1_000;
        p.cpu_ms = 20_000;
    });
    let host = host(&f);
    let chunk = wasmail::plugin::HTTP_BODY_CHUNK_BYTES;
    // Writes of the permit's size go through, and 900 requests keep them...
    let (path, _) = component_file(&f, "hostile", &http_bodies_wat(900, chunk));
    let before = peak_rss_kib();
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    assert!(matches!(r.output, Some(Ok(_))), "{:?} / {:?}", r.output, r.stopped);
    let grown = peak_rss_kib().saturating_sub(before);
    assert!(grown < 128 << 10, "the host's peak memory grew by {grown} KiB");
    // ...and a write of 1 MiB is refused (the plugin traps on the error).
    let (path, _) = component_file(&f, "hostile", &http_bodies_wat(1, 1 << 20));
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    assert!(r.output.is_none() && r.stopped.is_some(), "{:?} / {:?}", r.output, r.stopped);
}

/// The WAT of a plugin that makes one wasi:http `fields` and appends
/// `appends` headers `x-a: aaa…` of `value` octets to it; it traps when an
/// append is refused with an error, and returns ok when all went in.
fn http_fields_wat(appends: usize, value: usize) -> String {
    let memory = memory_module(2, 0x1_8000);
    format!(
        r#"(component $C
  (import "wasi:http/types@0.2.0" (instance $http
     (export "fields" (type $fields (sub resource)))
     (type $he (variant (case "invalid-syntax") (case "forbidden") (case "immutable")))
     (export "header-error" (type $he2 (eq $he)))
     (export "[constructor]fields" (func (result (own $fields))))
     (export "[method]fields.append" (func (param "self" (borrow $fields)) (param "name" string) (param "value" (list u8)) (result (result (error $he2)))))))
{memory}  (core func $fields (canon lower (func $http "[constructor]fields")))
  (core func $append (canon lower (func $http "[method]fields.append") (memory $mem) string-encoding=utf8))
  (core module $B
    (import "a" "mem" (memory 1))
    (import "h" "fields" (func $fields (result i32)))
    (import "h" "append" (func $append (param i32 i32 i32 i32 i32 i32)))
    (func (export "run") (param i32 i32) (result i32) (local $i i32) (local $f i32)
      (i32.store (i32.const 0x200) (i32.const 0x00612d78))
      (memory.fill (i32.const 0x1000) (i32.const 0x61) (i32.const {value}))
      (local.set $f (call $fields))
      (block $done (loop $l
        (br_if $done (i32.ge_u (local.get $i) (i32.const {appends})))
        (call $append (local.get $f) (i32.const 0x200) (i32.const 3) (i32.const 0x1000) (i32.const {value}) (i32.const 0x100))
        (if (i32.load8_u (i32.const 0x100)) (then unreachable))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
      {RETURN_OK}))
  (core instance $hi (export "fields" (func $fields)) (export "append" (func $append)))
{LIFT_RUN})
"#
    )
}

/// A wasi:http `fields` a plugin builds holds at most `HTTP_FIELDS_BYTES`
/// of the host's memory (wasmtime-wasi-http's default is 128 KiB each, and
/// a plugin may hold `max_resources` of them): appends that fit go in, and
/// the append past the cap stops the plugin (wasmtime-wasi-http traps on
/// it: wasi:http 0.2.0's `header-error` has no case for a size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_s_http_fields_hold_at_most_the_cap() {
    let f = fixture("httpfields");
    let host = host(&f);
    let cap = wasmail::plugin::HTTP_FIELDS_BYTES;
    let value = 1000;
    // Each append costs its value and some bookkeeping, so a few fewer than
    // cap / value fit, and twice as many cannot.
    let fit = cap / value - 2;
    let (path, _) = component_file(&f, "hostile", &http_fields_wat(fit, value));
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    assert!(matches!(r.output, Some(Ok(_))), "{:?} / {:?}", r.output, r.stopped);
    let (path, _) = component_file(&f, "hostile", &http_fields_wat(2 * cap / value, value));
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    let stopped = r.stopped.unwrap_or_default();
    assert!(r.output.is_none() && stopped.contains("size of fields"), "{:?} / {stopped}", r.output);
}

/// The WAT of a plugin that calls `send` once with `n` To mailboxes whose
/// addresses all point at the same `size` octets of its memory: lifting
/// copies each, so the host is handed `n` × `size` octets.
fn aliased_addresses_wat(n: usize, size: usize) -> String {
    let big = 16 << 20;
    let memory = memory_module((big + size) / 65536 + 1, 0x40_0000);
    format!(
        r#"(component
  (type $inst (instance 
    (type $mailbox-t (record (field "name" (option string)) (field "address" string)))
    (export "mailbox" (type $mailbox (eq $mailbox-t)))
    (type $content-t (variant (case "bytes" (list u8)) (case "file" string)))
    (export "content" (type $content (eq $content-t)))
    (type $attachment-t (record (field "filename" string) (field "content-type" (option string)) (field "content" $content) (field "content-id" (option string))))
    (export "attachment" (type $attachment (eq $attachment-t)))
    (type $priority-t (enum "highest" "high" "normal" "low" "lowest"))
    (export "priority" (type $priority (eq $priority-t)))
    (type $message-t (record
      (field "from" (option $mailbox)) (field "reply-to" (option $mailbox))
      (field "to" (list $mailbox)) (field "cc" (list $mailbox)) (field "bcc" (list $mailbox))
      (field "subject" string) (field "text" (option string)) (field "html" (option string))
      (field "attachments" (list $attachment)) (field "priority" (option $priority))
      (field "headers" (list (tuple string string)))))
    (export "message" (type $message (eq $message-t)))
    (type $reply-t (record (field "code" u16) (field "enhanced" (option string)) (field "text" string)))
    (export "reply" (type $reply (eq $reply-t)))
    (type $rf-t (record (field "address" string) (field "reply" $reply)))
    (export "recipient-failure" (type $rf (eq $rf-t)))
    (type $receipt-t (record (field "message-id" string) (field "accepted" (list string)) (field "rejected" (list $rf)) (field "size" u64) (field "reply" $reply)))
    (export "receipt" (type $receipt (eq $receipt-t)))
    (type $stage-t (enum "connect" "greeting" "ehlo" "tls" "auth" "mail-from" "rcpt-to" "data" "data-block" "data-end" "rset" "quit"))
    (export "stage" (type $stage (eq $stage-t)))
    (type $rejection-t (record (field "stage" $stage) (field "transient" bool) (field "reply" $reply) (field "recipients" (list $rf))))
    (export "rejection" (type $rejection (eq $rejection-t)))
    (type $se-t (variant (case "invalid-message" string) (case "policy-denied" string) (case "connect" string) (case "tls" string)
       (case "auth" $reply) (case "rejected" $rejection) (case "timeout" $stage) (case "protocol" string) (case "outcome-unknown" string)))
    (export "send-error" (type $se (eq $se-t)))
    (export "send" (func (param "msg" $message) (result (result $receipt (error $se)))))
))
  (import "wasmail:mail/sender@0.1.0" (instance $sender (type $inst)))
{memory}  (core func $send (canon lower (func $sender "send") (memory $mem) (realloc $realloc)))
  (core module $B
    (import "a" "mem" (memory 1))
    (import "h" "send" (func $send (param i32 i32)))
    (func (export "run") (param i32 i32) (result i32) (local $i i32) (local $p i32)
      
      (i32.store (i32.const 0x1030) (i32.const 0x100000))
      (i32.store (i32.const 0x1034) (i32.const {n}))
      (local.set $p (i32.const 0x100000))
      (block $done (loop $l
        (br_if $done (i32.ge_u (local.get $i) (i32.const {n})))
        (i32.store (i32.add (local.get $p) (i32.const 12)) (i32.const {big}))
        (i32.store (i32.add (local.get $p) (i32.const 16)) (i32.const {size}))
        (local.set $p (i32.add (local.get $p) (i32.const 20)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))

      (call $send (i32.const 0x1000) (i32.const 0x2000))
      {RETURN_OK}))
  (core instance $hi (export "send" (func $send)))
{LIFT_RUN})

"#
    )
}

/// One call may copy into the host no more than the plugin's memory holds:
/// 8 mailboxes pointing at one 8 MiB string are 64 MiB to lift, twice the
/// plugin's 32 MiB, and within wasmtime's default of 128 MiB a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_copies_no_more_into_the_host_than_the_plugin_holds() {
    let f = fixture("alias");
    let host = host(&f);
    let (path, _) = component_file(&f, "hostile", &aliased_addresses_wat(8, 8 << 20));
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    assert!(r.output.is_none(), "{:?}", r.output);
    let stopped = r.stopped.unwrap_or_default();
    assert!(stopped.contains("too much data"), "{stopped}");
    assert_eq!(r.counts.attempts, 0, "stopped while the message was lifted, before the policy");
    // The same list of small strings goes through (and is refused by the policy).
    let (path, _) = component_file(&f, "hostile", &aliased_addresses_wat(8, 64));
    let r = host.run(&host.load(&path, None).expect("load"), "").await.expect("run");
    assert!(r.output.is_some(), "{:?}", r.stopped);
}
