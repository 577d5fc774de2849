//! Self-tests of the test support code: the fault-injecting tus server and the flaky proxy,
//! driven with hand-written HTTP/1.1 over std `TcpStream` (not ferry's client), so a failure here
//! is the support code's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha1::Digest as _;

use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::tus_server::{http_date, Fault, LocationStyle, ServerConfig, TusServer};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("write timeout");
    stream
}

/// The request head, with `Connection: close` so that the response ends at EOF.
fn head_text(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: Option<usize>,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(len) = body_len {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    head + "\r\n"
}

/// One request on its own connection. `Err` when the connection ends without a response.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    let with_body = !body.is_empty() || matches!(method, "POST" | "PATCH");
    let head = head_text(method, path, headers, with_body.then_some(body.len()));
    let mut stream = connect(addr);
    stream.write_all(head.as_bytes())?;
    // The server may cut the body short: what it answers (or not) is what counts.
    let _ = stream.write_all(body);
    read_reply(&mut stream, method == "HEAD")
}

fn read_reply(stream: &mut TcpStream, head_request: bool) -> io::Result<Reply> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse_reply(&bytes, head_request)
        .ok_or_else(|| io::Error::other(format!("no response in {bytes:?}")))
}

fn parse_reply(bytes: &[u8], head_request: bool) -> Option<Reply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .map(|l| {
            l.split_once(": ")
                .map(|(n, v)| (n.to_string(), v.to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    let body = if head_request {
        Vec::new()
    } else {
        bytes[end + 4..].to_vec()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTETS: (&str, &str) = ("Content-Type", "application/offset+octet-stream");

/// Creates an upload of `length` bytes; returns the upload path.
fn create(addr: SocketAddr, length: u64) -> String {
    let length = length.to_string();
    let reply = request(
        addr,
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", &length)],
        b"",
    )
    .expect("POST");
    assert_eq!(reply.status, 201, "creation");
    let location = reply.header("Location").expect("Location");
    let path = location
        .find("/files/")
        .map(|i| &location[i..])
        .expect("a /files/ path");
    path.to_string()
}

fn patch(
    addr: SocketAddr,
    path: &str,
    offset: u64,
    extra: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Reply> {
    let offset = offset.to_string();
    let mut headers = vec![TUS, OCTETS, ("Upload-Offset", offset.as_str())];
    headers.extend_from_slice(extra);
    request(addr, "PATCH", path, &headers, body)
}

fn head_offset(addr: SocketAddr, path: &str) -> Option<u64> {
    let reply = request(addr, "HEAD", path, &[TUS], b"").expect("HEAD");
    reply.header("Upload-Offset").and_then(|v| v.parse().ok())
}

fn id_of(path: &str) -> &str {
    path.trim_start_matches("/files/")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

fn sha1_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(bytes))
}

#[test]
fn creation_patch_and_head_round_trip() {
    let server = TusServer::start(ServerConfig::default());
    let addr = server.addr();
    let options = request(addr, "OPTIONS", "/files/", &[], b"").expect("OPTIONS");
    assert_eq!(
        (options.status, options.header("Tus-Version")),
        (204, Some("1.0.0"))
    );
    let extensions = "creation,creation-with-upload,termination,checksum,expiration";
    assert_eq!(options.header("Tus-Extension"), Some(extensions));
    assert_eq!(
        options.header("Tus-Checksum-Algorithm"),
        Some("sha1,sha256")
    );
    assert_eq!(options.header("Tus-Resumable"), None);

    let metadata = ("Upload-Metadata", "filename aGVsbG8udHh0,flag");
    let created = request(
        addr,
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", "11"), metadata],
        b"",
    )
    .expect("POST");
    assert_eq!(
        (created.status, created.header("Tus-Resumable")),
        (201, Some("1.0.0"))
    );
    let location = created.header("Location").expect("Location");
    let path = location
        .strip_prefix(&format!("http://{addr}"))
        .expect("absolute Location")
        .to_string();
    assert_eq!(format!("{}{}", server.endpoint(), id_of(&path)), location);

    let first = patch(addr, &path, 0, &[], b"hello").expect("PATCH");
    assert_eq!(
        (first.status, first.header("Upload-Offset")),
        (204, Some("5"))
    );
    let second = chunked_patch_with_continue(addr, &path, 5, b" world");
    assert_eq!(
        (second.status, second.header("Upload-Offset")),
        (204, Some("11"))
    );

    let head = request(addr, "HEAD", &path, &[TUS], b"").expect("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Upload-Offset"), Some("11"));
    assert_eq!(head.header("Upload-Length"), Some("11"));
    assert_eq!(
        head.header("Upload-Metadata"),
        Some("filename aGVsbG8udHh0,flag")
    );
    assert_eq!(head.header("Cache-Control"), Some("no-store"));
    assert_eq!(head.header("Tus-Resumable"), Some("1.0.0"));

    let info = &server.uploads()[0];
    assert_eq!(
        (info.offset, info.length, info.url_path.as_str()),
        (11, 11, path.as_str())
    );
    let expected = vec![
        ("filename".to_string(), Some("hello.txt".to_string())),
        ("flag".to_string(), None),
    ];
    assert_eq!(info.metadata, expected);
    assert_eq!(server.upload_bytes(&info.id), b"hello world");
    let log: Vec<(String, Option<u16>)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.status))
        .collect();
    let methods = [
        ("OPTIONS", 204),
        ("POST", 201),
        ("PATCH", 204),
        ("PATCH", 204),
        ("HEAD", 200),
    ];
    assert_eq!(log, methods.map(|(m, s)| (m.to_string(), Some(s))).to_vec());
}

/// A PATCH with `Expect: 100-continue`, a chunked body and a checksum, as curl would send it.
fn chunked_patch_with_continue(addr: SocketAddr, path: &str, offset: u64, body: &[u8]) -> Reply {
    let (offset, checksum) = (offset.to_string(), format!("sha1 {}", sha1_b64(body)));
    let headers = [
        TUS,
        OCTETS,
        ("Upload-Offset", &offset),
        ("Upload-Checksum", &checksum),
    ];
    let chunked = [("Transfer-Encoding", "chunked"), ("Expect", "100-continue")];
    let head = head_text("PATCH", path, &[&headers[..], &chunked[..]].concat(), None);
    let mut stream = connect(addr);
    stream.write_all(head.as_bytes()).expect("write head");
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).expect("read 100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let (a, b) = body.split_at(body.len() / 2);
    let chunks = format!("{:x}\r\n", a.len())
        .into_bytes()
        .into_iter()
        .chain(a.iter().copied());
    let chunks = chunks
        .chain(format!("\r\n{:x}\r\n", b.len()).into_bytes())
        .chain(b.iter().copied());
    let chunks: Vec<u8> = chunks.chain(b"\r\n0\r\n\r\n".iter().copied()).collect();
    stream.write_all(&chunks).expect("write chunks");
    read_reply(&mut stream, false).expect("PATCH reply")
}

#[test]
fn strict_answers_412_415_409_413_400_and_404_after_delete() {
    let server = TusServer::start(ServerConfig {
        max_size: Some(100),
        ..ServerConfig::default()
    });
    let addr = server.addr();
    let path = create(addr, 10);
    let no_version = request(addr, "HEAD", &path, &[], b"").expect("HEAD");
    assert_eq!(
        (no_version.status, no_version.header("Tus-Version")),
        (412, Some("1.0.0"))
    );
    let wrong_type =
        request(addr, "PATCH", &path, &[TUS, ("Upload-Offset", "0")], b"abc").expect("PATCH");
    assert_eq!(wrong_type.status, 415);
    assert_eq!(
        patch(addr, &path, 3, &[], b"abc").expect("PATCH").status,
        409
    );
    assert_eq!(
        patch(addr, &path, 0, &[], &[7; 11]).expect("PATCH").status,
        413
    );
    assert_eq!(
        head_offset(addr, &path),
        Some(0),
        "rejected PATCHes store nothing"
    );

    let post = |headers: &[(&str, &str)]| {
        request(addr, "POST", "/files/", headers, b"")
            .expect("POST")
            .status
    };
    assert_eq!(
        post(&[TUS, ("Upload-Length", "101")]),
        413,
        "over Tus-Max-Size"
    );
    assert_eq!(post(&[TUS]), 400, "no Upload-Length");
    assert_eq!(post(&[TUS, ("Upload-Length", "-1")]), 400);
    assert_eq!(
        post(&[TUS, ("Upload-Length", "1"), ("Upload-Metadata", "name a b")]),
        400
    );
    assert_eq!(
        post(&[TUS, ("Upload-Length", "1"), ("Upload-Metadata", "name YQ")]),
        400,
        "unpadded"
    );
    assert_eq!(
        post(&[
            TUS,
            ("Upload-Length", "1"),
            ("Upload-Metadata", "k YQ==,k YQ==")
        ]),
        400,
        "dup"
    );
    assert_eq!(
        post(&[
            TUS,
            ("Upload-Length", "1"),
            ("Upload-Metadata", "k YQ==, j")
        ]),
        400,
        "space"
    );

    assert_eq!(
        request(addr, "DELETE", &path, &[TUS], b"")
            .expect("DELETE")
            .status,
        204
    );
    let gone = request(addr, "HEAD", &path, &[TUS], b"").expect("HEAD");
    assert_eq!((gone.status, gone.header("Upload-Offset")), (404, None));
    assert!(server.uploads()[0].deleted);
}

#[test]
fn checksum_mismatch_answers_460_and_keeps_the_offset() {
    let server = TusServer::start(ServerConfig::default());
    let addr = server.addr();
    let path = create(addr, 10);
    let wrong = format!("sha1 {}", sha1_b64(b"other"));
    let mismatch = patch(addr, &path, 0, &[("Upload-Checksum", &wrong)], b"12345").expect("PATCH");
    assert_eq!(mismatch.status, 460);
    assert_eq!(head_offset(addr, &path), Some(0));
    assert!(
        server.upload_bytes(id_of(&path)).is_empty(),
        "the chunk is discarded"
    );

    let md5 = patch(
        addr,
        &path,
        0,
        &[("Upload-Checksum", "md5 XUFAKrxLKna5cZ2REBfFkg==")],
        b"12345",
    );
    assert_eq!(md5.expect("PATCH").status, 400, "unsupported algorithm");
    let sha256 = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b"12345"));
    let good = patch(
        addr,
        &path,
        0,
        &[("Upload-Checksum", &format!("sha256 {sha256}"))],
        b"12345",
    );
    assert_eq!(good.expect("PATCH").header("Upload-Offset"), Some("5"));
}

#[test]
fn cut_after_stores_the_partial_body_and_head_reports_it() {
    let server = TusServer::start(ServerConfig::default());
    let addr = server.addr();
    let body = pattern(4000);
    let path = create(addr, 4000);
    server.push_fault("PATCH", Fault::CutAfter { bytes: 1000 });
    assert!(
        patch(addr, &path, 0, &[], &body).is_err(),
        "no response after a cut"
    );
    assert_eq!(head_offset(addr, &path), Some(1000));
    assert_eq!(server.upload_bytes(id_of(&path)), &body[..1000]);
    let cut = server
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .expect("logged");
    assert_eq!((cut.status, cut.body_bytes), (None, 1000));

    let rest = patch(addr, &path, 1000, &[], &body[1000..]).expect("PATCH");
    assert_eq!(rest.header("Upload-Offset"), Some("4000"));
    assert_eq!(server.upload_bytes(id_of(&path)), body);
}

#[test]
fn faults_replace_answers_lose_responses_and_forget_uploads() {
    let server = TusServer::start(ServerConfig::default());
    let addr = server.addr();
    let path = create(addr, 6);
    let retry = vec![("Retry-After".to_string(), "3".to_string())];
    let busy = Fault::StatusWithHeaders {
        code: 429,
        headers: retry,
        body: "slow down".to_string(),
    };
    server.push_fault("PATCH", busy);
    server.push_fault("PATCH", Fault::DropResponse);
    let throttled = patch(addr, &path, 0, &[], b"abc").expect("PATCH");
    assert_eq!(
        (throttled.status, throttled.header("Retry-After")),
        (429, Some("3"))
    );
    assert_eq!(throttled.body, b"slow down\n");
    assert!(
        patch(addr, &path, 0, &[], b"abc").is_err(),
        "the response is lost"
    );
    assert_eq!(head_offset(addr, &path), Some(3), "but the data was stored");

    server.push_fault("HEAD", Fault::Garbage);
    let portal = request(addr, "HEAD", &path, &[TUS], b"").expect("HEAD");
    assert_eq!((portal.status, portal.header("Tus-Resumable")), (200, None));
    server.push_fault("PATCH", Fault::Forget);
    assert_eq!(
        patch(addr, &path, 3, &[], b"def").expect("PATCH").status,
        404
    );
    assert_eq!(
        request(addr, "HEAD", &path, &[TUS], b"")
            .expect("HEAD")
            .status,
        404
    );
    server.expire(id_of(&create(addr, 1)));
    assert_eq!(
        server
            .uploads()
            .iter()
            .map(|u| (u.deleted, u.expired))
            .collect::<Vec<_>>(),
        [(true, false), (false, true)]
    );
}

#[test]
fn proxy_cuts_after_n_bytes_then_forwards_once_max_cuts_is_reached() {
    let server = TusServer::start(ServerConfig {
        location: LocationStyle::Relative,
        ..ServerConfig::default()
    });
    let plan = ProxyPlan {
        cut_every_bytes: Some(30_000),
        max_cuts: Some(1),
        ..ProxyPlan::default()
    };
    let proxy = FlakyProxy::start(server.addr(), plan);
    assert_eq!(
        proxy.rewrite(&server.endpoint()),
        format!("http://{}/files/", proxy.addr())
    );
    let body = pattern(100_000);
    let path = create(proxy.addr(), 100_000);
    let sent_before = proxy.bytes_up();
    assert!(
        patch(proxy.addr(), &path, 0, &[], &body).is_err(),
        "the connection is reset"
    );
    assert_eq!(
        (proxy.cuts(), proxy.bytes_up()),
        (1, 30_000),
        "cut exactly at the first multiple"
    );
    assert!(sent_before < 30_000);

    // The server notices the reset on its own schedule; it keeps what arrived (the spec's SHOULD).
    let deadline = Instant::now() + Duration::from_secs(5);
    let stored = loop {
        let upload = server.upload(id_of(&path)).expect("upload");
        if upload.offset > 0 || Instant::now() > deadline {
            break upload.offset;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        stored > 0 && stored < 30_000 - sent_before,
        "stored {stored}"
    );
    assert_eq!(server.upload_bytes(id_of(&path)), &body[..stored as usize]);
    let rest = patch(proxy.addr(), &path, stored, &[], &body[stored as usize..]).expect("PATCH");
    assert_eq!(
        (rest.status, rest.header("Upload-Offset")),
        (204, Some("100000"))
    );
    assert_eq!(server.upload_bytes(id_of(&path)), body);
    assert_eq!((proxy.cuts(), proxy.connections()), (1, 3));
}

#[test]
fn proxy_throttle_slows_a_1_mib_upload_to_about_the_rate() {
    let server = TusServer::start(ServerConfig::default());
    let rate = 2 * 1024 * 1024;
    let plan = ProxyPlan {
        throttle_bytes_per_sec: Some(rate),
        ..ProxyPlan::default()
    };
    let proxy = FlakyProxy::start(server.addr(), plan);
    let body = pattern(1024 * 1024);
    let path = create(proxy.addr(), body.len() as u64);
    let started = Instant::now();
    let reply = patch(proxy.addr(), &path, 0, &[], &body).expect("PATCH");
    let elapsed = started.elapsed();
    assert_eq!(reply.header("Upload-Offset"), Some("1048576"));
    // 1 MiB at 2 MiB/s is 0.5 s; allow for a slow, busy machine above, nothing below.
    assert!(
        elapsed >= Duration::from_millis(450),
        "too fast: {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "too slow: {elapsed:?}");
}

#[test]
fn upload_expires_is_an_imf_fixdate() {
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
    let server = TusServer::start(ServerConfig {
        expires_in: Some(Duration::from_secs(3600)),
        ..ServerConfig::default()
    });
    let reply = request(
        server.addr(),
        "POST",
        "/files/",
        &[TUS, ("Upload-Length", "1")],
        b"",
    )
    .expect("POST");
    let expires = reply
        .header("Upload-Expires")
        .expect("Upload-Expires on creation");
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    let near = (0..10)
        .map(|s| http_date(in_an_hour - Duration::from_secs(s)))
        .collect::<Vec<_>>();
    assert!(
        near.iter().any(|d| d == expires),
        "{expires} is not about an hour from now"
    );
}

/// Reads exactly one response from a kept-alive connection (by its Content-Length).
fn read_one(stream: &mut TcpStream, head_request: bool) -> Reply {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("response head");
        bytes.push(byte[0]);
    }
    let mut reply = parse_reply(&bytes, true).expect("a response");
    let length = reply.header("Content-Length").and_then(|v| v.parse().ok());
    let mut body = vec![0u8; if head_request { 0 } else { length.unwrap_or(0) }];
    stream.read_exact(&mut body).expect("response body");
    reply.body = body;
    reply
}

#[test]
fn keep_alive_connection_with_mid_body_and_before_response_stalls() {
    let server = TusServer::start(ServerConfig::default());
    let mut stream = connect(server.addr());
    let post = "POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 2000\r\nContent-Length: 0\r\n\r\n";
    stream.write_all(post.as_bytes()).expect("POST");
    let created = read_one(&mut stream, false);
    let path = created
        .header("Location")
        .and_then(|l| l.find("/files/").map(|i| l[i..].to_string()));
    let path = path.expect("Location");

    let stall = Duration::from_millis(300);
    server.push_fault(
        "PATCH",
        Fault::StallMidBody {
            after_bytes: 1000,
            dur: stall,
        },
    );
    let headers = [
        TUS,
        OCTETS,
        ("Upload-Offset", "0"),
        ("Content-Length", "2000"),
    ];
    let head = head_text("PATCH", &path, &headers, None).replace("Connection: close\r\n", "");
    let started = Instant::now();
    stream.write_all(head.as_bytes()).expect("PATCH head");
    stream.write_all(&pattern(2000)).expect("PATCH body");
    let patched = read_one(&mut stream, false);
    assert_eq!(
        (patched.status, patched.header("Upload-Offset")),
        (204, Some("2000"))
    );
    assert!(started.elapsed() >= stall, "stalled mid-body");

    server.push_fault("HEAD", Fault::StallBeforeResponse { dur: stall });
    let head = head_text("HEAD", &path, &[TUS], None).replace("Connection: close\r\n", "");
    let started = Instant::now();
    stream.write_all(head.as_bytes()).expect("HEAD");
    let probed = read_one(&mut stream, true);
    assert_eq!(
        (probed.status, probed.header("Upload-Offset")),
        (200, Some("2000"))
    );
    assert!(started.elapsed() >= stall, "stalled before the response");
    assert_eq!(
        server.requests().len(),
        3,
        "one connection served all three"
    );
}

#[test]
fn proxy_stalls_the_link_at_each_multiple() {
    let server = TusServer::start(ServerConfig::default());
    let stall_for = Duration::from_millis(200);
    let plan = ProxyPlan {
        stall_every_bytes: Some(10_000),
        stall_for,
        ..ProxyPlan::default()
    };
    let proxy = FlakyProxy::start(server.addr(), plan);
    let path = create(server.addr(), 25_000);
    let started = Instant::now();
    let reply = patch(proxy.addr(), &path, 0, &[], &pattern(25_000)).expect("PATCH");
    assert_eq!(reply.header("Upload-Offset"), Some("25000"));
    assert!(
        started.elapsed() >= stall_for * 2,
        "two stalls: {:?}",
        started.elapsed()
    );
    assert_eq!(proxy.cuts(), 0);
}
