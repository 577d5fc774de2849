//! TCP under ureq: our own socket layer in ureq's connector chain, so that `idle_timeout` is a
//! deadline on progress and a TLS connection to a plain-HTTP port is recognised.
//!
//! Key idea: ureq's own TCP transport gives each `send` the whole per-write timeout, and on
//! Linux a blocking `send` that copied some bytes returns that partial count when its timeout
//! expires; the next `send` then waits a fresh `idle_timeout`, so a link that died mid-PATCH
//! was noticed only after two or three of them (issue 15, item 7: 91–93 s for 30 s). Here:
//! - we hold it: a write waits in short slices, and only bytes the kernel took count as
//!   progress, so partial writes never restart the clock;
//! - and so does the kernel, for what a write cannot see (data taken into a roomy socket
//!   buffer that the peer never acknowledges, e.g. under a rate limit): `TCP_USER_TIMEOUT`
//!   aborts the connection when sent data stays unacknowledged, or unsent behind a zero
//!   window, for `idle_timeout` + [`KERNEL_GRACE`]. The grace lets our own deadline end a
//!   blocked write first, with an error that names the setting (the kernel's abort reaches a
//!   blocked `send` as a bare `EPIPE` at times).
//!
//! The socket also counts the bytes written to it, so that [`super::delivery`] can tell how
//! many of a body the peer acknowledged.
//!
//! Reads need little such care: a read returns as soon as any byte arrives, so the per-read
//! timeout already measures silence; but the wait for an answer begins only once the request's
//! bytes are acknowledged, not when the kernel took them ([`super::drain`]). The first bytes an `https` connection receives must be a TLS
//! record; a plain-HTTP answer there is reported as [`NotTls`], a setting to fix.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};
use ureq::Timeout;

use super::delivery;
use super::drain::{self, BodyWrite, DrainWatch, Verdict};
use super::zerocopy;
use crate::clock::{Clock, SystemClock};

/// The longest a blocked write waits before we look at the clock again.
const MAX_SLICE: Duration = Duration::from_secs(1);
/// The shortest such wait.
const MIN_SLICE: Duration = Duration::from_millis(20);
/// How much later than our own write deadline the kernel's `TCP_USER_TIMEOUT` fires.
const KERNEL_GRACE: Duration = Duration::from_secs(1);
/// Each address of a host gets at least this much of the connect budget.
const MIN_CONNECT_PER_ADDRESS: Duration = Duration::from_millis(10);

/// Opens TCP connections with `TCP_USER_TIMEOUT` set to the idle timeout (+ [`KERNEL_GRACE`]),
/// bound to an interface when one is given.
#[derive(Debug)]
pub(super) struct TcpConnector {
    /// `idle_timeout`: how long sent data may stay unacknowledged.
    pub(super) idle_timeout: Duration,
    /// `network.bind_interface`: every socket is bound to it before it connects.
    pub(super) bind_interface: Option<String>,
}

impl<In: Transport> Connector<In> for TcpConnector {
    type Out = Either<In, TcpTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        if let Some(earlier) = chained {
            // A CONNECT proxy's tunnel (opened through this connector too).
            return Ok(Some(Either::A(earlier)));
        }
        let stream = connect_any(
            &details.addrs,
            details.timeout,
            self.bind_interface.as_deref(),
        )?;
        if details.config.no_delay() {
            stream.set_nodelay(true)?;
        }
        set_user_timeout(&stream, self.idle_timeout + KERNEL_GRACE);
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        let transport = TcpTransport {
            socket: Arc::new(Socket::new(stream)),
            buffers,
            read_timeout: None,
            expect_tls: details.needs_tls(),
            idle_timeout: self.idle_timeout,
            body: None,
            delivery: Weak::new(),
        };
        (details.register_shutdown)(transport.shutdown_handle())?;
        Ok(Some(Either::B(transport)))
    }
}

/// Tries each address in turn, the first getting the largest share of the connect budget
/// (halving for each next one, as ureq does); each socket bound to `device` first, if given.
fn connect_any(
    addrs: &[SocketAddr],
    timeout: NextTimeout,
    device: Option<&str>,
) -> Result<TcpStream, ureq::Error> {
    let budget = timeout.not_zero().map(|d| *d);
    let total_weight = 2.0 * (1.0 - 0.5_f64.powi(i32::try_from(addrs.len()).unwrap_or(i32::MAX)));
    let mut weight = 1.0;
    let mut last = None;
    for addr in addrs {
        let share = budget.map(|b| {
            Duration::from_secs_f64(b.as_secs_f64() * weight / total_weight)
                .max(MIN_CONNECT_PER_ADDRESS)
        });
        weight /= 2.0;
        match connect_one(addr, share, device) {
            Ok(s) => return Ok(s),
            Err(e) if is_timeout(&e) => last = Some(ureq::Error::Timeout(Timeout::Connect)),
            Err(e) => last = Some(ureq::Error::Io(e)),
        }
    }
    Err(last.unwrap_or(ureq::Error::HostNotFound))
}

/// A TCP connection to `addr` (within `within`, if given) from a socket bound to `device`.
fn connect_one(
    addr: &SocketAddr,
    within: Option<Duration>,
    device: Option<&str>,
) -> io::Result<TcpStream> {
    let Some(device) = device else {
        return match within {
            Some(d) => TcpStream::connect_timeout(addr, d),
            None => TcpStream::connect(addr),
        };
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    bind_device(&socket, device)?;
    match within {
        Some(d) => socket.connect_timeout(&(*addr).into(), d)?,
        None => socket.connect(&(*addr).into())?,
    }
    Ok(socket.into())
}

/// `SO_BINDTODEVICE`: the socket sends and receives through `device` only, whatever the
/// routes say. Linux 5.7 and later let any process bind a socket not yet bound to a device;
/// older kernels want `CAP_NET_RAW`.
fn bind_device(socket: &socket2::Socket, device: &str) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let bound = socket.bind_device(Some(device.as_bytes()));
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let bound: io::Result<()> = {
        let _ = socket;
        Err(io::Error::from(io::ErrorKind::Unsupported))
    };
    bound.map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(19) => " (no such interface here)",
            Some(1) => " (a kernel older than 5.7 wants CAP_NET_RAW for it)",
            _ => "",
        };
        io::Error::new(
            e.kind(),
            format!("cannot bind the connection to interface {device} (network.bind_interface): {e}{hint}"),
        )
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// `TCP_USER_TIMEOUT` (Linux): the kernel aborts the connection with `ETIMEDOUT` when sent
/// data stays unacknowledged, or unsent behind a zero window, for `after`. Best effort: the
/// write deadline below holds without it, except for data a roomy socket buffer took.
fn set_user_timeout(stream: &TcpStream, after: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(after)) {
        log::debug!("cannot set TCP_USER_TIMEOUT: {e}");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (stream, after);
}

/// The socket, shared (weakly) with ureq's shutdown handle and a [`delivery::Delivery`].
#[derive(Debug)]
pub(super) struct Socket {
    stream: TcpStream,
    /// Bytes written since the connection opened.
    written: AtomicU64,
    /// (local, peer) addresses, when the system told them.
    ends: Option<(SocketAddr, SocketAddr)>,
}

impl Socket {
    fn new(stream: TcpStream) -> Self {
        let ends = stream.local_addr().ok().zip(stream.peer_addr().ok());
        Self {
            stream,
            written: AtomicU64::new(0),
            ends,
        }
    }

    /// Bytes written since the connection opened.
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// (local, peer) addresses.
    pub(super) fn ends(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.ends
    }

    /// `SO_SNDBUF`: the most the kernel holds unacknowledged for this socket (about).
    pub(super) fn send_buffer_size(&self) -> io::Result<u64> {
        socket2::SockRef::from(&self.stream)
            .send_buffer_size()
            .map(|n| n as u64)
    }
}

impl ShutdownHandle for Socket {
    fn shutdown(&self) {
        // An error means the socket is already closed.
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A TCP connection as ureq's [`Transport`].
#[derive(Debug)]
pub(super) struct TcpTransport {
    socket: Arc<Socket>,
    buffers: LazyBuffers,
    /// The read timeout last set on the socket (saves a syscall per read).
    read_timeout: Option<Duration>,
    /// An `https` connection that has received nothing yet: its first byte must be TLS.
    expect_tls: bool,
    /// `idle_timeout`: how long acknowledgements may stop while a request drains.
    idle_timeout: Duration,
    /// The body written since the last answer began to be awaited, if any.
    body: Option<BodyWrite>,
    /// The delivery of the last body written here.
    delivery: Weak<delivery::Delivery>,
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // The last look at what the peer acknowledged, while the socket can still be asked.
        if let Some(d) = self.delivery.upgrade() {
            let _ = d.acked();
        }
    }
}

impl TcpTransport {
    fn shutdown_handle(&self) -> Weak<dyn ShutdownHandle> {
        Arc::downgrade(&self.socket) as Weak<dyn ShutdownHandle>
    }

    /// Waits while `body`'s bytes are still unacknowledged (see [`super::drain`]): the bytes
    /// read if the answer came meanwhile, `None` once all is acknowledged.
    fn await_drained(&mut self, body: BodyWrite) -> Result<Option<usize>, ureq::Error> {
        let clock = SystemClock;
        let buffer = self.socket.send_buffer_size().ok();
        let held = |socket: &Socket, now| {
            drain::unacked(socket).or_else(|| buffer.map(|b| body.estimate(b, now)))
        };
        let now = clock.now();
        let Some(first) = held(&self.socket, now) else {
            return Ok(None);
        };
        let mut watch = DrainWatch::new(now, first, self.idle_timeout);
        let mut verdict = watch.look(now, first);
        loop {
            match verdict {
                Verdict::Drained => return Ok(None),
                Verdict::Stalled => return Err(ureq::Error::Timeout(Timeout::PerRead)),
                Verdict::Wait(d) => {
                    if let Some(n) = self.read_some(Some(d))? {
                        return Ok(Some(n));
                    }
                }
            }
            let now = clock.now();
            verdict = match held(&self.socket, now) {
                Some(h) => watch.look(now, h),
                None => Verdict::Drained,
            };
        }
    }

    /// One read into ureq's input buffer, waiting at most `wait` (`None`: for ever): the byte
    /// count (0: the peer closed), or `None` when nothing came in time.
    fn read_some(&mut self, wait: Option<Duration>) -> Result<Option<usize>, ureq::Error> {
        let clock = SystemClock;
        let started = clock.now();
        let socket = &self.socket.stream;
        let input = self.buffers.input_append_buf();
        let n = loop {
            if wait != self.read_timeout {
                socket.set_read_timeout(wait)?;
                self.read_timeout = wait;
            }
            match (&*socket).read(input) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    // Linux does not restart socket reads that have a timeout: wait what is left.
                    if let Some(w) = wait {
                        let left = w.saturating_sub(clock.now().saturating_duration_since(started));
                        if left.is_zero() {
                            return Ok(None);
                        }
                        socket.set_read_timeout(Some(left))?;
                        self.read_timeout = Some(left);
                    }
                }
                Err(e) if is_timeout(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        };
        if self.expect_tls && n > 0 {
            self.expect_tls = false;
            if let Some(e) = NotTls::check(&input[..n]) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e).into());
            }
        }
        self.buffers.input_appended(n);
        Ok(Some(n))
    }
}

/// When the current write gives up: the phase's own budget, or `idle` without progress.
struct WriteDeadline {
    /// End of the phase budget (send body, send request, ...), if any.
    phase_end: Option<Instant>,
    phase: Timeout,
    /// The per-write (idle) timeout, if any.
    idle: Option<Duration>,
    /// The last moment the kernel may have taken bytes.
    progress: Instant,
}

impl WriteDeadline {
    fn new(timeout: NextTimeout, now: Instant) -> Self {
        let phase_end = if timeout.after.is_not_happening() {
            None
        } else {
            now.checked_add(*timeout.after)
        };
        Self {
            phase_end,
            phase: timeout.reason,
            idle: timeout.per_write.map(|d| *d),
            progress: now,
        }
    }

    /// How long the next `send` may block, or the timeout that has expired.
    fn next_wait(&self, now: Instant) -> Result<Option<Duration>, Timeout> {
        let idle_end = self.idle.map(|d| self.progress + d);
        let (end, reason) = match (self.phase_end, idle_end) {
            (Some(p), Some(i)) if i < p => (Some(i), Timeout::PerWrite),
            (Some(p), _) => (Some(p), self.phase),
            (None, Some(i)) => (Some(i), Timeout::PerWrite),
            (None, None) => (None, self.phase),
        };
        let Some(end) = end else {
            return Ok(Some(MAX_SLICE));
        };
        let left = end.saturating_duration_since(now);
        if left.is_zero() {
            return Err(reason);
        }
        let slice = self
            .idle
            .map_or(MAX_SLICE, |d| d / 8)
            .clamp(MIN_SLICE, MAX_SLICE);
        Ok(Some(left.min(slice)))
    }
}

impl Transport for TcpTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        let clock = SystemClock;
        let mut deadline = WriteDeadline::new(timeout, clock.now());
        if !matches!(
            timeout.reason,
            Timeout::Resolve | Timeout::Connect | Timeout::SendRequest
        ) {
            // Past the connection set-up and the request head: body bytes.
            if let Some(d) = delivery::body_starts(&self.socket) {
                self.delivery = d;
            }
            let at = (self.socket.written(), deadline.progress);
            self.body.get_or_insert(BodyWrite { from: at, to: at });
        }
        // A body read that stood for file bytes (zero-copy): send those instead of the buffer.
        let mut span = zerocopy::take();
        if let Some(s) = &span {
            if timeout.reason != Timeout::SendBody || s.len != amount {
                return Err(
                    zerocopy::mismatch("a file span does not match the bytes to send").into(),
                );
            }
        }
        let mut sent = 0;
        let socket = &self.socket.stream;
        while sent < amount {
            let slice_start = clock.now();
            let wait = deadline
                .next_wait(slice_start)
                .map_err(ureq::Error::Timeout)?;
            socket.set_write_timeout(wait)?;
            let written = match &span {
                Some(s) => send_span(socket, s, sent),
                None => (&*socket).write(&self.buffers.output()[sent..amount]),
            };
            match written {
                Ok(0) if span.is_some() => return Err(crate::source::shrank().into()),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => {
                    sent += n;
                    self.socket.written.fetch_add(n as u64, Ordering::Relaxed);
                    // The bytes went in at some moment of this slice: count from its start.
                    deadline.progress = slice_start;
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if span.is_some() && zerocopy::refused(&e) => {
                    // This file system (or a system-call filter) has no sendfile: the rest
                    // of the span goes through the buffer.
                    if let Some(s) = span.take() {
                        zerocopy::copy_rest(&s, sent, &mut self.buffers.output()[sent..amount])?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(body) = &mut self.body {
            body.to = (self.socket.written(), clock.now());
        }
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let answer_awaited = timeout.reason == Timeout::RecvResponse;
        let timeout = timeout.for_read();
        if let Some(body) = self.body.take().filter(|_| answer_awaited) {
            // ureq's deadline counts from the last byte the kernel took: first let it drain.
            if let Some(n) = self.await_drained(body)? {
                return Ok(n > 0);
            }
        } else if timeout.after.is_zero() {
            return Err(ureq::Error::Timeout(timeout.reason));
        }
        match self.read_some(timeout.not_zero().map(|d| *d))? {
            Some(n) => Ok(n > 0),
            None => Err(ureq::Error::Timeout(timeout.reason)),
        }
    }

    fn is_open(&mut self) -> bool {
        probe(&self.socket.stream).unwrap_or(false)
    }
}

/// Sends what is left of `span` after its first `sent` bytes with `sendfile` (0: the file
/// ended early).
fn send_span(socket: &TcpStream, span: &zerocopy::Span, sent: usize) -> io::Result<usize> {
    #[cfg(test)]
    if zerocopy::tests::REFUSE.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::INVAL.raw_os_error(),
        ));
    }
    let mut offset = span.offset + sent as u64;
    rustix::fs::sendfile(socket, &*span.file, Some(&mut offset), span.len - sent)
        .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))
}

/// A pooled connection is usable when reading would block: nothing unasked-for arrived and the
/// peer has not closed it.
fn probe(socket: &TcpStream) -> io::Result<bool> {
    socket.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let open =
        matches!((&*socket).read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    socket.set_nonblocking(false)?;
    Ok(open)
}

/// An `https://` URL whose port answered with something that is not TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotTls {
    /// The answer starts like plain HTTP (`HTTP/`).
    pub(crate) plain_http: bool,
}

impl NotTls {
    /// Judges the first bytes received on a connection that expects a TLS handshake: a TLS
    /// record starts with content type 20–24 (change_cipher_spec, alert, handshake,
    /// application_data, heartbeat).
    fn check(first: &[u8]) -> Option<NotTls> {
        match first.first() {
            Some(20..=24) | None => None,
            Some(_) => Some(NotTls {
                plain_http: first.starts_with(b"HTTP/"),
            }),
        }
    }
}

impl std::fmt::Display for NotTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.plain_http {
            write!(f, "the endpoint speaks plain HTTP")
        } else {
            write!(f, "the endpoint answers with something that is not TLS")
        }
    }
}

impl std::error::Error for NotTls {}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_timeout(after: Option<u64>, per_write: Option<u64>) -> NextTimeout {
        NextTimeout {
            after: after.map_or(
                ureq::unversioned::transport::time::Duration::NotHappening,
                |s| Duration::from_secs(s).into(),
            ),
            reason: Timeout::SendBody,
            per_read: None,
            per_write: per_write.map(|s| Duration::from_secs(s).into()),
        }
    }

    #[test]
    fn a_partial_write_does_not_restart_the_idle_clock() {
        #[allow(
            clippy::disallowed_methods,
            reason = "a fixed origin for the arithmetic"
        )]
        let t0 = Instant::now();
        let mut d = WriteDeadline::new(next_timeout(None, Some(8)), t0);
        // Nothing taken for 8 s: expired, whatever the writes in between returned.
        assert_eq!(d.next_wait(t0), Ok(Some(Duration::from_secs(1))));
        assert_eq!(
            d.next_wait(t0 + Duration::from_millis(7500)),
            Ok(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            d.next_wait(t0 + Duration::from_secs(8)),
            Err(Timeout::PerWrite)
        );
        // Bytes taken during the slice that started at 5 s: the idle clock counts from 5 s.
        d.progress = t0 + Duration::from_secs(5);
        assert_eq!(
            d.next_wait(t0 + Duration::from_secs(12)),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            d.next_wait(t0 + Duration::from_secs(13)),
            Err(Timeout::PerWrite)
        );
    }

    #[test]
    fn the_phase_budget_ends_a_write_that_makes_progress() {
        #[allow(
            clippy::disallowed_methods,
            reason = "a fixed origin for the arithmetic"
        )]
        let t0 = Instant::now();
        let mut d = WriteDeadline::new(next_timeout(Some(10), Some(8)), t0);
        d.progress = t0 + Duration::from_secs(9);
        assert_eq!(
            d.next_wait(t0 + Duration::from_millis(9800)),
            Ok(Some(Duration::from_millis(200)))
        );
        assert_eq!(
            d.next_wait(t0 + Duration::from_secs(10)),
            Err(Timeout::SendBody)
        );
        let unbounded = WriteDeadline::new(next_timeout(None, None), t0);
        assert_eq!(
            unbounded.next_wait(t0 + Duration::from_secs(3600)),
            Ok(Some(MAX_SLICE))
        );
    }

    #[test]
    fn first_bytes_of_an_https_connection_must_be_tls() {
        assert_eq!(NotTls::check(&[22, 3, 3, 0, 90]), None, "handshake");
        assert_eq!(NotTls::check(&[21, 3, 3, 0, 2]), None, "alert");
        assert_eq!(
            NotTls::check(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(NotTls { plain_http: true })
        );
        assert_eq!(
            NotTls::check(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Some(NotTls { plain_http: false })
        );
    }
}
