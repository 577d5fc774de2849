//! The real transport: ureq over TCP, rustls (ring) for TLS, certificates always verified.
//!
//! Timeouts are per operation ("idle"), not per request: a 6 MiB chunk over 2 Mbit/s takes
//! half a minute and is fine, while a link that stops moving bytes is detected within
//! `idle_timeout` and the connection dropped. Redirects are not followed (tus defines none
//! for creation, and following one could send a body or credentials somewhere unplanned).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use super::{FailureKind, Transport, TransportError};
use crate::error::{Error, Result};
use crate::tus::{Body, Request, Response};

/// How much of a response body we keep (error messages only; tus answers have no bodies).
const MAX_RESPONSE_BODY_BYTES: u64 = 4096;

/// Settings of the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpSettings {
    /// Limit for resolving and connecting (TCP and TLS handshake).
    pub connect_timeout: Duration,
    /// Limit for any single read or write to make progress.
    pub idle_timeout: Duration,
    /// PEM file with the CA certificates to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file with a client certificate chain (mutual TLS).
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client certificate's private key.
    pub client_key: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// ureq-backed [`Transport`].
pub(crate) struct UreqTransport {
    agent: ureq::Agent,
}

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
            .tls_config(tls_config(settings)?)
            .build();
        Ok(Self {
            agent: config.new_agent(),
        })
    }
}

fn tls_config(s: &HttpSettings) -> Result<TlsConfig> {
    let mut tls = TlsConfig::builder();
    if let Some(path) = &s.ca_file {
        let certs = read_certs(path)?;
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    match (&s.client_cert, &s.client_key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let pem = read_pem(key)?;
            let key = PrivateKey::from_pem(&pem)
                .map_err(|e| Error::config(format!("client_key {}: {e}", key.display())))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "client_cert and client_key must be given together",
            ))
        }
    }
    Ok(tls.build())
}

fn read_pem(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))
}

fn read_certs(path: &PathBuf) -> Result<Vec<Certificate<'static>>> {
    let pem = read_pem(path)?;
    let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::config(format!(
                "{}: not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
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
        let result = match (req.body, body) {
            (Body::File { len, .. }, Some(reader)) => {
                let http = builder
                    .header("Content-Length", len.to_string())
                    .body(ureq::SendBody::from_owned_reader(reader))
                    .map_err(bad_request)?;
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
        let mut resp = result.map_err(classify)?;
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
}

fn is_certificate_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::InvalidData
        && io.to_string().to_ascii_lowercase().contains("certificate")
}

fn is_clock_problem(io: &std::io::Error) -> bool {
    let text = io.to_string();
    text.contains("NotValidYet") || text.contains("Expired")
}

fn bad_request(e: ureq::http::Error) -> TransportError {
    TransportError {
        kind: FailureKind::Protocol,
        message: format!("cannot build the request: {e}"),
    }
}

fn classify(e: ureq::Error) -> TransportError {
    let kind = match &e {
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
        // A refused certificate is a setting to fix; other TLS alerts can come from a bad link.
        ureq::Error::Rustls(r) if !r.to_string().to_ascii_lowercase().contains("certificate") => {
            FailureKind::Connection
        }
        ureq::Error::Tls(_)
        | ureq::Error::Rustls(_)
        | ureq::Error::Pem(_)
        | ureq::Error::TlsRequired => FailureKind::Tls,
        _ => FailureKind::Protocol,
    };
    TransportError {
        kind,
        message: e.to_string(),
    }
}
