//! An upload rate limit shared by all uploads (a token bucket), so ferry can share a link.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Bytes per second for everything that asks, with a burst of a quarter second.
pub(crate) struct RateLimiter {
    bytes_per_sec: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<(Instant, f64)>,
    never: AtomicBool,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (at least 1).
    pub(crate) fn new(bytes_per_sec: u64, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            clock,
            state: Mutex::new((now, 0.0)),
            never: AtomicBool::new(false),
        }
    }

    /// The most bytes one read should ask for, so that waits stay short.
    pub(crate) fn max_read(&self) -> usize {
        usize::try_from(self.bytes_per_sec / 8)
            .unwrap_or(usize::MAX)
            .clamp(512, 64 * 1024)
    }

    /// Takes `n` bytes of allowance, sleeping until they are available.
    pub(crate) fn take(&self, n: usize) {
        let wait = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = self.clock.now();
            let rate = self.bytes_per_sec as f64;
            let elapsed = now.saturating_duration_since(st.0).as_secs_f64();
            // Refill, capped at a quarter second of burst.
            let tokens = (st.1 + elapsed * rate).min(rate / 4.0) - n as f64;
            *st = (now, tokens);
            if tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-tokens / rate)
            }
        };
        if !wait.is_zero() {
            self.clock.sleep(wait, &self.never);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn holds_the_average_rate() {
        let clock = Arc::new(ManualClock::new(std::time::SystemTime::UNIX_EPOCH));
        let l = RateLimiter::new(100_000, clock.clone());
        for _ in 0..100 {
            l.take(10_000);
        }
        let slept: Duration = clock.sleeps().iter().sum();
        // 1,000,000 bytes at 100,000 B/s: 10 s, minus at most the quarter-second burst.
        assert!(
            slept >= Duration::from_millis(9_700) && slept <= Duration::from_millis(10_050),
            "{slept:?}"
        );
        assert_eq!(l.max_read(), 12_500);
    }
}
