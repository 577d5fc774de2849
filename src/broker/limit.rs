//! Per-device rate limit on one-time URLs: `urls_per_hour`, as a bucket that holds an hour's
//! worth and refills one URL every `3600 s / urls_per_hour` (GCRA: one instant per device).
//!
//! A device may take its whole hour at once (a camera that was offline catches up), then
//! one URL per interval; a refusal says exactly when the next URL is available.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(3600);

/// The limiter; time is passed in, so it is tested without waiting.
pub(crate) struct RateLimits {
    interval: Duration,
    /// Per device: the "theoretical arrival time" of its next URL.
    next: Mutex<HashMap<String, Instant>>,
}

impl RateLimits {
    /// A limit of `per_hour` URLs per device (at least 1).
    pub(crate) fn new(per_hour: u32) -> Self {
        Self {
            interval: WINDOW / per_hour.max(1),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one URL for `device` at `now`; `Err(wait)` when it must wait that long first.
    pub(crate) fn take(&self, device: &str, now: Instant) -> Result<(), Duration> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let tat = next.get(device).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > WINDOW {
            return Err(ahead - WINDOW);
        }
        next.insert(device.to_string(), new_tat);
        // Devices whose bucket is full again need no entry; drop them now and then.
        if next.len() > 1024 {
            next.retain(|_, t| *t > now);
        }
        Ok(())
    }
}

/// `Retry-After` seconds for a wait, rounded up (never 0: "now" would be a lie).
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;

    #[test]
    fn an_hours_worth_at_once_then_one_per_interval() {
        let l = RateLimits::new(3);
        let t0 = crate::clock::SystemClock.now();
        assert!(l.take("cam", t0).is_ok());
        assert!(l.take("cam", t0).is_ok());
        assert!(l.take("cam", t0).is_ok());
        assert_eq!(l.take("cam", t0), Err(Duration::from_secs(1200)));
        assert!(l.take("other", t0).is_ok(), "devices are limited apart");
        let later = t0 + Duration::from_secs(1000);
        assert_eq!(l.take("cam", later), Err(Duration::from_secs(200)));
        assert!(l.take("cam", t0 + Duration::from_secs(1200)).is_ok());
        assert!(l.take("cam", t0 + Duration::from_secs(1200)).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(1200)), 1200);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
