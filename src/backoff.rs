//! Retry policy, pure: how long to wait before attempt `n`, and when to give up.
//!
//! Exponential backoff with full jitter (delay = random in [0, min(cap, initial·2ⁿ⁻¹)]) so that
//! 500 devices that lost the same cell tower do not come back in lockstep. `Retry-After` from
//! the server wins over our own schedule. The caller owns the clock and the randomness: both are
//! arguments here, so the schedule is tested exactly.

use std::time::{Duration, SystemTime};

use crate::tus::httpdate;

/// The longest `Retry-After` we obey; a server asking for more gets this.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// When and how often to retry a transient failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Ceiling of the first delay.
    pub initial_delay: Duration,
    /// Cap of the delay ceiling.
    pub max_delay: Duration,
    /// Give up after this many consecutive failed attempts without progress (`None`: never).
    pub max_attempts: Option<u32>,
    /// Give up when no byte was confirmed for this long (`None`: never).
    pub give_up_after: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(120),
            max_attempts: None,
            give_up_after: None,
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Stop: the budget is spent.
    GiveUp,
}

/// `first` doubled per failure after the first (`failures` is 1-based), at most `max`.
pub(crate) fn doubling(first: Duration, failures: u32, max: Duration) -> Duration {
    let shift = failures.saturating_sub(1).min(31);
    first.checked_mul(1u32 << shift).map_or(max, |d| d.min(max))
}

impl RetryPolicy {
    /// The ceiling of the delay before retry number `attempt` (1-based).
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        doubling(self.initial_delay, attempt, self.max_delay)
    }

    /// Full-jitter delay before retry `attempt`; `jitter` is uniform in [0, 1).
    pub(crate) fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        self.ceiling(attempt).mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Decides after failed attempt number `attempt` (1-based, reset by progress).
    ///
    /// `stalled_for` is the time since the last confirmed byte (or since the start);
    /// `retry_after` is the server's wish, already parsed.
    pub(crate) fn decide(
        &self,
        attempt: u32,
        stalled_for: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Decision {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return Decision::GiveUp;
        }
        let wait = match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER),
            None => self.delay(attempt, jitter),
        };
        if self
            .give_up_after
            .is_some_and(|limit| stalled_for + wait > limit)
        {
            return Decision::GiveUp;
        }
        Decision::RetryAfter(wait)
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date relative to `now`. Past dates give zero.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse().unwrap_or(u64::MAX)).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse(v)?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// A small xorshift generator for jitter; seeded by the caller (no I/O here).
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    /// A generator from a seed (zero is replaced: xorshift must not start at zero).
    pub(crate) fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next value, uniform in [0, 1).
    pub(crate) fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            initial_delay: secs(1),
            max_delay: secs(60),
            ..Default::default()
        };
        let got: Vec<u64> = (1..=9).map(|n| p.ceiling(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.ceiling(0), secs(1));
        assert_eq!(
            p.ceiling(u32::MAX),
            secs(60),
            "no overflow at huge attempt counts"
        );
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(4, 0.0), Duration::ZERO);
        assert_eq!(p.delay(4, 0.5), secs(4));
        assert_eq!(p.delay(4, 1.0), secs(8));
        assert_eq!(p.delay(4, 7.0), secs(8), "jitter is clamped");
        let mut j = Jitter::new(42);
        for n in 1..200 {
            let d = p.delay(n, j.next_unit());
            assert!(d <= p.ceiling(n), "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn jitter_is_uniform_enough_and_in_range() {
        let mut j = Jitter::new(0);
        let xs: Vec<f64> = (0..10_000).map(|_| j.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
    }

    #[test]
    fn unlimited_by_default() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(1_000_000, secs(86_400 * 30), None, 0.5),
            Decision::RetryAfter(secs(60))
        );
    }

    #[test]
    fn gives_up_on_attempts_or_stall_time() {
        let p = RetryPolicy {
            max_attempts: Some(3),
            ..Default::default()
        };
        assert_eq!(
            p.decide(2, secs(0), None, 1.0),
            Decision::RetryAfter(secs(2))
        );
        assert_eq!(p.decide(3, secs(0), None, 1.0), Decision::GiveUp);
        let p = RetryPolicy {
            give_up_after: Some(secs(10)),
            ..Default::default()
        };
        assert_eq!(
            p.decide(1, secs(8), None, 1.0),
            Decision::RetryAfter(secs(1))
        );
        assert_eq!(
            p.decide(2, secs(9), None, 1.0),
            Decision::GiveUp,
            "9 s + 2 s wait > 10 s"
        );
    }

    #[test]
    fn retry_after_overrides_the_schedule_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.decide(1, secs(0), Some(secs(30)), 0.0),
            Decision::RetryAfter(secs(30))
        );
        assert_eq!(
            p.decide(1, secs(0), Some(secs(999_999)), 0.0),
            Decision::RetryAfter(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn parses_retry_after_in_both_formats() {
        let now = UNIX_EPOCH + secs(1_403_711_990);
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(secs(0)));
        assert_eq!(
            parse_retry_after("Wed, 25 Jun 2014 16:00:00 GMT", now),
            Some(secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Jun 2014 15:00:00 GMT", now),
            Some(secs(0))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
