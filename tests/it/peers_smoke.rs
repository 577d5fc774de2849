//! The peers themselves work: a bare tus 1.0 round trip (OPTIONS, creation, two PATCHes,
//! HEAD) in hand-written HTTP/1.1, not ferry's client, so a failure here is the peer's setup.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::support::peers::{NodeOpts, Peer};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on its own connection (`Connection: close`, so the response ends at EOF).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect to peer");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("set timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PATCH" || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .expect("send request head");
    stream.write_all(body).expect("send request body");

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8_lossy(&raw);
    let (head, _body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: incomplete response {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // `HTTP/1.1 201 Created`; @tus/server sends no reason phrase (`HTTP/1.1 201 `).
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response { status, headers }
}

/// The request path of an upload URL that may be absolute (`http://host/files/id`) or not.
fn path_of(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/".into(), |i| rest[i..].to_owned()),
        None => url.to_owned(),
    }
}

fn round_trip(peer: &Peer) {
    let addr = peer.addr();
    let endpoint = path_of(&peer.endpoint());
    assert_eq!(endpoint, "/files/");
    // Below rustus' 256 KiB PATCH body limit; not a multiple of anything.
    let data: Vec<u8> = (0..100_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let tus = ("Tus-Resumable", "1.0.0");
    let octets = ("Content-Type", "application/offset+octet-stream");

    let options = request(addr, "OPTIONS", &endpoint, &[], b"");
    assert!(
        matches!(options.status, 200 | 204),
        "OPTIONS: {}",
        options.status
    );
    assert_eq!(options.header("Tus-Version"), Some("1.0.0"));
    let extensions = options.header("Tus-Extension").unwrap_or_default();
    assert!(
        extensions.split(',').any(|e| e.trim() == "creation"),
        "{extensions}"
    );

    let length = data.len().to_string();
    let created = request(
        addr,
        "POST",
        &endpoint,
        &[
            tus,
            ("Upload-Length", &length),
            ("Upload-Metadata", "filename c21va2UuYmlu"),
        ],
        b"",
    );
    assert_eq!(created.status, 201, "creation");
    let location = created.header("Location").expect("Location").to_owned();
    let upload = path_of(&location);
    assert!(
        upload.starts_with("/files/") && upload.len() > "/files/".len(),
        "{location}"
    );

    let half = data.len() / 2;
    let first = request(
        addr,
        "PATCH",
        &upload,
        &[tus, octets, ("Upload-Offset", "0")],
        &data[..half],
    );
    assert_eq!(first.status, 204, "first PATCH");
    assert_eq!(
        first.header("Upload-Offset"),
        Some(half.to_string().as_str())
    );

    let head = request(addr, "HEAD", &upload, &[tus], b"");
    assert_eq!(head.status, 200, "HEAD after first PATCH");
    let offset = head
        .header("Upload-Offset")
        .expect("Upload-Offset")
        .to_owned();
    assert_eq!(offset, half.to_string());

    let second = request(
        addr,
        "PATCH",
        &upload,
        &[tus, octets, ("Upload-Offset", &offset)],
        &data[half..],
    );
    assert_eq!(second.status, 204, "second PATCH");
    assert_eq!(second.header("Upload-Offset"), Some(length.as_str()));

    let head = request(addr, "HEAD", &upload, &[tus], b"");
    assert_eq!(head.status, 200, "final HEAD");
    assert_eq!(head.header("Upload-Offset"), Some(length.as_str()));
    assert_eq!(head.header("Upload-Length"), Some(length.as_str()));

    assert!(
        peer.stored_bytes(&location) == data,
        "stored bytes differ from the sent bytes"
    );
    assert_eq!(peer.stored_path(&location), peer.stored_path(&upload));
    assert_eq!(peer.upload_count(), 1);
}

#[test]
fn node_tus_server_round_trip() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    round_trip(&peer);
}

#[test]
fn rustus_round_trip() {
    let peer = Peer::rustus();
    round_trip(&peer);
}
