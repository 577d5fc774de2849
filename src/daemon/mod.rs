//! `ferry run`: the loop that empties a spool directory into a tus server, unattended.
//!
//! Key idea: one main thread decides and a few worker threads upload. The main thread waits
//! for [`Event`]s (a file written into the spool, a signal, the pause marker, a worker done)
//! or for the next thing that is due (a rescan, a file settling, a status write, a watchdog
//! ping); it queues ready files in the store (oldest first) and hands them to workers. Workers
//! drive [`Uploader::step`] and obey one interrupt flag that pause and shutdown set.
//!
//! A file's life: seen → ready → queued → uploading → complete → after-upload action
//! (delete, move, keep) → forgotten; or failed (moved to the failed directory with a sidecar,
//! or kept in place and remembered) — never deleted before the server holds all of it.
//!
//! The main thread's work is one `Main` value whose methods are split by concern:
//! `main_loop` (wait, tick, route events), `scan` (find ready files, queue them), `dispatch`
//! (hand files to workers, take their results), `failure` (permanent failures),
//! `after_upload` (hook, then delete/move/keep), `forget` (drop records once the file's
//! absence is durable), `control` (pause, reload, signals) and `report` (status, metrics,
//! systemd). `worker` holds the upload threads.

mod after_upload;
mod control;
mod dispatch;
mod evict;
mod failure;
mod forget;
mod gate;
mod main_loop;
mod report;
mod scan;
mod schedule;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clock::{random_seed, Clock};
use crate::error::{Error, Result};
use crate::hook::{self, HookSettings};
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::progress::{Progress, Rate};
use crate::ratelimit::RateLimiter;
use crate::spool::SpoolRules;
use crate::spool_limits::SpoolLimits;
use crate::status::{FailedFile, Totals};
use crate::store::{FileKey, Store};
use crate::transport::Transport;
use crate::upload::{FileUpload, Settings, Uploader};

use gate::Gate;
use schedule::{Pacing, Schedule};
use worker::{worker, Job, Stepped};

/// How many ready files the queue window holds (the rest wait in the spool).
const QUEUE_WINDOW: usize = 1024;

/// What to do with a spool file once the server holds all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterUpload {
    /// Delete it.
    Delete,
    /// Leave it, remembered as done (never uploaded twice).
    Keep,
    /// Move it into this directory.
    Move(PathBuf),
}

/// For people: `delete`, `keep`, `move to /var/spool/ferry-done`.
impl std::fmt::Display for AfterUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Delete => f.write_str("delete"),
            Self::Keep => f.write_str("keep"),
            Self::Move(dir) => write!(f, "move to {}", dir.display()),
        }
    }
}

/// Settings of `ferry run` beyond those of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DaemonSettings {
    /// The spool and its rules.
    pub spool: SpoolRules,
    /// The after-upload action.
    pub after_upload: AfterUpload,
    /// Where permanently failed files go; `None` keeps them in place.
    pub failed_dir: Option<PathBuf>,
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Upload rate limit for all uploads together.
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// Full rescan interval.
    pub rescan_interval: Duration,
    /// Prometheus textfile.
    pub metrics_file: Option<PathBuf>,
    /// `[network]`: the interface and condition policies (`bind_interface` is the transport's).
    pub network: crate::policy::network::NetworkSettings,
    /// Upload windows (`[schedule]`); `None`: uploads may go at any time.
    pub schedule: Option<crate::policy::schedule::ScheduleSettings>,
    /// The spool's limits and what to do when they are exceeded.
    pub limits: SpoolLimits,
}

/// What wakes the main loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// A writer closed this file, or it was renamed into the spool.
    Written(PathBuf),
    /// A name appeared (a file being written, a link, a FIFO): judged by the usual rules.
    Created(PathBuf),
    /// Something a full scan must look at: what happened in the spool before this moment
    /// (the watch was set up, or inotify lost events), which a scan begun since has seen.
    Rescan(Instant),
    /// The pause marker appeared or vanished.
    Control,
    /// The spool cannot be watched: scan often instead.
    WatchUnavailable,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// The kernel announced a link, address or route change.
    NetworkChanged,
    /// A worker ran one step of a file.
    Stepped(Box<Stepped>),
    /// The hook thread ran the hook of a file (`Ok(false)`: it had already run).
    HookFinished(FileKey, std::result::Result<bool, hook::HookError>),
}

/// The real parts the daemon works with.
pub(crate) struct Parts<'a> {
    /// HTTP.
    pub transport: &'a dyn Transport,
    /// State.
    pub store: &'a Store,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Upload settings.
    pub upload: &'a Settings,
    /// The state directory (pause marker, status snapshot).
    pub state_dir: &'a Path,
    /// systemd notifications.
    pub notifier: Notifier,
    /// systemd watchdog interval.
    pub watchdog: Option<Duration>,
    /// Re-reads the daemon settings (SIGHUP).
    pub reload: &'a dyn Fn() -> Result<DaemonSettings>,
    /// Watches the spool these rules describe instead of the one watched before (a reload).
    pub rewatch: &'a dyn Fn(&SpoolRules),
    /// The after-upload hook.
    pub hook: Option<&'a HookSettings>,
    /// Builds the field policies these settings ask for (at start and on every reload).
    pub policies: &'a dyn Fn(&DaemonSettings) -> Vec<Box<dyn Policy>>,
    /// Set by the signal thread as SIGTERM or SIGINT arrives, before its event: a long walk
    /// of the spool for a limits check ends early instead of holding the stop up.
    pub stop_requested: Arc<AtomicBool>,
}

/// The main thread's view of a started upload.
struct Upload {
    /// The upload between steps; `None` while a worker runs a step of it.
    file: Option<FileUpload>,
    progress: Arc<Progress>,
    info: JobInfo,
    rate: Rate,
}

/// What the status shows of an upload beyond its bytes.
#[derive(Debug, Default, Clone)]
struct JobInfo {
    attempts: u32,
    next_retry: Option<SystemTime>,
    last_error: Option<String>,
    confirmed: u64,
}

/// Runs the daemon until SIGTERM/SIGINT.
pub(crate) fn run(
    parts: Parts,
    settings: DaemonSettings,
    events: Receiver<Event>,
    tx: Sender<Event>,
) -> Result<()> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    // Always there, unlimited or not: an upload window or `ferry limit` may set a rate later.
    let limiter = Arc::new(RateLimiter::new(
        settings.rate_limit_bytes_per_sec,
        parts.clock.clone(),
    ));
    let gate = Gate::new(
        (parts.policies)(&settings),
        settings.rate_limit_bytes_per_sec,
        limiter.clone(),
    );
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let seed = random_seed();
    let uploader = Uploader::new(
        parts.transport,
        parts.store,
        parts.clock.as_ref(),
        parts.upload,
        seed,
    )
    .with_interrupt(interrupt.clone())
    .with_rate_limit(Some(limiter))
    .with_byte_counter(bytes_sent.clone())
    .with_failure_scopes()
    .with_completion_synced_by_caller();
    std::thread::scope(|scope| {
        for n in 0..settings.concurrency {
            let (jobs, tx, uploader) = (jobs_rx.clone(), tx.clone(), &uploader);
            std::thread::Builder::new()
                .name(format!("upload-{n}"))
                .spawn_scoped(scope, move || worker(uploader, &jobs, &tx))
                .map_err(|e| Error::Io {
                    context: "cannot start an upload thread".into(),
                    source: e,
                })?;
        }
        let hook_stop = Arc::new(AtomicBool::new(false));
        let (hooks_tx, hooks_rx) = std::sync::mpsc::channel::<FileKey>();
        if let Some(settings) = parts.hook {
            let (tx, clock, stop, store) = (
                tx.clone(),
                parts.clock.clone(),
                hook_stop.clone(),
                parts.store,
            );
            std::thread::Builder::new()
                .name("hook".into())
                .spawn_scoped(scope, move || {
                    for key in hooks_rx {
                        let result =
                            hook::run_recorded(store, &key, settings, clock.as_ref(), &stop);
                        if tx.send(Event::HookFinished(key, result)).is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::Io {
                    context: "cannot start the hook thread".into(),
                    source: e,
                })?;
        }
        let mut main = Main::new(&parts, settings, interrupt, jobs_tx, bytes_sent, seed, gate);
        if parts.hook.is_some() {
            main.hooks = Some((hooks_tx, hook_stop));
        }
        main.spool_watch.terminator =
            Some(evict::spawn_terminator(scope, &uploader, parts.transport)?);
        let result = main.run(&events);
        drop(main); // closes the job and hook channels: idle workers end
        result
    })
}

/// The main thread's state.
struct Main<'p, 'a> {
    parts: &'p Parts<'a>,
    settings: DaemonSettings,
    interrupt: Arc<AtomicBool>,
    jobs: Sender<Job>,
    /// The scheduler: which file steps next, and when.
    core: Schedule,
    /// The field policies and rate limits.
    gate: Gate,
    /// Started uploads (stepping, or waiting between steps).
    uploads: HashMap<FileKey, Upload>,
    settling: HashMap<PathBuf, Instant>,
    refused: HashSet<PathBuf>,
    stopping: Option<Instant>,
    /// The stop deadline passed and the transport's connections were shut down.
    cut_connections: bool,
    spool_missing: bool,
    rescan_every: Duration,
    next_rescan: Instant,
    next_status: Instant,
    next_watchdog: Option<Instant>,
    last_status_line: String,
    ready_sent: bool,
    /// The hook thread's job channel and stop flag, when a hook is configured.
    hooks: Option<(Sender<FileKey>, Arc<AtomicBool>)>,
    /// A full scan must run at the next tick (start, events, refill, reload, unreadable files).
    force_scan: bool,
    /// When the last full scan began (read the spool's first entry).
    last_scan_began: Option<Instant>,
    last_status_write: Instant,
    watch_ok: bool,
    last_scan_dir_mtime: Option<SystemTime>,
    started: SystemTime,
    bytes_sent: Arc<AtomicU64>,
    retries: u64,
    totals: Totals,
    recent_failed: VecDeque<FailedFile>,
    /// Files that were in the spool before a state reset and were uploaded again.
    totals_reuploaded: u64,
    /// Files deleted after their upload whose records wait for a sync of their directory.
    deleted: Vec<FileKey>,
    /// The spool limits' checks: when the next is due, what the last one measured.
    spool_watch: evict::SpoolWatch<'a>,
}

impl<'p, 'a> Main<'p, 'a> {
    fn new(
        parts: &'p Parts<'a>,
        settings: DaemonSettings,
        interrupt: Arc<AtomicBool>,
        jobs: Sender<Job>,
        bytes_sent: Arc<AtomicU64>,
        seed: u64,
        gate: Gate,
    ) -> Self {
        let now = parts.clock.now();
        let rescan_every = settings.rescan_interval;
        Self {
            parts,
            core: Schedule::new(
                settings.concurrency,
                QUEUE_WINDOW,
                Pacing::within(parts.upload.retry.max_delay),
                seed.rotate_left(17),
            )
            .with_hook(parts.hook.is_some()),
            gate,
            settings,
            interrupt,
            jobs,
            uploads: HashMap::new(),
            settling: HashMap::new(),
            refused: HashSet::new(),
            stopping: None,
            cut_connections: false,
            spool_missing: false,
            rescan_every,
            next_rescan: now,
            next_status: now,
            next_watchdog: parts.watchdog.map(|_| now),
            last_status_line: String::new(),
            ready_sent: false,
            hooks: None,
            force_scan: true,
            last_scan_began: None,
            last_status_write: now,
            watch_ok: true,
            last_scan_dir_mtime: None,
            started: parts.clock.wall(),
            bytes_sent,
            retries: 0,
            totals: Totals::default(),
            recent_failed: VecDeque::new(),
            totals_reuploaded: 0,
            deleted: Vec::new(),
            spool_watch: evict::SpoolWatch::new(),
        }
    }

    /// True when `path` lies in the spool as configured now (a reload may have moved it): a
    /// file outside it is never uploaded, deleted or moved.
    fn in_spool(&self, path: &Path) -> bool {
        in_spool(&self.settings.spool, path)
    }
}

/// True when `path` lies in the spool that `rules` describe.
fn in_spool(rules: &SpoolRules, path: &Path) -> bool {
    if rules.recursive {
        path.starts_with(&rules.dir) && path != rules.dir
    } else {
        path.parent() == Some(rules.dir.as_path())
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
