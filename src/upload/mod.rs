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
//!
//! Files: `settings` (what the uploader is told), `create` (Discover, Create), `transfer`
//! (Probe, Send), `checkpoint` (what the store records), `recover` (failures and backoff),
//! `scope` (which credentials go where), `terminate` (DELETE: stale uploads and `--cancel`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::backoff::Jitter;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::ratelimit::RateLimiter;
use crate::source::{ReadControl, Source};
use crate::store::{FileKey, FileRecord, Store};
use crate::stream::MEDIA_ID_HEADER;
use crate::transport::Transport;
use crate::tus::checksum::Algorithm;
use crate::tus::ServerCaps;

mod checkpoint;
mod chunking;
mod create;
mod recover;
mod scope;
mod settings;
mod terminate;
mod transfer;

pub(crate) use scope::scope_headers;
pub(crate) use settings::{ChecksumMode, Header, Settings, MIN_CHUNK_BYTES};

/// What to do next with a file.
#[derive(Debug)]
pub(crate) enum Step {
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
    /// No answer from the server's host (connect, reset, timeout): the link's fault, not the
    /// file's, so no attempt is charged. Only with [`Uploader::with_failure_scopes`]; `step`
    /// again resumes where the file was.
    LinkDown(String),
    /// The endpoint refuses every creation (404, 401, 403, 405 on POST): not the file's fault.
    /// Only with [`Uploader::with_failure_scopes`]; `step` again tries the creation again.
    EndpointRefused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Completed {
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
    pub(crate) fn media_id(&self) -> Option<&str> {
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
pub(crate) struct FileUpload {
    source: Source,
    key: FileKey,
    record: Option<FileRecord>,
    stale_url: Option<String>,
    phase: Phase,
    after_discover: Phase,
    attempt: u32,
    best_offset: u64,
    last_progress: Instant,
    checksum_mismatches: u32,
    checksum: Option<Algorithm>,
    /// The most one PATCH may carry: the configured chunk size or a 413's limit (`u64::MAX`
    /// under the chunk policy until a 413).
    chunk_bytes: u64,
    /// The last PATCH got no answer: the next HEAD tells how the server handles cuts.
    cut: Option<chunking::Cut>,
    restarts: u32,
    last_error: Option<String>,
    progress: Arc<Progress>,
    /// The upload was begun by an earlier run: the first offset the server tells is said.
    resuming: bool,
}

impl FileUpload {
    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        self.source.path()
    }

    /// Failed attempts since the last confirmed byte.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The last transient failure, for status displays.
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// True while the file has no upload URL: its next exchange creates one.
    pub(crate) fn needs_creation(&self) -> bool {
        self.record.is_none()
    }

    /// Bytes the server has confirmed, and the file's length.
    pub(crate) fn confirmed_and_length(&self) -> (u64, u64) {
        (self.best_offset, self.source.len())
    }
}

/// Uploads files: the protocol logic, over a transport, a store and a clock.
pub(crate) struct Uploader<'a> {
    transport: &'a dyn Transport,
    store: &'a Store,
    clock: &'a dyn Clock,
    settings: &'a Settings,
    caps: Mutex<HashMap<String, ServerCaps>>,
    jitter: Mutex<Jitter>,
    wake: Arc<AtomicBool>,
    limiter: Option<Arc<RateLimiter>>,
    bytes_sent: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// The largest chunk the server (or a proxy before it) accepted after a 413, if any.
    learned_chunk_limit: Mutex<Option<u64>>,
    /// What each endpoint does with a cut PATCH, once a cut told (the chunk policy).
    cut_handling: Mutex<HashMap<String, chunking::CutHandling>>,
    /// The link's rate as answered PATCHes measured it (the chunk policy).
    link_rate: Mutex<chunking::LinkRate>,
    /// Report link and endpoint failures as such instead of charging the file an attempt.
    failure_scopes: bool,
    /// The caller makes the completion durable before it acts on it (the daemon, off the
    /// worker's path); without it `complete` syncs it itself.
    caller_syncs_completion: bool,
}

impl<'a> Uploader<'a> {
    /// An uploader; `jitter_seed` should differ between devices.
    pub(crate) fn new(
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
            caps: Mutex::new(HashMap::new()),
            jitter: Mutex::new(Jitter::new(jitter_seed)),
            wake: Arc::new(AtomicBool::new(false)),
            limiter: None,
            bytes_sent: None,
            learned_chunk_limit: Mutex::new(None),
            cut_handling: Mutex::new(HashMap::new()),
            link_rate: Mutex::new(chunking::LinkRate::default()),
            failure_scopes: false,
            caller_syncs_completion: false,
        }
    }

    /// Interrupts transfers and waits when `flag` is set (pause, shutdown).
    pub(crate) fn with_interrupt(mut self, flag: Arc<AtomicBool>) -> Self {
        self.wake = flag;
        self
    }

    /// Shares `limiter` among this uploader's transfers.
    pub(crate) fn with_rate_limit(mut self, limiter: Option<Arc<RateLimiter>>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Counts every body byte read into `total` (metrics).
    pub(crate) fn with_byte_counter(mut self, total: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.bytes_sent = Some(total);
        self
    }

    /// Reports a failure of the link ([`Step::LinkDown`]) or the endpoint
    /// ([`Step::EndpointRefused`]) as such, for a caller that schedules many files (the
    /// daemon); without it they are the file's failed attempts (`ferry upload`).
    pub(crate) fn with_failure_scopes(mut self) -> Self {
        self.failure_scopes = true;
        self
    }

    /// Writes a completion without syncing it: the caller syncs the store before it acts on
    /// a [`Step::Done`] (deletes, moves, keeps the file, runs its hook), so that the sync is
    /// off the worker's path and can share one with the next file's upload URL (group
    /// commit). For the daemon, whose after-upload step does that.
    pub(crate) fn with_completion_synced_by_caller(mut self) -> Self {
        self.caller_syncs_completion = true;
        self
    }

    /// The flag that interrupts transfers and waits.
    pub(crate) fn interrupt_flag(&self) -> &Arc<AtomicBool> {
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

    /// Uploads one file to completion (or failure), waiting out backoffs on the clock; stops
    /// with [`Error::Interrupted`] once the interrupt flag is set.
    pub(crate) fn upload(&self, path: &Path, progress: Arc<Progress>) -> Result<Completed> {
        let mut file = self.start(path, progress)?;
        loop {
            if self.wake.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
            match self.step(&mut file) {
                Step::Continue => {}
                Step::Wait(d) => self.clock.sleep(d, &self.wake),
                Step::Done(c) => return Ok(c),
                Step::Failed(e) => return Err(e),
                Step::Interrupted => return Err(Error::Interrupted),
                Step::LinkDown(why) | Step::EndpointRefused { message: why, .. } => {
                    return Err(Error::Internal(format!(
                        "a failure scope without with_failure_scopes: {why}"
                    )))
                }
            }
        }
    }

    /// Opens `path` and decides, from its record, whether to resume, restart or create.
    pub(crate) fn start(&self, path: &Path, progress: Arc<Progress>) -> Result<FileUpload> {
        let source = Source::open(path)?;
        let key = FileKey::for_path(path)?;
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
            cut: None,
            restarts: 0,
            last_error: None,
            progress,
            resuming: false,
        };
        self.adopt_record(&mut file)?;
        file.progress.begin(
            &file.source.path().display().to_string(),
            file.source.len(),
            file.best_offset,
        );
        Ok(file)
    }

    /// Performs at most one HTTP exchange for `f` and says what comes next.
    pub(crate) fn step(&self, f: &mut FileUpload) -> Step {
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
}

/// Locks `m`; a panic elsewhere while holding it leaves plain data that is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
