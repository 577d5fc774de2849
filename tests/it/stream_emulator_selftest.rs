//! Self-tests of the Cloudflare Stream emulator, driven with hand-written HTTP/1.1 over std
//! `TcpStream` (not ferry's client), so a failure here is the emulator's.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use base64::Engine as _;

use crate::support::stream_emulator::{
    cloudflare_error, CreationFault, Origin, StreamConfig, StreamEmulator, CHUNK_MIN,
    CHUNK_MULTIPLE,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");
const OCTETS: (&str, &str) = ("Content-Type", "application/offset+octet-stream");

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

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// `http://127.0.0.1:port/path?query` → (address, `/path?query`).
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').expect("a path"));
    (authority.parse().expect("ip:port"), path.to_string())
}

/// How the request body goes on the wire.
enum Body<'a> {
    None,
    Length(&'a [u8]),
    /// `Transfer-Encoding: chunked`, in HTTP chunks of this many bytes.
    Chunked(&'a [u8], usize),
}

/// One request on its own connection (`Connection: close`, so the answer ends at EOF), with an
/// optional client read timeout.
fn send(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
    read_timeout: Duration,
) -> io::Result<Reply> {
    let (addr, path) = split_url(url);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &body {
        Body::None if matches!(method, "POST" | "PATCH") => head += "Content-Length: 0\r\n",
        Body::None => {}
        Body::Length(bytes) => head += &format!("Content-Length: {}\r\n", bytes.len()),
        Body::Chunked(..) => head += "Transfer-Encoding: chunked\r\n",
    }
    head += "\r\n";
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(head.as_bytes())?;
    match body {
        Body::None => {}
        Body::Length(bytes) => stream.write_all(bytes)?,
        Body::Chunked(bytes, size) => {
            for chunk in bytes.chunks(size) {
                stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                stream.write_all(chunk)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")?;
        }
    }
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse_reply(&bytes, method == "HEAD")
        .ok_or_else(|| io::Error::other(format!("no response in {} bytes", bytes.len())))
}

fn request(url: &str, method: &str, headers: &[(&str, &str)], body: Body<'_>) -> Reply {
    send(url, method, headers, body, TIMEOUT).expect("a response")
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

fn bearer(stream: &StreamEmulator) -> String {
    format!("Bearer {}", stream.api_token())
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Creates a video of `length` bytes with the API token; returns (upload URL, uid).
fn create(stream: &StreamEmulator, length: u64, direct_user: bool) -> (String, String) {
    let endpoint = stream.creation_endpoint();
    let url = if direct_user {
        format!("{endpoint}?direct_user=true")
    } else {
        endpoint
    };
    let (auth, length) = (bearer(stream), length.to_string());
    let headers = [
        TUS,
        ("Authorization", auth.as_str()),
        ("Upload-Length", &length),
    ];
    let reply = request(&url, "POST", &headers, Body::None);
    assert_eq!(reply.status, 201, "creation: {:?}", reply.body);
    let location = reply.header("Location").expect("Location").to_string();
    let uid = reply.header("stream-media-id").expect("stream-media-id");
    (location, uid.to_string())
}

fn patch(url: &str, auth: Option<&str>, offset: u64, body: Body<'_>) -> Reply {
    let offset = offset.to_string();
    let mut headers = vec![TUS, OCTETS, ("Upload-Offset", offset.as_str())];
    headers.extend(auth.map(|a| ("Authorization", a)));
    request(url, "PATCH", &headers, body)
}

fn head(url: &str, auth: Option<&str>) -> Reply {
    let mut headers = vec![TUS];
    headers.extend(auth.map(|a| ("Authorization", a)));
    request(url, "HEAD", &headers, Body::None)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn stream_emulator_creation_needs_the_token_and_records_metadata() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let endpoint = stream.creation_endpoint();
    assert_eq!(
        endpoint,
        format!("{}/accounts/acct-test/stream", stream.api_base())
    );
    assert!(stream.api_base().ends_with("/client/v4"));
    let auth = bearer(&stream);

    for bad in [
        None,
        Some("Bearer wrong-token"),
        Some("stream-token-for-tests"),
    ] {
        let mut headers = vec![TUS, ("Upload-Length", "10")];
        headers.extend(bad.map(|a| ("Authorization", a)));
        let reply = request(&endpoint, "POST", &headers, Body::None);
        assert_eq!(reply.status, 401, "{bad:?}");
        let json = reply.json();
        assert_eq!(json["success"], false);
        assert_eq!(json["errors"][0]["code"], 10000);
        assert_eq!(json["errors"][0]["message"], "Authentication error");
        assert!(json["result"].is_null() && json["messages"] == serde_json::json!([]));
    }
    let no_tus = [("Authorization", auth.as_str()), ("Upload-Length", "10")];
    let reply = request(&endpoint, "POST", &no_tus, Body::None);
    assert_eq!(reply.status, 412);
    assert_eq!(reply.header("Tus-Version"), Some("1.0.0"));
    let no_length = [TUS, ("Authorization", auth.as_str())];
    let reply = request(&endpoint, "POST", &no_length, Body::None);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["success"], false);
    assert!(
        stream.videos().is_empty(),
        "refused creations create nothing"
    );

    let metadata = format!(
        "name {},requiresignedurls,expiry {},maxDurationSeconds {}",
        b64("clip.mp4"),
        b64("2030-01-02T03:04:05Z"),
        b64("600")
    );
    let headers = [
        TUS,
        ("Authorization", auth.as_str()),
        ("Upload-Length", "10"),
        ("Upload-Metadata", &metadata),
    ];
    let reply = request(&endpoint, "POST", &headers, Body::None);
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("Tus-Resumable"), Some("1.0.0"));
    let uid = reply.header("stream-media-id").expect("stream-media-id");
    assert!(
        uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{uid}"
    );
    assert_eq!(
        reply.header("Location"),
        Some(format!("{endpoint}/{uid}").as_str())
    );

    let [video] = &stream.videos()[..] else {
        panic!("one video: {:?}", stream.videos());
    };
    assert_eq!(
        (video.uid.as_str(), video.length, video.offset),
        (uid, 10, 0)
    );
    assert!(!video.direct_user && !video.complete && video.order == 0);
    assert_eq!(video.meta("name"), Some(Some("clip.mp4")));
    assert_eq!(video.meta("requiresignedurls"), Some(None));
    assert_eq!(video.expiry.as_deref(), Some("2030-01-02T03:04:05Z"));
    assert_eq!(video.max_duration_seconds.as_deref(), Some("600"));

    // The API-origin upload URL needs the token too.
    let location = video.upload_url.clone();
    assert_eq!(head(&location, None).status, 401);
    let reply = head(&location, Some(&auth));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Upload-Offset"), Some("0"));
    assert_eq!(reply.header("Upload-Length"), Some("10"));
    assert_eq!(reply.header("stream-media-id"), Some(uid));
    let reply = request(&location, "HEAD", &[("Authorization", &auth)], Body::None);
    assert_eq!(reply.status, 412, "Tus-Resumable is required on HEAD");

    let log = stream.requests();
    assert!(log.iter().all(|r| r.origin == Origin::Api));
    assert_eq!(log[0].status, Some(401));
    assert_eq!(log[0].path, "/client/v4/accounts/acct-test/stream");
}

#[test]
fn stream_emulator_direct_user_url_is_on_the_upload_origin_without_auth() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let (location, uid) = create(&stream, 5, true);
    assert_eq!(
        location,
        format!("{}/tus/{uid}?tusv2=true", stream.upload_origin())
    );
    assert_ne!(stream.upload_addr().port(), stream.api_addr().port());

    let reply = head(&location, None);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("stream-media-id"), Some(uid.as_str()));
    let reply = patch(&location, None, 0, Body::Length(b"hello"));
    assert_eq!(
        reply.status,
        204,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("Upload-Offset"), Some("5"));
    assert_eq!(reply.header("stream-media-id"), Some(uid.as_str()));
    let video = stream.video(&uid).expect("the video");
    assert!(video.direct_user && video.complete);
    assert!(!video.authorization_on_upload_origin);
    assert_eq!(stream.video_bytes(&uid), b"hello");

    // The video is served at its one-time URL only, not on the API origin.
    let on_api = format!("{}/{uid}", stream.creation_endpoint());
    assert_eq!(head(&on_api, Some(&bearer(&stream))).status, 404);

    // Any Authorization reaching the upload origin is recorded.
    assert_eq!(head(&location, Some("Bearer leaked")).status, 200);
    assert!(
        stream
            .video(&uid)
            .expect("the video")
            .authorization_on_upload_origin
    );
    let upload_log: Vec<_> = stream
        .requests()
        .into_iter()
        .filter(|r| r.origin == Origin::Upload)
        .collect();
    assert_eq!(upload_log.len(), 3);
    assert_eq!(upload_log[0].path, format!("/tus/{uid}?tusv2=true"));
    assert_eq!(upload_log[2].header("authorization"), Some("Bearer leaked"));
}

#[test]
fn stream_emulator_enforces_the_chunk_rules() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let (location, uid) = create(&stream, 8 * 1024 * 1024, true);
    let bad_sizes = [
        1024 * 1024,                                  // multiple of 256 KiB, under 5 MiB
        CHUNK_MIN as usize + 1,                       // over 5 MiB, not a multiple
        (CHUNK_MIN + CHUNK_MULTIPLE) as usize - 4096, // not a multiple either
    ];
    for size in bad_sizes {
        let reply = patch(&location, None, 0, Body::Length(&pattern(size)));
        assert_eq!(reply.status, 400, "{size} bytes");
        let message = String::from_utf8_lossy(&reply.body);
        assert!(
            message.contains("262144") && message.contains("5242880"),
            "{message}"
        );
        assert_eq!(reply.header("stream-media-id"), Some(uid.as_str()));
    }
    // Chunked framing: the size is checked once the body has arrived; nothing is kept.
    let reply = patch(&location, None, 0, Body::Chunked(&pattern(300_000), 65_536));
    assert_eq!(reply.status, 400);
    let video = stream.video(&uid).expect("the video");
    assert_eq!(video.offset, 0);
    assert!(stream.video_bytes(&uid).is_empty(), "nothing stored");

    // With the rules off, any size goes.
    let lax = StreamEmulator::start(StreamConfig {
        chunk_rules: false,
        ..StreamConfig::default()
    });
    let (location, uid) = create(&lax, 1000, false);
    let auth = bearer(&lax);
    let reply = patch(&location, Some(&auth), 0, Body::Length(&pattern(10)));
    assert_eq!(reply.status, 204);
    assert_eq!(lax.video(&uid).expect("the video").offset, 10);
}

#[test]
fn stream_emulator_compliant_chunks_complete_a_video() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let data = pattern(CHUNK_MIN as usize + 1_234_567);
    let (location, uid) = create(&stream, data.len() as u64, true);
    let first = &data[..CHUNK_MIN as usize];
    let reply = patch(&location, None, 0, Body::Length(first));
    assert_eq!(
        reply.status,
        204,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("Upload-Offset"), Some("5242880"));
    assert!(!stream.video(&uid).expect("the video").complete);

    let stale = patch(&location, None, 0, Body::Length(b"late"));
    assert_eq!(stale.status, 409, "offset mismatch");
    let past_end = patch(
        &location,
        None,
        CHUNK_MIN,
        Body::Length(&pattern(1_234_568)),
    );
    assert_eq!(past_end.status, 413, "more bytes than Upload-Length allows");

    // The last chunk may be any size; send it chunked-encoded.
    let last = &data[CHUNK_MIN as usize..];
    let reply = patch(&location, None, CHUNK_MIN, Body::Chunked(last, 100_000));
    assert_eq!(
        reply.status,
        204,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    let total = data.len().to_string();
    assert_eq!(reply.header("Upload-Offset"), Some(total.as_str()));
    assert_eq!(
        head(&location, None).header("Upload-Offset"),
        Some(total.as_str())
    );
    let video = stream.video(&uid).expect("the video");
    assert!(video.complete && video.offset == data.len() as u64);
    assert!(stream.video_bytes(&uid) == data, "stored bytes differ");

    // DELETE terminates; later requests get 404.
    let reply = request(&location, "DELETE", &[TUS], Body::None);
    assert_eq!(reply.status, 204);
    assert_eq!(head(&location, None).status, 404);
    assert!(stream.video(&uid).expect("the video").deleted);
}

#[test]
fn stream_emulator_upload_urls_expire() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let (location, uid) = create(&stream, CHUNK_MIN * 2, true);
    assert_eq!(head(&location, None).status, 200);
    stream.expire(&uid);
    let reply = head(&location, None);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("stream-media-id"), Some(uid.as_str()));
    let reply = patch(
        &location,
        None,
        0,
        Body::Length(&pattern(CHUNK_MIN as usize)),
    );
    assert_eq!(reply.status, 404);
    assert!(stream.video(&uid).expect("the video").expired);
    assert!(stream.video_bytes(&uid).is_empty());

    let short = StreamEmulator::start(StreamConfig {
        url_lifetime: Duration::from_millis(300),
        ..StreamConfig::default()
    });
    let (location, uid) = create(&short, 10, false);
    let auth = bearer(&short);
    assert_eq!(head(&location, Some(&auth)).status, 200);
    thread::sleep(Duration::from_millis(400));
    assert_eq!(head(&location, Some(&auth)).status, 404);
    assert!(short.video(&uid).expect("the video").expired);
}

#[test]
fn stream_emulator_creation_faults() {
    let stream = StreamEmulator::start(StreamConfig::default());
    let endpoint = format!("{}?direct_user=true", stream.creation_endpoint());
    let auth = bearer(&stream);
    let headers = [
        TUS,
        ("Authorization", auth.as_str()),
        ("Upload-Length", "1"),
    ];

    let busy = cloudflare_error(10011, "Too many requests");
    stream.set_creation_fault(Some(CreationFault::Status {
        code: 429,
        body: busy.clone(),
    }));
    for _ in 0..2 {
        let reply = request(&endpoint, "POST", &headers, Body::None);
        assert_eq!(reply.status, 429, "the fault stays until cleared");
        assert_eq!(reply.body, busy.as_bytes());
    }
    stream.set_creation_fault(None);
    stream.push_creation_fault(CreationFault::StatusWithHeaders {
        code: 429,
        headers: vec![("Retry-After".to_string(), "1".to_string())],
        body: busy,
    });
    let reply = request(&endpoint, "POST", &headers, Body::None);
    assert_eq!(
        (reply.status, reply.header("Retry-After")),
        (429, Some("1"))
    );
    assert!(stream.videos().is_empty());

    // A stalled API: the client gives up first, and no video appears.
    stream.set_creation_fault(Some(CreationFault::Stall(Duration::from_millis(800))));
    let gave_up = send(
        &endpoint,
        "POST",
        &headers,
        Body::None,
        Duration::from_millis(200),
    );
    let err = gave_up.err().expect("a client time-out");
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    // A patient client gets its answer after the stall.
    let reply = request(&endpoint, "POST", &headers, Body::None);
    assert_eq!(reply.status, 201);
    stream.set_creation_fault(None);
    thread::sleep(Duration::from_millis(800)); // the abandoned request's stall is over
    assert_eq!(stream.videos().len(), 1, "{:?}", stream.videos());
    let statuses: Vec<_> = stream.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Some(429), Some(429), Some(429), None, Some(201)],
        "the abandoned request got no answer"
    );
}
