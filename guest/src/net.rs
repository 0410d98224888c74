//! The only code that touches the network: a [`Transport`] over wasi:sockets
//! TCP and wasi:tls, with deadlines from wasi:io/poll and the monotonic clock
//! (RFC 5321 4.5.3.2 timeouts).

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::bindings::wasi::sockets::instance_network::instance_network;
use crate::bindings::wasi::sockets::network::{IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network};
use crate::bindings::wasi::sockets::tcp::{ShutdownType, TcpSocket};
use crate::bindings::wasi::sockets::tcp_create_socket::create_tcp_socket;
use crate::bindings::wasi::tls::types::{ClientConnection, ClientHandshake};
use crate::bindings::wasmail::mail::transcript::{self, Direction as WitDirection};
use crate::smtp::session::{Direction, Transport};
use crate::smtp::{SmtpError, Stage};

/// Per-phase deadlines, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connect and TLS handshakes.
    pub connect: u64,
    /// The greeting.
    pub greeting: u64,
    /// Command replies.
    pub command: u64,
    /// The 354 reply.
    pub data_init: u64,
    /// Each data write.
    pub data_block: u64,
    /// The reply to the final dot.
    pub data_end: u64,
    /// Cap on any one reply.
    pub reply_cap: u64,
}

impl Timeouts {
    fn for_stage(&self, stage: Stage) -> u64 {
        let ms = match stage {
            Stage::Connect | Stage::Tls => self.connect,
            Stage::Greeting => self.greeting,
            Stage::Data => self.data_init,
            Stage::DataBlock => self.data_block,
            Stage::DataEnd => self.data_end,
            Stage::Ehlo | Stage::Auth | Stage::MailFrom | Stage::RcptTo | Stage::Rset | Stage::Quit => self.command,
        };
        ms.min(self.reply_cap)
    }
}

const NS_PER_MS: u64 = 1_000_000;

fn deadline_after(ms: u64) -> u64 {
    monotonic_clock::now().saturating_add(ms.saturating_mul(NS_PER_MS))
}

/// Wait until `p` is ready or `deadline` passes; true when ready.
fn wait(p: &Pollable, deadline: u64) -> bool {
    if p.ready() {
        return true;
    }
    let timer = monotonic_clock::subscribe_instant(deadline);
    let ready = poll::poll(&[p, &timer]);
    ready.contains(&0)
}

/// A TCP (and maybe TLS) connection to the relay.
///
/// Field order is drop order: streams and the TLS connection are children
/// of the socket and must go first.
pub struct Net {
    /// The input stream's pollable, kept between reads (a child of the
    /// stream: dropped before it, and before a TLS handshake takes it).
    input_ready: Option<Pollable>,
    /// `None` only after a failed TLS handshake consumed the plain streams.
    streams: Option<(InputStream, OutputStream)>,
    tls: Option<ClientConnection>,
    /// Kept alive for its streams; dropped last (see `Drop`).
    socket: Option<TcpSocket>,
    _network: Network,
    server_name: String,
    timeouts: Timeouts,
    /// How long the current reply may take, and its deadline once waiting
    /// has begun (0 until then).
    reply_ms: u64,
    deadline: u64,
    verbose: bool,
    /// A write timed out: the server stopped reading.
    stalled: bool,
}

/// `name (message)` of a wasi:sockets error code, e.g. `access-denied (...)`.
fn code(e: crate::bindings::wasi::sockets::network::ErrorCode) -> String {
    format!("{} ({})", e.name(), e.message())
}

/// A stream error as an SMTP error. Once TLS is up, a failing stream is a
/// TLS failure (a bad record, an alert), not an unreachable relay.
fn io_err(stage: Stage, tls: bool, e: StreamError) -> SmtpError {
    match (e, tls) {
        (StreamError::Closed, _) => SmtpError::Connect(format!("the connection was closed at {stage}")),
        (StreamError::LastOperationFailed(e), true) => {
            SmtpError::Tls(format!("the TLS session failed at {stage}: {}", e.to_debug_string()))
        }
        (StreamError::LastOperationFailed(e), false) => {
            SmtpError::Connect(format!("{} at {stage}", e.to_debug_string()))
        }
    }
}

/// The socket address of an IP address literal (`192.0.2.1`, `[2001:db8::1]`,
/// as the host writes `relay.addresses`). The mailer resolves no names.
fn socket_address(literal: &str, port: u16) -> Result<IpSocketAddress, SmtpError> {
    let bare = literal.trim_start_matches('[').trim_end_matches(']');
    let ip = bare
        .parse::<std::net::IpAddr>()
        .map_err(|_| SmtpError::Connect(format!("{literal:?} is not an IP address (the host resolves the relay's name)")))?;
    Ok(match to_wasi_ip(ip) {
        IpAddress::Ipv4(address) => IpSocketAddress::Ipv4(Ipv4SocketAddress { port, address }),
        IpAddress::Ipv6(address) => {
            IpSocketAddress::Ipv6(Ipv6SocketAddress { port, flow_info: 0, address, scope_id: 0 })
        }
    })
}

fn to_wasi_ip(ip: std::net::IpAddr) -> IpAddress {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddress::Ipv4((o[0], o[1], o[2], o[3]))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddress::Ipv6((s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]))
        }
    }
}

impl Net {
    /// Connect to `host:port` at each of `addresses` in turn (or at `host`
    /// itself, when it is an IP address and no addresses are given), and run
    /// the TLS handshake at once when `implicit_tls`.
    pub fn connect(
        host: &str,
        addresses: &[String],
        port: u16,
        implicit_tls: bool,
        timeouts: Timeouts,
        verbose: bool,
    ) -> Result<Self, SmtpError> {
        let network = instance_network();
        let deadline = deadline_after(timeouts.connect);
        let addrs = if addresses.is_empty() {
            vec![socket_address(host, port)?]
        } else {
            addresses.iter().map(|a| socket_address(a, port)).collect::<Result<Vec<_>, _>>()?
        };
        let mut last = format!("no address found for {host}");
        for addr in addrs {
            let family = match addr {
                IpSocketAddress::Ipv4(_) => IpAddressFamily::Ipv4,
                IpSocketAddress::Ipv6(_) => IpAddressFamily::Ipv6,
            };
            let socket = create_tcp_socket(family).map_err(|e| SmtpError::Connect(format!("socket: {}", code(e))))?;
            if let Err(e) = socket.start_connect(&network, addr) {
                last = format!("connect to {host}:{port}: {}", code(e));
                continue;
            }
            let p = socket.subscribe();
            let streams = loop {
                match socket.finish_connect() {
                    Ok(s) => break Ok(s),
                    Err(crate::bindings::wasi::sockets::network::ErrorCode::WouldBlock) => {
                        if !wait(&p, deadline) {
                            return Err(SmtpError::Timeout(Stage::Connect));
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            drop(p);
            match streams {
                Ok((input, output)) => {
                    let mut net = Self {
                        input_ready: None,
                        streams: Some((input, output)),
                        tls: None,
                        socket: Some(socket),
                        _network: network,
                        server_name: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
                        timeouts,
                        reply_ms: 0,
                        deadline: 0,
                        verbose,
                        stalled: false,
                    };
                    if implicit_tls {
                        net.handshake()?;
                        if verbose {
                            net.transcript(Direction::Info, "TLS started (implicit)");
                        }
                    }
                    return Ok(net);
                }
                Err(e) => last = format!("connect to {host}:{port}: {}", code(e)),
            }
        }
        Err(SmtpError::Connect(last))
    }

    fn handshake(&mut self) -> Result<(), SmtpError> {
        let deadline = deadline_after(self.timeouts.connect);
        // The handshake takes the plain streams; their pollables are children
        // and would block the move.
        drop(self.input_ready.take());
        let (input, output) = self.streams.take().ok_or_else(|| SmtpError::Tls("no connection".into()))?;
        let hs = ClientHandshake::new(&self.server_name, input, output);
        let fut = ClientHandshake::finish(hs);
        let p = fut.subscribe();
        let result = loop {
            match fut.get() {
                Some(r) => break r,
                None => {
                    if !wait(&p, deadline) {
                        return Err(SmtpError::Timeout(Stage::Tls));
                    }
                }
            }
        };
        drop(p);
        match result {
            Ok(Ok((conn, input, output))) => {
                self.streams = Some((input, output));
                self.tls = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(SmtpError::Tls(format!("handshake with {} failed: {}", self.server_name, e.to_debug_string()))),
            Err(()) => Err(SmtpError::Tls("handshake result already taken".into())),
        }
    }

    fn streams(&self, stage: Stage) -> Result<&(InputStream, OutputStream), SmtpError> {
        self.streams.as_ref().ok_or_else(|| SmtpError::Connect(format!("no connection at {stage}")))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.stalled {
            // The host finishes a pending write before it drops a stream, and
            // this server stopped reading: dropping would wait for it without
            // end. Abandon the connection instead (the host frees it with the
            // store), so our deadline holds.
            std::mem::forget(self.input_ready.take());
            std::mem::forget(self.streams.take());
            std::mem::forget(self.tls.take());
            std::mem::forget(self.socket.take());
            return;
        }
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(ShutdownType::Both);
        }
        // Children before parents: the pollable, the streams, then the TLS
        // connection, then the socket.
        drop(self.input_ready.take());
        drop(self.streams.take());
        drop(self.tls.take());
        drop(self.socket.take());
    }
}

impl Transport for Net {
    fn send(&mut self, mut bytes: &[u8], stage: Stage) -> Result<(), SmtpError> {
        let deadline = deadline_after(self.timeouts.for_stage(Stage::DataBlock));
        let tls = self.tls.is_some();
        let (_, output) = self.streams(stage)?;
        while !bytes.is_empty() {
            let permit = output.check_write().map_err(|e| io_err(stage, tls, e))?;
            if permit == 0 {
                let p = output.subscribe();
                if !wait(&p, deadline) {
                    drop(p);
                    self.stalled = true;
                    return Err(SmtpError::Timeout(stage));
                }
                continue;
            }
            let n = (permit as usize).min(bytes.len());
            output.write(&bytes[..n]).map_err(|e| io_err(stage, tls, e))?;
            bytes = &bytes[n..];
        }
        // Start the flush and return: the reply we read next is the
        // acknowledgement, and a failed write shows up there as a broken
        // connection. Waiting for the flush here would cost one more poll
        // per turn.
        output.flush().map_err(|e| io_err(stage, tls, e))?;
        Ok(())
    }

    fn start_reply(&mut self, stage: Stage) {
        // The clock is read only if we have to wait: pipelined replies are
        // often already here.
        self.reply_ms = self.timeouts.for_stage(stage);
        self.deadline = 0;
    }

    fn recv(&mut self, buf: &mut [u8], stage: Stage) -> Result<usize, SmtpError> {
        // Without a shorter wait, only the reply's deadline ends it.
        self.recv_within(buf, stage, u64::MAX)?.ok_or(SmtpError::Timeout(stage))
    }

    fn recv_within(&mut self, buf: &mut [u8], stage: Stage, ms: u64) -> Result<Option<usize>, SmtpError> {
        let tls = self.tls.is_some();
        let Self { streams, input_ready, deadline, reply_ms, .. } = self;
        let (input, _) = streams.as_ref().ok_or_else(|| SmtpError::Connect(format!("no connection at {stage}")))?;
        // The short wait's end, fixed at the first wait of this call.
        let mut wait_until = None;
        loop {
            match input.read(buf.len() as u64) {
                Ok(data) if !data.is_empty() => {
                    buf[..data.len()].copy_from_slice(&data);
                    return Ok(Some(data.len()));
                }
                Ok(_) => {
                    if *deadline == 0 {
                        *deadline = deadline_after(*reply_ms);
                    }
                    let until = *wait_until.get_or_insert_with(|| deadline_after(ms).min(*deadline));
                    let p = input_ready.get_or_insert_with(|| input.subscribe());
                    let timer = monotonic_clock::subscribe_instant(until);
                    if !poll::poll(&[&*p, &timer]).contains(&0) {
                        if until < *deadline {
                            return Ok(None);
                        }
                        return Err(SmtpError::Timeout(stage));
                    }
                }
                Err(StreamError::Closed) => return Ok(Some(0)),
                Err(e) => return Err(io_err(stage, tls, e)),
            }
        }
    }

    fn start_tls(&mut self) -> Result<String, SmtpError> {
        self.handshake()?;
        Ok(format!("handshake with {} complete, certificate verified by the host", self.server_name))
    }

    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    fn transcript(&mut self, direction: Direction, line: &str) {
        let d = match direction {
            Direction::Client => WitDirection::Client,
            Direction::Server => WitDirection::Server,
            Direction::Info => WitDirection::Info,
        };
        transcript::line(d, line);
    }

    fn verbose(&self) -> bool {
        self.verbose
    }
}
