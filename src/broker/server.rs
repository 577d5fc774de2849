//! The broker's HTTP/1.1 server: a thread per connection, plain TCP or rustls (ring), limits
//! on connections ([`super::slots`]: in all and per client address, idle keep-alive
//! connections closed first when full), and deadlines so that a slow client only ever holds
//! its own thread, and not for long.
//!
//! Deadlines, each enforced on every socket read (a read gets what is left as its timeout, so
//! a client that sends a byte a second is cut off at the deadline, never later):
//! - a new connection's TLS handshake and first request head: `head_timeout` from the accept;
//! - a kept-alive connection may idle `request_timeout` for its next request (evictable),
//!   whose head must then arrive within `head_timeout` of its first byte;
//! - every request, head and body: `request_timeout` from its start;
//! - closing (TLS close_notify): a second.
//!
//! (tiny_http was not used: its TLS pulls rustls 0.20 and ring 0.16 beside ours.)

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::closer::Closer;
use super::handler::{Broker, Handled};
use super::health;
use super::http::{self, ReadError, Request, Response};
use super::limit::{retry_after_secs, RateLimits};
use super::settings::Settings;
use super::slots::{PeerKey, Refusal, Slot, Slots};
use super::tally::Tally;
use crate::clock::Clock;

/// Largest request body read (and dropped): the endpoint needs none.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Requests on one connection before it is closed (spreads long-lived clients over time).
const MAX_REQUESTS_PER_CONNECTION: usize = 100;
/// Time to write an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests without a valid device token answered 401 per client address per minute (at once,
/// then one every 6 s); beyond, 429.
const AUTH_FAILURES_PER_MINUTE: u32 = 10;
/// Time to send a TLS close_notify at the end of a connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A listening broker.
pub(crate) struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What every connection thread needs.
struct Shared {
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    clock: Arc<dyn Clock>,
    request_timeout: Duration,
    head_timeout: Duration,
    slots: Slots,
    /// Connections refused or closed to make room, logged once per interval.
    refused: Tally,
    evicted: Tally,
    closer: Closer,
    /// Requests without a valid device token, per client address.
    auth_failures: RateLimits,
    unauthenticated: Tally,
}

impl Server {
    /// A server for `listener`; `tls` from [`super::tls::tls_config`].
    pub(crate) fn new(
        listener: TcpListener,
        broker: Arc<Broker>,
        tls: Option<Arc<rustls::ServerConfig>>,
        clock: Arc<dyn Clock>,
        settings: &Settings,
    ) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                broker,
                tls,
                request_timeout: settings.request_timeout,
                head_timeout: settings.head_timeout,
                slots: Slots::new(settings.max_connections, settings.max_connections_per_peer),
                refused: Tally::default(),
                evicted: Tally::default(),
                closer: Closer::start(clock.clone()),
                auth_failures: RateLimits::per_window(
                    AUTH_FAILURES_PER_MINUTE,
                    Duration::from_secs(60),
                ),
                unauthenticated: Tally::default(),
                clock,
            }),
        }
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Where to connect to wake [`Server::serve`] (loopback for a wildcard address).
    pub(crate) fn wake_address(&self) -> SocketAddr {
        let mut a = self.local_addr();
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        a
    }

    /// Accepts connections until `stop` is set (then one more connection wakes it).
    pub(crate) fn serve(&self, stop: &AtomicBool) {
        for conn in self.listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            match conn {
                Ok(stream) => self.start(stream),
                Err(e) => {
                    // Out of file descriptors, or the peer gave up before accept: wait a little.
                    log::warn!("accept failed: {e}");
                    self.shared
                        .clock
                        .sleep(Duration::from_millis(100), &AtomicBool::new(false));
                }
            }
        }
    }

    fn start(&self, stream: TcpStream) {
        let shared = &self.shared;
        let Ok(peer) = stream.peer_addr() else {
            return; // gone already
        };
        let slot = match shared.slots.admit(peer.ip()) {
            Ok((slot, evicted)) => {
                let noted =
                    evicted.and_then(|e| Some((e, shared.evicted.note(shared.clock.now())?)));
                if let Some((e, n)) = noted {
                    log::info!(
                        "closed {n} idle keep-alive connection(s) to make room (the last of {}; \
                         broker.max_connections, max_connections_per_peer)",
                        e.0
                    );
                }
                slot
            }
            Err(why) => return self.refuse(stream, &peer, why),
        };
        let fallback = stream.try_clone().ok();
        let worker = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("broker-conn".into())
            .spawn(move || connection(stream, &worker, &slot));
        if let Err(e) = spawned {
            // Out of tasks (TasksMax=, ulimit -u): the slot is freed with the closure.
            log::error!("cannot start a connection thread: {e}");
            if let Some(stream) = fallback {
                answer_refusal(stream, shared, 503, "the server is busy");
            }
        }
    }

    /// Over a limit: a plain-HTTP client is told to come back; a TLS client is just closed.
    fn refuse(&self, stream: TcpStream, peer: &SocketAddr, why: Refusal) {
        let shared = &self.shared;
        let (status, message, setting, max) = match why {
            Refusal::Full(max) => (503, "too many connections", "max_connections", max),
            Refusal::PeerFull(max) => (
                429,
                "too many connections from your address",
                "max_connections_per_peer",
                max,
            ),
        };
        if let Some(n) = shared.refused.note(shared.clock.now()) {
            log::warn!(
                "refused {n} connection(s) (the last from {}): {max} open (broker.{setting})",
                peer.ip()
            );
        }
        answer_refusal(stream, shared, status, message);
    }

    /// Waits up to `grace` for connections in flight to end; false when some were still open.
    pub(crate) fn wait_idle(&self, grace: Duration) -> bool {
        let clock = &self.shared.clock;
        let until = clock.now() + grace;
        let never = AtomicBool::new(false);
        while self.shared.slots.open() > 0 {
            if clock.now() >= until {
                return false;
            }
            clock.sleep(Duration::from_millis(50), &never);
        }
        true
    }
}

/// Answers `status` with `Retry-After: 1` to a plain-HTTP client (a TLS client is just closed:
/// a handshake would cost more than the connection it refuses).
fn answer_refusal(mut stream: TcpStream, shared: &Shared, status: u16, message: &str) {
    if shared.tls.is_some() {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut r = Response::json_error(status, message, serde_json::Value::Null);
    r.set("Retry-After", "1");
    if http::write(&mut stream, &r, false, false).is_ok() {
        shared.closer.close(stream);
    }
}

/// The sockets of one connection: `raw` is a handle of the same TCP socket (to close an idle
/// connection, or to linger), when it could be had.
struct Conn<'a> {
    peer: String,
    /// The client address as the per-address limits count it.
    peer_key: String,
    raw: Option<TcpStream>,
    slot: &'a Slot,
    deadline: Rc<Cell<Option<Instant>>>,
}

fn connection(tcp: TcpStream, shared: &Shared, slot: &Slot) {
    let addr = tcp.peer_addr().ok();
    let peer = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
    let peer_key = addr.map_or_else(|| "-".to_string(), |a| PeerKey::of(a.ip()).to_string());
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let conn = Conn {
        peer,
        peer_key,
        raw: tcp.try_clone().ok(),
        slot,
        deadline: Rc::new(Cell::new(Some(shared.clock.now() + shared.head_timeout))),
    };
    let stream = DeadlineStream {
        tcp,
        clock: shared.clock.clone(),
        deadline: conn.deadline.clone(),
    };
    let end = match &shared.tls {
        None => serve_requests(stream, &conn, shared),
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(tls_conn) => {
                let mut tls = rustls::StreamOwned::new(tls_conn, stream);
                let end = serve_requests(&mut tls, &conn, shared);
                // A clean TLS close, so clients can tell the end from a cut; not while the
                // handshake is unfinished (flushing would wait for the client to finish it).
                if !tls.conn.is_handshaking() {
                    conn.deadline.set(Some(shared.clock.now() + CLOSE_TIMEOUT));
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
                end
            }
            Err(e) => {
                log::error!("{}: cannot start TLS: {e}", conn.peer);
                End::Close
            }
        },
    };
    if let (End::Linger, Some(raw)) = (end, conn.raw) {
        linger(raw, shared.clock.as_ref());
    }
}

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close now: nothing unread is pending.
    Close,
    /// An error answer was sent while the client may still be sending: read and drop its
    /// bytes for a moment first, or closing with unread data resets the connection and the
    /// client may never see the answer (RFC 9112 §9.6).
    Linger,
}

/// Half-closes, then drops what the client still sends, for at most two seconds or 1 MiB.
fn linger(mut tcp: TcpStream, clock: &dyn Clock) {
    const LINGER: Duration = Duration::from_secs(2);
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let until = clock.now() + LINGER;
    let mut buf = [0u8; 8192];
    let mut dropped = 0usize;
    while dropped < 1 << 20 {
        let left = until.saturating_duration_since(clock.now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => dropped += n,
        }
    }
}

/// Reads requests and answers them until the client closes, errs, or stops keeping alive.
fn serve_requests(stream: impl Read + Write, conn: &Conn, shared: &Shared) -> End {
    let peer = conn.peer.as_str();
    let deadline = &conn.deadline;
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    // The first request's time runs from the accept (set in `connection`).
    let mut started = shared.clock.now();
    for n in 1..=MAX_REQUESTS_PER_CONNECTION {
        if n > 1 {
            if !next_request(&mut reader, conn, shared) {
                return End::Close;
            }
            started = shared.clock.now();
            deadline.set(Some(started + shared.head_timeout));
        }
        let req = match http::read_head(&mut reader) {
            Ok(req) => req,
            Err(e) => return refuse_head(reader.get_mut(), peer, e),
        };
        deadline.set(Some(started + shared.request_timeout));
        if let Err((status, message)) = drain_body(&mut reader, &req) {
            let resp = Response::json_error(status, message, serde_json::Value::Null);
            let _ = http::write(reader.get_mut(), &resp, false, false);
            let line = Line {
                note: Some(message),
                ..Line::default()
            };
            log_line(
                log::Level::Info,
                peer,
                Some(&req),
                status,
                line,
                Duration::ZERO,
            );
            return End::Linger;
        }
        // Answering (the Stream call) and writing have their own limits.
        deadline.set(None);
        let started = shared.clock.now();
        let mut handled = shared.broker.handle(&req);
        let mut keep_alive = req.keep_alive() && n < MAX_REQUESTS_PER_CONNECTION;
        let unauthenticated = handled.response.status == 401;
        if unauthenticated {
            if let Err(wait) = shared.auth_failures.take(&conn.peer_key, started) {
                // A guesser, or a device with a wrong token in a loop: back off, and make it
                // connect again for each try (which the per-address limit also counts).
                handled = backing_off(wait);
                keep_alive = false;
            }
        }
        let written = http::write(
            reader.get_mut(),
            &handled.response,
            keep_alive,
            req.method == "HEAD",
        );
        if unauthenticated {
            log_unauthenticated(shared, peer, &req, handled.response.status, started);
        } else {
            log_handled(peer, &req, &handled, shared.clock.now() - started);
        }
        if written.is_err() || !keep_alive {
            return End::Close;
        }
    }
    End::Close
}

/// Waits (idle, evictable) up to `request_timeout` for the first byte of a kept-alive
/// connection's next request; false when the connection should end instead.
fn next_request(reader: &mut BufReader<impl Read + Write>, conn: &Conn, shared: &Shared) -> bool {
    if !reader.buffer().is_empty() {
        return true; // pipelined: the next request is here already
    }
    if let Some(raw) = &conn.raw {
        conn.slot.idle(raw);
    }
    log::debug!("{}: kept alive, waiting for its next request", conn.peer);
    conn.deadline
        .set(Some(shared.clock.now() + shared.request_timeout));
    let arrived = matches!(reader.fill_buf(), Ok(b) if !b.is_empty());
    // Evicted while idle: its socket is shut down already; end without a word.
    conn.slot.busy() && arrived
}

/// A head that could not be read: 431, 400 or 501 where an answer helps, else just close.
fn refuse_head(w: &mut impl Write, peer: &str, e: ReadError) -> End {
    let (status, message) = match e {
        ReadError::Closed | ReadError::Io => return End::Close,
        ReadError::TimedOut => {
            log::debug!("{peer}: closed: the request did not arrive in time");
            return End::Close;
        }
        ReadError::TooLarge => (431, "request line and headers are larger than 16 KiB"),
        ReadError::Bad(ref m) => (400, m.as_str()),
        ReadError::Unsupported(m) => (501, m),
    };
    let resp = Response::json_error(status, message, serde_json::Value::Null);
    let _ = http::write(w, &resp, false, false);
    let line = Line {
        note: Some(message),
        ..Line::default()
    };
    log_line(log::Level::Info, peer, None, status, line, Duration::ZERO);
    End::Linger
}

/// Reads and drops a small body so the next request on the connection starts clean.
fn drain_body(r: &mut impl Read, req: &Request) -> std::result::Result<(), (u16, &'static str)> {
    let len = match req.body_length() {
        Ok(n) => n,
        Err(ReadError::Unsupported(m)) => return Err((501, m)),
        Err(_) => return Err((400, "bad Content-Length")),
    };
    if len > MAX_BODY_BYTES {
        return Err((
            413,
            "this endpoint takes no data (no creation-with-upload): send it to the Location",
        ));
    }
    match io::copy(&mut r.take(len), &mut io::sink()) {
        Ok(n) if n == len => Ok(()),
        _ => Err((400, "the request body did not arrive")),
    }
}

/// The answer to a request without a valid device token from an address that is backing off.
fn backing_off(wait: Duration) -> Handled {
    let mut response = Response::json_error(
        429,
        "too many requests without a valid device token from your address",
        serde_json::Value::Null,
    );
    response.set("Retry-After", retry_after_secs(wait).to_string());
    Handled {
        response,
        device: None,
        media_id: None,
        note: None,
    }
}

/// Requests without a valid device token are logged once per interval with their count, not
/// once each: a client making thousands a second must not flood the journal.
fn log_unauthenticated(shared: &Shared, peer: &str, req: &Request, status: u16, at: Instant) {
    if let Some(n) = shared.unauthenticated.note(at) {
        log::warn!(
            "{n} request(s) refused for a missing or unknown device token since the last such \
             line (the last: {peer} {} {} {status}; {AUTH_FAILURES_PER_MINUTE} a minute per \
             address, then 429)",
            req.method,
            req.path()
        );
    }
}

fn log_handled(peer: &str, req: &Request, h: &Handled, took: Duration) {
    let line = Line {
        device: h.device.as_deref(),
        media_id: h.media_id.as_deref(),
        note: h.note.as_deref(),
    };
    // A load balancer asks for /healthz every few seconds: an answer of 200 is not news (a
    // broken tokens file is logged once per read by `devices`, not once per check).
    let level = if req.path() == health::PATH && h.response.status == 200 {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    log_line(level, peer, Some(req), h.response.status, line, took);
}

/// What a log line says beyond the request and the status.
#[derive(Default)]
struct Line<'a> {
    device: Option<&'a str>,
    media_id: Option<&'a str>,
    note: Option<&'a str>,
}

/// One line per request: who, what, the answer, the device and the video. Never a token or
/// a one-time URL (only the request path, without its query, is shown).
fn log_line(
    level: log::Level,
    peer: &str,
    req: Option<&Request>,
    status: u16,
    line: Line,
    took: Duration,
) {
    let (method, path) = req.map_or(("-", "-"), |r| (r.method.as_str(), r.path()));
    let note = line.note.map_or(String::new(), |n| format!(" ({n})"));
    log::log!(
        level,
        "{peer} {method} {path} {status} device={} media_id={} {}ms{note}",
        line.device.unwrap_or("-"),
        line.media_id.unwrap_or("-"),
        took.as_millis()
    );
}

/// A TCP stream whose reads end at the current deadline (there always is one: a read without
/// one fails at once rather than wait without end).
struct DeadlineStream {
    tcp: TcpStream,
    clock: Arc<dyn Clock>,
    deadline: Rc<Cell<Option<Instant>>>,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.get().map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(self.clock.now())
        });
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the request did not arrive in time",
            ));
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
