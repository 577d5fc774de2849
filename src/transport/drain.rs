//! Waiting for an answer while the request's own bytes still drain through a slow link.
//!
//! Key idea: ureq starts `response_timeout` (and the per-read `idle_timeout`) when the last
//! `send` returned, that is when the kernel *took* the last body byte, not when the peer
//! acknowledged it. A send buffer of a few MiB holds many seconds of a slow uplink: through
//! 256 KiB/s with a 5 s `idle_timeout` every PATCH timed out while its data was still flowing,
//! and a server that drops a cut PATCH (rustus, Cloudflare Stream) then never completes. So
//! while bytes of the request are still unacknowledged, the wait is no timeout of the answer:
//! it is a watch on the link's progress, which ends with a timeout only when the
//! acknowledgements stop for `idle_timeout` (the kernel's `TCP_USER_TIMEOUT` does the same).
//! Once everything is acknowledged, ureq's deadline applies afresh, as if the request had just
//! been sent. ([`DrainWatch`] decides; the transport reads in slices and asks it.)
//!
//! What the kernel still holds comes from sock_diag ([`super::sockdiag`]); where netlink is not
//! allowed (a sandbox, qemu-user) it is estimated: what the send buffer can hold, shrinking at
//! the rate the body's last bytes were taken, which is the link's rate once the buffer is full.
//! With no such rate (a body that fit in the buffer at once), the estimate never shrinks and the
//! wait ends as it did before this watch: `idle_timeout` after the last byte was written.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use super::sockdiag::SockDiag;
use super::tcp::Socket;

/// How often the kernel is asked while a body drains (at most; less for a short idle timeout).
const MAX_LOOK: Duration = Duration::from_millis(500);
/// The shortest wait between two looks.
const MIN_LOOK: Duration = Duration::from_millis(20);

/// What the watch says after a look at the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Bytes are still draining: wait for the answer at most this long, then look again.
    Wait(Duration),
    /// Everything is acknowledged: wait for the answer as ureq says.
    Drained,
    /// No acknowledgement for `idle` while bytes are unacknowledged: the link stalled.
    Stalled,
}

/// The watch over one request's unacknowledged bytes (pure: times and counts are arguments).
#[derive(Debug)]
pub(super) struct DrainWatch {
    idle: Duration,
    /// Bytes held at the last look.
    held: u64,
    /// When `held` last shrank, or the watch began.
    progress: Instant,
}

impl DrainWatch {
    /// A watch that begins at `now` with `held` bytes unacknowledged.
    pub(super) fn new(now: Instant, held: u64, idle: Duration) -> Self {
        Self {
            idle,
            held,
            progress: now,
        }
    }

    /// The kernel holds `held` bytes at `now`: wait, stop watching, or give up.
    pub(super) fn look(&mut self, now: Instant, held: u64) -> Verdict {
        if held == 0 {
            return Verdict::Drained;
        }
        if held < self.held {
            self.progress = now;
        }
        self.held = held;
        let left = (self.progress + self.idle).saturating_duration_since(now);
        if left.is_zero() {
            return Verdict::Stalled;
        }
        Verdict::Wait(left.min((self.idle / 8).clamp(MIN_LOOK, MAX_LOOK)))
    }
}

/// How the body went into the socket: enough to estimate what is left where sock_diag is not
/// allowed.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyWrite {
    /// Bytes written by then, and when: the start of the body's last full-buffer stretch.
    pub(super) from: (u64, Instant),
    /// Bytes written at the end, and when.
    pub(super) to: (u64, Instant),
}

impl BodyWrite {
    /// Without sock_diag: what the kernel may still hold at `now`, at most `buffer` (its
    /// `SO_SNDBUF`), shrinking at the rate the bytes went in after the buffer first filled.
    pub(super) fn estimate(&self, buffer: u64, now: Instant) -> u64 {
        let written = self.to.0.saturating_sub(self.from.0);
        let full = buffer.min(written);
        let paced = written.saturating_sub(buffer);
        let took = self
            .to
            .1
            .saturating_duration_since(self.from.1)
            .as_secs_f64();
        if paced == 0 || took <= 0.0 {
            return full; // no rate known: never shrinks (the wait is as before the watch)
        }
        let rate = paced as f64 / took;
        let since = now.saturating_duration_since(self.to.1).as_secs_f64();
        full.saturating_sub((rate * since) as u64)
    }
}

thread_local! {
    /// The netlink socket this thread asks: not opened yet, open, or refused.
    static DIAG: RefCell<Option<Option<SockDiag>>> = const { RefCell::new(None) };
}

/// Bytes written to `socket` that the peer has not acknowledged, if the kernel says.
pub(super) fn unacked(socket: &Socket) -> Option<u64> {
    let (local, peer) = socket.ends()?;
    DIAG.with(|d| {
        let mut d = d.borrow_mut();
        let diag = d.get_or_insert_with(|| SockDiag::open().ok()).as_mut()?;
        diag.unacked(local, peer).ok().map(u64::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(
        clippy::disallowed_methods,
        reason = "a fixed origin for the arithmetic"
    )]
    fn t0() -> Instant {
        Instant::now()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_draining_body_keeps_the_wait_alive_while_acknowledgements_grow() {
        let t0 = t0();
        let mut w = DrainWatch::new(t0, 4_000_000, S(5));
        // 256 KiB/s: 16 s to drain 4 MB, far past the 5 s idle timeout, never stalled.
        for s in 1..16 {
            let held = 4_000_000 - s * 256_000;
            assert_eq!(
                w.look(t0 + S(s), held),
                Verdict::Wait(Duration::from_millis(500))
            );
        }
        assert_eq!(w.look(t0 + S(16), 0), Verdict::Drained);
    }

    #[test]
    fn acknowledgements_that_stop_for_the_idle_timeout_are_a_stall() {
        let t0 = t0();
        let mut w = DrainWatch::new(t0, 1000, S(5));
        assert_eq!(
            w.look(t0 + S(2), 900),
            Verdict::Wait(Duration::from_millis(500))
        );
        let at = t0 + Duration::from_millis(6800);
        let left = Duration::from_millis(200);
        assert_eq!(w.look(at, 900), Verdict::Wait(left), "idle counts from 2 s");
        assert_eq!(w.look(t0 + S(7), 900), Verdict::Stalled);
        let mut never = DrainWatch::new(t0, 1000, S(5));
        assert_eq!(never.look(t0 + S(5), 1000), Verdict::Stalled);
    }

    #[test]
    fn without_sock_diag_the_buffer_drains_at_the_rate_the_body_went_in() {
        let t0 = t0();
        // 3 MB written over 10 s into a 1 MB buffer: 200 kB/s once the buffer was full.
        let body = BodyWrite {
            from: (0, t0),
            to: (3_000_000, t0 + S(10)),
        };
        assert_eq!(body.estimate(1_000_000, t0 + S(10)), 1_000_000);
        assert_eq!(body.estimate(1_000_000, t0 + S(12)), 600_000);
        assert_eq!(body.estimate(1_000_000, t0 + S(15)), 0);
        // A body that fit in the buffer at once: no rate, the estimate never shrinks.
        let small = BodyWrite {
            from: (0, t0),
            to: (500_000, t0),
        };
        assert_eq!(small.estimate(1_000_000, t0 + S(60)), 500_000);
    }
}
