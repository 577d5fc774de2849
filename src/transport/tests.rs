//! The transport against real loopback sockets: deadlines, classification, messages.
#![allow(
    clippy::disallowed_methods,
    reason = "these tests measure real time against real sockets and pace a slow server"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::http::{HttpSettings, UreqTransport};
use super::*;
use crate::tus::request;

fn failure(kind: FailureKind) -> TransportError {
    TransportError {
        kind,
        message: "127.0.0.1:9: x".into(),
    }
}

#[test]
fn what_retrying_can_mend_and_what_is_the_link() {
    use FailureKind::*;
    let table = [
        (Timeout, true, true),
        (Connection, true, true),
        (Tls, false, false),
        (Endpoint, false, false),
        (Body, true, false),
        (Protocol, true, false),
        (Interrupted, true, false),
    ];
    for (kind, transient, link) in table {
        let e = failure(kind);
        assert_eq!(e.is_transient(), transient, "{kind:?} transient");
        assert_eq!(e.is_link_level(), link, "{kind:?} link-level");
    }
    assert_eq!(
        failure(Endpoint).to_string(),
        "wrong endpoint: 127.0.0.1:9: x"
    );
}

/// A server that reads a request at `bytes_per_sec` (with a small receive buffer, so the
/// kernel cannot take the body for it) and never answers.
fn slow_reader(bytes_per_sec: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&listener)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; bytes_per_sec / 10];
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    addr
}

/// A reader of `len` zero bytes, as the body.
fn zeros(len: u64) -> Option<Box<dyn Read + Send + 'static>> {
    Some(Box::new(std::io::repeat(0).take(len)))
}

#[test]
fn a_server_that_reads_the_body_slowly_is_cut_off_by_the_size_bound() {
    let addr = slow_reader(128 * 1024);
    let settings = HttpSettings {
        idle_timeout: Duration::from_secs(1),
        min_send_rate_bytes_per_sec: 2 << 20,
        ..HttpSettings::default()
    };
    let len = 8 << 20;
    // idle_timeout + 8 MiB at 2 MiB/s; at the server's pace the body would take 64 s.
    assert_eq!(settings.send_body_limit(len), Some(Duration::from_secs(5)));
    let transport = UreqTransport::new(&settings).unwrap();
    let req = request::patch(&format!("http://{addr}/files/x"), 0, len, None);
    let started = Instant::now();
    let err = transport.send(&req, zeros(len)).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind, FailureKind::Timeout, "{err}");
    assert!(err.is_transient());
    assert!(
        err.message.starts_with(&format!(
            "{addr}: sending 8388608 bytes took longer than 5 s"
        )),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(4800) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

/// A server that answers the first request on its first connection with a head carrying an
/// `X-Padding` header of `pad` bytes, then closes.
fn answers_with_padding(pad: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = conn.read(&mut req);
        let head = format!(
            "HTTP/1.1 200 OK\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 7\r\nX-Padding: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        );
        let _ = conn.write_all(head.as_bytes());
    });
    addr
}

/// The connection's input buffer is 32 KiB (ureq's default is 128): a head up to
/// `MAX_RESPONSE_HEAD_BYTES` is read, a longer one (even one longer than the buffer) is an
/// error that says what it is, not a stalled read or a cut connection.
#[test]
fn a_response_head_over_16_kib_is_named_as_such() {
    let transport = UreqTransport::new(&HttpSettings::default()).unwrap();
    let fits = answers_with_padding(12 * 1024);
    let resp = transport
        .send(&request::head(&format!("http://{fits}/files/x")), None)
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("upload-offset"), Some("7"));
    assert_eq!(resp.header("x-padding").map(str::len), Some(12 * 1024));

    for pad in [20 * 1024, 64 * 1024] {
        let big = answers_with_padding(pad);
        let err = transport
            .send(&request::head(&format!("http://{big}/files/x")), None)
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Protocol, "{err}");
        assert!(
            err.message.starts_with(&format!("{big}: "))
                && err.message.contains("header is too big")
                && err.message.contains("16384"),
            "{pad}: {err}"
        );
    }
}

#[test]
fn min_send_rate_0_sets_no_bound() {
    let settings = HttpSettings {
        min_send_rate_bytes_per_sec: 0,
        ..HttpSettings::default()
    };
    assert_eq!(settings.send_body_limit(1 << 30), None);
    let one_byte = HttpSettings {
        min_send_rate_bytes_per_sec: 1,
        ..HttpSettings::default()
    };
    assert_eq!(one_byte.send_body_limit(u64::MAX), Some(Duration::MAX));
    let default = HttpSettings::default();
    assert_eq!(
        default.send_body_limit(6 << 20),
        Some(Duration::from_secs(30 + 6 * 1024))
    );
}

#[test]
fn a_refused_connection_names_host_and_port() {
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let transport = UreqTransport::new(&HttpSettings::default()).unwrap();
    let err = transport
        .send(&request::head(&format!("http://{addr}/files/x")), None)
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Connection, "{err}");
    assert!(err.is_link_level());
    assert!(
        err.to_string()
            .starts_with(&format!("connection failed: {addr}: ")),
        "{err}"
    );
    assert_eq!(transport.endpoint_problem(), None);
}

#[test]
fn https_to_a_plain_http_port_is_an_endpoint_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut hello = [0u8; 16];
        let _ = conn.read(&mut hello);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    });
    let transport = UreqTransport::new(&HttpSettings::default()).unwrap();
    let err = transport
        .send(&request::head(&format!("https://{addr}/files/x")), None)
        .unwrap_err();
    assert_eq!(err.kind, FailureKind::Endpoint, "{err}");
    assert!(!err.is_transient());
    let want = format!("{addr}: the endpoint speaks plain HTTP: use http:// or the TLS port");
    assert_eq!(err.message, want);
    assert_eq!(transport.endpoint_problem(), Some(want));
}

/// `network.bind_interface`: a connection bound to `lo` reaches a loopback server; one bound to
/// an interface that does not exist fails, naming it and the setting.
#[test]
fn connections_are_bound_to_the_interface_given() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut head = [0u8; 1024];
        let _ = conn.read(&mut head);
        let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    });
    let url = format!("http://{addr}/files/x");
    let lo = UreqTransport::new(&HttpSettings {
        bind_interface: Some("lo".into()),
        ..HttpSettings::default()
    })
    .unwrap();
    assert_eq!(lo.send(&request::head(&url), None).unwrap().status, 204);
    let nowhere = UreqTransport::new(&HttpSettings {
        bind_interface: Some("nosuchif0".into()),
        ..HttpSettings::default()
    })
    .unwrap();
    let err = nowhere.send(&request::head(&url), None).unwrap_err();
    assert_eq!(err.kind, FailureKind::Connection, "{err}");
    assert!(
        err.message
            .contains("cannot bind the connection to interface nosuchif0 (network.bind_interface)"),
        "{err}"
    );
}
