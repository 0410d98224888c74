//! The hostile-plugin suite, in one test process: every hostile plugin ends
//! with the host alive, a clear error, an audit record where a send was
//! attempted, and a well-behaved plugin that still succeeds right after.
//! Also: the mailer's socket check, the compile cache, and reading the audit
//! log back. Mail goes to the outbox (no relay needed); the relay-side tests
//! live in tests/test_plugins.py.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use wasmail::Runtime;
use wasmail::audit::{AuditLog, Outcome};
use wasmail::bindings::types::{Mailbox, Message, Priority, SendError};
use wasmail::blobs::BlobAccess;
use wasmail::config::{Config, PluginConfig};
use wasmail::credentials::Secret;
use wasmail::engine::CacheOutcome;
use wasmail::mailer::{Mailer, MailerGrant};
use wasmail::plugin::{HostOptions, PluginHost, Refused, RunReport};
use wasmail::relay::{RelaySettings, Tls, Auth};

fn plugin_dir() -> PathBuf {
    std::env::var_os("WASMAIL_PLUGINS").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
    })
}

fn plugin(name: &str) -> PathBuf {
    let p = plugin_dir().join(format!("wasmail_plugin_{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make build` first", p.display());
    p
}

/// One runtime for the whole process, with a private compile cache.
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wasmail-test-cache-{}", std::process::id()));
        // SAFETY: set once, before any thread of this test binary reads it.
        unsafe { std::env::set_var("WASMAIL_CACHE_DIR", &dir) };
        Runtime::new().expect("runtime")
    })
}

struct Fixture {
    _dir: tempdir::Dir,
    config: Config,
    audit: PathBuf,
    outbox: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

/// A tiny temp-dir helper (no extra dependency).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let p = std::env::temp_dir().join(format!("wasmail-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn fixture(tag: &str) -> Fixture {
    let dir = tempdir::Dir::new(tag);
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
    policy.cpu_ms = 300;
    policy.wall_ms = 20_000;
    policy.max_resources = 200;
    policy.folder = Some(data);
    let mut config = Config::default();
    let audit = dir.0.join("audit.jsonl");
    let outbox = dir.0.join("outbox");
    config.audit = Some(audit.clone());
    config.outbox = Some(outbox.clone());
    config.plugins.insert("hostile".into(), policy.clone());
    config.plugins.insert("hello".into(), policy);
    Fixture { _dir: dir, config, audit, outbox, lines: Arc::default() }
}

fn host(f: &Fixture) -> PluginHost<'static> {
    let lines = Arc::clone(&f.lines);
    let options = HostOptions {
        transcript: None,
        output: Some(Arc::new(move |l: &str| lines.lock().unwrap().push(l.to_owned()))),
    };
    PluginHost::new(runtime(), f.config.clone(), options).expect("host")
}

async fn run(host: &PluginHost<'_>, name: &str, input: &str) -> RunReport {
    let p = host.load(&plugin(name), None).expect("load");
    host.run(&p, input).await.expect("run")
}

/// After each hostile plugin: a well-behaved one still works.
async fn control(host: &PluginHost<'_>) {
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
    let r = run(&host, "hostile", "flood").await;
    let e = output_err(&r);
    assert!(e.contains("accepted 5") && e.contains("max_messages"), "{e}");
    assert_eq!(r.records.iter().filter(|x| x.outcome == Outcome::Accepted).count(), 5);
    assert_eq!(r.records.iter().filter(|x| x.outcome == Outcome::Denied).count(), 1);
    for rec in r.records.iter().filter(|x| x.outcome == Outcome::Accepted) {
        assert!(Path::new(rec.outbox.as_deref().unwrap()).exists());
    }
    control(&host).await;

    // A plugin importing wasi:sockets is refused before it runs, naming the import.
    let err = host.load(&plugin("netgrab"), None).err().expect("netgrab refused");
    assert!(err.is::<Refused>());
    assert!(format!("{err:#}").contains("wasi:sockets/"), "{err:#}");
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
        priority: Priority::Normal,
        headers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailer_reaches_no_address_but_the_relay() {
    // A listener that would accept, so only the socket check can refuse.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap();
    let allowed: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let grant = MailerGrant {
        relay_addrs: vec![allowed],
        secret: Secret::none(),
        blobs: BlobAccess::Deny,
        max_message_bytes: None,
        transcript: None,
        tls: wasmail::tls::Provider::new(None).unwrap(),
    };
    let mut mailer = Mailer::new(&runtime().mailer, grant).await.unwrap();
    let settings = RelaySettings {
        name: "127.0.0.1".into(),
        addresses: vec![other_addr],
        port: other_addr.port(),
        tls: Tls::None,
        ehlo: "test.example".into(),
        user: None,
        auth: Auth::Auto,
        timeout: Some(std::time::Duration::from_secs(5)),
        verbose: false,
    };
    mailer.configure(&settings.to_wit()).await.unwrap();
    let err = mailer.send(&message("b@example.com")).await.unwrap().unwrap_err();
    match err {
        SendError::Connect(m) => assert!(m.to_lowercase().contains("access-denied") || m.contains("AccessDenied"), "{m}"),
        other => panic!("expected a socket-check denial, got {other:?}"),
    }
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "nothing may have connected to the other address");
}
