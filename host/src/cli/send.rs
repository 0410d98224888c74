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
use wasmail_mailer::mime::address;

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

type Early = CliError;

fn early(code: u8, kind: &'static str, message: impl Into<String>) -> Early {
    CliError::new(code, kind, message)
}

fn mailbox(field: &str, s: &str) -> Result<Mailbox, Early> {
    let m = address::Mailbox::parse(s)
        .map_err(|e| early(exit::DATAERR, "invalid-message", format!("invalid message: {field}: {e}")))?;
    Ok(Mailbox { name: m.name, address: m.address.to_string() })
}

fn read_text(field: &str, path: &PathBuf) -> Result<String, Early> {
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    }
    .map_err(|e| early(exit::NOINPUT, "io", format!("{field}: {}: {e}", path.display())))?;
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

async fn run_inner(rt: &Runtime, a: &SendArgs) -> Result<u8, Early> {
    let msg = message(a)?;
    let blobs = BlobAccess::Files(a.attach.iter().chain(&a.inline).cloned().collect());
    let Some((settings, secret, provider)) = a.relay.resolve(a.verbose).await? else {
        return to_outbox(rt, a, &msg, blobs).await;
    };
    let bar = progress_bar(a);
    let grant = MailerGrant::relay(&settings.addresses, secret, provider)
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
fn progress_bar(a: &SendArgs) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if a.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let total: u64 = a.attach.iter().chain(&a.inline).filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    if total < PROGRESS_MIN_BYTES {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total.saturating_mul(u64::from(a.repeat.max(1)))),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta} left")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

async fn to_outbox(rt: &Runtime, a: &SendArgs, msg: &Message, blobs: BlobAccess) -> Result<u8, Early> {
    let internal = |e: anyhow::Error| early(exit::SOFTWARE, "internal", format!("{e:#}"));
    let provider = tls::Provider::new(None).map_err(internal)?;
    let grant = MailerGrant::outbox(provider).blobs(blobs);
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
