//! The upload-window policy: closed outside every `[[schedule.window]]`, open with the window's
//! rate inside, and closed while the clock cannot be believed.
//!
//! Key idea: the wall-clock time is an argument (`check(now, wall)`), never read here; the
//! windows are judged on its local reading ([`super::schedule`]). The policy asks to be checked
//! again at the next instant its answer changes (an opening, a closing, a rate change, found
//! among the window edges under the offsets in force and the zone's own offset changes), but
//! never more than [`RECHECK_CAP`] later, so that a clock stepped by NTP is noticed within a
//! minute. While the clock is unsynchronised and `unsynced_clock = "wait"`, it holds with
//! [`clocksync::WAITING`] and asks again every 10 s ([`mod@super::clocksync`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::clocksync::{self, Sync, SyncProbe, SyncWait};
use super::schedule::{self, ScheduleSettings, UnsyncedClock, Window};
use super::zone::Zone;
use super::{Policy, Verdict};

/// The longest a verdict stands without a new look at the wall clock.
pub(crate) const RECHECK_CAP: Duration = Duration::from_secs(60);

/// `[[schedule.window]]` as a [`Policy`].
pub(crate) struct WindowPolicy {
    windows: Vec<Window>,
    zone: Zone,
    /// `None` with `unsynced_clock = "trust"`.
    wait: Option<SyncWait>,
}

impl WindowPolicy {
    /// The policy for `settings`; `synced` says whether the system clock is synchronised
    /// (`clocksync::system_probe()` in the daemon, a stub in tests).
    pub(crate) fn new(settings: &ScheduleSettings, synced: SyncProbe) -> Self {
        Self {
            windows: settings.windows.clone(),
            zone: settings.zone.clone(),
            wait: match settings.unsynced_clock {
                UnsyncedClock::Wait => Some(SyncWait::new(synced)),
                UnsyncedClock::Trust => None,
            },
        }
    }

    /// The windows' answer at the Unix second `unix`: `Some(rate)` open, `None` closed.
    fn state_at(&self, unix: i64) -> Option<Option<u64>> {
        schedule::open_rate(&self.windows, self.zone.local_secs(unix))
    }

    /// The first Unix second in `(unix, unix + cap]` at which the answer differs from the one
    /// at `unix`.
    fn next_change(&self, unix: i64, cap: i64) -> Option<i64> {
        let until = unix + cap;
        let offsets = [self.zone.offset_at(unix), self.zone.offset_at(until)];
        let (lo, hi) = (offsets[0].min(offsets[1]), offsets[0].max(offsets[1]));
        let mut candidates: Vec<i64> =
            schedule::edges_between(&self.windows, unix + lo - 1, until + hi)
                .into_iter()
                .flat_map(|edge| offsets.map(|o| edge - o))
                .chain(self.zone.next_change(unix, until))
                .filter(|&u| u > unix && u <= until)
                .collect();
        candidates.sort_unstable();
        let now = self.state_at(unix);
        candidates.into_iter().find(|&u| self.state_at(u) != now)
    }

    /// The verdict of the windows alone at `wall`.
    fn judge(&self, now: Instant, wall: SystemTime) -> Verdict {
        let (unix, frac) = unix_parts(wall);
        let cap = i64::try_from(RECHECK_CAP.as_secs()).unwrap_or(60);
        let recheck_at = match self.next_change(unix, cap) {
            // u > unix, so u - wall is positive: whole seconds past `unix`, less the fraction.
            Some(u) => now + (Duration::from_secs((u - unix).unsigned_abs()) - frac),
            None => now + RECHECK_CAP,
        };
        match self.state_at(unix) {
            Some(rate_limit) => Verdict {
                rate_limit,
                recheck_at: Some(recheck_at),
                ..Verdict::open()
            },
            None => {
                let local = self.zone.local_secs(unix);
                let why = match schedule::next_opening(&self.windows, local) {
                    Some(at) => {
                        format!("outside upload window until {}", schedule::format_local(at))
                    }
                    None => "outside upload window".to_string(),
                };
                Verdict {
                    closed: Some(why),
                    recheck_at: Some(recheck_at),
                    ..Verdict::open()
                }
            }
        }
    }
}

impl Policy for WindowPolicy {
    fn name(&self) -> &'static str {
        "window"
    }

    fn check(&mut self, now: Instant, wall: SystemTime) -> Verdict {
        if let Some(wait) = &mut self.wait {
            if let Sync::Waiting { warn } = wait.check(now) {
                if warn {
                    log::warn!(
                        "upload windows have waited {} min for the system clock to be synchronised \
                         (the kernel says it is not, or cannot be asked): enable NTP (e.g. \
                         `timedatectl set-ntp true` with systemd-timesyncd), or set \
                         schedule.unsynced_clock = \"trust\" if this clock is right without it",
                        clocksync::WARN_AFTER.as_secs() / 60
                    );
                }
                return Verdict {
                    closed: Some(clocksync::WAITING.to_string()),
                    recheck_at: Some(now + clocksync::WAIT_RECHECK),
                    ..Verdict::open()
                };
            }
        }
        self.judge(now, wall)
    }
}

/// `wall` as whole Unix seconds (floored, also before 1970) and the fraction past them.
fn unix_parts(wall: SystemTime) -> (i64, Duration) {
    match wall.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            Duration::from_nanos(u64::from(d.subsec_nanos())),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
            match d.subsec_nanos() {
                0 => (-secs, Duration::ZERO),
                n => (
                    -secs - 1,
                    Duration::from_nanos(1_000_000_000 - u64::from(n)),
                ),
            }
        }
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
