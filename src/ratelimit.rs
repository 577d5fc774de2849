//! An upload rate limit shared by all uploads (a token bucket), so ferry can share a link.
//!
//! Key idea: one limiter serves every upload of the process, and its rate can change while
//! uploads run (an upload window with its own rate opens, `ferry limit` is given): the daemon
//! sets it, the bodies' reads take their bytes from it. `None` means no limit: a read takes
//! nothing and never waits.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// The file in the state directory that holds `ferry limit`'s rate, which overrides the
/// configured ones (`upload.rate_limit`, upload windows') until `ferry limit off` removes it;
/// like the pause marker, it survives restarts.
pub(crate) const LIMIT_FILE: &str = "rate-limit";

/// The text [`LIMIT_FILE`] holds for `rate` (`None`: no limit).
pub(crate) fn override_text(rate: Option<u64>) -> String {
    let value = rate.map_or_else(|| "unlimited".to_string(), |r| r.to_string());
    format!("{value}\n# bytes per second for all uploads, set by `ferry limit`; `ferry limit off` removes this file\n")
}

/// `ferry limit`'s override in `state_dir`: `None` when there is none, `Some(None)` for "no
/// limit". An unreadable or damaged file is an error naming it (the caller keeps the
/// configured rates and says so).
pub(crate) fn read_override(state_dir: &Path) -> Result<Option<Option<u64>>, String> {
    let path = state_dir.join(LIMIT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let first = text.lines().next().unwrap_or("").trim();
    if first == "unlimited" {
        return Ok(Some(None));
    }
    match first.parse::<u64>() {
        Ok(0) => Ok(Some(None)),
        Ok(n) => Ok(Some(Some(n))),
        Err(_) => Err(format!(
            "{}: {first:?} is not a rate in bytes per second; set it again with `ferry limit RATE` or remove it with `ferry limit off`",
            path.display()
        )),
    }
}

/// Bytes per second for everything that asks, with a burst of a quarter second.
pub(crate) struct RateLimiter {
    clock: Arc<dyn Clock>,
    state: Mutex<Bucket>,
    never: AtomicBool,
}

#[derive(Debug)]
struct Bucket {
    /// The rate; `None`: unlimited.
    rate: Option<u64>,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Bytes that may go now (negative: owed).
    tokens: f64,
}

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (at least 1; `None`: unlimited until [`Self::set`]).
    pub(crate) fn new(bytes_per_sec: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now();
        Self {
            clock,
            state: Mutex::new(Bucket {
                rate: bytes_per_sec.map(|r| r.max(1)),
                at: now,
                tokens: 0.0,
            }),
            never: AtomicBool::new(false),
        }
    }

    /// Changes the rate for the bytes still to go (`None`: unlimited).
    pub(crate) fn set(&self, bytes_per_sec: Option<u64>) {
        let mut st = self.lock();
        let now = self.clock.now();
        refill(&mut st, now);
        st.rate = bytes_per_sec.map(|r| r.max(1));
        // A debt owed at the old rate would be paid at the new one: forget it, and any burst.
        st.tokens = 0.0;
    }

    /// The rate now (`None`: unlimited).
    pub(crate) fn rate(&self) -> Option<u64> {
        self.lock().rate
    }

    /// The most bytes one read should ask for, so that waits stay short.
    pub(crate) fn max_read(&self) -> usize {
        match self.lock().rate {
            Some(r) => usize::try_from(r / 8)
                .unwrap_or(usize::MAX)
                .clamp(512, 64 * 1024),
            None => usize::MAX,
        }
    }

    /// Takes `n` bytes of allowance, sleeping until they are available.
    pub(crate) fn take(&self, n: usize) {
        let wait = {
            let mut st = self.lock();
            let now = self.clock.now();
            refill(&mut st, now);
            let Some(rate) = st.rate else {
                return;
            };
            st.tokens -= n as f64;
            if st.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-st.tokens / rate as f64)
            }
        };
        if !wait.is_zero() {
            self.clock.sleep(wait, &self.never);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Adds what the time since the last update allows, capped at a quarter second of burst.
fn refill(st: &mut Bucket, now: Instant) {
    let elapsed = now.saturating_duration_since(st.at).as_secs_f64();
    st.at = now;
    if let Some(rate) = st.rate {
        let rate = rate as f64;
        st.tokens = (st.tokens + elapsed * rate).min(rate / 4.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn limiter(rate: Option<u64>) -> (Arc<ManualClock>, RateLimiter) {
        let clock = Arc::new(ManualClock::new(std::time::SystemTime::UNIX_EPOCH));
        let l = RateLimiter::new(rate, clock.clone());
        (clock, l)
    }

    #[test]
    fn holds_the_average_rate() {
        let (clock, l) = limiter(Some(100_000));
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

    #[test]
    fn unlimited_never_waits_and_reads_are_not_cut() {
        let (clock, l) = limiter(None);
        for _ in 0..100 {
            l.take(1 << 20);
        }
        assert!(clock.sleeps().is_empty());
        assert_eq!(l.max_read(), usize::MAX);
        assert_eq!(l.rate(), None);
    }

    #[test]
    fn the_override_file_reads_back_what_was_written() {
        let dir = std::env::temp_dir().join(format!("ferry-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_override(&dir), Ok(None));
        for rate in [Some(524_288), None] {
            std::fs::write(dir.join(LIMIT_FILE), override_text(rate)).unwrap();
            assert_eq!(read_override(&dir), Ok(Some(rate)));
        }
        std::fs::write(dir.join(LIMIT_FILE), "fast\n").unwrap();
        let e = read_override(&dir).unwrap_err();
        assert!(
            e.contains("\"fast\" is not a rate") && e.contains("ferry limit off"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_new_rate_applies_to_the_bytes_still_to_go() {
        let (clock, l) = limiter(Some(100_000));
        for _ in 0..10 {
            l.take(10_000);
        }
        let at_first: Duration = clock.sleeps().iter().sum();
        l.set(Some(10_000));
        assert_eq!(l.rate(), Some(10_000));
        for _ in 0..10 {
            l.take(1_000);
        }
        let slept: Duration = clock.sleeps().iter().sum::<Duration>() - at_first;
        // 10,000 bytes at 10,000 B/s: 1 s (no burst carried over from the faster rate).
        assert!(
            slept >= Duration::from_millis(990) && slept <= Duration::from_millis(1_010),
            "{slept:?}"
        );
        l.set(None);
        let before = clock.sleeps().len();
        l.take(1 << 30);
        assert_eq!(clock.sleeps().len(), before, "unlimited again: no wait");
    }
}
