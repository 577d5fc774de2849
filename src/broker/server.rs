//! The broker's HTTP/1.1 server: a thread per connection, a cap on connections, plain TCP or
//! rustls (ring), and a deadline per request so a slow client only ever holds its own thread.
//!
//! Each request must arrive whole (head and body) within `request_timeout` of the moment the
//! server starts waiting for it; the TLS handshake counts against the first request. Every
//! socket read is given what is left of that deadline as its timeout, so a client that sends
//! one byte a second is cut off at the deadline, never later. Keep-alive is supported.
//! (tiny_http was not used: its TLS pulls rustls 0.20 and ring 0.16 beside ours.)

use std::cell::Cell;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handler::{Broker, Handled};
use super::health;
use super::http::{self, ReadError, Request, Response};
use super::settings::Settings;
use crate::clock::Clock;

/// Largest request body read (and dropped): the endpoint needs none.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Requests on one connection before it is closed (spreads long-lived clients over time).
const MAX_REQUESTS_PER_CONNECTION: usize = 100;
/// Time to write an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

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
    max_connections: usize,
    active: AtomicUsize,
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
                clock,
                request_timeout: settings.request_timeout,
                max_connections: settings.max_connections,
                active: AtomicUsize::new(0),
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
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            refuse(stream, shared.tls.is_some(), shared.max_connections);
            return;
        }
        let guard = Active(self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("broker-conn".into())
            .spawn(move || {
                let shared = guard.0.clone();
                connection(stream, &shared);
                drop(guard);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
        }
    }

    /// Waits up to `grace` for connections in flight to end; false when some were still open.
    pub(crate) fn wait_idle(&self, grace: Duration) -> bool {
        let clock = &self.shared.clock;
        let until = clock.now() + grace;
        let never = AtomicBool::new(false);
        while self.shared.active.load(Ordering::SeqCst) > 0 {
            if clock.now() >= until {
                return false;
            }
            clock.sleep(Duration::from_millis(50), &never);
        }
        true
    }
}

/// Counts a connection while its thread runs (also when the thread could not start).
struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Over the cap: a plain-HTTP client is told to come back; a TLS client is just closed.
fn refuse(mut stream: TcpStream, tls: bool, max: usize) {
    log::warn!("refused a connection: {max} connections already open (broker.max_connections)");
    if tls {
        return;
    }
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut r = Response::json_error(503, "too many connections", serde_json::Value::Null);
    r.set("Retry-After", "1");
    let _ = http::write(&mut stream, &r, false, false);
}

fn connection(tcp: TcpStream, shared: &Shared) {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "-".to_string(), |a| a.to_string());
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let raw = tcp.try_clone().ok();
    let deadline = Rc::new(Cell::new(None));
    let stream = DeadlineStream {
        tcp,
        clock: shared.clock.clone(),
        deadline: deadline.clone(),
        idle: shared.request_timeout,
    };
    let end = match &shared.tls {
        None => serve_requests(stream, &peer, &deadline, shared),
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(conn) => {
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let end = serve_requests(&mut tls, &peer, &deadline, shared);
                // A clean TLS close, so clients can tell the end from a cut.
                deadline.set(None);
                tls.conn.send_close_notify();
                let _ = tls.flush();
                end
            }
            Err(e) => {
                log::error!("{peer}: cannot start TLS: {e}");
                End::Close
            }
        },
    };
    if let (End::Linger, Some(raw)) = (end, raw) {
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
fn serve_requests(
    stream: impl Read + Write,
    peer: &str,
    deadline: &Cell<Option<Instant>>,
    shared: &Shared,
) -> End {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    for n in 1..=MAX_REQUESTS_PER_CONNECTION {
        deadline.set(Some(shared.clock.now() + shared.request_timeout));
        let req = match http::read_head(&mut reader) {
            Ok(req) => req,
            Err(e) => return refuse_head(reader.get_mut(), peer, e),
        };
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
        let handled = shared.broker.handle(&req);
        let keep_alive = req.keep_alive() && n < MAX_REQUESTS_PER_CONNECTION;
        let written = http::write(
            reader.get_mut(),
            &handled.response,
            keep_alive,
            req.method == "HEAD",
        );
        log_handled(peer, &req, &handled, shared.clock.now() - started);
        if written.is_err() || !keep_alive {
            return End::Close;
        }
    }
    End::Close
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

/// A TCP stream whose reads end at the current request's deadline.
struct DeadlineStream {
    tcp: TcpStream,
    clock: Arc<dyn Clock>,
    deadline: Rc<Cell<Option<Instant>>>,
    /// Read timeout when no deadline is set.
    idle: Duration,
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = match self.deadline.get() {
            None => self.idle,
            Some(d) => {
                let left = d.saturating_duration_since(self.clock.now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request did not arrive in time",
                    ));
                }
                left
            }
        };
        self.tcp.set_read_timeout(Some(limit))?;
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
