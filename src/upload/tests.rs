//! Orchestration tests: a scripted transport and a manual clock drive the uploader through
//! every path of its state machine; no sockets, no real sleeping.
//!
//! Key idea: a [`Scenario`] is one file, a store, a clock and settings; each test writes only
//! what its server answers (a [`Script`]) and what it checks of the requests it saw.

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

impl Seen {
    /// The value of the request header `name` (exact spelling, as ferry sends it).
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }
}

type Answer = std::result::Result<Response, TransportError>;

/// A transport that answers from a list, in order, and records what it was sent.
struct Script<'s> {
    answers: Mutex<VecDeque<(Method, Answer)>>,
    seen: Mutex<Vec<Seen>>,
    store: &'s Store,
    key: FileKey,
    /// Advanced by a second for every PATCH, when set (a link of known rate).
    clock: Option<&'s ManualClock>,
}

impl<'s> Script<'s> {
    fn new(store: &'s Store, key: &FileKey, answers: Vec<(Method, Answer)>) -> Self {
        Self {
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
            store,
            key: key.clone(),
            clock: None,
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
        if let (Some(clock), Method::Patch) = (self.clock, req.method) {
            clock.advance(Duration::from_secs(1));
        }
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

/// An answer with a status and no headers.
fn status(m: Method, code: u16) -> (Method, Answer) {
    (m, resp(code, &[]))
}

fn options() -> (Method, Answer) {
    let extensions = [
        ("Tus-Version", "1.0.0"),
        ("Tus-Extension", "creation,termination"),
    ];
    (Method::Options, resp(204, &extensions))
}

fn created(loc: &str) -> (Method, Answer) {
    let headers = [("Location", loc), ("Tus-Resumable", "1.0.0")];
    (Method::Post, resp(201, &headers))
}

fn offset(m: Method, o: u64) -> (Method, Answer) {
    let code = if m == Method::Head { 200 } else { 204 };
    (m, resp(code, &[("Upload-Offset", o.to_string().as_str())]))
}

/// A PATCH the server accepted up to `o`.
fn patch(o: u64) -> (Method, Answer) {
    offset(Method::Patch, o)
}

/// A HEAD that says the server holds `o` bytes.
fn head(o: u64) -> (Method, Answer) {
    offset(Method::Head, o)
}

fn cut(m: Method) -> (Method, Answer) {
    let reset = TransportError {
        kind: FailureKind::Connection,
        message: "connection reset".into(),
    };
    (m, Err(reset))
}

fn header(name: &str, value: &str, secret: bool) -> Header {
    Header {
        name: name.into(),
        value: value.into(),
        secret,
    }
}

const EP: &str = "http://127.0.0.1:1080/files/";
const URL: &str = "http://127.0.0.1:1080/files/abc";

/// One file in a temporary directory, a temporary store, a manual clock, and the settings the
/// uploader runs with (10-byte chunks unless changed).
struct Scenario {
    dir: PathBuf,
    file: PathBuf,
    key: FileKey,
    store: Store,
    clock: ManualClock,
    settings: Settings,
}

impl Scenario {
    fn new(name: &str, content: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-up-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("clip.mp4");
        std::fs::write(&file, content).unwrap();
        let key = FileKey::for_path(&file).unwrap();
        let settings = Settings {
            endpoint: EP.into(),
            chunk_size_bytes: Some(10),
            ..Settings::default()
        };
        Self {
            dir,
            file,
            key,
            store: Store::open_temporary().unwrap(),
            clock: ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            settings,
        }
    }

    /// Changes the settings.
    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(&mut self.settings);
        self
    }

    fn script(&self, answers: Vec<(Method, Answer)>) -> Script<'_> {
        Script::new(&self.store, &self.key, answers)
    }

    fn uploader<'s>(&'s self, transport: &'s Script) -> Uploader<'s> {
        Uploader::new(transport, &self.store, &self.clock, &self.settings, 7)
    }

    /// Uploads the file once against a server that answers `answers`.
    fn run(&self, answers: Vec<(Method, Answer)>) -> (Result<Completed>, Script<'_>) {
        let script = self.script(answers);
        let progress = Arc::new(Progress::default());
        let result = self.uploader(&script).upload(&self.file, progress);
        (result, script)
    }

    /// [`Scenario::run`] that must succeed.
    fn run_ok(&self, answers: Vec<(Method, Answer)>) -> (Completed, Script<'_>) {
        let (result, script) = self.run(answers);
        (result.unwrap(), script)
    }

    /// A first run that ends at its first transient failure (`max_attempts = 1`), as a kill
    /// would.
    fn interrupted(&self, answers: Vec<(Method, Answer)>) {
        let once = Settings {
            retry: RetryPolicy {
                max_attempts: Some(1),
                ..RetryPolicy::default()
            },
            ..self.settings.clone()
        };
        let script = self.script(answers);
        let up = Uploader::new(&script, &self.store, &self.clock, &once, 7);
        let result = up.upload(&self.file, Arc::new(Progress::default()));
        assert!(matches!(result, Err(Error::GaveUp { attempts: 1, .. })));
    }

    /// The usual first run: the upload is created at [`URL`], then its first PATCH is cut.
    fn cut_after_create(&self) {
        self.interrupted(vec![options(), created(URL), cut(Method::Patch)]);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn fresh_upload_persists_the_url_before_the_first_patch() {
    let sc = Scenario::new("fresh", &data(25));
    let (done, script) = sc.run_ok(vec![
        options(),
        created("/files/abc"),
        patch(10),
        patch(20),
        patch(25),
    ]);
    let expected = Completed {
        path: sc.file.clone(),
        url: URL.into(),
        length: 25,
        already: false,
        captured: Default::default(),
    };
    assert_eq!(done, expected);
    let seen = script.seen();
    let post = &seen[1];
    let meta = post.header("Upload-Metadata");
    assert_eq!(meta, Some("filename Y2xpcC5tcDQ=,filetype dmlkZW8vbXA0"));
    assert_eq!(post.stored_url, None);
    for (i, p) in seen[2..].iter().enumerate() {
        let why = format!("invariant 2: URL durable before PATCH {i}");
        assert_eq!(p.stored_url.as_deref(), Some(URL), "{why}");
        assert_eq!(p.url, URL);
    }
    let body: Vec<u8> = seen[2..].iter().flat_map(|s| s.body.clone()).collect();
    assert_eq!(body, data(25));
    let rec = sc.store.get(&sc.key).unwrap().unwrap();
    assert_eq!((rec.state, rec.offset), (RecordState::Complete, 25));
    assert!(sc.clock.sleeps().is_empty());
}

#[test]
fn chunks_are_not_synced_only_the_url_and_the_completion_are() {
    // Issue 16, target 3: the server's offset is the truth (invariant 3), so a confirmed
    // chunk is written to the store unsynced; the durable points are the URL before the first
    // data byte (invariant 2) and the completion.
    let sc = Scenario::new("syncs", &data(100));
    let before = sc.store.syncs();
    let mut answers = vec![options(), created(URL)];
    answers.extend((1..=10).map(|i| patch(i * 10)));
    let (_, script) = sc.run_ok(answers);
    assert_eq!(script.methods().len(), 12, "ten PATCHes");
    assert_eq!(
        sc.store.syncs() - before,
        2,
        "the URL and the completion only"
    );
    // A resume after a cut: the HEAD's offset and expiry are not synced either.
    let sc = Scenario::new("syncs-resume", &data(30));
    sc.interrupted(vec![options(), created(URL), patch(10), cut(Method::Patch)]);
    let before = sc.store.syncs();
    let expiring = (
        Method::Head,
        resp(
            200,
            &[
                ("Upload-Offset", "13"),
                ("Upload-Expires", "Wed, 25 Jun 2031 16:00:00 GMT"),
            ],
        ),
    );
    sc.run_ok(vec![options(), expiring, patch(23), patch(30)]);
    assert_eq!(sc.store.syncs() - before, 1, "the completion only");
}

#[test]
fn the_daemons_uploader_leaves_the_completion_sync_to_the_daemon() {
    // Issue 16, target 5: the daemon syncs a completion before its after-upload action, off
    // the worker's path (and shared with the next file's URL sync when they meet): the worker
    // itself syncs only the URL. The record says complete all the same.
    let sc = Scenario::new("syncs-daemon", &data(20));
    let script = sc.script(vec![options(), created(URL), patch(10), patch(20)]);
    let before = sc.store.syncs();
    let done = sc
        .uploader(&script)
        .with_completion_synced_by_caller()
        .upload(&sc.file, Arc::new(Progress::default()))
        .unwrap();
    assert_eq!(done.url, URL);
    assert_eq!(sc.store.syncs() - before, 1, "the URL only");
    let rec = sc.store.get(&sc.key).unwrap().unwrap();
    assert_eq!(rec.state, RecordState::Complete);
    sc.store.sync().unwrap();
    assert_eq!(sc.store.syncs() - before, 2, "the caller's sync");
}

#[test]
fn a_second_run_of_a_complete_file_sends_nothing() {
    let sc = Scenario::new("again", &data(5));
    sc.run_ok(vec![options(), created(URL), patch(5)]);
    let (done, second) = sc.run_ok(vec![]);
    assert!(done.already);
    assert_eq!(done.url, URL);
    assert!(second.seen().is_empty());
}

#[test]
fn resume_asks_the_server_and_continues_from_its_offset() {
    let sc = Scenario::new("resume", &data(30));
    sc.interrupted(vec![options(), created(URL), patch(10), cut(Method::Patch)]);
    // The server kept 13 bytes of the cut PATCH; the next run resumes at 13, not at 10 or 20.
    let (_, second) = sc.run_ok(vec![options(), head(13), patch(23), patch(30)]);
    assert_eq!(
        second.methods(),
        [Method::Options, Method::Head, Method::Patch, Method::Patch]
    );
    let seen = second.seen();
    assert_eq!(seen[2].header("Upload-Offset"), Some("13"));
    assert_eq!(seen[2].body, data(30)[13..23]);
}

#[test]
fn transient_failures_back_off_then_probe_and_reset_after_progress() {
    let sc = Scenario::new("backoff", &data(30)).with(|s| {
        s.retry = RetryPolicy {
            initial_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            ..RetryPolicy::default()
        }
    });
    sc.run_ok(vec![
        options(),
        created(URL),
        cut(Method::Patch),
        cut(Method::Head),
        head(0),
        patch(10),
        status(Method::Patch, 503),
        head(10),
        patch(20),
        patch(30),
    ]);
    let sleeps = sc.clock.sleeps();
    assert_eq!(sleeps.len(), 3, "{sleeps:?}");
    assert!(
        sleeps[0] <= Duration::from_secs(2) && sleeps[1] <= Duration::from_secs(4),
        "{sleeps:?}"
    );
    let why = format!("attempt counter reset by progress: {sleeps:?}");
    assert!(sleeps[2] <= Duration::from_secs(2), "{why}");
}

#[test]
fn retry_after_is_obeyed_exactly() {
    let sc = Scenario::new("ra", &data(10));
    let locked = (Method::Patch, resp(423, &[("Retry-After", "17")]));
    sc.run_ok(vec![options(), created(URL), locked, head(0), patch(10)]);
    assert_eq!(sc.clock.sleeps(), [Duration::from_secs(17)]);
}

#[test]
fn conflict_probes_at_once_and_continues_from_the_server_offset() {
    let sc = Scenario::new("409", &data(20));
    let conflict = status(Method::Patch, 409);
    let (_, script) = sc.run_ok(vec![
        options(),
        created(URL),
        conflict,
        head(4),
        patch(14),
        patch(20),
    ]);
    assert!(sc.clock.sleeps().is_empty());
    assert_eq!(script.seen()[4].body, data(20)[4..14]);
}

#[test]
fn a_lost_upload_is_created_again() {
    let sc = Scenario::new("gone", &data(10));
    sc.cut_after_create();
    let lost = status(Method::Head, 404);
    let (done, _) = sc.run_ok(vec![options(), lost, created("/files/new"), patch(10)]);
    assert_eq!(done.url, "http://127.0.0.1:1080/files/new");
}

#[test]
fn an_expired_upload_is_not_probed() {
    let sc = Scenario::new("expired", &data(10));
    let exp = crate::tus::httpdate::format(sc.clock.wall() + Duration::from_secs(60));
    let post = resp(201, &[("Location", URL), ("Upload-Expires", exp.as_str())]);
    sc.interrupted(vec![options(), (Method::Post, post), cut(Method::Patch)]);
    sc.clock.advance(Duration::from_secs(61));
    let (_, second) = sc.run_ok(vec![options(), created("/files/fresh"), patch(10)]);
    assert_eq!(
        second.methods(),
        [Method::Options, Method::Post, Method::Patch]
    );
}

#[test]
fn empty_files_complete_with_the_post_alone() {
    let sc = Scenario::new("empty", b"");
    let (done, script) = sc.run_ok(vec![options(), created(URL)]);
    assert_eq!(done.length, 0);
    assert_eq!(script.seen()[1].header("Upload-Length"), Some("0"));
}

#[test]
fn checksum_mismatch_resends_the_same_chunk_then_gives_up() {
    let sc = Scenario::new("sum", &data(10));
    let extensions = [
        ("Tus-Extension", "creation,checksum"),
        ("Tus-Checksum-Algorithm", "sha1,sha256"),
    ];
    let mut answers = vec![(Method::Options, resp(204, &extensions)), created(URL)];
    answers.extend((0..5).map(|_| status(Method::Patch, 460)));
    let (result, script) = sc.run(answers);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("checksum mismatch 5 times"), "{err}");
    for p in &script.seen()[2..] {
        let sum = p.header("Upload-Checksum").unwrap();
        assert!(sum.starts_with("sha256 "), "{sum:?}");
        assert_eq!(p.body, data(10));
    }
}

#[test]
fn fatal_statuses_fail_with_the_server_message() {
    let sc = Scenario::new("fatal", &data(10));
    let quota = Response {
        status: 403,
        headers: vec![],
        body: "quota exceeded".into(),
    };
    let (result, _) = sc.run(vec![options(), (Method::Post, Ok(quota))]);
    let err = result.unwrap_err().to_string();
    let says = err.contains("403") && err.contains("quota exceeded");
    assert!(says, "{err}");
}

#[test]
fn max_size_is_checked_before_creating() {
    let sc = Scenario::new("max", &data(10));
    let (result, script) = sc.run(vec![(Method::Options, resp(204, &[("Tus-Max-Size", "9")]))]);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("at most 9"), "{err}");
    assert_eq!(script.methods(), [Method::Options]);
}

#[test]
fn credentials_stay_on_the_endpoint_origin() {
    let sc = Scenario::new("auth", &data(10)).with(|s| {
        s.headers = vec![
            header("Authorization", "Bearer x", false),
            header("X-Device", "cam", false),
            header("X-Token", "t", true),
        ]
    });
    let elsewhere = created("https://upload.example/tus/1");
    let (_, script) = sc.run_ok(vec![options(), elsewhere, patch(10)]);
    let seen = script.seen();
    let has = |i: usize, name: &str| seen[i].header(name).is_some();
    assert!(has(1, "Authorization") && has(1, "X-Token"));
    assert!(!has(2, "Authorization") && !has(2, "X-Token"));
    assert!(has(2, "X-Device"));
}

#[test]
fn a_file_changed_since_its_upload_began_is_uploaded_anew_and_the_old_upload_terminated() {
    let sc = Scenario::new("changed", &data(10));
    sc.cut_after_create();
    std::fs::write(&sc.file, data(12)).unwrap();
    let terminated = status(Method::Delete, 204);
    let (done, second) = sc.run_ok(vec![
        options(),
        terminated,
        created("/files/v2"),
        patch(10),
        patch(12),
    ]);
    assert_eq!(second.seen()[1].url, URL);
    assert_eq!(done.url, "http://127.0.0.1:1080/files/v2");
}

#[test]
fn too_large_halves_the_chunk() {
    let sc = Scenario::new("413", &data(300_000)).with(|s| s.chunk_size_bytes = Some(300_000));
    let script = sc.script(vec![
        options(),
        created(URL),
        status(Method::Patch, 413),
        head(0),
        patch(150_000),
        patch(300_000),
    ]);
    let up = sc.uploader(&script);
    up.upload(&sc.file, Arc::new(Progress::default())).unwrap();
    assert_eq!(script.seen()[4].body.len(), 150_000);
    // The next file starts at the size the server accepted, without another 413.
    let other = sc.dir.join("other.bin");
    std::fs::write(&other, data(200_000)).unwrap();
    let key = FileKey::for_path(&other).unwrap();
    let answers = vec![created("/files/o"), patch(150_000), patch(200_000)];
    let next = Script::new(&sc.store, &key, answers);
    let up = Uploader {
        transport: &next,
        ..up
    };
    up.upload(&other, Arc::new(Progress::default())).unwrap();
    assert_eq!(next.seen()[1].body.len(), 150_000);
}

#[test]
fn cancel_terminates_and_forgets() {
    let sc = Scenario::new("cancel", &data(10));
    sc.cut_after_create();
    let del = sc.script(vec![status(Method::Delete, 204)]);
    assert_eq!(sc.uploader(&del).cancel(&sc.file, false).unwrap().url, URL);
    assert_eq!(sc.store.get(&sc.key).unwrap(), None);
}

/// Issue 13: `--cancel` deleted uploads that had completed without a word; a complete upload
/// is the server's copy of the file, terminated only with `--force`, and said so.
#[test]
fn cancel_of_a_complete_upload_needs_force() {
    let sc = Scenario::new("cancel-done", &data(5));
    sc.run_ok(vec![options(), created(URL), patch(5)]);
    let nothing = sc.script(vec![]);
    let err = sc.uploader(&nothing).cancel(&sc.file, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("is complete: the server holds all of it"),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(nothing.seen().is_empty(), "nothing sent without --force");
    assert!(sc.store.get(&sc.key).unwrap().is_some(), "record kept");
    let del = sc.script(vec![status(Method::Delete, 204)]);
    let done = sc.uploader(&del).cancel(&sc.file, true).unwrap();
    assert!(done.complete);
    assert_eq!(sc.store.get(&sc.key).unwrap(), None);
}

#[test]
fn creation_with_upload_sends_a_small_file_in_the_post_when_enabled_and_advertised() {
    let enabled = |s: &mut Settings| s.creation_with_upload = true;
    let sc = Scenario::new("cwu", &data(8)).with(enabled);
    let extensions = [("Tus-Extension", "creation,creation-with-upload")];
    let opts = (Method::Options, resp(204, &extensions));
    let post = (
        Method::Post,
        resp(201, &[("Location", URL), ("Upload-Offset", "8")]),
    );
    let (_, script) = sc.run_ok(vec![opts, post]);
    let seen = script.seen();
    assert_eq!(seen.len(), 2, "no PATCH: one round trip for the data");
    assert_eq!(seen[1].body, data(8));
    let rec = sc.store.get(&sc.key).unwrap().unwrap();
    assert_eq!(rec.state, RecordState::Complete);
    // Not advertised, or the file is larger than a chunk: plain creation.
    let plain = Scenario::new("cwu-off", &data(8)).with(enabled);
    let (_, script) = plain.run_ok(vec![options(), created(URL), patch(8)]);
    assert!(script.seen()[1].body.is_empty());
}

#[test]
fn one_time_urls_capture_the_media_id_and_a_refused_url_is_replaced() {
    let sc = Scenario::new("broker", &data(12)).with(|s| {
        s.target = Target::UrlBroker;
        s.headers = vec![header("Authorization", "Bearer device", true)];
    });
    let one_time = |code: u16, video: &str| {
        let location = format!("https://upload.example/tus/{video}?tusv2=true");
        let headers = [("Location", location.as_str()), ("stream-media-id", video)];
        (Method::Post, resp(code, &headers))
    };
    let (done, first) = sc.run_ok(vec![
        options(),
        one_time(200, "v1"),
        status(Method::Patch, 403),
        one_time(201, "v2"),
        patch(10),
        patch(12),
    ]);
    let why = "the abandoned video v1 was replaced";
    assert_eq!(done.media_id(), Some("v2"), "{why}");
    assert_eq!(done.url, "https://upload.example/tus/v2?tusv2=true");
    let seen = first.seen();
    let auth = |i: usize| seen[i].headers.iter().any(|(n, _)| n == "Authorization");
    assert!(auth(1) && auth(3), "the broker gets the device credential");
    assert!(!auth(2) && !auth(4), "the upload origin never does");
}

#[test]
fn stream_targets_shrink_chunks_only_within_streams_rules() {
    let sc = Scenario::new("stream413", &data(10)).with(|s| {
        s.chunk_size_bytes = Some(12 * 1024 * 1024);
        s.target = Target::CloudflareStream;
    });
    let silent = sc.script(vec![]);
    let up = sc.uploader(&silent);
    assert_eq!(up.smaller_chunk(12 * 1024 * 1024), 6 * 1024 * 1024);
    let at_min = up.smaller_chunk(STREAM_MIN_CHUNK);
    let why = "never below 5 MiB: a 413 then fails the file";
    assert_eq!(at_min, STREAM_MIN_CHUNK, "{why}");
    let odd = up.smaller_chunk(11 * 1024 * 1024);
    assert_eq!(odd % STREAM_CHUNK_MULTIPLE, 0);
}

const MIB: usize = 1024 * 1024;

#[test]
fn without_a_chunk_size_the_first_chunk_is_moderate_and_the_next_ones_follow_the_rate() {
    let sc = Scenario::new("policy-rate", &data(30 * MIB)).with(|s| s.chunk_size_bytes = None);
    let mut script = sc.script(vec![
        options(),
        created(URL),
        patch(4 * MIB as u64),
        patch(30 * MIB as u64),
    ]);
    script.clock = Some(&sc.clock);
    let up = sc.uploader(&script);
    up.upload(&sc.file, Arc::new(Progress::default())).unwrap();
    let lens: Vec<usize> = script.seen()[2..].iter().map(|s| s.body.len()).collect();
    // 4 MiB took 1 s: 10 s of 4 MiB/s is more than the 26 MiB left, so they go in one PATCH.
    assert_eq!(lens, [4 * MIB, 26 * MIB]);
    assert_eq!(up.cut_handling(), chunking::CutHandling::Unknown);
}

#[test]
fn a_head_after_a_cut_that_shows_partial_bytes_teaches_that_the_server_keeps_them() {
    let sc = Scenario::new("policy-keeps", &data(6 * MIB)).with(|s| s.chunk_size_bytes = None);
    let script = sc.script(vec![
        options(),
        created(URL),
        cut(Method::Patch),
        head(MIB as u64),
        patch(5 * MIB as u64),
        patch(6 * MIB as u64),
    ]);
    let up = sc.uploader(&script);
    up.upload(&sc.file, Arc::new(Progress::default())).unwrap();
    let seen = script.seen();
    assert_eq!(
        seen[2].body.len(),
        4 * MIB,
        "no rate yet: the first chunk is 4 MiB"
    );
    assert_eq!(up.cut_handling(), chunking::CutHandling::Keeps);
    assert_eq!(seen[4].header("Upload-Offset"), Some("1048576"));
}

#[test]
fn stream_targets_start_from_drops_and_an_explicit_chunk_size_always_wins() {
    let stream = Scenario::new("policy-stream", &data(10)).with(|s| {
        s.chunk_size_bytes = None;
        s.target = Target::CloudflareStream;
    });
    let silent = stream.script(vec![]);
    let up = stream.uploader(&silent);
    assert_eq!(up.cut_handling(), chunking::CutHandling::Drops);
    let f = up
        .start(&stream.file, Arc::new(Progress::default()))
        .unwrap();
    assert_eq!(up.next_chunk(&f), STREAM_MIN_CHUNK);
    let fixed =
        Scenario::new("policy-fixed", &data(10)).with(|s| s.chunk_size_bytes = Some(MIB as u64));
    let silent = fixed.script(vec![]);
    let up = fixed.uploader(&silent);
    *up.link_rate.lock().unwrap() = {
        let mut r = chunking::LinkRate::default();
        r.record(1 << 40, 1.0);
        r
    };
    let f = up
        .start(&fixed.file, Arc::new(Progress::default()))
        .unwrap();
    assert_eq!(up.next_chunk(&f), MIB as u64);
}
