//! Time: the only place that reads the clock or sleeps, so that everything else can be tested
//! with a `ManualClock` (tests and the broker's fuzz target) and no real waiting.

use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(any(test, all(fuzzing, feature = "broker")))]
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A source of time.
pub(crate) trait Clock: Send + Sync {
    /// Monotonic now, for durations.
    fn now(&self) -> Instant;
    /// Wall-clock now, for HTTP dates and records.
    fn wall(&self) -> SystemTime;
    /// Sleeps for `d`, returning early when `wake` becomes true: checked at least every
    /// 100 ms, and at once when the sleeping thread is unparked (`Thread::unpark`) after
    /// `wake` was set. A thread that joins a sleeper should unpark it, or wait up to 100 ms.
    fn sleep(&self, d: Duration, wake: &AtomicBool);
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

#[expect(
    clippy::disallowed_methods,
    reason = "the real clock: the one place that reads time and sleeps"
)]
impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, d: Duration, wake: &AtomicBool) {
        let until = Instant::now() + d;
        while !wake.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // park, not sleep: an unpark ends the wait at once (a spurious or stale wake-up
            // only goes round the loop again).
            std::thread::park_timeout(left.min(Duration::from_millis(100)));
        }
    }
}

#[cfg(any(test, all(fuzzing, feature = "broker")))]
/// A clock that moves only when slept on: sleeping advances it instantly.
#[derive(Debug)]
pub(crate) struct ManualClock {
    start: Instant,
    wall_start: SystemTime,
    elapsed: Mutex<Duration>,
    /// Every sleep asked for, in order.
    pub sleeps: Mutex<Vec<Duration>>,
}

#[cfg(any(test, all(fuzzing, feature = "broker")))]
impl ManualClock {
    /// A clock at `wall` wall-clock time.
    pub(crate) fn new(wall: SystemTime) -> Self {
        #[expect(
            clippy::disallowed_methods,
            reason = "an Instant can only be made from now(); only differences are used"
        )]
        Self {
            start: Instant::now(),
            wall_start: wall,
            elapsed: Mutex::new(Duration::ZERO),
            sleeps: Mutex::new(Vec::new()),
        }
    }

    /// Moves time forward without a sleep.
    pub(crate) fn advance(&self, d: Duration) {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner()) += d;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sleeps asked for so far.
    #[cfg(test)]
    pub(crate) fn sleeps(&self) -> Vec<Duration> {
        self.sleeps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(any(test, all(fuzzing, feature = "broker")))]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn wall(&self) -> SystemTime {
        self.wall_start + self.elapsed()
    }

    fn sleep(&self, d: Duration, _wake: &AtomicBool) {
        self.sleeps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(d);
        self.advance(d);
    }
}

/// A seed for jitter that differs between processes and devices.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    #[expect(
        clippy::disallowed_methods,
        reason = "entropy for jitter, not a reading of time"
    )]
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
