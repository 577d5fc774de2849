//! End to end: `server.cipher_order` decides the cipher suite a real rustls server (our TLS
//! proxy, which follows the client's order of preference, as BoringSSL, Go and rustls do)
//! agrees on, over TLS 1.3 and TLS 1.2; ferry logs the negotiated suite at debug level, and
//! `ferry status` shows the daemon's last one.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::daemon::Spool;
use crate::harness::{ferry, finished, stderr, wait_until, Scratch};
use crate::support::tls_proxy::TlsProxy;
use crate::support::tus_server::{ServerConfig, TusServer};
use crate::tls::fixture;

/// The tus test server behind a TLS proxy that speaks only `versions`.
fn server(versions: &[&'static rustls::SupportedProtocolVersion]) -> (TusServer, TlsProxy) {
    let server = TusServer::start(ServerConfig::default());
    let proxy = TlsProxy::start_with_versions(
        server.addr(),
        &fixture("server.pem"),
        &fixture("server.key"),
        None,
        versions,
    );
    server.set_public_endpoint(&proxy.url("/files/"));
    (server, proxy)
}

/// `ferry upload --cipher-order ORDER` of `file`, logging at debug level.
fn upload_with(config: &Path, order: &str, file: &Path) -> Output {
    let ca = fixture("ca.pem");
    ferry()
        .env("RUST_LOG", "debug")
        .arg("upload")
        .arg("--config")
        .arg(config)
        .args(["--ca-file", ca.to_str().unwrap(), "--cipher-order", order])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn cipher_order_chacha_or_aes_decides_the_negotiated_suite_and_ferry_logs_it() {
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (versions, version) in [(rustls::DEFAULT_VERSIONS, "TLS 1.3"), (tls12, "TLS 1.2")] {
        for (order, cipher) in [("chacha", "_CHACHA20_POLY1305_"), ("aes", "_AES_256_GCM_")] {
            let what = format!("{version}, cipher_order {order}");
            let (server, proxy) = server(versions);
            let s = Scratch::new("tls-suites");
            let f = s.file("a.bin", 200 * 1024, 31);
            let cfg = s.config(&proxy.url("/files/"), "");
            let out = upload_with(&cfg, order, &f);
            let err = stderr(&out);
            assert_eq!(finished(&out).len(), 1, "{what}:\n{err}");
            assert_eq!(server.uploads().len(), 1, "{what}");
            let suites = proxy.suites();
            assert!(!suites.is_empty(), "{what}: no handshake");
            for suite in &suites {
                assert!(
                    suite.contains(cipher),
                    "{what}: the server agreed on {suite}"
                );
                let tls13 = suite.starts_with("TLS13_");
                assert_eq!(tls13, version == "TLS 1.3", "{what}: {suite}");
                // Once per handshake, naming version, suite and host.
                let line = format!("{version} {suite} with 127.0.0.1");
                assert_eq!(
                    err.matches(&line).count(),
                    suites.len(),
                    "{what}: {line:?} once per handshake ({} handshakes):\n{err}",
                    suites.len()
                );
            }
        }
    }
}

#[test]
fn a_cipher_order_ferry_does_not_know_is_a_configuration_error_naming_the_key() {
    let s = Scratch::new("tls-suites-bad");
    let f = s.file("a.bin", 1000, 32);
    let cfg = s.config("https://127.0.0.1:9/files/", "");
    let out = upload_with(&cfg, "chacha20", &f);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("server.cipher_order = \"chacha20\"") && err.contains("auto"),
        "{err}"
    );
}

/// `ferry status` shows the suite of the daemon's last handshake (text and JSON).
#[test]
fn ferry_status_shows_the_negotiated_suite() {
    let (server, proxy) = server(rustls::DEFAULT_VERSIONS);
    let sp = Spool::new("tls-suites-status", &proxy.url("/files/"), "");
    let text = std::fs::read_to_string(&sp.config).unwrap();
    let ca = fixture("ca.pem");
    let text = text.replacen(
        "[server]\n",
        &format!("[server]\nca_file = {ca:?}\ncipher_order = \"chacha\"\n"),
        1,
    );
    std::fs::write(&sp.config, text).unwrap();
    let _daemon = sp.start();
    sp.drop_file("a.bin", 100 * 1024, 2);
    let want = "TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256";
    wait_until(
        "the status to show the suite",
        Duration::from_secs(10),
        || sp.status().contains(&format!("\ntls: {want}\n")),
    );
    let json = String::from_utf8_lossy(&sp.cmd(&["status", "--json"]).stdout).into_owned();
    assert!(json.contains(&format!("\"tls\":\"{want}\"")), "{json}");
    assert_eq!(server.uploads().len(), 1, "{}", sp.log());
}
