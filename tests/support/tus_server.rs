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
//! Self-contained (std plus `sha1`, `sha2`, `base64`, `socket2`) so an example can include it with
//! `#[path = "../tests/support/tus_server.rs"] mod tus_server;`.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher as _, RandomState};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use sha1::Digest as _;

/// The only protocol version this server speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// The media type every PATCH body (and a creation-with-upload body) must carry.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";

const BUF_BYTES: usize = 64 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_LINE_BYTES: u64 = 8 * 1024;
/// How often blocked reads and sleeps look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How long a graceful close keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

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
    acceptor: Option<JoinHandle<()>>,
    owns_data_dir: bool,
}

impl TusServer {
    /// Binds 127.0.0.1:0 and starts serving. Panics if the socket or data dir cannot be made.
    pub fn start(mut config: ServerConfig) -> TusServer {
        config.base_path = format!("{}/", config.base_path.trim_end_matches('/'));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the tus test server");
        let addr = listener.local_addr().expect("tus test server address");
        let owns_data_dir = config.data_dir.is_none();
        let data_dir = config.data_dir.clone().unwrap_or_else(fresh_temp_dir);
        fs::create_dir_all(&data_dir).expect("create the tus test server's data dir");
        let shared = Arc::new(Shared {
            config,
            addr,
            data_dir,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("tus-accept".to_string())
            .spawn(move || accept_loop(&listener, &for_thread))
            .expect("spawn the tus test server");
        TusServer {
            shared,
            acceptor: Some(acceptor),
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
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
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
    config: ServerConfig,
    addr: SocketAddr,
    data_dir: PathBuf,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    uploads: Vec<Upload>,
    faults: HashMap<String, VecDeque<Fault>>,
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
            Some(Response::tus(404).text("upload not found"))
        } else if info.expired {
            Some(Response::tus(410).text("upload expired"))
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

    fn pop_fault(&self, method: &str) -> Option<Fault> {
        lock(&self.state)
            .faults
            .get_mut(method)
            .and_then(VecDeque::pop_front)
    }

    fn log_request(&self, req: &Request) -> usize {
        let mut state = lock(&self.state);
        state.log.push(RequestLog {
            method: req.method.clone(),
            path: req.path.clone(),
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
            return Err(Response::tus(404).text("upload not found"));
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
            return Err(Response::tus(404).text("upload not found"));
        };
        if let Some(answer) = upload.gone(SystemTime::now()) {
            return Err(answer);
        }
        if upload.busy {
            return Err(Response::tus(423).text("upload is locked by another request"));
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

// ---------------------------------------------------------------------------------------------
// Connections and HTTP/1.1 framing

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
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
            .name("tus-conn".to_string())
            .spawn(move || serve_connection(&shared, stream));
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

/// How a connection goes on after one exchange.
enum After {
    KeepAlive,
    /// Graceful close: FIN, then discard what the client still sends for a moment.
    Close,
    /// Abortive close: TCP RST.
    Reset,
    /// Just drop the socket.
    Drop,
}

fn serve_connection(shared: &Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let timeouts = stream
        .set_read_timeout(Some(POLL))
        .and_then(|()| stream.set_write_timeout(Some(shared.config.read_timeout)));
    if timeouts.is_err() {
        return;
    }
    let mut conn = BufReader::with_capacity(
        BUF_BYTES,
        Patient {
            stream,
            shared: Arc::clone(shared),
        },
    );
    loop {
        let after = match read_head(&mut conn) {
            Ok(Some(req)) => exchange(shared, &mut conn, req),
            Ok(None) | Err(HeadError::Io) => After::Drop,
            Err(HeadError::Malformed(msg)) => {
                let reply = Response::new(400).text(&msg).closing();
                let _ = write_response(&conn.get_ref().stream, &reply, false);
                After::Close
            }
        };
        match after {
            After::KeepAlive => {}
            After::Close => return graceful_close(&conn.get_ref().stream),
            After::Reset => return reset(conn),
            After::Drop => return,
        }
    }
}

/// Closes with a TCP RST: SO_LINGER 0, then drop the only handle of the socket.
fn reset(conn: Conn) {
    let _ = socket2::SockRef::from(&conn.get_ref().stream).set_linger(Some(Duration::ZERO));
    drop(conn);
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
    /// Effective method, uppercase.
    method: String,
    path: String,
    http10: bool,
    /// Names lowercased.
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
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
        !self.http10
            && self
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

enum HeadError {
    /// The connection ended or failed: close quietly.
    Io,
    /// Not HTTP/1.x: answer 400 and close.
    Malformed(String),
}

/// Reads one request head; `Ok(None)` when the client closed the connection between requests.
fn read_head(conn: &mut Conn) -> Result<Option<Request>, HeadError> {
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let read = conn
            .by_ref()
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line);
        let n = read.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if lines.is_empty() && total == 0 {
                Ok(None)
            } else {
                Err(HeadError::Io)
            };
        }
        total += n;
        if !line.ends_with(b"\n") && (line.len() as u64) < MAX_LINE_BYTES {
            return Err(HeadError::Io); // the connection ended mid-line
        }
        if total > MAX_HEAD_BYTES || !line.ends_with(b"\n") {
            return Err(HeadError::Malformed("request head too large".to_string()));
        }
        let text = String::from_utf8(line)
            .map_err(|_| HeadError::Malformed("request head is not UTF-8".to_string()))?;
        let text = text.trim_end_matches('\n').trim_end_matches('\r');
        match (text.is_empty(), lines.is_empty()) {
            (true, true) => {} // RFC 9112 §2.2: ignore empty lines before the request line
            (true, false) => return parse_head(&lines).map(Some).map_err(HeadError::Malformed),
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
    let headers = lines[1..]
        .iter()
        .map(|l| parse_header_line(l))
        .collect::<Result<Vec<_>, _>>()?;
    let override_method = headers.iter().find(|(n, _)| n == "x-http-method-override");
    let method = override_method
        .map_or(method, |(_, v)| v.as_str())
        .to_ascii_uppercase();
    Ok(Request {
        method,
        path: request_path(target)?,
        http10,
        headers,
    })
}

fn parse_header_line(line: &str) -> Result<(String, String), String> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(format!("bad header line {line:?}"));
    };
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic());
    if !name_ok {
        return Err(format!("bad header name {name:?}"));
    }
    Ok((
        name.to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_string(),
    ))
}

/// The path of an origin-form or absolute-form request target, without query.
fn request_path(target: &str) -> Result<String, String> {
    let without_origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = without_origin.split(['?', '#']).next().unwrap_or_default();
    if path.starts_with('/') || path == "*" {
        Ok(path.to_string())
    } else {
        Err(format!("bad request target {target:?}"))
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn framing(req: &Request) -> Result<Framing, String> {
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if let Some((_, te)) = req.headers.iter().find(|(n, _)| n == "transfer-encoding") {
        if !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".to_string());
        }
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("unsupported Transfer-Encoding {te:?}"));
        }
        return Ok(Framing::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(Framing::None);
    };
    let length = parse_u64(first).ok_or_else(|| format!("bad Content-Length {first:?}"))?;
    if lengths.iter().any(|l| l != first) {
        return Err("conflicting Content-Length values".to_string());
    }
    Ok(if length == 0 {
        Framing::None
    } else {
        Framing::Length(length)
    })
}

/// Where the reading of one request body stands.
struct BodyState {
    framing: Framing,
    /// Bytes left in the body (Length) or in the current chunk (Chunked).
    left: u64,
    finished: bool,
    /// Body bytes read so far.
    received: u64,
}

impl BodyState {
    fn new(framing: Framing) -> Self {
        let left = if let Framing::Length(n) = framing {
            n
        } else {
            0
        };
        BodyState {
            framing,
            left,
            finished: framing == Framing::None,
            received: 0,
        }
    }

    /// Reads body bytes; `Ok(0)` at the end of the body; `UnexpectedEof` if the connection ends
    /// first; `InvalidData` on bad chunk framing.
    fn read(&mut self, conn: &mut Conn, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        if self.framing == Framing::Chunked && self.left == 0 {
            self.left = read_chunk_size(conn)?;
            if self.left == 0 {
                skip_trailers(conn)?;
                self.finished = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = conn.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        self.received += n as u64;
        if self.left == 0 {
            match self.framing {
                Framing::Chunked => expect_crlf(conn)?,
                _ => self.finished = true,
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
    let text = String::from_utf8(line).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
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

fn expect_crlf(conn: &mut Conn) -> io::Result<()> {
    if read_line(conn)?.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunk data longer than its size",
        ))
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

/// A response to write; tus headers are added by the constructors that need them.
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

    /// A response carrying `Tus-Resumable`, as every non-OPTIONS answer must.
    fn tus(status: u16) -> Self {
        Response::new(status).header("Tus-Resumable", TUS_VERSION)
    }

    fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    fn text(self, message: &str) -> Self {
        let mut with_type = self.header("Content-Type", "text/plain; charset=utf-8");
        with_type.body = format!("{message}\n").into_bytes();
        with_type
    }

    fn expires(self, at: Option<SystemTime>) -> Self {
        match at {
            Some(at) => self.header("Upload-Expires", http_date(at)),
            None => self,
        }
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
    // RFC 9110 §8.6: no Content-Length on 1xx/204; on HEAD it would describe a GET body.
    if resp.status >= 200 && resp.status != 204 && !head_request {
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
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        423 => "Locked",
        429 => "Too Many Requests",
        460 => "Checksum Mismatch",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
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

fn exchange(shared: &Shared, conn: &mut Conn, req: Request) -> After {
    let log_index = shared.log_request(&req);
    let framing = match framing(&req) {
        Ok(framing) => framing,
        Err(msg) => {
            let reply = Response::new(400).text(&msg).closing();
            let sent = write_response(&conn.get_ref().stream, &reply, false).is_ok();
            shared.finish_log(log_index, 0, sent.then_some(400));
            return After::Close;
        }
    };
    let fault = shared.pop_fault(&req.method);
    let body = BodyState::new(framing);
    let mut ex = Exchange {
        shared,
        conn,
        req,
        body,
        log_index,
        continue_sent: false,
        stalled_mid_body: false,
    };
    let (hooks, outcome) = match fault.map(|f| ex.apply_fault(f)) {
        Some(Err(replacement)) => (Hooks::default(), Outcome::Reply(replacement)),
        Some(Ok(hooks)) => (hooks, ex.dispatch(hooks)),
        None => (Hooks::default(), ex.dispatch(Hooks::default())),
    };
    ex.finish(outcome, hooks)
}

struct Exchange<'a> {
    shared: &'a Shared,
    conn: &'a mut Conn,
    req: Request,
    body: BodyState,
    log_index: usize,
    continue_sent: bool,
    /// A `StallMidBody` fault already paused this body.
    stalled_mid_body: bool,
}

impl Exchange<'_> {
    /// Turns a fault into hooks, or into the response that replaces processing.
    fn apply_fault(&self, fault: Fault) -> Result<Hooks, Response> {
        let mut hooks = Hooks::default();
        match fault {
            Fault::Status { code, body } => return Err(Response::tus(code).text(&body)),
            Fault::StatusWithHeaders {
                code,
                headers,
                body,
            } => {
                let with_headers = headers
                    .iter()
                    .fold(Response::tus(code), |r, (n, v)| r.header(n, v));
                return Err(with_headers.text(&body));
            }
            Fault::Forget => return Err(self.lose_upload(true)),
            Fault::Expire => return Err(self.lose_upload(false)),
            Fault::Garbage => {
                let page = Response::new(200).header("Content-Type", "text/html; charset=utf-8");
                return Err(Response {
                    body: PORTAL_HTML.as_bytes().to_vec(),
                    ..page
                });
            }
            Fault::CutAfter { bytes } => hooks.cut_after = Some(bytes),
            Fault::StallBeforeResponse { dur } => hooks.stall_before = Some(dur),
            Fault::StallMidBody { after_bytes, dur } => hooks.stall_mid = Some((after_bytes, dur)),
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
            Response::tus(404).text("upload not found")
        } else {
            Response::tus(410).text("upload expired")
        }
    }

    /// The upload id named by the request path, if it names one.
    fn upload_id(&self) -> Option<&str> {
        let id = self.req.path.strip_prefix(&self.shared.config.base_path)?;
        (!id.is_empty() && !id.contains('/')).then_some(id)
    }

    fn is_creation_path(&self) -> bool {
        let base = &self.shared.config.base_path;
        self.req.path == *base || self.req.path == base.trim_end_matches('/')
    }

    fn dispatch(&mut self, hooks: Hooks) -> Outcome {
        if hooks.cut_after.is_some() && self.body.finished {
            return Outcome::Reset;
        }
        if self.req.method == "OPTIONS" {
            return Outcome::Reply(self.options());
        }
        if self.req.header("tus-resumable") != Some(TUS_VERSION) {
            let reply = Response::tus(412).header("Tus-Version", TUS_VERSION);
            return Outcome::Reply(reply.text("Tus-Resumable: 1.0.0 is required"));
        }
        let id = self.upload_id().map(str::to_string);
        match (self.req.method.as_str(), id) {
            ("POST", None) if self.is_creation_path() => self.post(hooks),
            ("HEAD", Some(id)) => Outcome::Reply(self.head(&id)),
            ("PATCH", Some(id)) => self.patch(&id, hooks),
            ("DELETE", Some(id)) => Outcome::Reply(self.delete(&id)),
            (_, None) if !self.is_creation_path() => {
                Outcome::Reply(Response::tus(404).text("no such resource"))
            }
            (method, _) => {
                let reply =
                    Response::tus(405).header("Allow", "OPTIONS, POST, HEAD, PATCH, DELETE");
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
        if !self.body.finished {
            if self.req.expects_continue() && !self.continue_sent {
                reply.close = true; // the client holds the body back; it must not be read as a request
            } else if self.drain().is_err() {
                return self.end_without_reply(After::Drop);
            }
        }
        if let Some(dur) = hooks.stall_before {
            self.shared.sleep(dur);
        }
        if hooks.drop_response {
            return self.end_without_reply(After::Drop);
        }
        reply.close |= self.req.wants_close();
        let head_request = self.req.method == "HEAD";
        if write_response(&self.conn.get_ref().stream, &reply, head_request).is_err() {
            return self.end_without_reply(After::Drop);
        }
        self.shared
            .finish_log(self.log_index, self.body.received, Some(reply.status));
        if reply.close {
            After::Close
        } else {
            After::KeepAlive
        }
    }

    fn end_without_reply(&self, after: After) -> After {
        self.shared
            .finish_log(self.log_index, self.body.received, None);
        after
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
        let mut reply = Response::tus(200)
            .header("Upload-Offset", info.offset)
            .header("Upload-Length", info.length)
            .header("Cache-Control", "no-store");
        if let Some(raw) = &info.raw_metadata {
            reply = reply.header("Upload-Metadata", raw);
        }
        reply.expires(expires_at)
    }

    fn delete(&self, id: &str) -> Response {
        if !self.shared.has_ext("termination") {
            return Response::tus(405).text("termination is not supported");
        }
        let held = match self.shared.lock_upload(id) {
            Ok(held) => held,
            Err(answer) => return answer,
        };
        self.shared.forget(&held.id);
        Response::tus(204)
    }

    fn patch(&mut self, id: &str, hooks: Hooks) -> Outcome {
        if !is_offset_stream(self.req.header("content-type")) {
            return Outcome::Reply(
                Response::tus(415)
                    .text("PATCH needs Content-Type: application/offset+octet-stream"),
            );
        }
        let Some(claimed) = self.req.header("upload-offset").and_then(parse_u64) else {
            return Outcome::Reply(Response::tus(400).text("missing or invalid Upload-Offset"));
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
            return Outcome::Reply(Response::tus(409).text(&msg));
        }
        let room = held.length - held.offset;
        if let Some(n) = self.body.framing.length_over(room) {
            return Outcome::Reply(
                Response::tus(413).text(&format!("{n} body bytes exceed the {room} left")),
            );
        }
        let has_checksum = checksum.is_some();
        let received = self.receive(&held, checksum, hooks);
        let settled = shared.settle(&held, received, has_checksum);
        settled.into_outcome(|offset, expires_at| {
            let reply = Response::tus(204).header("Upload-Offset", offset);
            reply.expires(expires_at)
        })
    }

    fn post(&mut self, hooks: Hooks) -> Outcome {
        if !self.shared.has_ext("creation") {
            return Outcome::Reply(Response::tus(405).text("creation is not supported"));
        }
        let creation = match self.creation_request() {
            Ok(creation) => creation,
            Err(answer) => return Outcome::Reply(answer),
        };
        let shared = self.shared;
        let held = match shared.create_upload(creation.length, creation.raw_metadata) {
            Ok(held) => held,
            Err(e) => {
                return Outcome::Reply(
                    Response::tus(500).text(&format!("cannot create the upload: {e}")),
                )
            }
        };
        let created = |offset: Option<u64>, expires_at| {
            let reply = Response::tus(201).header("Location", shared.location_for(&held.id));
            let reply = match offset {
                Some(offset) => reply.header("Upload-Offset", offset),
                None => reply,
            };
            reply.expires(expires_at)
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
            self.req.header("upload-length"),
            self.req.header("upload-defer-length"),
        ) {
            (Some(v), _) => {
                parse_u64(v).ok_or_else(|| Response::tus(400).text("invalid Upload-Length"))?
            }
            (None, Some(_)) => {
                return Err(Response::tus(400).text("creation-defer-length is not supported"))
            }
            (None, None) => return Err(Response::tus(400).text("Upload-Length is required")),
        };
        if self.shared.config.max_size.is_some_and(|max| length > max) {
            return Err(Response::tus(413).text("Upload-Length exceeds Tus-Max-Size"));
        }
        let raw_metadata = self.req.header("upload-metadata").map(str::to_string);
        if let Some(Err(msg)) = raw_metadata.as_deref().map(parse_metadata) {
            return Err(Response::tus(400).text(&format!("invalid Upload-Metadata: {msg}")));
        }
        let with_upload = is_offset_stream(self.req.header("content-type"));
        if with_upload && !self.shared.has_ext("creation-with-upload") {
            return Err(Response::tus(400).text("creation-with-upload is not supported"));
        }
        if !with_upload && !self.body.finished {
            return Err(Response::tus(400)
                .text("a POST body needs Content-Type: application/offset+octet-stream"));
        }
        if let Some(n) = self.body.framing.length_over(length) {
            return Err(
                Response::tus(413).text(&format!("{n} body bytes exceed Upload-Length {length}"))
            );
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
        let Some(value) = self.req.header("upload-checksum") else {
            return Ok(None);
        };
        if !self.shared.has_ext("checksum") {
            return Ok(None);
        }
        let Some((algorithm, encoded)) = value.split_once(' ') else {
            return Err(Response::tus(400).text("Upload-Checksum must be `<algorithm> <base64>`"));
        };
        let offered = self
            .shared
            .config
            .checksum_algorithms
            .iter()
            .any(|a| a == algorithm);
        if !offered || !matches!(algorithm, "sha1" | "sha256") {
            return Err(
                Response::tus(400).text(&format!("unsupported checksum algorithm {algorithm:?}"))
            );
        }
        let expected = base64::engine::general_purpose::STANDARD.decode(encoded);
        let expected =
            expected.map_err(|_| Response::tus(400).text("Upload-Checksum is not valid base64"))?;
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
        if self.send_continue().is_err() {
            return Received::CutByClient(0);
        }
        let mut file = match open_at(&held.path, held.offset) {
            Ok(file) => file,
            Err(e) => return Received::Storage(e.to_string()),
        };
        let mut checksum = checksum;
        let (room, mut stored, mut overflow) = (held.length - held.offset, 0u64, false);
        let mut buf = vec![0u8; BUF_BYTES];
        while !self.body.finished {
            let want = self.next_read_len(hooks, buf.len());
            if want == 0 {
                return Received::CutByFault(stored);
            }
            let n = match self.body.read(self.conn, &mut buf[..want]) {
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
        let received = self.body.received;
        let mut want = buf_len as u64;
        if let Some(cut) = hooks.cut_after {
            want = want.min(cut.saturating_sub(received));
        }
        if let Some((after, dur)) = hooks.stall_mid {
            if received < after {
                want = want.min(after - received);
            } else if !self.stalled_mid_body {
                self.stalled_mid_body = true;
                self.shared.sleep(dur);
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

impl Framing {
    /// The declared body length, when it exceeds `room`.
    fn length_over(self, room: u64) -> Option<u64> {
        match self {
            Framing::Length(n) if n > room => Some(n),
            _ => None,
        }
    }
}

impl Shared {
    /// Commits or discards what [`Exchange::receive`] wrote, and says what to answer.
    fn settle(&self, held: &UploadLock<'_>, received: Received, has_checksum: bool) -> Settled {
        // Bytes that arrived before a cut cannot be checked against a checksum of the whole body.
        let keep_partial = self.config.store_partial_on_cut && !has_checksum;
        let partial = |n: u64| if keep_partial { n } else { 0 };
        let reject =
            |status: u16, msg: &str| Some(Settled::Rejected(Response::tus(status).text(msg)));
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
            return Settled::Rejected(Response::tus(500).text(&e.to_string()));
        }
        if keep == 0 && outcome.is_some() {
            return outcome.unwrap_or(Settled::Broken);
        }
        let (offset, expires_at) = self.advance(&held.id, keep);
        outcome.unwrap_or(Settled::Stored(offset, expires_at))
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

/// A non-negative decimal integer, digits only (no sign, no spaces).
fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
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
