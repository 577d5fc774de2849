//! Rate limits as buckets (GCRA: one instant per key): per device, `urls_per_hour` one-time
//! URLs, a bucket that holds an hour's worth and refills one URL every `3600 s / urls_per_hour`;
//! for the whole Stream account, Stream's API limit (1,200 requests per 5 minutes).
//!
//! A device may take its whole hour at once (a camera that was offline catches up), then
//! one URL per interval; a refusal says exactly when the next URL is available. A URL that was
//! taken but not handed out (Stream failed) is given back ([`RateLimits::refund`]): only URLs
//! handed out count against a device.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(3600);

/// Stream's account-wide API limit: requests per [`STREAM_API_WINDOW`] (Cloudflare API docs).
pub(crate) const STREAM_API_REQUESTS: u32 = 1200;
/// The window of [`STREAM_API_REQUESTS`].
pub(crate) const STREAM_API_WINDOW: Duration = Duration::from_secs(300);

/// The limiter; time is passed in, so it is tested without waiting.
pub(crate) struct RateLimits {
    window: Duration,
    interval: Duration,
    /// Per device: the "theoretical arrival time" of its next URL.
    next: Mutex<HashMap<String, Instant>>,
}

impl RateLimits {
    /// A limit of `per_hour` URLs per device (at least 1).
    pub(crate) fn new(per_hour: u32) -> Self {
        Self::per_window(per_hour, WINDOW)
    }

    /// A limit of `n` per `window` (at least 1).
    pub(crate) fn per_window(n: u32, window: Duration) -> Self {
        Self {
            window,
            interval: window / n.max(1),
            next: Mutex::new(HashMap::new()),
        }
    }

    /// Gives back one taken by [`RateLimits::take`] that was not used.
    pub(crate) fn refund(&self, key: &str) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = next.get_mut(key) {
            if let Some(earlier) = t.checked_sub(self.interval) {
                *t = earlier;
            }
        }
    }

    /// Takes one URL for `device` at `now`; `Err(wait)` when it must wait that long first.
    pub(crate) fn take(&self, device: &str, now: Instant) -> Result<(), Duration> {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let tat = next.get(device).copied().unwrap_or(now).max(now);
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > self.window {
            return Err(ahead - self.window);
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
    fn a_refund_gives_back_exactly_one() {
        let l = RateLimits::new(2);
        let t0 = crate::clock::SystemClock.now();
        assert!(l.take("cam", t0).is_ok());
        assert!(l.take("cam", t0).is_ok());
        assert!(l.take("cam", t0).is_err());
        l.refund("cam");
        assert!(l.take("cam", t0).is_ok(), "the refunded one");
        assert_eq!(l.take("cam", t0), Err(Duration::from_secs(1800)));
        l.refund("unknown"); // nothing to give back
    }

    #[test]
    fn streams_account_limit_is_1200_per_5_minutes() {
        let l = RateLimits::per_window(STREAM_API_REQUESTS, STREAM_API_WINDOW);
        let t0 = crate::clock::SystemClock.now();
        for _ in 0..1200 {
            assert!(l.take("", t0).is_ok());
        }
        assert_eq!(l.take("", t0), Err(Duration::from_millis(250)));
        assert!(l.take("", t0 + Duration::from_millis(250)).is_ok());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(1200)), 1200);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
