//! A plugin's stdout and stderr (WASI 0.2 wasi:cli/stdout and stderr): each
//! line is prefixed with the plugin's name and handed to a sink, with a cap
//! on the total, so a plugin can neither flood nor forge the host's output.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Where finished lines go.
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Default)]
struct Shared {
    partial: Vec<u8>,
    written: usize,
    truncated: bool,
}

/// One of the plugin's output streams.
#[derive(Clone)]
pub struct PrefixedOutput {
    prefix: String,
    limit: usize,
    sink: LineSink,
    shared: Arc<Mutex<Shared>>,
}

impl PrefixedOutput {
    /// Lines become `[name] line` (`[name:err]` for stderr).
    pub fn new(name: &str, stream: &str, limit: usize, sink: LineSink) -> Self {
        let prefix = if stream == "stdout" { format!("[{name}] ") } else { format!("[{name}:{stream}] ") };
        Self { prefix, limit, sink, shared: Arc::default() }
    }

    fn accept(&self, buf: &[u8]) {
        let Ok(mut s) = self.shared.lock() else { return };
        if s.truncated {
            return;
        }
        let room = self.limit.saturating_sub(s.written);
        let take = buf.len().min(room);
        s.written += take;
        s.partial.extend_from_slice(&buf[..take]);
        while let Some(nl) = s.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = s.partial.drain(..=nl).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if take < buf.len() {
            s.truncated = true;
            let rest = std::mem::take(&mut s.partial);
            if !rest.is_empty() {
                self.emit(&rest);
            }
            (self.sink)(&format!("{}<output limit of {} bytes reached; the rest is dropped>", self.prefix, self.limit));
        }
    }

    fn emit(&self, line: &[u8]) {
        // Control characters could rewrite the operator's terminal: escape them.
        let text: String = String::from_utf8_lossy(line)
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '\u{fffd}' } else { c })
            .collect();
        (self.sink)(&format!("{}{}", self.prefix, text.trim_end_matches('\r')));
    }

    /// Emit a final partial line, if any.
    pub fn finish(&self) {
        let Ok(mut s) = self.shared.lock() else { return };
        let rest = std::mem::take(&mut s.partial);
        drop(s);
        if !rest.is_empty() {
            self.emit(&rest);
        }
    }
}

impl AsyncWrite for PrefixedOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for PrefixedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PrefixedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
