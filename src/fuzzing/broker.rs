//! What `ferry broker` reads from outside: a client's request heads, one after another on a
//! kept-alive connection, and the device tokens file.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{scratch_file, secret_file};
use crate::broker::devices;
use crate::broker::handler::Broker;
use crate::broker::http::{self, Request};
use crate::broker::settings::Settings;
use crate::clock::ManualClock;
use crate::config::{Env, RawBroker};
use crate::transport::{Transport, TransportError};
use crate::tus::{Response as TusResponse, TUS_RESUMABLE};

/// Requests read from one input (the server reads up to 100 per connection).
const MAX_REQUESTS: usize = 8;
/// The largest body the server reads and drops.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// The token of the one device the tokens file lists (seeds send `Bearer dev-token-1`).
const DEVICE_TOKEN: &str = "dev-token-1";

/// A connection's bytes as the broker's server reads them: heads (each answered by the real
/// endpoint against a Stream that always hands out a URL) and small bodies, until the bytes
/// end or a head is refused. Read through buffers of 1, 7 and 8192 bytes, the connection
/// must give the same requests: where a read stops may never change what a head means.
pub fn broker_head(data: &[u8]) {
    let whole = connection(data, 8192);
    for capacity in [1, 7] {
        assert_eq!(
            connection(data, capacity),
            whole,
            "buffer of {capacity} bytes"
        );
    }
}

/// What each request on the connection came to, as text to compare.
fn connection(data: &[u8], capacity: usize) -> Vec<String> {
    let broker = broker();
    let mut reader = BufReader::with_capacity(capacity, data);
    let mut seen = Vec::new();
    for _ in 0..MAX_REQUESTS {
        let req = match http::read_head(&mut reader) {
            Ok(req) => req,
            Err(e) => {
                seen.push(format!("{e:?}"));
                break;
            }
        };
        check_request(&req);
        let body = req.body_length();
        seen.push(format!("{req:?} body {body:?}"));
        let Ok(len) = body else { break };
        if len > MAX_BODY_BYTES || !drop_body(&mut reader, len) {
            break;
        }
        let handled = broker.handle(&req);
        let mut out = Vec::new();
        let written = http::write(&mut out, &handled.response, req.keep_alive(), false);
        assert!(written.is_ok(), "{written:?}");
        assert!(out.starts_with(b"HTTP/1.1 "), "{out:?}");
        seen.push(format!("{:?}", handled.response.status));
        if !req.keep_alive() {
            break;
        }
    }
    seen
}

/// What the server relies on in a head it took.
fn check_request(req: &Request) {
    for (name, value) in &req.headers {
        assert!(!name.is_empty(), "empty field name");
        assert!(!value.contains(['\r', '\n', '\0']), "{name}: {value:?}");
        assert!(
            !value.starts_with([' ', '\t']) && !value.ends_with([' ', '\t']),
            "{name}: {value:?} not trimmed"
        );
    }
    let hosts = req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Host"))
        .count();
    assert!(
        hosts <= 1 && (hosts == 1 || !req.http11),
        "{hosts} Host fields"
    );
    assert!(req.target.len() >= req.path().len());
    if let Ok(n) = req.body_length() {
        let given = req.header("Content-Length");
        assert!(
            given.is_none_or(|v| v.parse() == Ok(n)),
            "{given:?} read as {n}"
        );
    }
}

fn drop_body(r: &mut impl BufRead, len: u64) -> bool {
    std::io::copy(&mut r.take(len), &mut std::io::sink()).is_ok_and(|n| n == len)
}

/// A broker as `ferry broker` builds it from its settings, fresh for each input (rate limits
/// start empty), with a tokens file listing one device and a Stream that always answers 201.
fn broker() -> Broker {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_767_225_600),
    ));
    match Broker::new(settings(), Box::new(StreamCreates), clock) {
        Ok(b) => b,
        Err(e) => panic!("the fuzz target's broker: {e}"),
    }
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let hash: String = Sha256::digest(DEVICE_TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let raw = RawBroker {
            account_id: Some("023e105f4ecef8ad9ca31a8372d0c353".into()),
            api_token_file: Some(secret_file().to_string_lossy().into_owned()),
            device_tokens_file: Some(scratch_file("devices", &format!("cam-1 {hash}\n"))),
            max_duration_seconds: Some(600),
            max_upload_length: Some("1GiB".into()),
            allowed_origins: Some(vec!["https://app.example".into()]),
            forced_metadata: Some([("requiresignedurls".to_string(), String::new())].into()),
            ..RawBroker::default()
        };
        match Settings::resolve_with(&raw, &Env::default(), &Default::default()) {
            Ok(s) => s,
            Err(e) => panic!("the fuzz target's broker settings: {e}"),
        }
    })
}

/// Stream handing out a one-time URL to every creation request.
struct StreamCreates;

impl Transport for StreamCreates {
    fn send(
        &self,
        _req: &crate::tus::Request,
        _body: Option<Box<dyn Read + Send + 'static>>,
    ) -> Result<TusResponse, TransportError> {
        let id = "6b9e68b07dfee8cc2d116e4c51d6a957";
        Ok(TusResponse {
            status: 201,
            headers: vec![
                (
                    "Location".into(),
                    format!("https://upload.videodelivery.net/tus/{id}?tusv2=true"),
                ),
                ("stream-media-id".into(), id.into()),
                ("Tus-Resumable".into(), TUS_RESUMABLE.into()),
            ],
            body: String::new(),
        })
    }
}

/// The device tokens file: every line is a device or a problem, and a problem names its line
/// and what is wrong, never the line's text (which may hold a token).
pub fn device_tokens(data: &[u8]) {
    let parsed = devices::parse(data);
    let lines = data.split(|&b| b == b'\n').count();
    assert!(parsed.devices.len() + parsed.problems.len() <= lines);
    for d in &parsed.devices {
        assert!(!d.name.is_empty() && !d.name.contains(char::is_whitespace));
    }
    for p in &parsed.problems {
        let what = p.split_once(": ").map(|(_, what)| what);
        assert!(
            matches!(
                what,
                Some(
                    "not UTF-8 text"
                        | "the same token hash as an earlier line"
                        | "expected `<device name> <sha256 hex of its token>`"
                        | "the second field is not 64 hex digits (a SHA-256)"
                )
            ),
            "a problem that may echo the line: {p:?}"
        );
    }
}
