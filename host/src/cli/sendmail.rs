//! `wasmail sendmail`: the sendmail command-line interface (as msmtp and
//! Postfix offer it) for cron, git send-email, mutt and PHP `mail()`: a
//! complete RFC 5322 message on standard input, recipients from the
//! arguments or (`-t`) from its To, Cc and Bcc fields, delivered through
//! the mailer to the configured relay, or to the outbox without one.
//!
//! The message is the caller's, but it still goes through the mailer's wire
//! checks (CRLF only, no NUL, no line over 998 octets, well-formed header
//! lines, dot-stuffing that no smuggling sequence survives). Line ends are
//! made CRLF here, a lone CR is refused, Bcc is removed, and Date and
//! Message-ID are added when missing.

use crate::bindings::transport::Envelope;
use crate::cli::report::{self, CliError, exit};
use crate::config::Config;
use crate::mail::outbox;
use crate::mailer::relay::RelayArgs;
use crate::mailer::{Mailer, MailerGrant};
use crate::{Runtime, text};
use std::io::Read;
use std::path::PathBuf;
use wasmail_mailer::mime::address::{Address, Mailbox};

/// The largest message read from standard input.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;
/// The most recipients one message may have (as the mailer's own limit).
pub const MAX_RECIPIENTS: usize = 1000;

/// The flags of `wasmail sendmail`, as sendmail(8) spells them.
#[derive(Debug, Clone, clap::Args)]
pub struct SendmailArgs {
    /// Read the recipients from the To, Cc and Bcc fields (Bcc is removed).
    #[arg(short = 't')]
    pub from_headers: bool,
    /// A line holding a single `.` does not end the input.
    #[arg(short = 'i')]
    pub ignore_dots: bool,
    /// The envelope sender (and the From when the message has none).
    #[arg(short = 'f', value_name = "ADDR")]
    pub sender: Option<String>,
    /// The sender's full name, for a From the message lacks.
    #[arg(short = 'F', value_name = "NAME")]
    pub full_name: Option<String>,
    /// sendmail options: `-oi` is `-i`; the others (`-oem`, ...) are accepted
    /// and ignored.
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,
    /// The config file (default: `$WASMAIL_CONFIG`,
    /// `$XDG_CONFIG_HOME/wasmail/wasmail.toml`, `~/.config/wasmail/wasmail.toml`,
    /// `/etc/wasmail.toml`).
    #[arg(short = 'C', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The recipients.
    pub recipients: Vec<String>,
}

/// The config file sendmail uses: the first of the usual places that exists.
pub fn find_config(given: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.clone());
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let candidates = [
        env("WASMAIL_CONFIG"),
        env("XDG_CONFIG_HOME").map(|d| d.join("wasmail/wasmail.toml")),
        env("HOME").map(|d| d.join(".config/wasmail/wasmail.toml")),
        Some(PathBuf::from("/etc/wasmail.toml")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

/// A message read from standard input, made ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The envelope.
    pub from: String,
    /// The envelope's recipients.
    pub recipients: Vec<String>,
    /// The message, CRLF line ends, Bcc removed, Date and Message-ID added.
    pub bytes: Vec<u8>,
    /// Its Message-ID, without angle brackets.
    pub message_id: String,
}

/// Why a message was refused: the text names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// The lines of `input` without their line ends. A lone CR is refused; a
/// line holding only `.` ends the input unless `ignore_dots`.
fn lines(input: &[u8], ignore_dots: bool) -> Result<Vec<&[u8]>, Refused> {
    let mut out = Vec::new();
    for (n, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.contains(&b'\r') {
            return Err(Refused(format!("message: line {} holds a carriage return that ends no line", n + 1)));
        }
        if line.contains(&0) {
            return Err(Refused(format!("message: line {} holds a NUL", n + 1)));
        }
        if !ignore_dots && line == b"." {
            return Ok(out);
        }
        out.push(line);
    }
    // The split leaves one empty piece after a final newline.
    if out.last().is_some_and(|l| l.is_empty()) && input.ends_with(b"\n") {
        out.pop();
    }
    Ok(out)
}

/// One unfolded header field: its name and value, and the lines it took.
struct Field<'a> {
    name: String,
    value: String,
    raw: Vec<&'a [u8]>,
}

fn fields<'a>(header: &[&'a [u8]]) -> Result<Vec<Field<'a>>, Refused> {
    let mut out: Vec<Field<'a>> = Vec::new();
    for (n, &line) in header.iter().enumerate() {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            let Some(last) = out.last_mut() else {
                return Err(Refused("message: the header starts with a continuation line".into()));
            };
            last.value.push_str(&String::from_utf8_lossy(line));
            last.raw.push(line);
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(Refused(format!("message: header line {} is not `Name: value`", n + 1)));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(Refused(format!("message: header line {} has a bad field name", n + 1)));
        }
        out.push(Field { name: name.to_owned(), value: value.to_owned(), raw: vec![line] });
    }
    Ok(out)
}

/// Split an address list at commas outside quotes and angle brackets, and
/// parse each entry with the mailer's parser.
pub fn address_list(field: &str, value: &str) -> Result<Vec<Address>, Refused> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut bracket, mut escaped) = (false, false, false, false);
    let mut current = String::new();
    for c in value.chars() {
        let outside = !quoted && !angle && !bracket;
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            '[' if !quoted => bracket = true,
            ']' if !quoted => bracket = false,
            ',' if outside => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            // A group (RFC 5322 3.4): its name goes, its members stay;
            // `undisclosed-recipients:;` has none.
            ':' if outside => {
                current.clear();
                continue;
            }
            ';' if outside => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, p)| Mailbox::parse(p).map(|m| m.address).map_err(|e| Refused(format!("{field}[{i}]: {e}"))))
        .collect()
}

/// The domain for a Message-ID: the sender's.
fn message_id(from: &str, now: u64) -> String {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut random = [0u8; 12];
    if getrandom(&mut random).is_err() {
        random = [0; 12];
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{now}.{hex}@{domain}")
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Turn standard input into a message ready for the wire: the envelope,
/// CRLF lines, Bcc removed, Date and Message-ID added when missing.
pub fn prepare(input: &[u8], a: &SendmailArgs, now: u64) -> Result<Prepared, Refused> {
    let ignore_dots = a.ignore_dots || a.options.iter().any(|o| o == "i");
    let all = lines(input, ignore_dots)?;
    let split = all.iter().position(|l| l.is_empty()).unwrap_or(all.len());
    let (header, body) = all.split_at(split);
    let fields = fields(header)?;
    let find = |name: &str| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name));
    let header_from = match find("from") {
        Some(f) => address_list("From", &f.value)?.into_iter().next(),
        None => None,
    };
    let from = match (&a.sender, &header_from) {
        (Some(s), _) => Mailbox::parse(s).map_err(|e| Refused(format!("-f: {e}")))?.address,
        (None, Some(h)) => h.clone(),
        (None, None) => return Err(Refused("from: the message has no From field and no -f was given".into())),
    };
    let mut recipients = Vec::new();
    for (i, r) in a.recipients.iter().enumerate() {
        let m = Mailbox::parse(r).map_err(|e| Refused(format!("recipients[{i}]: {e}")))?;
        recipients.push(m.address);
    }
    if a.from_headers {
        for name in ["To", "Cc", "Bcc"] {
            for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)) {
                recipients.extend(address_list(name, &f.value)?);
            }
        }
    }
    // Once each, in the order given.
    let mut seen = std::collections::HashSet::new();
    recipients.retain(|r| seen.insert(r.to_string()));
    if recipients.is_empty() {
        return Err(Refused("recipients: none given (name them, or use -t)".into()));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(Refused(format!("recipients: {} is more than {MAX_RECIPIENTS}", recipients.len())));
    }
    let mut out = Vec::with_capacity(input.len() + header.len() + 256);
    let mut push = |line: &[u8]| {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    };
    if header_from.is_none() {
        let name = a.full_name.as_deref().filter(|n| !n.is_empty());
        let mailbox = Mailbox::new(name, &from.to_string()).map_err(|e| Refused(format!("-F: {e}")))?;
        let mut w = wasmail_mailer::mime::header::HeaderWriter::default();
        w.mailboxes("From", std::slice::from_ref(&mailbox));
        out_extend(&mut push, &w.into_bytes());
    }
    if find("date").is_none() {
        push(format!("Date: {}", wasmail_mailer::mime::header::format_date(now)).as_bytes());
    }
    let message_id = match find("message-id") {
        Some(f) => f.value.trim().trim_start_matches('<').trim_end_matches('>').to_owned(),
        None => {
            let id = message_id(&from.to_string(), now);
            push(format!("Message-ID: <{id}>").as_bytes());
            id
        }
    };
    for f in &fields {
        // Bcc goes; so does a From without an address, for the one above.
        if f.name.eq_ignore_ascii_case("bcc") || (f.name.eq_ignore_ascii_case("from") && header_from.is_none()) {
            continue;
        }
        for line in &f.raw {
            push(line);
        }
    }
    push(b"");
    for line in body.iter().skip(1) {
        push(line);
    }
    Ok(Prepared { from: from.to_string(), recipients: recipients.iter().map(ToString::to_string).collect(), bytes: out, message_id })
}

/// Feed the CRLF lines of `bytes` (as `HeaderWriter` makes them) to `push`.
fn out_extend(push: &mut impl FnMut(&[u8]), bytes: &[u8]) {
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            push(line);
        }
    }
}

/// Run `wasmail sendmail`; returns the exit code (sysexits.h, as sendmail).
pub async fn run(rt: &Runtime, a: SendmailArgs) -> u8 {
    match run_inner(rt, &a).await {
        Ok(code) => code,
        Err(e) => e.print(false),
    }
}

async fn run_inner(rt: &Runtime, a: &SendmailArgs) -> Result<u8, CliError> {
    let config = match find_config(a.config.as_ref()) {
        Some(p) => Config::load(&p).map_err(|e| CliError::new(exit::CONFIG, "config", format!("{e:#}")))?,
        None => Config::default(),
    };
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut input)
        .map_err(|e| CliError::new(exit::NOINPUT, "io", format!("standard input: {e}")))?;
    if input.len() as u64 > MAX_INPUT_BYTES {
        return Err(CliError::new(exit::DATAERR, "invalid-message", format!("message: more than {MAX_INPUT_BYTES} octets")));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let msg = prepare(&input, a, now).map_err(|Refused(m)| CliError::new(exit::DATAERR, "invalid-message", format!("invalid message: {m}")))?;
    let internal = |e: anyhow::Error| CliError::new(exit::SOFTWARE, "internal", format!("{e:#}"));
    let Some(relay) = &config.relay else {
        let dir = config.outbox.clone().unwrap_or_else(|| PathBuf::from(outbox::DEFAULT_OUTBOX));
        let path = outbox::write(&dir, &msg.bytes).map_err(internal)?;
        report::say(format_args!("no relay configured: <{}> written to {}", msg.message_id, path.display()));
        return Ok(exit::OK);
    };
    let Some((settings, secret, provider)) = RelayArgs::from_config(relay).resolve(false).await? else {
        return Err(CliError::new(exit::CONFIG, "config", "[relay] has no server"));
    };
    let grant = MailerGrant::relay(&settings.addresses, secret, provider);
    let mut mailer = Mailer::new(&rt.mailer, grant).await.map_err(internal)?;
    mailer
        .configure(&settings.to_wit())
        .await
        .map_err(|e| CliError::new(exit::CONFIG, "config", format!("relay: {e:#}")))?;
    let envelope = Envelope { from: msg.from.clone(), recipients: msg.recipients.clone() };
    let result = mailer.submit(&envelope, &msg.bytes).await.map_err(internal)?;
    let _ = mailer.close().await;
    match result {
        Ok(receipt) => {
            for f in &receipt.rejected {
                report::say(format_args!("{}: {}", f.address, text::printable(&f.reply.line())));
            }
            Ok(exit::OK)
        }
        Err(e) => {
            report::say(format_args!("<{}>: {}", msg.message_id, e.describe()));
            Ok(report::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(t: bool, recipients: &[&str]) -> SendmailArgs {
        SendmailArgs {
            from_headers: t,
            ignore_dots: false,
            sender: None,
            full_name: None,
            options: vec![],
            config: None,
            recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn dash_t_reads_recipients_and_drops_bcc() {
        let input = b"From: Cron Daemon <cron@example.com>\nTo: a@example.com, \"Smith, Jo\" <jo@example.com>\nBcc: hidden@example.com\nSubject: hi\n\nbody\n..dots\n";
        let p = prepare(input, &args(true, &[]), 1_700_000_000).unwrap();
        assert_eq!(p.from, "cron@example.com");
        assert_eq!(p.recipients, ["a@example.com", "jo@example.com", "hidden@example.com"]);
        let text = String::from_utf8(p.bytes).unwrap();
        assert!(!text.contains("Bcc") && !text.contains("hidden"), "{text}");
        assert!(text.contains("\r\nSubject: hi\r\n\r\nbody\r\n..dots\r\n"), "{text:?}");
        assert!(text.starts_with("Date: ") && text.contains(&format!("Message-ID: <{}>", p.message_id)), "{text}");
        assert!(!text.contains("\r\r") && !text.replace("\r\n", "").contains('\n'), "CRLF only");
    }

    #[test]
    fn a_lone_dot_ends_the_input_unless_i() {
        let input = b"Subject: x\n\none\n.\ntwo\n";
        let mut a = args(false, &["a@example.com"]);
        a.sender = Some("me@example.com".into());
        let p = prepare(input, &a, 0).unwrap();
        assert!(!String::from_utf8_lossy(&p.bytes).contains("two"));
        a.options = vec!["i".into()];
        let p = prepare(input, &a, 0).unwrap();
        assert!(String::from_utf8_lossy(&p.bytes).contains("two"));
    }

    #[test]
    fn a_missing_from_is_written_from_f_and_big_f() {
        let mut a = args(false, &["a@example.com"]);
        a.sender = Some("me@example.com".into());
        a.full_name = Some("Zoë Build".into());
        let p = prepare(b"Subject: x\n\nhi\n", &a, 0).unwrap();
        let text = String::from_utf8(p.bytes).unwrap();
        assert!(text.starts_with("From: =?utf-8?") && text.contains("<me@example.com>"), "{text}");
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let a = args(true, &[]);
        for (input, field) in [
            (&b"From: a@example.com\nTo: b@example.com\n\nhi\rBcc: x\n"[..], "carriage return"),
            (b"From: a@example.com\nTo: b@example.com\n\nnul\0\n", "NUL"),
            (b"From: a@example.com\nTo: alice@example.org(<bob@evil.example>\n\nhi\n", "To[0]"),
            (b"From: a@example.com\n\nhi\n", "recipients"),
            (b"To: b@example.com\n\nhi\n", "from"),
            (b" folded\nTo: b@example.com\n\nhi\n", "continuation"),
            (b"From: a@example.com\nTo: v%other.example@example.com\n\nhi\n", "To[0]"),
        ] {
            let e = prepare(input, &a, 0).unwrap_err();
            assert!(e.0.contains(field), "{field}: {e:?}");
        }
    }

    #[test]
    fn groups_an_empty_from_and_repeated_recipients() {
        // mutt and PHP write Bcc-only mail with an empty group in To.
        let input = b"From: a@example.com\nTo: undisclosed-recipients:;\nCc: team: b@example.com, c@[IPv6:::1];, b@example.com\nBcc: d@example.com, b@example.com\n\nhi\n";
        let p = prepare(input, &args(true, &[]), 0).unwrap();
        assert_eq!(p.recipients, ["b@example.com", "c@[IPv6:::1]", "d@example.com"]);
        // A From without an address is replaced, not doubled.
        let mut a = args(false, &["b@example.com"]);
        a.sender = Some("me@example.com".into());
        let p = prepare(b"From:\nSubject: x\n\nhi\n", &a, 0).unwrap();
        let text = String::from_utf8(p.bytes).unwrap();
        assert_eq!(text.matches("From:").count(), 1, "{text}");
        assert!(text.contains("From: me@example.com\r\n"), "{text}");
    }
}
