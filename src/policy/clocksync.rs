//! Whether the system clock can be believed: the kernel's NTP status, and how long the windows
//! have been waiting for it.
//!
//! Key idea: a Raspberry Pi has no real-time clock; it boots at the time it last shut down
//! (systemd's saved timestamp) and jumps to the right time when NTP first synchronises, which
//! on a cellular link may take minutes or, with no network, never happen. A window judged by
//! that clock would send at the wrong hour, on exactly the link the window was meant to spare.
//! So by default (`schedule.unsynced_clock = "wait"`) windows hold every upload while the
//! kernel says the clock is unsynchronised (`adjtimex`: the `STA_UNSYNC` bit or the state
//! `TIME_ERROR`), and ten minutes into such a wait one WARN names the fix: enable NTP (e.g.
//! systemd-timesyncd), or set `"trust"` on a device whose clock is right without NTP (a
//! battery-backed RTC, GPS time). The decision only applies when windows are configured:
//! without them ferry never looks at the wall clock.
//!
//! The kernel answer is read-only and needs no privilege, but a seccomp filter can refuse it
//! (systemd's `ProtectClock=yes` blocks even the read). Then the marker file that
//! systemd-timesyncd creates on its first synchronisation answers instead; without either,
//! the clock counts as unsynchronised, and the WARN says so.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_clockstatus::{STA_UNSYNC, TIME_ERROR};

/// How often a waiting policy asks again.
pub(crate) const WAIT_RECHECK: Duration = Duration::from_secs(10);
/// How long a wait lasts before the one WARN.
pub(crate) const WARN_AFTER: Duration = Duration::from_secs(600);
/// The `ferry status` text while waiting.
pub(crate) const WAITING: &str =
    "waiting for the system clock to be synchronised (upload windows need the time of day)";
/// Created by systemd-timesyncd once it has synchronised the clock (systemd >= 239).
const TIMESYNCD_MARKER: &str = "/run/systemd/timesync/synchronized";

/// The probe the policy asks: `true` when the clock is synchronised.
pub(crate) type SyncProbe = Box<dyn FnMut() -> bool + Send>;

/// Whether `adjtimex`'s answer (its return value and status bits) means synchronised.
pub(crate) fn synced_from(state: i32, status: i32) -> bool {
    state != TIME_ERROR && status & STA_UNSYNC == 0
}

/// The real probe: the kernel's status, or when that call is refused, timesyncd's marker.
pub(crate) fn system_probe() -> SyncProbe {
    Box::new(|| match ferry_clockstatus::read() {
        Ok(k) => synced_from(k.state, k.status),
        Err(_) => Path::new(TIMESYNCD_MARKER).exists(),
    })
}

/// What the wait says at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// Believe the clock.
    Believed,
    /// Hold; `warn` is true exactly once, at the first check ten minutes into the wait.
    Waiting {
        /// Time to log the WARN.
        warn: bool,
    },
}

/// The waiting state of one window policy.
pub(crate) struct SyncWait {
    probe: SyncProbe,
    /// Since when the clock has been unsynchronised (`None`: it is not, or not asked).
    since: Option<Instant>,
    /// The WARN of this wait was logged.
    warned: bool,
}

impl SyncWait {
    /// A wait that asks `probe`.
    pub(crate) fn new(probe: SyncProbe) -> Self {
        Self {
            probe,
            since: None,
            warned: false,
        }
    }

    /// Asks the probe at `now`. A wait that ends and starts again warns again.
    pub(crate) fn check(&mut self, now: Instant) -> Sync {
        if (self.probe)() {
            self.since = None;
            self.warned = false;
            return Sync::Believed;
        }
        let since = *self.since.get_or_insert(now);
        let warn = !self.warned && now.saturating_duration_since(since) >= WARN_AFTER;
        self.warned |= warn;
        Sync::Waiting { warn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_kernel_status_bits_decide() {
        assert!(synced_from(0, 0x2000)); // TIME_OK, STA_NANO
        assert!(!synced_from(0, 0x2040)); // STA_UNSYNC
        assert!(!synced_from(5, 0x2000)); // TIME_ERROR
        assert!(!synced_from(5, 0x2040)); // what this test machine said
        assert!(synced_from(1, 0x0001)); // TIME_INS with STA_PLL: a leap second ahead, synced
    }

    #[test]
    fn the_warn_comes_once_ten_minutes_into_a_wait_and_again_for_a_new_wait() {
        let synced = Arc::new(AtomicBool::new(false));
        let s = synced.clone();
        let mut wait = SyncWait::new(Box::new(move || s.load(Ordering::SeqCst)));
        use crate::clock::Clock;
        let t0 = crate::clock::ManualClock::new(std::time::UNIX_EPOCH).now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(wait.check(at(0)), Sync::Waiting { warn: false });
        assert_eq!(wait.check(at(599)), Sync::Waiting { warn: false });
        assert_eq!(wait.check(at(600)), Sync::Waiting { warn: true });
        assert_eq!(wait.check(at(610)), Sync::Waiting { warn: false });
        synced.store(true, Ordering::SeqCst);
        assert_eq!(wait.check(at(620)), Sync::Believed);
        synced.store(false, Ordering::SeqCst);
        assert_eq!(wait.check(at(1000)), Sync::Waiting { warn: false });
        assert_eq!(wait.check(at(1599)), Sync::Waiting { warn: false });
        assert_eq!(wait.check(at(1600)), Sync::Waiting { warn: true });
    }
}
