//! Log lines for events that can come in floods (refused connections): the first one at once,
//! then at most one line per interval, carrying how many happened since the last line.
//!
//! A client that makes 35,000 refused requests a second must not fill the journal (whose own
//! rate limit would then drop the lines that matter). Time is passed in, so it is tested
//! without waiting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a flooding event is logged.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of event's count since its last log line.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_line: Option<Instant>,
    since_line: u64,
}

impl Tally {
    /// Counts one event at `now`; `Some(n)` when a line is due now, for `n` events (this one
    /// included) since the last line.
    pub(crate) fn note(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.since_line += 1;
        let due = s
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= INTERVAL);
        if !due {
            return None;
        }
        s.last_line = Some(now);
        Some(std::mem::take(&mut s.since_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock as _, SystemClock};

    #[test]
    fn one_line_per_interval_with_the_count() {
        let t = Tally::default();
        let t0 = SystemClock.now();
        assert_eq!(t.note(t0), Some(1), "the first one at once");
        for i in 1..1000 {
            assert_eq!(t.note(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.note(t0 + INTERVAL), Some(1000));
        assert_eq!(t.note(t0 + INTERVAL + Duration::from_secs(1)), None);
        assert_eq!(t.note(t0 + INTERVAL * 3), Some(2));
    }
}
