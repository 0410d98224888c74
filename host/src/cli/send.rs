//! `wasmail send`: one message from the command line, through the mailer
//! component, to the relay (RFC 5321) or to the outbox. Flags follow swaks,
//! msmtp and sendmail; exit codes follow sysexits.h.

use crate::Runtime;
use crate::bindings::types::{Attachment, Content, Mailbox, Message, Priority as WitPriority, Receipt, SendError};
use crate::mailer::blobs::BlobAccess;
use crate::mailer::{Mailer, MailerGrant};
use crate::mail::deadletter::{self, DeadLetters};
use crate::mailer::relay::RelayArgs;
use crate::cli::report::{self, CliError, exit};
use crate::{mail::outbox, mailer::tls, text};
use crate::mailer::blobs::Progress;
use std::path::PathBuf;
use std::sync::Arc;
use crate::mail::dkim::{Canonicalization, Signing, SigningKey};
use wasmail_mailer::mime::{RESERVED_HEADERS, address, check_header_name};

/// `--priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    /// X-Priority 1.
    Highest,
    /// X-Priority 2.
    High,
    /// X-Priority 3, written out.
    Normal,
    /// X-Priority 4.
    Low,
    /// X-Priority 5.
    Lowest,
}

/// The flags of `wasmail send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// The author, `addr` or `Name <addr>`.
    #[arg(long, value_name = "ADDR")]
    pub from: String,
    /// A recipient (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub to: Vec<String>,
    /// A copy recipient (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub cc: Vec<String>,
    /// A blind copy recipient (repeatable): envelope only.
    #[arg(long, value_name = "ADDR")]
    pub bcc: Vec<String>,
    /// Where replies go.
    #[arg(long, value_name = "ADDR")]
    pub reply_to: Option<String>,
    /// The subject.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The plain-text body from a file, or `-` for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub body: Option<PathBuf>,
    /// The plain-text body, given inline.
    #[arg(long, conflicts_with = "body")]
    pub text: Option<String>,
    /// An HTML body from a file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Attach a file (repeatable). Its type is guessed from the name.
    #[arg(long, value_name = "FILE")]
    pub attach: Vec<PathBuf>,
    /// Attach a file inline with Content-ID = its file name (`cid:NAME` in HTML).
    #[arg(long, value_name = "FILE")]
    pub inline: Vec<PathBuf>,
    /// X-Priority (none unless given; `normal` writes `3 (Normal)`).
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// The X-Mailer header.
    #[arg(long, value_name = "TEXT")]
    pub x_mailer: Option<String>,
    /// An extra header, `Name: value` (repeatable).
    #[arg(long, value_name = "NAME: VALUE")]
    pub header: Vec<String>,
    /// Where and how to send; without `--server` the message goes to the outbox.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// DKIM signing.
    #[command(flatten)]
    pub dkim: DkimFlags,
    /// The outbox folder.
    #[arg(long, value_name = "DIR", default_value = outbox::DEFAULT_OUTBOX)]
    pub outbox: PathBuf,
    /// Where undelivered messages are kept for `wasmail retry`.
    #[arg(long, value_name = "DIR", default_value = deadletter::DEFAULT_DEAD_LETTER)]
    pub dead_letter: PathBuf,
    /// Send the same message this many times over one session.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Print the receipt (or error) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the SMTP transcript to standard error (credentials redacted).
    #[arg(short, long)]
    pub verbose: bool,
}

/// The DKIM flags of `wasmail send` (RFC 6376).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DkimFlags {
    /// Sign with DKIM using this private key (PEM, readable by its owner
    /// only; `wasmail dkim keygen` makes one). The key stays in the host.
    #[arg(long = "dkim-key", id = "dkim_key", value_name = "FILE", requires_all = ["dkim_domain", "dkim_selector"])]
    pub key: Option<PathBuf>,
    /// The signing domain (`d=`): the From domain must be it or a subdomain.
    #[arg(long = "dkim-domain", id = "dkim_domain", value_name = "DOMAIN", requires = "dkim_key")]
    pub domain: Option<String>,
    /// The selector (`s=`): the key record is at SELECTOR._domainkey.DOMAIN.
    #[arg(long = "dkim-selector", id = "dkim_selector", value_name = "SELECTOR", requires = "dkim_key")]
    pub selector: Option<String>,
    /// How header and body are canonicalized (`c=`): simple or relaxed each.
    #[arg(long = "dkim-canonicalization", id = "dkim_canonicalization", value_name = "HEADER/BODY", requires = "dkim_key")]
    pub canonicalization: Option<Canonicalization>,
    /// The signature expires (`x=`) this many seconds after it is made.
    #[arg(long = "dkim-expire", id = "dkim_expire", value_name = "SECS", requires = "dkim_key")]
    pub expire: Option<u64>,
}

type Early = CliError;

fn early(code: u8, kind: &'static str, message: impl Into<String>) -> Early {
    CliError::new(code, kind, message)
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, Early> {
    let m = address::Mailbox::parse(s)
        .map_err(|e| early(exit::DATAERR, "invalid-message", format!("invalid message: {field}: {e}")))?;
    Ok(Mailbox { name: m.name, address: m.address.to_string() })
}

/// The longest text or HTML body `send` reads (`--body`, `--html`, from a
/// file or standard input): the mailer holds a body whole while it encodes
/// it. Larger content goes as an attachment, which is streamed.
pub const MAX_BODY_TEXT_BYTES: u64 = 32 << 20;

fn read_text(field: &str, path: &PathBuf) -> Result<String, Early> {
    use std::io::Read;
    let source: Result<Box<dyn Read>, std::io::Error> = if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdin()))
    } else {
        std::fs::File::open(path).map(|f| Box::new(f) as Box<dyn Read>)
    };
    let mut bytes = Vec::new();
    source
        .and_then(|s| s.take(MAX_BODY_TEXT_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| early(exit::NOINPUT, "io", format!("{field}: {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_BODY_TEXT_BYTES {
        return Err(early(
            exit::DATAERR,
            "invalid-message",
            format!("invalid message: {field}: {} is more than {MAX_BODY_TEXT_BYTES} bytes: attach it instead", path.display()),
        ));
    }
    String::from_utf8(bytes).map_err(|_| early(exit::DATAERR, "invalid-message", format!("invalid message: {field}: {} is not UTF-8", path.display())))
}

fn file_attachment(field: &str, path: &PathBuf, inline: bool) -> Result<Attachment, Early> {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(early(exit::NOINPUT, "io", format!("{field}: {}: not a regular file", path.display()))),
        Err(e) => return Err(early(exit::NOINPUT, "io", format!("{field}: {}: {e}", path.display()))),
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Attachment {
        filename: name.clone(),
        content_type: None,
        content: Content::File(path.to_string_lossy().into_owned()),
        content_id: inline.then_some(name),
    })
}

fn message(a: &SendArgs) -> Result<Message, Early> {
    let list = |field: &str, v: &[String]| -> Result<Vec<Mailbox>, Early> {
        v.iter().enumerate().map(|(i, s)| mailbox(&format!("{field}[{i}]"), s)).collect()
    };
    let text = match (&a.body, &a.text) {
        (Some(p), _) => Some(read_text("body", p)?),
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    };
    let html = a.html.as_ref().map(|p| read_text("html", p)).transpose()?;
    let mut attachments = Vec::new();
    for (i, p) in a.attach.iter().enumerate() {
        attachments.push(file_attachment(&format!("attachments[{i}]"), p, false)?);
    }
    for (i, p) in a.inline.iter().enumerate() {
        attachments.push(file_attachment(&format!("inline[{i}]"), p, true)?);
    }
    let mut headers = Vec::new();
    if let Some(x) = &a.x_mailer {
        headers.push(("X-Mailer".to_owned(), x.clone()));
    }
    for (i, h) in a.header.iter().enumerate() {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| early(exit::USAGE, "usage", format!("header[{i}]: expected `Name: value`")))?;
        headers.push((n.trim().to_owned(), v.trim_start().to_owned()));
    }
    Ok(Message {
        from: Some(mailbox("from", &a.from)?),
        reply_to: a.reply_to.as_deref().map(|r| mailbox("reply-to", r)).transpose()?,
        to: list("to", &a.to)?,
        cc: list("cc", &a.cc)?,
        bcc: list("bcc", &a.bcc)?,
        subject: a.subject.clone(),
        text,
        html,
        attachments,
        priority: a.priority.map(|p| match p {
            Priority::Highest => WitPriority::Highest,
            Priority::High => WitPriority::High,
            Priority::Normal => WitPriority::Normal,
            Priority::Low => WitPriority::Low,
            Priority::Lowest => WitPriority::Lowest,
        }),
        headers,
    })
}

fn print_send_error(json: bool, e: &SendError) -> u8 {
    if json {
        println!("{}", report::error_json(e));
    } else {
        report::say(e.describe());
    }
    report::exit_code(e)
}

fn print_receipt(json: bool, r: &Receipt) {
    if json {
        println!("{}", report::receipt_json(r));
        return;
    }
    let text = report::printable(&r.reply.text.replace('\n', " / ")).into_owned();
    println!("sent <{}> to {} recipient(s): {} {text}", r.message_id, r.accepted.len(), r.reply.code);
    for f in &r.rejected {
        println!("rejected {}: {} {}", f.address, f.reply.code, report::printable(&f.reply.text.replace('\n', " / ")));
    }
}

/// Run `wasmail send`; returns the exit code.
pub async fn run(rt: &Runtime, a: SendArgs) -> u8 {
    match run_inner(rt, &a).await {
        Ok(code) => code,
        Err(e) => e.print(a.json),
    }
}

/// The signing identity of `--dkim-*`, which must cover the From domain: a
/// key given for a domain that is not the author's is a mistake to report,
/// not mail to send unsigned. The headers given with `--header` and
/// `--x-mailer` are signed too.
fn signing(a: &SendArgs, msg: &Message) -> Result<Option<Arc<Signing>>, Early> {
    let f = &a.dkim;
    let (Some(key), Some(domain), Some(selector)) = (&f.key, &f.domain, &f.selector) else {
        return Ok(None);
    };
    let config = |e: anyhow::Error| early(exit::CONFIG, "config", format!("{e:#}"));
    let usage = |e: anyhow::Error| early(exit::USAGE, "usage", format!("{e:#}"));
    let key = SigningKey::load(key).map_err(config)?;
    let mut s = Signing::new(domain, selector, key).map_err(usage)?;
    s.canonicalization = f.canonicalization.unwrap_or_default();
    s.expire_secs = f.expire;
    // Names the mailer will refuse anyway are left for it to name.
    let names = msg.headers.iter().map(|(n, _)| n.clone()).filter(|n| {
        check_header_name(n).is_ok() && !RESERVED_HEADERS.contains(&n.to_ascii_lowercase().as_str())
    });
    let s = s.headers(names).map_err(usage)?;
    let from = msg.from.as_ref().map(|m| m.address.as_str()).unwrap_or_default();
    let from_domain = from.rsplit_once('@').map_or("", |(_, d)| d);
    if !s.covers(from_domain) {
        return Err(early(
            exit::USAGE,
            "usage",
            format!(
                "--dkim-domain {} does not cover the From domain {from_domain}: mail is signed only by its own domain or a parent domain",
                s.domain
            ),
        ));
    }
    Ok(Some(Arc::new(s)))
}

async fn run_inner(rt: &Runtime, a: &SendArgs) -> Result<u8, Early> {
    let msg = message(a)?;
    let signing = signing(a, &msg)?;
    let blobs = BlobAccess::Files(a.attach.iter().chain(&a.inline).cloned().collect());
    let Some((settings, secret, provider)) = a.relay.resolve(a.verbose).await? else {
        return to_outbox(rt, a, &msg, blobs, signing).await;
    };
    // Signing reads each attachment file twice: once for the body hash.
    let bar = progress_bar(a, if signing.is_some() { 2 } else { 1 });
    let grant = MailerGrant::relay(&settings.addresses, secret, provider)
        .signing(signing)
        .blobs(blobs)
        .transcript(a.verbose.then(text::stderr_lines))
        .progress(bar.clone().map(|b| -> Progress { Arc::new(move |n| b.inc(n)) }));
    let internal = |e: anyhow::Error| early(exit::SOFTWARE, "internal", format!("{e:#}"));
    let mut mailer = Mailer::new(&rt.mailer, grant).await.map_err(internal)?;
    // A relay setting the mailer refuses (an EHLO name with a line break,
    // say) is bad input: the message names the field.
    mailer
        .configure(&settings.to_wit())
        .await
        .map_err(|e| early(exit::DATAERR, "invalid-message", format!("invalid message: {e:#}")))?;
    let dead = match a.relay.stored() {
        Some(relay) => DeadLetters::new(&a.dead_letter).for_relay(relay),
        None => DeadLetters::new(&a.dead_letter),
    };
    let mut code = exit::OK;
    for _ in 0..a.repeat.max(1) {
        match mailer.deliver(&msg).await.map_err(internal)? {
            Ok(r) => print_receipt(a.json, &r),
            Err(undelivered) => {
                code = print_send_error(a.json, &undelivered.error);
                if let Some(kept) = &undelivered.kept {
                    let path = dead.keep(kept, &undelivered.error, None).map_err(internal)?;
                    report::say(format_args!("kept in {} for `wasmail retry`", path.display()));
                }
                break;
            }
        }
    }
    mailer.close().await.map_err(internal)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(code)
}

/// Attachments smaller than this in all send without a progress bar.
pub const PROGRESS_MIN_BYTES: u64 = 4 << 20;

/// A progress bar over the attachment bytes, on a terminal only, never with
/// `--json`, and only when the attachments are large enough to wait for.
fn progress_bar(a: &SendArgs, passes: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if a.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = a.attach.iter().chain(&a.inline).filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    if total < PROGRESS_MIN_BYTES {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total.saturating_mul(u64::from(a.repeat.max(1))).saturating_mul(passes)),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

async fn to_outbox(
    rt: &Runtime,
    a: &SendArgs,
    msg: &Message,
    blobs: BlobAccess,
    signing: Option<Arc<Signing>>,
) -> Result<u8, Early> {
    let internal = |e: anyhow::Error| early(exit::SOFTWARE, "internal", format!("{e:#}"));
    let provider = tls::Provider::new(None).map_err(internal)?;
    let grant = MailerGrant::outbox(provider).blobs(blobs).signing(signing);
    let mut mailer = Mailer::new(&rt.mailer, grant).await.map_err(internal)?;
    let rendered = match mailer.render(msg).await.map_err(internal)? {
        Ok(r) => r,
        Err(e) => return Ok(print_send_error(a.json, &e)),
    };
    let path = outbox::write(&a.outbox, &rendered.bytes)
        .map_err(|e| early(exit::CONFIG, "io", format!("{e:#}")))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "message_id": rendered.message_id,
                "accepted": rendered.envelope.recipients,
                "rejected": [],
                "size": rendered.bytes.len(),
                "outbox": path.display().to_string(),
            })
        );
    } else {
        println!("{}", path.display());
    }
    Ok(exit::OK)
}
