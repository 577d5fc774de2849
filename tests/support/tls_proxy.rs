//! A TLS-terminating TCP proxy on loopback: clients speak HTTPS to it, and it forwards the
//! plaintext to a plain upstream (e.g. our `TusServer`), so tests can check a client's TLS
//! settings (trusted CAs, client certificates) against a real rustls server.
//!
//! Each accepted connection gets its own thread, which does the TLS handshake (with a client
//! certificate required when the proxy was given a client CA). A failed handshake is counted
//! ([`TlsProxy::handshakes_failed`]) and never reaches the upstream. After a good handshake the
//! proxy connects upstream and a second thread forwards upstream→client, both sharing the one
//! `rustls::ServerConnection` under a mutex; the forwarding is the shared byte pump, `pump.rs`,
//! with decryption and encryption as its `forward` steps. The connection ends with a clean
//! close_notify when the upstream closes, or is torn down on any error or when the proxy is
//! dropped.
//!
//! **Location headers:** like any TCP proxy, this one passes HTTP through unchanged, so a server
//! that writes absolute `http://<upstream>` Locations must be told the proxy's URL (for our
//! `TusServer`: `server.set_public_endpoint(&proxy.url("/files/"))`, or `LocationStyle::Relative`).
//!
//! Crypto is rustls with the ring provider, chosen explicitly (never aws-lc-rs).
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, SupportedProtocolVersion};

use super::accept::{Acceptor, Stop};
use super::pump::{self, Abort, End, Flow, Link, Way, BUF_BYTES};

/// Longest a handshake may take before the connection is dropped (and counted as failed).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running proxy; stops on drop (open connections are torn down).
pub struct TlsProxy {
    shared: Arc<Shared>,
    _acceptor: Acceptor,
}

struct Shared {
    upstream: SocketAddr,
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    stop: Stop,
    connections: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    /// The cipher suite of each good handshake, in order.
    suites: Mutex<Vec<String>>,
}

impl TlsProxy {
    /// Listens on 127.0.0.1:0 with the certificate chain `cert_pem` and key `key_pem` and forwards
    /// plaintext to `upstream`. With `client_ca`, clients must present a certificate signed by a CA
    /// in that PEM file. Panics if a file is unusable or the socket cannot be bound.
    pub fn start(
        upstream: SocketAddr,
        cert_pem: &Path,
        key_pem: &Path,
        client_ca: Option<&Path>,
    ) -> TlsProxy {
        Self::start_with_versions(
            upstream,
            cert_pem,
            key_pem,
            client_ca,
            rustls::DEFAULT_VERSIONS,
        )
    }

    /// [`TlsProxy::start`], speaking only the TLS `versions` given (e.g. TLS 1.2 alone).
    pub fn start_with_versions(
        upstream: SocketAddr,
        cert_pem: &Path,
        key_pem: &Path,
        client_ca: Option<&Path>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> TlsProxy {
        let config = Arc::new(server_config(cert_pem, key_pem, client_ca, versions));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS proxy");
        let addr = listener.local_addr().expect("TLS proxy address");
        let shared = Arc::new(Shared {
            upstream,
            addr,
            config,
            stop: Stop::default(),
            connections: AtomicU64::new(0),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
            suites: Mutex::new(Vec::new()),
        });
        let for_conns = Arc::clone(&shared);
        let acceptor = Acceptor::start(listener, "tls-proxy", &shared.stop, move |client| {
            for_conns.connections.fetch_add(1, Ordering::SeqCst);
            serve(&for_conns, client);
        });
        TlsProxy {
            shared,
            _acceptor: acceptor,
        }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `https://127.0.0.1:<port><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.shared.addr.port())
    }

    /// Connections accepted in total.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Handshakes that completed (the client trusted us and, if required, proved its certificate).
    pub fn handshakes_ok(&self) -> u64 {
        self.shared.handshakes_ok.load(Ordering::SeqCst)
    }

    /// Handshakes that failed: an alert from the client (e.g. unknown CA), a client certificate
    /// missing or refused, a timeout, or a connection closed mid-handshake.
    pub fn handshakes_failed(&self) -> u64 {
        self.shared.handshakes_failed.load(Ordering::SeqCst)
    }

    /// The cipher suite each good handshake agreed on (rustls' name, e.g.
    /// `TLS13_CHACHA20_POLY1305_SHA256`), in order. The server follows the client's order of
    /// preference (rustls' `ignore_client_order` is false by default).
    pub fn suites(&self) -> Vec<String> {
        lock(&self.shared.suites).clone()
    }
}

fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
    client_ca: Option<&Path>,
    versions: &[&'static SupportedProtocolVersion],
) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .expect("ring supports these TLS versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca) {
                roots
                    .add(cert)
                    .unwrap_or_else(|e| panic!("{}: bad CA certificate: {e}", ca.display()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("build the client certificate verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .unwrap_or_else(|e| panic!("{}: no PEM private key: {e}", key_pem.display()));
    builder
        .with_single_cert(read_certs(cert_pem), key)
        .unwrap_or_else(|e| panic!("{}: unusable certificate/key: {e}", cert_pem.display()))
}

fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("{}: bad PEM certificates: {e}", path.display()));
    assert!(!certs.is_empty(), "{}: no certificate", path.display());
    certs
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handshakes with the client, then forwards both ways until either side is done.
fn serve(shared: &Arc<Shared>, mut client: TcpStream) {
    let Ok(mut tls) = ServerConnection::new(Arc::clone(&shared.config)) else {
        return;
    };
    if handshake(&mut tls, &mut client).is_err() {
        shared.handshakes_failed.fetch_add(1, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    shared.handshakes_ok.fetch_add(1, Ordering::SeqCst);
    if let Some(suite) = tls.negotiated_cipher_suite() {
        lock(&shared.suites).push(format!("{:?}", suite.suite()));
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let Ok(client_out) = client.try_clone() else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let Ok(link) = Link::new(client, upstream, &shared.stop, Abort::Shutdown) else {
        let _ = client_out.shutdown(Shutdown::Both);
        return;
    };
    let tunnel = Arc::new(Tunnel {
        tls: Mutex::new(tls),
        client_out: Mutex::new(client_out),
        link,
    });
    let down_tunnel = Arc::clone(&tunnel);
    let down = move || down_tunnel.pump_down();
    pump::both_ways(&tunnel.link, "tls-proxy-down", down, || tunnel.pump_up());
}

fn handshake(tls: &mut ServerConnection, client: &mut TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    client.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    while tls.is_handshaking() {
        // On a TLS error this also sends our alert (e.g. certificate_required) to the client.
        tls.complete_io(client)?;
    }
    client.set_write_timeout(None)
}

/// One proxied connection after its handshake; both forwarding threads hold it.
struct Tunnel {
    tls: Mutex<ServerConnection>,
    /// Taken while still holding `tls` so TLS records reach the socket in the order rustls made
    /// them, then written without `tls` held.
    client_out: Mutex<TcpStream>,
    link: Link,
}

impl Tunnel {
    /// Takes the TLS records rustls has queued and writes them to the client, in order.
    fn flush_tls(&self, mut tls: MutexGuard<'_, ServerConnection>) -> io::Result<()> {
        let mut records = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut records)?;
        }
        let mut out = lock(&self.client_out);
        drop(tls);
        out.write_all(&records)
    }

    /// Client→upstream: decrypts and forwards until the client closes.
    fn pump_up(&self) {
        // The first round reads nothing new: the handshake may already have read and decrypted
        // the client's first request (TLS 1.3 lets a client send it right after its Finished),
        // and it must go upstream before we wait for more, or each side waits for the other.
        let end = match self.forward_up(&[]) {
            Ok(Flow::More) => {
                pump::pump(&self.link, Way::Up, |len| len, |raw| self.forward_up(raw))
            }
            Ok(Flow::Done) => End::Eof,
            Err(()) => End::Broken,
        };
        // A TCP EOF without close_notify passes the half-close on all the same.
        self.link.finish(Way::Up, end);
    }

    /// Decrypts `raw` from the client and sends the plaintext upstream; `Done` after the
    /// client's close_notify.
    fn forward_up(&self, raw: &[u8]) -> Result<Flow, ()> {
        let mut tls = lock(&self.tls);
        let decrypted = decrypt(&mut tls, raw);
        // Send whatever rustls queued (session tickets, key updates, a last alert).
        let flushed = self.flush_tls(tls);
        let (plain, flow) = decrypted.map_err(|_| ())?;
        flushed.map_err(|_| ())?;
        (&self.link.upstream).write_all(&plain).map_err(|_| ())?;
        Ok(flow)
    }

    /// Upstream→client: encrypts and forwards until the upstream closes, then sends close_notify.
    fn pump_down(&self) {
        let end = pump::pump(
            &self.link,
            Way::Down,
            |len| len,
            |plain| self.forward_down(plain),
        );
        if end == End::Eof {
            let mut tls = lock(&self.tls);
            tls.send_close_notify();
            let _ = self.flush_tls(tls);
        }
        self.link.finish(Way::Down, end);
    }

    fn forward_down(&self, mut plain: &[u8]) -> Result<Flow, ()> {
        while !plain.is_empty() {
            let mut tls = lock(&self.tls);
            let taken = tls.writer().write(plain).map_err(|_| ())?;
            plain = &plain[taken..];
            self.flush_tls(tls).map_err(|_| ())?;
        }
        Ok(Flow::More)
    }
}

/// Feeds `input` to rustls and takes out all the plaintext it yields; `Done` once the client
/// sent close_notify.
fn decrypt(tls: &mut ServerConnection, mut input: &[u8]) -> io::Result<(Vec<u8>, Flow)> {
    while !input.is_empty() {
        tls.read_tls(&mut input)?;
        tls.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    let mut plain = Vec::with_capacity(BUF_BYTES);
    loop {
        let start = plain.len();
        plain.resize(start + BUF_BYTES, 0);
        match tls.reader().read(&mut plain[start..]) {
            Ok(0) => {
                plain.truncate(start);
                return Ok((plain, Flow::Done));
            }
            Ok(got) => plain.truncate(start + got),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                plain.truncate(start);
                return Ok((plain, Flow::More));
            }
            Err(e) => return Err(e),
        }
    }
}
