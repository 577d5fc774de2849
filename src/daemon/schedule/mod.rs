//! The daemon's scheduling decisions: which file runs its next upload step, and when. No
//! threads, no I/O, no real time: the shell feeds in what happened ([`Input`]) with the instant
//! it happened, runs the [`Action`]s that [`Schedule::poll`] hands out, and waits until
//! [`Schedule::next_due`].
//!
//! Key idea: a file's upload advances one HTTP exchange (a step) at a time, and between steps
//! the file waits here with a state and, when it backs off, a due instant. A backoff is never
//! a sleep in a worker, so one file's trouble does not hold up another; an interrupted file
//! keeps its place, so a resume continues it first.
//!
//! Three scopes of failure:
//! - the file's own (a 5xx or 423 on its upload URL): that file backs off, others go on;
//! - the link's (no answer at all): the link backs off with a short cap, one probe step at a
//!   time, no file is charged an attempt, and a network change probes at once;
//! - the endpoint's refusal to create uploads (404, 401, 403, 405 on POST): creations are held
//!   (one creation probes when the hold ends), uploads that have a URL go on, no file fails.
//!
//! File states: `Queued` (ready, not started in this run) → `Stepping` (a worker runs one
//! step) → `Ready` (started, waits for a worker) or `BackingOff` (until a due instant) → … →
//! done → `Finishing` (the hook, then the after-upload action, each retried until it
//! succeeds) → forgotten; or failed (the shell takes it from there and the core forgets it).
//! The after-upload action (delete or move) is only ever asked for a file whose upload
//! reported done for the content the core last heard of, after its hook succeeded.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::backoff::Jitter;
use crate::queue::Window;
use crate::store::FileKey;

mod finish;
mod pacing;

use finish::Finish;
pub(crate) use finish::AFTER_UPLOAD_RETRY;
pub(crate) use pacing::Pacing;

/// Started uploads that may wait between steps (open files, a few bytes each) beyond the
/// workers: past this, no new file starts until some end.
const STARTED_MAX_EXTRA: usize = 64;

/// Where a file the core knows stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileState {
    /// Ready to upload; not started in this run.
    Queued,
    /// A worker runs one step of it.
    Stepping,
    /// Started; waits for a worker to run its next step.
    Ready,
    /// Waits out its own backoff.
    BackingOff {
        /// When it may step again.
        until: Instant,
    },
    /// The server holds all of it: its hook or after-upload action runs (`retry_at: None`)
    /// or waits to be tried again.
    Finishing {
        /// Which of the two.
        stage: Stage,
        /// When a failed run is tried again.
        retry_at: Option<Instant>,
    },
}

/// What is left to do for a file the server holds completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The after-upload hook.
    Hook,
    /// The after-upload action (delete, move, keep).
    Action,
}

/// How one step of a file ended, as far as scheduling goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Step again.
    Continue,
    /// The file backs off for this long (its own failure).
    Wait(Duration),
    /// No answer from the server's host: the link backs off.
    LinkDown(String),
    /// The server answers, but not as the settings expect (TLS refused: a setting or the
    /// server's certificate; a plain-HTTP port at an `https://` URL): retrying cannot mend it,
    /// so every upload is held like a refused endpoint (the hold doubling from `hold_first` to
    /// `hold_max`), and the file is offered again as new. The text says why.
    LinkRefused(String),
    /// The endpoint refuses creations.
    EndpointRefused {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Pause or shutdown cut it: it keeps its place.
    Interrupted,
    /// The server holds all of it: the hook (if any), then the after-upload action.
    Done,
    /// The upload ended without completing (failed, or its source went): the core forgets
    /// the file.
    Ended,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// A full scan of the spool begins: the queue is filled again from scratch.
    BeginScan,
    /// A file is ready to upload; `has_url` when its record holds an upload URL.
    Ready {
        /// The file.
        key: FileKey,
        /// Its place in line (priority class, then age).
        rank: Rank,
        /// It resumes an upload (needs no creation).
        has_url: bool,
        /// Found by a full scan (counts for the queue's refill).
        by_scan: bool,
    },
    /// A file whose upload completed before (a restart, or a retry of its action): what is
    /// left is its hook (unless `hook_done`) and its after-upload action.
    Complete {
        /// The file.
        key: FileKey,
        /// Its hook already succeeded.
        hook_done: bool,
    },
    /// A file left the spool, changed, or is no longer to be uploaded.
    Gone(FileKey),
    /// A step ended; `has_url` tells whether the file now has an upload URL.
    Stepped {
        /// The file.
        key: FileKey,
        /// How the step ended.
        outcome: Outcome,
        /// Whether it has an upload URL now.
        has_url: bool,
    },
    /// The pause marker appeared (true) or went (false).
    Pause(bool),
    /// A field policy closed the gate (`Some(why)`: an upload window, the network's
    /// interface, a condition command) or every policy opens it again (`None`). Closed holds
    /// uploads as a pause does.
    Gate(Option<String>),
    /// SIGTERM or SIGINT.
    Stop,
    /// The kernel announced a route, address or link change.
    NetworkChanged,
    /// A run of a file's hook ([`Action::Hook`]) ended.
    HookEnded {
        /// The file.
        key: FileKey,
        /// It succeeded (or had already).
        ok: bool,
    },
    /// A file's after-upload action ([`Action::AfterUpload`]) ended.
    ActionEnded {
        /// The file.
        key: FileKey,
        /// It was carried out (or found nothing left to do); false: try again later.
        ok: bool,
    },
}

/// What the shell is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Run one upload step of this file on a worker, then report [`Input::Stepped`].
    Step(FileKey),
    /// Set (true) or clear the workers' interrupt flag.
    Interrupt(bool),
    /// Forget the started upload of this file (it is gone, or no longer the core's).
    Drop(FileKey),
    /// Run the after-upload hook of this completed file, then report [`Input::HookEnded`].
    Hook(FileKey),
    /// Delete, move or keep this completed file, then report [`Input::ActionEnded`].
    AfterUpload(FileKey),
}

/// The link to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// Answers came back.
    Up,
    /// No answer, or answers only a setting can mend (`refused`): probe (one step) at
    /// `probe_at`.
    Down {
        /// Failed probes in a row.
        failures: u32,
        /// When the next probe may go.
        probe_at: Instant,
        /// The last failure.
        why: String,
        /// The server answered, but not as the settings expect (TLS refused, a plain-HTTP
        /// port at an `https://` endpoint): a setting to fix, so uploads are held, not waiting.
        refused: bool,
    },
}

/// The endpoint refuses creations: none goes before `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// Refusals in a row.
    pub failures: u32,
    /// When a creation may be tried again.
    pub until: Instant,
    /// The refusal's HTTP status.
    pub status: u16,
    /// The server's message.
    pub message: String,
    /// The one creation that probes the endpoint now that the hold ended: no other creation
    /// goes until it reports.
    pub probe: Option<FileKey>,
}

/// A file's place in line: its priority class first (0 goes first: `spool.priority`), then
/// its age in the configured order (`spool.order`: oldest or newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Rank {
    class: u8,
    /// Nanoseconds since the epoch of the modification time; negated for newest first.
    age: i128,
}

impl Rank {
    /// Class `class`, then by modification time (`newest_first` or oldest first).
    pub(crate) fn new(class: u8, mtime: SystemTime, newest_first: bool) -> Self {
        let nanos = match mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Self {
            class,
            age: if newest_first { -nanos } else { nanos },
        }
    }

    /// One class, oldest first (no priorities configured).
    #[cfg(test)]
    pub(crate) fn by_age(mtime: SystemTime) -> Self {
        Self::new(0, mtime, false)
    }

    /// The priority class (0 goes first).
    pub(crate) fn class(&self) -> u8 {
        self.class
    }
}

/// A started file.
#[derive(Debug, Clone)]
struct Started {
    state: FileState,
    rank: Rank,
    has_url: bool,
}

/// The scheduler's state.
#[derive(Debug)]
pub(crate) struct Schedule {
    concurrency: usize,
    queue: Window<FileKey, Rank>,
    /// Queued files that resume an upload (need no creation).
    queued_with_url: HashSet<FileKey>,
    started: HashMap<FileKey, Started>,
    /// Stepping files that are gone or no longer ours: forgotten when their step reports.
    dropped: HashSet<FileKey>,
    paused: bool,
    /// Why a field policy holds uploads, if one does.
    gate: Option<String>,
    stopping: bool,
    link: Link,
    hold: Option<Hold>,
    pacing: Pacing,
    jitter: Jitter,
    /// A hook runs before each after-upload action.
    hook: bool,
    /// Completed files whose hook or action is left.
    finishing: HashMap<FileKey, Finish>,
}

/// How the status shows a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileView {
    /// The file.
    pub key: FileKey,
    /// Its scheduling state.
    pub state: FileState,
    /// Whether the shell should call it paused, held or waiting for the link.
    pub blocked: Option<Blocked>,
}

/// Why a file that could step does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// Uploads are paused.
    Paused,
    /// A field policy holds uploads (the core's [`Schedule::gate`] says why).
    Policy,
    /// The link gives no answer.
    Link,
    /// The endpoint refuses creations and the file needs one, or the server answers every
    /// request in a way only a setting can mend.
    Endpoint,
}

impl Schedule {
    /// A core running `concurrency` steps at once, queueing at most `window` files; `seed`
    /// drives the jitter of link probes (differs between devices).
    pub(crate) fn new(concurrency: usize, window: usize, pacing: Pacing, seed: u64) -> Self {
        Self {
            concurrency: concurrency.max(1),
            queue: Window::new(window),
            queued_with_url: HashSet::new(),
            started: HashMap::new(),
            dropped: HashSet::new(),
            paused: false,
            gate: None,
            stopping: false,
            link: Link::Up,
            hold: None,
            pacing,
            jitter: Jitter::new(seed),
            hook: false,
            finishing: HashMap::new(),
        }
    }

    /// The same core with an after-upload hook that must succeed before each action.
    pub(crate) fn with_hook(mut self, hook: bool) -> Self {
        self.hook = hook;
        self
    }

    /// Takes in what happened at `now`; returns what must be done at once (interrupts, drops).
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        match input {
            Input::BeginScan => {
                self.queue.begin_scan();
                self.queued_with_url.clear();
            }
            Input::Ready {
                key,
                rank,
                has_url,
                by_scan,
            } => {
                if !self.started.contains_key(&key) {
                    if let Some(f) = self.finishing.get_mut(&key) {
                        // New content of a completed file: its old action must not touch it.
                        f.superseded = true;
                    }
                    if has_url {
                        self.queued_with_url.insert(key.clone());
                    } else {
                        self.queued_with_url.remove(&key);
                    }
                    self.queue.offer(&key, rank, by_scan);
                }
            }
            Input::Complete { key, hook_done } => {
                if let Some(f) = self.finishing.get_mut(&key) {
                    // Its record is complete for the content the file holds now: the file
                    // is back in the spool (a reload moved it away and back), so its action
                    // is due again when the running stage ends.
                    f.superseded = false;
                    return Vec::new();
                }
                if self.started.contains_key(&key) {
                    return Vec::new();
                }
                self.queue.remove(&key);
                self.queued_with_url.remove(&key);
                return self.finish(key, self.first_stage(hook_done));
            }
            Input::HookEnded { key, ok } => return self.stage_ended(key, Stage::Hook, ok, now),
            Input::ActionEnded { key, ok } => return self.stage_ended(key, Stage::Action, ok, now),
            Input::Gone(key) => return self.gone(key),
            Input::Stepped {
                key,
                outcome,
                has_url,
            } => {
                if let Some(h) = self
                    .hold
                    .as_mut()
                    .filter(|h| h.probe.as_ref() == Some(&key))
                {
                    // The probe reported: created (the hold ends below), refused (a new
                    // hold), or no answer at all (another creation may probe).
                    h.probe = None;
                }
                if self.dropped.remove(&key) {
                    return match self.started.remove(&key) {
                        Some(_) if outcome != Outcome::Ended => vec![Action::Drop(key)],
                        _ => Vec::new(),
                    };
                }
                if outcome == Outcome::Done {
                    return self.done(key);
                }
                self.stepped(key, outcome, has_url, now);
            }
            Input::Pause(paused) => {
                let held = self.held();
                self.paused = paused;
                return self.interrupt_if_changed(held);
            }
            Input::Gate(why) => {
                let held = self.held();
                self.gate = why;
                return self.interrupt_if_changed(held);
            }
            Input::Stop => {
                if !self.stopping {
                    self.stopping = true;
                    return vec![Action::Interrupt(true)];
                }
            }
            Input::NetworkChanged => {
                if let Link::Down { probe_at, .. } = &mut self.link {
                    *probe_at = (*probe_at).min(now);
                }
            }
        }
        Vec::new()
    }

    /// True while no upload may step: paused, or a field policy closed the gate.
    fn held(&self) -> bool {
        self.paused || self.gate.is_some()
    }

    /// The workers' interrupt follows a change of [`Self::held`] from `was` (a stop keeps it set).
    fn interrupt_if_changed(&self, was: bool) -> Vec<Action> {
        let held = self.held();
        if held != was && !self.stopping {
            vec![Action::Interrupt(held)]
        } else {
            Vec::new()
        }
    }

    fn gone(&mut self, key: FileKey) -> Vec<Action> {
        self.queue.remove(&key);
        self.queued_with_url.remove(&key);
        match self.started.get(&key) {
            // Its step reports soon; the file is forgotten then.
            Some(s) if s.state == FileState::Stepping => {
                self.dropped.insert(key);
                Vec::new()
            }
            Some(_) => {
                self.started.remove(&key);
                vec![Action::Drop(key)]
            }
            None => Vec::new(),
        }
    }

    fn stepped(&mut self, key: FileKey, outcome: Outcome, has_url: bool, now: Instant) {
        let Some(file) = self.started.get_mut(&key) else {
            return;
        };
        let created = has_url && !file.has_url;
        file.has_url = has_url;
        file.state = FileState::Ready;
        match outcome {
            Outcome::Continue | Outcome::Interrupted => {}
            Outcome::Wait(d) => file.state = FileState::BackingOff { until: now + d },
            // A completed upload goes through `done`; here as a plain end for completeness.
            Outcome::Ended | Outcome::Done => {
                self.started.remove(&key);
            }
            Outcome::LinkDown(why) => {
                self.link_failed(why, now);
                return;
            }
            Outcome::LinkRefused(why) => {
                self.started.remove(&key);
                self.link_refused(why, now);
                return;
            }
            Outcome::EndpointRefused { status, message } => {
                self.endpoint_refused(status, message, now);
                return;
            }
        }
        // An answer came back (or the file ended on its own terms): the link works.
        if !matches!(
            outcome,
            Outcome::Interrupted | Outcome::Ended | Outcome::Done
        ) {
            self.link = Link::Up;
        }
        if created {
            self.hold = None;
        }
    }

    /// The steps to run now (at most the free workers' worth).
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.stopping {
            return actions;
        }
        // Hooks and actions send no upload bytes: they go on while paused or held.
        let mut due: Vec<(&FileKey, &Finish)> = self
            .finishing
            .iter()
            .filter(|(_, f)| f.retry_at.is_some_and(|t| now >= t))
            .collect();
        due.sort_by(|a, b| a.0.cmp(b.0));
        let due: Vec<(FileKey, Stage)> =
            due.into_iter().map(|(k, f)| (k.clone(), f.stage)).collect();
        for (key, stage) in due {
            actions.extend(self.finish(key, stage));
        }
        if self.held() {
            return actions;
        }
        let mut stepping = self.stepping();
        let limit = match &self.link {
            Link::Up => self.concurrency,
            // One probe at a time, when it is due.
            Link::Down { probe_at, .. } if now >= *probe_at => 1,
            Link::Down { .. } => 0,
        };
        let mut creation_open = self
            .hold
            .as_ref()
            .is_none_or(|h| now >= h.until && h.probe.is_none());
        while stepping < limit {
            let Some((key, has_url)) = self.next_candidate(now, creation_open) else {
                break;
            };
            if let (false, Some(hold)) = (has_url, self.hold.as_mut()) {
                // The hold ended: one creation probes, the others wait for its answer (in
                // this poll and in the next ones).
                hold.probe = Some(key.clone());
                creation_open = false;
            }
            actions.push(Action::Step(key));
            stepping += 1;
        }
        actions
    }

    /// The next file to step, marked stepping: a started one first (first in line among
    /// them), so that uploads once begun finish; but a queued file of a higher priority class
    /// goes before them (an alarm image does not wait behind a long video: the video yields
    /// at the end of its step and resumes later from the server's offset).
    fn next_candidate(&mut self, now: Instant, creation_open: bool) -> Option<(FileKey, bool)> {
        let with_url = &self.queued_with_url;
        let room = self.started.len() < self.concurrency + STARTED_MAX_EXTRA;
        let queued_class = self
            .queue
            .first_rank_where(|k| creation_open || with_url.contains(k))
            .filter(|_| room)
            .map(Rank::class);
        let waiting = self
            .started
            .iter()
            .filter(|(_, s)| match s.state {
                FileState::Ready => true,
                FileState::BackingOff { until } => now >= until,
                _ => false,
            })
            .filter(|(_, s)| s.has_url || creation_open)
            .min_by(|a, b| (a.1.rank, a.0).cmp(&(b.1.rank, b.0)))
            .filter(|(_, s)| queued_class.is_none_or(|c| s.rank.class() <= c))
            .map(|(k, s)| (k.clone(), s.has_url));
        if let Some((key, has_url)) = waiting {
            if let Some(s) = self.started.get_mut(&key) {
                s.state = FileState::Stepping;
            }
            return Some((key, has_url));
        }
        if !room {
            return None;
        }
        let with_url = &self.queued_with_url;
        let (rank, key) = self
            .queue
            .take_oldest_where(|k| creation_open || with_url.contains(k))?;
        let has_url = self.queued_with_url.remove(&key);
        self.started.insert(
            key.clone(),
            Started {
                state: FileState::Stepping,
                rank,
                has_url,
            },
        );
        Some((key, has_url))
    }

    /// The earliest instant after `now` at which [`Self::poll`] may hand out a step that it
    /// would not now. Instants already past are left out: what they allow, `poll` does now,
    /// or an event (a step's end, a resume) must come first; a shell that waited for them
    /// would spin.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        let backoffs = self.started.values().filter_map(|s| match s.state {
            FileState::BackingOff { until } => Some(until),
            _ => None,
        });
        let link = match &self.link {
            Link::Down { probe_at, .. } => Some(*probe_at),
            Link::Up => None,
        };
        let hold = self.hold.as_ref().map(|h| h.until);
        let finishing = self
            .finishing
            .values()
            .filter(|_| !self.stopping)
            .filter_map(|f| f.retry_at);
        backoffs
            .chain(link)
            .chain(hold)
            .chain(finishing)
            .filter(|t| *t > now)
            .min()
    }

    /// Steps running now.
    pub(crate) fn stepping(&self) -> usize {
        self.started
            .values()
            .filter(|s| s.state == FileState::Stepping)
            .count()
    }

    /// True once a stop was asked for and no step runs: the shell may end.
    pub(crate) fn stopped(&self) -> bool {
        self.stopping && self.stepping() == 0
    }

    /// True while the file's upload started (a worker, or waiting between steps).
    pub(crate) fn is_started(&self, key: &FileKey) -> bool {
        self.started.contains_key(key)
    }

    /// True while the file's upload is in flight in this run (a step runs, or it waits for a
    /// worker between steps or for the link to come back) or its hook or after-upload action
    /// is left: the spool limits never evict such a file. A file backing off after its own
    /// failure (a 5xx, a lock) is not in flight: it may be evicted, its upload terminated.
    pub(crate) fn busy(&self, key: &FileKey) -> bool {
        self.started
            .get(key)
            .is_some_and(|s| !matches!(s.state, FileState::BackingOff { .. }))
            || self.finishing.contains_key(key)
    }

    /// True while uploads are paused.
    pub(crate) fn paused(&self) -> bool {
        self.paused
    }

    /// Why a field policy holds uploads, if one does.
    pub(crate) fn gate(&self) -> Option<&str> {
        self.gate.as_deref()
    }

    /// The link's state.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// The endpoint's hold on creations, if any.
    pub(crate) fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }

    /// True when the queue ran dry but the spool holds more ready files: scan again.
    pub(crate) fn needs_refill(&self) -> bool {
        self.queue.needs_refill()
    }

    /// Files waiting to start, as far as the last scan can tell (beyond the queue's window too).
    pub(crate) fn waiting(&self) -> u64 {
        self.queue.waiting()
    }

    /// Every file the core knows, started ones first, each with its state; of the queued
    /// ones only the first `max_queued` in the queue's order (the status lists a few of a
    /// window of up to 1,024, once a second).
    pub(crate) fn files(&self, now: Instant, max_queued: usize) -> Vec<FileView> {
        let mut started: Vec<_> = self.started.iter().collect();
        started.sort_by(|a, b| (a.1.rank, a.0).cmp(&(b.1.rank, b.0)));
        let started = started
            .into_iter()
            .map(|(k, s)| (k.clone(), s.state, s.has_url));
        let queued = self.queue.iter().take(max_queued).map(|k| {
            (
                k.clone(),
                FileState::Queued,
                self.queued_with_url.contains(k),
            )
        });
        let mut finishing: Vec<_> = self.finishing.iter().collect();
        finishing.sort_by(|a, b| a.0.cmp(b.0));
        let finishing = finishing.into_iter().map(|(k, f)| {
            let state = FileState::Finishing {
                stage: f.stage,
                retry_at: f.retry_at,
            };
            (k.clone(), state, true)
        });
        started
            .chain(queued)
            .chain(finishing)
            .map(|(key, state, has_url)| FileView {
                blocked: self.blocked(state, has_url, now),
                key,
                state,
            })
            .collect()
    }

    fn blocked(&self, state: FileState, has_url: bool, now: Instant) -> Option<Blocked> {
        if matches!(state, FileState::Stepping | FileState::Finishing { .. }) {
            None
        } else if self.paused {
            Some(Blocked::Paused)
        } else if self.gate.is_some() {
            Some(Blocked::Policy)
        } else if let Link::Down { refused, .. } = self.link {
            Some(if refused {
                Blocked::Endpoint
            } else {
                Blocked::Link
            })
        } else if !has_url && self.hold.as_ref().is_some_and(|h| now < h.until) {
            Some(Blocked::Endpoint)
        } else {
            None
        }
    }

    /// Forgets every file that `keep` refuses (a reload moved the spool): returns the drops
    /// for started files not stepping now; stepping ones are forgotten when they report.
    pub(crate) fn retain(&mut self, keep: impl Fn(&FileKey) -> bool) -> Vec<Action> {
        let queued: Vec<FileKey> = self.queue.iter().filter(|k| !keep(k)).cloned().collect();
        for key in queued {
            self.queue.remove(&key);
            self.queued_with_url.remove(&key);
        }
        // A finish waiting for a retry is forgotten (a scan of the spool it is in now finds
        // the complete record again); a hook that runs may end, but no action follows it.
        self.finishing.retain(|k, f| {
            f.superseded |= !keep(k);
            keep(k) || f.retry_at.is_none()
        });
        let started: Vec<FileKey> = self.started.keys().filter(|k| !keep(k)).cloned().collect();
        started.into_iter().flat_map(|k| self.gone(k)).collect()
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sim;
