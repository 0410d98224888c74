//! Micro-benchmarks for `make bench`: instantiating a fresh plugin+mailer
//! pair (InstancePre + pooling allocator), and the native `base64` crate's
//! speed on the data the 1 GiB attachment benchmark streams.
//! Also a discard SMTP sink that reads message data as fast as the socket
//! allows, so the large-attachment figure measures the mailer, not the sink.
//! Usage: microbench instantiate PLUGIN.wasm ROUNDS | microbench base64 MIB |
//! microbench sink PORT

use anyhow::Context;
use base64::Engine as _;
use std::time::Instant;
use wasmail::Runtime;
use wasmail::config::Config;
use wasmail::plugin::{HostOptions, PluginHost};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("instantiate") => {
            let path = args.get(2).context("plugin path")?;
            let rounds: usize = args.get(3).map_or(Ok(2000), |s| s.parse())?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let runtime = Runtime::new()?;
                let mut config = Config::default();
                config.audit = Some(std::env::temp_dir().join("wasmail-microbench-audit.jsonl"));
                let host = PluginHost::new(&runtime, config, HostOptions::default())?;
                let plugin = host.load(std::path::Path::new(path), None)?;
                let mut samples = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    let t = Instant::now();
                    let pair = host.instantiate_pair(&plugin).await?;
                    samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
                    // Freeing the pair (decommitting its memory) is not instantiation.
                    drop(pair);
                }
                samples.sort_by(f64::total_cmp);
                println!("{:.2}", samples[samples.len() / 2]);
                anyhow::Ok(())
            })
        }
        Some("base64") => {
            let mib: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
            // Same shape as the guest: 57 KiB-line chunks of a zero-filled file.
            let chunk = vec![0u8; 57 * 1024];
            let mut out = vec![0u8; chunk.len() / 3 * 4 + 4];
            let total = mib << 20;
            let t = Instant::now();
            let mut done = 0;
            let mut sink = 0u8;
            while done < total {
                let n = base64::engine::general_purpose::STANDARD.encode_slice(&chunk, &mut out)?;
                sink ^= out[n - 1];
                done += chunk.len();
            }
            std::hint::black_box(sink);
            println!("{:.1}", (total as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64());
            Ok(())
        }
        Some("sink") => {
            let port: u16 = args.get(2).context("port")?.parse()?;
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
            for conn in listener.incoming() {
                let conn = conn?;
                std::thread::spawn(move || {
                    let _ = discard_session(conn);
                });
            }
            Ok(())
        }
        _ => anyhow::bail!("usage: microbench instantiate PLUGIN ROUNDS | microbench base64 MIB | microbench sink PORT"),
    }
}

/// A minimal SMTP server: 250 to every command, 354 to DATA, then discard
/// everything up to the `CRLF.CRLF` terminator.
fn discard_session(mut conn: std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    conn.set_nodelay(true)?;
    conn.write_all(b"220 discard ESMTP\r\n")?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: Vec<u8> = Vec::new();
    let mut in_data = false;
    let mut tail = [0u8; 4];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut data = &buf[..n];
        if in_data {
            // Look for CRLF.CRLF, also across the previous read's last bytes.
            let mut window = tail.to_vec();
            window.extend_from_slice(&data[..data.len().min(5)]);
            let found = find(&window, b"\r\n.\r\n").map(|i| i + 5 - tail.len()).or_else(|| find(data, b"\r\n.\r\n").map(|i| i + 5));
            match found {
                Some(end) => {
                    in_data = false;
                    conn.write_all(b"250 2.0.0 discarded\r\n")?;
                    data = &data[end.min(data.len())..];
                }
                None => {
                    let k = data.len().min(4);
                    tail = [0; 4];
                    tail[4 - k..].copy_from_slice(&data[data.len() - k..]);
                    continue;
                }
            }
        }
        pending.extend_from_slice(data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
            if cmd.starts_with("EHLO") {
                conn.write_all(b"250-discard\r\n250-PIPELINING\r\n250 8BITMIME\r\n")?;
            } else if cmd.starts_with("DATA") {
                conn.write_all(b"354 go\r\n")?;
                in_data = true;
                tail = *b"\0\0\r\n";
                let rest = std::mem::take(&mut pending);
                if let Some(i) = find(&rest, b"\r\n.\r\n") {
                    in_data = false;
                    conn.write_all(b"250 2.0.0 discarded\r\n")?;
                    pending.extend_from_slice(&rest[i + 5..]);
                }
                break;
            } else if cmd.starts_with("QUIT") {
                conn.write_all(b"221 bye\r\n")?;
                return Ok(());
            } else {
                conn.write_all(b"250 ok\r\n")?;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
