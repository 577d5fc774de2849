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

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clock::{random_seed, Clock};
use crate::durable;
use crate::error::{Error, Result};
use crate::hook::{self, HookSettings};
use crate::notify::Notifier;
use crate::progress::Progress;
use crate::queue::Window;
use crate::ratelimit::RateLimiter;
use crate::spool::{self, SpoolRules, Verdict};
use crate::status::{self, ActiveFile, FailedFile, Snapshot, Totals, PAUSE_MARKER};
use crate::store::{FailedRecord, RecordState, Store};
use crate::transport::Transport;
use crate::tus::url;
use crate::upload::{record_key, Completed, Settings, Step, Uploader};

/// Shutdown must finish within this, whatever the link does (systemd's stop timeout is longer).
const STOP_DEADLINE: Duration = Duration::from_millis(4500);
/// Status snapshots while uploading; and at least this often when idle.
const STATUS_BUSY: Duration = Duration::from_secs(1);
const STATUS_IDLE: Duration = Duration::from_secs(30);
/// Full rescans when inotify is not available.
const RESCAN_WITHOUT_WATCH: Duration = Duration::from_secs(2);
/// After a TLS failure (a setting to fix, or the server's certificate), wait this long.
const LINK_TROUBLE_PAUSE: Duration = Duration::from_secs(60);
/// After this many deletions their directory is synced and their records dropped.
const FORGET_BATCH: usize = 64;
/// How soon a failed after-upload action (delete, move) is tried again.
const AFTER_UPLOAD_RETRY: Duration = Duration::from_secs(10);
/// How many refused paths are remembered so each is logged once.
const MAX_REFUSED_REMEMBERED: usize = 10_000;
/// How many ready files the queue window holds (the rest wait in the spool).
const QUEUE_WINDOW: usize = 1024;
/// How many permanent failures the status shows.
const MAX_RECENT_FAILED: usize = 50;

/// What to do with a spool file once the server holds all of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterUpload {
    /// Delete it.
    Delete,
    /// Leave it, remembered as done (never uploaded twice).
    Keep,
    /// Move it into this directory.
    Move(PathBuf),
}

/// Settings of `ferry run` beyond those of an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSettings {
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
}

/// What wakes the main loop.
#[derive(Debug)]
pub enum Event {
    /// A writer closed this file, or it was renamed into the spool.
    Written(PathBuf),
    /// A name appeared (a file being written, a link, a FIFO): judged by the usual rules.
    Created(PathBuf),
    /// Something a full scan must look at.
    Rescan,
    /// The pause marker appeared or vanished.
    Control,
    /// The spool cannot be watched: scan often instead.
    WatchUnavailable,
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// A worker is done with a file.
    Finished(String, JobResult),
    /// The hook thread ran the hook of a file (`Ok(false)`: it had already run).
    HookFinished(String, std::result::Result<bool, String>),
}

/// How a worker's job ended.
#[derive(Debug)]
pub enum JobResult {
    /// The server holds the whole file.
    Done(Completed),
    /// The file cannot be uploaded.
    Failed(Error),
    /// Pause or shutdown.
    Interrupted,
}

/// The real parts the daemon works with.
pub struct Parts<'a> {
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
    /// The after-upload hook.
    pub hook: Option<&'a HookSettings>,
}

/// What a worker publishes about its file for the status.
#[derive(Debug, Default, Clone)]
struct JobInfo {
    attempts: u32,
    next_retry: Option<SystemTime>,
    last_error: Option<String>,
}

struct Job {
    key: String,
    progress: Arc<Progress>,
    info: Arc<Mutex<JobInfo>>,
}

struct Active {
    progress: Arc<Progress>,
    info: Arc<Mutex<JobInfo>>,
    rate: (Instant, u64, f64),
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(
    parts: Parts,
    settings: DaemonSettings,
    events: Receiver<Event>,
    tx: Sender<Event>,
) -> Result<()> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let limiter = settings
        .rate_limit_bytes_per_sec
        .map(|r| Arc::new(RateLimiter::new(r, parts.clock.clone())));
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    std::thread::scope(|scope| {
        for n in 0..settings.concurrency {
            let (jobs, tx) = (jobs_rx.clone(), tx.clone());
            let uploader = Uploader::new(
                parts.transport,
                parts.store,
                parts.clock.as_ref(),
                parts.upload,
                random_seed() ^ n as u64,
            )
            .with_interrupt(interrupt.clone())
            .with_rate_limit(limiter.clone())
            .with_byte_counter(bytes_sent.clone());
            let (clock, retries) = (parts.clock.clone(), retries.clone());
            std::thread::Builder::new()
                .name(format!("upload-{n}"))
                .spawn_scoped(scope, move || {
                    worker(&uploader, clock.as_ref(), &jobs, &tx, &retries)
                })
                .map_err(|e| Error::Io {
                    context: "cannot start an upload thread".into(),
                    source: e,
                })?;
        }
        let hook_stop = Arc::new(AtomicBool::new(false));
        let (hooks_tx, hooks_rx) = std::sync::mpsc::channel::<String>();
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
        let mut main = Main::new(&parts, settings, interrupt, jobs_tx, bytes_sent, retries);
        if parts.hook.is_some() {
            main.hooks = Some((hooks_tx, hook_stop));
        }
        let result = main.run(&events);
        drop(main); // closes the job and hook channels: idle workers end
        result
    })
}

fn worker(
    uploader: &Uploader,
    clock: &dyn Clock,
    jobs: &Mutex<Receiver<Job>>,
    tx: &Sender<Event>,
    retries: &AtomicU64,
) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let result = upload_one(uploader, clock, &job, retries);
        if tx.send(Event::Finished(job.key, result)).is_err() {
            return;
        }
    }
}

fn upload_one(uploader: &Uploader, clock: &dyn Clock, job: &Job, retries: &AtomicU64) -> JobResult {
    let interrupt = uploader.interrupt_flag();
    let mut file = match uploader.start(Path::new(&job.key), job.progress.clone()) {
        Ok(f) => f,
        Err(e) => return JobResult::Failed(e),
    };
    loop {
        if interrupt.load(Ordering::Relaxed) {
            return JobResult::Interrupted;
        }
        let step = uploader.step(&mut file);
        {
            let mut info = job.info.lock().unwrap_or_else(|e| e.into_inner());
            info.attempts = file.attempts();
            info.last_error = file.last_error().map(str::to_string);
            info.next_retry = match &step {
                Step::Wait(d) => Some(clock.wall() + *d),
                _ => None,
            };
        }
        match step {
            Step::Continue => {}
            Step::Wait(d) => {
                retries.fetch_add(1, Ordering::Relaxed);
                clock.sleep(d, interrupt);
            }
            Step::Done(c) => return JobResult::Done(c),
            Step::Failed(e) => return JobResult::Failed(e),
            Step::Interrupted => return JobResult::Interrupted,
        }
    }
}

/// The main thread's state.
struct Main<'p, 'a> {
    parts: &'p Parts<'a>,
    settings: DaemonSettings,
    interrupt: Arc<AtomicBool>,
    jobs: Sender<Job>,
    active: HashMap<String, Active>,
    settling: HashMap<PathBuf, Instant>,
    refused: HashSet<PathBuf>,
    paused: bool,
    stopping: Option<Instant>,
    spool_missing: bool,
    held_until: Option<Instant>,
    rescan_every: Duration,
    next_rescan: Instant,
    next_status: Instant,
    next_watchdog: Option<Instant>,
    last_status_line: String,
    ready_sent: bool,
    queue: Window,
    /// The hook thread's job channel and stop flag, when a hook is configured.
    hooks: Option<(Sender<String>, Arc<AtomicBool>)>,
    /// Files whose hook is running (`None`) or waiting to retry (due, failures so far).
    hook_waiting: HashMap<String, (Option<Instant>, u32)>,
    /// A full scan must run at the next tick (start, events, refill, reload, unreadable files).
    force_scan: bool,
    last_status_write: Instant,
    watch_ok: bool,
    last_scan_dir_mtime: Option<SystemTime>,
    started: SystemTime,
    bytes_sent: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
    totals: Totals,
    recent_failed: VecDeque<FailedFile>,
    /// Files that were in the spool before a state reset and were uploaded again.
    totals_reuploaded: u64,
    /// Files deleted after their upload whose records wait for a sync of their directory.
    deleted: Vec<String>,
}

impl<'p, 'a> Main<'p, 'a> {
    fn new(
        parts: &'p Parts<'a>,
        settings: DaemonSettings,
        interrupt: Arc<AtomicBool>,
        jobs: Sender<Job>,
        bytes_sent: Arc<AtomicU64>,
        retries: Arc<AtomicU64>,
    ) -> Self {
        let now = parts.clock.now();
        let rescan_every = settings.rescan_interval;
        Self {
            parts,
            settings,
            interrupt,
            jobs,
            active: HashMap::new(),
            settling: HashMap::new(),
            refused: HashSet::new(),
            paused: false,
            stopping: None,
            spool_missing: false,
            held_until: None,
            rescan_every,
            next_rescan: now,
            next_status: now,
            next_watchdog: parts.watchdog.map(|_| now),
            last_status_line: String::new(),
            ready_sent: false,
            queue: Window::new(QUEUE_WINDOW),
            hooks: None,
            hook_waiting: HashMap::new(),
            force_scan: true,
            last_status_write: now,
            watch_ok: true,
            last_scan_dir_mtime: None,
            started: parts.clock.wall(),
            bytes_sent,
            retries,
            totals: Totals::default(),
            recent_failed: VecDeque::new(),
            totals_reuploaded: 0,
            deleted: Vec::new(),
        }
    }

    fn run(&mut self, events: &Receiver<Event>) -> Result<()> {
        self.paused = self.parts.state_dir.join(PAUSE_MARKER).exists();
        if self.paused {
            log::info!("uploads are paused (`ferry resume` resumes them)");
        }
        self.interrupt.store(self.paused, Ordering::Relaxed);
        log::info!(
            "watching {} -> {} (after upload: {:?}, {} at once)",
            self.settings.spool.dir.display(),
            url::redact(&self.parts.upload.endpoint),
            self.settings.after_upload,
            self.settings.concurrency
        );
        loop {
            self.survive(|m| m.tick())?;
            if self.stopping.is_some() && self.active.is_empty() {
                break;
            }
            if self
                .stopping
                .is_some_and(|t| self.parts.clock.now() >= t + STOP_DEADLINE)
            {
                log::warn!("{} uploads did not stop in time; exiting anyway (nothing is lost: they resume on the next start)", self.active.len());
                self.write_status("stopped");
                self.parts.notifier.send("STATUS=stopped");
                // A worker may sit in a read for up to the idle timeout; waiting for it would
                // break the promise to stop within 5 s. Every checkpoint is already on disk.
                std::process::exit(0);
            }
            let wait = self
                .next_due()
                .saturating_duration_since(self.parts.clock.now());
            match events.recv_timeout(wait) {
                Ok(ev) => self.survive(|m| m.handle(ev))?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(ev) = events.try_recv() {
                self.survive(|m| m.handle(ev))?;
            }
        }
        self.write_status("stopped");
        self.parts.notifier.send("STATUS=stopped");
        log::info!("stopped");
        Ok(())
    }

    /// Runs `f`; an error ends the daemon. A state-store failure (a full disk, a failed
    /// sync) first stops the uploads in flight: a store that cannot make a record durable
    /// must not let data go out on a URL a restart would not know (a second upload).
    fn survive(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let result = f(self);
        if let Err(Error::State { .. }) = &result {
            log::error!("uploads stop: no data is sent while the state cannot be written; ferry exits (status 1) and its service manager starts it again");
            self.interrupt.store(true, Ordering::Relaxed);
            self.write_status("stopped: the state store failed");
            self.parts
                .notifier
                .send("STATUS=stopped: the state store failed");
        }
        result
    }

    /// Everything that is due now: rescans, settled files, dispatch, status, watchdog.
    fn tick(&mut self) -> Result<()> {
        let now = self.parts.clock.now();
        if now >= self.next_rescan && self.stopping.is_none() {
            self.rescan()?;
        }
        let settled: Vec<PathBuf> = self
            .settling
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in settled {
            self.settling.remove(&p);
            self.consider(&p, false)?;
        }
        self.dispatch()?;
        if self.stopping.is_none() {
            let due: Vec<String> = self
                .hook_waiting
                .iter()
                .filter(|(_, (d, _))| d.is_some_and(|d| d <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in due {
                self.start_hook(&key);
            }
        }
        if now >= self.next_status {
            let state = self.state_name();
            self.write_status(state);
        }
        if let (Some(due), Some(every)) = (self.next_watchdog, self.parts.watchdog) {
            if now >= due {
                self.parts.notifier.send("WATCHDOG=1");
                self.next_watchdog = Some(now + every / 2);
            }
        }
        Ok(())
    }

    fn next_due(&self) -> Instant {
        let mut due = self.next_rescan.min(self.next_status);
        if let Some(w) = self.next_watchdog {
            due = due.min(w);
        }
        if let Some(s) = self.settling.values().min() {
            due = due.min(*s);
        }
        if let Some(t) = self.stopping {
            due = due.min(t + STOP_DEADLINE);
        }
        if let Some(t) = self.held_until {
            due = due.min(t);
        }
        if let Some(h) = self.hook_waiting.values().filter_map(|(d, _)| *d).min() {
            due = due.min(h);
        }
        due
    }

    fn handle(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Written(path) => {
                if self.stopping.is_none() {
                    self.consider(&path, true)?;
                }
            }
            Event::Created(path) => {
                if self.stopping.is_none() {
                    self.consider(&path, false)?;
                }
            }
            Event::Rescan => {
                self.force_scan = true;
                self.next_rescan = self.parts.clock.now();
            }
            Event::WatchUnavailable => {
                self.watch_ok = false;
                self.rescan_every = self.rescan_every.min(RESCAN_WITHOUT_WATCH);
                self.next_rescan = self.parts.clock.now();
            }
            Event::Control => self.check_pause(),
            Event::Signal(sig) => self.signal(sig),
            Event::Finished(key, result) => self.finished(&key, result)?,
            Event::HookFinished(key, result) => self.hook_finished(&key, result),
        }
        Ok(())
    }

    fn signal(&mut self, sig: i32) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match sig {
            SIGTERM | SIGINT if self.stopping.is_none() => {
                log::info!("stopping: saving state and ending uploads");
                self.stopping = Some(self.parts.clock.now());
                self.interrupt.store(true, Ordering::Relaxed);
                if let Some((_, stop)) = &self.hooks {
                    stop.store(true, Ordering::Relaxed);
                }
                self.parts.notifier.send("STOPPING=1\nSTATUS=stopping");
                self.write_status("stopping");
            }
            SIGHUP => self.reload(),
            _ => {}
        }
    }

    fn reload(&mut self) {
        match (self.parts.reload)() {
            Ok(new) => {
                if new.concurrency != self.settings.concurrency
                    || new.rate_limit_bytes_per_sec != self.settings.rate_limit_bytes_per_sec
                {
                    log::warn!("reloaded; daemon.concurrency and daemon.rate_limit take effect after a restart");
                }
                let concurrency = self.settings.concurrency;
                self.settings = DaemonSettings { concurrency, ..new };
                self.rescan_every = self.settings.rescan_interval;
                self.force_scan = true;
                self.next_rescan = self.parts.clock.now();
                log::info!("configuration reloaded ([server], [upload] and [retry] changes need a restart)");
            }
            Err(e) => log::error!("reload refused, keeping the running configuration: {e}"),
        }
    }

    fn check_pause(&mut self) {
        let paused = self.parts.state_dir.join(PAUSE_MARKER).exists();
        if paused != self.paused {
            self.paused = paused;
            log::info!(
                "{}",
                if paused {
                    "paused: uploads stop now and resume from where they are"
                } else {
                    "resumed"
                }
            );
            if self.stopping.is_none() {
                self.interrupt.store(paused, Ordering::Relaxed);
            }
            self.status_soon();
        }
    }

    fn state_name(&self) -> &'static str {
        if self.stopping.is_some() {
            "stopping"
        } else if self.spool_missing {
            "waiting for the spool directory"
        } else if self.paused {
            "paused"
        } else {
            "running"
        }
    }

    /// Lists the whole spool: queues ready files, forgets records of files that are gone.
    fn rescan(&mut self) -> Result<()> {
        self.next_rescan = self.parts.clock.now() + self.rescan_every;
        // With inotify working, a scan of an unchanged spool finds nothing new: skip it.
        let dir_mtime = std::fs::metadata(&self.settings.spool.dir)
            .and_then(|m| m.modified())
            .ok();
        let unchanged = dir_mtime.is_some() && dir_mtime == self.last_scan_dir_mtime;
        if !self.force_scan && self.watch_ok && !self.settings.spool.recursive && unchanged {
            return Ok(());
        }
        self.force_scan = false;
        self.last_scan_dir_mtime = dir_mtime;
        self.queue.begin_scan();
        let rules = self.settings.spool.clone();
        let mut first_error = None;
        let walked = spool::walk(
            &rules,
            &mut |e| {
                if first_error.is_none() {
                    first_error = self.consider_entry(e, false, true).err();
                }
            },
            &mut |p, e| log::warn!("{}: cannot read: {e}", p.display()),
        );
        if let Some(e) = first_error {
            return Err(e);
        }
        if let Err(e) = walked {
            if !self.spool_missing {
                log::error!(
                    "spool directory {}: {e}; waiting for it (create it or fix spool.dir)",
                    self.settings.spool.dir.display()
                );
            }
            self.spool_missing = true;
            self.next_rescan = self.parts.clock.now()
                + RESCAN_WITHOUT_WATCH
                    .max(Duration::from_secs(5))
                    .min(self.rescan_every);
            self.announce_ready();
            return Ok(());
        }
        if self.spool_missing {
            log::info!(
                "spool directory {} is there now",
                self.settings.spool.dir.display()
            );
            self.spool_missing = false;
        }
        self.forget_vanished()?;
        self.announce_ready();
        Ok(())
    }

    fn announce_ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            self.parts
                .notifier
                .send(&format!("READY=1\nSTATUS={}", self.status_line()));
        }
    }

    /// Drops the Complete records of the files deleted since the last call, after one sync of
    /// their directories: a record goes only when the deletion it stands for is durable, so a
    /// cut that undoes a deletion finds the record and deletes the file again. Called at every
    /// scan and every [`FORGET_BATCH`] deletions, which bounds the records kept meanwhile.
    fn forget_deleted(&mut self) -> Result<()> {
        if !sync_parents(self.deleted.iter().map(String::as_str)) {
            return Ok(());
        }
        for key in std::mem::take(&mut self.deleted) {
            self.parts.store.remove(&key)?;
        }
        Ok(())
    }

    /// Drops records of files that left the spool while not being uploaded. Their directories
    /// are synced first, as in [`Self::forget_deleted`]: a record goes only when the file's
    /// absence is durable.
    fn forget_vanished(&mut self) -> Result<()> {
        self.forget_deleted()?;
        let vanished: Vec<_> = self
            .parts
            .store
            .records()?
            .into_iter()
            .filter(|rec| {
                !self.active.contains_key(&rec.path)
                    && Path::new(&rec.path).symlink_metadata().is_err()
            })
            .collect();
        if !sync_parents(vanished.iter().map(|rec| rec.path.as_str())) {
            return Ok(());
        }
        for rec in vanished {
            if rec.state == RecordState::Uploading {
                log::info!(
                    "{}: vanished before its upload finished; forgotten",
                    rec.path
                );
            }
            self.parts.store.remove(&rec.path)?;
            self.unqueue(&rec.path)?;
        }
        Ok(())
    }

    /// Looks at one spool path; `written` when a writer just closed or renamed it.
    fn consider(&mut self, path: &Path, written: bool) -> Result<()> {
        match spool::stat(path) {
            Ok(Some(e)) => self.consider_entry(e, written, false),
            Ok(None) => {
                self.settling.remove(path);
                match record_key(path) {
                    Ok(key) if !self.active.contains_key(&key) => self.unqueue(&key),
                    _ => Ok(()),
                }
            }
            Err(e) => {
                log::warn!("{}: cannot look at it: {e}", path.display());
                Ok(())
            }
        }
    }

    fn consider_entry(&mut self, entry: spool::Entry, written: bool, by_scan: bool) -> Result<()> {
        let path = entry.path.clone();
        let path = path.as_path();
        let Ok(key) = record_key(path) else {
            return Ok(());
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match spool::judge(
            &name,
            entry.kind,
            entry.mtime(),
            self.parts.clock.wall(),
            &self.settings.spool,
        ) {
            Verdict::Ignored => Ok(()),
            Verdict::Refused(why) => {
                if self.refused.len() < MAX_REFUSED_REMEMBERED
                    && self.refused.insert(path.to_path_buf())
                {
                    log::warn!("{}: {why}; not uploaded", path.display());
                }
                Ok(())
            }
            Verdict::NotYet(d) if !written => {
                self.settling
                    .insert(path.to_path_buf(), self.parts.clock.now() + d);
                Ok(())
            }
            Verdict::NotYet(_) | Verdict::Ready => self.ready(path, &key, entry.identity, by_scan),
        }
    }

    fn ready(
        &mut self,
        path: &Path,
        key: &str,
        identity: crate::source::Identity,
        by_scan: bool,
    ) -> Result<()> {
        self.settling.remove(path);
        if self.active.contains_key(key) {
            return Ok(());
        }
        let store = self.parts.store;
        if let Some(rec) = store.get(key)? {
            if rec.state == RecordState::Complete && rec.identity == identity {
                // Uploaded before a crash or restart: hook and action not yet done (or kept).
                self.uploaded(path, key, rec.hook.done);
                return Ok(());
            }
        }
        if let Some(f) = store.get_failed(key)? {
            if f.identity == identity {
                return Ok(());
            }
            store.remove_failed(key)?;
        }
        self.queue.offer(key, spool::mtime_of(&identity), by_scan);
        Ok(())
    }

    /// Hands the oldest queued files to idle workers.
    fn dispatch(&mut self) -> Result<()> {
        let now = self.parts.clock.now();
        if self.paused || self.stopping.is_some() || self.held_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.held_until = None;
        while self.active.len() < self.settings.concurrency {
            let Some(key) = self.queue.pop_oldest() else {
                if self.queue.needs_refill() && self.next_rescan > now {
                    self.next_rescan = now;
                    self.force_scan = true;
                }
                break;
            };
            if self.active.contains_key(&key) {
                continue;
            }
            let progress = Arc::new(Progress::default());
            let info = Arc::new(Mutex::new(JobInfo::default()));
            let job = Job {
                key: key.clone(),
                progress: progress.clone(),
                info: info.clone(),
            };
            if self.jobs.send(job).is_err() {
                return Err(Error::config("upload threads ended unexpectedly"));
            }
            self.active.insert(
                key,
                Active {
                    progress,
                    info,
                    rate: (now, 0, 0.0),
                },
            );
            self.status_soon();
        }
        Ok(())
    }

    fn finished(&mut self, key: &str, result: JobResult) -> Result<()> {
        self.active.remove(key);
        self.status_soon();
        let path = PathBuf::from(key);
        match result {
            JobResult::Done(c) => {
                self.totals.files_done += 1;
                if !c.already
                    && self.parts.store.damage().reset.is_some()
                    && self.predates_start(&path)
                {
                    self.totals_reuploaded += 1;
                }
                self.totals.last_success_unix = Some(unix(self.parts.clock.wall()));
                let media = c
                    .media_id()
                    .map_or(String::new(), |m| format!(", media id {m}"));
                log::info!(
                    "{}: uploaded, {} bytes, {}{media}",
                    path.display(),
                    c.length,
                    url::redact(&c.url)
                );
                self.uploaded(&path, key, false);
            }
            JobResult::Interrupted => {}
            JobResult::Failed(Error::Interrupted) => {}
            JobResult::Failed(e @ Error::State { .. }) => return Err(e),
            JobResult::Failed(e @ Error::Source { .. }) => self.source_failed(&path, key, e)?,
            JobResult::Failed(e @ Error::Network { .. }) => {
                // TLS settings (or the server's certificate) are wrong: not this file's fault.
                // It stays in the spool; uploads wait, then try again.
                log::error!("{e}; uploads wait {} s", LINK_TROUBLE_PAUSE.as_secs());
                self.hold_uploads(LINK_TROUBLE_PAUSE);
            }
            JobResult::Failed(e) => {
                let status = match &e {
                    Error::Server { status, .. } => Some(*status),
                    _ => None,
                };
                self.fail(&path, key, status, &e.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether the file at `path` was last written before this daemon started.
    fn predates_start(&self, path: &Path) -> bool {
        spool::stat(path)
            .ok()
            .flatten()
            .is_some_and(|e| spool::mtime_of(&e.identity) < self.started)
    }

    /// The file vanished, changed or cannot be read.
    fn source_failed(&mut self, path: &Path, key: &str, e: Error) -> Result<()> {
        let store = self.parts.store;
        match spool::stat(path) {
            Ok(None) => {
                log::info!("{}: vanished; forgotten", path.display());
                self.unqueue(key)?;
                store.remove(key)?;
                Ok(())
            }
            Ok(Some(entry)) if entry.kind == spool::Kind::File => {
                self.unqueue(key)?;
                if std::fs::File::open(path).is_ok() {
                    // It changed (again): let it settle, then it is queued as new content.
                    log::warn!("{e}; waiting for it to settle");
                    let due = self.parts.clock.now() + self.settings.spool.settle;
                    self.settling.insert(path.to_path_buf(), due);
                } else {
                    // Unreadable: an operator can fix permissions without touching the
                    // content, so this is no permanent failure; the next scan tries again.
                    log::warn!("{e}; tried again at the next scan");
                    self.force_scan = true;
                }
                Ok(())
            }
            Ok(Some(_)) => {
                // Replaced by a link, FIFO or directory: the next look refuses it.
                self.unqueue(key)?;
                Ok(())
            }
            Err(_) => self.fail(path, key, None, &e.to_string()),
        }
    }

    /// A permanent failure: move the file aside with a sidecar, or remember it in place.
    fn fail(&mut self, path: &Path, key: &str, status: Option<u16>, message: &str) -> Result<()> {
        log::error!("{message}");
        self.totals.files_failed += 1;
        let store = self.parts.store;
        let now = unix(self.parts.clock.wall());
        let mut moved_to = None;
        if let Some(dir) = &self.settings.failed_dir {
            let sidecar = serde_json::json!({ "path": key, "status": status, "message": message, "failed_unix": now });
            let write_sidecar = |dest: &Path| {
                durable::write_atomic(&sidecar_path(dest), sidecar.to_string().as_bytes())
            };
            match move_into(path, dir, &write_sidecar) {
                Ok(dest) => {
                    moved_to = Some(dest.display().to_string());
                    store.remove(key)?;
                }
                Err(e) => log::error!(
                    "{}: cannot move to {}: {e}; kept in place",
                    path.display(),
                    dir.display()
                ),
            }
        }
        if moved_to.is_none() {
            if let Ok(Some(entry)) = spool::stat(path) {
                let rec = FailedRecord {
                    path: key.to_string(),
                    identity: entry.identity,
                    status,
                    message: message.to_string(),
                    failed_unix: now,
                };
                store.put_failed(&rec)?;
            }
        }
        self.unqueue(key)?;
        self.recent_failed.push_front(FailedFile {
            path: key.to_string(),
            status,
            message: message.to_string(),
            failed_unix: now,
            moved_to,
        });
        self.recent_failed.truncate(MAX_RECENT_FAILED);
        Ok(())
    }

    /// The server holds the whole file: run the hook (if any, and not yet done), then the
    /// after-upload action.
    fn uploaded(&mut self, path: &Path, key: &str, hook_done: bool) {
        match &self.hooks {
            Some(_) if !hook_done => {
                if !self.hook_waiting.contains_key(key) {
                    self.start_hook(key);
                }
            }
            _ => {
                if !(hook_done && self.settings.after_upload == AfterUpload::Keep) {
                    self.after_upload(path, key);
                }
            }
        }
    }

    fn start_hook(&mut self, key: &str) {
        if let Some((tx, _)) = &self.hooks {
            if tx.send(key.to_string()).is_ok() {
                let failures = self.hook_waiting.get(key).map_or(0, |w| w.1);
                self.hook_waiting.insert(key.to_string(), (None, failures));
            }
        }
    }

    fn hook_finished(&mut self, key: &str, result: std::result::Result<bool, String>) {
        let path = PathBuf::from(key);
        match result {
            Ok(ran) => {
                if ran {
                    log::info!("{}: hook done", path.display());
                }
                self.hook_waiting.remove(key);
                self.after_upload(&path, key);
            }
            Err(e) => {
                let failures = self.hook_waiting.get(key).map_or(0, |w| w.1) + 1;
                let delay = hook::retry_delay(failures);
                log::warn!(
                    "{}: hook failed ({e}); trying again in {} s",
                    path.display(),
                    delay.as_secs()
                );
                self.hook_waiting.insert(
                    key.to_string(),
                    (Some(self.parts.clock.now() + delay), failures),
                );
            }
        }
    }

    /// Deletes, moves or keeps a file the server holds completely (invariant 1 holds: the
    /// record says Complete only after the server confirmed offset == length).
    fn after_upload(&mut self, path: &Path, key: &str) {
        let store = self.parts.store;
        let done = match &self.settings.after_upload {
            AfterUpload::Keep => Ok(()),
            // The Complete record stays until the directory is synced (`forget_deleted`): one
            // sync for a batch of deleted files.
            AfterUpload::Delete => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => {
                    self.deleted.push(key.to_string());
                    Ok(())
                }
            },
            AfterUpload::Move(dir) => move_into(path, dir, &|_| Ok(())).map(|_| ()),
        };
        let result = done.map_err(Error::from_io(path)).and_then(|()| {
            // A move synced both directories: its record can go now.
            if matches!(self.settings.after_upload, AfterUpload::Move(_)) {
                store.remove(key)?;
            }
            if self.deleted.len() >= FORGET_BATCH {
                self.forget_deleted()?;
            }
            self.unqueue(key)
        });
        if let Err(e) = result {
            // The record stays Complete: a scan soon tries the action again, never the upload.
            // It must be forced: a failed delete or move leaves the spool unchanged, and a scan
            // of an unchanged spool is skipped.
            log::error!(
                "{}: uploaded, but the after-upload action failed: {e}; tried again in {} s",
                path.display(),
                AFTER_UPLOAD_RETRY.as_secs()
            );
            self.force_scan = true;
            let soon = self.parts.clock.now() + AFTER_UPLOAD_RETRY;
            self.next_rescan = self.next_rescan.min(soon);
        }
    }

    /// Hands out no files for `pause`; then a scan finds the held-back ones again.
    fn hold_uploads(&mut self, pause: Duration) {
        let until = self.parts.clock.now() + pause;
        self.held_until = Some(until);
        self.force_scan = true;
        self.next_rescan = self.next_rescan.min(until);
    }

    /// Takes `key` out of the queue.
    fn unqueue(&mut self, key: &str) -> Result<()> {
        self.queue.remove(key);
        Ok(())
    }

    fn status_line(&self) -> String {
        format!(
            "{}: {} queued, {} active, {} done, {} failed",
            self.state_name(),
            self.queue.waiting(),
            self.active.len(),
            self.totals.files_done,
            self.totals.files_failed
        )
    }

    /// Asks for a status write as soon as the last one is a second old (not per file: a
    /// spool of small files would rewrite it hundreds of times a second).
    fn status_soon(&mut self) {
        let soon = self.last_status_write + STATUS_BUSY;
        self.next_status = self.next_status.min(soon.max(self.parts.clock.now()));
    }

    fn write_status(&mut self, state: &str) {
        let now = self.parts.clock.now();
        self.last_status_write = now;
        self.next_status = now
            + if self.active.is_empty() {
                STATUS_IDLE
            } else {
                STATUS_BUSY
            };
        let line = self.status_line();
        if line != self.last_status_line && self.ready_sent {
            self.parts.notifier.send(&format!("STATUS={line}"));
            self.last_status_line = line;
        }
        let snap = self.snapshot(state, now);
        let state_file = self.parts.state_dir.join(status::SNAPSHOT_FILE);
        let json = serde_json::to_vec_pretty(&snap).unwrap_or_default();
        if let Err(e) = durable::replace(&state_file, &json) {
            log::debug!("{}: cannot write: {e}", state_file.display());
        }
        if let Some(m) = &self.settings.metrics_file {
            if let Err(e) = durable::replace(m, status::render_metrics(&snap).as_bytes()) {
                log::warn!("{}: cannot write metrics: {e}", m.display());
            }
        }
    }

    fn state_damage(&self) -> status::StateDamage {
        let d = self.parts.store.damage();
        status::StateDamage {
            reset: d.reset.map(|r| match r.moved_to {
                Some(p) => format!("{}; kept in {}", r.problem, p.display()),
                None => r.problem,
            }),
            records: d.records,
            reuploaded: self.totals_reuploaded,
        }
    }

    fn snapshot(&mut self, state: &str, now: Instant) -> Snapshot {
        let mut active = Vec::new();
        for (path, a) in &mut self.active {
            let (size, position) = a.progress.position_and_total();
            let dt = now.saturating_duration_since(a.rate.0).as_secs_f64();
            if dt >= 0.5 {
                let sample = position.saturating_sub(a.rate.1) as f64 / dt;
                a.rate = (
                    now,
                    position,
                    if a.rate.2 == 0.0 {
                        sample
                    } else {
                        0.7 * a.rate.2 + 0.3 * sample
                    },
                );
            }
            let info = a.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
            active.push(ActiveFile {
                path: path.clone(),
                size,
                position,
                bytes_per_sec: a.rate.2,
                attempts: info.attempts,
                next_retry_unix: info.next_retry.map(unix),
                last_error: info.last_error,
            });
        }
        let mut failed: Vec<FailedFile> = self.recent_failed.iter().cloned().collect();
        if let Ok(kept) = self.parts.store.failed() {
            let shown: HashSet<String> = failed.iter().map(|f| f.path.clone()).collect();
            for f in kept
                .into_iter()
                .filter(|f| !shown.contains(&f.path))
                .take(MAX_RECENT_FAILED)
            {
                failed.push(FailedFile {
                    path: f.path,
                    status: f.status,
                    message: f.message,
                    failed_unix: f.failed_unix,
                    moved_to: None,
                });
            }
        }
        let totals = Totals {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            ..self.totals.clone()
        };
        Snapshot {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: unix(self.started),
            updated_unix: unix(self.parts.clock.wall()),
            state: state.to_string(),
            spool: self.settings.spool.dir.display().to_string(),
            endpoint: url::redact(&self.parts.upload.endpoint).to_string(),
            queued: self.queue.waiting(),
            active,
            failed,
            state_damage: self.state_damage(),
            totals,
        }
    }
}

/// Moves `path` into `dir` (created if needed) without overwriting; `before` runs with the
/// destination just before the rename (to put a sidecar there first). Returns the new path.
fn move_into(
    path: &Path,
    dir: &Path,
    before: &dyn Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    durable::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut dest = dir.join(name);
    let mut n = 1;
    while dest.symlink_metadata().is_ok() {
        dest = dir.join(format!("{}.{n}", name.to_string_lossy()));
        n += 1;
    }
    before(&dest)?;
    // Target directory synced, then the source: after a cut the file is in the target, or
    // still in the spool with its Complete record (moved again), never in neither.
    durable::rename(path, &dest).map_err(|e| {
        if e.raw_os_error() == Some(18) {
            std::io::Error::other(format!(
                "{} is on another filesystem than the spool; choose a directory on the same one",
                dir.display()
            ))
        } else {
            e
        }
    })?;
    Ok(dest)
}

/// Syncs the directories holding `paths`, each once; false (and a warning) when one fails:
/// the records of files gone from them are then kept until the next scan.
fn sync_parents<'k>(paths: impl Iterator<Item = &'k str>) -> bool {
    let dirs: HashSet<&Path> = paths.filter_map(|p| Path::new(p).parent()).collect();
    for dir in dirs {
        if let Err(e) = durable::sync_dir(dir) {
            log::warn!(
                "{}: cannot sync: {e}; the records of files gone from it are kept until the next scan",
                dir.display()
            );
            return false;
        }
    }
    true
}

fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".ferry-error.json");
    file.with_file_name(name)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
