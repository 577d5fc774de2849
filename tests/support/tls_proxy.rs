//! A TLS-terminating TCP proxy on loopback: clients speak HTTPS to it, and it forwards the
//! plaintext to a plain upstream (e.g. our `TusServer`), so tests can check a client's TLS
//! settings (trusted CAs, client certificates) against a real rustls server.
//!
//! Each accepted connection gets its own thread, which does the TLS handshake (with a client
//! certificate required when the proxy was given a client CA). A failed handshake is counted
//! ([`TlsProxy::handshakes_failed`]) and never reaches the upstream. After a good handshake the
//! proxy connects upstream and a second thread forwards upstream→client, both sharing the one
//! `rustls::ServerConnection` under a mutex. The connection ends with a clean close_notify when the
//! upstream closes, or is torn down on any error or when the proxy is dropped.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

const BUF_BYTES: usize = 16 * 1024;
/// How often blocked reads look at the connection's and proxy's stop flags.
const POLL: Duration = Duration::from_millis(50);
/// Longest a handshake may take before the connection is dropped (and counted as failed).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running proxy; stops on drop (open connections are torn down).
pub struct TlsProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    addr: SocketAddr,
    config: Arc<ServerConfig>,
    stop: AtomicBool,
    connections: AtomicU64,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
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
        let config = Arc::new(server_config(cert_pem, key_pem, client_ca));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS proxy");
        let addr = listener.local_addr().expect("TLS proxy address");
        let shared = Arc::new(Shared {
            upstream,
            addr,
            config,
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            handshakes_ok: AtomicU64::new(0),
            handshakes_failed: AtomicU64::new(0),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("tls-proxy-accept".to_string())
            .spawn(move || accept_loop(&listener, &for_thread))
            .expect("spawn the TLS proxy");
        TlsProxy {
            shared,
            acceptor: Some(acceptor),
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
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn server_config(cert_pem: &Path, key_pem: &Path, client_ca: Option<&Path>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new()
            .name("tls-proxy-conn".to_string())
            .spawn(move || serve(&shared, client));
    }
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
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let setup = (|| {
        for s in [&client, &upstream] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(POLL))?;
        }
        client.try_clone()
    })();
    let Ok(client_out) = setup else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let tunnel = Arc::new(Tunnel {
        tls: Mutex::new(tls),
        client_in: client,
        client_out: Mutex::new(client_out),
        upstream,
        closed: AtomicBool::new(false),
    });
    let (down_shared, down_tunnel) = (Arc::clone(shared), Arc::clone(&tunnel));
    let spawned = thread::Builder::new()
        .name("tls-proxy-down".to_string())
        .spawn(move || down_tunnel.pump_down(&down_shared));
    if spawned.is_err() {
        return tunnel.abort();
    }
    tunnel.pump_up(shared);
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
    client_in: TcpStream,
    /// Taken while still holding `tls` so TLS records reach the socket in the order rustls made
    /// them, then written without `tls` held.
    client_out: Mutex<TcpStream>,
    upstream: TcpStream,
    closed: AtomicBool,
}

/// What one read from a socket gave.
enum Got {
    Data(usize),
    Eof,
    /// Aborted, the proxy stopped, or the socket failed.
    Gone,
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Tunnel {
    fn is_closed(&self, shared: &Shared) -> bool {
        self.closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst)
    }

    fn read(&self, shared: &Shared, mut from: &TcpStream, buf: &mut [u8]) -> Got {
        loop {
            if self.is_closed(shared) {
                return Got::Gone;
            }
            match from.read(buf) {
                Ok(0) => return Got::Eof,
                Ok(n) => return Got::Data(n),
                Err(e) if is_retry(&e) => {}
                Err(_) => return Got::Gone,
            }
        }
    }

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

    /// Tears down both sockets.
    fn abort(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client_in.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }

    /// Client→upstream: decrypts and forwards until the client closes.
    fn pump_up(&self, shared: &Shared) {
        let mut raw = vec![0u8; BUF_BYTES];
        let mut plain = Vec::with_capacity(BUF_BYTES);
        // The first round reads nothing new: the handshake may already have read and decrypted
        // the client's first request (TLS 1.3 lets a client send it right after its Finished),
        // and it must go upstream before we wait for more, or each side waits for the other.
        let mut n = 0;
        loop {
            let mut tls = lock(&self.tls);
            let mut input = &raw[..n];
            let mut clean_close = false;
            let decrypted = (|| {
                while !input.is_empty() {
                    tls.read_tls(&mut input)?;
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                plain.clear();
                loop {
                    let start = plain.len();
                    plain.resize(start + BUF_BYTES, 0);
                    match tls.reader().read(&mut plain[start..]) {
                        Ok(0) => {
                            plain.truncate(start);
                            clean_close = true;
                            return Ok(());
                        }
                        Ok(got) => plain.truncate(start + got),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            plain.truncate(start);
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
            })();
            // Send whatever rustls queued (session tickets, key updates, a last alert).
            let flushed = self.flush_tls(tls);
            if decrypted.is_err() || flushed.is_err() {
                return self.abort();
            }
            if (&self.upstream).write_all(&plain).is_err() {
                return self.abort();
            }
            if clean_close {
                let _ = self.upstream.shutdown(Shutdown::Write);
                return;
            }
            n = match self.read(shared, &self.client_in, &mut raw) {
                Got::Data(n) => n,
                // TCP EOF without close_notify: pass the half-close on all the same.
                Got::Eof => {
                    let _ = self.upstream.shutdown(Shutdown::Write);
                    return;
                }
                Got::Gone => return self.abort(),
            };
        }
    }

    /// Upstream→client: encrypts and forwards until the upstream closes, then sends close_notify.
    fn pump_down(&self, shared: &Shared) {
        let mut buf = vec![0u8; BUF_BYTES];
        loop {
            let n = match self.read(shared, &self.upstream, &mut buf) {
                Got::Data(n) => n,
                Got::Eof => {
                    let mut tls = lock(&self.tls);
                    tls.send_close_notify();
                    let _ = self.flush_tls(tls);
                    let _ = self.client_in.shutdown(Shutdown::Write);
                    return;
                }
                Got::Gone => return self.abort(),
            };
            let mut data = &buf[..n];
            while !data.is_empty() {
                let mut tls = lock(&self.tls);
                let taken = match tls.writer().write(data) {
                    Ok(taken) => taken,
                    Err(_) => return self.abort(),
                };
                data = &data[taken..];
                if self.flush_tls(tls).is_err() {
                    return self.abort();
                }
            }
        }
    }
}
