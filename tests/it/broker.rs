//! `ferry broker` end to end: the real binary between raw-HTTP devices (and tus-js-client)
//! and the Cloudflare Stream emulator (`support::stream_emulator`), all on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::harness::{assert_same_bytes, ferry, random_bytes, signal, Scratch};
use crate::support::stream_emulator::{
    cloudflare_error, CreationFault, StreamConfig, StreamEmulator,
};

pub const PATH: &str = "/generate-tus-upload-request";
pub const CAM1: (&str, &str) = ("cam-1", "device-token-cam-1-Qx7vK2");
pub const CAM2: (&str, &str) = ("cam-2", "device-token-cam-2-Jp3mW9");
const MAX_DURATION: u64 = 600;
const URL_EXPIRY: u64 = 900;

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A device tokens file's line for `device`.
fn device_line(device: (&str, &str)) -> String {
    format!("{} {}\n", device.0, sha256_hex(device.1))
}

pub fn bearer(device: (&str, &str)) -> String {
    format!("Bearer {}", device.1)
}

/// A running `ferry broker` in front of an emulator; killed on drop.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _scratch: Scratch,
}

impl Broker {
    /// Starts the broker for `emu` with `[broker]` keys `extra` added to its config file.
    pub fn start(emu: &StreamEmulator, extra: &str) -> Broker {
        Broker::start_logging(emu, extra, "info")
    }

    pub fn start_logging(emu: &StreamEmulator, extra: &str, rust_log: &str) -> Broker {
        Broker::start_with(emu, extra, rust_log, None)
    }

    /// The same, with `devices` as the device tokens file's text (instead of cam-1 and cam-2).
    fn start_with(
        emu: &StreamEmulator,
        extra: &str,
        rust_log: &str,
        devices: Option<&str>,
    ) -> Broker {
        let scratch = Scratch::new("broker");
        let (config, args) = broker_files(&scratch, emu, extra);
        if let Some(text) = devices {
            std::fs::write(scratch.dir.join("devices"), text).unwrap();
        }
        let mut child = ferry()
            .env("RUST_LOG", rust_log)
            .arg("broker")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.split_once("listening on ").map(|(_, rest)| {
                    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
                    rest.split('/').next().unwrap_or_default().to_string()
                });
                lines.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the broker did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Broker {
            child,
            addr,
            log,
            _scratch: scratch,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{PATH}", self.addr)
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits up to 10 s for a log line containing `needle` (a request's line follows its
    /// answer); panics with the log otherwise.
    pub fn expect_log(&self, needle: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < until,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to 10 s until the log holds `n` lines containing `needle`; panics otherwise.
    pub fn expect_log_count(&self, needle: &str, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < until,
                "fewer than {n} log lines with {needle:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The device tokens file the broker reads.
    fn devices_file(&self) -> PathBuf {
        self._scratch.dir.join("devices")
    }

    /// `GET /healthz`.
    fn health(&self) -> Reply {
        send(self.addr, "GET", "/healthz", &[], b"")
    }

    /// `POST <path>` from `device` (if any) with `headers`.
    pub fn post(&self, device: Option<(&str, &str)>, headers: &[(&str, &str)]) -> Reply {
        let auth = device.map(bearer);
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = &auth {
            all.push(("Authorization", a));
        }
        all.push(("Tus-Resumable", "1.0.0"));
        send(self.addr, "POST", PATH, &all, b"")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the token files and the config; returns the config path and the flags to pass
/// (the keys given as flags test the flags).
fn broker_files(scratch: &Scratch, emu: &StreamEmulator, extra: &str) -> (PathBuf, Vec<String>) {
    let token = scratch.dir.join("stream-api-token");
    std::fs::write(&token, format!("{}\n", emu.api_token())).unwrap();
    let devices = scratch.dir.join("devices");
    let text = format!(
        "# name sha256(token)\n{} {}\n{} {}\n",
        CAM1.0,
        sha256_hex(CAM1.1),
        CAM2.0,
        sha256_hex(CAM2.1)
    );
    std::fs::write(&devices, text).unwrap();
    let config = scratch.dir.join("broker.toml");
    let toml = format!(
        "[broker]\nlisten = \"127.0.0.1:0\"\naccount_id = {:?}\ndevice_tokens_file = {:?}\n{extra}\n",
        emu.account_id(),
        devices.to_str().unwrap()
    );
    std::fs::write(&config, toml).unwrap();
    let args = [
        "--api-base",
        &emu.api_base(),
        "--api-token-file",
        token.to_str().unwrap(),
        "--max-duration-seconds",
        &MAX_DURATION.to_string(),
        "--url-expiry-seconds",
        &URL_EXPIRY.to_string(),
    ]
    .map(String::from)
    .to_vec();
    (config, args)
}

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.raw))
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    exchange(s, &addr.to_string(), method, target, headers, body)
}

/// The same over TLS, trusting the test CA (`tests/fixtures/tls`).
pub fn send_tls(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    use rustls::pki_types::pem::PemObject;
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let tls = rustls::StreamOwned::new(conn, tcp);
    exchange(tls, "localhost", method, target, headers, b"")
}

pub fn exchange(
    mut s: impl Read + Write,
    host: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PATCH" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

pub fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
        raw: text,
    }
}

/// `http://host:port/path?query` → (address, "/path?query").
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let slash = rest.find('/').unwrap();
    (rest[..slash].parse().unwrap(), rest[slash..].to_string())
}

fn metadata(entries: &[(&str, Option<&str>)]) -> String {
    let entries: Vec<(String, Option<String>)> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
    ferry::tus::metadata::encode(&entries).unwrap().unwrap()
}

/// Seconds since the epoch of an RFC 3339 UTC time `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_secs(t: &str) -> u64 {
    let n = |r: std::ops::Range<usize>| -> u64 { t[r].parse().unwrap() };
    assert_eq!((t.len(), &t[10..11], &t[19..]), (20, "T", "Z"), "{t}");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // days_from_civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn broker_device_gets_a_one_time_url_and_uploads_to_it() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let data = random_bytes(1_500_000, 41);
    let meta = metadata(&[
        ("name", Some("gate cam")),
        ("filename", Some("clip.mp4")),
        ("requiresignedurls", None),
        ("scheduleddeletion", Some("2030-01-01T00:00:00Z")),
        ("camera-secret-field", Some("x")),
        ("maxDurationSeconds", Some("99999")),
        ("maxdurationseconds", Some("99999")),
        ("expiry", Some("2099-01-01T00:00:00Z")),
    ]);
    let len = data.len().to_string();
    let before = now_secs();
    let r = broker.post(
        Some(CAM1),
        &[("Upload-Length", &len), ("Upload-Metadata", &meta)],
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.header("Tus-Resumable"), Some("1.0.0"));
    let location = r.header("Location").unwrap().to_string();
    assert!(
        location.starts_with(&format!("{}/tus/", emu.upload_origin())),
        "{location}"
    );
    let media_id = r.header("Stream-Media-ID").unwrap().to_string();

    // The device uploads with raw HTTP, without any token.
    let (addr, target) = split_url(&location);
    let patch = send(
        addr,
        "PATCH",
        &target,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Upload-Offset", "0"),
            ("Content-Type", "application/offset+octet-stream"),
        ],
        &data,
    );
    assert_eq!(patch.status, 204, "{}", patch.raw);
    assert_eq!(patch.header("Upload-Offset"), Some(len.as_str()));
    let head = send(addr, "HEAD", &target, &[("Tus-Resumable", "1.0.0")], b"");
    assert_eq!(head.header("Upload-Offset"), Some(len.as_str()));

    let video = emu.video(&media_id).expect("the video the broker named");
    assert!(video.direct_user && video.complete && !video.authorization_on_upload_origin);
    assert_same_bytes(&emu.video_bytes(&media_id), &data, "stored video");
    // Only allowed keys pass; the broker's limits replace whatever the device sent.
    assert_eq!(video.meta("name"), Some(Some("gate cam")));
    assert_eq!(video.meta("filename"), Some(Some("clip.mp4")));
    assert_eq!(video.meta("requiresignedurls"), Some(None));
    assert_eq!(video.meta("scheduleddeletion"), None);
    assert_eq!(video.meta("camera-secret-field"), None);
    assert_eq!(video.meta("maxdurationseconds"), None);
    assert_eq!(video.max_duration_seconds.as_deref(), Some("600"));
    let expiry = rfc3339_secs(video.expiry.as_deref().unwrap());
    assert!(
        (before + URL_EXPIRY..=now_secs() + URL_EXPIRY).contains(&expiry),
        "expiry {expiry} vs now {before} + {URL_EXPIRY}"
    );
    // The creation carried the API token; one line in the log names device and video.
    let creation = emu
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(
        creation.path,
        format!(
            "/client/v4/accounts/{}/stream?direct_user=true",
            emu.account_id()
        )
    );
    assert_eq!(
        creation.header("authorization"),
        Some(format!("Bearer {}", emu.api_token()).as_str())
    );
    broker.expect_log(&format!("POST {PATH} 201 device=cam-1 media_id={media_id}"));
}

#[test]
fn broker_refuses_unknown_device_tokens_with_401() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    for device in [None, Some(("x", "not-a-device-token"))] {
        let r = broker.post(device, &[("Upload-Length", "100")]);
        assert_eq!(r.status, 401, "{}", r.raw);
        assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
        assert!(r.json()["error"].as_str().unwrap().contains("device token"));
    }
    // Stream's API token is not a device token either.
    let r = broker.post(
        Some(("stream", &emu.api_token())),
        &[("Upload-Length", "100")],
    );
    assert_eq!(r.status, 401);
    assert!(emu.videos().is_empty());
    // A device added to the file is known at once, without a restart.
    let new = CAM3;
    let devices = broker._scratch.dir.join("devices");
    let mut text = std::fs::read_to_string(&devices).unwrap();
    text.push_str(&format!("{} {}\n", new.0, sha256_hex(new.1)));
    std::fs::write(&devices, text).unwrap();
    let r = broker.post(Some(new), &[("Upload-Length", "100")]);
    assert_eq!(r.status, 201, "{}", r.raw);
    broker.expect_log("201 device=cam-3");
}

const CAM3: (&str, &str) = ("cam-3", "device-token-cam-3-Lr5");
const UP: [(&str, &str); 1] = [("Upload-Length", "100")];
const NOT_HEX: &str = "the second field is not 64 hex digits (a SHA-256)";

/// Issue 15: a device removed from the tokens file kept getting URLs while another line was
/// malformed (the whole old set was kept, and the problem was only in a log line).
#[test]
fn broker_revoked_device_gets_401_while_another_line_is_malformed() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    assert_eq!(broker.post(Some(CAM2), &UP).status, 201);
    let h = broker.health();
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["devices"], 2);
    // cam-2 revoked, and a typo on the next line (a hash one digit short).
    let typo = &sha256_hex("some other token")[..63];
    let path = broker.devices_file();
    std::fs::write(&path, format!("{}cam-9 {typo}\n", device_line(CAM1))).unwrap();
    let r = broker.post(Some(CAM2), &UP);
    assert_eq!(r.status, 401, "{}", r.raw);
    for _ in 0..3 {
        assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
    }
    // Still 200 (cam-1 is served), but the problem is visible without the log.
    let h = broker.health();
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(
        h.json(),
        serde_json::json!({"status": "degraded", "devices": 1, "device_tokens_file":
            {"ok": false, "readable": true, "problems": [format!("line 2: {NOT_HEX}")]}})
    );
    // One error per read, not per request, naming the file and the line, never the hash.
    broker.expect_log_count("201 device=cam-1", 3);
    let needle = format!(
        "device tokens file {}: skipped bad lines (line 2:",
        path.display()
    );
    assert_eq!(broker.log().matches(&needle).count(), 1, "{}", broker.log());
    assert!(!broker.log().contains(typo), "{}", broker.log());
    assert!(!h.raw.contains(typo), "{}", h.raw);
    // SIGHUP reads it again: the same problem, logged again, and cam-2 still refused.
    signal(&broker.child, "HUP");
    broker.expect_log_count(&needle, 2);
    assert_eq!(broker.post(Some(CAM2), &UP).status, 401);
    assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
}

/// Issue 15: a deleted tokens file kept every device it had listed.
#[test]
fn broker_deleted_device_tokens_file_refuses_every_device_and_health_is_503() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
    let path = broker.devices_file();
    std::fs::remove_file(&path).unwrap();
    for device in [CAM1, CAM2] {
        let r = broker.post(Some(device), &UP);
        assert_eq!(r.status, 401, "{}", r.raw);
    }
    let h = broker.health();
    assert_eq!(h.status, 503, "{}", h.raw);
    let body = h.json();
    assert_eq!(body["status"], "down");
    assert_eq!(body["devices"], 0);
    assert_eq!(body["device_tokens_file"]["readable"], false);
    let problem = body["device_tokens_file"]["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with("the file cannot be read: No such file"),
        "{problem}"
    );
    broker.expect_log(&format!(
        "device tokens file {}: the file cannot be read",
        path.display()
    ));
    // Back in place: served again, without a restart.
    std::fs::write(&path, device_line(CAM1)).unwrap();
    assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
    assert_eq!(broker.post(Some(CAM2), &UP).status, 401);
    let h = broker.health();
    assert_eq!((h.status, &h.json()["status"]), (200, &"ok".into()));
}

/// Issue 15: a tokens file read while being rewritten kept the old set; now its complete
/// lines apply and the cut line is reported until the write is finished.
#[test]
fn broker_half_written_device_tokens_file_applies_its_complete_lines() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let full = [CAM1, CAM3, CAM2].map(device_line).concat();
    // Cut in the middle of cam-2's hash, as a non-atomic rewrite can be seen.
    let path = broker.devices_file();
    std::fs::write(&path, &full[..full.len() - 20]).unwrap();
    assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
    assert_eq!(broker.post(Some(CAM3), &UP).status, 201);
    assert_eq!(broker.post(Some(CAM2), &UP).status, 401);
    let h = broker.health();
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(
        h.json()["device_tokens_file"]["problems"],
        serde_json::json!([format!("line 3: {NOT_HEX}")])
    );
    std::fs::write(&path, &full).unwrap();
    assert_eq!(broker.post(Some(CAM2), &UP).status, 201);
    let h = broker.health();
    assert_eq!((h.status, &h.json()["status"]), (200, &"ok".into()));
    assert_eq!(h.json()["devices"], 3);
}

/// At start a bad line is skipped (and shown); a file that cannot be read stops the broker.
#[test]
fn broker_starts_despite_a_bad_line_but_not_without_its_device_tokens_file() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let text = format!("{}not a device line at all\n", device_line(CAM1));
    let broker = Broker::start_with(&emu, "", "info", Some(&text));
    assert_eq!(broker.post(Some(CAM1), &UP).status, 201);
    assert_eq!(broker.post(Some(CAM2), &UP).status, 401);
    let h = broker.health();
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(
        h.json()["device_tokens_file"]["problems"],
        serde_json::json!(["line 2: expected `<device name> <sha256 hex of its token>`"])
    );
    broker.expect_log("skipped bad lines (line 2:");

    let scratch = Scratch::new("broker-no-devices");
    let (config, args) = broker_files(&scratch, &emu, "");
    let out = ferry()
        .arg("broker")
        .arg("--config")
        .arg(&config)
        .args(&args)
        .args(["--device-tokens-file", "/nonexistent/devices"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("broker.device_tokens_file") && err.contains("/nonexistent/devices"),
        "{err}"
    );
}

#[test]
fn broker_serves_https_with_its_own_certificate() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        tls.join("server.pem").to_str().unwrap(),
        tls.join("server.key").to_str().unwrap()
    );
    let broker = Broker::start(&emu, &extra);
    assert!(
        broker.log().contains("listening on https://"),
        "{}",
        broker.log()
    );
    let auth = bearer(CAM1);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Upload-Length", "10"),
        ("Tus-Resumable", "1.0.0"),
    ];
    let r = send_tls(broker.addr, "POST", PATH, &headers);
    assert_eq!(r.status, 201, "{}", r.raw);
    assert!(r.header("Stream-Media-ID").is_some());
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(broker.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    plain
        .write_all(format!("POST {PATH} HTTP/1.1\r\nUpload-Length: 10\r\n\r\n").as_bytes())
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn broker_answers_400_for_a_missing_bad_or_too_large_upload_length() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "max_upload_length = \"1GiB\"");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "missing"),
        (&[("Upload-Length", "ten")], "not a whole number"),
        (&[("Upload-Length", "-1")], "not a whole number"),
        (&[("Upload-Length", "0")], "above 0"),
        (
            &[("Upload-Length", "1073741825")],
            "above the limit of 1073741824",
        ),
    ];
    for (headers, says) in cases {
        let r = broker.post(Some(CAM1), headers);
        assert_eq!(r.status, 400, "{headers:?}: {}", r.raw);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("Upload-Length") && error.contains(says),
            "{error}"
        );
    }
    assert!(emu.videos().is_empty(), "nothing reached Stream");
}

#[test]
fn broker_rate_limits_each_device_with_429_and_retry_after() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "urls_per_hour = 2");
    for _ in 0..2 {
        assert_eq!(
            broker.post(Some(CAM1), &[("Upload-Length", "10")]).status,
            201
        );
    }
    let r = broker.post(Some(CAM1), &[("Upload-Length", "10")]);
    assert_eq!(r.status, 429, "{}", r.raw);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((1790..=1800).contains(&wait), "{wait}");
    assert_eq!(
        broker.post(Some(CAM2), &[("Upload-Length", "10")]).status,
        201,
        "another device has its own budget"
    );
    assert_eq!(emu.videos().len(), 3);
}

#[test]
fn broker_stream_outage_does_not_use_up_the_devices_hourly_allowance() {
    // Before: each failed call counted, so after an outage devices got 429 for up to an hour.
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "urls_per_hour = 2");
    for _ in 0..3 {
        emu.push_creation_fault(CreationFault::Status {
            code: 500,
            body: cloudflare_error(500, "internal error"),
        });
    }
    let statuses: Vec<u16> = (0..6)
        .map(|_| broker.post(Some(CAM1), &[("Upload-Length", "10")]).status)
        .collect();
    assert_eq!(statuses, [502, 502, 502, 201, 201, 429]);
    assert_eq!(emu.videos().len(), 2);
}

#[test]
fn broker_passes_streams_429_on_with_its_retry_after_and_pauses_calls() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    emu.push_creation_fault(CreationFault::StatusWithHeaders {
        code: 429,
        headers: vec![("Retry-After".into(), "120".into())],
        body: cloudflare_error(10013, "rate limited"),
    });
    let r = broker.post(Some(CAM1), &[("Upload-Length", "10")]);
    assert_eq!(r.status, 429, "not a 502: {}", r.raw);
    assert_eq!(r.header("Retry-After"), Some("120"));
    let calls = emu.requests().len();
    let r = broker.post(Some(CAM2), &[("Upload-Length", "10")]);
    assert_eq!(r.status, 429, "{}", r.raw);
    let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
    assert!((118..=120).contains(&wait), "{wait}");
    assert_eq!(
        emu.requests().len(),
        calls,
        "no call to Stream while it asked for a pause"
    );
}

#[test]
fn broker_forced_metadata_decides_video_privacy_not_the_device() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(
        &emu,
        "forced_metadata = { requiresignedurls = \"\", allowedorigins = \"app.example.com\" }",
    );
    let meta = metadata(&[("name", Some("clip")), ("allowedorigins", Some("*"))]);
    let r = broker.post(
        Some(CAM1),
        &[("Upload-Length", "10"), ("Upload-Metadata", &meta)],
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let video = emu.video(r.header("Stream-Media-ID").unwrap()).unwrap();
    assert_eq!(video.meta("name"), Some(Some("clip")));
    assert_eq!(video.meta("allowedorigins"), Some(Some("app.example.com")));
    assert_eq!(video.meta("requiresignedurls"), Some(None));
}

#[test]
fn broker_turns_a_stream_refusal_into_502_with_streams_message() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let message = "Storage capacity exceeded: the account's minutes are used up";
    emu.set_creation_fault(Some(CreationFault::Status {
        code: 403,
        body: cloudflare_error(10011, message),
    }));
    let r = broker.post(Some(CAM1), &[("Upload-Length", "10")]);
    assert_eq!(r.status, 502, "{}", r.raw);
    let body = r.json();
    assert_eq!(body["stream_status"], 403);
    assert_eq!(body["messages"][0], message);
    broker.expect_log(message);
}

/// Asks for a URL while Stream misbehaves as `fault` under `api_timeout = "2s"`: the device
/// gets the documented 504 at the deadline (after 1.8 s, before `under`). Returns the broker
/// first, so that it stops before the emulator.
fn stream_fault_gives_504_at_the_deadline(
    fault: CreationFault,
    under: Duration,
) -> (Broker, StreamEmulator) {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "api_timeout = \"2s\"");
    emu.set_creation_fault(Some(fault));
    let t0 = Instant::now();
    let r = broker.post(Some(CAM1), &[("Upload-Length", "10")]);
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.raw);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("did not answer within 2 s"));
    assert!(
        took >= Duration::from_millis(1800) && took < under,
        "{took:?}"
    );
    (broker, emu)
}

#[test]
fn broker_answers_504_when_stream_stalls() {
    stream_fault_gives_504_at_the_deadline(
        CreationFault::Stall(Duration::from_secs(20)),
        Duration::from_secs(6),
    );
}

#[test]
fn broker_answers_504_at_the_deadline_when_streams_answer_trickles() {
    // A byte every 0.4 s: no single read times out (api_timeout is per read in the transport),
    // the whole answer would take about two minutes. Before the overall deadline the device
    // waited for all of it (408 s and 600 s in the audit).
    let (broker, emu) = stream_fault_gives_504_at_the_deadline(
        CreationFault::Trickle(Duration::from_millis(400)),
        Duration::from_secs(5),
    );
    broker.expect_log("504 device=cam-1");
    // The late call goes on in the background; the next device is served at once.
    emu.set_creation_fault(None);
    let t1 = Instant::now();
    let next = broker.post(Some(CAM2), &[("Upload-Length", "10")]);
    assert_eq!(next.status, 201, "{}", next.raw);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
}

#[test]
fn broker_answers_400_for_heads_a_strict_parser_refuses() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let auth = bearer(CAM1);
    let post = |middle: &str| {
        format!("POST {PATH} HTTP/1.1\r\n{middle}Authorization: {auth}\r\nUpload-Length: 10\r\nConnection: close\r\n\r\n")
    };
    for (head, why) in [
        (
            post("Host: b\r\nContent-Length: \u{a0}0\r\n"),
            "bad Content-Length",
        ),
        (post("Host: b\r\nX-Note: a\rb\r\n"), "header value"),
        (post(""), "Host header is missing"),
        (post("Host: b\r\nHost: c\r\n"), "more than one Host"),
    ] {
        let mut s = TcpStream::connect(broker.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let r = parse_reply(&raw);
        assert_eq!(r.status, 400, "{head:?}: {}", r.raw);
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(why), "{head:?}: {error}");
    }
    assert!(emu.videos().is_empty(), "no request reached Stream");
}

#[test]
fn broker_answers_431_for_huge_headers() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let big = "a".repeat(20 * 1024);
    let auth = bearer(CAM1);
    let r = send(
        broker.addr,
        "POST",
        PATH,
        &[
            ("Authorization", &auth),
            ("Upload-Length", "10"),
            ("X-Padding", &big),
        ],
        b"",
    );
    assert_eq!(r.status, 431, "{}", r.raw);
    assert!(r.json()["error"].as_str().unwrap().contains("16 KiB"));
    assert!(emu.videos().is_empty());
}

#[test]
fn broker_slow_client_does_not_block_another_device() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "request_timeout = \"3s\"");
    let slow = TcpStream::connect(broker.addr).unwrap();
    let t0 = Instant::now();
    let mut writer = slow.try_clone().unwrap();
    let dripping = thread::spawn(move || {
        for b in format!("POST {PATH} HTTP/1.1\r\nUpload-Length: 10\r\n").bytes() {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    thread::sleep(Duration::from_millis(1500));
    let t1 = Instant::now();
    let r = broker.post(Some(CAM2), &[("Upload-Length", "10")]);
    assert_eq!(r.status, 201, "{}", r.raw);
    assert!(t1.elapsed() < Duration::from_secs(2), "{:?}", t1.elapsed());
    // The slow client is cut off at its deadline (3 s), not left to hold its thread.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let end = (&slow).read(&mut buf);
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let closed_after = t0.elapsed();
    assert!(
        closed_after >= Duration::from_millis(2500) && closed_after < Duration::from_secs(6),
        "{closed_after:?}"
    );
    dripping.join().unwrap();
}

#[test]
fn broker_cors_preflight_and_exposed_headers() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "allowed_origins = [\"https://app.example.com\"]");
    let preflight = |origin: &str| {
        send(
            broker.addr,
            "OPTIONS",
            PATH,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization,upload-length,upload-metadata,tus-resumable",
                ),
            ],
            b"",
        )
    };
    let ok = preflight("https://app.example.com");
    assert_eq!(ok.status, 204, "{}", ok.raw);
    assert_eq!(
        ok.header("Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    let allowed = ok
        .header("Access-Control-Allow-Headers")
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "upload-length",
        "upload-metadata",
        "tus-resumable",
        "content-type",
    ] {
        assert!(allowed.contains(h), "{allowed}");
    }
    assert!(ok
        .header("Access-Control-Allow-Methods")
        .unwrap()
        .contains("POST"));
    let denied = preflight("https://evil.example.com");
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("Access-Control-Allow-Origin"), None);

    let auth = bearer(CAM1);
    let r = send(
        broker.addr,
        "POST",
        PATH,
        &[
            ("Origin", "https://app.example.com"),
            ("Authorization", &auth),
            ("Upload-Length", "10"),
            ("Tus-Resumable", "1.0.0"),
        ],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("https://app.example.com")
    );
    let exposed = r.header("Access-Control-Expose-Headers").unwrap();
    for h in ["Location", "Stream-Media-ID", "Upload-Offset"] {
        assert!(exposed.contains(h), "{exposed}");
    }
    let other = send(
        broker.addr,
        "POST",
        PATH,
        &[
            ("Origin", "https://evil.example.com"),
            ("Authorization", &auth),
            ("Upload-Length", "10"),
        ],
        b"",
    );
    assert_eq!(
        other.header("Access-Control-Allow-Origin"),
        None,
        "no `*` unless configured"
    );
}

#[test]
fn broker_never_shows_a_token_in_answers_or_logs() {
    let emu = StreamEmulator::start(StreamConfig::default());
    // Even at trace level (which the broker caps).
    let broker = Broker::start_logging(&emu, "", "trace");
    let mut answers = Vec::new();
    answers.push(broker.post(Some(CAM1), &[("Upload-Length", "10")]));
    answers.push(broker.post(Some(("x", "wrong-token")), &[("Upload-Length", "10")]));
    answers.push(broker.post(Some(CAM2), &[("Upload-Length", "x")]));
    // A Stream that echoes the token back in its error message.
    emu.set_creation_fault(Some(CreationFault::Status {
        code: 400,
        body: cloudflare_error(10000, &format!("bad token {}", emu.api_token())),
    }));
    answers.push(broker.post(Some(CAM2), &[("Upload-Length", "10")]));
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [201, 401, 400, 502]
    );
    assert!(
        answers[3].body.contains("bad token [api token]"),
        "{}",
        answers[3].raw
    );
    broker.expect_log("502 device=cam-2");
    let log = broker.log();
    let location = answers[0].header("Location").unwrap();
    let query = location.split_once('?').unwrap().1;
    for secret in [emu.api_token().as_str(), CAM1.1, CAM2.1, "wrong-token"] {
        for a in &answers {
            assert!(!a.raw.contains(secret), "{secret} in an answer: {}", a.raw);
        }
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert!(
        !log.contains(query),
        "the one-time URL's query in the log:\n{log}"
    );
    assert!(log.contains("capped at debug"), "{log}");
}

#[test]
fn broker_bad_config_exits_2_naming_the_key() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let scratch = Scratch::new("broker-config");
    let (config, args) = broker_files(&scratch, &emu, "");
    let run = |extra: &[&str]| {
        let out = ferry()
            .arg("broker")
            .arg("--config")
            .arg(&config)
            .args(&args)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--url-expiry-seconds", "60"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("broker.url_expiry_seconds"), "{err}");
    let (code, err) = run(&["--listen", "nowhere"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("broker.listen"), "{err}");
    let (code, err) = run(&["--api-token-file", "/nonexistent/token"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("broker.api_token_file"), "{err}");
    let (code, err) = run(&["--max-duration-seconds", "0"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("broker.max_duration_seconds"), "{err}");
    let out = ferry()
        .args(["broker", "--account-id", "a", "--device-tokens-file", "/d"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.api_token_file"));
}

#[test]
fn broker_serves_tus_js_client_through_to_stream() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let script = peers.join("tus-js-broker-upload.mjs");
    assert!(
        peers
            .join("node_modules/tus-js-client/package.json")
            .is_file(),
        "tus-js-client is not installed in {}: run `scripts/install-peers`",
        peers.display()
    );
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let scratch = Scratch::new("broker-js");
    let data = random_bytes(12 * 1024 * 1024, 12);
    let file = scratch.dir.join("files/field-clip.mp4");
    std::fs::write(&file, &data).unwrap();
    let mut child = Command::new("node")
        .arg(&script)
        .arg("--endpoint")
        .arg(broker.url())
        .arg("--file")
        .arg(&file)
        .env("BROKER_DEVICE_TOKEN", CAM1.1)
        .current_dir(&peers)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tus-js-client did not finish in 120 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tus-js-client failed: {}\n{}\nbroker log:\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let media_id = report["mediaId"].as_str().unwrap();
    assert_eq!(report["bytes"], data.len());
    let video = emu
        .video(media_id)
        .expect("the media id tus-js-client printed");
    assert!(video.direct_user && video.complete, "{video:?}");
    assert_eq!(emu.videos().len(), 1, "one creation, one video");
    assert_eq!(video.meta("filename"), Some(Some("field-clip.mp4")));
    assert_eq!(video.max_duration_seconds.as_deref(), Some("600"));
    assert_same_bytes(&emu.video_bytes(media_id), &data, "video stored by Stream");
    let patches = emu
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.status == Some(204))
        .count();
    assert_eq!(patches, 3, "12 MiB in 5 MiB chunks");
    broker.expect_log(&format!("201 device=cam-1 media_id={media_id}"));
}

#[test]
fn broker_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/ferry-broker.service"),
    )
    .unwrap();
    let from = "\nExecStart=/usr/bin/ferry broker ";
    assert_eq!(unit.matches(from).count(), 1);
    let scratch = Scratch::new("broker-unit");
    let path = scratch.dir.join("ferry-broker.service");
    let to = format!("\nExecStart={} broker ", env!("CARGO_BIN_EXE_ferry"));
    std::fs::write(&path, unit.replace(from, &to)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(&scratch.dir)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .current_dir(&scratch.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    println!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("Overall exposure"))
            .unwrap_or_default()
    );
}

#[test]
fn ferry_agent_uploads_through_ferry_broker_to_stream() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let broker = Broker::start(&emu, "");
    let s = Scratch::new("agent-broker");
    let credential = s.dir.join("device-credential");
    std::fs::write(&credential, format!("Bearer {}\n", CAM1.1)).unwrap();
    let f = s.file("gate.mp4", 11 * 1024 * 1024 + 3, 41);
    let cfg = s.dir.join("agent.toml");
    let text = format!(
        "state_dir = {:?}\n[server]\ntarget = \"url-broker\"\nendpoint = {:?}\nheader_files = {{ Authorization = {:?} }}\n[upload]\nmetadata = {{ name = \"gate\" }}\n",
        s.state(),
        broker.url(),
        credential.display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    let out = ferry()
        .args(["upload", "--config"])
        .arg(&cfg)
        .arg(&f)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}\n{}", broker.log());
    let fields: Vec<&str> = stdout.trim_end().split('\t').collect();
    let videos = emu.videos();
    assert_eq!(videos.len(), 1);
    assert_eq!(
        fields.get(2).copied(),
        Some(videos[0].uid.as_str()),
        "the media id is the third field: {stdout}"
    );
    assert!(videos[0].direct_user && videos[0].complete);
    assert!(
        !videos[0].authorization_on_upload_origin,
        "the device credential stayed with the broker"
    );
    assert_eq!(videos[0].meta("name"), Some(Some("gate")));
    assert_same_bytes(
        &emu.video_bytes(&videos[0].uid),
        &random_bytes(11 * 1024 * 1024 + 3, 41),
        "gate.mp4",
    );
    assert!(
        !stdout.contains(&emu.api_token()) && !stderr.contains(&emu.api_token()),
        "the Stream token never reaches the device"
    );
    broker.expect_log(CAM1.0);
}
