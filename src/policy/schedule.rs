//! The upload windows as settings (`[[schedule.window]]`) and the pure question "which windows
//! are open at this local wall-clock reading?".
//!
//! Key idea: everything is judged on the *local wall-clock reading*, in seconds since
//! 1970-01-01 00:00 local (UTC plus the zone's offset at that instant). A window listed for a
//! day opens when the wall clock reads `from` on that day and closes when it reads `to`; a
//! window whose `to` is not after its `from` ends on the next day (it belongs to the day it
//! starts on), and `from == to` is a whole day (24 hours from `from`). So a 02:00-03:00
//! window is empty on the night the clock skips that hour, and open for two hours on the night
//! that hour is repeated: the tariff a window stands for follows the same wall clock.

/// Seconds in a day.
pub(crate) const DAY_SECS: i64 = 86_400;

/// Weekday names, Monday first (the bit order of [`Days`]).
pub(crate) const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A set of weekdays: bit 0 is Monday ... bit 6 Sunday.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Days(pub u8);

impl Days {
    /// Every day (`*`).
    pub(crate) const ALL: Days = Days(0x7f);

    /// Whether weekday `d` (0 = Monday) is in the set.
    pub(crate) fn has(self, d: usize) -> bool {
        d < 7 && self.0 & (1 << d) != 0
    }
}

/// One `[[schedule.window]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// The days it starts on.
    pub days: Days,
    /// Opening, seconds after local midnight.
    pub from_secs: u32,
    /// Closing, seconds after local midnight (on the next day when not after `from_secs`).
    pub to_secs: u32,
    /// Bytes per second for all uploads together while this window is open; `None`: no limit.
    pub rate_limit: Option<u64>,
}

/// What to do while the kernel says the clock is not synchronised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum UnsyncedClock {
    /// Hold uploads until it is (the default: a Pi without RTC boots at its last shutdown
    /// time, and a window judged by that would send at the wrong hour).
    #[default]
    Wait,
    /// Judge the windows by the clock as it is.
    Trust,
}

/// `[schedule]`: the windows (at least one: none means no policy at all), the zone they are in
/// and what an unsynchronised clock means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleSettings {
    /// The windows; uploads go while any is open.
    pub windows: Vec<Window>,
    /// `schedule.unsynced_clock`.
    pub unsynced_clock: UnsyncedClock,
    /// The local time zone (from `TZ` or /etc/localtime).
    pub zone: super::zone::Zone,
}

impl Window {
    /// How long it stays open, in seconds of wall-clock reading.
    fn len_secs(&self) -> i64 {
        let (from, to) = (i64::from(self.from_secs), i64::from(self.to_secs));
        if to > from {
            to - from
        } else {
            to + DAY_SECS - from
        }
    }

    /// Its opening reading on local day `day` (days since 1970-01-01), if it runs that day.
    fn start_on(&self, day: i64) -> Option<i64> {
        self.days
            .has(weekday(day))
            .then(|| day * DAY_SECS + i64::from(self.from_secs))
    }

    /// Whether it is open at the local reading `local`.
    fn is_open(&self, local: i64) -> bool {
        let today = local.div_euclid(DAY_SECS);
        // A window is at most a day long, so one that started yesterday may still be open.
        [today - 1, today].iter().any(|&d| {
            self.start_on(d)
                .is_some_and(|s| s <= local && local < s + self.len_secs())
        })
    }
}

/// The weekday of local day `day` (days since 1970-01-01, a Thursday), 0 = Monday.
pub(crate) fn weekday(day: i64) -> usize {
    // rem_euclid(7) is in 0..7, so the cast cannot truncate.
    (day + 3).rem_euclid(7) as usize
}

/// Whether any window is open at the local reading, and the rate while it is: `Some(None)`
/// open without limit (a window without `rate_limit` wins), `Some(Some(r))` the highest limit
/// among the open windows, `None` closed.
pub(crate) fn open_rate(windows: &[Window], local: i64) -> Option<Option<u64>> {
    let mut open = windows.iter().filter(|w| w.is_open(local)).peekable();
    open.peek()?;
    let mut best = Some(0);
    for w in open {
        best = match (best, w.rate_limit) {
            (Some(b), Some(r)) => Some(b.max(r)),
            _ => None,
        };
    }
    Some(best)
}

/// The first opening reading strictly after `local` (within the next 8 days), for the text
/// `until Mon 22:00`.
pub(crate) fn next_opening(windows: &[Window], local: i64) -> Option<i64> {
    let today = local.div_euclid(DAY_SECS);
    (today..=today + 8)
        .flat_map(|d| windows.iter().filter_map(move |w| w.start_on(d)))
        .filter(|&s| s > local)
        .min()
}

/// Every opening and closing reading in `(after, until]`: where the open state may change.
pub(crate) fn edges_between(windows: &[Window], after: i64, until: i64) -> Vec<i64> {
    let first = after.div_euclid(DAY_SECS) - 1;
    let last = until.div_euclid(DAY_SECS);
    let mut out: Vec<i64> = (first..=last)
        .flat_map(|d| {
            windows
                .iter()
                .filter_map(move |w| w.start_on(d).map(|s| (w, s)))
        })
        .flat_map(|(w, s)| [s, s + w.len_secs()])
        .filter(|&e| e > after && e <= until)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `Mon 22:00` (or `Mon 22:00:30` when the seconds are not zero) for a local reading.
pub(crate) fn format_local(local: i64) -> String {
    let day = local.div_euclid(DAY_SECS);
    let secs = local.rem_euclid(DAY_SECS);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let name = WEEKDAYS[weekday(day)];
    if s == 0 {
        format!("{name} {h:02}:{m:02}")
    } else {
        format!("{name} {h:02}:{m:02}:{s:02}")
    }
}
