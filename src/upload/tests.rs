//! Orchestration tests: a scripted transport and a manual clock drive the uploader through
//! every path of its state machine; no sockets, no real sleeping.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::*;
use crate::backoff::RetryPolicy;
use crate::clock::ManualClock;
use crate::store::RecordState;
use crate::stream::{Target, STREAM_CHUNK_MULTIPLE, STREAM_MIN_CHUNK};
use crate::transport::{FailureKind, TransportError};
use crate::tus::{Method, Request, Response};

/// What the scripted server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The upload URL in the store when the request was sent.
    stored_url: Option<String>,
}

type Answer = std::result::Result<Response, TransportError>;

struct Script<'s> {
    answers: Mutex<VecDeque<(Method, Answer)>>,
    seen: Mutex<Vec<Seen>>,
    store: &'s Store,
    key: String,
}

impl<'s> Script<'s> {
    fn new(store: &'s Store, key: &str, answers: Vec<(Method, Answer)>) -> Self {
        Self {
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
            store,
            key: key.into(),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn methods(&self) -> Vec<Method> {
        self.seen().iter().map(|s| s.method).collect()
    }
}

impl Transport for Script<'_> {
    fn send(
        &self,
        req: &Request,
        body: Option<Box<dyn Read + Send>>,
    ) -> std::result::Result<Response, TransportError> {
        let mut bytes = Vec::new();
        if let Some(mut b) = body {
            b.read_to_end(&mut bytes).unwrap();
        }
        let stored_url = self.store.get(&self.key).unwrap().map(|r| r.upload_url);
        self.seen.lock().unwrap().push(Seen {
            method: req.method,
            url: req.url.clone(),
            headers: req.headers.clone(),
            body: bytes,
            stored_url,
        });
        let (method, answer) = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("unscripted {:?} {}", req.method, req.url));
        assert_eq!(method, req.method, "request order");
        answer
    }
}

fn resp(status: u16, headers: &[(&str, &str)]) -> Answer {
    Ok(Response {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: String::new(),
    })
}

fn options() -> (Method, Answer) {
    (
        Method::Options,
        resp(
            204,
            &[
                ("Tus-Version", "1.0.0"),
                ("Tus-Extension", "creation,termination"),
            ],
        ),
    )
}

fn created(loc: &str) -> (Method, Answer) {
    (
        Method::Post,
        resp(201, &[("Location", loc), ("Tus-Resumable", "1.0.0")]),
    )
}

fn offset(m: Method, o: u64) -> (Method, Answer) {
    let s = o.to_string();
    (
        m,
        resp(
            if m == Method::Head { 200 } else { 204 },
            &[("Upload-Offset", s.as_str())],
        ),
    )
}

fn cut(m: Method) -> (Method, Answer) {
    (
        m,
        Err(TransportError {
            kind: FailureKind::Connection,
            message: "connection reset".into(),
        }),
    )
}

const EP: &str = "http://127.0.0.1:1080/files/";
const URL: &str = "http://127.0.0.1:1080/files/abc";

struct Env {
    dir: PathBuf,
    file: PathBuf,
    key: String,
    store: Store,
    clock: ManualClock,
}

fn env(name: &str, content: &[u8]) -> Env {
    let dir = std::env::temp_dir().join(format!("ferry-up-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("clip.mp4");
    std::fs::write(&file, content).unwrap();
    let key = record_key(&file).unwrap();
    Env {
        dir,
        file,
        key,
        store: Store::open_temporary().unwrap(),
        clock: ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn settings(chunk: u64) -> Settings {
    Settings {
        endpoint: EP.into(),
        chunk_size_bytes: chunk,
        ..Settings::default()
    }
}

fn run(e: &Env, s: &Settings, script: &Script) -> Result<Completed> {
    Uploader::new(script, &e.store, &e.clock, s, 7).upload(&e.file, Arc::new(Progress::default()))
}

/// A first run that ends at its first transient failure (`max_attempts = 1`), as a kill would.
fn interrupted(e: &Env, s: &Settings, script: &Script) {
    let once = Settings {
        retry: RetryPolicy {
            max_attempts: Some(1),
            ..RetryPolicy::default()
        },
        ..s.clone()
    };
    assert!(matches!(
        run(e, &once, script),
        Err(Error::GaveUp { attempts: 1, .. })
    ));
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn fresh_upload_persists_the_url_before_the_first_patch() {
    let e = env("fresh", &data(25));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created("/files/abc"),
            offset(Method::Patch, 10),
            offset(Method::Patch, 20),
            offset(Method::Patch, 25),
        ],
    );
    let done = run(&e, &settings(10), &script).unwrap();
    assert_eq!(
        done,
        Completed {
            path: e.file.clone(),
            url: URL.into(),
            length: 25,
            already: false,
            captured: Default::default(),
        }
    );
    let seen = script.seen();
    let post = &seen[1];
    let meta = post
        .headers
        .iter()
        .find(|(n, _)| n == "Upload-Metadata")
        .unwrap();
    assert_eq!(meta.1, "filename Y2xpcC5tcDQ=,filetype dmlkZW8vbXA0");
    assert_eq!(post.stored_url, None);
    for (i, p) in seen[2..].iter().enumerate() {
        assert_eq!(
            p.stored_url.as_deref(),
            Some(URL),
            "invariant 2: URL durable before PATCH {i}"
        );
        assert_eq!(p.url, URL);
    }
    let body: Vec<u8> = seen[2..].iter().flat_map(|s| s.body.clone()).collect();
    assert_eq!(body, data(25));
    let rec = e.store.get(&e.key).unwrap().unwrap();
    assert_eq!((rec.state, rec.offset), (RecordState::Complete, 25));
    assert!(e.clock.sleeps().is_empty());
}

#[test]
fn a_second_run_of_a_complete_file_sends_nothing() {
    let e = env("again", &data(5));
    let s = settings(10);
    let first = Script::new(
        &e.store,
        &e.key,
        vec![options(), created(URL), offset(Method::Patch, 5)],
    );
    run(&e, &s, &first).unwrap();
    let second = Script::new(&e.store, &e.key, vec![]);
    let done = run(&e, &s, &second).unwrap();
    assert!(done.already);
    assert_eq!(done.url, URL);
    assert!(second.seen().is_empty());
}

#[test]
fn resume_asks_the_server_and_continues_from_its_offset() {
    let e = env("resume", &data(30));
    let s = settings(10);
    let first = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created(URL),
            offset(Method::Patch, 10),
            cut(Method::Patch),
        ],
    );
    interrupted(&e, &s, &first);
    // The server kept 13 bytes of the cut PATCH; the next run resumes at 13, not at 10 or 20.
    let second = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            offset(Method::Head, 13),
            offset(Method::Patch, 23),
            offset(Method::Patch, 30),
        ],
    );
    run(&e, &s, &second).unwrap();
    assert_eq!(
        second.methods(),
        [Method::Options, Method::Head, Method::Patch, Method::Patch]
    );
    let seen = second.seen();
    assert_eq!(
        seen[2]
            .headers
            .iter()
            .find(|(n, _)| n == "Upload-Offset")
            .unwrap()
            .1,
        "13"
    );
    assert_eq!(seen[2].body, data(30)[13..23]);
}

#[test]
fn transient_failures_back_off_then_probe_and_reset_after_progress() {
    let e = env("backoff", &data(30));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created(URL),
            cut(Method::Patch),
            cut(Method::Head),
            offset(Method::Head, 0),
            offset(Method::Patch, 10),
            (Method::Patch, resp(503, &[])),
            offset(Method::Head, 10),
            offset(Method::Patch, 20),
            offset(Method::Patch, 30),
        ],
    );
    let s = Settings {
        retry: RetryPolicy {
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            ..RetryPolicy::default()
        },
        ..settings(10)
    };
    run(&e, &s, &script).unwrap();
    let sleeps = e.clock.sleeps();
    assert_eq!(sleeps.len(), 3, "{sleeps:?}");
    assert!(
        sleeps[0] <= Duration::from_secs(2) && sleeps[1] <= Duration::from_secs(4),
        "{sleeps:?}"
    );
    assert!(
        sleeps[2] <= Duration::from_secs(2),
        "attempt counter reset by progress: {sleeps:?}"
    );
}

#[test]
fn retry_after_is_obeyed_exactly() {
    let e = env("ra", &data(10));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created(URL),
            (Method::Patch, resp(423, &[("Retry-After", "17")])),
            offset(Method::Head, 0),
            offset(Method::Patch, 10),
        ],
    );
    run(&e, &settings(10), &script).unwrap();
    assert_eq!(e.clock.sleeps(), [Duration::from_secs(17)]);
}

#[test]
fn conflict_probes_at_once_and_continues_from_the_server_offset() {
    let e = env("409", &data(20));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created(URL),
            (Method::Patch, resp(409, &[])),
            offset(Method::Head, 4),
            offset(Method::Patch, 14),
            offset(Method::Patch, 20),
        ],
    );
    run(&e, &settings(10), &script).unwrap();
    assert!(e.clock.sleeps().is_empty());
    assert_eq!(script.seen()[4].body, data(20)[4..14]);
}

#[test]
fn a_lost_upload_is_created_again() {
    let e = env("gone", &data(10));
    let s = settings(10);
    let first = Script::new(
        &e.store,
        &e.key,
        vec![options(), created(URL), cut(Method::Patch)],
    );
    interrupted(&e, &s, &first);
    let second = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            (Method::Head, resp(404, &[])),
            created("/files/new"),
            offset(Method::Patch, 10),
        ],
    );
    let done = run(&e, &s, &second).unwrap();
    assert_eq!(done.url, "http://127.0.0.1:1080/files/new");
}

#[test]
fn an_expired_upload_is_not_probed() {
    let e = env("expired", &data(10));
    let s = settings(10);
    let exp = crate::tus::httpdate::format(e.clock.wall() + Duration::from_secs(60));
    let first = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            (
                Method::Post,
                resp(201, &[("Location", URL), ("Upload-Expires", exp.as_str())]),
            ),
            cut(Method::Patch),
        ],
    );
    interrupted(&e, &s, &first);
    e.clock.advance(Duration::from_secs(61));
    let second = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created("/files/fresh"),
            offset(Method::Patch, 10),
        ],
    );
    run(&e, &s, &second).unwrap();
    assert_eq!(
        second.methods(),
        [Method::Options, Method::Post, Method::Patch]
    );
}

#[test]
fn empty_files_complete_with_the_post_alone() {
    let e = env("empty", b"");
    let script = Script::new(&e.store, &e.key, vec![options(), created(URL)]);
    let done = run(&e, &settings(10), &script).unwrap();
    assert_eq!(done.length, 0);
    assert_eq!(
        script.seen()[1]
            .headers
            .iter()
            .find(|(n, _)| n == "Upload-Length")
            .unwrap()
            .1,
        "0"
    );
}

#[test]
fn checksum_mismatch_resends_the_same_chunk_then_gives_up() {
    let e = env("sum", &data(10));
    let opts = (
        Method::Options,
        resp(
            204,
            &[
                ("Tus-Extension", "creation,checksum"),
                ("Tus-Checksum-Algorithm", "sha1,sha256"),
            ],
        ),
    );
    let mut answers = vec![opts, created(URL)];
    answers.extend((0..5).map(|_| (Method::Patch, resp(460, &[]))));
    let script = Script::new(&e.store, &e.key, answers);
    let err = run(&e, &settings(10), &script).unwrap_err().to_string();
    assert!(err.contains("checksum mismatch 5 times"), "{err}");
    for p in &script.seen()[2..] {
        let sum = p
            .headers
            .iter()
            .find(|(n, _)| n == "Upload-Checksum")
            .unwrap();
        assert!(sum.1.starts_with("sha256 "), "{sum:?}");
        assert_eq!(p.body, data(10));
    }
}

#[test]
fn fatal_statuses_fail_with_the_server_message() {
    let e = env("fatal", &data(10));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            (
                Method::Post,
                Ok(Response {
                    status: 403,
                    headers: vec![],
                    body: "quota exceeded".into(),
                }),
            ),
        ],
    );
    let err = run(&e, &settings(10), &script).unwrap_err().to_string();
    assert!(
        err.contains("403") && err.contains("quota exceeded"),
        "{err}"
    );
}

#[test]
fn max_size_is_checked_before_creating() {
    let e = env("max", &data(10));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![(Method::Options, resp(204, &[("Tus-Max-Size", "9")]))],
    );
    let err = run(&e, &settings(10), &script).unwrap_err().to_string();
    assert!(err.contains("at most 9"), "{err}");
    assert_eq!(script.methods(), [Method::Options]);
}

#[test]
fn credentials_stay_on_the_endpoint_origin() {
    let e = env("auth", &data(10));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created("https://upload.example/tus/1"),
            offset(Method::Patch, 10),
        ],
    );
    let mut s = settings(10);
    s.headers = vec![
        Header {
            name: "Authorization".into(),
            value: "Bearer x".into(),
            secret: false,
        },
        Header {
            name: "X-Device".into(),
            value: "cam".into(),
            secret: false,
        },
        Header {
            name: "X-Token".into(),
            value: "t".into(),
            secret: true,
        },
    ];
    run(&e, &s, &script).unwrap();
    let names = |i: usize| -> Vec<String> {
        script.seen()[i]
            .headers
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    };
    assert!(
        names(1).contains(&"Authorization".to_string())
            && names(1).contains(&"X-Token".to_string())
    );
    assert!(
        !names(2).contains(&"Authorization".to_string())
            && !names(2).contains(&"X-Token".to_string())
    );
    assert!(names(2).contains(&"X-Device".to_string()));
}

#[test]
fn a_file_changed_since_its_upload_began_is_uploaded_anew_and_the_old_upload_terminated() {
    let e = env("changed", &data(10));
    let s = settings(10);
    let first = Script::new(
        &e.store,
        &e.key,
        vec![options(), created(URL), cut(Method::Patch)],
    );
    interrupted(&e, &s, &first);
    std::fs::write(&e.file, data(12)).unwrap();
    let second = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            (Method::Delete, resp(204, &[])),
            created("/files/v2"),
            offset(Method::Patch, 10),
            offset(Method::Patch, 12),
        ],
    );
    let done = run(&e, &s, &second).unwrap();
    assert_eq!(second.seen()[1].url, URL);
    assert_eq!(done.url, "http://127.0.0.1:1080/files/v2");
}

#[test]
fn too_large_halves_the_chunk() {
    let e = env("413", &data(300_000));
    let script = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            created(URL),
            (Method::Patch, resp(413, &[])),
            offset(Method::Head, 0),
            offset(Method::Patch, 150_000),
            offset(Method::Patch, 300_000),
        ],
    );
    let s = settings(300_000);
    let up = Uploader::new(&script, &e.store, &e.clock, &s, 7);
    up.upload(&e.file, Arc::new(Progress::default())).unwrap();
    assert_eq!(script.seen()[4].body.len(), 150_000);
    // The next file starts at the size the server accepted, without another 413.
    let other = e.dir.join("other.bin");
    std::fs::write(&other, data(200_000)).unwrap();
    let key = record_key(&other).unwrap();
    let next = Script::new(
        &e.store,
        &key,
        vec![
            created("/files/o"),
            offset(Method::Patch, 150_000),
            offset(Method::Patch, 200_000),
        ],
    );
    let up = Uploader {
        transport: &next,
        ..up
    };
    up.upload(&other, Arc::new(Progress::default())).unwrap();
    assert_eq!(next.seen()[1].body.len(), 150_000);
}

#[test]
fn cancel_terminates_and_forgets() {
    let e = env("cancel", &data(10));
    let s = settings(10);
    let first = Script::new(
        &e.store,
        &e.key,
        vec![options(), created(URL), cut(Method::Patch)],
    );
    interrupted(&e, &s, &first);
    let del = Script::new(&e.store, &e.key, vec![(Method::Delete, resp(204, &[]))]);
    assert_eq!(
        Uploader::new(&del, &e.store, &e.clock, &s, 1)
            .cancel(&e.file)
            .unwrap(),
        URL
    );
    assert_eq!(e.store.get(&e.key).unwrap(), None);
}

#[test]
fn creation_with_upload_sends_a_small_file_in_the_post_when_enabled_and_advertised() {
    let e = env("cwu", &data(8));
    let opts = (
        Method::Options,
        resp(204, &[("Tus-Extension", "creation,creation-with-upload")]),
    );
    let post = (
        Method::Post,
        resp(201, &[("Location", URL), ("Upload-Offset", "8")]),
    );
    let script = Script::new(&e.store, &e.key, vec![opts, post]);
    let s = Settings {
        creation_with_upload: true,
        ..settings(10)
    };
    run(&e, &s, &script).unwrap();
    let seen = script.seen();
    assert_eq!(seen.len(), 2, "no PATCH: one round trip for the data");
    assert_eq!(seen[1].body, data(8));
    assert_eq!(
        e.store.get(&e.key).unwrap().unwrap().state,
        RecordState::Complete
    );
    // Not advertised, or the file is larger than a chunk: plain creation.
    let e2 = env("cwu-off", &data(8));
    let plain = Script::new(
        &e2.store,
        &e2.key,
        vec![options(), created(URL), offset(Method::Patch, 8)],
    );
    run(&e2, &s, &plain).unwrap();
    assert!(plain.seen()[1].body.is_empty());
}

#[test]
fn one_time_urls_capture_the_media_id_and_a_refused_url_is_replaced() {
    let e = env("broker", &data(12));
    let mut s = settings(10);
    s.target = Target::UrlBroker;
    s.headers = vec![Header {
        name: "Authorization".into(),
        value: "Bearer device".into(),
        secret: true,
    }];
    let first = Script::new(
        &e.store,
        &e.key,
        vec![
            options(),
            (
                Method::Post,
                resp(
                    200,
                    &[
                        ("Location", "https://upload.example/tus/v1?tusv2=true"),
                        ("stream-media-id", "v1"),
                    ],
                ),
            ),
            (Method::Patch, resp(403, &[])),
            (
                Method::Post,
                resp(
                    201,
                    &[
                        ("Location", "https://upload.example/tus/v2?tusv2=true"),
                        ("stream-media-id", "v2"),
                    ],
                ),
            ),
            offset(Method::Patch, 10),
            offset(Method::Patch, 12),
        ],
    );
    let done = run(&e, &s, &first).unwrap();
    assert_eq!(
        done.media_id(),
        Some("v2"),
        "the abandoned video v1 was replaced"
    );
    assert_eq!(done.url, "https://upload.example/tus/v2?tusv2=true");
    let seen = first.seen();
    let auth = |i: usize| seen[i].headers.iter().any(|(n, _)| n == "Authorization");
    assert!(auth(1) && auth(3), "the broker gets the device credential");
    assert!(!auth(2) && !auth(4), "the upload origin never does");
}

#[test]
fn stream_targets_shrink_chunks_only_within_streams_rules() {
    let e = env("stream413", &data(10));
    let mut s = settings(12 * 1024 * 1024);
    s.target = Target::CloudflareStream;
    let up = Uploader::new(
        &Script::new(&e.store, &e.key, vec![]),
        &e.store,
        &e.clock,
        &s,
        1,
    )
    .smaller_chunk(12 * 1024 * 1024);
    assert_eq!(up, 6 * 1024 * 1024);
    let at_min = Uploader::new(
        &Script::new(&e.store, &e.key, vec![]),
        &e.store,
        &e.clock,
        &s,
        1,
    )
    .smaller_chunk(STREAM_MIN_CHUNK);
    assert_eq!(
        at_min, STREAM_MIN_CHUNK,
        "never below 5 MiB: a 413 then fails the file"
    );
    let odd = Uploader::new(
        &Script::new(&e.store, &e.key, vec![]),
        &e.store,
        &e.clock,
        &s,
        1,
    )
    .smaller_chunk(11 * 1024 * 1024);
    assert_eq!(odd % STREAM_CHUNK_MULTIPLE, 0);
}
