//! The broker's TLS: the rustls server configuration (ring, the TLS stack ureq already links)
//! from `broker.tls_cert` and `broker.tls_key`, checked before the broker listens.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::settings::Settings;
use crate::error::{Error, Result};

/// The rustls server configuration for `broker.tls_cert`/`tls_key`, or `None` for plain HTTP.
pub(crate) fn tls_config(settings: &Settings) -> Result<Option<Arc<rustls::ServerConfig>>> {
    let Some((cert, key)) = &settings.tls else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| Error::config(format!("broker.tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "broker.tls_cert {}: holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::config(format!("broker.tls_key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::config(format!("broker.tls_cert and broker.tls_key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}
