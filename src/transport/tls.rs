//! TLS under ureq: our own rustls connector in ureq's chain (in place of ureq's
//! `RustlsConnector`), so that we choose the order of the cipher suites and learn which suite
//! each handshake agreed on.
//!
//! Key idea: ureq builds its rustls `ClientConfig` itself from a `TlsConfig` and keeps the
//! connection inside a private type, so neither the suite order nor the negotiated suite can be
//! reached through it. This connector does what ureq's does (same roots: `server.ca_file` or
//! the webpki roots ureq uses; client certificate; SNI; every TLS version rustls has) with a
//! `ClientConfig` built once from our settings, whose ring provider lists its suites in the
//! order [`super::cipher`] chose. After each handshake it logs the version, suite and peer at
//! debug level and keeps that text for `ferry status` ([`Negotiated`]).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::unversioned::transport::time::Duration as UreqDuration;
use ureq::unversioned::transport::time::Instant as UreqInstant;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

use super::cipher::{self, CipherOrder};
use crate::error::{Error, Result};

/// The last handshake's outcome, e.g. `TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256`, shared between
/// the connector and the transport that reports it.
pub(super) type Negotiated = Arc<Mutex<Option<String>>>;

/// Wraps `https` connections in rustls with our [`ClientConfig`].
pub(super) struct TlsConnector {
    /// Built once, at start-up.
    pub(super) config: Arc<ClientConfig>,
    /// Where each handshake's outcome is kept.
    pub(super) negotiated: Negotiated,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

/// The client configuration: roots from `ca_file` (else the webpki roots, as ureq has), the
/// client certificate if given, and the ring provider's suites in the order `order` picks for
/// this CPU.
pub(super) fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
    order: CipherOrder,
) -> Result<ClientConfig> {
    let has_aes = cipher::cpu_has_aes();
    let chacha_first = order.chacha_first(has_aes);
    log::debug!(
        "TLS: CPU {} AES instructions; cipher_order {}: offering {} first",
        if has_aes { "has" } else { "lacks" },
        order.name(),
        if chacha_first {
            "ChaCha20-Poly1305"
        } else {
            "AES-GCM"
        }
    );
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = cipher::ordered(&provider.cipher_suites, chacha_first);
    let roots = match ca_file {
        Some(path) => {
            let mut store = RootCertStore::empty();
            let (_, ignored) = store.add_parsable_certificates(read_certs(path, "ca_file")?);
            if ignored > 0 {
                log::warn!(
                    "ca_file {}: {ignored} certificate(s) unusable",
                    path.display()
                );
            }
            store
        }
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| Error::config(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = read_certs(cert, "client_cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::config(format!("client_key {}: {e}", key.display())))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::config(format!(
                    "client_cert {} and client_key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })
        }
    }
}

/// The certificates of a PEM file; none is an error naming `key`.
fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    std::fs::metadata(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| {
            Error::config(format!(
                "{key} {}: not a PEM certificate file: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "{key} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> std::result::Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("no host name to verify"))?;
        // An IPv6 literal comes bracketed.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|_| ureq::Error::Tls("not a valid host name for TLS"))?;
        let mut conn = ClientConnection::new(self.config.clone(), name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(left_of(details));
        conn.complete_io(&mut sock)?;
        if let (Some(version), Some(suite)) =
            (conn.protocol_version(), conn.negotiated_cipher_suite())
        {
            let text = describe(version, suite.suite());
            log::debug!("{text} with {bare}");
            *self
                .negotiated
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(text);
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

/// What is left of the connect budget now (resolving and TCP took their part), so that the
/// handshake cannot stretch `connect_timeout` (ureq's own connector does the same).
fn left_of(details: &ConnectionDetails) -> NextTimeout {
    let mut timeout = details.timeout;
    if let (UreqDuration::Exact(limit), UreqInstant::Exact(start), UreqInstant::Exact(now)) =
        (timeout.after, details.now, (details.current_time)())
    {
        timeout.after = UreqDuration::Exact(limit.saturating_sub(now.duration_since(start)));
    }
    timeout
}

/// `TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256`.
pub(super) fn describe(version: rustls::ProtocolVersion, suite: rustls::CipherSuite) -> String {
    let version = match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLS 1.3".to_string(),
        rustls::ProtocolVersion::TLSv1_2 => "TLS 1.2".to_string(),
        other => format!("{other:?}"),
    };
    format!("{version} {suite:?}")
}

/// An established TLS connection as ureq's [`Transport`] (as ureq's own `RustlsTransport`).
pub(super) struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("chained", &self.stream.sock.inner())
            .finish()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: NextTimeout,
    ) -> std::result::Result<(), ureq::Error> {
        if super::zerocopy::is_pending() {
            // The buffer holds stale bytes: never encrypt and send them.
            return Err(super::zerocopy::mismatch("a file span reached the TLS layer").into());
        }
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> std::result::Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_negotiated_suite_reads_as_version_and_suite() {
        assert_eq!(
            describe(
                rustls::ProtocolVersion::TLSv1_3,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            ),
            "TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256"
        );
        assert_eq!(
            describe(
                rustls::ProtocolVersion::TLSv1_2,
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            ),
            "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn the_client_offers_the_suites_in_the_order_chosen() {
        let chacha = client_config(None, None, CipherOrder::Chacha).unwrap();
        let first = chacha.crypto_provider().cipher_suites[0].suite();
        assert_eq!(first, rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let aes = client_config(None, None, CipherOrder::Aes).unwrap();
        let first = aes.crypto_provider().cipher_suites[0].suite();
        assert_eq!(first, rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }
}
