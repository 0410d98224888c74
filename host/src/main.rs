//! `wasmail`: send mail through a sandboxed SMTP component (RFC 5321), and
//! run untrusted mail plugins under a policy.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use wasmail::cli::report::exit;
use wasmail::Runtime;
use wasmail::cli::{compile, dkim, inspect, retry, run, send, sendmail};
use wasmail::{serve, worker};

/// How long the process waits at exit for blocking threads to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Parser)]
#[command(name = "wasmail", version, about = "Let untrusted code send email, safely")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send one message (to the outbox when no --server is given).
    Send(Box<send::SendArgs>),
    /// Run a plugin under its policy and limits.
    Run(run::RunArgs),
    /// Resend the messages kept in the dead-letter folder.
    Retry(Box<retry::RetryArgs>),
    /// The sendmail interface: a whole message on standard input (also what
    /// runs when wasmail is invoked as `sendmail`).
    Sendmail(Box<sendmail::SendmailArgs>),
    /// Check and compile plugins ahead of time, into the cache `run` uses.
    Compile(compile::CompileArgs),
    /// DKIM keys: generate one and print the DNS record to publish.
    Dkim(dkim::DkimArgs),
    /// Serve the HTTP API: runs of the config's plugins, plain sends,
    /// health and metrics.
    Serve(Box<serve::ServeArgs>),
    /// Run jobs from a NATS JetStream stream.
    Worker(Box<worker::WorkerArgs>),
    /// Show what a plugin imports and exports, and whether it can run here.
    Inspect {
        /// The plugin component.
        plugin: std::path::PathBuf,
    },
}

/// The arguments, with `sendmail` put first when the program was started
/// under that name (a `sendmail` symlink, as cron and PHP expect).
fn arguments() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args.first().and_then(|a| std::path::Path::new(a).file_name().map(|n| n.to_os_string()));
    if invoked_as.is_some_and(|n| n == "sendmail") {
        args.insert(1, "sendmail".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(arguments()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; every usage error is EX_USAGE.
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WASMAIL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    // Key handling needs neither the engine nor the mailer.
    if let Command::Dkim(args) = &cli.command {
        return ExitCode::from(dkim::run(args));
    }
    // The service runs requests on every core, and so does a plugin's run
    // (its batches go out on tasks of their own while the next is
    // assembled); any other command is one task.
    let rt = match &cli.command {
        Command::Serve(_) | Command::Run(_) => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            wasmail::cli::report::say(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let command = async move {
        // The service runs many plugins at once, each with its mailers.
        let instances = match &cli.command {
            Command::Serve(a) => wasmail::engine::instances_for_runs(a.max_runs, a.max_relay_connections),
            _ => wasmail::engine::POOL_INSTANCES,
        };
        let runtime = match Runtime::with_instances(instances) {
            Ok(r) => r,
            Err(e) => {
                wasmail::cli::report::say(format_args!("{e:#}"));
                return exit::SOFTWARE;
            }
        };
        match cli.command {
            Command::Send(args) => send::run(&runtime, *args).await,
            Command::Run(args) => run::run(&runtime, args).await,
            Command::Retry(args) => retry::run(&runtime, *args).await,
            Command::Sendmail(args) => sendmail::run(&runtime, *args).await,
            Command::Compile(args) => compile::run(&runtime, args),
            Command::Serve(args) => serve::run(&runtime, *args).await,
            Command::Worker(args) => worker::run(&runtime, *args).await,
            Command::Dkim(args) => dkim::run(&args),
            Command::Inspect { plugin: path } => match inspect::inspect(&runtime, &path) {
                Ok((text, code)) => {
                    print!("{text}");
                    code
                }
                Err(e) => {
                    wasmail::cli::report::say(format_args!("{e:#}"));
                    exit::NOINPUT
                }
            },
        }
    };
    // On a worker thread, not this one: a worker waits for the network
    // itself, where this thread would be woken by one that did.
    let code = rt.block_on(async move { tokio::spawn(command).await.unwrap_or(exit::SOFTWARE) });
    // A blocking thread can be stuck in the kernel (a plugin opening a FIFO
    // in its grant, say) after a limit stopped its run: do not wait for it.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    ExitCode::from(code)
}
