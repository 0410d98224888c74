//! `wasmail run`: one plugin, one input, under the policy and limits of its
//! table in `wasmail.toml`; mail goes to the relay over SMTP (RFC 5321) or to
//! the outbox.

use crate::api::{Host, JobRunning, LoadFailed, Refused};
use crate::config::Config;
use crate::cli::report::{self, CliError, exit};
use crate::{Runtime, text};
use std::path::PathBuf;

/// The flags of `wasmail run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The plugin component (`world plugin`).
    pub plugin: PathBuf,
    /// The config file (relay, audit log, plugin policies).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The plugin's input from a file, or `-` for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub input: Option<PathBuf>,
    /// The plugin's input, given inline.
    #[arg(long, value_name = "TEXT", conflicts_with = "input")]
    pub input_text: Option<String>,
    /// The policy table to use (default: the file name without `wasmail_plugin_`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the SMTP transcript to standard error.
    #[arg(short, long)]
    pub verbose: bool,
    /// Run for this job id: it goes into every audit record, and a message
    /// an earlier run of the same job attempted is not sent again.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
}

/// A run's report as JSON: what `run --json` prints and `wasmail serve`
/// answers.
pub fn report_json(ran: &crate::api::RunReport, sha256: &str, audit: &std::path::Path) -> serde_json::Value {
    serde_json::json!({
        "plugin": ran.plugin,
        "job": ran.job,
        "sha256": sha256,
        "output": ran.output.as_ref().and_then(|o| o.as_ref().ok()),
        "plugin_error": ran.output.as_ref().and_then(|o| o.as_ref().err()),
        "stopped": ran.stopped,
        "accepted": ran.counts.accepted,
        "counts": ran.counts,
        "messages": ran.messages,
        "unlisted": ran.unlisted,
        "audit": audit,
    })
}

fn fail(json: bool, code: u8, kind: &'static str, message: &str) -> u8 {
    CliError::new(code, kind, message).print(json)
}

/// Run `wasmail run`; returns the exit code.
pub async fn run(rt: &Runtime, a: RunArgs) -> u8 {
    let config = match &a.config {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => return fail(a.json, exit::CONFIG, "config", &format!("{e:#}")),
        },
        None => Config::default(),
    };
    let input = match (&a.input, &a.input_text) {
        (Some(p), _) if p.as_os_str() == "-" => {
            let mut s = String::new();
            match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
                Ok(_) => s,
                Err(e) => return fail(a.json, exit::NOINPUT, "io", &format!("input: {e}")),
            }
        }
        (Some(p), _) => match std::fs::read_to_string(p) {
            Ok(s) => s,
            Err(e) => return fail(a.json, exit::NOINPUT, "io", &format!("input: {}: {e}", p.display())),
        },
        (None, Some(t)) => t.clone(),
        (None, None) => String::new(),
    };
    let mut builder = Host::builder().config(config);
    if a.verbose {
        let sink = text::stderr_lines();
        builder = builder.transcript(move |line| sink(line));
    }
    let host = match builder.build_on(rt) {
        Ok(h) => h,
        Err(e) => return fail(a.json, exit::CONFIG, "config", &format!("{e:#}")),
    };
    let plugin = match host.load_file_as(&a.plugin, a.name.as_deref()) {
        Ok(p) => p,
        Err(e) if e.is::<Refused>() => return fail(a.json, exit::NOPERM, "refused", &format!("{e:#}")),
        // Not a component, over the engine's per-component limits, or its
        // compile failed: the component, not the file, is the problem.
        Err(e) if e.is::<LoadFailed>() => return fail(a.json, exit::DATAERR, "load", &format!("{e:#}")),
        Err(e) => return fail(a.json, exit::NOINPUT, "load", &format!("{e:#}")),
    };
    let ran = match &a.job {
        Some(job) => host.run_job(&plugin, &input, job).await,
        None => host.run(&plugin, &input).await,
    };
    let ran = match ran {
        Ok(r) => r,
        Err(e) if e.is::<Refused>() => return fail(a.json, exit::NOPERM, "refused", &format!("{e:#}")),
        Err(e) if e.is::<JobRunning>() => return fail(a.json, exit::TEMPFAIL, "job-running", &format!("{e:#}")),
        Err(e) => return fail(a.json, exit::CONFIG, "config", &format!("{e:#}")),
    };
    if a.json {
        println!("{}", report_json(&ran, plugin.sha256(), host.audit_path()));
    } else {
        let prefix = format!("[{}] ", text::printable(&ran.plugin));
        match (&ran.output, &ran.stopped) {
            (_, Some(why)) => report::say(format_args!("plugin {} stopped: {why}", ran.plugin)),
            (Some(Ok(out)), None) => {
                for line in text::prefixed_lines(&prefix, out) {
                    println!("{line}");
                }
            }
            (Some(Err(e)), None) => {
                report::say(format_args!("plugin {} failed; its error:", ran.plugin));
                for line in text::prefixed_lines(&prefix, e) {
                    eprintln!("{line}");
                }
            }
            (None, None) => {}
        }
        let c = ran.counts;
        if ran.stopped.is_some() || c.attempts > 0 {
            report::say(format_args!(
                "{} message(s) accepted, {} denied, {} rejected, {} failed ({} kept for retry) in {} attempt(s) (see {})",
                c.accepted,
                c.denied,
                c.rejected,
                c.errors,
                c.kept,
                c.attempts,
                host.audit_path().display()
            ));
        }
    }
    ran.exit_code()
}
