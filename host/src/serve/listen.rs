//! The connections of `wasmail serve` (HTTP/1.1, RFC 9112): accepted up to
//! a cap, each with a deadline for every request head (the wait on an idle
//! keep-alive connection included), served by hyper, and closed gracefully
//! when the server stops.
//!
//! A client that opens connections and sends nothing, or sends a head one
//! byte at a time, holds one slot for at most `--header-read-secs`
//! ([`HEADER_READ_SECS`]); past `--max-connections` open at once, new ones
//! wait in the kernel's listen queue until a slot frees.

use anyhow::{Context, Result};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// How long a connection may take to send a whole request head, counted
/// from the moment the server is ready to read it: from the accept, or from
/// the end of the last answer on a keep-alive connection. A connection that
/// has not sent one by then is closed. The default of `--header-read-secs`.
pub const HEADER_READ_SECS: u64 = 30;

/// The largest `--max-connections` (a semaphore's permits are bounded).
pub const MAX_CONNECTIONS_FLAG: u64 = 1 << 20;

/// How long to pause accepting after an error that is not the one
/// connection's (out of file descriptors, say), so the loop does not spin.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What bounds the connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (at least 1).
    pub max_connections: usize,
    /// The deadline on each request head ([`HEADER_READ_SECS`]).
    pub header_read: Duration,
}

/// Serve `router` on `listener` until `stop` turns true (or its sender is
/// gone), within `limits`; then stop accepting and return when every open
/// connection has finished its request in flight, if any, and closed.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, mut stop: watch::Receiver<bool>) -> Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.context("the connection slots")?,
            _ = stop.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("serve: accepting a connection: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        _ = stop.changed() => break,
                    }
                }
            },
            _ = stop.changed() => break,
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone())));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("serve: connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// An accept error that belongs to the one connection (it was reset before
/// it was taken), not to the listener.
fn connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}
