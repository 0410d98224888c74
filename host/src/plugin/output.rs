//! What a plugin prints (WASI 0.2 wasi:cli/stdout and stderr) and what its
//! `run` returns: every line escaped (see `text::printable`), prefixed with
//! the plugin's name and handed to a sink, under one cap for all of it, so a
//! plugin can neither flood nor forge the host's output.

use crate::text::prefixed_lines;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

pub use crate::text::LineSink;

/// The longest line passed on whole; a longer one is split.
pub const MAX_LINE_BYTES: usize = 4096;

/// Which of the plugin's texts a line belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// wasi:cli/stdout, and the value `run` returned.
    Stdout,
    /// wasi:cli/stderr, and the error `run` returned.
    Stderr,
}

#[derive(Default)]
struct Shared {
    partial: [Vec<u8>; 2],
    written: usize,
    truncated: bool,
}

/// Everything one plugin run may print, under one cap.
#[derive(Clone)]
pub struct PluginOutput {
    prefixes: [String; 2],
    limit: usize,
    sink: LineSink,
    shared: Arc<Mutex<Shared>>,
}

/// One of the plugin's output streams, for its WASI context.
#[derive(Clone)]
pub struct OutputStream {
    output: PluginOutput,
    stream: Stream,
}

fn index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

impl PluginOutput {
    /// Lines become `[name] line` (`[name:stderr] line` for stderr); at most
    /// `limit` bytes of plugin text in all.
    pub fn new(name: &str, limit: usize, sink: LineSink) -> Self {
        let name = crate::text::printable(name);
        let prefixes = [format!("[{name}] "), format!("[{name}:stderr] ")];
        Self { prefixes, limit, sink, shared: Arc::default() }
    }

    /// The WASI stream for `stream`.
    pub fn stream(&self, stream: Stream) -> OutputStream {
        OutputStream { output: self.clone(), stream }
    }

    /// Take `buf` as written to `stream`, up to what is left of the cap.
    pub fn write(&self, stream: Stream, buf: &[u8]) {
        let Ok(mut s) = self.shared.lock() else { return };
        if s.truncated {
            return;
        }
        let room = self.limit.saturating_sub(s.written);
        let take = buf.len().min(room);
        s.written += take;
        let i = index(stream);
        s.partial[i].extend_from_slice(&buf[..take]);
        loop {
            let part = &mut s.partial[i];
            let cut = match part.iter().position(|&b| b == b'\n') {
                Some(nl) => nl + 1,
                None if part.len() >= MAX_LINE_BYTES => MAX_LINE_BYTES,
                None => break,
            };
            let line: Vec<u8> = part.drain(..cut).collect();
            self.emit(stream, line.strip_suffix(b"\n").unwrap_or(&line));
        }
        if take < buf.len() {
            s.truncated = true;
            for i in 0..2 {
                let rest = std::mem::take(&mut s.partial[i]);
                if !rest.is_empty() {
                    self.emit(if i == 0 { Stream::Stdout } else { Stream::Stderr }, &rest);
                }
            }
            (self.sink)(&format!(
                "{}<output limit of {} bytes (max_output_bytes) reached; the rest is dropped>",
                self.prefixes[0], self.limit
            ));
        }
    }

    /// What `run` returned, cut to what is left of the cap (at a character
    /// boundary, with a note when cut). The caller prints it through
    /// `text::prefixed_lines` like every other plugin line.
    pub fn clip(&self, text: &str) -> String {
        let Ok(mut s) = self.shared.lock() else { return String::new() };
        let room = self.limit.saturating_sub(s.written);
        if text.len() <= room {
            s.written += text.len();
            return text.to_owned();
        }
        let mut cut = room;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        s.written = self.limit;
        s.truncated = true;
        format!("{}<output limit of {} bytes (max_output_bytes) reached; the rest is dropped>", &text[..cut], self.limit)
    }

    fn emit(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        for l in prefixed_lines(&self.prefixes[index(stream)], &text) {
            (self.sink)(&l);
        }
    }

    /// Emit the partial lines, if any.
    pub fn finish(&self) {
        let Ok(mut s) = self.shared.lock() else { return };
        let rests = [std::mem::take(&mut s.partial[0]), std::mem::take(&mut s.partial[1])];
        drop(s);
        for (i, rest) in rests.iter().enumerate() {
            if !rest.is_empty() {
                self.emit(if i == 0 { Stream::Stdout } else { Stream::Stderr }, rest);
            }
        }
    }

    /// Bytes of plugin text taken so far (at most the cap).
    pub fn written(&self) -> usize {
        self.shared.lock().map_or(0, |s| s.written)
    }
}

impl AsyncWrite for OutputStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for OutputStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(limit: usize) -> (PluginOutput, Arc<Mutex<Vec<String>>>) {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = Arc::clone(&lines);
        (PluginOutput::new("p", limit, Arc::new(move |s: &str| l.lock().unwrap().push(s.to_owned()))), lines)
    }

    #[test]
    fn one_cap_covers_both_streams_and_the_return_value() {
        let (out, lines) = capture(10);
        out.write(Stream::Stdout, b"12345\n");
        out.write(Stream::Stderr, b"678");
        out.finish();
        let returned = out.clip(&"é".repeat(50 << 20));
        assert!(returned.starts_with("<output limit"), "one byte left is not a whole é: {returned:.40}");
        assert_eq!(out.clip("more"), "<output limit of 10 bytes (max_output_bytes) reached; the rest is dropped>");
        out.write(Stream::Stdout, b"dropped\n");
        let lines = lines.lock().unwrap();
        assert_eq!(*lines, ["[p] 12345", "[p:stderr] 678"]);
        assert_eq!(out.written(), 10);
    }

    #[test]
    fn forged_host_lines_and_bidi_are_prefixed_and_escaped() {
        let (out, lines) = capture(1 << 20);
        out.write(Stream::Stdout, "done\nwasmail: plugin admin stopped: cpu_ms\n\u{202e}gnp.exe".as_bytes());
        out.finish();
        let lines = lines.lock().unwrap();
        assert_eq!(*lines, ["[p] done", "[p] wasmail: plugin admin stopped: cpu_ms", "[p] \\u{202e}gnp.exe"]);
    }

    #[test]
    fn long_lines_are_split() {
        let (out, lines) = capture(1 << 20);
        out.write(Stream::Stdout, &vec![b'a'; MAX_LINE_BYTES * 2 + 1]);
        out.finish();
        assert_eq!(lines.lock().unwrap().len(), 3);
    }
}
