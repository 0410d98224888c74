//! What a plugin prints (WASI 0.2 wasi:cli/stdout and stderr) and what its
//! `run` returns: every line escaped (see `text::printable`), prefixed with
//! the plugin's name and handed to a sink, under one cap for all of it, so a
//! plugin can neither flood nor forge the host's output.

use crate::text::{is_unsafe, prefixed_lines, printable};
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

    /// Take `buf` as written to `stream`. Each finished line is passed on,
    /// charged by what the operator sees (prefix and escapes included),
    /// until the cap is reached.
    pub fn write(&self, stream: Stream, buf: &[u8]) {
        let Ok(mut s) = self.shared.lock() else { return };
        if s.truncated {
            return;
        }
        let i = index(stream);
        for piece in buf.chunks(MAX_LINE_BYTES) {
            s.partial[i].extend_from_slice(piece);
            loop {
                let part = &mut s.partial[i];
                let cut = match part.iter().position(|&b| b == b'\n') {
                    Some(nl) => nl + 1,
                    None if part.len() >= MAX_LINE_BYTES => MAX_LINE_BYTES,
                    None => break,
                };
                let line: Vec<u8> = part.drain(..cut).collect();
                if !self.emit(&mut s, stream, line.strip_suffix(b"\n").unwrap_or(&line)) {
                    return;
                }
            }
        }
    }

    /// What `run` returned, cut at the line where the cap runs out (with a
    /// note when cut). The caller prints it through `text::prefixed_lines`
    /// with the stdout prefix, as it is charged here.
    pub fn clip(&self, text: &str) -> String {
        let Ok(mut s) = self.shared.lock() else { return String::new() };
        let mut end = 0;
        if !s.truncated {
            for line in text.split_inclusive('\n') {
                let shown = line.strip_suffix('\n').unwrap_or(line);
                let cost = self.prefixes[0].len() + printable(shown.strip_suffix('\r').unwrap_or(shown)).len() + 1;
                if s.written + cost > self.limit {
                    // As much of this line as its shown form leaves room for.
                    let mut room = self.limit.saturating_sub(s.written + self.prefixes[0].len() + 1);
                    for c in shown.chars() {
                        let width = if is_unsafe(c) { c.escape_unicode().count() } else { c.len_utf8() };
                        if width > room {
                            break;
                        }
                        room -= width;
                        end += c.len_utf8();
                    }
                    s.written = self.limit;
                    s.truncated = true;
                    break;
                }
                s.written += cost;
                end += line.len();
            }
        }
        if !s.truncated {
            return text.to_owned();
        }
        // `end` is always on a character boundary.
        format!("{}{}", text.get(..end).unwrap_or(""), self.note())
    }

    fn note(&self) -> String {
        format!("<output limit of {} bytes (max_output_bytes) reached; the rest is dropped>", self.limit)
    }

    /// Pass one line on, charged; false (and a note instead) once the cap
    /// is reached.
    fn emit(&self, s: &mut Shared, stream: Stream, line: &[u8]) -> bool {
        let text = String::from_utf8_lossy(line);
        for l in prefixed_lines(&self.prefixes[index(stream)], &text) {
            let cost = l.len() + 1;
            if s.written + cost > self.limit {
                s.truncated = true;
                s.partial = Default::default();
                (self.sink)(&format!("{}{}", self.prefixes[0], self.note()));
                return false;
            }
            s.written += cost;
            (self.sink)(&l);
        }
        true
    }

    /// Emit the partial lines, if any.
    pub fn finish(&self) {
        let Ok(mut s) = self.shared.lock() else { return };
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let rest = std::mem::take(&mut s.partial[i]);
            if !rest.is_empty() && !s.truncated && !self.emit(&mut s, stream, &rest) {
                return;
            }
        }
    }

    /// Bytes shown to the operator so far (at most the cap).
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
        let (out, lines) = capture(40);
        out.write(Stream::Stdout, b"12345\n");
        out.write(Stream::Stderr, b"678");
        out.finish();
        assert_eq!(out.written(), 10 + 15);
        let returned = out.clip(&"é".repeat(50 << 20));
        assert!(returned.starts_with("ééééé<output limit"), "five é fill the 10 bytes left after the prefix: {returned:.40}");
        assert_eq!(out.clip("more"), out.note());
        out.write(Stream::Stdout, b"dropped\n");
        assert_eq!(*lines.lock().unwrap(), ["[p] 12345", "[p:stderr] 678"]);
        assert_eq!(out.written(), 40, "the cut value used the rest of the cap");
    }

    #[test]
    fn the_cap_counts_what_the_operator_sees() {
        let (out, lines) = capture(100);
        out.write(Stream::Stdout, &vec![b'\n'; 1 << 20]);
        out.write(Stream::Stdout, &vec![0x1b; 1 << 20]);
        out.finish();
        let shown: usize = lines.lock().unwrap().iter().map(|l| l.len() + 1).sum();
        let note = out.note().len() + 5;
        assert!(shown <= 100 + note, "{shown} bytes shown for a cap of 100");
        assert!(lines.lock().unwrap().last().unwrap().contains("max_output_bytes"));
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
