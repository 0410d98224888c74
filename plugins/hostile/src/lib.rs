//! The hostile plugin: misbehaves in the way its input names, so the host's
//! tests can check that the sandbox limits and the sending policy hold.
//!
//! Modes: `loop`, `grow`, `recurse`, `panic` (the host must stop or trap the
//! run); `read-outside`, `read-inside` (the `/data` grant); `resources` (the
//! resource table limit); `spoof-from`, `bcc-outside`, `cc-outside`,
//! `many-recipients`, `big`, `flood`, `crlf-subject`, `crlf-address`,
//! `header` (the policy and message checks); `send-ok` (a valid control).
//! Attacks on the host itself: `deny-loop`, `huge-header-loop` (refused
//! calls until the attempt budget stops the run); `big-bytes`, `e-acute`
//! (messages whose size shows before assembly); `qp-heavy` (a message the
//! mailer works hard on); `print-flood`, `forge` (output that floods or
//! imitates the host); `attach-fifo`, `read-fifo` (a FIFO in the grant);
//! `many-files` (thousands of file attachments); `long-domain` (a 231-byte
//! From domain); `reply-to-outside`, `display-at`, `percent-route` (policy
//! gaps). Red-team modes (host/tests/redteam.rs): `newline-flood` (output
//! that is all line ends), `huge-subject:MIB`, `huge-header:MIB`,
//! `huge-name:MIB` (text the policy's size floor does not count),
//! `attach:NAME` (any file of the grant), `invalid-loop`, `send-loop`
//! (calls that never stop, refused or accepted). `send-many`: `many:N` (one
//! call with N allowed messages), `deny-many-loop` (calls of 100 refused
//! messages that never stop).


use std::hint::black_box;

use wasmail_plugin::{Attachment, Content, Mailbox, Message, describe, send, send_many};

const MODES: &str = "loop, grow, recurse, panic, read-outside, read-inside, spoof-from, \
bcc-outside, cc-outside, many-recipients, big, flood, crlf-subject, crlf-address, header, \
resources, send-ok, attach-file, attach-outside, deny-loop, huge-header-loop, big-bytes, e-acute, \
qp-heavy, print-flood, forge, attach-fifo, read-fifo, many-files, long-domain, reply-to-outside, \
display-at, percent-route, newline-flood, huge-subject:MIB, huge-header:MIB, huge-name:MIB, \
attach:NAME, invalid-loop, send-loop, many:N, deny-many-loop";

/// The address the policy allows.
const OK: &str = "ok@example.com";
/// An address outside the policy's allowed domains.
const VICTIM: &str = "victim@elsewhere.example";

struct Hostile;

impl wasmail_plugin::Guest for Hostile {
    fn run(input: String) -> Result<String, String> {
        match input.trim() {
            "loop" => spin(),
            "grow" => grow(),
            "recurse" => Ok(format!("recursion returned {}", dive(0))),
            "panic" => panic!("hostile plugin panicked on purpose"),
            "read-outside" => read_outside(),
            "read-inside" => read_inside(),
            "resources" => resources(),
            "spoof-from" => {
                let mut msg = message(OK, "spoofed From");
                msg.from = Some(mailbox("ceo@bank.example"));
                try_send(&msg)
            }
            "bcc-outside" => {
                let mut msg = message(OK, "Bcc outside the policy");
                msg.bcc = vec![mailbox(VICTIM)];
                try_send(&msg)
            }
            "cc-outside" => {
                let mut msg = message(OK, "Cc outside the policy");
                msg.cc = vec![mailbox(VICTIM)];
                try_send(&msg)
            }
            "many-recipients" => {
                let mut msg = message(OK, "many recipients");
                msg.to = (0..1000)
                    .map(|i| mailbox(&format!("user{i}@example.com")))
                    .collect();
                try_send(&msg)
            }
            "big" => {
                let mut msg = message(OK, "a 2 MiB body");
                msg.text = Some(big_text(2 * 1024 * 1024));
                try_send(&msg)
            }
            "flood" => flood(),
            "crlf-subject" => try_send(&message(OK, &format!("hi\r\nBcc: {VICTIM}"))),
            "crlf-address" => try_send(&message(
                &format!("{OK}>\r\nRCPT TO:<{VICTIM}"),
                "CRLF in an address",
            )),
            "header" => {
                let mut msg = message(OK, "a header the policy refuses");
                msg.headers
                    .push(("X-Not-Allowed".to_string(), "1".to_string()));
                try_send(&msg)
            }
            "send-ok" => try_send(&message(OK, "hostile plugin control message")),
            "attach-file" => try_send(&with_file(message(OK, "a file from the grant"), "report.csv")),
            "attach-outside" => try_send(&with_file(message(OK, "a file outside the grant"), "../../etc/passwd")),
            "deny-loop" => deny_loop(message(VICTIM, "denied again")),
            "huge-header-loop" => {
                let mut msg = message(OK, "a 1 MiB header name");
                msg.headers.push(("X".repeat(1 << 20), "v".to_string()));
                deny_loop(msg)
            }
            "big-bytes" => {
                let mut msg = message(OK, "8 MiB of bytes");
                msg.attachments.push(Attachment {
                    filename: "big.bin".to_string(),
                    content_type: None,
                    content: Content::Bytes(vec![7; 8 << 20]),
                    content_id: None,
                });
                try_send(&msg)
            }
            "e-acute" => {
                let mut msg = message(OK, "4 MiB of é");
                msg.text = Some("é".repeat(2 << 20));
                try_send(&msg)
            }
            "qp-heavy" => {
                let mut msg = message(OK, "32 MB of é, quoted-printable");
                msg.text = Some("é".repeat(16 << 20));
                try_send(&msg)
            }
            "print-flood" => {
                println!("{}", "p".repeat(64 << 10));
                eprintln!("{}", "e".repeat(64 << 10));
                Ok("r".repeat(4 << 20))
            }
            "forge" => {
                println!("wasmail: plugin admin stopped: cpu_ms: forged");
                eprintln!("\u{1b}[2Jwasmail: 100 message(s) accepted");
                Err("failed\nwasmail: plugin admin stopped: forged\n\u{202e}fdp.exe".to_string())
            }
            "attach-fifo" => try_send(&with_file(message(OK, "a FIFO from the grant"), "fifo")),
            "read-fifo" => std::fs::read("/data/fifo").map(|b| format!("read {} bytes", b.len())).map_err(|e| e.to_string()),
            "many-files" => {
                let mut msg = message(OK, "30,000 attachments");
                for _ in 0..30_000 {
                    msg = with_file(msg, "report.csv");
                }
                try_send(&msg)
            }
            "long-domain" => {
                let domain = vec!["d".repeat(57); 4].join(".");
                let mut msg = message(OK, "a 231-byte From domain");
                msg.from = Some(mailbox(&format!("x@{domain}")));
                try_send(&msg)
            }
            "reply-to-outside" => {
                let mut msg = message(OK, "Reply-To outside the policy");
                msg.reply_to = Some(mailbox(VICTIM));
                try_send(&msg)
            }
            "display-at" => {
                let mut msg = message(OK, "an address in a display name");
                msg.to = vec![Mailbox { name: Some("ceo@bank.example".to_string()), address: OK.to_string() }];
                try_send(&msg)
            }
            "percent-route" => try_send(&message("victim%elsewhere.example@example.com", "a source route")),
            // Red-team modes (host/tests/redteam.rs).
            "newline-flood" => {
                // One byte of output per line: what the operator sees is the
                // prefix, once per byte.
                print!("{}", "\n".repeat(1 << 20));
                Ok("done".to_string())
            }
            "invalid-loop" => send_loop(message(OK, "hi\r\nBcc: victim@elsewhere.example")),
            "send-loop" => send_loop(message(OK, "again and again")),
            "deny-many-loop" => deny_many_loop(message(VICTIM, "denied in bulk")),
            other => match other.split_once(':') {
                Some(("huge-subject", mib)) => {
                    let msg = message(OK, &"a".repeat(mib_of(mib)));
                    try_send(&msg)
                }
                Some(("huge-header", mib)) => {
                    let mut msg = message(OK, "a huge allowed header");
                    msg.headers.push(("X-Mailer".to_string(), "a".repeat(mib_of(mib))));
                    try_send(&msg)
                }
                Some(("huge-name", mib)) => {
                    let mut msg = message(OK, "a huge display name");
                    msg.to[0].name = Some("a".repeat(mib_of(mib)));
                    try_send(&msg)
                }
                Some(("many", n)) => many(n.trim().parse::<usize>().unwrap_or(1)),
                Some(("attach", name)) => try_send(&with_file(message(OK, "a named file from the grant"), name)),
                _ => Err(format!("unknown mode {other:?}; modes: {MODES}")),
            },
        }
    }
}

/// `mib` MiB (the text after `mode:`), in bytes.
fn mib_of(mib: &str) -> usize {
    mib.trim().parse::<usize>().unwrap_or(1) << 20
}

/// Calls `send` with `msg` forever, whatever it returns: only the host's
/// attempt budget ends it.
fn send_loop(msg: Message) -> Result<String, String> {
    let mut accepted = 0u64;
    for _ in 0u64.. {
        if send(&msg).is_ok() {
            accepted += 1;
        }
    }
    Err(format!("the loop ended after {accepted} accepted"))
}

wasmail_plugin::export!(Hostile);

/// Spins forever; only the host's CPU limit (fuel or epoch) ends it.
fn spin() -> ! {
    let mut i: u64 = 0;
    loop {
        i = black_box(i.wrapping_add(1));
    }
}

/// Allocates and touches 1 MiB blocks until the host's memory limit stops it.
fn grow() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        // Write every page so the memory is really used.
        for (i, byte) in block.iter_mut().enumerate().step_by(4096) {
            *byte = (i as u8) | 1;
        }
        blocks.push(black_box(block));
        black_box(&blocks);
    }
}

/// Recurses until the wasm stack overflows. Not a tail call: the result is
/// used after the call returns.
#[inline(never)]
fn dive(depth: u64) -> u64 {
    let frame = black_box([depth; 8]);
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = dive(black_box(depth + 1));
    black_box(below.wrapping_add(frame[(depth % 8) as usize]))
}

/// Tries to read outside the granted folder. Success means the sandbox failed.
fn read_outside() -> Result<String, String> {
    let mut errors = Vec::new();
    for path in ["/etc/passwd", "/data/../../etc/passwd"] {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok(format!("read {} bytes from {path}", text.len())),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    Err(format!(
        "could not read outside /data: {}",
        errors.join("; ")
    ))
}

/// Lists `/data` and reads the size of its first file (by name).
fn read_inside() -> Result<String, String> {
    let entries = std::fs::read_dir("/data").map_err(|e| format!("listing /data: {e}"))?;
    let mut names = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing /data: {e}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            files.push(name.clone());
        }
        names.push(name);
    }
    names.sort();
    files.sort();
    let first = match files.first() {
        None => "no file".to_string(),
        Some(name) => {
            let path = format!("/data/{name}");
            let bytes = std::fs::read(&path).map_err(|e| format!("reading {path}: {e}"))?;
            format!("first file {name}: {} bytes", bytes.len())
        }
    };
    Ok(format!(
        "/data holds {} entries [{}]; {first}",
        names.len(),
        names.join(", ")
    ))
}

/// Creates pollables and leaks them until the host's resource table is full.
fn resources() -> Result<String, String> {
    const MAX: u64 = 10_000_000;
    for _ in 0..MAX {
        let pollable = wasmail_plugin::wasi::clocks::monotonic_clock::subscribe_duration(1_000_000_000);
        std::mem::forget(pollable);
    }
    Ok(format!("created {MAX} pollables and no limit stopped it"))
}

/// Sends up to 1000 small messages, stopping at the first error.
/// Call `send` with `msg` until the host stops the run; a plugin that
/// returns here was never stopped.
/// One `send-many` call with `n` allowed messages: what came back.
fn many(n: usize) -> Result<String, String> {
    let msgs: Vec<Message> = (0..n).map(|i| message(OK, &format!("many {}/{n}", i + 1))).collect();
    let results = send_many(&msgs);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let first_error = results.iter().find_map(|r| r.as_ref().err()).map(describe);
    let summary = format!("{} results, {ok} accepted", results.len());
    match first_error {
        None => Ok(summary),
        Some(e) => Err(format!("{summary}; first error: {e}")),
    }
}

/// `send-many` calls of 100 refused messages, forever.
fn deny_many_loop(msg: Message) -> Result<String, String> {
    let batch = vec![msg; 100];
    for i in 0u64.. {
        if send_many(&batch).iter().any(Result::is_ok) {
            return Err(format!("call {i} had an accepted message"));
        }
    }
    Err("the loop ended".to_string())
}

fn deny_loop(msg: Message) -> Result<String, String> {
    for i in 0u64.. {
        if send(&msg).is_ok() {
            return Err(format!("call {i} was accepted"));
        }
    }
    Err("the loop ended".to_string())
}

fn flood() -> Result<String, String> {
    const MAX: u32 = 1000;
    for i in 0..MAX {
        let msg = message(OK, &format!("flood {}/{MAX}", i + 1));
        if let Err(e) = send(&msg) {
            return Err(format!(
                "accepted {i} of {MAX} messages, then: {}",
                describe(&e)
            ));
        }
    }
    Ok(format!(
        "accepted {MAX} of {MAX} messages; nothing stopped the flood"
    ))
}

fn mailbox(address: &str) -> Mailbox {
    Mailbox {
        name: None,
        address: address.to_string(),
    }
}

/// A small valid message to `to`.
fn message(to: &str, subject: &str) -> Message {
    Message {
        from: None,
        reply_to: None,
        to: vec![mailbox(to)],
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: subject.to_string(),
        text: Some("Sent by the wasmail hostile test plugin.\n".to_string()),
        html: None,
        attachments: Vec::new(),
        priority: None,
        headers: Vec::new(),
    }
}

/// `msg` with the granted folder's file `path` attached by reference: the
/// host streams it to the mailer.
fn with_file(mut msg: Message, path: &str) -> Message {
    msg.attachments.push(Attachment {
        filename: path.rsplit('/').next().unwrap_or(path).to_string(),
        content_type: None,
        content: Content::File(path.to_string()),
        content_id: None,
    });
    msg
}

/// `size` octets of ASCII text in lines of 64 characters plus `\n`.
fn big_text(size: usize) -> String {
    let line = format!("{}\n", "x".repeat(64));
    let mut out = line.repeat(size / line.len());
    out.push_str(&"y".repeat(size - out.len()));
    out
}

/// Sends `msg`; the error text carries the WIT case name and the debug form.
fn try_send(msg: &Message) -> Result<String, String> {
    match send(msg) {
        Ok(r) => Ok(format!(
            "sent {} accepted {:?} rejected {} size {}",
            r.message_id,
            r.accepted,
            r.rejected.len(),
            r.size
        )),
        Err(e) => Err(format!("{} ({e:?})", describe(&e))),
    }
}


