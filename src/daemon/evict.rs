//! The spool's limits in the daemon: measuring what waits, warning, and evicting (the shell of
//! [`crate::spool_limits`]).
//!
//! Key idea: memory that does not grow with the spool. A check walks the spool (`lstat` of
//! each file, as a scan does) and keeps only the [`CHECK_LISTED`] oldest waiting files and the
//! totals of the rest (a file whose record is complete or failed for the same content, or
//! whose hook or action is left, is not waiting); it reads the file system's free space once
//! (`fstatvfs`) and asks the pure planner. Remembering every file the scans saw instead cost
//! about 300 bytes a file: 23 MiB for a spool of 60,000. A check runs a few seconds after a
//! full scan or a file's arrival and at least every minute (the first one at once); on a spool
//! so big that its walk takes long, checks are spaced to 50 times the walk's duration. A check
//! that is due when a scan begins collects during the scan's walk instead of walking again
//! (the first start-up of a 100,000-file spool walked it twice: 0.47 s, then 0.44 s here).
//! Eviction deletes the file (its directory synced), then drops its record durably, tells the
//! scheduler the file is gone, and hands its upload URL to the terminator thread (a DELETE at
//! best effort, never on the main thread).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::durable;
use crate::error::{Error, Result};
use crate::progress::human_bytes;
use crate::source::Identity;
use crate::spool;
use crate::spool_limits::{plan, FsSpace, Limit, OldestWaiting, OnFull, SpoolLimits, Waiting};
use crate::status::{human_age, SpoolUsage};
use crate::store::{FileKey, RecordState};
use crate::transport::Transport;
use crate::upload::Uploader;

use super::schedule::Input;
use super::Main;

/// A file that arrives triggers a check at most this long after the last one.
const ARRIVAL_CHECK: Duration = Duration::from_secs(3);
/// Checks run at least this often (free space changes without any event of ours).
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// A check waits at least this many times as long as the last check's walk took, so that
/// checking a huge spool on a slow board costs at most about 2 % of a core.
const CHECK_SPACING: u32 = 50;
/// The oldest waiting files a check lists for the planner (eviction takes the oldest first);
/// when it evicted them all and a limit is still exceeded, the next check follows soon.
const CHECK_LISTED: usize = 1024;

/// What the daemon knows of the spool's files and limits between checks.
pub(super) struct SpoolWatch<'a> {
    last_check: Option<Instant>,
    /// How long the last check's walk of the spool took.
    last_walk: Duration,
    /// A file arrived since the last check.
    arrived: bool,
    /// The last check evicted what it listed and must go on with the files it did not list.
    more: bool,
    /// The limits last warned about (a WARN once per episode, not per check).
    warned: Vec<Limit>,
    usage: SpoolUsage,
    /// Ends evicted files' uploads on the server; `None` in tests of the core.
    pub(super) terminator: Option<Terminator<'a>>,
}

impl SpoolWatch<'_> {
    /// No check made yet: the first one is due at once.
    pub(super) fn new() -> Self {
        Self {
            last_check: None,
            last_walk: Duration::ZERO,
            arrived: false,
            more: false,
            warned: Vec::new(),
            usage: SpoolUsage::default(),
            terminator: None,
        }
    }

    /// An event (not a scan: a check follows each scan) found a file ready: an arrival, so a
    /// check follows within seconds. One still being written is not yet: its close or rename is.
    pub(super) fn saw(&mut self, by_scan: bool, ready: bool) {
        if ready && !by_scan {
            self.arrived = true;
        }
    }

    /// A full scan ended: a check is due as soon as one after an arrival would be.
    pub(super) fn scanned(&mut self) {
        self.arrived = true;
    }

    /// What the status shows.
    pub(super) fn usage(&self) -> SpoolUsage {
        self.usage.clone()
    }

    /// The least time between checks that keeps their walks at about 2 % of a core.
    fn spacing(&self) -> Duration {
        self.last_walk.saturating_mul(CHECK_SPACING)
    }

    /// When the next check is due (`now` if none was made yet).
    fn due(&self, now: Instant) -> Instant {
        match self.last_check {
            None => now,
            Some(t) if self.more => t,
            Some(t) if self.arrived => t + ARRIVAL_CHECK.max(self.spacing()),
            Some(t) => t + CHECK_EVERY.max(self.spacing()),
        }
    }
}

impl Main<'_, '_> {
    /// When the spool's limits are next checked (`None` while stopping).
    pub(super) fn spool_check_due(&self) -> Option<Instant> {
        (self.stopping.is_none()).then(|| self.spool_watch.due(self.parts.clock.now()))
    }

    /// Checks the spool's limits if that is due.
    pub(super) fn check_spool_if_due(&mut self) -> Result<()> {
        if self.check_due_now() {
            self.check_spool()
        } else {
            Ok(())
        }
    }

    /// Whether a check is due now: a scan about to walk the spool then collects for it, so
    /// that one walk serves both.
    pub(super) fn check_due_now(&self) -> bool {
        self.spool_check_due()
            .is_some_and(|due| due <= self.parts.clock.now())
    }

    /// Measures the spool, warns about exceeded limits, and evicts when told to.
    pub(super) fn check_spool(&mut self) -> Result<()> {
        let began = self.parts.clock.now();
        if self.spool_missing || self.stopping.is_some() {
            self.checked(began);
            return Ok(());
        }
        match self.waiting_files(began)? {
            Some(walked) => self.check_walked(walked),
            // The spool is gone (the scan says so), or ferry is stopping.
            None => {
                self.checked(began);
                Ok(())
            }
        }
    }

    /// A check was made (or found nothing to measure) at `at`.
    fn checked(&mut self, at: Instant) {
        self.spool_watch.last_check = Some(at);
        self.spool_watch.arrived = false;
        self.spool_watch.more = false;
    }

    /// The check itself, on what a walk that began at `walked.began` found waiting: the
    /// check's own walk, or a scan's that collected for it.
    pub(super) fn check_walked(&mut self, walked: Walked) -> Result<()> {
        let now = walked.began;
        self.checked(now);
        let wall = self.parts.clock.wall();
        let limits = self.settings.limits.clone();
        let mut fs = fs_space(&self.settings.spool.dir);
        let Walked {
            mut waiting,
            unlisted_files,
            unlisted_bytes,
            unlisted_oldest,
            identities,
            began: _,
        } = walked;
        self.spool_watch.last_walk = self.parts.clock.now().saturating_duration_since(now);
        log::debug!(
            "spool check: {} waiting files walked in {} ms",
            waiting.len() as u64 + unlisted_files,
            self.spool_watch.last_walk.as_millis()
        );
        let plan = plan(&waiting, unlisted_bytes, fs, &limits, wall);
        let (mut freed, mut evicted) = (0, 0);
        for (key, limit) in &plan.evict {
            if let Some(i) = waiting.iter().position(|w| &w.key == key) {
                // Why, as things stand before this file goes (the deletions so far counted).
                let fs_now = fs.map(|f| FsSpace {
                    free: f.free.saturating_add(freed),
                    ..f
                });
                let totals = Totals::of(&waiting, unlisted_bytes, unlisted_oldest);
                let why = describe(*limit, &limits, totals, fs_now, wall);
                let file = waiting.remove(i);
                if self.evict(&file, identities.get(&file.key), &why, wall)? {
                    freed += file.size;
                    evicted += 1;
                } else {
                    waiting.insert(i, file);
                }
            }
        }
        if freed > 0 {
            fs = fs_space(&self.settings.spool.dir);
        }
        // Files still being written held eviction back: look again once they may have
        // settled (not a minute later), and warn only if that does not help.
        let settling = limits.on_full == OnFull::DeleteOldest
            && !plan.unmet.is_empty()
            && waiting
                .iter()
                .any(|w| w.busy && self.settling.contains_key(w.key.path()));
        // The listed files went (but for busy ones) and a limit is still exceeded: the next
        // check, at once, lists the next oldest.
        let more = limits.on_full == OnFull::DeleteOldest
            && !plan.unmet.is_empty()
            && unlisted_files > 0
            && evicted > 0;
        self.spool_watch.arrived |= settling;
        self.spool_watch.more = more;
        let totals = Totals::of(&waiting, unlisted_bytes, unlisted_oldest);
        self.report_unmet(&plan.unmet, &limits, totals, fs, wall, !settling && !more);
        let u = &mut self.spool_watch.usage;
        u.waiting_files = waiting.len() as u64 + unlisted_files;
        u.waiting_bytes = totals.bytes;
        u.oldest_waiting_unix = totals.oldest.map(super::unix);
        u.free_bytes = fs.map(|f| f.free);
        Ok(())
    }

    /// Walks the spool for the files waiting to be uploaded; `None` when it cannot be read or
    /// a stop was asked for meanwhile.
    fn waiting_files(&self, began: Instant) -> Result<Option<Walked>> {
        let rules = &self.settings.spool;
        let mut collect = Waiters::new(self.parts.clock.wall());
        let mut first_error = None;
        let mut cut_short = false;
        let stop = &self.parts.stop_requested;
        let mut visit = |e: spool::Entry| {
            if stop.load(SeqCst) {
                // SIGTERM: a check is not worth delaying the stop for.
                cut_short = true;
                return ControlFlow::Break(());
            }
            match self.collect_waiting(&mut collect, &e) {
                Ok(()) => ControlFlow::Continue(()),
                Err(err) => {
                    first_error = Some(err);
                    ControlFlow::Break(())
                }
            }
        };
        let walked = spool::walk(rules, &mut visit, &mut |_, _| {});
        if let Some(e) = first_error {
            return Err(e);
        }
        if walked.is_err() || cut_short {
            return Ok(None);
        }
        Ok(Some(collect.walked(began)))
    }

    /// Adds one entry of a walk to what a check collects: a waiting file is listed if it is
    /// among the oldest, counted otherwise.
    pub(super) fn collect_waiting(&self, into: &mut Waiters, e: &spool::Entry) -> Result<()> {
        if let Some(w) = self.waiting(e, into.wall)? {
            // Only the listed files' identities are kept.
            into.identities.insert(w.key.clone(), e.identity);
            if let Some(out) = into.oldest.add(w) {
                into.identities.remove(&out);
            }
        }
        Ok(())
    }

    /// The file as a waiting file, or `None` when it does not wait: not an upload candidate
    /// (ignored, refused), uploaded for this content (kept, or its action left), failed for
    /// good for this content, or finishing.
    fn waiting(&self, e: &spool::Entry, wall: SystemTime) -> Result<Option<Waiting<FileKey>>> {
        let store = self.parts.store;
        let path = e.path.as_path();
        if !matches!(
            self.verdict(e, wall),
            spool::Verdict::Ready | spool::Verdict::NotYet(_)
        ) {
            return Ok(None);
        }
        let Ok(key) = FileKey::for_path(path) else {
            return Ok(None);
        };
        if !self.in_spool(path) || self.core.is_finishing(&key) {
            return Ok(None);
        }
        if store
            .get(&key)?
            .is_some_and(|r| r.state == RecordState::Complete && r.identity == e.identity)
        {
            return Ok(None); // uploaded (kept, or its action is left): not waiting
        }
        if store
            .get_failed(&key)?
            .is_some_and(|f| f.identity == e.identity)
        {
            return Ok(None); // failed for good, kept in place: never uploaded
        }
        Ok(Some(Waiting {
            busy: self.core.busy(&key) || self.settling.contains_key(path),
            key,
            size: e.identity.size,
            mtime: spool::mtime_of(&e.identity),
        }))
    }

    /// Evicts one waiting file (`seen` as the check's walk saw it): false when it changed or
    /// went since (skipped).
    fn evict(
        &mut self,
        file: &Waiting<FileKey>,
        seen: Option<&Identity>,
        why: &str,
        wall: SystemTime,
    ) -> Result<bool> {
        let path = file.key.path().to_path_buf();
        match spool::stat(&path) {
            Ok(Some(e)) if Some(&e.identity) == seen => {}
            Ok(Some(_)) => {
                // Rewritten since it was seen: not the file the plan judged; the next check
                // looks again.
                self.spool_watch.arrived = true;
                return Ok(false);
            }
            _ => return Ok(false),
        }
        let record = self.parts.store.get(&file.key)?;
        if let Err(e) = durable::remove_file(&path) {
            log::warn!("{}: cannot evict it: {e}", path.display());
            return Ok(false);
        }
        if record.is_some() {
            self.parts.store.remove_durably(&file.key)?;
        }
        self.tell(Input::Gone(file.key.clone()))?;
        let u = &mut self.spool_watch.usage;
        u.evicted_files += 1;
        u.evicted_bytes += file.size;
        let age = wall.duration_since(file.mtime).unwrap_or(Duration::ZERO);
        log::warn!(
            "{}: evicted before upload ({}, {} old): {why} (spool.on_full = delete-oldest)",
            path.display(),
            human_bytes(file.size),
            human_age(age.as_secs())
        );
        if let Some(rec) = record.filter(|r| r.state == RecordState::Uploading) {
            if let Some(t) = &self.spool_watch.terminator {
                t.send(Abandoned {
                    path: path.display().to_string(),
                    endpoint: rec.endpoint,
                    url: rec.upload_url,
                });
            }
        }
        self.status_soon();
        Ok(true)
    }

    /// Warns once per episode about limits that stay exceeded (unless `warn` is false: a
    /// check follows soon), and says when it ends.
    fn report_unmet(
        &mut self,
        unmet: &[Limit],
        limits: &SpoolLimits,
        totals: Totals,
        fs: Option<FsSpace>,
        wall: SystemTime,
        warn: bool,
    ) {
        let watch = &mut self.spool_watch;
        if unmet.is_empty() {
            if !watch.warned.is_empty() {
                log::info!("the spool is back under its limits");
            }
            watch.warned.clear();
            watch.usage.over_limit = None;
            return;
        }
        let what: Vec<String> = unmet
            .iter()
            .map(|l| describe(*l, limits, totals, fs, wall))
            .collect();
        let text = match limits.on_full {
            OnFull::Keep => format!(
                "{}; files are kept (spool.on_full = keep)",
                what.join("; ")
            ),
            OnFull::DeleteOldest => format!(
                "{}; what is left is being uploaded, written or finished (spool.on_full = delete-oldest)",
                what.join("; ")
            ),
        };
        watch.usage.over_limit = Some(text.clone());
        if !warn {
            return;
        }
        if unmet.iter().any(|l| !watch.warned.contains(l)) {
            log::warn!("spool over its limit: {text}");
        }
        watch.warned = unmet.to_vec();
    }
}

/// What a walk has found waiting so far (see [`Main::collect_waiting`]).
pub(super) struct Waiters {
    oldest: OldestWaiting<FileKey>,
    identities: HashMap<FileKey, Identity>,
    /// The wall clock the files' ages are judged by.
    wall: SystemTime,
}

impl Waiters {
    /// Nothing found yet; ages judged at `wall`.
    pub(super) fn new(wall: SystemTime) -> Self {
        Self {
            oldest: OldestWaiting::new(CHECK_LISTED),
            identities: HashMap::new(),
            wall,
        }
    }

    /// The walk, which began at `began`, has ended.
    pub(super) fn walked(self, began: Instant) -> Walked {
        let (unlisted_files, unlisted_bytes) =
            (self.oldest.unlisted_files, self.oldest.unlisted_bytes);
        let (waiting, unlisted_oldest) = self.oldest.into_listed();
        Walked {
            waiting,
            unlisted_files,
            unlisted_bytes,
            unlisted_oldest,
            identities: self.identities,
            began,
        }
    }
}

/// What a check's walk found waiting.
pub(super) struct Walked {
    /// The oldest waiting files, oldest first.
    waiting: Vec<Waiting<FileKey>>,
    /// The others (younger), only counted.
    unlisted_files: u64,
    unlisted_bytes: u64,
    unlisted_oldest: Option<SystemTime>,
    /// The listed files' identities as the walk saw them.
    identities: HashMap<FileKey, Identity>,
    /// When the walk began.
    began: Instant,
}

/// All waiting files' bytes and the oldest one's mtime.
#[derive(Debug, Clone, Copy)]
struct Totals {
    bytes: u64,
    oldest: Option<SystemTime>,
}

impl Totals {
    fn of(
        listed: &[Waiting<FileKey>],
        unlisted_bytes: u64,
        unlisted_oldest: Option<SystemTime>,
    ) -> Self {
        let listed_oldest = listed.iter().map(|w| w.mtime).min();
        Self {
            bytes: listed.iter().map(|w| w.size).sum::<u64>() + unlisted_bytes,
            oldest: match (listed_oldest, unlisted_oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Which limit is exceeded, in words, as things stand.
fn describe(
    limit: Limit,
    limits: &SpoolLimits,
    totals: Totals,
    fs: Option<FsSpace>,
    wall: SystemTime,
) -> String {
    match limit {
        Limit::MaxBytes => format!(
            "{}: {} waiting, above {}",
            limit.key(),
            human_bytes(totals.bytes),
            human_bytes(limits.max_bytes.unwrap_or(0))
        ),
        Limit::MinFree => {
            let (free, need) = fs
                .zip(limits.min_free)
                .map_or((0, 0), |(fs, m)| (fs.free, m.bytes(fs.total)));
            format!(
                "{}: {} free on the spool's file system, below {}",
                limit.key(),
                human_bytes(free),
                human_bytes(need)
            )
        }
        Limit::MaxAge => {
            let oldest = totals.oldest.unwrap_or(wall);
            format!(
                "{}: a waiting file is {} old, above {}",
                limit.key(),
                human_age(wall.duration_since(oldest).unwrap_or_default().as_secs()),
                human_age(limits.max_age.unwrap_or_default().as_secs())
            )
        }
    }
}

/// The spool's file system: free bytes for ferry and size (`None` when it cannot be read).
fn fs_space(dir: &Path) -> Option<FsSpace> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let st = rustix::fs::statvfs(dir.as_c_str()).ok()?;
    Some(FsSpace {
        free: st.f_bavail.saturating_mul(st.f_frsize),
        total: st.f_blocks.saturating_mul(st.f_frsize),
    })
}

/// An evicted file's upload, to terminate on the server.
pub(super) struct Abandoned {
    path: String,
    endpoint: String,
    url: String,
}

/// The thread that terminates evicted files' uploads, so that no DELETE waits on the main
/// thread. Dropped with the daemon's main state: a DELETE still running then has its
/// connection shut down, so a stop never waits out a timeout.
pub(super) struct Terminator<'a> {
    tx: Option<Sender<Abandoned>>,
    busy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    transport: &'a dyn Transport,
}

impl Terminator<'_> {
    fn send(&self, job: Abandoned) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }
}

impl Drop for Terminator<'_> {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        self.tx = None;
        if self.busy.load(SeqCst) {
            self.transport.shut_down();
        }
    }
}

/// Starts the terminator thread in `scope`.
pub(super) fn spawn_terminator<'scope, 'env, 'a>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    uploader: &'env Uploader<'a>,
    transport: &'a dyn Transport,
) -> Result<Terminator<'a>>
where
    'a: 'env,
{
    let (tx, rx) = std::sync::mpsc::channel::<Abandoned>();
    let busy = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (b, s) = (busy.clone(), stop.clone());
    std::thread::Builder::new()
        .name("terminate".into())
        .spawn_scoped(scope, move || {
            for job in rx {
                b.store(true, SeqCst);
                if s.load(SeqCst) {
                    b.store(false, SeqCst);
                    return;
                }
                terminate(uploader, &job);
                b.store(false, SeqCst);
            }
        })
        .map_err(|e| Error::Io {
            context: "cannot start the termination thread".into(),
            source: e,
        })?;
    Ok(Terminator {
        tx: Some(tx),
        busy,
        stop,
        transport,
    })
}

/// One DELETE, at best effort; none while uploads are held (pause, a closed policy, stop).
fn terminate(uploader: &Uploader, job: &Abandoned) {
    let url = crate::tus::url::redact(&job.url);
    if uploader.interrupt_flag().load(SeqCst) {
        log::info!(
            "{}: its upload {url} is left to expire on the server (uploads are held)",
            job.path
        );
        return;
    }
    match uploader.terminate_evicted(&job.endpoint, &job.url) {
        Ok(()) => log::info!("{}: terminated its upload {url}", job.path),
        Err(e) => log::info!(
            "{}: could not terminate its upload {url} ({e}); it expires on the server",
            job.path
        ),
    }
}
