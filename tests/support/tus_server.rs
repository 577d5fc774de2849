//! A fault-injecting tus 1.0 server on loopback: strict about the protocol, failing on demand.
//!
//! The key idea: the server implements tus 1.0 core plus `creation`, `creation-with-upload`,
//! `termination`, `checksum` and `expiration` by the letter of the spec (412, 415, 409, 413, 460…),
//! so a client that passes against it speaks the protocol rather than one server's dialect; and a
//! FIFO of [`Fault`]s per method replaces or perturbs the next request with that method (cut the
//! body with a TCP RST, stall, lose the response, forget or expire the upload, answer like a
//! captive portal). Bodies stream to one file per upload in a data directory, never into memory.
//!
//! A connection's states: waiting for a request head (keep-alive idle) → checking the request →
//! receiving the body (after `100 Continue` when asked) → answering (or, by fault, not) → waiting
//! again, until either side closes, a read times out, or the server shuts down.
//!
//! Choices where the spec leaves room (each documented where it applies):
//! - `X-HTTP-Method-Override` replaces the method, for routing, faults and the request log.
//! - A body that ends early keeps the bytes that arrived (`store_partial_on_cut`), unless the
//!   request carried `Upload-Checksum`: bytes that cannot be verified are discarded.
//! - A creation-with-upload body that fails its checksum answers the mismatch status and the new
//!   upload is dropped (the client never learned its URL).
//! - A request rejected before its body was read is drained (keep-alive), or, when the client
//!   waits for `100 Continue`, answered with `Connection: close` and closed gracefully.
//!
//! HTTP/1.1 itself (connections, heads, bodies, answers) is `http1`'s; this file is the tus
//! server and its faults. Besides std it needs `sha1`, `sha2`, `base64` and its sibling modules
//! `http1` and `accept`, so an example includes all three with `#[path = "../tests/support/…"]`.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher as _, RandomState};
use std::io::{self, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha1::Digest as _;

use super::accept::{Acceptor, Stop};
use super::http1::{self, After, Conn, Request, Response, BUF_BYTES};

/// The only protocol version this server speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// The media type every PATCH body (and a creation-with-upload body) must carry.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";

const PORTAL_HTML: &str = "<!DOCTYPE html>\n<html><head><title>Wi-Fi login</title></head>\
<body><h1>Welcome!</h1><p>Please accept the terms of use to continue.</p>\
<form method=\"post\" action=\"/login\"><button>Accept</button></form></body></html>\n";

/// How the server spells the `Location` of a new upload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocationStyle {
    /// `http://127.0.0.1:<port>/files/<id>` (or the endpoint set by [`TusServer::set_public_endpoint`]).
    #[default]
    Absolute,
    /// `/files/<id>`: resolved by the client against the creation URL.
    Relative,
    /// `//127.0.0.1:<port>/files/<id>`: the client supplies the scheme.
    ProtocolRelative,
}

/// What the server supports and how it behaves; `Default` is a complete, well-behaved tus server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Advertised in `Tus-Extension` and enforced: `creation`, `creation-with-upload`,
    /// `termination` and `checksum` switch the matching behaviour off when absent.
    pub extensions: Vec<String>,
    /// Accepted `Upload-Checksum` algorithms, advertised in `Tus-Checksum-Algorithm` (only `sha1`
    /// and `sha256` can be verified; others listed here are still refused with 400).
    pub checksum_algorithms: Vec<String>,
    /// Status for a checksum mismatch: 460 per spec, 417 to imitate rustus.
    pub checksum_mismatch_status: u16,
    /// `Tus-Max-Size`; a POST with a larger `Upload-Length` gets 413.
    pub max_size: Option<u64>,
    /// How `Location` is written on 201.
    pub location: LocationStyle,
    /// `Some(code)`: answer OPTIONS with this status and no tus headers, as some proxies do.
    pub options_status: Option<u16>,
    /// Keep the bytes of a body that ended early (the spec's SHOULD); `false` discards them.
    pub store_partial_on_cut: bool,
    /// Lifetime of an upload, renewed by every PATCH; sent as `Upload-Expires`; past it: 410.
    pub expires_in: Option<Duration>,
    /// Where bodies are stored; `None` makes a fresh temp dir that is removed on drop.
    pub data_dir: Option<PathBuf>,
    /// Creation endpoint path; uploads live at `<base_path><id>`.
    pub base_path: String,
    /// How long a read may wait for the client (idle keep-alive or mid-body) before the server
    /// closes the connection, as the spec asks servers to do.
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let extensions = [
            "creation",
            "creation-with-upload",
            "termination",
            "checksum",
            "expiration",
        ];
        ServerConfig {
            extensions: extensions.iter().map(|e| e.to_string()).collect(),
            checksum_algorithms: vec!["sha1".to_string(), "sha256".to_string()],
            checksum_mismatch_status: 460,
            max_size: None,
            location: LocationStyle::Absolute,
            options_status: None,
            store_partial_on_cut: true,
            expires_in: None,
            data_dir: None,
            base_path: "/files/".to_string(),
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// A misbehaviour for the next request with a given method (see [`TusServer::push_fault`]).
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status (with `Tus-Resumable`) and this text body without processing the request.
    Status { code: u16, body: String },
    /// Like `Status`, with extra headers (e.g. 429 + `Retry-After`, 409 + `Upload-Offset`).
    StatusWithHeaders {
        code: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Receive (and, per `store_partial_on_cut`, store) `bytes` body bytes, then reset the
    /// connection (TCP RST) without a response. A body shorter than `bytes` is processed in full,
    /// then the connection is reset; a request without a body is reset at once.
    CutAfter { bytes: u64 },
    /// Process the request fully, then wait `dur` before answering.
    StallBeforeResponse { dur: Duration },
    /// Stop reading the body after `after_bytes` for `dur`, then continue normally.
    StallMidBody { after_bytes: u64, dur: Duration },
    /// Process the request fully (data stored, offset advanced), then write the answer one
    /// byte every `every` (a server, or a middlebox, that holds a client by trickling).
    TrickleResponse { every: Duration },
    /// Process the request fully (data stored, offset advanced), then close without answering.
    DropResponse,
    /// Delete the upload's state and data, then answer 404 (as will every later request). It
    /// stays in [`TusServer::uploads`] with `deleted: true`.
    Forget,
    /// Mark the upload expired and answer 410 (as will every later request).
    Expire,
    /// Answer `200 OK` with a captive-portal HTML page and no tus headers.
    Garbage,
}

/// A snapshot of one upload's server-side state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// The id in the upload URL.
    pub id: String,
    /// The upload URL's path, `<base_path><id>`.
    pub url_path: String,
    /// `Upload-Length`.
    pub length: u64,
    /// Bytes stored so far.
    pub offset: u64,
    /// Decoded `Upload-Metadata` pairs, in order; `None` for a key sent without a value.
    pub metadata: Vec<(String, Option<String>)>,
    /// `Upload-Metadata` exactly as received.
    pub raw_metadata: Option<String>,
    /// Terminated by DELETE, or forgotten ([`Fault::Forget`], [`TusServer::forget`]).
    pub deleted: bool,
    /// Expired ([`Fault::Expire`], [`TusServer::expire`], or past `expires_in`).
    pub expired: bool,
}

/// One request as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLog {
    /// The effective method (`X-HTTP-Method-Override` applied).
    pub method: String,
    /// The request path, without query.
    pub path: String,
    /// All headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body bytes read from the socket (including drained ones).
    pub body_bytes: u64,
    /// The final status sent, `None` if no response was sent.
    pub status: Option<u16>,
    /// When the request's head had arrived (wall clock: comparable with other processes').
    pub received: SystemTime,
}

impl RequestLog {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running server; stops (and removes its temp data dir) on [`TusServer::shutdown`] or drop.
pub struct TusServer {
    shared: Arc<Shared>,
    acceptor: Acceptor,
    owns_data_dir: bool,
}

impl TusServer {
    /// Binds 127.0.0.1:0 and starts serving. Panics if the socket or data dir cannot be made.
    pub fn start(config: ServerConfig) -> TusServer {
        Self::start_on("127.0.0.1:0", config)
    }

    /// Binds `addr` (`host:port`) and starts serving. Panics if the socket or data dir cannot
    /// be made.
    pub fn start_on(addr: &str, mut config: ServerConfig) -> TusServer {
        config.base_path = format!("{}/", config.base_path.trim_end_matches('/'));
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("bind the tus test server to {addr}: {e}"));
        let addr = listener.local_addr().expect("tus test server address");
        let owns_data_dir = config.data_dir.is_none();
        let data_dir = config.data_dir.clone().unwrap_or_else(fresh_temp_dir);
        fs::create_dir_all(&data_dir).expect("create the tus test server's data dir");
        let shared = Arc::new(Shared {
            config,
            addr,
            data_dir,
            stop: Stop::default(),
            state: Mutex::new(State::default()),
        });
        let (for_conns, read_timeout) = (Arc::clone(&shared), shared.config.read_timeout);
        let acceptor = http1::serve(listener, "tus", &shared.stop, read_timeout, move |c, r| {
            exchange(&for_conns, c, r)
        });
        TusServer {
            shared,
            acceptor,
            owns_data_dir,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The creation endpoint, e.g. `http://127.0.0.1:41234/files/`.
    pub fn endpoint(&self) -> String {
        format!(
            "http://{}{}",
            self.shared.addr, self.shared.config.base_path
        )
    }

    /// The data directory holding one file per upload (named by id).
    pub fn data_dir(&self) -> PathBuf {
        self.shared.data_dir.clone()
    }

    /// Makes `LocationStyle::Absolute` Locations `<endpoint><id>` instead of pointing at this
    /// server, e.g. `server.set_public_endpoint(&proxy.rewrite(&server.endpoint()))` so clients
    /// keep going through a proxy. `endpoint` should end with `/`.
    pub fn set_public_endpoint(&self, endpoint: &str) {
        lock(&self.shared.state).public_endpoint = Some(endpoint.to_string());
    }

    /// Queues `fault` for the next request with `method` (e.g. "PATCH"); FIFO per method.
    pub fn push_fault(&self, method: &str, fault: Fault) {
        let mut state = lock(&self.shared.state);
        state
            .faults
            .entry(method.to_ascii_uppercase())
            .or_default()
            .push_back(fault);
    }

    /// Answers every `method` request on upload `id` with `fault` until [`Self::unpin_faults`]
    /// (a server that keeps failing one upload, e.g. a 423 lock it never releases).
    pub fn pin_fault(&self, method: &str, id: &str, fault: Fault) {
        lock(&self.shared.state)
            .pinned
            .push((method.to_ascii_uppercase(), id.to_string(), fault));
    }

    /// Drops every pinned fault.
    pub fn unpin_faults(&self) {
        lock(&self.shared.state).pinned.clear();
    }

    /// Faults queued but not yet used, over all methods.
    pub fn pending_faults(&self) -> usize {
        lock(&self.shared.state)
            .faults
            .values()
            .map(VecDeque::len)
            .sum()
    }

    /// All uploads ever created, in creation order.
    pub fn uploads(&self) -> Vec<UploadInfo> {
        let now = SystemTime::now();
        let mut state = lock(&self.shared.state);
        state.uploads.iter_mut().map(|u| u.snapshot(now)).collect()
    }

    /// One upload's state, if it was ever created.
    pub fn upload(&self, id: &str) -> Option<UploadInfo> {
        self.uploads().into_iter().find(|u| u.id == id)
    }

    /// The bytes stored for upload `id` so far (empty if unknown or deleted). Reads the whole
    /// file: fine for test-sized uploads; use [`TusServer::upload_path`] for big ones.
    pub fn upload_bytes(&self, id: &str) -> Vec<u8> {
        fs::read(self.upload_path(id)).unwrap_or_default()
    }

    /// Where upload `id`'s bytes are stored.
    pub fn upload_path(&self, id: &str) -> PathBuf {
        self.shared.data_dir.join(id)
    }

    /// Deletes upload `id`'s state and data, as if the server lost it: later requests get 404.
    pub fn forget(&self, id: &str) {
        self.shared.forget(id);
    }

    /// Marks upload `id` expired: later requests get 410.
    pub fn expire(&self, id: &str) {
        self.shared.expire(id);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.shared.state).log.clone()
    }

    /// Stops accepting; connection threads end within a poll interval (or a write timeout).
    pub fn shutdown(self) {}
}

impl Drop for TusServer {
    fn drop(&mut self) {
        self.acceptor.stop();
        if self.owns_data_dir {
            let _ = fs::remove_dir_all(&self.shared.data_dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

struct Shared {
    config: ServerConfig,
    addr: SocketAddr,
    data_dir: PathBuf,
    stop: Stop,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    uploads: Vec<Upload>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Faults for every request with a method on one upload (its id), until unpinned.
    pinned: Vec<(String, String, Fault)>,
    log: Vec<RequestLog>,
    public_endpoint: Option<String>,
}

struct Upload {
    info: UploadInfo,
    expires_at: Option<SystemTime>,
    /// A request holds the upload (see [`UploadLock`]).
    busy: bool,
}

impl Upload {
    fn snapshot(&mut self, now: SystemTime) -> UploadInfo {
        if self.expires_at.is_some_and(|at| at <= now) {
            self.info.expired = true;
        }
        self.info.clone()
    }

    /// The answer for a request to an upload that is gone, if it is.
    fn gone(&mut self, now: SystemTime) -> Option<Response> {
        let info = self.snapshot(now);
        if info.deleted {
            Some(tus(404).text("upload not found"))
        } else if info.expired {
            Some(tus(410).text("upload expired"))
        } else {
            None
        }
    }
}

/// Exclusive right to change one upload; released on drop.
struct UploadLock<'a> {
    shared: &'a Shared,
    id: String,
    offset: u64,
    length: u64,
    path: PathBuf,
    expires_at: Option<SystemTime>,
}

impl Drop for UploadLock<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        if let Some(upload) = state.uploads.iter_mut().find(|u| u.info.id == self.id) {
            upload.busy = false;
        }
    }
}

/// Locks a mutex, ignoring poisoning: a panicked test thread must not hide the server's state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn has_ext(&self, name: &str) -> bool {
        self.config.extensions.iter().any(|e| e == name)
    }

    fn pop_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut state = lock(&self.state);
        let pinned = state
            .pinned
            .iter()
            .find(|(m, id, _)| m == method && path.ends_with(&format!("/{id}")))
            .map(|(_, _, f)| f.clone());
        pinned.or_else(|| state.faults.get_mut(method).and_then(VecDeque::pop_front))
    }

    fn log_request(&self, req: &Request) -> usize {
        let mut state = lock(&self.state);
        state.log.push(RequestLog {
            method: req.method.clone(),
            path: req.path().to_string(),
            headers: req.headers.clone(),
            body_bytes: 0,
            status: None,
            received: SystemTime::now(),
        });
        state.log.len() - 1
    }

    fn finish_log(&self, index: usize, body_bytes: u64, status: Option<u16>) {
        if let Some(entry) = lock(&self.state).log.get_mut(index) {
            entry.body_bytes = body_bytes;
            entry.status = status;
        }
    }

    fn new_expiry(&self) -> Option<SystemTime> {
        self.config.expires_in.map(|d| SystemTime::now() + d)
    }

    /// Registers a new upload, already locked by the creating request.
    fn create_upload(
        &self,
        length: u64,
        raw_metadata: Option<String>,
    ) -> io::Result<UploadLock<'_>> {
        let metadata = raw_metadata.as_deref().map(parse_metadata).transpose();
        let metadata = metadata.map_err(io::Error::other)?.unwrap_or_default();
        let id = format!("{:016x}{:016x}", random_u64(), random_u64());
        let path = self.data_dir.join(&id);
        File::create(&path)?;
        let info = UploadInfo {
            url_path: format!("{}{id}", self.config.base_path),
            id: id.clone(),
            length,
            offset: 0,
            metadata,
            raw_metadata,
            deleted: false,
            expired: false,
        };
        let expires_at = self.new_expiry();
        lock(&self.state).uploads.push(Upload {
            info,
            expires_at,
            busy: true,
        });
        Ok(UploadLock {
            shared: self,
            id,
            offset: 0,
            length,
            path,
            expires_at,
        })
    }

    /// A snapshot of a live upload, or the 404/410 answer.
    fn live_upload(&self, id: &str) -> Result<(UploadInfo, Option<SystemTime>), Response> {
        let mut state = lock(&self.state);
        let Some(upload) = state.uploads.iter_mut().find(|u| u.info.id == id) else {
            return Err(tus(404).text("upload not found"));
        };
        match upload.gone(SystemTime::now()) {
            Some(answer) => Err(answer),
            None => Ok((upload.info.clone(), upload.expires_at)),
        }
    }

    /// Exclusive access to a live upload, or the 404/410/423 answer.
    fn lock_upload(&self, id: &str) -> Result<UploadLock<'_>, Response> {
        let mut state = lock(&self.state);
        let Some(upload) = state.uploads.iter_mut().find(|u| u.info.id == id) else {
            return Err(tus(404).text("upload not found"));
        };
        if let Some(answer) = upload.gone(SystemTime::now()) {
            return Err(answer);
        }
        if upload.busy {
            return Err(tus(423).text("upload is locked by another request"));
        }
        upload.busy = true;
        let (offset, length) = (upload.info.offset, upload.info.length);
        let (path, expires_at) = (self.data_dir.join(id), upload.expires_at);
        Ok(UploadLock {
            shared: self,
            id: id.to_string(),
            offset,
            length,
            path,
            expires_at,
        })
    }

    /// Adds `stored` bytes to the offset and renews the expiry; returns both.
    fn advance(&self, id: &str, stored: u64) -> (u64, Option<SystemTime>) {
        let expires_at = self.new_expiry();
        let mut state = lock(&self.state);
        match state.uploads.iter_mut().find(|u| u.info.id == id) {
            Some(upload) => {
                upload.info.offset += stored;
                upload.expires_at = expires_at.or(upload.expires_at);
                (upload.info.offset, upload.expires_at)
            }
            None => (stored, expires_at),
        }
    }

    fn with_upload(&self, id: &str, change: impl FnOnce(&mut Upload)) {
        if let Some(upload) = lock(&self.state)
            .uploads
            .iter_mut()
            .find(|u| u.info.id == id)
        {
            change(upload);
        }
    }

    fn forget(&self, id: &str) {
        self.with_upload(id, |u| u.info.deleted = true);
        let _ = fs::remove_file(self.data_dir.join(id));
    }

    fn expire(&self, id: &str) {
        self.with_upload(id, |u| u.info.expired = true);
    }

    /// Removes an upload entirely (a creation that failed after registering it).
    fn remove_upload(&self, id: &str) {
        lock(&self.state).uploads.retain(|u| u.info.id != id);
        let _ = fs::remove_file(self.data_dir.join(id));
    }

    fn location_for(&self, id: &str) -> String {
        let path = format!("{}{id}", self.config.base_path);
        match self.config.location {
            LocationStyle::Absolute => match &lock(&self.state).public_endpoint {
                Some(endpoint) => format!("{endpoint}{id}"),
                None => format!("http://{}{path}", self.addr),
            },
            LocationStyle::Relative => path,
            LocationStyle::ProtocolRelative => format!("//{}{path}", self.addr),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One request/response exchange

/// Perturbations of a request that is otherwise processed normally.
#[derive(Clone, Copy, Default)]
struct Hooks {
    cut_after: Option<u64>,
    stall_mid: Option<(u64, Duration)>,
    stall_before: Option<Duration>,
    trickle: Option<Duration>,
    drop_response: bool,
}

/// What a handler decided.
enum Outcome {
    Reply(Response),
    /// Reset the connection without a response (a fault).
    Reset,
    /// The client went away mid-request.
    Broken,
}

/// How a received body ended.
enum Received {
    Complete(u64),
    /// More bytes than the upload has room for; all discarded.
    Overflow,
    ChecksumMismatch,
    /// Cut by a `CutAfter` fault after this many stored bytes.
    CutByFault(u64),
    /// The client's connection ended after this many stored bytes.
    CutByClient(u64),
    Storage(String),
}

/// What became of the stored bytes.
enum Settled {
    /// Kept: the new offset and expiry.
    Stored(u64, Option<SystemTime>),
    Rejected(Response),
    Reset,
    Broken,
}

impl Settled {
    /// The handler's outcome, with `stored` making the success answer.
    fn into_outcome(self, stored: impl FnOnce(u64, Option<SystemTime>) -> Response) -> Outcome {
        match self {
            Settled::Stored(offset, expires_at) => Outcome::Reply(stored(offset, expires_at)),
            Settled::Rejected(answer) => Outcome::Reply(answer),
            Settled::Reset => Outcome::Reset,
            Settled::Broken => Outcome::Broken,
        }
    }
}

fn exchange(shared: &Shared, conn: &mut Conn, mut req: Request) -> After {
    req.method = effective_method(&req);
    let log_index = shared.log_request(&req);
    let http = match http1::Exchange::start(conn, req) {
        Ok(http) => http,
        Err(sent) => {
            shared.finish_log(log_index, 0, sent);
            return After::Close;
        }
    };
    // Only a request that reaches the handler uses up a fault.
    let fault = shared.pop_fault(&http.req.method, http.req.path());
    let mut ex = Exchange {
        shared,
        http,
        log_index,
        stalled_mid_body: false,
    };
    let (hooks, outcome) = match fault.map(|f| ex.apply_fault(f)) {
        Some(Err(replacement)) => (Hooks::default(), Outcome::Reply(replacement)),
        Some(Ok(hooks)) => (hooks, ex.dispatch(hooks)),
        None => (Hooks::default(), ex.dispatch(Hooks::default())),
    };
    ex.finish(outcome, hooks)
}

/// The method that routes, faults and logs: `X-HTTP-Method-Override` wins, in uppercase.
fn effective_method(req: &Request) -> String {
    let method = req.header("x-http-method-override").unwrap_or(&req.method);
    method.to_ascii_uppercase()
}

struct Exchange<'a> {
    shared: &'a Shared,
    http: http1::Exchange<'a>,
    log_index: usize,
    /// A `StallMidBody` fault already paused this body.
    stalled_mid_body: bool,
}

impl Exchange<'_> {
    fn req(&self) -> &Request {
        &self.http.req
    }

    /// Turns a fault into hooks, or into the response that replaces processing.
    fn apply_fault(&self, fault: Fault) -> Result<Hooks, Response> {
        let mut hooks = Hooks::default();
        match fault {
            Fault::Status { code, body } => return Err(tus(code).text(&body)),
            Fault::StatusWithHeaders {
                code,
                headers,
                body,
            } => {
                let with_headers = headers.iter().fold(tus(code), |r, (n, v)| r.header(n, v));
                return Err(with_headers.text(&body));
            }
            Fault::Forget => return Err(self.lose_upload(true)),
            Fault::Expire => return Err(self.lose_upload(false)),
            Fault::Garbage => {
                let page = Response::new(200).header("Content-Type", "text/html; charset=utf-8");
                return Err(page.with_body(PORTAL_HTML.as_bytes().to_vec()));
            }
            Fault::CutAfter { bytes } => hooks.cut_after = Some(bytes),
            Fault::StallBeforeResponse { dur } => hooks.stall_before = Some(dur),
            Fault::StallMidBody { after_bytes, dur } => hooks.stall_mid = Some((after_bytes, dur)),
            Fault::TrickleResponse { every } => hooks.trickle = Some(every),
            Fault::DropResponse => hooks.drop_response = true,
        }
        Ok(hooks)
    }

    fn lose_upload(&self, forget: bool) -> Response {
        if let Some(id) = self.upload_id() {
            if forget {
                self.shared.forget(id);
            } else {
                self.shared.expire(id);
            }
        }
        if forget {
            tus(404).text("upload not found")
        } else {
            tus(410).text("upload expired")
        }
    }

    /// The upload id named by the request path, if it names one.
    fn upload_id(&self) -> Option<&str> {
        let id = self
            .req()
            .path()
            .strip_prefix(&self.shared.config.base_path)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    fn is_creation_path(&self) -> bool {
        let base = &self.shared.config.base_path;
        self.req().path() == *base || self.req().path() == base.trim_end_matches('/')
    }

    fn dispatch(&mut self, hooks: Hooks) -> Outcome {
        if hooks.cut_after.is_some() && self.http.body().finished() {
            return Outcome::Reset;
        }
        if self.req().method == "OPTIONS" {
            return Outcome::Reply(self.options());
        }
        if self.req().header("tus-resumable") != Some(TUS_VERSION) {
            let reply = tus(412).header("Tus-Version", TUS_VERSION);
            return Outcome::Reply(reply.text("Tus-Resumable: 1.0.0 is required"));
        }
        let id = self.upload_id().map(str::to_string);
        match (self.req().method.as_str(), id) {
            ("POST", None) if self.is_creation_path() => self.post(hooks),
            ("HEAD", Some(id)) => Outcome::Reply(self.head(&id)),
            ("PATCH", Some(id)) => self.patch(&id, hooks),
            ("DELETE", Some(id)) => Outcome::Reply(self.delete(&id)),
            (_, None) if !self.is_creation_path() => {
                Outcome::Reply(tus(404).text("no such resource"))
            }
            (method, _) => {
                let reply = tus(405).header("Allow", "OPTIONS, POST, HEAD, PATCH, DELETE");
                Outcome::Reply(reply.text(&format!("{method} is not allowed here")))
            }
        }
    }

    /// Completes the exchange: drains an unread body, applies stall/drop hooks, answers, logs.
    fn finish(mut self, outcome: Outcome, hooks: Hooks) -> After {
        let mut reply = match outcome {
            Outcome::Reply(reply) if hooks.cut_after.is_none() => reply,
            Outcome::Reply(_) | Outcome::Reset => return self.end_without_reply(After::Reset),
            Outcome::Broken => return self.end_without_reply(After::Drop),
        };
        if self.http.prepare(&mut reply).is_err() {
            return self.end_without_reply(After::Drop);
        }
        if let Some(dur) = hooks.stall_before {
            self.shared.stop.sleep(dur);
        }
        if hooks.drop_response {
            return self.end_without_reply(After::Drop);
        }
        let status = reply.status;
        if let Some(every) = hooks.trickle {
            return self.trickle(&reply, every);
        }
        let Ok(after) = self.http.send(reply) else {
            return self.end_without_reply(After::Drop);
        };
        let received = self.http.body().received();
        self.shared
            .finish_log(self.log_index, received, Some(status));
        after
    }

    /// Writes `reply` a byte at a time, `every` apart, then closes; stops when the client has
    /// gone (or the server stops).
    fn trickle(&self, reply: &Response, every: Duration) -> After {
        let bytes = http1::render(reply, self.req().method == "HEAD");
        let mut stream = self.http.conn().stream();
        for byte in bytes {
            if stream.write_all(&[byte]).is_err() || self.shared.stop.is_set() {
                return self.end_without_reply(After::Drop);
            }
            self.shared.stop.sleep(every);
        }
        let received = self.http.body().received();
        self.shared
            .finish_log(self.log_index, received, Some(reply.status));
        After::Close
    }

    fn end_without_reply(&self, after: After) -> After {
        let received = self.http.body().received();
        self.shared.finish_log(self.log_index, received, None);
        after
    }

    fn options(&self) -> Response {
        let config = &self.shared.config;
        if let Some(code) = config.options_status {
            let refused = Response::new(code).header("Allow", "POST, HEAD, PATCH, DELETE");
            return refused.text("OPTIONS is not allowed");
        }
        let mut reply = Response::new(204).header("Tus-Version", TUS_VERSION);
        if !config.extensions.is_empty() {
            reply = reply.header("Tus-Extension", config.extensions.join(","));
        }
        if let Some(max) = config.max_size {
            reply = reply.header("Tus-Max-Size", max);
        }
        if self.shared.has_ext("checksum") {
            reply = reply.header(
                "Tus-Checksum-Algorithm",
                config.checksum_algorithms.join(","),
            );
        }
        reply
    }

    fn head(&self, id: &str) -> Response {
        let (info, expires_at) = match self.shared.live_upload(id) {
            Ok(found) => found,
            Err(gone) => return gone,
        };
        let mut reply = tus(200)
            .header("Upload-Offset", info.offset)
            .header("Upload-Length", info.length)
            .header("Cache-Control", "no-store");
        if let Some(raw) = &info.raw_metadata {
            reply = reply.header("Upload-Metadata", raw);
        }
        expires(reply, expires_at)
    }

    fn delete(&self, id: &str) -> Response {
        if !self.shared.has_ext("termination") {
            return tus(405).text("termination is not supported");
        }
        let held = match self.shared.lock_upload(id) {
            Ok(held) => held,
            Err(answer) => return answer,
        };
        self.shared.forget(&held.id);
        tus(204)
    }

    fn patch(&mut self, id: &str, hooks: Hooks) -> Outcome {
        if !is_offset_stream(self.req().header("content-type")) {
            return Outcome::Reply(
                tus(415).text("PATCH needs Content-Type: application/offset+octet-stream"),
            );
        }
        let Some(claimed) = self
            .req()
            .header("upload-offset")
            .and_then(http1::parse_u64)
        else {
            return Outcome::Reply(tus(400).text("missing or invalid Upload-Offset"));
        };
        let checksum = match self.checksum() {
            Ok(checksum) => checksum,
            Err(answer) => return Outcome::Reply(answer),
        };
        let shared = self.shared;
        let held = match shared.lock_upload(id) {
            Ok(held) => held,
            Err(answer) => return Outcome::Reply(answer),
        };
        if claimed != held.offset {
            let msg = format!(
                "Upload-Offset {claimed} does not match the upload's offset {}",
                held.offset
            );
            return Outcome::Reply(tus(409).text(&msg));
        }
        let room = held.length - held.offset;
        if let Some(n) = length_over(self.http.body(), room) {
            return Outcome::Reply(
                tus(413).text(&format!("{n} body bytes exceed the {room} left")),
            );
        }
        let has_checksum = checksum.is_some();
        let received = self.receive(&held, checksum, hooks);
        let settled = shared.settle(&held, received, has_checksum);
        settled.into_outcome(|offset, expires_at| {
            let reply = tus(204).header("Upload-Offset", offset);
            expires(reply, expires_at)
        })
    }

    fn post(&mut self, hooks: Hooks) -> Outcome {
        if !self.shared.has_ext("creation") {
            return Outcome::Reply(tus(405).text("creation is not supported"));
        }
        let creation = match self.creation_request() {
            Ok(creation) => creation,
            Err(answer) => return Outcome::Reply(answer),
        };
        let shared = self.shared;
        let held = match shared.create_upload(creation.length, creation.raw_metadata) {
            Ok(held) => held,
            Err(e) => {
                return Outcome::Reply(tus(500).text(&format!("cannot create the upload: {e}")))
            }
        };
        let created = |offset: Option<u64>, expires_at| {
            let reply = tus(201).header("Location", shared.location_for(&held.id));
            let reply = match offset {
                Some(offset) => reply.header("Upload-Offset", offset),
                None => reply,
            };
            expires(reply, expires_at)
        };
        if !creation.with_upload {
            return Outcome::Reply(created(None, held.expires_at));
        }
        let has_checksum = creation.checksum.is_some();
        let received = self.receive(&held, creation.checksum, hooks);
        let settled = shared.settle(&held, received, has_checksum);
        if matches!(settled, Settled::Rejected(_)) {
            shared.remove_upload(&held.id); // the client never learned its URL
        }
        settled.into_outcome(|offset, expires_at| created(Some(offset), expires_at))
    }

    /// Validates a creation request (POST) before anything is created.
    fn creation_request(&self) -> Result<Creation, Response> {
        let length = match (
            self.req().header("upload-length"),
            self.req().header("upload-defer-length"),
        ) {
            (Some(v), _) => {
                http1::parse_u64(v).ok_or_else(|| tus(400).text("invalid Upload-Length"))?
            }
            (None, Some(_)) => return Err(tus(400).text("creation-defer-length is not supported")),
            (None, None) => return Err(tus(400).text("Upload-Length is required")),
        };
        if self.shared.config.max_size.is_some_and(|max| length > max) {
            return Err(tus(413).text("Upload-Length exceeds Tus-Max-Size"));
        }
        let raw_metadata = self.req().header("upload-metadata").map(str::to_string);
        if let Some(Err(msg)) = raw_metadata.as_deref().map(parse_metadata) {
            return Err(tus(400).text(&format!("invalid Upload-Metadata: {msg}")));
        }
        let with_upload = is_offset_stream(self.req().header("content-type"));
        if with_upload && !self.shared.has_ext("creation-with-upload") {
            return Err(tus(400).text("creation-with-upload is not supported"));
        }
        if !with_upload && !self.http.body().finished() {
            return Err(
                tus(400).text("a POST body needs Content-Type: application/offset+octet-stream")
            );
        }
        if let Some(n) = length_over(self.http.body(), length) {
            return Err(tus(413).text(&format!("{n} body bytes exceed Upload-Length {length}")));
        }
        let checksum = if with_upload { self.checksum()? } else { None };
        Ok(Creation {
            length,
            raw_metadata,
            with_upload,
            checksum,
        })
    }

    /// The request's `Upload-Checksum`, checked: `Err` is the 400 answer. Ignored (`None`) when
    /// the checksum extension is off, as a server without it would.
    fn checksum(&self) -> Result<Option<Checksum>, Response> {
        let Some(value) = self.req().header("upload-checksum") else {
            return Ok(None);
        };
        if !self.shared.has_ext("checksum") {
            return Ok(None);
        }
        let Some((algorithm, encoded)) = value.split_once(' ') else {
            return Err(tus(400).text("Upload-Checksum must be `<algorithm> <base64>`"));
        };
        let offered = self
            .shared
            .config
            .checksum_algorithms
            .iter()
            .any(|a| a == algorithm);
        if !offered || !matches!(algorithm, "sha1" | "sha256") {
            return Err(tus(400).text(&format!("unsupported checksum algorithm {algorithm:?}")));
        }
        let expected = base64::engine::general_purpose::STANDARD.decode(encoded);
        let expected =
            expected.map_err(|_| tus(400).text("Upload-Checksum is not valid base64"))?;
        let digest = Digest::new(algorithm == "sha256");
        Ok(Some(Checksum { digest, expected }))
    }

    /// Streams the body into the upload's file at its offset (after `100 Continue` if asked).
    fn receive(
        &mut self,
        held: &UploadLock<'_>,
        checksum: Option<Checksum>,
        hooks: Hooks,
    ) -> Received {
        if self.http.send_continue().is_err() {
            return Received::CutByClient(0);
        }
        let mut file = match open_at(&held.path, held.offset) {
            Ok(file) => file,
            Err(e) => return Received::Storage(e.to_string()),
        };
        let mut checksum = checksum;
        let (room, mut stored, mut overflow) = (held.length - held.offset, 0u64, false);
        let mut buf = vec![0u8; BUF_BYTES];
        while !self.http.body().finished() {
            let want = self.next_read_len(hooks, buf.len());
            if want == 0 {
                return Received::CutByFault(stored);
            }
            let n = match self.http.read_body(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => return Received::CutByClient(stored),
            };
            overflow |= stored + n as u64 > room;
            if overflow {
                continue; // keep reading so the answer can be sent on a clean connection
            }
            if let Err(e) = file.write_all(&buf[..n]) {
                return Received::Storage(e.to_string());
            }
            checksum.iter_mut().for_each(|c| c.digest.update(&buf[..n]));
            stored += n as u64;
        }
        if overflow {
            return Received::Overflow;
        }
        if checksum.is_none_or(Checksum::matches) {
            Received::Complete(stored)
        } else {
            Received::ChecksumMismatch
        }
    }

    /// How many body bytes to read next: 0 means "cut now". Sleeps at a mid-body stall point.
    fn next_read_len(&mut self, hooks: Hooks, buf_len: usize) -> usize {
        let received = self.http.body().received();
        let mut want = buf_len as u64;
        if let Some(cut) = hooks.cut_after {
            want = want.min(cut.saturating_sub(received));
        }
        if let Some((after, dur)) = hooks.stall_mid {
            if received < after {
                want = want.min(after - received);
            } else if !self.stalled_mid_body {
                self.stalled_mid_body = true;
                self.shared.stop.sleep(dur);
            }
        }
        usize::try_from(want).unwrap_or(buf_len)
    }
}

/// A validated creation request.
struct Creation {
    length: u64,
    raw_metadata: Option<String>,
    with_upload: bool,
    checksum: Option<Checksum>,
}

/// An `Upload-Checksum` being verified over exactly one request's body.
struct Checksum {
    digest: Digest,
    expected: Vec<u8>,
}

impl Checksum {
    fn matches(self) -> bool {
        self.digest.finish() == self.expected
    }
}

enum Digest {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Digest {
    fn new(sha256: bool) -> Self {
        if sha256 {
            Digest::Sha256(sha2::Sha256::new())
        } else {
            Digest::Sha1(sha1::Sha1::new())
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Digest::Sha1(h) => h.update(bytes),
            Digest::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Digest::Sha1(h) => h.finalize().to_vec(),
            Digest::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// The body's declared length, when it exceeds `room`.
fn length_over(body: &http1::Body, room: u64) -> Option<u64> {
    body.declared().filter(|n| *n > room)
}

impl Shared {
    /// Commits or discards what [`Exchange::receive`] wrote, and says what to answer.
    fn settle(&self, held: &UploadLock<'_>, received: Received, has_checksum: bool) -> Settled {
        // Bytes that arrived before a cut cannot be checked against a checksum of the whole body.
        let keep_partial = self.config.store_partial_on_cut && !has_checksum;
        let partial = |n: u64| if keep_partial { n } else { 0 };
        let reject = |status: u16, msg: &str| Some(Settled::Rejected(tus(status).text(msg)));
        let (keep, outcome) = match received {
            Received::Complete(n) => (n, None),
            Received::CutByFault(n) => (partial(n), Some(Settled::Reset)),
            Received::CutByClient(n) => (partial(n), Some(Settled::Broken)),
            Received::Overflow => (0, reject(413, "body exceeds Upload-Length")),
            Received::ChecksumMismatch => (
                0,
                reject(self.config.checksum_mismatch_status, "checksum mismatch"),
            ),
            Received::Storage(e) => (0, reject(500, &e)),
        };
        // Drop whatever was written past the bytes we keep.
        let truncated = OpenOptions::new()
            .write(true)
            .open(&held.path)
            .and_then(|f| f.set_len(held.offset + keep));
        if let Err(e) = truncated {
            return Settled::Rejected(tus(500).text(&e.to_string()));
        }
        if keep == 0 && outcome.is_some() {
            return outcome.unwrap_or(Settled::Broken);
        }
        let (offset, expires_at) = self.advance(&held.id, keep);
        outcome.unwrap_or(Settled::Stored(offset, expires_at))
    }
}

/// A response carrying `Tus-Resumable`, as every non-OPTIONS answer must.
fn tus(status: u16) -> Response {
    Response::new(status).header("Tus-Resumable", TUS_VERSION)
}

/// `reply` with `Upload-Expires` when the upload expires.
fn expires(reply: Response, at: Option<SystemTime>) -> Response {
    match at {
        Some(at) => reply.header("Upload-Expires", http_date(at)),
        None => reply,
    }
}

fn open_at(path: &Path, offset: u64) -> io::Result<File> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    Ok(file)
}

fn is_offset_stream(content_type: Option<&str>) -> bool {
    let media_type = content_type
        .and_then(|v| v.split(';').next())
        .unwrap_or_default();
    media_type.trim().eq_ignore_ascii_case(OFFSET_STREAM)
}

/// Parses an `Upload-Metadata` value strictly (tus 1.0 §Upload-Metadata): comma-separated
/// `key base64value` pairs, keys non-empty, printable ASCII without spaces or commas and unique,
/// values standard padded base64; a key may come without a value (`None`).
pub fn parse_metadata(raw: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for pair in raw.split(',') {
        let mut parts = pair.split(' ');
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some() {
            return Err(format!("pair {pair:?} has more than one space"));
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("bad key {key:?}"));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(format!("duplicate key {key:?}"));
        }
        let decoded = match value {
            None => None,
            Some(v) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(v);
                let bytes = bytes.map_err(|e| format!("value of {key:?} is not base64: {e}"))?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        pairs.push((key.to_string(), decoded));
    }
    Ok(pairs)
}

/// Formats a time as an RFC 9110 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let weekday = WEEKDAYS[(days % 7) as usize];
    let month = MONTHS[(month - 1) as usize];
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    format!("{weekday}, {day:02} {month} {year:04} {h:02}:{m:02}:{s:02} GMT")
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
        "ferry-tus-server-{}-{:016x}",
        std::process::id(),
        random_u64()
    );
    std::env::temp_dir().join(name)
}
