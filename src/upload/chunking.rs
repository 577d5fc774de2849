//! The chunk policy: how many bytes one PATCH carries when no chunk size is configured.
//!
//! Key idea: a chunk is a trade between round trips and what a cut costs, and what a cut costs
//! depends on the server. tusd and @tus/server keep the bytes of a cut PATCH, so a cut costs
//! nothing and long requests are best; rustus and Cloudflare Stream drop a cut PATCH whole, so
//! a chunk is what a cut may lose. Both are measured in seconds of the link's rate (what the
//! last PATCHes moved per second), so a chunk is as long in time on a 2 Mbit/s modem as on
//! loopback:
//! - **keeps** (learnt): [`KEEPS_SECS`] of the rate. Nothing bounds a chunk but the priority
//!   classes: a file of a higher class preempts at the end of the current request, so one
//!   request lasting more than ~30 s would hold an alarm back that long;
//! - **drops** (learnt, or Stream, whose rules are known): [`DROPS_SECS`] of the rate, the most
//!   one cut loses; one round trip per chunk is ≤ 6 % at 300 ms RTT;
//! - **unknown** (plain tus until its first cut): [`UNKNOWN_SECS`], between the two.
//!
//! Before a rate is measured the first chunk is [`START_BYTES`]. Chunks stay within
//! [[`FLOOR_BYTES`], ∞) and, for Stream, within its rules (5-200 MiB, multiples of 256 KiB).
//! A configured `chunk_size` bypasses all this, and a 413 still halves whatever was sent.
//!
//! What a server does with a cut PATCH is learnt from the HEAD after the cut ([`Cut::judge`]):
//! an offset past where the PATCH began and short of its end proves partial bytes were kept;
//! an unchanged offset after the peer acknowledged body bytes proves they were dropped.

use crate::stream::{STREAM_CHUNK_MULTIPLE, STREAM_MAX_CHUNK, STREAM_MIN_CHUNK};

/// The first chunk, before any rate is measured.
pub(super) const START_BYTES: u64 = 4 * 1024 * 1024;
/// The smallest chunk the policy chooses (a configured one may be smaller, down to 64 KiB).
pub(super) const FLOOR_BYTES: u64 = 256 * 1024;
/// Seconds of the link's rate per chunk when the server keeps a cut PATCH's bytes.
pub(super) const KEEPS_SECS: u64 = 30;
/// … when it drops them.
pub(super) const DROPS_SECS: u64 = 5;
/// … before a cut told which.
pub(super) const UNKNOWN_SECS: u64 = 10;

/// What a server does with the bytes of a PATCH that was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutHandling {
    /// Not known yet.
    Unknown,
    /// It keeps what arrived (tus's SHOULD: tusd, @tus/server).
    Keeps,
    /// It drops the whole PATCH (rustus, Cloudflare Stream).
    Drops,
}

impl CutHandling {
    /// Seconds of the link's rate one chunk may take.
    fn seconds(self) -> u64 {
        match self {
            CutHandling::Unknown => UNKNOWN_SECS,
            CutHandling::Keeps => KEEPS_SECS,
            CutHandling::Drops => DROPS_SECS,
        }
    }
}

/// The chunk for a server that handles cuts as `handling`, on a link moving `rate` bytes per
/// second (`None`: not measured yet), under Stream's rules or not.
pub(super) fn chunk_bytes(handling: CutHandling, rate: Option<f64>, stream_rules: bool) -> u64 {
    let want = rate.map_or(START_BYTES, |r| {
        let bytes = r * handling.seconds() as f64;
        if bytes >= u64::MAX as f64 {
            u64::MAX
        } else {
            bytes as u64
        }
    });
    if stream_rules {
        let within = want.clamp(STREAM_MIN_CHUNK, STREAM_MAX_CHUNK);
        within / STREAM_CHUNK_MULTIPLE * STREAM_CHUNK_MULTIPLE
    } else {
        want.max(FLOOR_BYTES)
    }
}

/// The link's rate as the last PATCHes measured it: a moving average, so one slow answer (a
/// server flushing to disk) does not halve the next chunk.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LinkRate {
    bytes_per_sec: Option<f64>,
}

impl LinkRate {
    /// Bytes per second, once measured.
    pub(super) fn get(&self) -> Option<f64> {
        self.bytes_per_sec
    }

    /// A PATCH moved `bytes` in `secs` (request sent to answer read).
    pub(super) fn record(&mut self, bytes: u64, secs: f64) {
        if bytes == 0 || secs <= 0.0 {
            return;
        }
        let sample = bytes as f64 / secs;
        self.bytes_per_sec = Some(match self.bytes_per_sec {
            None => sample,
            Some(old) => (old + sample) / 2.0,
        });
    }
}

/// A PATCH that got no answer: what the HEAD after it will tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cut {
    /// The offset the PATCH began at.
    pub(super) from: u64,
    /// Its length.
    pub(super) len: u64,
    /// Body bytes the peer acknowledged before the cut, as far as the kernel told.
    pub(super) acked: u64,
}

impl Cut {
    /// What the server's offset after the cut proves, if anything. A whole PATCH stored (its
    /// answer lost) proves nothing, and neither does an unchanged offset when no byte was
    /// acknowledged (the link died before any arrived).
    pub(super) fn judge(&self, offset: u64) -> Option<CutHandling> {
        if offset > self.from && offset < self.from + self.len {
            Some(CutHandling::Keeps)
        } else if offset == self.from && self.acked > 0 {
            Some(CutHandling::Drops)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn chunks_last_seconds_of_the_rate_by_what_a_cut_costs() {
        let loopback = Some(500.0 * MIB as f64);
        let cellular = Some(256.0 * 1024.0);
        assert_eq!(
            chunk_bytes(CutHandling::Keeps, cellular, false),
            30 * 256 * 1024
        );
        assert_eq!(
            chunk_bytes(CutHandling::Unknown, cellular, false),
            10 * 256 * 1024
        );
        assert_eq!(
            chunk_bytes(CutHandling::Drops, cellular, false),
            5 * 256 * 1024
        );
        let keeps = chunk_bytes(CutHandling::Keeps, loopback, false);
        assert_eq!(keeps, 15_000 * MIB, "a 1 GiB file goes in one PATCH");
        assert_eq!(chunk_bytes(CutHandling::Unknown, None, false), START_BYTES);
        assert_eq!(
            chunk_bytes(CutHandling::Drops, Some(1000.0), false),
            FLOOR_BYTES
        );
        assert_eq!(
            chunk_bytes(CutHandling::Keeps, Some(f64::MAX), false),
            u64::MAX
        );
    }

    #[test]
    fn stream_chunks_keep_streams_rules() {
        let check = |c: u64| c % STREAM_CHUNK_MULTIPLE == 0 && (5 * MIB..=200 * MIB).contains(&c);
        for rate in [None, Some(1.0), Some(1_234_567.0), Some(1e12)] {
            let c = chunk_bytes(CutHandling::Drops, rate, true);
            assert!(check(c), "{rate:?}: {c}");
        }
        assert_eq!(chunk_bytes(CutHandling::Drops, None, true), 5 * MIB);
        assert_eq!(chunk_bytes(CutHandling::Drops, Some(1e12), true), 200 * MIB);
        let r = Some(3.31 * MIB as f64); // 5 s: 16.55 MiB, down to a multiple of 256 KiB
        assert_eq!(
            chunk_bytes(CutHandling::Drops, r, true),
            16 * MIB + 512 * 1024
        );
    }

    #[test]
    fn the_rate_is_a_moving_average_of_answered_patches() {
        let mut r = LinkRate::default();
        assert_eq!(r.get(), None);
        r.record(0, 1.0);
        r.record(100, 0.0);
        assert_eq!(
            r.get(),
            None,
            "nothing moved, or no time measured: no sample"
        );
        r.record(1000, 1.0);
        r.record(3000, 1.0);
        assert_eq!(r.get(), Some(2000.0));
    }

    #[test]
    fn the_head_after_a_cut_tells_how_the_server_handles_cuts() {
        let cut = Cut {
            from: 100,
            len: 50,
            acked: 20,
        };
        assert_eq!(cut.judge(120), Some(CutHandling::Keeps));
        assert_eq!(cut.judge(100), Some(CutHandling::Drops));
        assert_eq!(
            cut.judge(150),
            None,
            "the whole PATCH arrived: its answer was lost"
        );
        let nothing_arrived = Cut { acked: 0, ..cut };
        assert_eq!(nothing_arrived.judge(100), None);
        assert_eq!(
            cut.judge(90),
            None,
            "the server lost bytes: not our question"
        );
    }
}
