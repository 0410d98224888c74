//! Throughput anchor: lettre 0.11's synchronous, pooled SMTP transport
//! sending N messages of about SIZE bytes to a relay (RFC 5321).
//! Usage: lettre-anchor HOST PORT COUNT SIZE. Prints messages per second.

use lettre::message::header::ContentType;
use lettre::{Message, SmtpTransport, Transport};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 5, "usage: lettre-anchor HOST PORT COUNT SIZE");
    let (host, port): (&str, u16) = (&args[1], args[2].parse()?);
    let (count, size): (usize, usize) = (args[3].parse()?, args[4].parse()?);
    let line = "x".repeat(70);
    let body: String = (0..size / 72 + 1).map(|_| format!("{line}\r\n")).collect::<String>()[..size].to_owned();
    let mailer = SmtpTransport::builder_dangerous(host).port(port).build();
    let start = Instant::now();
    for i in 0..count {
        let msg = Message::builder()
            .from("bench@example.com".parse()?)
            .to("sink@example.com".parse()?)
            .subject(format!("lettre {i}"))
            .header(ContentType::TEXT_PLAIN)
            .body(body.clone())?;
        mailer.send(&msg)?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{:.1}", count as f64 / secs);
    Ok(())
}
