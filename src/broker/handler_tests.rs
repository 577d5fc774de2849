//! The endpoint against a scripted Stream and a manual clock.

use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use super::*;
use crate::clock::ManualClock;
use crate::transport::TransportError;
use crate::tus::{metadata, Response as TusResponse};

const API_TOKEN: &str = "cf-api-token-XYZ";

/// Answers every request with the next scripted result and records the requests.
struct Scripted {
    answers: Mutex<Vec<std::result::Result<TusResponse, TransportError>>>,
    seen: Arc<Mutex<Vec<crate::tus::Request>>>,
}

impl Transport for Scripted {
    fn send(
        &self,
        req: &crate::tus::Request,
        _body: Option<Box<dyn std::io::Read + Send + 'static>>,
    ) -> std::result::Result<TusResponse, TransportError> {
        self.seen.lock().unwrap().push(req.clone());
        self.answers.lock().unwrap().remove(0)
    }
}

struct Env {
    broker: Broker,
    seen: Arc<Mutex<Vec<crate::tus::Request>>>,
    clock: Arc<ManualClock>,
    dir: std::path::PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn created(id: &str) -> std::result::Result<TusResponse, TransportError> {
    Ok(TusResponse {
        status: 201,
        headers: vec![
            (
                "Location".into(),
                format!("https://upload.example/tus/{id}?tusv2=true"),
            ),
            ("stream-media-id".into(), id.into()),
        ],
        body: String::new(),
    })
}

fn env(name: &str, answers: Vec<std::result::Result<TusResponse, TransportError>>) -> Env {
    let dir = std::env::temp_dir().join(format!("ferry-handler-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash: String = Sha256::digest(b"dev-token-1")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(dir.join("devices"), format!("cam-1 {hash}\n")).unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        path: "/up".into(),
        api_base: "https://api.example/client/v4".into(),
        account_id: "acct".into(),
        api_token: ApiToken::new(API_TOKEN.into()),
        device_tokens_file: dir.join("devices"),
        max_duration_seconds: 600,
        url_expiry: Duration::from_secs(3600),
        max_upload_length: 1000,
        allowed_metadata: vec!["name".into()],
        forced_metadata: vec![("requiresignedurls".into(), None)],
        allowed_origins: vec!["https://app.example".into()],
        urls_per_hour: 2,
        tls: None,
        api_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(10),
        head_timeout: Duration::from_secs(5),
        max_connections: 4,
        max_connections_per_peer: 2,
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let transport = Scripted {
        answers: Mutex::new(answers),
        seen: seen.clone(),
    };
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(1_714_566_645),
    ));
    let broker = Broker::new(&settings, Box::new(transport), clock.clone()).unwrap();
    Env {
        broker,
        seen,
        clock,
        dir,
    }
}

fn post(headers: &[(&str, &str)]) -> Request {
    Request {
        method: "POST".into(),
        target: "/up".into(),
        http11: true,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    }
}

const AUTH: (&str, &str) = ("Authorization", "Bearer dev-token-1");

fn body(h: &Handled) -> Value {
    serde_json::from_slice(&h.response.body).unwrap()
}

#[test]
fn hands_out_a_one_time_url_with_the_brokers_metadata() {
    let e = env("ok", vec![created("vid1")]);
    let meta = metadata::encode(&[
        ("name".into(), Some("clip".into())),
        ("filename".into(), Some("dropped.mp4".into())),
        ("maxDurationSeconds".into(), Some("99999".into())),
    ])
    .unwrap()
    .unwrap();
    let h = e.broker.handle(&post(&[
        AUTH,
        ("Upload-Length", "1000"),
        ("Upload-Metadata", &meta),
        ("Tus-Resumable", "1.0.0"),
    ]));
    assert_eq!(h.response.status, 201);
    assert_eq!(
        h.response.header("Location"),
        Some("https://upload.example/tus/vid1?tusv2=true")
    );
    assert_eq!(h.response.header("Stream-Media-ID"), Some("vid1"));
    assert_eq!(h.response.header("Tus-Resumable"), Some("1.0.0"));
    assert_eq!(
        (h.device.as_deref(), h.media_id.as_deref()),
        (Some("cam-1"), Some("vid1"))
    );
    let seen = e.seen.lock().unwrap();
    let sent = &seen[0];
    assert_eq!(
        sent.url,
        "https://api.example/client/v4/accounts/acct/stream?direct_user=true"
    );
    assert_eq!(
        sent.header("Authorization"),
        Some("Bearer cf-api-token-XYZ")
    );
    assert_eq!(sent.header("Upload-Length"), Some("1000"));
    let m = metadata::decode(sent.header("Upload-Metadata").unwrap()).unwrap();
    assert_eq!(
        m,
        vec![
            ("name".to_string(), Some("clip".to_string())),
            // broker.forced_metadata, whatever the device sent
            ("requiresignedurls".to_string(), None),
            ("maxDurationSeconds".to_string(), Some("600".to_string())),
            // 2024-05-01T12:30:45Z + 1 h
            (
                "expiry".to_string(),
                Some("2024-05-01T13:30:45Z".to_string())
            ),
        ]
    );
}

#[test]
fn a_creation_with_upload_body_is_dropped_and_said_so() {
    let e = env("cwu", vec![created("vid2")]);
    let h = e.broker.handle(&post(&[
        AUTH,
        ("Upload-Length", "1000"),
        ("Content-Type", "application/offset+octet-stream"),
        ("Content-Length", "100"),
    ]));
    assert_eq!(h.response.status, 201);
    assert_eq!(h.response.header("Upload-Offset"), Some("0"));
}

#[test]
fn device_mistakes_are_4xx_and_never_reach_stream() {
    let e = env("bad", vec![]);
    let status = |headers: &[(&str, &str)]| e.broker.handle(&post(headers)).response.status;
    assert_eq!(status(&[("Upload-Length", "5")]), 401);
    assert_eq!(
        status(&[("Authorization", "Bearer nope"), ("Upload-Length", "5")]),
        401
    );
    assert_eq!(status(&[AUTH]), 400);
    assert_eq!(status(&[AUTH, ("Upload-Length", "abc")]), 400);
    assert_eq!(status(&[AUTH, ("Upload-Length", "-5")]), 400);
    assert_eq!(status(&[AUTH, ("Upload-Length", "0")]), 400);
    assert_eq!(status(&[AUTH, ("Upload-Length", "1001")]), 400);
    assert_eq!(
        status(&[AUTH, ("Upload-Length", "99999999999999999999999")]),
        400
    );
    assert_eq!(status(&[AUTH, ("Upload-Defer-Length", "1")]), 400);
    assert_eq!(
        status(&[AUTH, ("Upload-Length", "5"), ("Upload-Metadata", "name !!")]),
        400
    );
    assert_eq!(
        status(&[AUTH, ("Upload-Length", "5"), ("Tus-Resumable", "0.2.2")]),
        412
    );
    let h = e.broker.handle(&post(&[AUTH, ("Upload-Length", "1001")]));
    assert!(body(&h)["error"]
        .as_str()
        .unwrap()
        .contains("above the limit of 1000"));
    assert!(e.seen.lock().unwrap().is_empty());
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let e = env("rate", vec![created("a"), created("b")]);
    let req = post(&[AUTH, ("Upload-Length", "5")]);
    assert_eq!(e.broker.handle(&req).response.status, 201);
    assert_eq!(e.broker.handle(&req).response.status, 201);
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 429);
    assert_eq!(h.response.header("Retry-After"), Some("1800"));
}

#[test]
fn failed_stream_calls_do_not_use_up_the_devices_allowance() {
    // urls_per_hour = 2: an outage's 502 and 504 must not leave the device at 429.
    let timeout = Err(TransportError {
        kind: FailureKind::Timeout,
        message: "timed out reading".into(),
    });
    let refused = Ok(TusResponse {
        status: 500,
        headers: vec![],
        body: "oops".into(),
    });
    let e = env("refund", vec![timeout, refused, created("a"), created("b")]);
    let req = post(&[AUTH, ("Upload-Length", "5")]);
    let statuses: Vec<u16> = (0..5)
        .map(|_| e.broker.handle(&req).response.status)
        .collect();
    assert_eq!(statuses, [504, 502, 201, 201, 429]);
}

#[test]
fn streams_429_pauses_calls_until_its_retry_after() {
    let limited = Ok(TusResponse {
        status: 429,
        headers: vec![("Retry-After".into(), "30".into())],
        body: r#"{"success":false,"errors":[{"code":10000,"message":"rate limited"}]}"#.into(),
    });
    let e = env("stream-429", vec![limited, created("a")]);
    let req = post(&[AUTH, ("Upload-Length", "5")]);
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 429, "not a 502");
    assert_eq!(h.response.header("Retry-After"), Some("30"));
    e.clock.advance(Duration::from_secs(10));
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 429);
    assert_eq!(h.response.header("Retry-After"), Some("20"));
    assert_eq!(e.seen.lock().unwrap().len(), 1, "no call while paused");
    e.clock.advance(Duration::from_secs(20));
    assert_eq!(e.broker.handle(&req).response.status, 201);
    assert_eq!(e.seen.lock().unwrap().len(), 2);
}

#[test]
fn streams_account_limit_is_kept_across_devices() {
    // 1,200 calls in 5 minutes, however many devices ask (urls_per_hour is per device).
    let e = env("account", vec![]);
    for _ in 0..STREAM_API_REQUESTS {
        e.broker.account.take("", e.clock.now()).unwrap();
    }
    let h = e.broker.handle(&post(&[AUTH, ("Upload-Length", "5")]));
    assert_eq!(h.response.status, 429);
    assert_eq!(h.response.header("Retry-After"), Some("1"));
    assert!(
        e.seen.lock().unwrap().is_empty(),
        "no call beyond the limit"
    );
    // The device's own allowance was given back (urls_per_hour = 2).
    let ok = || {
        Ok(TusResponse {
            status: 201,
            headers: vec![("Location".into(), "https://u.example/tus/x".into())],
            body: String::new(),
        })
    };
    let e2 = env("account-2", vec![ok(), ok()]);
    for _ in 0..STREAM_API_REQUESTS {
        e2.broker.account.take("", e2.clock.now()).unwrap();
    }
    let req = post(&[AUTH, ("Upload-Length", "5")]);
    assert_eq!(e2.broker.handle(&req).response.status, 429);
    e2.clock.advance(Duration::from_secs(1));
    assert_eq!(e2.broker.handle(&req).response.status, 201);
    e2.clock.advance(Duration::from_secs(1));
    assert_eq!(e2.broker.handle(&req).response.status, 201);
}

#[test]
fn stream_refusals_are_502_with_its_messages_and_time_outs_504() {
    let refused = Ok(TusResponse {
        status: 403,
        headers: vec![],
        body: format!(
            r#"{{"success":false,"errors":[{{"code":10000,"message":"Authentication error for {API_TOKEN}"}}]}}"#
        ),
    });
    let timeout = Err(TransportError {
        kind: FailureKind::Timeout,
        message: "timed out reading".into(),
    });
    let e = env("stream-err", vec![refused, timeout]);
    let req = post(&[AUTH, ("Upload-Length", "5")]);
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 502);
    let b = body(&h);
    assert_eq!(b["stream_status"], 403);
    assert_eq!(b["messages"][0], "Authentication error for [api token]");
    let text = String::from_utf8_lossy(&h.response.body);
    assert!(!text.contains(API_TOKEN) && !h.note.unwrap().contains(API_TOKEN));
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 504);
    assert!(body(&h)["error"].as_str().unwrap().contains("within 3 s"));
}

#[test]
fn cors_preflight_discovery_and_other_methods() {
    let e = env("cors", vec![]);
    let mut req = post(&[("Origin", "https://app.example")]);
    req.method = "OPTIONS".into();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 204);
    assert_eq!(
        h.response.header("Access-Control-Allow-Origin"),
        Some("https://app.example")
    );
    req.headers[0].1 = "https://evil.example".into();
    assert_eq!(e.broker.handle(&req).response.status, 403);
    req.headers.clear();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 204);
    assert_eq!(h.response.header("Tus-Max-Size"), Some("1000"));
    // An error still carries CORS headers, so a page can read why.
    let h = e.broker.handle(&post(&[
        ("Origin", "https://app.example"),
        ("Upload-Length", "1"),
    ]));
    assert_eq!(h.response.status, 401);
    assert_eq!(
        h.response.header("Access-Control-Expose-Headers"),
        Some(super::super::cors::EXPOSE_HEADERS)
    );
    req.method = "GET".into();
    assert_eq!(e.broker.handle(&req).response.status, 405);
    req.target = "/other".into();
    assert_eq!(e.broker.handle(&req).response.status, 404);
}

/// Issue 15: a broken or missing device tokens file showed only in a log line.
#[test]
fn healthz_shows_the_device_tokens_file_and_is_503_only_without_devices() {
    let e = env("health", vec![created("vid1")]);
    let mut req = post(&[]);
    req.method = "GET".into();
    req.target = "/healthz".into();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 200);
    assert_eq!(body(&h)["status"], "ok");
    assert_eq!(body(&h)["devices"], 1);
    // A bad line beside the valid one: still 200 (cam-1 is served), but visibly degraded.
    let file = e.dir.join("devices");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("garbage\n");
    std::fs::write(&file, text).unwrap();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 200);
    assert_eq!(body(&h)["status"], "degraded");
    assert_eq!(
        body(&h)["device_tokens_file"]["problems"],
        json!(["line 2: expected `<device name> <sha256 hex of its token>`"])
    );
    let created = e.broker.handle(&post(&[AUTH, ("Upload-Length", "5")]));
    assert_eq!(created.response.status, 201);
    // No file: no device can be served, so a load balancer should look elsewhere.
    std::fs::remove_file(&file).unwrap();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 503);
    assert_eq!(body(&h)["devices"], 0);
    assert_eq!(body(&h)["device_tokens_file"]["readable"], false);
    req.method = "HEAD".into();
    assert_eq!(e.broker.handle(&req).response.status, 503);
    req.method = "POST".into();
    let h = e.broker.handle(&req);
    assert_eq!(h.response.status, 405);
    assert_eq!(h.response.header("Allow"), Some("GET, HEAD"));
}
