//! End to end: ferry's TLS settings against a real rustls server (our TLS proxy in front of the
//! plain tus test server). Certificates are always verified, `--ca-file` trusts a private CA,
//! and `--client-cert`/`--client-key` do mutual TLS. Keys: tests/fixtures/tls (test-only).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{assert_same_bytes, finished, spawn_upload, stderr, upload, Scratch};
use crate::support::tls_proxy::TlsProxy;
use crate::support::tus_server::{ServerConfig, TusServer};

/// Longer than any run here should take; a run still going then is retrying something it
/// should not, and is killed so the test fails instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(10);

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The plain tus server behind a TLS proxy (requiring client certificates signed by our CA
/// when `mutual`), with the server's Locations pointing at the proxy.
pub(crate) fn tls_server(mutual: bool) -> (TusServer, TlsProxy) {
    let server = TusServer::start(ServerConfig::default());
    let client_ca = fixture("ca.pem");
    let proxy = TlsProxy::start(
        server.addr(),
        &fixture("server.pem"),
        &fixture("server.key"),
        mutual.then_some(client_ca.as_path()),
    );
    server.set_public_endpoint(&proxy.url("/files/"));
    (server, proxy)
}

fn id_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// A config with ferry's default retry schedule (1 s doubling, forever), unlike
/// `Scratch::config`'s fast one: a failure that is retried shows up as a run that never ends.
fn default_retry_config(s: &Scratch, endpoint: &str) -> PathBuf {
    let p = s.dir.join("ferry-default-retry.toml");
    let text = format!(
        "state_dir = {:?}\n[server]\nendpoint = {endpoint:?}\nconnect_timeout = \"5s\"\nidle_timeout = \"5s\"\n",
        s.state().to_str().unwrap()
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// `upload`, but killed after [`WATCHDOG`]; returns the output and how long the run took.
fn upload_watched(config: &Path, args: &[&str], files: &[&Path]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = spawn_upload(config, args, files);
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > WATCHDOG {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ferry still running after {WATCHDOG:?} (retrying forever?); stderr:\n{}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out, started.elapsed())
}

fn assert_uploaded_intact(server: &TusServer, out: &Output, file: &Path) {
    let lines = finished(out);
    assert_eq!(lines.len(), 1, "{}", stderr(out));
    assert!(
        lines[0].1.starts_with("https://127.0.0.1:"),
        "upload URL goes through the TLS proxy: {}",
        lines[0].1
    );
    assert_eq!(server.uploads().len(), 1, "exactly one upload");
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(file).unwrap(),
        "a.bin",
    );
}

/// ferry refused the server's certificate at once: exit 1 within seconds (no retries under the
/// default schedule), a message about the certificate and `ca_file`, and nothing sent upstream.
fn assert_refused_certificate(server: &TusServer, proxy: &TlsProxy, out: &Output, took: Duration) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}:\n{err}");
    assert!(
        err.to_ascii_lowercase().contains("certificate"),
        "names the certificate problem:\n{err}"
    );
    assert!(err.contains("ca_file"), "points at ca_file:\n{err}");
    assert_eq!(proxy.handshakes_ok(), 0);
    assert!(
        proxy.handshakes_failed() >= 1,
        "the client aborted the handshake"
    );
    assert!(
        proxy.connections() <= 2,
        "not retried: {} connections",
        proxy.connections()
    );
    assert!(
        server.requests().is_empty(),
        "no request reached the server"
    );
    assert!(server.uploads().is_empty(), "no upload created");
}

#[test]
fn ca_file_trusts_a_private_ca_and_the_upload_arrives_intact() {
    let (server, proxy) = tls_server(false);
    let s = Scratch::new("tls-ca");
    let f = s.file("a.bin", 300 * 1024, 21);
    let cfg = s.config(&proxy.url("/files/"), "[upload]\nchunk_size = \"128KiB\"");
    let out = upload(&cfg, &["--ca-file", arg(&fixture("ca.pem"))], &[&f]);
    assert_uploaded_intact(&server, &out, &f);
    assert!(proxy.handshakes_ok() >= 1);
    assert_eq!(proxy.handshakes_failed(), 0);
}

#[test]
fn without_ca_file_a_private_ca_is_refused_at_once() {
    let (server, proxy) = tls_server(false);
    let s = Scratch::new("tls-public-roots");
    let f = s.file("a.bin", 300 * 1024, 22);
    let cfg = default_retry_config(&s, &proxy.url("/files/"));
    let (out, took) = upload_watched(&cfg, &[], &[&f]);
    assert_refused_certificate(&server, &proxy, &out, took);
}

#[test]
fn a_ca_file_with_the_wrong_ca_is_refused_at_once() {
    let (server, proxy) = tls_server(false);
    let s = Scratch::new("tls-wrong-ca");
    let f = s.file("a.bin", 300 * 1024, 23);
    let cfg = default_retry_config(&s, &proxy.url("/files/"));
    let (out, took) = upload_watched(&cfg, &["--ca-file", arg(&fixture("wrong-ca.pem"))], &[&f]);
    assert_refused_certificate(&server, &proxy, &out, took);
}

/// The server's certificate_required alert reaches ferry as a connection error (an I/O error
/// wrapping the alert), which ferry retries like a dropped link; `--max-attempts 2` bounds it.
#[test]
fn a_server_requiring_client_certificates_refuses_ferry_without_one() {
    let (server, proxy) = tls_server(true);
    let s = Scratch::new("tls-no-client-cert");
    let f = s.file("a.bin", 300 * 1024, 24);
    let cfg = s.config(&proxy.url("/files/"), "");
    let (out, _) = upload_watched(
        &cfg,
        &["--ca-file", arg(&fixture("ca.pem")), "--max-attempts", "2"],
        &[&f],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("CertificateRequired"),
        "names the server's alert:\n{err}"
    );
    assert_eq!(proxy.handshakes_ok(), 0);
    assert!(proxy.handshakes_failed() >= 1);
    assert!(
        server.requests().is_empty(),
        "no request reached the server"
    );
    assert!(server.uploads().is_empty(), "no upload created");
}

#[test]
fn a_client_certificate_does_mutual_tls_and_the_upload_arrives_intact() {
    let (server, proxy) = tls_server(true);
    let s = Scratch::new("tls-mutual");
    let f = s.file("a.bin", 300 * 1024, 25);
    let cfg = s.config(&proxy.url("/files/"), "[upload]\nchunk_size = \"128KiB\"");
    let out = upload(
        &cfg,
        &[
            "--ca-file",
            arg(&fixture("ca.pem")),
            "--client-cert",
            arg(&fixture("client.pem")),
            "--client-key",
            arg(&fixture("client.key")),
        ],
        &[&f],
    );
    assert_uploaded_intact(&server, &out, &f);
    assert!(proxy.handshakes_ok() >= 1);
    assert_eq!(proxy.handshakes_failed(), 0);
}

#[test]
fn an_unusable_ca_file_is_a_configuration_error_naming_the_file() {
    let (server, proxy) = tls_server(false);
    let s = Scratch::new("tls-bad-pem");
    let f = s.file("a.bin", 1000, 26);
    let cfg = s.config(&proxy.url("/files/"), "");
    let broken = s.dir.join("broken-ca.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nthis is not base64 !!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let no_cert = s.dir.join("plain-text-ca.pem");
    std::fs::write(&no_cert, "just some text, no PEM at all\n").unwrap();
    for bad in [&broken, &no_cert] {
        let out = upload(&cfg, &["--ca-file", arg(bad)], &[&f]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}:\n{err}", bad.display());
        assert!(err.contains(arg(bad)), "names {}:\n{err}", bad.display());
    }
    assert_eq!(proxy.connections(), 0, "nothing was sent");
    assert!(server.uploads().is_empty());
}
