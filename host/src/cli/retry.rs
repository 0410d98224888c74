//! `wasmail retry`: resend the dead-letter folder's messages, exactly as they
//! were assembled, over one SMTP session (RFC 5321). Each is removed once the
//! relay accepts it. A message whose outcome is unknown is left alone unless
//! `--force`: the relay may already have delivered it.

use crate::bindings::types::SendError;
use crate::config::Config;
use crate::mail::audit::{self, AuditLog, Outcome};
use crate::mail::deadletter::{self, DeadLetters, Letter};
use crate::mailer::{Mailer, MailerGrant};
use crate::mailer::relay::RelayArgs;
use crate::cli::report::{CliError, exit};
use crate::{Runtime, text};
use serde_json::json;
use std::path::PathBuf;

/// The flags of `wasmail retry`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// The relay for every letter (default: the relay each letter records,
    /// or the config file's `[relay]`). The password flags apply either way.
    #[command(flatten)]
    pub relay: RelayArgs,
    /// Take the relay and the folder from this config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The dead-letter folder.
    #[arg(long, value_name = "DIR")]
    pub dead_letter: Option<PathBuf>,
    /// The audit log each resend is recorded in (default: the config's, else
    /// `wasmail-audit.jsonl`).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Resend messages whose outcome is unknown too (they may arrive twice).
    #[arg(long)]
    pub force: bool,
    /// One JSON object per message.
    #[arg(long)]
    pub json: bool,
    /// Print the SMTP transcript.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Run `wasmail retry`; returns the exit code: 0 when the folder is empty
/// afterwards (or only holds skipped messages), 75 when some failed again
/// or a file in the folder is not a letter (named as `unreadable`).
pub async fn run(rt: &Runtime, a: RetryArgs) -> u8 {
    match run_inner(rt, &a).await {
        Ok(code) => code,
        Err(e) => e.print(a.json),
    }
}

async fn run_inner(rt: &Runtime, a: &RetryArgs) -> Result<u8, CliError> {
    let config = match &a.config {
        Some(p) => Config::load(p).map_err(|e| CliError::new(exit::CONFIG, "config", format!("{e:#}")))?,
        None => Config::default(),
    };
    // `--server` or the config's relay overrides what the letters recorded;
    // the secret flags and the timeout always come from here.
    let given = match (&a.relay.server, &config.relay) {
        (Some(_), _) => Some(a.relay.clone()),
        (None, Some(r)) => Some(RelayArgs::from_config(r)),
        (None, None) => None,
    };
    let secrets = given.clone().unwrap_or_else(|| a.relay.clone());
    let dir = a
        .dead_letter
        .clone()
        .or(config.dead_letter.clone())
        .unwrap_or_else(|| PathBuf::from(deadletter::DEFAULT_DEAD_LETTER));
    let dead = DeadLetters::new(dir);
    let listing = dead.list().map_err(internal)?;
    // Left in place for an operator, and the run does not end OK.
    for (path, why) in &listing.unreadable {
        report_line(a.json, &path.display().to_string(), "unreadable", why);
    }
    let unreadable = u32::try_from(listing.unreadable.len()).unwrap_or(u32::MAX);
    let letters = listing.letters;
    if letters.is_empty() {
        if unreadable > 0 {
            return Ok(exit::TEMPFAIL);
        }
        if !a.json {
            println!("nothing to retry in {}", dead.dir().display());
        }
        return Ok(exit::OK);
    }
    // One session per relay, in the order the letters were kept.
    let mut groups: Vec<(Option<deadletter::StoredRelay>, RelayArgs, Vec<Letter>)> = Vec::new();
    for letter in letters {
        let relay = match (&given, &letter.meta.relay) {
            (Some(g), _) => g.clone(),
            (None, Some(stored)) => RelayArgs::from_stored(stored, &secrets),
            (None, None) => {
                return Err(CliError::new(
                    exit::USAGE,
                    "usage",
                    format!("{} records no relay: give --server or a config with [relay]", letter.json.display()),
                ));
            }
        };
        // One session per relay as the letters recorded it, all of it: its
        // TLS name and CA file too, not the first letter's for the others.
        let key = if given.is_some() { None } else { letter.meta.relay.clone() };
        match groups.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, list)) => list.push(letter),
            None => groups.push((key, relay, vec![letter])),
        }
    }
    // Retry's password is for one account on one relay: without --server
    // (or a config's relay) to say which, it goes to none of several.
    let secret_given = secrets.password_env.is_some() || secrets.password_file.is_some();
    let accounts: std::collections::BTreeSet<String> = groups
        .iter()
        .filter_map(|(_, r, _)| {
            let server = r.server.as_deref()?;
            Some(r.user.as_deref().map_or_else(|| server.to_owned(), |user| format!("{user} at {server}")))
        })
        .collect();
    if given.is_none() && secret_given && accounts.len() > 1 {
        return Err(CliError::new(
            exit::USAGE,
            "usage",
            format!(
                "the letters were kept for {} relay accounts ({}): give --server to say which one the password is for",
                accounts.len(),
                accounts.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let audit_path = a.audit.clone().or(config.audit.clone()).unwrap_or_else(|| PathBuf::from(audit::DEFAULT_AUDIT));
    let log = AuditLog::open(&audit_path).map_err(internal)?;
    let mut failed = unreadable;
    for (_, relay, letters) in groups {
        failed += retry_group(rt, a, &relay, letters, &log).await?;
    }
    Ok(if failed == 0 { exit::OK } else { exit::TEMPFAIL })
}

fn internal(e: anyhow::Error) -> CliError {
    CliError::new(exit::SOFTWARE, "internal", format!("{e:#}"))
}

/// Resend `letters` over one session to `relay`; returns how many failed.
async fn retry_group(rt: &Runtime, a: &RetryArgs, relay: &RelayArgs, letters: Vec<Letter>, log: &AuditLog) -> Result<u32, CliError> {
    let Some((settings, secret, provider)) = relay.resolve(a.verbose).await? else {
        return Err(CliError::new(exit::USAGE, "usage", "retry needs a relay"));
    };
    let grant = MailerGrant::relay(&settings.addresses, secret, provider).transcript(a.verbose.then(text::stderr_lines));
    let mut mailer = Mailer::new(&rt.mailer, grant).await.map_err(internal)?;
    mailer.configure(&settings.to_wit()).await.map_err(|e| CliError::new(exit::DATAERR, "invalid-message", format!("{e:#}")))?;
    let mut failed = 0;
    for mut letter in letters {
        let id = letter.meta.message_id.clone();
        // Held until its outcome is written: another retry passes over it.
        let Some(claim) = letter.claim().map_err(internal)? else {
            report_line(a.json, &id, "skipped", "another process is sending it, or has sent it");
            continue;
        };
        if letter.meta.outcome_unknown && !a.force {
            report_line(a.json, &id, "skipped", "the outcome of the last attempt is unknown; use --force to resend");
            continue;
        }
        // Written ahead like a first delivery: a retried message is in the
        // audit log before its first byte goes out, whoever sent it first;
        // and the letter says its outcome is unknown until it is known.
        let mut attempt = letter.record(Outcome::Attempt);
        attempt.size = Some(claim.bytes.len() as u64);
        attempt.reason = Some("retry".into());
        log.append(&attempt).map_err(internal)?;
        letter.sending().map_err(internal)?;
        let result = mailer.submit(&letter.envelope(), &claim.bytes).await.map_err(internal)?;
        let mut outcome = letter.record(match &result {
            Ok(_) => Outcome::Accepted,
            Err(SendError::Rejected(_)) => Outcome::Rejected,
            Err(_) => Outcome::Error,
        });
        outcome.reason = Some(match &result {
            Ok(r) => format!("retry: {}", r.reply.line()),
            Err(e) => format!("retry: {}: {}", e.kind(), e.describe()),
        });
        log.append(&outcome).map_err(internal)?;
        match result {
            Ok(receipt) => {
                letter.remove().map_err(internal)?;
                report_line(a.json, &id, "delivered", &receipt.reply.line());
            }
            Err(e) => {
                failed += 1;
                letter.failed_again(&claim, &e).map_err(internal)?;
                report_line(a.json, &id, "failed", &e.describe());
            }
        }
    }
    mailer.close().await.map_err(internal)?;
    Ok(failed)
}

fn report_line(json: bool, id: &str, outcome: &str, detail: &str) {
    if json {
        println!("{}", json!({ "message_id": id, "outcome": outcome, "detail": detail }));
    } else {
        println!("{outcome} <{id}>: {detail}");
    }
}
