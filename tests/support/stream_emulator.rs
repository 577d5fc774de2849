//! A local emulation of Cloudflare Stream's documented tus contract, on two loopback origins.
//!
//! The **API origin** (`http://127.0.0.1:P/client/v4`, standing for api.cloudflare.com) takes
//! creation requests, `POST /accounts/{account_id}/stream[?direct_user=true]`, authenticated by
//! `Authorization: Bearer <api_token>`. The **upload origin** (`http://127.0.0.1:Q`, standing for
//! upload.videodelivery.net) serves the one-time URLs that `direct_user=true` hands out,
//! `/tus/<uid>?tusv2=true`, without authentication. A creation without `direct_user` returns an
//! upload URL on the API origin, `{api}/accounts/{account_id}/stream/<uid>`, which needs the token.
//!
//! What follows Stream's documentation: `Tus-Resumable: 1.0.0` only; `Upload-Length` required;
//! `Upload-Metadata` recorded (`requiresignedurls` may come without a value; `expiry` and
//! `maxDurationSeconds` kept apart); the video id in a `stream-media-id` header; the chunk rules
//! (every PATCH that does not complete the upload carries a multiple of 262,144 bytes, at least
//! 5,242,880 and at most 209,715,200); one-time URLs that expire (30 min by default); Cloudflare's
//! JSON error envelope on the API origin; `X-HTTP-Method-Override` is *not* honoured.
//!
//! Choices of this emulator where the documentation says nothing (each a test convenience, not
//! a claim about Stream):
//! - a video is served only at the URL its creation returned (the other origin answers 404);
//! - a URL's lifetime is [`StreamConfig::url_lifetime`] from creation, whatever `expiry` the
//!   creator asked for (recorded in [`Video::expiry`]); past it, or after
//!   [`StreamEmulator::expire`], HEAD/PATCH/DELETE answer 404;
//! - a PATCH body that ends early stores nothing (only whole chunks count); a PATCH past
//!   `Upload-Length` gets 413; a second request while a PATCH runs gets 423;
//! - a creation request with a body gets 400 (creation-with-upload is not emulated);
//! - JSON errors other than the 10000 authentication error carry the HTTP status as `code`;
//! - a [`CreationFault::Stall`] delays the answer; if the client has hung up by then, nothing is
//!   created, so a test of a client-side time-out sees no stray video.
//!
//! Bodies stream to one file per video in a data directory, never into memory.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher as _, RandomState};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::tus_server::parse_metadata;

/// The only tus version Stream speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// The media type every PATCH body must carry.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// The API origin's path prefix (`https://api.cloudflare.com/client/v4`).
pub const API_PREFIX: &str = "/client/v4";
/// Every chunk but the last must be a multiple of this (256 KiB).
pub const CHUNK_MULTIPLE: u64 = 262_144;
/// Every chunk but the last must be at least this (5 MiB).
pub const CHUNK_MIN: u64 = 5_242_880;
/// Every chunk but the last must be at most this (200 MiB).
pub const CHUNK_MAX: u64 = 209_715_200;

const BUF_BYTES: usize = 64 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_LINE_BYTES: u64 = 8 * 1024;
/// How often blocked reads and sleeps look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a graceful close keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// The emulated account; `Default` is account `acct-test`, token `stream-token-for-tests`,
/// 30-minute URLs and the chunk rules on.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// `{account_id}` in the API paths.
    pub account_id: String,
    /// The token the API origin accepts as `Authorization: Bearer <api_token>`.
    pub api_token: String,
    /// How long an upload URL (one-time or API-origin) works after its creation.
    pub url_lifetime: Duration,
    /// Enforce Stream's chunk rules on PATCH bodies that do not complete the upload.
    pub chunk_rules: bool,
    /// Where bodies are stored; `None` makes a fresh temp dir that is removed on drop.
    pub data_dir: Option<PathBuf>,
    /// How long a read may wait for the client before the connection is closed.
    pub read_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            account_id: "acct-test".to_string(),
            api_token: "stream-token-for-tests".to_string(),
            url_lifetime: Duration::from_secs(30 * 60),
            chunk_rules: true,
            data_dir: None,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A misbehaviour of the creation endpoint (see [`StreamEmulator::set_creation_fault`]).
#[derive(Clone, Debug)]
pub enum CreationFault {
    /// Answer this status with this body (`Content-Type: application/json`, see
    /// [`cloudflare_error`]) and create nothing.
    Status { code: u16, body: String },
    /// Like `Status`, with extra headers (e.g. 429 + `Retry-After`).
    StatusWithHeaders {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Say nothing for this long, then process the request (unless the client hung up).
    Stall(Duration),
}

/// Which listener a request arrived at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `http://127.0.0.1:P` (the API, `/client/v4/…`).
    Api,
    /// `http://127.0.0.1:Q` (one-time upload URLs, `/tus/<uid>`).
    Upload,
}

/// A snapshot of one video's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Video {
    /// 32 lowercase hex characters, as in `stream-media-id`.
    pub uid: String,
    /// 0 for the first video created, then 1, 2…
    pub order: usize,
    /// `Upload-Length`.
    pub length: u64,
    /// Bytes stored so far.
    pub offset: u64,
    /// `offset == length`.
    pub complete: bool,
    /// Created with `?direct_user=true` (its URL is on the upload origin).
    pub direct_user: bool,
    /// The `Location` the creation answered.
    pub upload_url: String,
    /// Decoded `Upload-Metadata` pairs, in order; `None` for a key sent without a value.
    pub metadata: Vec<(String, Option<String>)>,
    /// `Upload-Metadata` exactly as received.
    pub raw_metadata: Option<String>,
    /// The decoded `expiry` metadata the creator asked for (not enforced, see the module doc).
    pub expiry: Option<String>,
    /// The decoded `maxDurationSeconds` metadata.
    pub max_duration_seconds: Option<String>,
    /// `Upload-Creator`.
    pub creator: Option<String>,
    pub created_at: SystemTime,
    /// When the upload URL stops working (`created_at + url_lifetime`).
    pub expires_at: SystemTime,
    /// Past `expires_at`, or expired by [`StreamEmulator::expire`].
    pub expired: bool,
    /// Terminated by DELETE.
    pub deleted: bool,
    /// Some request to this video's path on the upload origin carried `Authorization`.
    pub authorization_on_upload_origin: bool,
}

impl Video {
    /// The decoded value of metadata `key`: `Some(None)` for a key sent without a value.
    pub fn meta(&self, key: &str) -> Option<Option<&str>> {
        let found = self.metadata.iter().find(|(k, _)| k == key);
        found.map(|(_, v)| v.as_deref())
    }
}

/// One request as the emulator received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    pub origin: Origin,
    /// The method as sent (no override).
    pub method: String,
    /// The request target's path and query, e.g. `/tus/<uid>?tusv2=true`.
    pub path: String,
    /// All headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body bytes read from the socket (including drained ones).
    pub body_bytes: u64,
    /// The status sent, `None` if no response was sent.
    pub status: Option<u16>,
}

impl RequestLog {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        let found = self.headers.iter().find(|(n, _)| *n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// Cloudflare's API error envelope: `{"success":false,"errors":[{"code":…,"message":…}],
/// "messages":[],"result":null}`.
pub fn cloudflare_error(code: u32, message: &str) -> String {
    serde_json::json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null,
    })
    .to_string()
}

/// Why a PATCH body of `len` bytes that does not complete its upload breaks Stream's chunk
/// rules, or `None` if it does not.
pub fn chunk_rule_violation(len: u64) -> Option<String> {
    let fits = len % CHUNK_MULTIPLE == 0 && (CHUNK_MIN..=CHUNK_MAX).contains(&len);
    (!fits).then(|| {
        format!(
            "chunk rule: a chunk that does not complete the upload must be a multiple of \
             {CHUNK_MULTIPLE} bytes, at least {CHUNK_MIN} and at most {CHUNK_MAX}; got {len}"
        )
    })
}

/// A running emulator; stops (and removes its temp data dir) on [`StreamEmulator::shutdown`] or
/// drop.
pub struct StreamEmulator {
    shared: Arc<Shared>,
    acceptors: Vec<JoinHandle<()>>,
    owns_data_dir: bool,
}

impl StreamEmulator {
    /// Binds two listeners on 127.0.0.1 and starts serving. Panics if a socket or the data dir
    /// cannot be made.
    pub fn start(config: StreamConfig) -> StreamEmulator {
        let api = TcpListener::bind("127.0.0.1:0").expect("bind the Stream API origin");
        let upload = TcpListener::bind("127.0.0.1:0").expect("bind the Stream upload origin");
        let owns_data_dir = config.data_dir.is_none();
        let data_dir = config.data_dir.clone().unwrap_or_else(fresh_temp_dir);
        fs::create_dir_all(&data_dir).expect("create the Stream emulator's data dir");
        let shared = Arc::new(Shared {
            api_addr: api.local_addr().expect("API origin address"),
            upload_addr: upload.local_addr().expect("upload origin address"),
            config,
            data_dir,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let acceptors = [(api, Origin::Api), (upload, Origin::Upload)]
            .into_iter()
            .map(|(listener, origin)| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("stream-{origin:?}").to_ascii_lowercase())
                    .spawn(move || accept_loop(&listener, &shared, origin))
                    .expect("spawn the Stream emulator")
            })
            .collect();
        StreamEmulator {
            shared,
            acceptors,
            owns_data_dir,
        }
    }

    /// `http://127.0.0.1:P/client/v4`.
    pub fn api_base(&self) -> String {
        format!("http://{}{API_PREFIX}", self.shared.api_addr)
    }

    /// `{api_base}/accounts/{account_id}/stream`: where creations are POSTed.
    pub fn creation_endpoint(&self) -> String {
        format!(
            "http://{}{}",
            self.shared.api_addr,
            self.shared.creation_path()
        )
    }

    /// `http://127.0.0.1:Q` (stands for `https://upload.videodelivery.net`).
    pub fn upload_origin(&self) -> String {
        format!("http://{}", self.shared.upload_addr)
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.shared.api_addr
    }

    pub fn upload_addr(&self) -> SocketAddr {
        self.shared.upload_addr
    }

    pub fn account_id(&self) -> String {
        self.shared.config.account_id.clone()
    }

    pub fn api_token(&self) -> String {
        self.shared.config.api_token.clone()
    }

    /// Replaces every creation's processing from now on (`None` ends it); a fault queued by
    /// [`StreamEmulator::push_creation_fault`] goes first.
    pub fn set_creation_fault(&self, fault: Option<CreationFault>) {
        lock(&self.shared.state).creation_fault = fault;
    }

    /// Queues a fault for the next creation only (FIFO).
    pub fn push_creation_fault(&self, fault: CreationFault) {
        lock(&self.shared.state).queued_faults.push_back(fault);
    }

    /// All videos ever created, in creation order.
    pub fn videos(&self) -> Vec<Video> {
        let now = SystemTime::now();
        let state = lock(&self.shared.state);
        state.videos.iter().map(|v| v.snapshot(now)).collect()
    }

    pub fn video(&self, uid: &str) -> Option<Video> {
        self.videos().into_iter().find(|v| v.uid == uid)
    }

    /// The bytes stored for video `uid` so far (empty if unknown or deleted).
    pub fn video_bytes(&self, uid: &str) -> Vec<u8> {
        fs::read(self.video_path(uid)).unwrap_or_default()
    }

    /// Where video `uid`'s bytes are stored.
    pub fn video_path(&self, uid: &str) -> PathBuf {
        self.shared.data_dir.join(uid)
    }

    /// Makes video `uid`'s upload URL expire now: later requests get 404.
    pub fn expire(&self, uid: &str) {
        if let Some(video) = lock(&self.shared.state).find(uid) {
            video.expired_by_hand = true;
        }
    }

    /// Every request received so far, on both origins, in arrival order.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.state).log.clone()
    }

    /// Stops accepting; connection threads end within a poll interval (or a write timeout).
    pub fn shutdown(self) {}
}

impl Drop for StreamEmulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept()s so the threads see the stop flag.
        for addr in [self.shared.api_addr, self.shared.upload_addr] {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
        if self.owns_data_dir {
            let _ = fs::remove_dir_all(&self.shared.data_dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared {
    config: StreamConfig,
    api_addr: SocketAddr,
    upload_addr: SocketAddr,
    data_dir: PathBuf,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    videos: Vec<VideoState>,
    creation_fault: Option<CreationFault>,
    queued_faults: VecDeque<CreationFault>,
    log: Vec<RequestLog>,
}

impl State {
    fn find(&mut self, uid: &str) -> Option<&mut VideoState> {
        self.videos.iter_mut().find(|v| v.info.uid == uid)
    }
}

struct VideoState {
    info: Video,
    expired_by_hand: bool,
    /// A PATCH or DELETE holds the video.
    busy: bool,
}

impl VideoState {
    fn snapshot(&self, now: SystemTime) -> Video {
        let mut info = self.info.clone();
        info.expired = self.expired_by_hand || now >= info.expires_at;
        info.complete = info.offset == info.length;
        info
    }
}

/// Locks a mutex, ignoring poisoning: a panicked test thread must not hide the state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Exclusive right to change one video; released on drop.
struct VideoLock<'a> {
    shared: &'a Shared,
    uid: String,
    offset: u64,
    length: u64,
}

impl Drop for VideoLock<'_> {
    fn drop(&mut self) {
        if let Some(video) = lock(&self.shared.state).find(&self.uid) {
            video.busy = false;
        }
    }
}

impl Shared {
    fn creation_path(&self) -> String {
        format!("{API_PREFIX}/accounts/{}/stream", self.config.account_id)
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some((scheme, token)) = req.header("authorization").and_then(|v| v.split_once(' '))
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case("bearer") && token.trim() == self.config.api_token
    }

    fn take_creation_fault(&self) -> Option<CreationFault> {
        let mut state = lock(&self.state);
        let queued = state.queued_faults.pop_front();
        queued.or_else(|| state.creation_fault.clone())
    }

    fn log_request(&self, origin: Origin, req: &Request) -> usize {
        let mut state = lock(&self.state);
        state.log.push(RequestLog {
            origin,
            method: req.method.clone(),
            path: req.target.clone(),
            headers: req.headers.clone(),
            body_bytes: 0,
            status: None,
        });
        state.log.len() - 1
    }

    fn finish_log(&self, index: usize, body_bytes: u64, status: Option<u16>) {
        if let Some(entry) = lock(&self.state).log.get_mut(index) {
            entry.body_bytes = body_bytes;
            entry.status = status;
        }
    }

    fn create_video(&self, new: NewVideo) -> io::Result<Video> {
        let uid = format!("{:016x}{:016x}", random_u64(), random_u64());
        File::create(self.data_dir.join(&uid))?;
        let upload_url = if new.direct_user {
            format!("http://{}/tus/{uid}?tusv2=true", self.upload_addr)
        } else {
            format!("http://{}{}/{uid}", self.api_addr, self.creation_path())
        };
        let value = |key: &str| {
            let found = new.metadata.iter().find(|(k, _)| k == key);
            found.and_then(|(_, v)| v.clone())
        };
        let created_at = SystemTime::now();
        let mut state = lock(&self.state);
        let video = Video {
            uid,
            order: state.videos.len(),
            length: new.length,
            offset: 0,
            complete: new.length == 0,
            direct_user: new.direct_user,
            upload_url,
            expiry: value("expiry"),
            max_duration_seconds: value("maxDurationSeconds"),
            metadata: new.metadata,
            raw_metadata: new.raw_metadata,
            creator: new.creator,
            created_at,
            expires_at: created_at + self.config.url_lifetime,
            expired: false,
            deleted: false,
            authorization_on_upload_origin: false,
        };
        state.videos.push(VideoState {
            info: video.clone(),
            expired_by_hand: false,
            busy: false,
        });
        Ok(video)
    }

    /// Whether `uid` names a video served on `origin` (expired and deleted ones included).
    fn serves(&self, uid: &str, origin: Origin) -> bool {
        let mut state = lock(&self.state);
        let found = state.find(uid);
        found.is_some_and(|v| v.info.direct_user == (origin == Origin::Upload))
    }

    fn note_authorization(&self, uid: &str) {
        if let Some(video) = lock(&self.state).find(uid) {
            video.info.authorization_on_upload_origin = true;
        }
    }

    /// A snapshot of a live video, or the 404 answer.
    fn live_video(&self, uid: &str) -> Result<Video, Response> {
        let mut state = lock(&self.state);
        let found = state.find(uid).map(|v| v.snapshot(SystemTime::now()));
        match found {
            Some(video) if !video.deleted && !video.expired => Ok(video),
            Some(video) if video.deleted => Err(Response::tus(404).text("video deleted")),
            Some(_) => Err(Response::tus(404).text("upload URL expired")),
            None => Err(Response::tus(404).text("video not found")),
        }
    }

    /// Exclusive access to a live video, or the 404/423 answer.
    fn lock_video(&self, uid: &str) -> Result<VideoLock<'_>, Response> {
        let video = self.live_video(uid)?;
        let mut state = lock(&self.state);
        let Some(held) = state.find(uid) else {
            return Err(Response::tus(404).text("video not found"));
        };
        if held.busy {
            return Err(Response::tus(423).text("another request is changing this video"));
        }
        held.busy = true;
        Ok(VideoLock {
            shared: self,
            uid: video.uid,
            offset: video.offset,
            length: video.length,
        })
    }

    fn advance(&self, uid: &str, stored: u64) -> u64 {
        let mut state = lock(&self.state);
        match state.find(uid) {
            Some(video) => {
                video.info.offset += stored;
                video.info.complete = video.info.offset == video.info.length;
                video.info.offset
            }
            None => stored,
        }
    }

    fn delete(&self, uid: &str) {
        if let Some(video) = lock(&self.state).find(uid) {
            video.info.deleted = true;
        }
        let _ = fs::remove_file(self.data_dir.join(uid));
    }

    fn sleep(&self, dur: Duration) {
        let until = Instant::now() + dur;
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(POLL));
        }
    }
}

/// A validated creation request.
struct NewVideo {
    length: u64,
    direct_user: bool,
    metadata: Vec<(String, Option<String>)>,
    raw_metadata: Option<String>,
    creator: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Connections and HTTP/1.1 framing

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, origin: Origin) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new()
            .name("stream-conn".to_string())
            .spawn(move || serve_connection(&shared, origin, stream));
    }
}

/// A socket read with short timeouts, so that the thread notices shutdown, and gives up after
/// `read_timeout` without data.
struct Patient {
    stream: TcpStream,
    shared: Arc<Shared>,
}

impl Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.stream.read(buf) {
                Err(e) if is_timeout(&e) => {
                    let waited_too_long = started.elapsed() >= self.shared.config.read_timeout;
                    if waited_too_long || self.shared.stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

type Conn = BufReader<Patient>;

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn serve_connection(shared: &Arc<Shared>, origin: Origin, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let timeouts = stream
        .set_read_timeout(Some(POLL))
        .and_then(|()| stream.set_write_timeout(Some(shared.config.read_timeout)));
    if timeouts.is_err() {
        return;
    }
    let patient = Patient {
        stream,
        shared: Arc::clone(shared),
    };
    let mut conn = BufReader::with_capacity(BUF_BYTES, patient);
    loop {
        let keep_alive = match read_head(&mut conn) {
            Ok(Some(req)) => exchange(shared, origin, &mut conn, req),
            Ok(None) | Err(None) => return,
            Err(Some(msg)) => {
                let reply = Response::new(400).text(&msg).closing();
                let _ = write_response(&conn.get_ref().stream, &reply, false);
                Some(false)
            }
        };
        match keep_alive {
            Some(true) => {}
            Some(false) => return graceful_close(&conn.get_ref().stream),
            None => return,
        }
    }
}

/// Sends FIN and reads until the client closes (or [`LINGER`] passes), so that a client still
/// sending a body gets our response instead of a reset.
fn graceful_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 8192];
    let mut reader = stream;
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    /// Path and query, origin-form.
    target: String,
    http10: bool,
    /// Names lowercased.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        let values = self.headers.iter().filter(|(n, _)| n == name);
        values
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
            || (self.http10 && !self.has_token("connection", "keep-alive"))
    }

    fn expects_continue(&self) -> bool {
        let expect = self.header("expect");
        !self.http10 && expect.is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }

    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    fn query_flag(&self, key: &str) -> bool {
        let query = self.target.split_once('?').map_or("", |(_, q)| q);
        query.split('&').any(|pair| pair == format!("{key}=true"))
    }
}

/// Reads one request head. `Ok(None)`: the client closed between requests; `Err(None)`: the
/// connection failed; `Err(Some(msg))`: not HTTP/1.x (answer 400).
fn read_head(conn: &mut Conn) -> Result<Option<Request>, Option<String>> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let read = conn
            .by_ref()
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line);
        let n = read.map_err(|_| None)?;
        if n == 0 {
            return if total == 0 { Ok(None) } else { Err(None) };
        }
        total += n;
        if total > MAX_HEAD_BYTES || !line.ends_with(b"\n") {
            return Err(Some("request head too large or cut".to_string()));
        }
        let text = String::from_utf8(line).map_err(|_| Some("head is not UTF-8".to_string()))?;
        let text = text.trim_end_matches('\n').trim_end_matches('\r');
        match (text.is_empty(), lines.is_empty()) {
            (true, true) => {} // RFC 9112 §2.2: ignore empty lines before the request line
            (true, false) => return parse_head(&lines).map(Some).map_err(Some),
            (false, _) => lines.push(text.to_string()),
        }
    }
}

fn parse_head(lines: &[String]) -> Result<Request, String> {
    let request_line = lines.first().map(String::as_str).unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {request_line:?}"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(format!("unsupported HTTP version {version:?}")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("bad method {method:?}"));
    }
    let mut headers = Vec::new();
    for line in &lines[1..] {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("bad header name {name:?}"));
        }
        let value = value.trim_matches([' ', '\t']).to_string();
        headers.push((name.to_ascii_lowercase(), value));
    }
    // Absolute-form (`http://host/path`) becomes origin-form.
    let target = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if !target.starts_with('/') {
        return Err(format!("bad request target {target:?}"));
    }
    Ok(Request {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

/// A request body being read: `left` counts the bytes still due (in the current chunk, when
/// chunked).
struct Body {
    chunked: bool,
    left: u64,
    finished: bool,
    received: u64,
}

impl Body {
    fn new(req: &Request) -> Result<Body, String> {
        let length = req.header("content-length");
        let body = |chunked, left| Body {
            chunked,
            left,
            finished: !chunked && left == 0,
            received: 0,
        };
        match (req.header("transfer-encoding"), length) {
            (Some(_), Some(_)) => Err("both Transfer-Encoding and Content-Length".to_string()),
            (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Ok(body(true, 0)),
            (Some(te), None) => Err(format!("unsupported Transfer-Encoding {te:?}")),
            (None, Some(n)) => parse_u64(n)
                .map(|n| body(false, n))
                .ok_or_else(|| format!("bad Content-Length {n:?}")),
            (None, None) => Ok(body(false, 0)),
        }
    }

    /// The declared length, when known up front.
    fn declared(&self) -> Option<u64> {
        (!self.chunked).then_some(self.left + self.received)
    }

    fn read(&mut self, conn: &mut Conn, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        if self.chunked && self.left == 0 {
            self.left = read_chunk_size(conn)?;
            if self.left == 0 {
                skip_trailers(conn)?;
                self.finished = true;
                return Ok(0);
            }
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        self.received += n as u64;
        if self.left == 0 {
            if self.chunked {
                expect_empty_line(conn)?;
            } else {
                self.finished = true;
            }
        }
        Ok(n)
    }
}

fn read_line(conn: &mut Conn) -> io::Result<String> {
    let mut line = Vec::new();
    conn.by_ref()
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text
        .trim_end_matches('\n')
        .trim_end_matches('\r')
        .to_string())
}

fn read_chunk_size(conn: &mut Conn) -> io::Result<u64> {
    let line = read_line(conn)?;
    let size = line.split(';').next().unwrap_or_default().trim();
    let valid = !size.is_empty() && size.len() <= 15 && size.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"));
    }
    u64::from_str_radix(size, 16).map_err(|_| io::ErrorKind::InvalidData.into())
}

fn expect_empty_line(conn: &mut Conn) -> io::Result<()> {
    if read_line(conn)?.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "chunk too long"))
    }
}

fn skip_trailers(conn: &mut Conn) -> io::Result<()> {
    for _ in 0..100 {
        if read_line(conn)?.is_empty() {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many trailers",
    ))
}

/// A response to write.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Response {
    fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
        }
    }

    /// A response carrying `Tus-Resumable`.
    fn tus(status: u16) -> Self {
        Response::new(status).header("Tus-Resumable", TUS_VERSION)
    }

    /// A Cloudflare API error (`code` in the JSON envelope).
    fn api_error(status: u16, code: u32, message: &str) -> Self {
        Response::tus(status).json(cloudflare_error(code, message))
    }

    fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn text(self, message: &str) -> Self {
        let mut typed = self.header("Content-Type", "text/plain; charset=utf-8");
        typed.body = format!("{message}\n").into_bytes();
        typed
    }

    fn json(self, body: String) -> Self {
        let mut typed = self.header("Content-Type", "application/json");
        typed.body = body.into_bytes();
        typed
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

fn write_response(stream: &TcpStream, resp: &Response, head_request: bool) -> io::Result<()> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    // RFC 9110 §8.6: no Content-Length on 204; on HEAD it would describe a GET body.
    if resp.status != 204 && !head_request {
        out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    if resp.close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_request {
        bytes.extend_from_slice(&resp.body);
    }
    let mut writer = stream;
    writer.write_all(&bytes)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        423 => "Locked",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

// ---------------------------------------------------------------------------------------------
// One request/response exchange

/// What a handler decided: `None` means the client went away, so there is nothing to answer.
type Outcome = Option<Response>;

/// Handles one request; `Some(keep_alive)` once answered, `None` if the connection is dead.
fn exchange(shared: &Shared, origin: Origin, conn: &mut Conn, req: Request) -> Option<bool> {
    let log_index = shared.log_request(origin, &req);
    let body = match Body::new(&req) {
        Ok(body) => body,
        Err(msg) => {
            let reply = Response::new(400).text(&msg).closing();
            let sent = write_response(&conn.get_ref().stream, &reply, false).is_ok();
            shared.finish_log(log_index, 0, sent.then_some(400));
            return Some(false);
        }
    };
    let mut ex = Exchange {
        shared,
        origin,
        conn,
        req,
        body,
        continue_sent: false,
    };
    let outcome = ex.route();
    let status = outcome.as_ref().map(|r| r.status);
    let keep_alive = outcome.and_then(|reply| ex.answer(reply));
    let status = keep_alive.and(status);
    shared.finish_log(log_index, ex.body.received, status);
    keep_alive
}

struct Exchange<'a> {
    shared: &'a Shared,
    origin: Origin,
    conn: &'a mut Conn,
    req: Request,
    body: Body,
    continue_sent: bool,
}

impl Exchange<'_> {
    fn route(&mut self) -> Outcome {
        let path = self.req.path().to_string();
        let method = self.req.method.clone();
        match self.origin {
            Origin::Api => {
                let creation = self.shared.creation_path();
                let uid = path.strip_prefix(&format!("{creation}/"));
                if path == creation || path == format!("{creation}/") {
                    match method.as_str() {
                        "POST" => self.create(),
                        "OPTIONS" => Some(options()),
                        _ => Some(not_allowed(&method, "OPTIONS, POST")),
                    }
                } else if let Some(uid) = uid.filter(|u| !u.is_empty() && !u.contains('/')) {
                    self.upload(uid)
                } else {
                    let msg = format!("no route for {method} {path}");
                    Some(Response::api_error(404, 404, &msg))
                }
            }
            Origin::Upload => match path.strip_prefix("/tus/") {
                Some(uid) if !uid.is_empty() && !uid.contains('/') => self.upload(uid),
                _ => Some(Response::new(404).text("not found")),
            },
        }
    }

    fn create(&mut self) -> Outcome {
        match self.shared.take_creation_fault() {
            Some(CreationFault::Status { code, body }) => {
                return Some(Response::new(code).json(body))
            }
            Some(CreationFault::StatusWithHeaders {
                code,
                headers,
                body,
            }) => {
                let reply = Response::new(code);
                let reply = headers.iter().fold(reply, |r, (n, v)| r.header(n, v));
                return Some(reply.json(body));
            }
            Some(CreationFault::Stall(dur)) => {
                self.shared.sleep(dur);
                if self.client_hung_up() {
                    return None;
                }
            }
            None => {}
        }
        let new = match self.creation_request() {
            Ok(new) => new,
            Err(answer) => return Some(answer),
        };
        match self.shared.create_video(new) {
            Ok(video) => Some(
                Response::tus(201)
                    .header("Location", &video.upload_url)
                    .header("stream-media-id", &video.uid),
            ),
            Err(e) => Some(Response::api_error(500, 500, &format!("cannot store: {e}"))),
        }
    }

    /// Validates a creation request before anything is created.
    fn creation_request(&self) -> Result<NewVideo, Response> {
        if !self.shared.authorized(&self.req) {
            return Err(Response::api_error(401, 10000, "Authentication error"));
        }
        if self.req.header("tus-resumable") != Some(TUS_VERSION) {
            let reply = Response::api_error(412, 412, "Tus-Resumable: 1.0.0 is required");
            return Err(reply.header("Tus-Version", TUS_VERSION));
        }
        let length = match self.req.header("upload-length") {
            Some(v) => parse_u64(v).ok_or_else(|| {
                Response::api_error(400, 400, &format!("invalid Upload-Length {v:?}"))
            })?,
            None => return Err(Response::api_error(400, 400, "Upload-Length is required")),
        };
        let raw_metadata = self.req.header("upload-metadata").map(str::to_string);
        let metadata = match raw_metadata.as_deref().map(parse_metadata) {
            Some(Err(msg)) => {
                let msg = format!("invalid Upload-Metadata: {msg}");
                return Err(Response::api_error(400, 400, &msg));
            }
            Some(Ok(pairs)) => pairs,
            None => Vec::new(),
        };
        if !self.body.finished {
            let msg = "a creation request has no body here (creation-with-upload is not emulated)";
            return Err(Response::api_error(400, 400, msg));
        }
        Ok(NewVideo {
            length,
            direct_user: self.req.query_flag("direct_user"),
            metadata,
            raw_metadata,
            creator: self.req.header("upload-creator").map(str::to_string),
        })
    }

    /// After a stall: whether the client closed or reset its connection meanwhile.
    fn client_hung_up(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.conn.get_ref().stream.peek(&mut probe) {
            Ok(0) => self.conn.buffer().is_empty(),
            Ok(_) => false,
            Err(e) => !is_timeout(&e),
        }
    }

    /// HEAD/PATCH/DELETE (or OPTIONS) on an upload URL; every answer about a known video carries
    /// `stream-media-id`.
    fn upload(&mut self, uid: &str) -> Outcome {
        let known = self.shared.serves(uid, self.origin);
        if known && self.origin == Origin::Upload && self.req.header("authorization").is_some() {
            self.shared.note_authorization(uid);
        }
        let reply = self.upload_unlabelled(uid, known)?;
        Some(if known {
            reply.header("stream-media-id", uid)
        } else {
            reply
        })
    }

    fn upload_unlabelled(&mut self, uid: &str, known: bool) -> Outcome {
        let method = self.req.method.clone();
        if method == "OPTIONS" {
            return Some(options());
        }
        if self.origin == Origin::Api && !self.shared.authorized(&self.req) {
            return Some(Response::api_error(401, 10000, "Authentication error"));
        }
        if self.req.header("tus-resumable") != Some(TUS_VERSION) {
            let reply = Response::tus(412).header("Tus-Version", TUS_VERSION);
            return Some(reply.text("Tus-Resumable: 1.0.0 is required"));
        }
        if !known {
            return Some(Response::tus(404).text("video not found"));
        }
        match method.as_str() {
            "HEAD" => Some(self.head(uid)),
            "PATCH" => self.patch(uid),
            "DELETE" => Some(self.delete(uid)),
            _ => Some(not_allowed(&method, "OPTIONS, HEAD, PATCH, DELETE")),
        }
    }

    fn head(&self, uid: &str) -> Response {
        let video = match self.shared.live_video(uid) {
            Ok(video) => video,
            Err(gone) => return gone,
        };
        let reply = Response::tus(200)
            .header("Upload-Offset", video.offset)
            .header("Upload-Length", video.length)
            .header("Cache-Control", "no-store");
        match &video.raw_metadata {
            Some(raw) => reply.header("Upload-Metadata", raw),
            None => reply,
        }
    }

    fn delete(&self, uid: &str) -> Response {
        match self.shared.lock_video(uid) {
            Ok(held) => {
                self.shared.delete(&held.uid);
                Response::tus(204)
            }
            Err(answer) => answer,
        }
    }

    fn patch(&mut self, uid: &str) -> Outcome {
        if !is_offset_stream(self.req.header("content-type")) {
            let msg = format!("PATCH needs Content-Type: {OFFSET_STREAM}");
            return Some(Response::tus(415).text(&msg));
        }
        let Some(claimed) = self.req.header("upload-offset").and_then(parse_u64) else {
            return Some(Response::tus(400).text("missing or invalid Upload-Offset"));
        };
        let shared = self.shared;
        let held = match shared.lock_video(uid) {
            Ok(held) => held,
            Err(answer) => return Some(answer),
        };
        if claimed != held.offset {
            let msg = format!(
                "Upload-Offset {claimed} does not match the upload's offset {}",
                held.offset
            );
            return Some(Response::tus(409).text(&msg));
        }
        let room = held.length - held.offset;
        if let Some(declared) = self.body.declared() {
            if let Some(answer) = self.check_size(declared, room) {
                return Some(answer); // nothing read, nothing stored
            }
        }
        let stored = match self.receive(&held, room) {
            Ok(stored) => stored,
            Err(answer) => {
                let truncated = self.truncate(&held);
                return answer.map(|a| truncated.unwrap_or(a));
            }
        };
        // A chunked body's size is only known now.
        if let Some(answer) = self.check_size(stored, room) {
            return Some(self.truncate(&held).unwrap_or(answer));
        }
        let offset = shared.advance(uid, stored);
        Some(Response::tus(204).header("Upload-Offset", offset))
    }

    /// The answer for a body of `len` bytes when `room` bytes are left, if it is refused.
    fn check_size(&self, len: u64, room: u64) -> Option<Response> {
        if len > room {
            let msg = format!("{len} body bytes exceed the {room} left of Upload-Length");
            return Some(Response::tus(413).text(&msg));
        }
        let completes = len == room;
        if self.shared.config.chunk_rules && !completes {
            return chunk_rule_violation(len).map(|msg| Response::tus(400).text(&msg));
        }
        None
    }

    /// Streams the body into the video's file at its offset (after `100 Continue` if asked).
    /// `Err(None)`: the client went away; `Err(Some(_))`: the answer.
    fn receive(&mut self, held: &VideoLock<'_>, room: u64) -> Result<u64, Option<Response>> {
        if self.send_continue().is_err() {
            return Err(None);
        }
        let storage = |e: io::Error| Some(Response::tus(500).text(&format!("storage: {e}")));
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.shared.data_dir.join(&held.uid))
            .map_err(storage)?;
        file.seek(SeekFrom::Start(held.offset)).map_err(storage)?;
        let mut buf = vec![0u8; BUF_BYTES];
        let mut stored = 0u64;
        loop {
            let n = match self.body.read(self.conn, &mut buf) {
                Ok(0) => return Ok(stored),
                Ok(n) => n,
                Err(_) => return Err(None),
            };
            if stored + n as u64 > room {
                self.drain().map_err(|_| None)?;
                let msg = format!("body exceeds the {room} bytes left of Upload-Length");
                return Err(Some(Response::tus(413).text(&msg)));
            }
            file.write_all(&buf[..n]).map_err(storage)?;
            stored += n as u64;
        }
    }

    /// Drops whatever a refused or cut PATCH wrote; `Some` is a 500 if that fails.
    fn truncate(&self, held: &VideoLock<'_>) -> Option<Response> {
        let path = self.shared.data_dir.join(&held.uid);
        let file = OpenOptions::new().write(true).open(path);
        match file.and_then(|f| f.set_len(held.offset)) {
            Ok(()) => None,
            Err(e) => Some(Response::tus(500).text(&format!("storage: {e}"))),
        }
    }

    /// Sends the answer (draining an unread body first); `Some(keep_alive)` if it was sent.
    fn answer(&mut self, mut reply: Response) -> Option<bool> {
        if !self.body.finished {
            if self.req.expects_continue() && !self.continue_sent {
                reply.close = true; // the client holds the body back; it must not be read as a request
            } else if self.drain().is_err() {
                return None;
            }
        }
        reply.close |= self.req.wants_close();
        let head_request = self.req.method == "HEAD";
        write_response(&self.conn.get_ref().stream, &reply, head_request).ok()?;
        Some(!reply.close)
    }

    fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; BUF_BYTES];
        while self.body.read(self.conn, &mut buf)? > 0 {}
        Ok(())
    }

    fn send_continue(&mut self) -> io::Result<()> {
        if self.req.expects_continue() && !self.continue_sent && !self.body.finished {
            let mut writer = &self.conn.get_ref().stream;
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            self.continue_sent = true;
        }
        Ok(())
    }
}

/// OPTIONS (not described by Stream's documentation): the tus core answer.
fn options() -> Response {
    Response::new(204)
        .header("Tus-Version", TUS_VERSION)
        .header("Tus-Extension", "creation,termination")
}

fn not_allowed(method: &str, allow: &str) -> Response {
    let reply = Response::tus(405).header("Allow", allow);
    reply.text(&format!("{method} is not allowed here"))
}

fn is_offset_stream(content_type: Option<&str>) -> bool {
    let media_type = content_type
        .and_then(|v| v.split(';').next())
        .unwrap_or_default();
    media_type.trim().eq_ignore_ascii_case(OFFSET_STREAM)
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

fn fresh_temp_dir() -> PathBuf {
    let name = format!(
        "ferry-stream-emulator-{}-{:016x}",
        std::process::id(),
        random_u64()
    );
    std::env::temp_dir().join(name)
}
