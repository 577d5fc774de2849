//! Field policies: rules about *when* the daemon may send and how fast, each judged on its
//! own and combined by the daemon's gate (`daemon/gate.rs`).
//!
//! Key idea: a policy is asked for a [`Verdict`] with the instant and the wall-clock time as
//! arguments (it reads no clock itself): closed with a reason for the operator ("outside
//! upload window until Mon 22:00"), or open, possibly with a rate limit; and when it wants to
//! be asked again. The daemon asks every policy before it hands out steps, when a recheck is
//! due and after a network change. Any closed policy holds every upload, as a pause does (an
//! upload in flight stops and later resumes from the server's offset); the lowest rate any
//! policy asks for applies to all uploads together.

pub(crate) mod clocksync;
pub(crate) mod schedule;
pub(crate) mod window;
pub(crate) mod zone;

use std::time::{Instant, SystemTime};

pub(crate) mod addresses;
pub(crate) mod condition;
pub(crate) mod interfaces;
pub(crate) mod network;
pub(crate) mod route;

/// What one policy says now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// `Some(why)` when no upload may go now; `why` is for `ferry status` and the log, e.g.
    /// `outside upload window until Mon 22:00`.
    pub closed: Option<String>,
    /// The most bytes per second all uploads together may send now, if this policy limits it.
    pub rate_limit: Option<u64>,
    /// A line for `ferry status` even while open (a condition command's first output line).
    pub note: Option<String>,
    /// Ask again no later than this; `None`: only before steps and on network changes.
    pub recheck_at: Option<Instant>,
}

impl Verdict {
    /// Open, no limit, no note, no recheck.
    pub(crate) fn open() -> Self {
        Self::default()
    }
}

/// One field policy (upload windows, network interfaces, a condition command).
pub(crate) trait Policy: Send {
    /// Its name in logs and the status: `window`, `interfaces`, `condition`.
    fn name(&self) -> &'static str;
    /// Judges the moment `now` (monotonic) at wall-clock time `wall`. Called before steps are
    /// handed out (so keep it cheap: a netlink query is fine, a process is not; run those in
    /// the background and report their last answer), at `recheck_at`, after network changes.
    fn check(&mut self, now: Instant, wall: SystemTime) -> Verdict;
}
