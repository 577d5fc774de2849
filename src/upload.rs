//! Advancing one file's upload by exactly one HTTP exchange at a time.
//!
//! Key idea: [`Uploader::step`] sends one request, checkpoints what the answer proved, and says
//! what comes next as a [`Step`]: go on, wait (backoff), done, or failed. The caller owns the
//! waiting, so `ferry upload` can loop and the daemon can interleave files and pauses.
//!
//! States, named after what they wait for:
//! `Discover` (OPTIONS, once per endpoint) → `Terminate` (DELETE an upload of a changed file)
//! → `Create` (POST; the URL is flushed to the store before any data byte, invariant 2)
//! → `Probe` (HEAD: the server's offset is the truth, invariant 3) ⇄ `Send` (PATCH one chunk)
//! → complete (offset == length, recorded) — or failed, with the server's reason.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::backoff::{parse_retry_after, Decision, Jitter, RetryPolicy};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::ratelimit::RateLimiter;
use crate::source::{ReadControl, Source};
use crate::store::{FileRecord, RecordState, Store, RECORD_VERSION};
use crate::transport::{FailureKind, Transport, TransportError};
use crate::tus::checksum::{self, Algorithm};
use crate::tus::response::{self, Sent};
use crate::tus::{metadata, request, url, Body, Outcome, Request, Response, ServerCaps};

/// The header Cloudflare Stream names a new video with.
pub const MEDIA_ID_HEADER: &str = "stream-media-id";

/// Smallest chunk that a 413 may shrink us to.
const MIN_CHUNK_BYTES: u64 = 64 * 1024;

/// How often a file may change under us before `ferry upload` gives up on it.
const MAX_RESTARTS_FOR_CHANGES: u32 = 3;

/// A request header to send, and whether it is a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Header value (never logged).
    pub value: String,
    /// True when it came from a secret file; such headers, like `Authorization`, `Cookie` and
    /// `Proxy-Authorization`, go only to the endpoint's origin unless configured otherwise.
    pub secret: bool,
}

impl Header {
    fn is_credential(&self) -> bool {
        self.secret
            || ["authorization", "proxy-authorization", "cookie"]
                .iter()
                .any(|n| self.name.eq_ignore_ascii_case(n))
    }
}

/// Whether to send `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// When the server advertises the checksum extension, with its strongest common algorithm.
    Auto,
    /// Never.
    Off,
    /// Always, with this algorithm.
    Always(Algorithm),
}

/// What kind of server the endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A tus 1.0 creation endpoint.
    Tus,
    /// Cloudflare Stream's tus endpoint, with the account's API token.
    CloudflareStream,
    /// A back-end that answers the creation POST with a one-time upload URL elsewhere
    /// (`ferry broker`, or the operator's own).
    UrlBroker,
}

impl Target {
    /// True when upload URLs are one-time URLs that a 403 or 404 ends (ask for a new one).
    pub fn one_time_urls(self) -> bool {
        !matches!(self, Target::Tus)
    }

    /// True when Cloudflare Stream's chunk rules apply.
    pub fn stream_rules(self) -> bool {
        !matches!(self, Target::Tus)
    }
}

/// Stream's rules: every chunk but the last a multiple of 256 KiB within [5 MiB, 200 MiB].
pub const STREAM_CHUNK_MULTIPLE: u64 = 256 * 1024;
/// Stream's smallest chunk (but the last).
pub const STREAM_MIN_CHUNK: u64 = 5 * 1024 * 1024;
/// Stream's largest chunk.
pub const STREAM_MAX_CHUNK: u64 = 200 * 1024 * 1024;

/// How files are uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The tus creation endpoint.
    pub endpoint: String,
    /// Bytes per PATCH.
    pub chunk_size_bytes: u64,
    /// Extra request headers (auth and the like).
    pub headers: Vec<Header>,
    /// Extra `Upload-Metadata` entries.
    pub metadata: Vec<metadata::Entry>,
    /// Send `filename` and `filetype` metadata unless given explicitly.
    pub default_metadata: bool,
    /// Checksums per PATCH.
    pub checksum: ChecksumMode,
    /// Send a file that fits in one chunk with the POST itself (one round trip instead of two).
    /// Off by default: tus 1.0 returns the URL only after the data, so a crash during that POST
    /// can leave one orphaned upload on the server (see the README).
    pub creation_with_upload: bool,
    /// Send credential headers to an upload URL on another origin too.
    pub auth_cross_origin: bool,
    /// Backoff and give-up rules.
    pub retry: RetryPolicy,
    /// How many checksum mismatches in a row fail the file.
    pub max_checksum_mismatches: u32,
    /// What kind of server the endpoint is.
    pub target: Target,
    /// Response headers to keep (lowercase), e.g. `stream-media-id`.
    pub capture_headers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            chunk_size_bytes: 6 * 1024 * 1024,
            headers: Vec::new(),
            metadata: Vec::new(),
            default_metadata: true,
            checksum: ChecksumMode::Auto,
            creation_with_upload: false,
            auth_cross_origin: false,
            retry: RetryPolicy::default(),
            max_checksum_mismatches: 5,
            target: Target::Tus,
            capture_headers: vec![MEDIA_ID_HEADER.to_string()],
        }
    }
}

/// What to do next with a file.
#[derive(Debug)]
pub enum Step {
    /// Call `step` again now.
    Continue,
    /// Call `step` again after this delay.
    Wait(Duration),
    /// The server holds the whole file.
    Done(Completed),
    /// The file cannot be uploaded; the reason says why and what to do.
    Failed(Error),
    /// A pause or shutdown interrupted the transfer; `step` will resume from the server's offset.
    Interrupted,
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The file.
    pub path: PathBuf,
    /// Its upload URL.
    pub url: String,
    /// Its size.
    pub length: u64,
    /// True when it was already complete before this run.
    pub already: bool,
    /// Response headers kept (see `Settings::capture_headers`).
    pub captured: std::collections::BTreeMap<String, String>,
}

impl Completed {
    /// Cloudflare Stream's media id, when the server sent one.
    pub fn media_id(&self) -> Option<&str> {
        self.captured.get(MEDIA_ID_HEADER).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Discover,
    Terminate,
    Create,
    Probe,
    Send { offset: u64 },
    Complete { already: bool },
}

/// One file on its way to the server.
pub struct FileUpload {
    source: Source,
    key: String,
    record: Option<FileRecord>,
    stale_url: Option<String>,
    phase: Phase,
    after_discover: Phase,
    attempt: u32,
    best_offset: u64,
    last_progress: Instant,
    checksum_mismatches: u32,
    checksum: Option<Algorithm>,
    chunk_bytes: u64,
    restarts: u32,
    last_error: Option<String>,
    progress: Arc<Progress>,
}

impl FileUpload {
    /// The file's path.
    pub fn path(&self) -> &Path {
        self.source.path()
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.source.len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Failed attempts since the last confirmed byte.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The last transient failure, for status displays.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The progress counters of this file.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }
}

/// Uploads files: the protocol logic, over a transport, a store and a clock.
pub struct Uploader<'a> {
    transport: &'a dyn Transport,
    store: &'a Store,
    clock: &'a dyn Clock,
    settings: &'a Settings,
    caps: RefCell<HashMap<String, ServerCaps>>,
    jitter: RefCell<Jitter>,
    wake: Arc<AtomicBool>,
    limiter: Option<Arc<RateLimiter>>,
    bytes_sent: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The largest chunk the server (or a proxy before it) accepted after a 413, if any.
    learned_chunk_limit: RefCell<Option<u64>>,
}

impl<'a> Uploader<'a> {
    /// An uploader; `jitter_seed` should differ between devices.
    pub fn new(
        transport: &'a dyn Transport,
        store: &'a Store,
        clock: &'a dyn Clock,
        settings: &'a Settings,
        jitter_seed: u64,
    ) -> Self {
        Self {
            transport,
            store,
            clock,
            settings,
            caps: RefCell::new(HashMap::new()),
            jitter: RefCell::new(Jitter::new(jitter_seed)),
            wake: Arc::new(AtomicBool::new(false)),
            limiter: None,
            bytes_sent: None,
            learned_chunk_limit: RefCell::new(None),
        }
    }

    /// Interrupts transfers and waits when `flag` is set (pause, shutdown).
    pub fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.wake = flag;
        self
    }

    /// Shares `limiter` among this uploader's transfers.
    pub fn with_rate_limit(mut self, limiter: Option<Arc<RateLimiter>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Counts every body byte read into `total` (metrics).
    pub fn with_byte_counter(mut self, total: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.bytes_sent = Some(total);
        self
    }

    /// The flag that interrupts transfers and waits.
    pub fn interrupt_flag(&self) -> &Arc<AtomicBool> {
        &self.wake
    }

    fn read_control(&self, f: &FileUpload) -> ReadControl {
        ReadControl {
            counter: f.progress.counter(),
            interrupt: Some(self.wake.clone()),
            limiter: self.limiter.clone(),
            total: self.bytes_sent.clone(),
        }
    }

    /// Uploads one file to completion (or failure), waiting out backoffs on the clock.
    pub fn upload(&self, path: &Path, progress: Arc<Progress>) -> Result<Completed> {
        let mut file = self.start(path, progress)?;
        loop {
            match self.step(&mut file) {
                Step::Continue => {}
                Step::Wait(d) => self.clock.sleep(d, &self.wake),
                Step::Done(c) => return Ok(c),
                Step::Failed(e) => return Err(e),
                Step::Interrupted => return Err(Error::Interrupted),
            }
        }
    }

    /// Opens `path` and decides, from its record, whether to resume, restart or create.
    pub fn start(&self, path: &Path, progress: Arc<Progress>) -> Result<FileUpload> {
        let source = Source::open(path)?;
        let key = record_key(path)?;
        let mut file = FileUpload {
            source,
            key,
            record: None,
            stale_url: None,
            phase: Phase::Discover,
            after_discover: Phase::Create,
            attempt: 0,
            best_offset: 0,
            last_progress: self.clock.now(),
            checksum_mismatches: 0,
            checksum: None,
            chunk_bytes: self.chunk_size(),
            restarts: 0,
            last_error: None,
            progress,
        };
        self.adopt_record(&mut file)?;
        file.progress.begin(
            &file.source.path().display().to_string(),
            file.source.len(),
            file.best_offset,
        );
        Ok(file)
    }

    fn adopt_record(&self, f: &mut FileUpload) -> Result<()> {
        let Some(rec) = self.store.get(&f.key)? else {
            return Ok(());
        };
        let name = f.source.path().display();
        if rec.identity != f.source.identity() {
            log::info!("{name}: changed since its last upload started; uploading the new content as a new upload");
            if rec.state == RecordState::Uploading {
                f.stale_url = Some(rec.upload_url.clone());
                f.after_discover = Phase::Terminate;
            }
            self.store.remove(&f.key)?;
        } else if rec.endpoint != self.settings.endpoint {
            log::warn!(
                "{name}: was being uploaded to {}; starting a new upload at {}",
                url::redact(&rec.endpoint),
                url::redact(&self.settings.endpoint)
            );
            self.store.remove(&f.key)?;
        } else if rec.state == RecordState::Complete {
            f.best_offset = rec.offset;
            f.phase = Phase::Complete { already: true };
            f.record = Some(rec);
        } else {
            f.best_offset = rec.offset;
            f.after_discover = Phase::Probe;
            f.record = Some(rec);
        }
        Ok(())
    }

    /// Performs at most one HTTP exchange for `f` and says what comes next.
    pub fn step(&self, f: &mut FileUpload) -> Step {
        let result = match f.phase {
            Phase::Discover => self.discover(f),
            Phase::Terminate => self.terminate_stale(f),
            Phase::Create => self.create(f),
            Phase::Probe => self.probe(f),
            Phase::Send { offset } => self.send(f, offset),
            Phase::Complete { already } => return self.complete(f, already),
        };
        result.unwrap_or_else(Step::Failed)
    }

    fn discover(&self, f: &mut FileUpload) -> Result<Step> {
        let endpoint = &self.settings.endpoint;
        let cached = self.caps.borrow().get(endpoint).cloned();
        let caps = match cached {
            Some(c) => c,
            None => match self.exchange(request::options(endpoint)) {
                Ok(resp) => {
                    let caps = ServerCaps::from_options(&resp);
                    if !caps.discovered {
                        log::info!(
                            "{}: OPTIONS refused ({}); assuming tus core + creation",
                            url::redact(endpoint),
                            resp.message()
                        );
                    }
                    self.caps
                        .borrow_mut()
                        .insert(endpoint.clone(), caps.clone());
                    caps
                }
                Err(e) => return self.transport_failure(f, e, Phase::Discover),
            },
        };
        let length = f.source.len();
        if let Some(max) = caps.max_size.filter(|m| length > *m) {
            return Err(Error::Server {
                url: url::redact(endpoint).to_string(),
                status: 413,
                message: format!("the file is {length} bytes and the server accepts at most {max} (Tus-Max-Size)"),
            });
        }
        f.checksum = match self.settings.checksum {
            ChecksumMode::Off => None,
            ChecksumMode::Always(a) => Some(a),
            ChecksumMode::Auto if caps.supports("checksum") => {
                checksum::choose(&caps.checksum_algorithms)
            }
            ChecksumMode::Auto => None,
        };
        f.phase = f.after_discover;
        Ok(Step::Continue)
    }

    /// Bytes per PATCH: the configured size, or less if a 413 taught us a limit.
    fn chunk_size(&self) -> u64 {
        let configured = self.settings.chunk_size_bytes.max(1);
        self.learned_chunk_limit
            .borrow()
            .map_or(configured, |l| l.min(configured))
    }

    fn caps(&self) -> ServerCaps {
        self.caps
            .borrow()
            .get(&self.settings.endpoint)
            .cloned()
            .unwrap_or_default()
    }

    fn terminate_stale(&self, f: &mut FileUpload) -> Result<Step> {
        f.phase = Phase::Create;
        let (Some(stale), caps) = (f.stale_url.take(), self.caps()) else {
            return Ok(Step::Continue);
        };
        if caps.discovered && !caps.supports("termination") {
            log::info!(
                "{}: server lacks termination; the old upload {} will expire there",
                f.path().display(),
                url::redact(&stale)
            );
            return Ok(Step::Continue);
        }
        match self.exchange(request::delete(&stale)) {
            Ok(resp) => match response::deleted(&resp) {
                Outcome::Gone { .. } => log::info!(
                    "{}: terminated the old upload {}",
                    f.path().display(),
                    url::redact(&stale)
                ),
                _ => log::warn!(
                    "{}: could not terminate the old upload {}: {}",
                    f.path().display(),
                    url::redact(&stale),
                    resp.message()
                ),
            },
            Err(e) => log::warn!(
                "{}: could not terminate the old upload {}: {e}",
                f.path().display(),
                url::redact(&stale)
            ),
        }
        Ok(Step::Continue)
    }

    fn create(&self, f: &mut FileUpload) -> Result<Step> {
        let length = f.source.len();
        let meta = metadata::encode(&self.metadata_for(f.source.path()))
            .map_err(|e| Error::config(e.to_string()))?;
        let with_upload = self.settings.creation_with_upload
            && self.caps().supports("creation-with-upload")
            && length > 0
            && length <= f.chunk_bytes;
        let first = if with_upload {
            let sum = f
                .checksum
                .map(|a| f.source.digest(0, length, a))
                .transpose()?;
            Some((length, sum))
        } else {
            None
        };
        let sent = Sent {
            offset: 0,
            len: first.as_ref().map_or(0, |(l, _)| *l),
            length,
            checksum: first.as_ref().is_some_and(|(_, s)| s.is_some()),
        };
        let req = request::create(&self.settings.endpoint, length, meta.as_deref(), first);
        let body: Option<Box<dyn std::io::Read + Send>> = match req.body {
            Body::File { offset, len } => {
                f.progress.set_position(offset);
                Some(Box::new(f.source.reader(
                    offset,
                    len,
                    self.read_control(f),
                )?))
            }
            Body::Empty => None,
        };
        let resp = match self.send_scoped(&self.settings.endpoint, req, body) {
            Ok(r) => r,
            Err(e) => return self.transport_failure(f, e, Phase::Create),
        };
        match response::created(&resp, &self.settings.endpoint, sent) {
            Outcome::Created {
                url,
                offset,
                expires,
            } => {
                let captured = self.capture(&resp, &Default::default());
                self.created(f, url, offset, expires, captured)
            }
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Create)
            }
            Outcome::ChecksumRejected { why } => Ok(self.without_checksum(f, &why)),
            other => Err(self.refused(&self.settings.endpoint, &resp, other)),
        }
    }

    fn created(
        &self,
        f: &mut FileUpload,
        upload_url: String,
        offset: u64,
        expires: Option<std::time::SystemTime>,
        captured: std::collections::BTreeMap<String, String>,
    ) -> Result<Step> {
        let now = unix(self.clock.wall());
        let record = FileRecord {
            version: RECORD_VERSION,
            path: f.key.clone(),
            identity: f.source.identity(),
            endpoint: self.settings.endpoint.clone(),
            upload_url,
            offset,
            expires_unix: expires.map(unix),
            created_unix: now,
            updated_unix: now,
            state: RecordState::Uploading,
            captured,
            hook: Default::default(),
        };
        // Invariant 2: durable before any PATCH.
        self.store.put(&record)?;
        let media = record
            .captured
            .get(MEDIA_ID_HEADER)
            .map_or(String::new(), |m| format!(" (media id {m})"));
        log::info!(
            "{}: created upload {}{media}",
            f.path().display(),
            url::redact(&record.upload_url)
        );
        f.record = Some(record);
        f.best_offset = 0;
        self.advanced(f, offset)?;
        Ok(Step::Continue)
    }

    fn probe(&self, f: &mut FileUpload) -> Result<Step> {
        let Some(rec) = f.record.clone() else {
            f.phase = Phase::Create;
            return Ok(Step::Continue);
        };
        if rec
            .expires_unix
            .is_some_and(|e| e <= unix(self.clock.wall()))
        {
            return self.forget_upload(f, "its Upload-Expires has passed");
        }
        let resp = match self.exchange(request::head(&rec.upload_url)) {
            Ok(r) => r,
            Err(e) => return self.transport_failure(f, e, Phase::Probe),
        };
        self.capture_later(f, &resp)?;
        match response::head(&resp, f.source.len()) {
            Outcome::Offset { offset, expires } => {
                if let Some(e) = expires {
                    self.set_expiry(f, e)?;
                }
                self.advanced(f, offset)?;
                Ok(Step::Continue)
            }
            Outcome::Gone { why } => self.forget_upload(f, &why),
            Outcome::Fail { status: 403, why } if self.settings.target.one_time_urls() => {
                self.forget_upload(f, &format!("the one-time URL is refused: {why}"))
            }
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Probe)
            }
            other => Err(self.refused(&rec.upload_url, &resp, other)),
        }
    }

    fn send(&self, f: &mut FileUpload, offset: u64) -> Result<Step> {
        if let Err(e) = f.source.check_unchanged() {
            return self.source_changed(f, e);
        }
        let Some(rec) = f.record.clone() else {
            f.phase = Phase::Create;
            return Ok(Step::Continue);
        };
        let length = f.source.len();
        let len = f.chunk_bytes.min(length - offset);
        let sum = f
            .checksum
            .map(|a| f.source.digest(offset, len, a))
            .transpose()?;
        let sent = Sent {
            offset,
            len,
            length,
            checksum: sum.is_some(),
        };
        let req = request::patch(&rec.upload_url, offset, len, sum);
        f.progress.set_position(offset);
        let body = f.source.reader(offset, len, self.read_control(f))?;
        let resp = match self.send_scoped(&self.settings.endpoint, req, Some(Box::new(body))) {
            Ok(r) => r,
            Err(e) if e.kind == FailureKind::Body => {
                let changed = f.source.check_unchanged().err();
                return self.source_changed(
                    f,
                    changed.unwrap_or_else(|| Error::source_file(f.path(), e.to_string())),
                );
            }
            Err(e) => return self.transport_failure(f, e, Phase::Probe),
        };
        self.on_patch_answer(f, &rec.upload_url, sent, &resp)
    }

    /// Acts on the answer to a PATCH that carried `sent`.
    fn on_patch_answer(
        &self,
        f: &mut FileUpload,
        upload_url: &str,
        sent: Sent,
        resp: &Response,
    ) -> Result<Step> {
        let (offset, len) = (sent.offset, sent.len);
        self.capture_later(f, resp)?;
        match response::patch(resp, sent) {
            Outcome::Offset {
                offset: new,
                expires,
            } => {
                if let Some(e) = expires {
                    self.set_expiry(f, e)?;
                }
                if new == offset {
                    let why = format!("server accepted none of the {len} bytes sent");
                    return self.retry_later(f, why, None, Phase::Probe);
                }
                f.checksum_mismatches = 0;
                self.advanced(f, new)?;
                Ok(Step::Continue)
            }
            Outcome::Conflict => {
                log::info!(
                    "{}: offset conflict at {offset}; asking the server",
                    f.path().display()
                );
                let first = f.attempt == 0;
                f.attempt += 1;
                f.phase = Phase::Probe;
                Ok(if first {
                    Step::Continue
                } else {
                    self.backoff(f, "offset conflict".into(), None, Phase::Probe)
                })
            }
            Outcome::Gone { why } => self.forget_upload(f, &why),
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Probe)
            }
            Outcome::ChecksumMismatch => {
                f.checksum_mismatches += 1;
                if f.checksum_mismatches >= self.settings.max_checksum_mismatches {
                    return Err(Error::Server {
                        url: url::redact(upload_url).into(),
                        status: resp.status,
                        message: format!("checksum mismatch {} times in a row at offset {offset}: the file or the link corrupts data", f.checksum_mismatches),
                    });
                }
                log::warn!(
                    "{}: checksum mismatch at offset {offset}; sending the chunk again",
                    f.path().display()
                );
                Ok(Step::Continue)
            }
            Outcome::ChecksumRejected { why } => Ok(self.without_checksum(f, &why)),
            Outcome::Fail { status: 403, why } if self.settings.target.one_time_urls() => {
                self.forget_upload(f, &format!("the one-time URL is refused: {why}"))
            }
            Outcome::TooLarge { why } if self.smaller_chunk(f.chunk_bytes) < f.chunk_bytes => {
                f.chunk_bytes = self.smaller_chunk(f.chunk_bytes);
                *self.learned_chunk_limit.borrow_mut() = Some(f.chunk_bytes);
                log::warn!(
                    "{}: chunk too large ({why}); using {} byte chunks",
                    f.path().display(),
                    f.chunk_bytes
                );
                f.phase = Phase::Probe;
                Ok(Step::Continue)
            }
            other => Err(self.refused(upload_url, resp, other)),
        }
    }

    fn complete(&self, f: &mut FileUpload, already: bool) -> Step {
        let Some(mut rec) = f.record.clone() else {
            return Step::Failed(Error::source_file(
                f.path(),
                "completed without an upload record",
            ));
        };
        if rec.state != RecordState::Complete {
            rec.state = RecordState::Complete;
            rec.offset = f.source.len();
            rec.updated_unix = unix(self.clock.wall());
            if let Err(e) = self.store.put(&rec) {
                return Step::Failed(e);
            }
        }
        f.progress.finish();
        Step::Done(Completed {
            path: f.path().to_path_buf(),
            url: rec.upload_url,
            length: f.source.len(),
            already,
            captured: rec.captured,
        })
    }

    /// The configured response headers present in `resp`, added to `known`.
    fn capture(
        &self,
        resp: &Response,
        known: &std::collections::BTreeMap<String, String>,
    ) -> std::collections::BTreeMap<String, String> {
        let mut out = known.clone();
        for name in &self.settings.capture_headers {
            if let Some(v) = resp.header(name) {
                out.insert(name.clone(), v.to_string());
            }
        }
        out
    }

    /// Half of `chunk`, within the target's rules (Stream: multiples of 256 KiB, ≥ 5 MiB).
    fn smaller_chunk(&self, chunk: u64) -> u64 {
        if self.settings.target.stream_rules() {
            let half = chunk / 2 / STREAM_CHUNK_MULTIPLE * STREAM_CHUNK_MULTIPLE;
            half.max(STREAM_MIN_CHUNK).min(chunk)
        } else {
            (chunk / 2).max(MIN_CHUNK_BYTES).min(chunk)
        }
    }

    /// Keeps response headers that first arrive after creation.
    fn capture_later(&self, f: &mut FileUpload, resp: &Response) -> Result<()> {
        if let Some(rec) = f.record.as_mut() {
            let captured = self.capture(resp, &rec.captured);
            if captured != rec.captured {
                rec.captured = captured;
                self.store.put(rec)?;
            }
        }
        Ok(())
    }

    /// The server will not check our checksum algorithm: go on without checksums.
    fn without_checksum(&self, f: &mut FileUpload, why: &str) -> Step {
        log::warn!(
            "{}: server rejected our checksum ({why}); sending without",
            f.path().display()
        );
        f.checksum = None;
        Step::Continue
    }

    /// The server confirmed `offset` bytes: record progress and choose the next phase.
    fn advanced(&self, f: &mut FileUpload, offset: u64) -> Result<()> {
        if offset > f.best_offset {
            f.best_offset = offset;
            f.attempt = 0;
            f.last_progress = self.clock.now();
        }
        f.progress.set_position(offset);
        let complete = offset == f.source.len();
        if let Some(rec) = f.record.as_mut() {
            // At the end, `complete` writes the record once, with its final state. The
            // offset is no checkpoint (the server's HEAD decides where to resume): not synced.
            if rec.offset != offset && !complete {
                rec.offset = offset;
                rec.updated_unix = unix(self.clock.wall());
                self.store.put_unsynced(rec)?;
            }
        }
        f.phase = if complete {
            Phase::Complete { already: false }
        } else {
            Phase::Send { offset }
        };
        Ok(())
    }

    fn set_expiry(&self, f: &mut FileUpload, expires: std::time::SystemTime) -> Result<()> {
        if let Some(rec) = f.record.as_mut() {
            let e = Some(unix(expires));
            if rec.expires_unix != e {
                rec.expires_unix = e;
                self.store.put_unsynced(rec)?; // the server says it again at every HEAD
            }
        }
        Ok(())
    }

    /// The server lost or expired the upload: forget it and create a new one.
    fn forget_upload(&self, f: &mut FileUpload, why: &str) -> Result<Step> {
        if let Some(rec) = f.record.take() {
            if let Some(media) = rec.captured.get(MEDIA_ID_HEADER) {
                log::warn!(
                    "{}: abandoning video {media} (its upload URL is gone)",
                    f.path().display()
                );
            }
            log::warn!(
                "{}: upload {} is gone ({why}); creating a new upload",
                f.path().display(),
                url::redact(&rec.upload_url)
            );
        }
        self.store.remove(&f.key)?;
        f.best_offset = 0;
        f.phase = Phase::Create;
        Ok(Step::Continue)
    }

    /// The file changed under us: terminate its upload and start over with the new content.
    fn source_changed(&self, f: &mut FileUpload, e: Error) -> Result<Step> {
        f.restarts += 1;
        if f.restarts > MAX_RESTARTS_FOR_CHANGES {
            return Err(Error::source_file(
                f.path(),
                format!("keeps changing while being uploaded ({e}); upload it once it is complete"),
            ));
        }
        log::warn!("{e}; starting over with its new content");
        let progress = f.progress.clone();
        let stale = f.record.take().map(|r| r.upload_url);
        self.store.remove(&f.key)?;
        let restarts = f.restarts;
        *f = self.start(f.source.path().to_path_buf().as_path(), progress)?;
        f.restarts = restarts;
        f.stale_url = stale;
        f.after_discover = Phase::Terminate;
        Ok(Step::Continue)
    }

    fn transport_failure(
        &self,
        f: &mut FileUpload,
        e: TransportError,
        next: Phase,
    ) -> Result<Step> {
        let target = match next {
            Phase::Discover | Phase::Create => self.settings.endpoint.clone(),
            _ => f
                .record
                .as_ref()
                .map_or_else(|| self.settings.endpoint.clone(), |r| r.upload_url.clone()),
        };
        if e.kind == FailureKind::Interrupted {
            f.phase = match next {
                Phase::Send { .. } => Phase::Probe,
                other => other,
            };
            return Ok(Step::Interrupted);
        }
        if !e.is_transient() {
            return Err(Error::Network {
                url: url::redact(&target).into(),
                problem: format!("{e}; check ca_file / client_cert settings"),
            });
        }
        self.retry_later(f, e.to_string(), None, next)
    }

    fn retry_later(
        &self,
        f: &mut FileUpload,
        why: String,
        retry_after: Option<&str>,
        next: Phase,
    ) -> Result<Step> {
        f.attempt += 1;
        Ok(self.backoff(f, why, retry_after, next))
    }

    fn backoff(
        &self,
        f: &mut FileUpload,
        why: String,
        retry_after: Option<&str>,
        next: Phase,
    ) -> Step {
        let ra = retry_after.and_then(|v| parse_retry_after(v, self.clock.wall()));
        let stalled = self.clock.now().saturating_duration_since(f.last_progress);
        let jitter = self.jitter.borrow_mut().next_unit();
        match self.settings.retry.decide(f.attempt, stalled, ra, jitter) {
            Decision::RetryAfter(d) => {
                f.last_error = Some(why.clone());
                log::warn!(
                    "{}: {why}; retrying in {:.1} s (attempt {})",
                    f.path().display(),
                    d.as_secs_f64(),
                    f.attempt
                );
                f.phase = next;
                Step::Wait(d)
            }
            Decision::GiveUp => Step::Failed(Error::GaveUp {
                path: f.path().to_path_buf(),
                attempts: f.attempt,
                last: why,
            }),
        }
    }

    fn refused(&self, target: &str, resp: &Response, outcome: Outcome) -> Error {
        let message = match outcome {
            Outcome::Fail { why, .. } => why,
            other => format!("unexpected answer {other:?} ({})", resp.message()),
        };
        Error::Server {
            url: url::redact(target).into(),
            status: resp.status,
            message,
        }
    }

    fn metadata_for(&self, path: &Path) -> Vec<metadata::Entry> {
        let mut entries = self.settings.metadata.clone();
        if self.settings.default_metadata {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let has = |entries: &[metadata::Entry], k: &str| entries.iter().any(|(e, _)| e == k);
            if !has(&entries, "filetype") {
                entries.insert(
                    0,
                    (
                        "filetype".into(),
                        Some(metadata::guess_filetype(&name).into()),
                    ),
                );
            }
            if !has(&entries, "filename") {
                entries.insert(0, ("filename".into(), Some(name)));
            }
        }
        entries
    }

    fn exchange(&self, req: Request) -> std::result::Result<Response, TransportError> {
        self.send_scoped(&self.settings.endpoint, req, None)
    }

    /// Sends `req` with the configured headers; credentials only to `endpoint`'s origin unless
    /// `auth_cross_origin` is set.
    fn send_scoped(
        &self,
        endpoint: &str,
        mut req: Request,
        body: Option<Box<dyn std::io::Read + Send>>,
    ) -> std::result::Result<Response, TransportError> {
        let cross = !url::same_origin(&req.url, endpoint);
        for h in &self.settings.headers {
            if cross && h.is_credential() && !self.settings.auth_cross_origin {
                log::debug!(
                    "not sending {} to {}, another origin",
                    h.name,
                    url::redact(&req.url)
                );
                continue;
            }
            req.set(&h.name, h.value.clone());
        }
        log::debug!("{} {}", req.method.as_str(), url::redact(&req.url));
        self.transport.send(&req, body)
    }

    /// Terminates the upload of `path` on the server and forgets it (`ferry upload --cancel`).
    pub fn cancel(&self, path: &Path) -> Result<String> {
        let key = record_key(path)?;
        let Some(rec) = self.store.get(&key)? else {
            return Err(Error::source_file(
                path,
                "has no upload recorded in this state directory; nothing to cancel",
            ));
        };
        let outcome = self
            .send_scoped(&rec.endpoint, request::delete(&rec.upload_url), None)
            .map(|r| (response::deleted(&r), r));
        match outcome {
            Ok((Outcome::Gone { .. }, _)) => {
                self.store.remove(&key)?;
                Ok(rec.upload_url)
            }
            Ok((_, resp)) => Err(Error::Server {
                url: url::redact(&rec.upload_url).into(),
                status: resp.status,
                message: format!(
                    "could not terminate the upload ({}); its record is kept, try again",
                    resp.message()
                ),
            }),
            Err(e) => Err(Error::Network {
                url: url::redact(&rec.upload_url).into(),
                problem: format!("{e}; its record is kept, try again"),
            }),
        }
    }
}

/// The store key of a file: its absolute path (symlinks in it are not resolved).
pub fn record_key(path: &Path) -> Result<String> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::source_file(path, format!("cannot make the path absolute: {e}")))?;
    abs.to_str()
        .map(str::to_string)
        .ok_or_else(|| Error::source_file(path, "path is not valid UTF-8; rename the file"))
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "upload_tests.rs"]
mod tests;
