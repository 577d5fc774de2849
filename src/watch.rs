//! Watching the spool with inotify, turned into daemon [`Event`]s.
//!
//! The watcher reports a file the moment its writer closes it or renames it into the spool,
//! so an idle daemon sleeps instead of polling. Anything it cannot account for (a queue
//! overflow, a new subdirectory, the spool disappearing) becomes a full rescan request.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::clock::Clock;
use crate::daemon::Event;
use crate::ratelimit::LIMIT_FILE;
use crate::spool::{self, Kind, SpoolRules};
use crate::status::PAUSE_MARKER;

/// How often a missing spool directory is looked for again.
const RETRY_MISSING: Duration = Duration::from_secs(2);
/// How long [`Watcher::watch`] waits for the watch to be in place before it returns anyway.
const SETUP_WAIT: Duration = Duration::from_secs(2);

/// Watches the spool that the daemon's settings name now; a reload that moves the spool
/// starts a new watcher thread and retires the old one.
pub(crate) struct Watcher {
    state_dir: PathBuf,
    clock: Arc<dyn Clock>,
    tx: Sender<Event>,
    /// Bumped per [`Watcher::watch`]: a watcher thread of an older generation ends at its
    /// next wake-up (its events until then name paths the daemon no longer takes).
    generation: Arc<AtomicU64>,
}

impl Watcher {
    /// A watcher that reports to `tx`; it watches nothing until [`Self::watch`].
    pub(crate) fn new(state_dir: PathBuf, clock: Arc<dyn Clock>, tx: Sender<Event>) -> Self {
        Self {
            state_dir,
            clock,
            tx,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Watches the spool `rules` describe (and the state dir's pause marker), instead of any
    /// spool watched before. Returns once the watch is in place (or found impossible for now),
    /// so that a scan begun after it misses nothing: the daemon's first scan then needs no
    /// second one (on a spool of 100,000 files each walk takes about half a second here).
    pub(crate) fn watch(&self, rules: SpoolRules) {
        let mine = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let current = Current {
            generation: self.generation.clone(),
            mine,
        };
        spool(
            rules,
            self.state_dir.clone(),
            self.clock.clone(),
            self.tx.clone(),
            current,
        );
    }
}

/// Whether a watcher thread is still the current one.
struct Current {
    generation: Arc<AtomicU64>,
    mine: u64,
}

impl Current {
    fn still(&self) -> bool {
        self.generation.load(Ordering::SeqCst) == self.mine
    }
}

/// Starts a spool watcher thread; without inotify it reports [`Event::WatchUnavailable`].
fn spool(
    rules: SpoolRules,
    state_dir: PathBuf,
    clock: Arc<dyn Clock>,
    tx: Sender<Event>,
    current: Current,
) {
    let (set_up, wait_set_up) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut set_up = Some(set_up);
            let result = watch_loop(
                &rules,
                &state_dir,
                clock.as_ref(),
                &tx,
                &current,
                &mut set_up,
            );
            if let Err(e) = result {
                log::warn!(
                    "cannot watch {} ({e}); falling back to frequent scans",
                    rules.dir.display()
                );
                let _ = tx.send(Event::WatchUnavailable);
            }
        });
    match spawned {
        // A message, or the thread's end (the sender dropped), or the wait's end.
        Ok(_) => drop(wait_set_up.recv_timeout(SETUP_WAIT)),
        Err(e) => log::warn!("cannot start the spool watcher: {e}"),
    }
}

fn spool_mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::CREATE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

fn watch_loop(
    rules: &SpoolRules,
    state_dir: &Path,
    clock: &dyn Clock,
    tx: &Sender<Event>,
    current: &Current,
    set_up: &mut Option<std::sync::mpsc::SyncSender<()>>,
) -> std::io::Result<()> {
    let mut ino = Inotify::init()?;
    let control = ino.watches().add(
        state_dir,
        WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM,
    )?;
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut dirs: HashMap<WatchDescriptor, PathBuf> = HashMap::new();
        while let Err(e) = add_tree(&mut ino, &rules.dir, rules, &mut dirs) {
            log::debug!("spool {} not watchable yet: {e}", rules.dir.display());
            // The daemon goes on (its scan reports the missing spool); the watch follows.
            tell_set_up(set_up);
            clock.sleep(RETRY_MISSING, &never);
            if !current.still() {
                return Ok(());
            }
        }
        if tx.send(Event::Rescan(clock.now())).is_err() {
            return Ok(());
        }
        tell_set_up(set_up);
        'events: loop {
            let events = ino.read_events_blocking(&mut buf)?;
            if !current.still() {
                return Ok(()); // a reload moved the spool: a newer watcher took over
            }
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    send(tx, Event::Rescan(clock.now()))?;
                    continue;
                }
                if ev.wd == control {
                    if ev.name == Some(OsStr::new(PAUSE_MARKER))
                        || ev.name == Some(OsStr::new(LIMIT_FILE))
                    {
                        send(tx, Event::Control)?;
                    }
                    continue;
                }
                let Some(dir) = dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                    && dir == rules.dir
                {
                    for wd in dirs.keys() {
                        let _ = ino.watches().remove(wd.clone());
                    }
                    break 'events; // the spool itself went away: wait for it again
                }
                let Some(name) = ev.name else { continue };
                let path = dir.join(name);
                if ev.mask.contains(EventMask::ISDIR) {
                    if rules.recursive
                        && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
                        && !rules.exclude.contains(&path)
                    {
                        let _ = add_tree(&mut ino, &path, rules, &mut dirs);
                        send(tx, Event::Rescan(clock.now()))?;
                    }
                } else if ev
                    .mask
                    .intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO)
                {
                    send(tx, Event::Written(path))?;
                } else if ev.mask.contains(EventMask::CREATE) {
                    // A file being written, a link or a FIFO: judged by the usual rules.
                    send(tx, Event::Created(path))?;
                }
            }
        }
    }
}

/// Lets [`Watcher::watch`] return (once: later calls do nothing).
fn tell_set_up(set_up: &mut Option<std::sync::mpsc::SyncSender<()>>) {
    if let Some(s) = set_up.take() {
        let _ = s.send(()); // the caller may have stopped waiting
    }
}

fn send(tx: &Sender<Event>, ev: Event) -> std::io::Result<()> {
    tx.send(ev)
        .map_err(|_| std::io::Error::other("daemon stopped"))
}

/// Watches `dir` and, when recursive, every subdirectory (never through links).
fn add_tree(
    ino: &mut Inotify,
    dir: &Path,
    rules: &SpoolRules,
    dirs: &mut HashMap<WatchDescriptor, PathBuf>,
) -> std::io::Result<()> {
    let wd = ino
        .watches()
        .add(dir, spool_mask() | WatchMask::DONT_FOLLOW)?;
    dirs.insert(wd, dir.to_path_buf());
    if !rules.recursive {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if let Ok(Some(e)) = spool::stat(&path) {
            if e.kind == Kind::Dir && !rules.exclude.contains(&path) {
                let _ = add_tree(ino, &path, rules, dirs);
            }
        }
    }
    Ok(())
}
