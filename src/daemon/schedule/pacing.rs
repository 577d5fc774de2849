//! How long the link and the endpoint are left alone after they fail.
//!
//! Key idea: a link that gives no answer is probed by one step at a time, after a delay that
//! doubles from 1 s to a short cap (15 s) with jitter, so that a link that came back is used
//! within seconds; an endpoint that refuses creations holds them 30 s doubling to 5 minutes.
//! Neither waits longer than the retry policy's own longest delay.

use std::time::{Duration, Instant};

use crate::backoff::doubling;

use super::{Hold, Link, Schedule};

/// The first delay after the link failed; it doubles per failed probe up to [`LINK_PROBE_MAX`].
pub(super) const LINK_PROBE_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two probes of a link that gives no answer: short, so that a link
/// that came back is used within seconds.
pub(crate) const LINK_PROBE_MAX: Duration = Duration::from_secs(15);
/// The first hold of creations after the endpoint refused one; doubles up to [`HOLD_MAX`].
pub(super) const HOLD_FIRST: Duration = Duration::from_secs(30);
/// The longest hold of creations.
pub(super) const HOLD_MAX: Duration = Duration::from_secs(300);

/// How long the link and the endpoint are left alone after they fail: each doubles from its
/// first delay up to its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pacing {
    /// First wait before probing a link that gave no answer.
    pub link_first: Duration,
    /// Longest wait between link probes.
    pub link_max: Duration,
    /// First hold of creations after the endpoint refused one.
    pub hold_first: Duration,
    /// Longest hold of creations.
    pub hold_max: Duration,
}

impl Pacing {
    /// The defaults (1 s to 15 s for the link, 30 s to 5 min for the endpoint), shortened
    /// where the retry policy's longest delay is shorter: nothing waits longer than a file's
    /// own backoff would.
    pub(crate) fn within(max_delay: Duration) -> Self {
        let max_delay = max_delay.max(Duration::from_millis(10));
        Self {
            link_first: LINK_PROBE_FIRST.min(max_delay),
            link_max: LINK_PROBE_MAX.min(max_delay),
            hold_first: HOLD_FIRST.min(max_delay),
            hold_max: HOLD_MAX.max(max_delay),
        }
    }
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            link_first: LINK_PROBE_FIRST,
            link_max: LINK_PROBE_MAX,
            hold_first: HOLD_FIRST,
            hold_max: HOLD_MAX,
        }
    }
}

impl Schedule {
    pub(super) fn link_failed(&mut self, why: String, now: Instant) {
        let failures = match &self.link {
            // A step that was in flight when the link went down: not a probe of its own.
            Link::Down { probe_at, .. } if now < *probe_at => return,
            Link::Down { failures, .. } => failures + 1,
            Link::Up => 1,
        };
        let ceiling = doubling(self.pacing.link_first, failures, self.pacing.link_max);
        // Full jitter between half and all of the ceiling: devices that lost the same cell
        // do not probe in step.
        let delay = ceiling.mul_f64(0.5 + 0.5 * self.jitter.next_unit());
        self.link = Link::Down {
            failures,
            probe_at: now + delay,
            why,
            refused: false,
        };
    }

    /// The server answered, but not as the settings expect (TLS refused, a plain-HTTP port at
    /// an `https://` URL): every upload is held like a refused endpoint.
    pub(super) fn link_refused(&mut self, why: String, now: Instant) {
        let failures = match &self.link {
            // Several files refused at once count as one refusal.
            Link::Down { probe_at, .. } if now < *probe_at => return,
            Link::Down {
                failures,
                refused: true,
                ..
            } => failures + 1,
            _ => 1,
        };
        let wait = doubling(self.pacing.hold_first, failures, self.pacing.hold_max);
        self.link = Link::Down {
            failures,
            probe_at: now + wait,
            why,
            refused: true,
        };
    }

    pub(super) fn endpoint_refused(&mut self, status: u16, message: String, now: Instant) {
        // Several files refused at once count as one refusal.
        if self.hold.as_ref().is_some_and(|h| now < h.until) {
            return;
        }
        let failures = self.hold.as_ref().map_or(0, |h| h.failures) + 1;
        let wait = doubling(self.pacing.hold_first, failures, self.pacing.hold_max);
        self.hold = Some(Hold {
            failures,
            until: now + wait,
            status,
            message,
            probe: None,
        });
        // An answer came: the link itself works.
        self.link = Link::Up;
    }
}
