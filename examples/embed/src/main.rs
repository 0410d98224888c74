//! wasmail embedded in a program: the library API (`wasmail::api`) loads a
//! plugin component, runs it under its policy, and sends one message, with
//! mail going to an outbox folder (RFC 5322 files) so it runs anywhere.
//!
//! `cargo run -p wasmail-example-embed -- PLUGIN.wasm OUTBOX` (`make test`
//! runs it with the hello plugin).

use anyhow::{Context, Result};
use wasmail::api::{Host, Mailbox, Message, Outcome};
use wasmail::config::Config;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let plugin_path = args.next().context("usage: embed PLUGIN.wasm OUTBOX")?;
    let outbox = args.next().context("usage: embed PLUGIN.wasm OUTBOX")?;

    // The config a service would read from wasmail.toml: here, mail goes to
    // the outbox, the audit log beside it, and the plugin gets the outbox
    // default policy (no relay: nothing leaves the machine).
    let mut config = Config::default();
    config.outbox = Some(outbox.clone().into());
    config.audit = Some(std::path::Path::new(&outbox).join("audit.jsonl"));
    config.dead_letter = Some(std::path::Path::new(&outbox).join("dead-letter"));

    let host = Host::builder().config(config).plugin_output(|line| eprintln!("{line}")).build()?;

    // Load once (checked, compiled or taken from the cache), run many times.
    let plugin = host.load(&file_stem(&plugin_path), &std::fs::read(&plugin_path)?)?;
    for to in ["alice@example.com", "bob@example.com"] {
        let report = host.run(&plugin, to).await?;
        for m in &report.messages {
            println!("run {to}: message {:?} {:?} (audit id {:?})", m.message_id, m.outcome, m.id);
        }
        anyhow::ensure!(report.counts.accepted == 1 && report.stopped.is_none(), "unexpected report: {report:?}");
        anyhow::ensure!(report.messages.iter().all(|m| m.outcome == Outcome::Accepted), "not accepted: {report:?}");
    }

    // A plain send, no plugin involved.
    let msg = Message {
        from: Some(Mailbox { name: Some("Embedded".into()), address: "app@example.com".into() }),
        reply_to: None,
        to: vec![Mailbox { name: None, address: "carol@example.com".into() }],
        cc: vec![],
        bcc: vec![],
        subject: "Hello from an embedding program".into(),
        text: Some("Sent with wasmail::api::Host::send.\n".into()),
        html: None,
        attachments: vec![],
        priority: None,
        headers: vec![],
    };
    let sent = host.send(&msg).await?;
    let receipt = sent.result.map_err(|e| anyhow::anyhow!("send failed: {e:?}"))?;
    println!("sent {} to {:?}: {} {}", receipt.message_id, receipt.accepted, receipt.reply.code, receipt.reply.text);
    Ok(())
}

/// The plugin's name: its file name without `wasmail_plugin_` and `.wasm`.
fn file_stem(path: &str) -> String {
    let stem = std::path::Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("wasmail_plugin_").unwrap_or(&stem).to_owned()
}
