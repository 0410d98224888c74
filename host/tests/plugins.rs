//! The hostile-plugin suite, in one test process: every hostile plugin ends
//! with the host alive, a clear error, an audit record where a send was
//! attempted, and a well-behaved plugin that still succeeds right after.
//! Also: the mailer's socket check, the compile cache, and reading the audit
//! log back. Mail goes to the outbox (no relay needed); the relay-side tests
//! live in tests/test_plugins.py.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use wasmail::mail::audit::{AuditLog, Outcome};
use wasmail::bindings::types::{Mailbox, Message, SendError};
use wasmail::config::{Config, PluginConfig};
use wasmail::mailer::credentials::Secret;
use wasmail::engine::CacheOutcome;
use wasmail::mailer::{Mailer, MailerGrant};
use wasmail::plugin::{HostOptions, LoadFailed, PluginHost, Refused, RunReport};
use wasmail::config::{Auth, Tls};
use wasmail::mailer::relay::RelaySettings;
use wasmail::plugin::sandbox::Stop;

mod common;
use common::{Dir, plugin, runtime};

struct Fixture {
    _dir: Dir,
    config: Config,
    audit: PathBuf,
    outbox: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

fn fixture(tag: &str) -> Fixture {
    fixture_with(tag, |_| {})
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// The fixture, with the hostile plugin's policy changed by `tweak`. The
/// granted folder holds `report.csv` and a FIFO, `fifo`.
fn fixture_with(tag: &str, tweak: impl FnOnce(&mut PluginConfig)) -> Fixture {
    let dir = Dir::new(tag);
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("report.csv"), "a,b\n1,2\n").unwrap();
    mkfifo(&data.join("fifo"));
    let mut policy = PluginConfig::outbox_default();
    policy.allowed_from = vec!["*@example.com".into()];
    policy.default_from = Some("Hostile Test <plugin@example.com>".into());
    policy.allowed_recipients = vec!["*@example.com".into()];
    policy.max_recipients = 10;
    policy.max_messages = 5;
    policy.max_message_bytes = 1 << 20;
    policy.memory_mib = 32;
    policy.cpu_ms = 300;
    policy.wall_ms = 20_000;
    policy.max_resources = 200;
    policy.folder = Some(data);
    let mut config = Config::default();
    let audit = dir.0.join("audit.jsonl");
    let outbox = dir.0.join("outbox");
    config.audit = Some(audit.clone());
    config.outbox = Some(outbox.clone());
    config.plugins.insert("hello".into(), policy.clone());
    tweak(&mut policy);
    config.plugins.insert("hostile".into(), policy);
    Fixture { _dir: dir, config, audit, outbox, lines: Arc::default() }
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

/// After each hostile plugin: a well-behaved one still works.
async fn control(host: &PluginHost) {
    let r = run(host, "hello", "friend@example.com").await;
    assert!(r.stopped.is_none(), "control plugin stopped: {:?}", r.stopped);
    assert!(matches!(&r.output, Some(Ok(o)) if o.starts_with("sent")), "{:?}", r.output);
}

fn output_err(r: &RunReport) -> &str {
    match &r.output {
        Some(Err(e)) => e,
        other => panic!("expected the plugin to return an error, got {other:?} / {:?}", r.stopped),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_suite_in_one_process() {
    let f = fixture("hostile");
    let host = host(&f);

    // Limits: each stops the plugin with a message naming the limit.
    for (mode, limit) in [("loop", "cpu_ms"), ("grow", "memory_mib"), ("recurse", "stack"), ("resources", "max_resources")] {
        let r = run(&host, "hostile", mode).await;
        let stopped = r.stopped.as_deref().unwrap_or_else(|| panic!("{mode}: not stopped: {:?}", r.output));
        assert!(stopped.starts_with(limit), "{mode}: {stopped}");
        assert_eq!(r.exit_code(), 70);
        control(&host).await;
    }
    let r = run(&host, "hostile", "panic").await;
    assert!(r.stopped.as_deref().is_some_and(|s| s.contains("panicked")), "{:?}", r.stopped);
    assert!(f.lines.lock().unwrap().iter().any(|l| l.starts_with("[hostile:stderr]") && l.contains("on purpose")));
    control(&host).await;

    // Files: nothing outside the grant, read-only inside it.
    let r = run(&host, "hostile", "read-outside").await;
    assert!(output_err(&r).contains("/etc/passwd"), "{:?}", r.output);
    let r = run(&host, "hostile", "read-inside").await;
    assert!(matches!(&r.output, Some(Ok(o)) if o.contains("report.csv")), "{:?}", r.output);
    control(&host).await;

    // Attachments by reference: a file in the grant is streamed in; a path
    // that leaves the grant is refused.
    let r = run(&host, "hostile", "attach-file").await;
    assert!(matches!(&r.output, Some(Ok(o)) if o.starts_with("sent")), "{:?}", r.output);
    assert_eq!(r.counts.accepted, 1);
    let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
    let eml = std::fs::read_to_string(last.outbox.as_deref().unwrap()).unwrap();
    assert!(eml.contains("filename=report.csv"), "{eml}");
    assert!(eml.contains("YSxiCjEsMgo="), "the file's bytes, base64: {eml}");
    let r = run(&host, "hostile", "attach-outside").await;
    let e = output_err(&r);
    assert!(e.starts_with("invalid-message: attachments[0].content") && e.contains("granted folder"), "{e}");
    control(&host).await;

    // Policy: denied with the rule named, and audited.
    for (mode, expect) in [
        ("spoof-from", "policy-denied: allowed_from"),
        ("bcc-outside", "policy-denied: allowed_recipients: bcc[0]"),
        ("cc-outside", "policy-denied: allowed_recipients: cc[0]"),
        ("many-recipients", "policy-denied: max_recipients"),
        ("big", "policy-denied: max_message_bytes"),
        ("header", "policy-denied: allowed_headers"),
        ("crlf-subject", "invalid-message: subject"),
        ("crlf-address", "invalid-message: to[0].address"),
        ("reply-to-outside", "policy-denied: allowed_reply_to"),
        ("display-at", "policy-denied: allow_address_in_display_name: to[0].name"),
        ("percent-route", "invalid-message: to[0].address"),
        ("big-bytes", "policy-denied: max_message_bytes"),
        ("e-acute", "policy-denied: max_message_bytes"),
        ("many-files", "policy-denied: max_attachments"),
        ("attach-fifo", "invalid-message: attachments[0].content: fifo: not a regular file"),
    ] {
        let before = AuditLog::read(&f.audit).map(|v| v.len()).unwrap_or(0);
        let r = run(&host, "hostile", mode).await;
        assert!(output_err(&r).starts_with(expect), "{mode}: {:?}", r.output);
        let records = AuditLog::read(&f.audit).unwrap();
        assert_eq!(records.len(), before + 1, "{mode}: one audit record");
        let last = records.last().unwrap();
        assert!(matches!(last.outcome, Outcome::Denied | Outcome::Error), "{mode}: {last:?}");
        assert_eq!(last.plugin, "hostile");
        assert_eq!(last.sha256.len(), 64);
        control(&host).await;
    }

    // The per-run maximum: 5 accepted, the 6th denied, the accepted stay.
    let before = AuditLog::read(&f.audit).unwrap().len();
    let r = run(&host, "hostile", "flood").await;
    let e = output_err(&r);
    assert!(e.contains("accepted 5") && e.contains("max_messages"), "{e}");
    assert_eq!((r.counts.attempts, r.counts.accepted, r.counts.denied), (6, 5, 1));
    let records = AuditLog::read(&f.audit).unwrap().split_off(before);
    // Each accepted one after its `attempt` record, naming the same file.
    assert_eq!(records.len(), 11);
    let attempts: Vec<_> = records.iter().filter(|x| x.outcome == Outcome::Attempt).map(|x| &x.outbox).collect();
    let accepted: Vec<_> = records.iter().filter(|x| x.outcome == Outcome::Accepted).map(|x| &x.outbox).collect();
    assert_eq!(attempts, accepted);
    for rec in records.iter().filter(|x| x.outcome == Outcome::Accepted) {
        assert!(Path::new(rec.outbox.as_deref().unwrap()).exists());
    }
    control(&host).await;

    // A plugin importing wasi:sockets (as libc makes every toolchain's
    // plugin do) runs, and its connect fails cleanly: the listener it was
    // pointed at never sees a connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let r = run(&host, "netgrab", &target).await;
    let e = output_err(&r);
    assert!(e.contains(&format!("connecting to {target} failed")), "{e}");
    assert!(r.stopped.is_none() && r.exit_code() == 1, "{:?}", r.stopped);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "the plugin reached the listener");
    control(&host).await;

    // The audit log reads back; every send attempt of the suite is in it.
    let records = AuditLog::read(&f.audit).unwrap();
    let sent = std::fs::read_dir(&f.outbox).unwrap().count();
    let accepted = records.iter().filter(|r| r.outcome == Outcome::Accepted).count();
    assert_eq!(accepted, sent, "every outbox file has an accepted record");
    assert!(records.iter().all(|r| !r.plugin.is_empty() && r.time_ms > 0));
    let text = std::fs::read_to_string(&f.audit).unwrap();
    assert!(!text.contains("This is a message from"), "no bodies in the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_load_hits_the_compile_cache() {
    let f = fixture("cache");
    let host = host(&f);
    let first = host.load(&plugin("report"), None).unwrap();
    let second = host.load(&plugin("report"), None).unwrap();
    assert!(matches!(first.cache, CacheOutcome::Compiled | CacheOutcome::Hit));
    assert_eq!(second.cache, CacheOutcome::Hit, "the second load must not compile");
    assert_eq!(first.sha256, second.sha256);
}

fn message(to: &str) -> Message {
    Message {
        from: Some(Mailbox { name: None, address: "a@example.com".into() }),
        reply_to: None,
        to: vec![Mailbox { name: None, address: to.into() }],
        cc: vec![],
        bcc: vec![],
        subject: "s".into(),
        text: Some("t".into()),
        html: None,
        attachments: vec![],
        priority: None,
        headers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_reaches_no_address_but_the_relay() {
    // A listener that would accept, so only the socket check can refuse.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    let allowed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut mailer = mailer_between(allowed, other_addr).await;
    let err = mailer.send(&message("b@example.com")).await.unwrap().unwrap_err();
    match err {
        SendError::Connect(m) => assert!(m.to_lowercase().contains("access-denied") || m.contains("AccessDenied"), "{m}"),
        other => panic!("expected a socket-check denial, got {other:?}"),
    }
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "nothing may have connected to the other address");
}

/// A scripted SMTP peer on loopback, for the survival test: plays `steps`
/// against one connection and returns what the client sent.
mod peer {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    pub enum Step {
        Send(Vec<u8>),
        /// Read one line; it must start with this.
        Expect(&'static str),
        /// Read until the end-of-data line.
        Data,
        Sleep(u64),
        Close,
    }

    pub fn serve(steps: Vec<Step>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut writer = conn.try_clone().unwrap();
            let mut reader = BufReader::new(conn);
            let mut seen = Vec::new();
            for step in steps {
                match step {
                    Step::Send(b) => {
                        if writer.write_all(&b).is_err() {
                            break;
                        }
                    }
                    Step::Expect(prefix) => {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        seen.extend_from_slice(line.as_bytes());
                        assert!(line.starts_with(prefix), "expected {prefix:?}, got {line:?}");
                    }
                    Step::Data => loop {
                        let mut line = Vec::new();
                        if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                            break;
                        }
                        seen.extend_from_slice(&line);
                        if line == b".\r\n" {
                            break;
                        }
                    },
                    Step::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
                    Step::Close => break,
                }
            }
            let mut rest = Vec::new();
            let _ = reader.get_mut().set_read_timeout(Some(Duration::from_millis(100)));
            let _ = reader.read_to_end(&mut rest);
            seen.extend_from_slice(&rest);
            seen
        });
        (port, handle)
    }
}

/// A mailer whose socket check allows `allowed`, configured to connect to
/// `target` (the same address, unless a test wants the check to refuse).
async fn mailer_between(allowed: std::net::SocketAddr, target: std::net::SocketAddr) -> Mailer {
    let grant = MailerGrant::relay(&[allowed], Secret::none(), wasmail::mailer::tls::Provider::new(None).unwrap());
    let mut mailer = Mailer::new(&runtime().mailer, grant).await.unwrap();
    let settings = RelaySettings {
        name: "127.0.0.1".into(),
        addresses: vec![target],
        port: target.port(),
        tls: Tls::None,
        ehlo: "client.example".into(),
        user: None,
        auth: Auth::Auto,
        timeout: Some(std::time::Duration::from_secs(2)),
        verbose: false,
    };
    mailer.configure(&settings.to_wit()).await.unwrap();
    mailer
}

async fn mailer_to(port: u16) -> Mailer {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    mailer_between(addr, addr).await
}

/// One process through hostile plugins, hostile servers and smuggling
/// bodies; afterwards a normal send still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_survives_everything() {
    use peer::Step::*;
    let f = fixture("survival");
    let host = host(&f);
    for mode in ["loop", "grow", "recurse", "panic", "resources", "flood", "spoof-from", "crlf-subject"] {
        let r = run(&host, "hostile", mode).await;
        assert!(r.stopped.is_some() || matches!(r.output, Some(Err(_))), "{mode}: {:?}", r.output);
    }
    let r = run(&host, "netgrab", "127.0.0.1:25").await;
    assert!(output_err(&r).contains("failed"), "{:?}", r.output);

    let greet = || Send(b"220 mx ESMTP\r\n".to_vec());
    let hostile: Vec<(&str, Vec<peer::Step>, fn(&SendError) -> bool)> = vec![
        ("never greets", vec![Sleep(4000)], |e| matches!(e, SendError::Timeout(_))),
        ("10 MB line", vec![Send(vec![b'2'; 10 << 20])], |e| matches!(e, SendError::Protocol(_))),
        ("continuations", vec![greet(), Expect("EHLO"), Send(b"250-x\r\n".repeat(1_000_000))], |e| {
            matches!(e, SendError::Protocol(_))
        }),
        ("code change", vec![greet(), Expect("EHLO"), Send(b"250-a\r\n251 b\r\n".to_vec())], |e| {
            matches!(e, SendError::Protocol(_))
        }),
        ("banner", vec![Send(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())], |e| matches!(e, SendError::Protocol(_))),
        ("421 at MAIL", vec![greet(), Expect("EHLO"), Send(b"250 mx\r\n".to_vec()), Expect("MAIL"), Send(b"421 4.3.2 bye\r\n".to_vec()), Close], |e| {
            matches!(e, SendError::Rejected(r) if r.transient)
        }),
        ("gone after the dot", vec![
            greet(), Expect("EHLO"), Send(b"250 mx\r\n".to_vec()), Expect("MAIL"), Send(b"250 ok\r\n".to_vec()),
            Expect("RCPT"), Send(b"250 ok\r\n".to_vec()), Expect("DATA"), Send(b"354 go\r\n".to_vec()), Data, Close,
        ], |e| matches!(e, SendError::OutcomeUnknown(_))),
    ];
    for (name, steps, expected) in hostile {
        let (port, server) = peer::serve(steps);
        let mut mailer = mailer_to(port).await;
        let started = std::time::Instant::now();
        let result = mailer.send(&message("b@example.com")).await.unwrap();
        let err = result.err().unwrap_or_else(|| panic!("{name}: false success"));
        assert!(expected(&err), "{name}: {err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{name}: took too long");
        drop(mailer);
        let _ = server.join();
    }

    // Smuggling bodies through a plugin-free send: the wire carries them stuffed.
    let mut body = String::from("hello");
    for seq in ["\n.\n", "\r.\r", "\r\n.\r", "\r\n\0.\r\n", "\r\r\n.\r\r\n"] {
        body.push_str(seq);
        body.push_str("MAIL FROM:<x@evil.example>\r\n");
    }
    let ok = b"250 ok\r\n".to_vec();
    let (port, server) = peer::serve(vec![
        greet(), Expect("EHLO"), Send(b"250 mx\r\n".to_vec()), Expect("MAIL"), Send(ok.clone()),
        Expect("RCPT"), Send(ok.clone()), Expect("DATA"), Send(b"354 go\r\n".to_vec()), Data, Send(ok.clone()),
        Expect("QUIT"), Send(b"221 bye\r\n".to_vec()),
    ]);
    let mut mailer = mailer_to(port).await;
    let mut msg = message("b@example.com");
    msg.text = Some(body);
    let receipt = mailer.send(&msg).await.unwrap().expect("a normal send still works");
    assert_eq!(receipt.accepted, vec!["b@example.com".to_owned()]);
    mailer.close().await.unwrap();
    let wire = server.join().unwrap();
    assert_eq!(wire.windows(5).filter(|w| w == b"\r\n.\r\n").count(), 1);
    // Commands are what comes before DATA and after the terminator: exactly
    // one MAIL FROM; the smuggled ones stayed message text.
    let data_at = wire.windows(6).position(|w| w == b"DATA\r\n").unwrap();
    let end_at = wire.windows(5).position(|w| w == b"\r\n.\r\n").unwrap();
    let commands = [&wire[..data_at], &wire[end_at + 5..]].concat();
    assert_eq!(commands.windows(10).filter(|w| w == b"MAIL FROM:").count(), 1, "one MAIL FROM command only");
    assert_eq!(&wire[end_at + 5..], b"QUIT\r\n");
    assert!(!wire.contains(&0));
    control(&host).await;
}

/// Refused calls cost the plugin: every call is an attempt, the budget stops
/// the run, and the audit log grows by a bounded record per attempt, however
/// large what the plugin sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_of_refused_calls_is_stopped_and_the_audit_log_stays_bounded() {
    let f = fixture_with("deny-loop", |p| p.max_messages = 40);
    let host = host(&f);
    let mut lines = 0;
    for mode in ["deny-loop", "huge-header-loop"] {
        let r = run(&host, "hostile", mode).await;
        assert!(matches!(&r.stop, Some(Stop::Budget(e)) if e.key == "max_attempts" && e.limit == 120), "{mode}: {:?}", r.stopped);
        assert_eq!(r.exit_code(), 70);
        assert_eq!((r.counts.attempts, r.counts.denied), (121, 121), "{mode}");
        let text = std::fs::read_to_string(&f.audit).unwrap();
        let all: Vec<&str> = text.lines().collect();
        assert_eq!(all.len() - lines, 121, "{mode}: one record per attempt");
        let longest = all.iter().map(|l| l.len()).max().unwrap();
        assert!(longest < wasmail::mail::audit::MAX_RECORD_BYTES, "{mode}: a record of {longest} bytes");
        let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
        assert!(last.reason.as_deref().unwrap().starts_with("stopped: max_attempts"), "{last:?}");
        control(&host).await;
        lines = AuditLog::read(&f.audit).unwrap().len();
    }
    let size = std::fs::metadata(&f.audit).unwrap().len();
    assert!(size < 2 * 121 * 1024, "the audit log is {size} bytes after 242 refused calls");
}

/// A component with four core instances, each with its own 20 MiB memory:
/// under `memory_mib = 64` the store, not each memory, is what is limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_limited_per_plugin_whatever_its_shape() {
    let f = fixture_with("shape", |p| p.memory_mib = 64);
    let host = host(&f);
    let wat = r#"
        (component
          (core module $m
            (memory (export "mem") 320)
            (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
            (func (export "run") (param i32 i32) (result i32) unreachable))
          (core instance $a (instantiate $m))
          (core instance $b (instantiate $m))
          (core instance $c (instantiate $m))
          (core instance $d (instantiate $m))
          (func (export "run") (param "input" string) (result (result string (error string)))
            (canon lift (core func $a "run") (memory (core memory $a "mem")) (realloc (core func $a "realloc")))))
    "#;
    let path = f._dir.0.join("four-memories.wasm");
    std::fs::write(&path, wat::parse_str(wat).expect("the test component")).unwrap();
    let p = host.load(&path, Some("hostile")).expect("load");
    let r = host.run(&p, "").await.expect("run");
    assert_eq!(r.stop, Some(Stop::Memory { mib: 64 }), "{:?}", r.stopped);
    control(&host).await;
}

/// `wall_ms` covers host time spent for the plugin: a message the mailer
/// takes long to assemble is stopped in the middle, and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_covers_the_mailers_work() {
    let f = fixture_with("wall", |p| {
        p.memory_mib = 192;
        p.cpu_ms = 20_000;
        p.max_message_bytes = 64 << 20;
        p.wall_ms = 1_500;
    });
    let host = host(&f);
    let started = std::time::Instant::now();
    let r = run(&host, "hostile", "qp-heavy").await;
    let took = started.elapsed();
    assert_eq!(r.stop, Some(Stop::Wall { ms: 1_500 }), "{:?} {:?}", r.stopped, r.output);
    assert!(took < std::time::Duration::from_secs(10), "stopped after {took:?}");
    let last = AuditLog::read(&f.audit).unwrap().pop().expect("the stopped send is audited");
    assert!(last.reason.as_deref().unwrap_or("").contains("while the message was assembled"), "{last:?}");
    control(&host).await;
}

/// A FIFO in the granted folder: as an attachment it is refused without
/// blocking; read by the plugin itself, it blocks only the plugin, which
/// `wall_ms` stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_grant_cannot_hang_the_host() {
    let f = fixture_with("fifo", |p| p.wall_ms = 500);
    let host = host(&f);
    let r = run(&host, "hostile", "attach-fifo").await;
    assert!(output_err(&r).contains("not a regular file"), "{:?}", r.output);
    let r = run(&host, "hostile", "read-fifo").await;
    assert_eq!(r.stop, Some(Stop::Wall { ms: 500 }), "{:?} {:?}", r.stopped, r.output);
    control(&host).await;
    // Release the thread still blocked in open(2), so the test ends.
    let fifo = f._dir.0.join("data/fifo");
    drop(std::fs::OpenOptions::new().write(true).open(fifo).unwrap());
}

/// One cap covers everything a plugin prints and returns; no line of it can
/// pass for the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_output_cannot_flood_or_forge() {
    let f = fixture_with("output", |p| p.max_output_bytes = 100_000);
    let host = host(&f);
    let r = run(&host, "hostile", "print-flood").await;
    let returned = match &r.output {
        Some(Ok(o)) => o.len(),
        other => panic!("{other:?}"),
    };
    let printed: usize = f.lines.lock().unwrap().iter().map(|l| l.len()).sum();
    assert!(returned + printed < 100_000 + 4_096, "{returned} returned + {printed} printed");
    f.lines.lock().unwrap().clear();
    let r = run(&host, "hostile", "forge").await;
    assert!(output_err(&r).contains("\u{202e}"), "the returned error is kept as is; the CLI escapes it");
    let lines = f.lines.lock().unwrap();
    assert!(lines.iter().all(|l| l.starts_with("[hostile] ") || l.starts_with("[hostile:stderr] ")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("\\u{1b}[2J")), "{lines:?}");
}

/// A From domain of 231 bytes is valid; the Message-ID carries it, and the
/// outbox file name, made by the host, stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_message_id_is_kept() {
    let f = fixture_with("long-domain", |p| p.allowed_from = vec!["*".into()]);
    let host = host(&f);
    let r = run(&host, "hostile", "long-domain").await;
    assert!(matches!(&r.output, Some(Ok(o)) if o.starts_with("sent")), "{:?}", r.output);
    let last = AuditLog::read(&f.audit).unwrap().pop().unwrap();
    let path = PathBuf::from(last.outbox.unwrap());
    assert!(path.exists() && path.file_name().unwrap().len() < 64, "{}", path.display());
    assert!(last.message_id.unwrap().len() > 231);
}

/// A plugin over `max_component_bytes` is refused before it is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_component_is_refused_before_compiling() {
    let f = fixture_with("size", |p| p.max_component_bytes = 1_000);
    let host = host(&f);
    let err = host.load(&plugin("hostile"), None).err().expect("refused");
    assert!(err.is::<Refused>() && format!("{err:#}").contains("max_component_bytes"), "{err:#}");
}

/// Files in this process's compile cache whose name starts with `sha256`.
fn cache_entries(sha256: &str) -> Vec<String> {
    runtime();
    let dir = PathBuf::from(std::env::var_os("WASMAIL_CACHE_DIR").unwrap());
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.starts_with(sha256)).collect())
        .unwrap_or_default()
}

/// Write a component from WAT into the fixture's folder.
fn component_file(f: &Fixture, name: &str, wat: &str) -> (PathBuf, String) {
    let bytes = wat::parse_str(wat).unwrap();
    let path = f._dir.0.join(format!("{name}.wasm"));
    std::fs::write(&path, &bytes).unwrap();
    (path, wasmail::engine::sha256_hex(&bytes))
}

/// Imports with no safe denied implementation (TLS, the mailer's own
/// interfaces) are refused from the binary alone: nothing is compiled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_imports_are_refused_before_compiling() {
    let f = fixture("refused-imports");
    let host = host(&f);
    for import in [
        "wasi:tls/types@0.2.0-draft",
        "wasmail:mail/transport@0.1.0",
        "wasmail:mail/credentials@0.1.0",
        "wasmail:mail/signer@0.1.0",
        "wasi:io/poll@0.3.0",
    ] {
        let (path, sha) = component_file(
            &f,
            "hostile",
            &format!(
                r#"(component
                    (import "{import}" (instance))
                    (core module $m (func (export "f")))
                    (core instance $i (instantiate $m))
                    (func (export "run") (canon lift (core func $i "f"))))"#
            ),
        );
        let err = host.load(&path, None).err().expect("refused");
        assert!(err.is::<Refused>() && format!("{err:#}").contains(import), "{import}: {err:#}");
        assert_eq!(cache_entries(&sha), Vec::<String>::new(), "{import}: nothing compiled");
    }
}

/// More core instances than the engine allows per component: refused
/// before compiling, as a load failure (exit 65) with a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_over_the_instance_limit_is_refused_before_compiling() {
    let f = fixture("too-many-instances");
    let host = host(&f);
    let n = wasmail::engine::MAX_CORE_INSTANCES_PER_COMPONENT + 1;
    let instances = "(core instance (instantiate $m))\n".repeat(n as usize - 1);
    let (path, sha) = component_file(
        &f,
        "hostile",
        &format!(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                {instances}
                (func (export "run") (canon lift (core func $i "f"))))"#
        ),
    );
    let err = host.load(&path, None).err().expect("refused");
    let text = format!("{err:#}");
    assert!(err.is::<LoadFailed>(), "{text}");
    assert!(text.contains(&format!("{n} core instances")) && text.contains("hint:"), "{text}");
    assert_eq!(cache_entries(&sha), Vec::<String>::new(), "nothing compiled");
}

/// A component that does not compile fails with a hint, and the failure is
/// remembered by content hash: the second attempt does not compile again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compile_is_remembered() {
    let f = fixture("failed-compile");
    let host = host(&f);
    // Passes the import and export checks; fails validation (the body
    // leaves no i32 on the stack).
    let (path, sha) = component_file(
        &f,
        "hostile",
        r#"(component
            (core module $m (func (export "f") (result i32)))
            (core instance $i (instantiate $m))
            (func (export "run") (canon lift (core func $i "f"))))"#,
    );
    let err = host.load(&path, None).err().expect("fails");
    assert!(err.is::<LoadFailed>() && format!("{err:#}").contains("compiling plugin hostile failed"), "{err:#}");
    let entries = cache_entries(&sha);
    assert!(entries.len() == 1 && entries[0].ends_with(".failed"), "{entries:?}");
    let err = host.load(&path, None).err().expect("fails again");
    let text = format!("{err:#}");
    assert!(err.is::<LoadFailed>() && text.contains("failed before") && text.contains(".failed"), "{text}");
}
