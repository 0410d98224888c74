//! `wasmail dkim`: DKIM keys (RFC 6376 3.6, RFC 8463). `keygen` writes a
//! new private key, mode 0600, and prints the TXT record to publish, as
//! opendkim-genkey does; `record` prints the record of a key already made.

use crate::cli::report::{self, CliError, exit};
use crate::mail::dkim::{self, KeyType, SigningKey};
use std::path::{Path, PathBuf};

/// `wasmail dkim ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct DkimArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DkimCommand,
}

/// The `wasmail dkim` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum DkimCommand {
    /// Generate a private key (mode 0600) and print the DNS TXT record to publish.
    Keygen(KeygenArgs),
    /// Print the DNS TXT record of an existing private key.
    Record(RecordArgs),
}

/// The flags of `wasmail dkim keygen`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// The signing domain (`d=`).
    #[arg(long)]
    pub domain: String,
    /// The selector (`s=`): the record goes at SELECTOR._domainkey.DOMAIN.
    #[arg(long)]
    pub selector: String,
    /// The key type: rsa2048 (every verifier checks it) or ed25519 (RFC 8463).
    #[arg(long, value_enum, default_value = "rsa2048")]
    pub algorithm: KeyType,
    /// Where to write the private key (never over an existing file).
    /// Default: SELECTOR.private in the current folder.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the key file, record name and value as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The flags of `wasmail dkim record`.
#[derive(Debug, Clone, clap::Args)]
pub struct RecordArgs {
    /// The private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The signing domain.
    #[arg(long)]
    pub domain: String,
    /// The selector.
    #[arg(long)]
    pub selector: String,
    /// Print the record name and value as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn print_record(json: bool, key_file: &Path, domain: &str, selector: &str, key: &SigningKey) {
    let value = key.record();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "key_file": key_file.display().to_string(),
                "algorithm": key.key_type().algorithm(),
                "name": dkim::record_name(domain, selector),
                "value": value,
            })
        );
    } else {
        println!("{}", dkim::zone_line(domain, selector, &value));
    }
}

/// Run `wasmail dkim`; returns the exit code.
pub fn run(a: &DkimArgs) -> u8 {
    let (json, result) = match &a.command {
        DkimCommand::Keygen(k) => (k.json, keygen(k)),
        DkimCommand::Record(r) => (r.json, record(r)),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => e.print(json),
    }
}

fn check_names(domain: &str, selector: &str) -> Result<(), CliError> {
    // The same check the signing identity makes, before any key is made.
    let id = wasmail_mailer::mime::dkim::Identity {
        domain: domain.to_owned(),
        selector: selector.to_owned(),
        algorithm: wasmail_mailer::mime::dkim::Algorithm::RsaSha256,
        header_canon: wasmail_mailer::mime::dkim::Canonicalization::Relaxed,
        body_canon: wasmail_mailer::mime::dkim::Canonicalization::Relaxed,
        extra_headers: vec![],
        expire_secs: None,
    };
    id.check().map_err(|e| CliError::new(exit::USAGE, "usage", e))
}

fn keygen(a: &KeygenArgs) -> Result<(), CliError> {
    check_names(&a.domain, &a.selector)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("{}.private", a.selector)));
    let failed = |e: anyhow::Error| CliError::new(exit::CANTCREAT, "io", format!("{e:#}"));
    let der = dkim::generate(a.algorithm).map_err(|e| CliError::new(exit::SOFTWARE, "internal", format!("{e:#}")))?;
    let key = SigningKey::from_pkcs8(&der).map_err(|e| CliError::new(exit::SOFTWARE, "internal", format!("{e:#}")))?;
    dkim::write_new_key(&out, &dkim::pem_encode(&der)).map_err(failed)?;
    if !a.json {
        report::say(format_args!(
            "wrote the private key to {} (mode 0600); publish this TXT record at {}:",
            out.display(),
            dkim::record_name(&a.domain, &a.selector)
        ));
    }
    print_record(a.json, &out, &a.domain, &a.selector, &key);
    Ok(())
}

fn record(a: &RecordArgs) -> Result<(), CliError> {
    check_names(&a.domain, &a.selector)?;
    let key = SigningKey::load(&a.key).map_err(|e| CliError::new(exit::CONFIG, "config", format!("{e:#}")))?;
    print_record(a.json, &a.key, &a.domain, &a.selector, &key);
    Ok(())
}
