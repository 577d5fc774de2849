//! The daemon's gate: the field policies (upload windows, network interfaces, a condition
//! command) and the rate limits, judged before steps are handed out.
//!
//! Key idea: each [`Policy`] says open or closed (and why) and may ask for a rate; the gate
//! combines them and tells the scheduler core only when the answer changes
//! ([`Input::Gate`]): closed holds every upload as a pause does, and the core's interrupt
//! cuts a request in flight, which later resumes from the server's offset. The rate that
//! applies is `ferry limit`'s override when one is set, else the lowest of
//! `upload.rate_limit` and every open policy's rate; it is set on the one limiter all uploads
//! share, and the transport is told each upload's share (so its slow-body bound allows for our
//! own pacing).

use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::policy::{Policy, Verdict};
use crate::progress::human_bytes;
use crate::ratelimit::{self, RateLimiter};

use super::schedule::Input;
use super::Main;

/// The policies, their last verdicts and the rates.
pub(crate) struct Gate {
    policies: Vec<Box<dyn Policy>>,
    verdicts: Vec<Verdict>,
    /// `upload.rate_limit`.
    configured: Option<u64>,
    /// `ferry limit`'s override (`Some(None)`: no limit), from the state directory.
    overridden: Option<Option<u64>>,
    /// The limiter every upload takes its bytes from.
    limiter: Arc<RateLimiter>,
}

/// The rate that applies now and what set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateNow {
    /// Bytes per second; `None`: no limit.
    pub bytes_per_sec: Option<u64>,
    /// `ferry limit`, `upload.rate_limit` or a policy's name.
    pub by: &'static str,
}

impl Gate {
    /// A gate over `policies`, with the configured rate (`upload.rate_limit`) on `limiter`.
    pub(crate) fn new(
        policies: Vec<Box<dyn Policy>>,
        configured: Option<u64>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        Self {
            verdicts: vec![Verdict::open(); policies.len()],
            policies,
            configured,
            overridden: None,
            limiter,
        }
    }

    /// Asks every policy; returns why uploads must wait (`None`: they may go).
    fn judge(&mut self, now: Instant, wall: std::time::SystemTime) -> Option<String> {
        for (p, v) in self.policies.iter_mut().zip(self.verdicts.iter_mut()) {
            *v = p.check(now, wall);
        }
        let closed: Vec<&str> = self
            .verdicts
            .iter()
            .filter_map(|v| v.closed.as_deref())
            .collect();
        (!closed.is_empty()).then(|| closed.join("; "))
    }

    /// The rate that applies now.
    pub(crate) fn rate(&self) -> RateNow {
        if let Some(rate) = self.overridden {
            return RateNow {
                bytes_per_sec: rate,
                by: "ferry limit",
            };
        }
        let mut now = RateNow {
            bytes_per_sec: self.configured,
            by: "upload.rate_limit",
        };
        for (p, v) in self.policies.iter().zip(&self.verdicts) {
            if let Some(r) = v.rate_limit {
                if now.bytes_per_sec.is_none_or(|n| r < n) {
                    now = RateNow {
                        bytes_per_sec: Some(r),
                        by: p.name(),
                    };
                }
            }
        }
        now
    }

    /// The policies' notes for the status (a condition command's output), by name.
    pub(crate) fn notes(&self) -> Vec<String> {
        self.policies
            .iter()
            .zip(&self.verdicts)
            .filter_map(|(p, v)| v.note.as_ref().map(|n| format!("{}: {n}", p.name())))
            .collect()
    }

    /// The earliest recheck a policy asked for after `now`.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        self.verdicts
            .iter()
            .filter_map(|v| v.recheck_at)
            .filter(|t| *t > now)
            .min()
    }

    /// New policies (a reload) and the configured rate; the override stays.
    pub(crate) fn replace(&mut self, policies: Vec<Box<dyn Policy>>, configured: Option<u64>) {
        self.verdicts = vec![Verdict::open(); policies.len()];
        self.policies = policies;
        self.configured = configured;
    }
}

impl Main<'_, '_> {
    /// Asks the policies (before steps are handed out, at their rechecks, after network
    /// changes); tells the core when the answer changed, and applies the rate.
    pub(super) fn check_gate(&mut self) -> Result<()> {
        let (now, wall) = (self.parts.clock.now(), self.parts.clock.wall());
        let closed = self.gate.judge(now, wall);
        if closed.as_deref() != self.core.gate() {
            match &closed {
                Some(why) => log::info!("uploads held: {why}"),
                None => log::info!("uploads may go again"),
            }
            self.tell(Input::Gate(closed))?;
            self.status_soon();
        }
        self.apply_rate();
        Ok(())
    }

    /// Reads `ferry limit`'s override from the state directory (at start, and when the file
    /// changes); a damaged file keeps the configured rates and is reported.
    pub(super) fn check_limit_override(&mut self) {
        match ratelimit::read_override(self.parts.state_dir) {
            Ok(o) => self.gate.overridden = o,
            Err(e) => {
                log::error!("ignoring the rate set by `ferry limit`: {e}");
                self.gate.overridden = None;
            }
        }
        self.apply_rate();
    }

    /// The rate limit in force, for the status.
    pub(super) fn gate_rate(&self) -> Option<crate::status::RateLimitStatus> {
        let rate = self.gate.rate();
        rate.bytes_per_sec
            .map(|bytes_per_sec| crate::status::RateLimitStatus {
                bytes_per_sec,
                by: rate.by.to_string(),
            })
    }

    /// The policies' notes, for the status.
    pub(super) fn gate_notes(&self) -> Vec<String> {
        self.gate.notes()
    }

    /// Sets the limiter to the rate that applies now, and tells the transport each upload's
    /// share; logs a change.
    fn apply_rate(&mut self) {
        let rate = self.gate.rate();
        if rate.bytes_per_sec == self.gate.limiter.rate() {
            return;
        }
        self.gate.limiter.set(rate.bytes_per_sec);
        let workers = u64::try_from(self.settings.concurrency).unwrap_or(1).max(1);
        self.parts
            .transport
            .pace(rate.bytes_per_sec.map(|r| (r / workers).max(1)));
        match rate.bytes_per_sec {
            Some(r) => log::info!("upload rate limit now {}/s ({})", human_bytes(r), rate.by),
            None => log::info!("upload rate limit now none ({})", rate.by),
        }
        self.status_soon();
    }
}
