//! DKIM keys never enter a wasm store (issue #13): after signed sends (a
//! plugin's message through its mailer, and `wasmail send`'s mailer alone),
//! every linear memory either store ever had is read back and searched for
//! the private key: its PKCS#8 DER, its PEM text, the Ed25519 seed, the RSA
//! private exponent and primes. None may be there; the signature and the
//! message are (so the scan does see the memories).
//!
//! The engine here is the host's, except that linear memories come from a
//! memory creator of this test (on-demand allocation, no guard pages: wasm
//! code bounds-checks explicitly), which keeps a copy of each memory when
//! its store drops it.

use std::alloc::{Layout, alloc_zeroed, dealloc, realloc};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use wasmail::Runtime;
use wasmail::bindings::types::{Mailbox, Message};
use wasmail::config::{Config, DkimConfig, PluginConfig};
use wasmail::mail::dkim::{self as keys, KeyType, Signing, SigningKey};
use wasmail::mailer::{Mailer, MailerFactory, MailerGrant, tls};
use wasmail::plugin::{HostOptions, PluginHost};
use wasmtime::{InstanceAllocationStrategy, LinearMemory, MemoryCreator, MemoryType};

/// The last contents of every linear memory dropped so far.
static SNAPSHOTS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

const ALIGN: usize = 16;

/// A linear memory on the heap, moved when it grows.
struct Recorded {
    ptr: *mut u8,
    /// Allocated bytes.
    cap: usize,
    /// Accessible bytes.
    size: usize,
    max: Option<usize>,
}

// SAFETY: the memory is plain bytes, owned by one store at a time.
unsafe impl Send for Recorded {}
// SAFETY: as above; wasmtime synchronizes access through the store.
unsafe impl Sync for Recorded {}

impl Recorded {
    fn new(minimum: usize, max: Option<usize>) -> Self {
        let cap = minimum.max(ALIGN);
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { alloc_zeroed(Layout::from_size_align(cap, ALIGN).unwrap()) };
        assert!(!ptr.is_null());
        Self { ptr, cap, size: minimum, max }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `size` bytes at `ptr` are allocated and initialized.
        unsafe { std::slice::from_raw_parts(self.ptr, self.size) }
    }
}

// SAFETY: `as_ptr` points at `byte_capacity` allocated bytes, zeroed when
// first made accessible; growth past the capacity moves the memory, which
// the engine allows (`memory_may_move`).
unsafe impl LinearMemory for Recorded {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.cap
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if self.max.is_some_and(|m| new_size > m) {
            wasmtime::bail!("over the maximum");
        }
        if new_size > self.cap {
            let layout = Layout::from_size_align(self.cap, ALIGN).unwrap();
            // SAFETY: `ptr` was allocated with `layout`; the new size is non-zero.
            let ptr = unsafe { realloc(self.ptr, layout, new_size) };
            assert!(!ptr.is_null());
            // SAFETY: the grown tail is allocated; zero it, as wasm expects.
            unsafe { ptr.add(self.cap).write_bytes(0, new_size - self.cap) };
            self.ptr = ptr;
            self.cap = new_size;
        }
        self.size = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        SNAPSHOTS.lock().unwrap().push(self.bytes().to_vec());
        // SAFETY: allocated with this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align(self.cap, ALIGN).unwrap()) };
    }
}

struct Creator;

// SAFETY: every memory is a `Recorded`, with no guard region (the engine is
// configured with none) and movable.
unsafe impl MemoryCreator for Creator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        _reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        if guard_size_in_bytes != 0 {
            return Err("this creator makes memories without guard pages".into());
        }
        Ok(Box::new(Recorded::new(minimum, maximum)))
    }
}

/// The host's runtime, its memories made by [`Creator`].
fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wasmail-dkim-cache-{}", std::process::id()));
        // SAFETY: set once, before any thread of this test binary reads it.
        unsafe { std::env::set_var("WASMAIL_CACHE_DIR", &dir) };
        let mut config = wasmail::engine::config();
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        config.with_host_memory(Arc::new(Creator));
        config.memory_reservation(0);
        config.memory_reservation_for_growth(0);
        config.memory_guard_size(0);
        config.guard_before_linear_memory(false);
        config.memory_may_move(true);
        config.memory_init_cow(false);
        let engine = wasmtime::Engine::new(&config).expect("engine");
        wasmail::engine::start_epoch_ticker(&engine);
        let mailer = MailerFactory::new(&engine).expect("mailer");
        Runtime { engine, mailer }
    })
}

fn plugin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WASMAIL_PLUGINS").map(PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
    });
    let p = dir.join(format!("wasmail_plugin_{name}.wasm"));
    assert!(p.exists(), "{} is missing: run `make build` first", p.display());
    p
}

fn temp(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let p = std::env::temp_dir().join(format!("wasmail-dkim-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// A new key in `dir`, and the byte strings that would betray it.
fn key_and_needles(dir: &std::path::Path, key_type: KeyType) -> (PathBuf, Vec<(String, Vec<u8>)>) {
    let der = keys::generate(key_type).unwrap();
    let pem = keys::pem_encode(&der);
    let path = dir.join("s1.private");
    keys::write_new_key(&path, &pem).unwrap();
    let mut needles = vec![("PKCS#8 DER".to_owned(), der.to_vec())];
    for (i, line) in pem.lines().filter(|l| !l.starts_with("-----")).enumerate() {
        needles.push((format!("PEM line {i}"), line.as_bytes().to_vec()));
    }
    match key_type {
        KeyType::Ed25519 => {
            // ring's PKCS#8 v2: the 32-byte seed follows `04 22 04 20`.
            let at = der.windows(4).position(|w| w == [0x04, 0x22, 0x04, 0x20]).unwrap() + 4;
            needles.push(("Ed25519 seed".into(), der[at..at + 32].to_vec()));
        }
        KeyType::Rsa => {
            use rsa::pkcs8::DecodePrivateKey;
            use rsa::traits::PrivateKeyParts;
            let k = rsa::PrivateKey::from_pkcs8_der(&der).unwrap();
            needles.push(("RSA d".into(), k.d().to_be_bytes_trimmed_vartime().to_vec()));
            for (i, p) in k.primes().iter().enumerate() {
                needles.push((format!("RSA prime {i}"), p.as_ref().to_be_bytes_trimmed_vartime().to_vec()));
            }
        }
    }
    for (name, n) in &needles {
        assert!(n.len() >= 16, "{name} is too short to search for");
    }
    (path, needles)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every snapshot taken since `from`: none holds a needle; `present` is in
/// at least `want` of them.
fn scan(from: usize, needles: &[(String, Vec<u8>)], present: &[u8], want: usize) {
    let snaps = SNAPSHOTS.lock().unwrap();
    let snaps = &snaps[from..];
    assert!(!snaps.is_empty(), "no linear memory was dropped");
    let total: usize = snaps.iter().map(Vec::len).sum();
    for (i, mem) in snaps.iter().enumerate() {
        for (name, needle) in needles {
            assert!(!contains(mem, needle), "the key's {name} is in linear memory {i} ({} bytes)", mem.len());
        }
    }
    let seen = snaps.iter().filter(|m| contains(m, present)).count();
    assert!(seen >= want, "{:?} found in {seen} of {} memories ({total} bytes): the scan does not see them", String::from_utf8_lossy(present), snaps.len());
}

/// One test at a time: they share the snapshot list.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_key_never_enters_a_plugin_or_mailer_store() {
    let _one = SERIAL.lock().await;
    for key_type in [KeyType::Ed25519, KeyType::Rsa] {
        let dir = temp("plugin");
        let (key_file, needles) = key_and_needles(&dir, key_type);
        let mut policy = PluginConfig::outbox_default();
        policy.allowed_from = vec!["*@example.com".into()];
        policy.default_from = Some("Hello <hello@example.com>".into());
        policy.dkim = Some("main".into());
        let outbox = dir.join("outbox");
        let mut config = Config { audit: Some(dir.join("audit.jsonl")), outbox: Some(outbox.clone()), ..Config::default() };
        config.plugins.insert("hello".into(), policy);
        config.dkim.insert(
            "main".into(),
            DkimConfig {
                domain: "example.com".into(),
                selector: "s1".into(),
                key_file,
                algorithm: Some(key_type),
                canonicalization: Default::default(),
                headers: vec![],
                expire_secs: None,
            },
        );
        let host = PluginHost::new(runtime(), config, HostOptions::default()).unwrap();
        let p = host.load(&plugin("hello"), None).unwrap();
        let from = SNAPSHOTS.lock().unwrap().len();
        let rcpt = format!("scan-{key_type:?}-7f3a@example.com");
        let report = host.run(&p, &rcpt).await.unwrap();
        assert!(matches!(&report.output, Some(Ok(o)) if o.starts_with("sent")), "{report:?}");
        let eml = std::fs::read(std::fs::read_dir(&outbox).unwrap().next().unwrap().unwrap().path()).unwrap();
        assert!(eml.starts_with(b"DKIM-Signature: v=1;"), "{}", String::from_utf8_lossy(&eml));
        // The plugin's store and its mailer's are both gone now: the
        // recipient is in both (the plugin's input, the mailer's message).
        scan(from, &needles, rcpt.as_bytes(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_key_never_enters_the_senders_mailer() {
    let _one = SERIAL.lock().await;
    let dir = temp("send");
    let (key_file, needles) = key_and_needles(&dir, KeyType::Ed25519);
    let signing = Signing::new("example.com", "s1", SigningKey::load(&key_file).unwrap()).unwrap();
    let grant = MailerGrant::outbox(tls::Provider::new(None).unwrap()).signing(Some(Arc::new(signing)));
    let from = SNAPSHOTS.lock().unwrap().len();
    let mut mailer = Mailer::new(&runtime().mailer, grant).await.unwrap();
    let msg = Message {
        from: Some(Mailbox { name: None, address: "me@example.com".into() }),
        reply_to: None,
        to: vec![Mailbox { name: None, address: "you@example.org".into() }],
        cc: vec![],
        bcc: vec![],
        subject: "scan-send-91c2".into(),
        text: Some("body\n".into()),
        html: None,
        attachments: vec![],
        priority: None,
        headers: vec![],
    };
    let mut signatures = Vec::new();
    for _ in 0..3 {
        let rendered = mailer.render(&msg).await.unwrap().unwrap();
        assert!(rendered.bytes.starts_with(b"DKIM-Signature: "));
        let text = String::from_utf8(rendered.bytes).unwrap();
        let after = text.split_once("\r\n b=").unwrap().1;
        // Its first line, as the mailer wrote it.
        signatures.push(after.split("\r\n").next().unwrap().to_owned());
    }
    assert_eq!(mailer.signatures(), 3);
    drop(mailer);
    scan(from, &needles, b"scan-send-91c2", 1);
    // The signatures themselves did reach the mailer: the scan would see
    // them.
    let snaps = SNAPSHOTS.lock().unwrap();
    assert!(snaps[from..].iter().any(|m| contains(m, signatures[2].as_bytes())));
    let _ = std::fs::remove_dir_all(&dir);
}
