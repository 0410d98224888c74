//! `wasmail`: send mail through a sandboxed SMTP component (RFC 5321), and
//! run untrusted mail plugins under a policy.

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use wasmail::report::exit;
use wasmail::{Runtime, send};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WASMAIL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasmail: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let code = rt.block_on(async {
        let runtime = match Runtime::new() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("wasmail: {e:#}");
                return exit::SOFTWARE;
            }
        };
        match cli.command {
            Command::Send(args) => send::run(&runtime, *args).await,
        }
    });
    ExitCode::from(code)
}
