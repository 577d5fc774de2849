//! The real transport: ureq over TCP, rustls (ring) for TLS, certificates always verified.
//!
//! Deadlines, each a setting:
//! - `connect_timeout` for resolving, TCP and the TLS handshake;
//! - `idle_timeout` for a link that moves no data: a read that waits, and a write whose bytes
//!   the kernel does not take (our own TCP layer, [`super::tcp`], also sets `TCP_USER_TIMEOUT`
//!   a second later, so data the peer never acknowledges counts as no progress too);
//! - `response_timeout` for the whole answer once the request is sent (head and the little of
//!   the body we read), so a server that trickles one byte a second cannot hold us;
//! - sending a body may take `idle_timeout` plus its length at `min_send_rate`, so a server
//!   that reads slowly cannot hold us either, while a 6 MiB chunk over a slow link is fine.
//!
//! TLS is our own rustls connector ([`super::tls`]): the cipher suites in the order
//! `server.cipher_order` picks for this CPU ([`super::cipher`]), the negotiated suite logged
//! and kept for [`Transport::tls_suite`].
//!
//! Redirects are not followed (tus defines none for creation, and following one could send a
//! body or credentials somewhere unplanned).

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector};

use super::cipher::CipherOrder;
use super::tcp::{NotTls, TcpConnector};
use super::tls::{Negotiated, TlsConnector};
use super::{zerocopy, Delivery, FailureKind, Transport, TransportError};
use crate::error::{Error, Result};
use crate::source::SpanSource;
use crate::tus::{Body, Request, Response};

/// How much of a response body we keep (error messages only; tus answers have no bodies).
const MAX_RESPONSE_BODY_BYTES: u64 = 4096;

/// Settings of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    /// Limit for resolving and connecting (TCP and TLS handshake).
    pub connect_timeout: Duration,
    /// Limit for the link to make progress: a read to get a byte, sent bytes to be taken.
    pub idle_timeout: Duration,
    /// Limit for the whole answer (head and body) once the request is sent.
    pub response_timeout: Duration,
    /// Sending a body may take `idle_timeout` plus its length at this rate; 0: no limit.
    pub min_send_rate_bytes_per_sec: u64,
    /// PEM file with the CA certificates to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate chain (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    pub client_key: Option<PathBuf>,
    /// Every connection's socket is bound to this interface (SO_BINDTODEVICE).
    pub bind_interface: Option<String>,
    /// Which cipher suites are offered first (`server.cipher_order`).
    pub cipher_order: CipherOrder,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            // 1 KiB/s: a 6 MiB chunk may take 1 h 43 min; GPRS moves 2.5-5 KB/s.
            min_send_rate_bytes_per_sec: 1024,
            ca_file: None,
            client_cert: None,
            client_key: None,
            bind_interface: None,
            cipher_order: CipherOrder::Auto,
        }
    }
}

impl HttpSettings {
    /// How long sending a body of `len` bytes may take; `None`: no limit.
    pub(crate) fn send_body_limit(&self, len: u64) -> Option<Duration> {
        let rate = self.min_send_rate_bytes_per_sec;
        (rate > 0).then(|| {
            let at_rate = Duration::try_from_secs_f64(len as f64 / rate as f64);
            self.idle_timeout
                .saturating_add(at_rate.unwrap_or(Duration::MAX))
        })
    }
}

/// ureq-backed [`Transport`].
pub(crate) struct UreqTransport {
    agent: ureq::Agent,
    settings: HttpSettings,
    /// Each upload's share of our own rate limit now, bytes per second (0: no limit).
    paced: AtomicU64,
    /// Set when an exchange showed that the endpoint URL itself is wrong.
    endpoint_problem: Mutex<Option<String>>,
    /// The last TLS handshake's version and suite (written by the TLS connector).
    negotiated: Negotiated,
}

/// `daemon.concurrency`'s upper bound, and so the most idle connections the pool keeps (the
/// broker may run more requests at once: connections beyond this are closed when done).
/// ureq's default pool keeps 3 per host: with 4 uploads at once, every fourth returned
/// connection was closed and the next request opened another (101 connections for 300 small
/// files, each with fresh 256 KiB of buffers).
pub(crate) const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Each connection's buffers, which ureq writes through (so they are resident while the
/// connection is pooled). Its defaults are 128 KiB each: 256 KiB per connection, 1 MiB of a
/// daemon's 8 MiB at `concurrency = 4`.
/// - Input: a tus answer is a head of under 1 KiB; bodies (errors, the broker's JSON) are read
///   through it in pieces. It must hold a whole head: see [`MAX_RESPONSE_HEAD_BYTES`].
/// - Output: a request head, one line at a time (so the longest line must fit: user metadata
///   is bounded by `metadata::MAX_USER_METADATA_BYTES`), then the body in pieces of this size:
///   one `sendfile` or one TLS write each (32,768 per GiB: their cost was within noise).
const INPUT_BUFFER_BYTES: usize = 32 * 1024;
const OUTPUT_BUFFER_BYTES: usize = 32 * 1024;
/// The largest response head taken (ureq's default: 64 KiB). Below the input buffer, so a
/// bigger head is reported as such ("response header is too big") and not as a stalled read.
/// Node's HTTP server, for one, refuses heads over 16 KiB.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

impl UreqTransport {
    /// Builds the client; fails when a certificate or key file is unusable.
    pub(crate) fn new(settings: &HttpSettings) -> Result<Self> {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            // No timeout_resolve: with one, ureq starts a thread for every lookup (even of an
            // IP address on a reused connection); the system resolver has its own timeouts.
            .timeout_connect(Some(settings.connect_timeout))
            .timeout_per_read(Some(settings.idle_timeout))
            .timeout_per_write(Some(settings.idle_timeout))
            // A request head is a few hundred bytes: idle_timeout is plenty for all of it.
            .timeout_send_request(Some(settings.idle_timeout))
            .timeout_recv_response(Some(settings.response_timeout))
            .timeout_recv_body(Some(settings.response_timeout))
            // A connection is only opened when none is idle, so the pool never holds more
            // than the most requests that ran at once.
            .max_idle_connections(MAX_CONCURRENT_REQUESTS)
            .max_idle_connections_per_host(MAX_CONCURRENT_REQUESTS)
            .input_buffer_size(INPUT_BUFFER_BYTES)
            .output_buffer_size(OUTPUT_BUFFER_BYTES)
            .max_response_header_size(MAX_RESPONSE_HEAD_BYTES)
            .build();
        let negotiated = Negotiated::default();
        let tls = TlsConnector {
            config: Arc::new(tls_config(settings)?),
            negotiated: negotiated.clone(),
        };
        // ureq's default chain with our TCP and TLS layers in place of its own (no SOCKS: the
        // socks-proxy feature is off, as before).
        let connector = ()
            .chain(ConnectProxyConnector::default())
            .chain(TcpConnector {
                idle_timeout: settings.idle_timeout,
                bind_interface: settings.bind_interface.clone(),
            })
            .chain(tls);
        Ok(Self {
            agent: ureq::Agent::with_parts(config, connector, DefaultResolver::default()),
            settings: settings.clone(),
            paced: AtomicU64::new(0),
            endpoint_problem: Mutex::new(None),
            negotiated,
        })
    }

    /// The settings for the next request: `min_send_rate` lowered to half of each upload's
    /// share of our own rate limit, so that our own pacing never makes a body too slow.
    fn settings_now(&self) -> std::borrow::Cow<'_, HttpSettings> {
        let paced = self.paced.load(Ordering::Relaxed);
        let floor = (paced / 2).max(1);
        if paced == 0 || self.settings.min_send_rate_bytes_per_sec <= floor {
            return std::borrow::Cow::Borrowed(&self.settings);
        }
        std::borrow::Cow::Owned(HttpSettings {
            min_send_rate_bytes_per_sec: floor,
            ..self.settings.clone()
        })
    }

    /// Why the endpoint URL is wrong in a way no retry mends (an `https://` URL whose port
    /// speaks plain HTTP), once an exchange has shown it. The upload logic reports such a
    /// failure as a network error; `ferry upload` asks here, to end with exit code 2.
    pub(crate) fn endpoint_problem(&self) -> Option<String> {
        self.endpoint_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The rustls client configuration for `s`: its CA file, client certificate and cipher order.
fn tls_config(s: &HttpSettings) -> Result<rustls::ClientConfig> {
    let client = match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        (None, None) => None,
        _ => {
            return Err(Error::config(
                "client_cert and client_key must be given together",
            ))
        }
    };
    super::tls::client_config(s.ca_file.as_deref(), client, s.cipher_order)
}

impl Transport for UreqTransport {
    fn send(
        &self,
        req: &Request,
        body: Option<Box<dyn Read + Send + 'static>>,
    ) -> std::result::Result<Response, TransportError> {
        let mut builder = ureq::http::Request::builder()
            .method(req.method.as_str())
            .uri(&req.url);
        for (name, value) in &req.headers {
            builder = builder.header(name, value);
        }
        let peer = peer_of(&req.url);
        let result = match (req.body, body) {
            (Body::File { len, .. }, Some(reader)) => {
                let http = builder
                    .header("Content-Length", len.to_string())
                    .body(ureq::SendBody::from_owned_reader(reader))
                    .map_err(bad_request)?;
                let http = self
                    .agent
                    .configure_request(http)
                    .timeout_send_body(self.settings_now().send_body_limit(len))
                    .build();
                self.agent.run(http)
            }
            (Body::File { .. }, None) => {
                return Err(TransportError {
                    kind: FailureKind::Body,
                    message: "a request with a file body was given no reader".into(),
                })
            }
            (Body::Empty, _) => {
                let method = req.method;
                if matches!(method, crate::tus::Method::Post | crate::tus::Method::Patch) {
                    builder = builder.header("Content-Length", "0");
                }
                self.agent.run(builder.body(()).map_err(bad_request)?)
            }
        };
        let mut resp = result.map_err(|e| self.failed(e, &peer, req))?;
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut raw = Vec::new();
        // The body only feeds error messages; a broken one is not worth failing over.
        let _ = resp
            .body_mut()
            .as_reader()
            .take(MAX_RESPONSE_BODY_BYTES)
            .read_to_end(&mut raw);
        Ok(Response {
            status: resp.status().as_u16(),
            headers,
            body: String::from_utf8_lossy(&raw).into_owned(),
        })
    }

    fn send_watched(
        &self,
        req: &Request,
        body: Option<Box<dyn Read + Send + 'static>>,
        delivery: &Arc<Delivery>,
    ) -> std::result::Result<Response, TransportError> {
        super::delivery::watching(delivery, || self.send(req, body))
    }

    fn send_file(
        &self,
        req: &Request,
        body: Box<dyn SpanSource>,
        delivery: &Arc<Delivery>,
    ) -> std::result::Result<Response, TransportError> {
        if !self.zero_copy(&req.url) {
            return self.send_watched(req, Some(Box::new(zerocopy::Copied(body))), delivery);
        }
        let _scope = zerocopy::Scope::begin();
        self.send_watched(req, Some(Box::new(zerocopy::SpanBody(body))), delivery)
    }

    fn pace(&self, per_upload: Option<u64>) {
        self.paced.store(per_upload.unwrap_or(0), Ordering::Relaxed);
    }

    fn shut_down(&self) {
        // Shuts the sockets of this agent's connections (ours register in tcp.rs).
        self.agent.clone().shutdown();
    }

    fn tls_suite(&self) -> Option<String> {
        self.negotiated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl UreqTransport {
    /// True when a body to `url` may go with `sendfile`: only our own plain TCP layer carries
    /// it (`http://`, no proxy; Linux).
    pub(super) fn zero_copy(&self, url: &str) -> bool {
        cfg!(target_os = "linux")
            && url
                .get(..7)
                .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
            && self.agent.config().proxy().is_none()
    }

    /// The [`TransportError`] for `e`, naming `peer`; remembers an endpoint problem.
    fn failed(&self, e: ureq::Error, peer: &str, req: &Request) -> TransportError {
        let err = classify(e, peer, &self.settings_now(), req);
        if err.kind == FailureKind::Endpoint {
            *self
                .endpoint_problem
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(err.message.clone());
        }
        err
    }
}

/// `host:port` of an absolute URL, the port made explicit (`example.com:443`).
fn peer_of(url: &str) -> String {
    let Ok(uri) = url.parse::<ureq::http::Uri>() else {
        return url.to_string();
    };
    let host = uri.host().unwrap_or_default();
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    });
    format!("{host}:{port}")
}

fn is_certificate_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::InvalidData
        && io.to_string().to_ascii_lowercase().contains("certificate")
}

/// A certificate refused for its dates: on a device whose clock is not set yet (a Pi without a
/// real-time clock boots at its last shutdown time until NTP syncs) this mends itself.
fn is_clock_problem(io: &std::io::Error) -> bool {
    is_dated_out(&io.to_string())
}

/// rustls' words for a certificate refused for its dates only ("certificate not valid yet: …",
/// "certificate expired: …"; its error type is not ours to name in a build without the
/// broker, so the text it shows is what we look at, pinned by a test against rustls itself).
fn is_dated_out(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    // With the verification time: "certificate not valid yet: …"; without: the variant's name.
    [
        "certificate not valid yet",
        "certificate expired",
        "notvalidyet",
        "certificate: expired",
    ]
    .iter()
    .any(|w| text.contains(w))
}

fn bad_request(e: ureq::http::Error) -> TransportError {
    TransportError {
        kind: FailureKind::Protocol,
        message: format!("cannot build the request: {e}"),
    }
}

/// What a ureq error means for us, with a message that names `peer` (`host:port`) and, for a
/// timeout, the setting that bounded it.
fn classify(e: ureq::Error, peer: &str, s: &HttpSettings, req: &Request) -> TransportError {
    let kind = kind_of(&e);
    let detail = match &e {
        ureq::Error::Timeout(t) => timeout_text(*t, s, req),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!(
            "the peer acknowledged nothing for {} (idle_timeout + 1 s): {io}",
            secs(s.idle_timeout)
        ),
        ureq::Error::Io(io) if not_tls(io).is_some() => {
            let what = not_tls(io).map(ToString::to_string).unwrap_or_default();
            format!("{what}: use http:// or the TLS port")
        }
        _ => e.to_string(),
    };
    TransportError {
        kind,
        message: format!("{peer}: {detail}"),
    }
}

fn not_tls(io: &std::io::Error) -> Option<&NotTls> {
    io.get_ref().and_then(|e| e.downcast_ref::<NotTls>())
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn timeout_text(t: ureq::Timeout, s: &HttpSettings, req: &Request) -> String {
    match t {
        ureq::Timeout::Connect => format!(
            "no connection within {} (connect_timeout)",
            secs(s.connect_timeout)
        ),
        ureq::Timeout::PerRead | ureq::Timeout::PerWrite => format!(
            "the link moved no data for {} (idle_timeout; {t})",
            secs(s.idle_timeout)
        ),
        ureq::Timeout::RecvResponse | ureq::Timeout::RecvBody => format!(
            "no complete answer within {} of sending the request (response_timeout)",
            secs(s.response_timeout)
        ),
        ureq::Timeout::SendBody => {
            let len = match req.body {
                Body::File { len, .. } => len,
                Body::Empty => 0,
            };
            let limit = s.send_body_limit(len).unwrap_or_default();
            format!(
                "sending {len} bytes took longer than {} (idle_timeout + the size at min_send_rate {} B/s)",
                secs(limit),
                s.min_send_rate_bytes_per_sec
            )
        }
        other => format!("timeout: {other}"),
    }
}

fn kind_of(e: &ureq::Error) -> FailureKind {
    match e {
        ureq::Error::Timeout(_) | ureq::Error::BodyStalled => FailureKind::Timeout,
        ureq::Error::Io(io) if io.to_string().contains(crate::source::INTERRUPTED) => {
            FailureKind::Interrupted
        }
        ureq::Error::Io(io)
            if io.kind() == std::io::ErrorKind::UnexpectedEof
                && io.to_string().contains("file ended") =>
        {
            FailureKind::Body
        }
        ureq::Error::Io(io) if not_tls(io).is_some() => FailureKind::Endpoint,
        ureq::Error::Io(io)
            if io.kind() == std::io::ErrorKind::TimedOut
                || io.kind() == std::io::ErrorKind::WouldBlock =>
        {
            FailureKind::Timeout
        }
        // ureq reports TLS handshake failures as I/O errors wrapping rustls' error. A refused
        // certificate (ours or theirs) is a setting to fix, not a link problem to retry.
        // ...except a certificate that is not valid *yet* or any more: on a board without a
        // real-time clock that is our clock before NTP, so it passes by itself.
        ureq::Error::Io(io) if is_certificate_error(io) && !is_clock_problem(io) => {
            FailureKind::Tls
        }
        ureq::Error::Io(_)
        | ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::ConnectProxyFailed(_) => FailureKind::Connection,
        // A refused certificate is a setting to fix (but see `is_clock_problem`); other TLS
        // alerts can come from a bad link.
        ureq::Error::Rustls(r)
            if is_dated_out(&r.to_string())
                || !r.to_string().to_ascii_lowercase().contains("certificate") =>
        {
            FailureKind::Connection
        }
        ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::TlsRequired => FailureKind::Tls,
        _ => FailureKind::Protocol,
    }
}

#[cfg(test)]
mod clock_tests {
    use super::*;
    use rustls::CertificateError as C;

    /// Found while documenting: the check looked for "NotValidYet" and "Expired" in the text,
    /// which rustls 0.23 writes as "certificate not valid yet: …", so a device whose clock was
    /// not set yet failed its files for good instead of retrying.
    #[test]
    fn a_certificate_refused_for_its_dates_is_retried_not_a_setting_to_fix() {
        let at = |s| rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(s));
        for c in [
            C::NotValidYet,
            C::Expired,
            C::NotValidYetContext {
                time: at(1_000),
                not_before: at(2_000),
            },
            C::ExpiredContext {
                time: at(2_000),
                not_after: at(1_000),
            },
        ] {
            let e = rustls::Error::InvalidCertificate(c);
            assert_eq!(
                kind_of(&ureq::Error::Rustls(e.clone())),
                FailureKind::Connection
            );
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            assert_eq!(kind_of(&ureq::Error::Io(io)), FailureKind::Connection);
        }
        let unknown = rustls::Error::InvalidCertificate(C::UnknownIssuer);
        assert_eq!(
            kind_of(&ureq::Error::Rustls(unknown.clone())),
            FailureKind::Tls
        );
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert_eq!(kind_of(&ureq::Error::Io(io)), FailureKind::Tls);
    }
}
