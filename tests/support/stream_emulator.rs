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
use std::io::{self, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::accept::{Acceptor, Stop};
use super::http1::{self, After, Conn, Request, Response, BUF_BYTES};
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
    /// Process the request, then send the answer one byte per interval (a link or a proxy
    /// that trickles): each read of the client succeeds, the whole answer takes minutes. Stops
    /// when the client hangs up or the emulator stops; the request's log shows no status.
    Trickle(Duration),
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
    acceptors: Vec<Acceptor>,
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
            stop: Stop::default(),
            state: Mutex::new(State::default()),
        });
        let read_timeout = shared.config.read_timeout;
        let acceptors = [(api, Origin::Api), (upload, Origin::Upload)]
            .into_iter()
            .map(|(listener, origin)| {
                let (for_conns, stop) = (Arc::clone(&shared), &shared.stop);
                let name = format!("stream-{origin:?}").to_ascii_lowercase();
                http1::serve(listener, &name, stop, read_timeout, move |conn, req| {
                    exchange(&for_conns, origin, conn, req)
                })
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
        self.acceptors.iter_mut().for_each(Acceptor::stop);
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
    stop: Stop,
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
            Some(video) if video.deleted => Err(tus(404).text("video deleted")),
            Some(_) => Err(tus(404).text("upload URL expired")),
            None => Err(tus(404).text("video not found")),
        }
    }

    /// Exclusive access to a live video, or the 404/423 answer.
    fn lock_video(&self, uid: &str) -> Result<VideoLock<'_>, Response> {
        let video = self.live_video(uid)?;
        let mut state = lock(&self.state);
        let Some(held) = state.find(uid) else {
            return Err(tus(404).text("video not found"));
        };
        if held.busy {
            return Err(tus(423).text("another request is changing this video"));
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
// One request/response exchange

/// What a handler decided: `None` means the client went away, so there is nothing to answer.
type Outcome = Option<Response>;

/// Handles one request: logs it, routes it, answers (unless the client went away).
fn exchange(shared: &Shared, origin: Origin, conn: &mut Conn, req: Request) -> After {
    let log_index = shared.log_request(origin, &req);
    let http = match http1::Exchange::start(conn, req) {
        Ok(http) => http,
        Err(sent) => {
            shared.finish_log(log_index, 0, sent);
            return After::Close;
        }
    };
    let mut ex = Exchange {
        shared,
        origin,
        http,
    };
    let outcome = ex.route();
    let status = outcome.as_ref().map(|r| r.status);
    let after = outcome.and_then(|reply| ex.http.answer(reply).ok());
    let status = after.and(status);
    shared.finish_log(log_index, ex.http.body().received(), status);
    after.unwrap_or(After::Drop)
}

struct Exchange<'a> {
    shared: &'a Shared,
    origin: Origin,
    http: http1::Exchange<'a>,
}

impl Exchange<'_> {
    fn req(&self) -> &Request {
        &self.http.req
    }

    fn route(&mut self) -> Outcome {
        let path = self.req().path().to_string();
        let method = self.req().method.clone();
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
                    Some(api_error(404, 404, &msg))
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
                return Some(json(Response::new(code), body))
            }
            Some(CreationFault::StatusWithHeaders {
                code,
                headers,
                body,
            }) => {
                let reply = Response::new(code);
                let reply = headers.iter().fold(reply, |r, (n, v)| r.header(n, v));
                return Some(json(reply, body));
            }
            Some(CreationFault::Stall(dur)) => {
                self.shared.stop.sleep(dur);
                if self.http.conn().peer_gone() {
                    return None;
                }
            }
            Some(CreationFault::Trickle(every)) => {
                let answer = self.create_answer();
                self.trickle(&answer, every);
                return None;
            }
            None => {}
        }
        Some(self.create_answer())
    }

    /// Writes `reply`'s head and body a byte at a time, `every` apart.
    fn trickle(&mut self, reply: &Response, every: Duration) {
        let mut bytes = format!("HTTP/1.1 {} Trickled\r\n", reply.status);
        for (name, value) in &reply.headers {
            bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        bytes.push_str(&format!("Content-Length: {}\r\n\r\n", reply.body.len()));
        let mut bytes = bytes.into_bytes();
        bytes.extend_from_slice(&reply.body);
        let mut stream = self.http.conn().stream();
        for b in bytes {
            if self.shared.stop.is_set() || stream.write_all(&[b]).is_err() {
                return;
            }
            self.shared.stop.sleep(every);
        }
    }

    /// A creation's answer: 201 with the new video, or the error that stops it.
    fn create_answer(&mut self) -> Response {
        let new = match self.creation_request() {
            Ok(new) => new,
            Err(answer) => return answer,
        };
        match self.shared.create_video(new) {
            Ok(video) => tus(201)
                .header("Location", &video.upload_url)
                .header("stream-media-id", &video.uid),
            Err(e) => api_error(500, 500, &format!("cannot store: {e}")),
        }
    }

    /// Validates a creation request before anything is created.
    fn creation_request(&self) -> Result<NewVideo, Response> {
        if !self.shared.authorized(self.req()) {
            return Err(api_error(401, 10000, "Authentication error"));
        }
        if self.req().header("tus-resumable") != Some(TUS_VERSION) {
            let reply = api_error(412, 412, "Tus-Resumable: 1.0.0 is required");
            return Err(reply.header("Tus-Version", TUS_VERSION));
        }
        let length = match self.req().header("upload-length") {
            Some(v) => http1::parse_u64(v)
                .ok_or_else(|| api_error(400, 400, &format!("invalid Upload-Length {v:?}")))?,
            None => return Err(api_error(400, 400, "Upload-Length is required")),
        };
        let raw_metadata = self.req().header("upload-metadata").map(str::to_string);
        let metadata = match raw_metadata.as_deref().map(parse_metadata) {
            Some(Err(msg)) => {
                let msg = format!("invalid Upload-Metadata: {msg}");
                return Err(api_error(400, 400, &msg));
            }
            Some(Ok(pairs)) => pairs,
            None => Vec::new(),
        };
        if !self.http.body().finished() {
            let msg = "a creation request has no body here (creation-with-upload is not emulated)";
            return Err(api_error(400, 400, msg));
        }
        Ok(NewVideo {
            length,
            direct_user: query_flag(self.req(), "direct_user"),
            metadata,
            raw_metadata,
            creator: self.req().header("upload-creator").map(str::to_string),
        })
    }

    /// HEAD/PATCH/DELETE (or OPTIONS) on an upload URL; every answer about a known video carries
    /// `stream-media-id`.
    fn upload(&mut self, uid: &str) -> Outcome {
        let known = self.shared.serves(uid, self.origin);
        if known && self.origin == Origin::Upload && self.req().header("authorization").is_some() {
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
        let method = self.req().method.clone();
        if method == "OPTIONS" {
            return Some(options());
        }
        if self.origin == Origin::Api && !self.shared.authorized(self.req()) {
            return Some(api_error(401, 10000, "Authentication error"));
        }
        if self.req().header("tus-resumable") != Some(TUS_VERSION) {
            let reply = tus(412).header("Tus-Version", TUS_VERSION);
            return Some(reply.text("Tus-Resumable: 1.0.0 is required"));
        }
        if !known {
            return Some(tus(404).text("video not found"));
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
        let reply = tus(200)
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
                tus(204)
            }
            Err(answer) => answer,
        }
    }

    fn patch(&mut self, uid: &str) -> Outcome {
        if !is_offset_stream(self.req().header("content-type")) {
            let msg = format!("PATCH needs Content-Type: {OFFSET_STREAM}");
            return Some(tus(415).text(&msg));
        }
        let Some(claimed) = self
            .req()
            .header("upload-offset")
            .and_then(http1::parse_u64)
        else {
            return Some(tus(400).text("missing or invalid Upload-Offset"));
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
            return Some(tus(409).text(&msg));
        }
        let room = held.length - held.offset;
        if let Some(declared) = self.http.body().declared() {
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
        Some(tus(204).header("Upload-Offset", offset))
    }

    /// The answer for a body of `len` bytes when `room` bytes are left, if it is refused.
    fn check_size(&self, len: u64, room: u64) -> Option<Response> {
        if len > room {
            let msg = format!("{len} body bytes exceed the {room} left of Upload-Length");
            return Some(tus(413).text(&msg));
        }
        let completes = len == room;
        if self.shared.config.chunk_rules && !completes {
            return chunk_rule_violation(len).map(|msg| tus(400).text(&msg));
        }
        None
    }

    /// Streams the body into the video's file at its offset (after `100 Continue` if asked).
    /// `Err(None)`: the client went away; `Err(Some(_))`: the answer.
    fn receive(&mut self, held: &VideoLock<'_>, room: u64) -> Result<u64, Option<Response>> {
        if self.http.send_continue().is_err() {
            return Err(None);
        }
        let storage = |e: io::Error| Some(tus(500).text(&format!("storage: {e}")));
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.shared.data_dir.join(&held.uid))
            .map_err(storage)?;
        file.seek(SeekFrom::Start(held.offset)).map_err(storage)?;
        let mut buf = vec![0u8; BUF_BYTES];
        let mut stored = 0u64;
        loop {
            let n = match self.http.read_body(&mut buf) {
                Ok(0) => return Ok(stored),
                Ok(n) => n,
                Err(_) => return Err(None),
            };
            if stored + n as u64 > room {
                self.http.drain().map_err(|_| None)?;
                let msg = format!("body exceeds the {room} bytes left of Upload-Length");
                return Err(Some(tus(413).text(&msg)));
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
            Err(e) => Some(tus(500).text(&format!("storage: {e}"))),
        }
    }
}

/// OPTIONS (not described by Stream's documentation): the tus core answer.
fn options() -> Response {
    Response::new(204)
        .header("Tus-Version", TUS_VERSION)
        .header("Tus-Extension", "creation,termination")
}

fn not_allowed(method: &str, allow: &str) -> Response {
    let reply = tus(405).header("Allow", allow);
    reply.text(&format!("{method} is not allowed here"))
}

fn is_offset_stream(content_type: Option<&str>) -> bool {
    let media_type = content_type
        .and_then(|v| v.split(';').next())
        .unwrap_or_default();
    media_type.trim().eq_ignore_ascii_case(OFFSET_STREAM)
}

/// A response carrying `Tus-Resumable`.
fn tus(status: u16) -> Response {
    Response::new(status).header("Tus-Resumable", TUS_VERSION)
}

/// A Cloudflare API error (`code` in the JSON envelope).
fn api_error(status: u16, code: u32, message: &str) -> Response {
    json(tus(status), cloudflare_error(code, message))
}

fn json(reply: Response, body: String) -> Response {
    let typed = reply.header("Content-Type", "application/json");
    typed.with_body(body.into_bytes())
}

/// Whether the request's query carries `<key>=true`.
fn query_flag(req: &Request, key: &str) -> bool {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').any(|pair| pair == format!("{key}=true"))
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
