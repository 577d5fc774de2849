//! Spool limits (`spool.max_bytes`, `spool.min_free`, `spool.max_age`, `spool.on_full`): when
//! the spool is over them, and which waiting files to evict.
//!
//! Key idea: [`plan`] is pure. Given the files waiting to be uploaded (size, mtime, and
//! whether they are busy: a step running, a finish running, still being written), the spool's
//! file system (free and total bytes), the limits and `now`, it says which limits are exceeded,
//! which files to evict and why, and which limits stay exceeded after that. With
//! `on_full = "keep"` it evicts nothing; with `"delete-oldest"` every idle file past `max_age`
//! goes, then the oldest idle files until the waiting bytes fit `max_bytes` and the free space
//! (counting what each deletion frees) reaches `min_free`. A busy file is never evicted; when
//! only busy files are left, the limit stays exceeded (the caller warns, it does not loop).
//! Ties in age are broken by name, so a plan is the same on every run.
//!
//! The plan needs only the oldest waiting files listed: eviction takes files oldest first, and
//! the rest count by their bytes. [`OldestWaiting`] collects what a walk of the spool finds
//! that way, so a check's memory does not grow with the spool.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// What the spool may hold; every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SpoolLimits {
    /// Waiting files may total at most this many bytes.
    pub max_bytes: Option<u64>,
    /// The spool's file system must keep at least this much free.
    pub min_free: Option<MinFree>,
    /// A waiting file may be at most this old (by mtime).
    pub max_age: Option<Duration>,
    /// What to do when a limit is exceeded.
    pub on_full: OnFull,
}

impl SpoolLimits {
    /// True when any limit is set.
    pub(crate) fn any(&self) -> bool {
        self.max_bytes.is_some() || self.min_free.is_some() || self.max_age.is_some()
    }
}

/// `spool.min_free`: bytes, or a percentage of the file system's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MinFree {
    /// At least this many bytes free.
    Bytes(u64),
    /// At least this percentage (1 to 99) of the file system free.
    Percent(u8),
}

impl MinFree {
    /// The free bytes required on a file system of `total` bytes.
    pub(crate) fn bytes(self, total: u64) -> u64 {
        match self {
            Self::Bytes(n) => n,
            Self::Percent(p) => {
                u64::try_from(u128::from(total) * u128::from(p) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

/// `spool.on_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum OnFull {
    /// Delete nothing; warn and say so in `ferry status`.
    #[default]
    Keep,
    /// Evict the oldest waiting files until under the limits.
    DeleteOldest,
}

/// Which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Limit {
    /// `spool.max_age`.
    MaxAge,
    /// `spool.max_bytes`.
    MaxBytes,
    /// `spool.min_free`.
    MinFree,
}

impl Limit {
    /// The config key.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::MaxAge => "spool.max_age",
            Self::MaxBytes => "spool.max_bytes",
            Self::MinFree => "spool.min_free",
        }
    }
}

/// A file waiting to be uploaded, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting<K> {
    /// Which file (its order breaks ties in age).
    pub key: K,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time.
    pub mtime: SystemTime,
    /// A step or finish of it runs, or it is still being written: never evicted.
    pub busy: bool,
}

/// The waiting files as a walk finds them: the `cap` oldest kept whole (by age, then key), the
/// younger rest only counted.
#[derive(Debug)]
pub(crate) struct OldestWaiting<K> {
    cap: usize,
    listed: BTreeMap<(SystemTime, K), Waiting<K>>,
    /// Waiting files left out of the list, all younger than every listed one.
    pub unlisted_files: u64,
    /// Their bytes.
    pub unlisted_bytes: u64,
    unlisted_oldest: Option<SystemTime>,
}

impl<K: Clone + Ord> OldestWaiting<K> {
    /// Lists at most `cap` files (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            listed: BTreeMap::new(),
            unlisted_files: 0,
            unlisted_bytes: 0,
            unlisted_oldest: None,
        }
    }

    /// One more waiting file; returns the key of the file that this left out of the list
    /// (it, or the youngest listed so far), if any.
    pub(crate) fn add(&mut self, w: Waiting<K>) -> Option<K> {
        self.listed.insert((w.mtime, w.key.clone()), w);
        if self.listed.len() <= self.cap {
            return None;
        }
        let (_, out) = self.listed.pop_last()?;
        self.unlisted_files += 1;
        self.unlisted_bytes += out.size;
        self.unlisted_oldest = Some(self.unlisted_oldest.map_or(out.mtime, |o| o.min(out.mtime)));
        Some(out.key)
    }

    /// The listed files, oldest first, and the unlisted ones' oldest mtime.
    pub(crate) fn into_listed(self) -> (Vec<Waiting<K>>, Option<SystemTime>) {
        (self.listed.into_values().collect(), self.unlisted_oldest)
    }
}

/// The spool's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsSpace {
    /// Bytes available to ferry (`f_bavail * f_frsize`).
    pub free: u64,
    /// The file system's size (`f_blocks * f_frsize`).
    pub total: u64,
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan<K> {
    /// The limits exceeded before any eviction.
    pub over: Vec<Limit>,
    /// The files to evict, oldest first, each with the limit that evicts it.
    pub evict: Vec<(K, Limit)>,
    /// The limits still exceeded once those are gone (`keep`, or only busy files left).
    pub unmet: Vec<Limit>,
}

/// Decides which waiting files to evict (see the module doc). `files` are the oldest waiting
/// files; `unlisted_bytes` the bytes of the others, every one younger than all of `files`.
pub(crate) fn plan<K: Clone + Ord>(
    files: &[Waiting<K>],
    unlisted_bytes: u64,
    fs: Option<FsSpace>,
    limits: &SpoolLimits,
    now: SystemTime,
) -> Plan<K> {
    let mut order: Vec<&Waiting<K>> = files.iter().collect();
    order.sort_by(|a, b| (a.mtime, &a.key).cmp(&(b.mtime, &b.key)));
    let too_old = |f: &Waiting<K>| {
        limits
            .max_age
            .is_some_and(|max| now.duration_since(f.mtime).unwrap_or(Duration::ZERO) > max)
    };
    let need_free = limits
        .min_free
        .zip(fs)
        .map(|(m, fs)| (m.bytes(fs.total), fs.free));
    let mut waiting: u64 = files.iter().map(|f| f.size).sum::<u64>() + unlisted_bytes;
    let mut free = need_free.map_or(0, |(_, free)| free);
    let exceeded = |waiting: u64, free: u64, old: bool| {
        let mut v = Vec::new();
        if old {
            v.push(Limit::MaxAge);
        }
        if limits.max_bytes.is_some_and(|max| waiting > max) {
            v.push(Limit::MaxBytes);
        }
        if need_free.is_some_and(|(need, _)| free < need) {
            v.push(Limit::MinFree);
        }
        v
    };
    let over = exceeded(waiting, free, order.iter().any(|f| too_old(f)));
    let mut evict = Vec::new();
    if limits.on_full == OnFull::DeleteOldest {
        let mut kept = Vec::new();
        for f in order {
            let why = if f.busy {
                None
            } else if too_old(f) {
                Some(Limit::MaxAge)
            } else {
                exceeded(waiting, free, false).first().copied()
            };
            match why {
                Some(limit) => {
                    waiting -= f.size;
                    free = free.saturating_add(f.size);
                    evict.push((f.key.clone(), limit));
                }
                None => kept.push(f),
            }
        }
        order = kept;
    }
    let unmet = exceeded(waiting, free, order.iter().any(|f| too_old(f)));
    Plan { over, evict, unmet }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const NOW: u64 = 1_000_000;

    fn file(key: &'static str, size: u64, age_secs: u64, busy: bool) -> Waiting<&'static str> {
        Waiting {
            key,
            size,
            mtime: UNIX_EPOCH + Duration::from_secs(NOW - age_secs),
            busy,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn evicting(
        max_bytes: Option<u64>,
        min_free: Option<MinFree>,
        max_age: Option<u64>,
    ) -> SpoolLimits {
        SpoolLimits {
            max_bytes,
            min_free,
            max_age: max_age.map(Duration::from_secs),
            on_full: OnFull::DeleteOldest,
        }
    }

    fn keys(p: &Plan<&'static str>) -> Vec<(&'static str, Limit)> {
        p.evict.clone()
    }

    #[test]
    fn nothing_to_evict_under_the_limits_or_without_limits() {
        let files = [file("a", 100, 50, false), file("b", 100, 10, false)];
        let fs = Some(FsSpace {
            free: 1000,
            total: 10_000,
        });
        let p = plan(
            &files,
            0,
            fs,
            &evicting(Some(200), Some(MinFree::Bytes(1000)), Some(60)),
            now(),
        );
        assert_eq!(
            p,
            Plan {
                over: vec![],
                evict: vec![],
                unmet: vec![]
            }
        );
        let p = plan(&files, 0, fs, &SpoolLimits::default(), now());
        assert_eq!(
            p,
            Plan {
                over: vec![],
                evict: vec![],
                unmet: vec![]
            }
        );
        let p = plan::<&str>(&[], 0, fs, &evicting(Some(0), None, Some(0)), now());
        assert_eq!(
            p,
            Plan {
                over: vec![],
                evict: vec![],
                unmet: vec![]
            }
        );
    }

    #[test]
    fn max_bytes_evicts_the_oldest_until_the_rest_fits() {
        let files = [
            file("new", 100, 1, false),
            file("old", 100, 30, false),
            file("mid", 100, 20, false),
        ];
        // 300 waiting, 150 allowed: the two oldest go (after the first, 200 > 150 still).
        let p = plan(&files, 0, None, &evicting(Some(150), None, None), now());
        assert_eq!(
            keys(&p),
            [("old", Limit::MaxBytes), ("mid", Limit::MaxBytes)]
        );
        assert_eq!((p.over, p.unmet), (vec![Limit::MaxBytes], vec![]));
        // Exactly at the limit is not over it.
        let p = plan(&files, 0, None, &evicting(Some(200), None, None), now());
        assert_eq!(keys(&p), [("old", Limit::MaxBytes)]);
    }

    #[test]
    fn ties_in_age_go_by_name() {
        let files = [
            file("c", 10, 5, false),
            file("a", 10, 5, false),
            file("b", 10, 5, false),
        ];
        let p = plan(&files, 0, None, &evicting(Some(15), None, None), now());
        assert_eq!(keys(&p), [("a", Limit::MaxBytes), ("b", Limit::MaxBytes)]);
    }

    #[test]
    fn a_busy_file_is_never_evicted_and_the_next_oldest_goes_instead() {
        let files = [
            file("uploading", 500, 100, true),
            file("older", 100, 50, false),
            file("newer", 100, 10, false),
        ];
        let p = plan(&files, 0, None, &evicting(Some(600), None, None), now());
        assert_eq!(keys(&p), [("older", Limit::MaxBytes)]);
        assert!(p.unmet.is_empty());
    }

    #[test]
    fn a_limit_only_busy_files_exceed_is_reported_unmet_not_looped_on() {
        let files = [
            file("uploading", 500, 100, true),
            file("idle", 100, 1, false),
        ];
        let p = plan(&files, 0, None, &evicting(Some(300), None, None), now());
        assert_eq!(keys(&p), [("idle", Limit::MaxBytes)]);
        assert_eq!(
            (p.over, p.unmet),
            (vec![Limit::MaxBytes], vec![Limit::MaxBytes])
        );
        // Only busy files: nothing to evict, still over.
        let files = [file("uploading", 500, 100, true)];
        let fs = Some(FsSpace {
            free: 10,
            total: 1000,
        });
        let p = plan(
            &files,
            0,
            fs,
            &evicting(None, Some(MinFree::Bytes(100)), Some(60)),
            now(),
        );
        assert!(p.evict.is_empty());
        assert_eq!(p.unmet, vec![Limit::MaxAge, Limit::MinFree]);
    }

    #[test]
    fn min_free_counts_the_space_each_deletion_frees() {
        let files = [
            file("a", 300, 40, false),
            file("b", 300, 30, false),
            file("c", 300, 20, false),
            file("d", 300, 10, false),
        ];
        // 100 free, 650 needed: a (400), b (700) are enough.
        let fs = Some(FsSpace {
            free: 100,
            total: 10_000,
        });
        let p = plan(
            &files,
            0,
            fs,
            &evicting(None, Some(MinFree::Bytes(650)), None),
            now(),
        );
        assert_eq!(keys(&p), [("a", Limit::MinFree), ("b", Limit::MinFree)]);
        assert!(p.unmet.is_empty());
        // 10% of 10_000 = 1000 needed: three files go, then 1000 >= 1000.
        let p = plan(
            &files,
            0,
            fs,
            &evicting(None, Some(MinFree::Percent(10)), None),
            now(),
        );
        assert_eq!(p.evict.len(), 3);
        // Free space eaten by other files: everything goes and it is still not enough.
        let p = plan(
            &files,
            0,
            fs,
            &evicting(None, Some(MinFree::Bytes(5000)), None),
            now(),
        );
        assert_eq!(p.evict.len(), 4);
        assert_eq!(p.unmet, vec![Limit::MinFree]);
        // Without a file system reading, min_free cannot be judged: nothing happens.
        let p = plan(
            &files,
            0,
            None,
            &evicting(None, Some(MinFree::Bytes(5000)), None),
            now(),
        );
        assert_eq!(
            p,
            Plan {
                over: vec![],
                evict: vec![],
                unmet: vec![]
            }
        );
    }

    #[test]
    fn max_age_evicts_every_file_past_it_then_size_takes_the_oldest_of_the_rest() {
        let files = [
            file("ancient", 10, 1000, false),
            file("old", 10, 700, false),
            file("young1", 100, 30, false),
            file("young2", 100, 20, false),
            file("young3", 100, 10, false),
        ];
        // Age alone: both past 600 s go, though bytes are within limits.
        let p = plan(
            &files,
            0,
            None,
            &evicting(Some(1000), None, Some(600)),
            now(),
        );
        assert_eq!(
            keys(&p),
            [("ancient", Limit::MaxAge), ("old", Limit::MaxAge)]
        );
        assert_eq!((p.over, p.unmet), (vec![Limit::MaxAge], vec![]));
        // Age and size: the old ones for age (which also frees 20 B), then the oldest young
        // one for size (300 > 250 after them).
        let p = plan(
            &files,
            0,
            None,
            &evicting(Some(250), None, Some(600)),
            now(),
        );
        assert_eq!(
            keys(&p),
            [
                ("ancient", Limit::MaxAge),
                ("old", Limit::MaxAge),
                ("young1", Limit::MaxBytes)
            ]
        );
        assert_eq!(p.over, vec![Limit::MaxAge, Limit::MaxBytes]);
        // A busy file past the age stays, and the limit stays exceeded.
        let files = [
            file("stepping", 10, 1000, true),
            file("young", 10, 1, false),
        ];
        let p = plan(&files, 0, None, &evicting(None, None, Some(600)), now());
        assert!(p.evict.is_empty());
        assert_eq!(p.unmet, vec![Limit::MaxAge]);
    }

    #[test]
    fn keep_evicts_nothing_and_reports_every_exceeded_limit() {
        let files = [file("a", 300, 1000, false), file("b", 300, 10, false)];
        let fs = Some(FsSpace {
            free: 10,
            total: 1000,
        });
        let limits = SpoolLimits {
            on_full: OnFull::Keep,
            ..evicting(Some(100), Some(MinFree::Percent(5)), Some(600))
        };
        let p = plan(&files, 0, fs, &limits, now());
        assert!(p.evict.is_empty());
        let all = vec![Limit::MaxAge, Limit::MaxBytes, Limit::MinFree];
        assert_eq!((p.over, p.unmet), (all.clone(), all));
    }

    #[test]
    fn an_mtime_in_the_future_is_not_old() {
        let files = [Waiting {
            key: "future",
            size: 1,
            mtime: now() + Duration::from_secs(3600),
            busy: false,
        }];
        let p = plan(&files, 0, None, &evicting(None, None, Some(1)), now());
        assert!(p.evict.is_empty() && p.over.is_empty());
    }

    #[test]
    fn a_walk_lists_the_oldest_files_and_counts_the_rest() {
        let mut w = OldestWaiting::new(2);
        // Out of order, with a tie in age broken by key.
        let left_out: Vec<_> = [
            file("young", 7, 10, false),
            file("old-b", 5, 90, false),
            file("mid", 3, 50, false),
            file("old-a", 2, 90, false),
            file("newest", 1, 1, false),
        ]
        .into_iter()
        .map(|f| w.add(f))
        .collect();
        assert_eq!(
            left_out,
            [None, None, Some("young"), Some("mid"), Some("newest")]
        );
        assert_eq!((w.unlisted_files, w.unlisted_bytes), (3, 3 + 7 + 1));
        let (listed, unlisted_oldest) = w.into_listed();
        let keys: Vec<_> = listed.iter().map(|f| f.key).collect();
        assert_eq!(keys, ["old-a", "old-b"]);
        assert_eq!(unlisted_oldest, Some(file("mid", 0, 50, false).mtime));
    }

    #[test]
    fn unlisted_bytes_count_towards_max_bytes_but_only_listed_files_go() {
        // 400 bytes waiting, 100 of them listed: over 250 by 150, and the listed files free
        // only 100 of that; the limit stays exceeded until the next check lists more.
        let files = [file("a", 60, 90, false), file("b", 40, 80, false)];
        let p = plan(&files, 300, None, &evicting(Some(250), None, None), now());
        assert_eq!(keys(&p), [("a", Limit::MaxBytes), ("b", Limit::MaxBytes)]);
        assert_eq!(p.unmet, [Limit::MaxBytes]);
        // Under the limit with the unlisted bytes counted: nothing goes.
        let p = plan(&files, 100, None, &evicting(Some(250), None, None), now());
        assert!(p.evict.is_empty() && p.over.is_empty());
    }

    #[test]
    fn percent_of_the_file_system() {
        assert_eq!(MinFree::Percent(10).bytes(1_000_000), 100_000);
        assert_eq!(
            u128::from(MinFree::Percent(99).bytes(u64::MAX)),
            u128::from(u64::MAX) * 99 / 100
        );
        assert_eq!(MinFree::Bytes(7).bytes(0), 7);
    }
}
