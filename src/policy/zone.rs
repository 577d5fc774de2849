//! A time zone: the offset from UTC at any instant, built from a TZif file's bytes or a POSIX
//! TZ string. Nothing here reads a file or the environment (`config::zone` does).
//!
//! Key idea: the windows need only two things from a zone: the local wall-clock reading of an
//! instant (UTC plus the offset in force then) and where that offset changes. Parsing and the
//! rule arithmetic (TZif v1 to v3, the POSIX footer for instants past the file's table,
//! `M3.5.0/2` rules) are tz-rs's.

use tz::{TimeZone, TimeZoneSettings};

/// A parsed time zone and the name it was given by (for errors and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Zone {
    tz: TimeZone,
    /// Where it came from: `TZ=CET-1CEST,...`, `/etc/localtime`, `UTC`.
    pub name: String,
}

impl Zone {
    /// UTC (no `TZ` and no /etc/localtime: what the C library does too).
    pub(crate) fn utc() -> Self {
        Self {
            tz: TimeZone::utc(),
            name: "UTC".into(),
        }
    }

    /// From a POSIX TZ string such as `CET-1CEST,M3.5.0,M10.5.0/3`, `UTC0` or `<+0530>-5:30`.
    pub(crate) fn from_posix(text: &str, name: &str) -> Result<Self, String> {
        // No directories: a name is never looked up as a file here (config does that).
        let settings = TimeZoneSettings::new(&[], |_| Err("no zone files here".into()));
        let tz = settings
            .parse_posix_tz(text)
            .map_err(|e| format!("{text:?} is not a POSIX TZ string: {e}"))?;
        Ok(Self {
            tz,
            name: name.into(),
        })
    }

    /// From the bytes of a TZif file (e.g. /usr/share/zoneinfo/Europe/Berlin).
    pub(crate) fn from_tzif(bytes: &[u8], name: &str) -> Result<Self, String> {
        let tz = TimeZone::from_tz_data(bytes).map_err(|e| format!("not a zone file: {e}"))?;
        Ok(Self {
            tz,
            name: name.into(),
        })
    }

    /// The offset from UTC in seconds in force at `unix_secs` (east positive). An instant the
    /// zone cannot place (far outside its range) counts as UTC.
    pub(crate) fn offset_at(&self, unix_secs: i64) -> i64 {
        self.tz
            .find_local_time_type(unix_secs)
            .map_or(0, |t| i64::from(t.ut_offset()))
    }

    /// The local wall-clock reading of `unix_secs`, in seconds since 1970-01-01 00:00 local.
    pub(crate) fn local_secs(&self, unix_secs: i64) -> i64 {
        unix_secs + self.offset_at(unix_secs)
    }

    /// The first instant in `(after, until]` at which the offset differs from the one at
    /// `after` (a DST change), found by bisection; `None` when there is none.
    pub(crate) fn next_change(&self, after: i64, until: i64) -> Option<i64> {
        let before = self.offset_at(after);
        if until <= after || self.offset_at(until) == before {
            return None;
        }
        let (mut lo, mut hi) = (after, until);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset_at(mid) == before {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-03-30 01:00:00 UTC: Europe's spring-forward instant.
    const EU_SPRING_2025: i64 = 1_743_296_400;
    /// 2025-10-26 01:00:00 UTC: Europe's fall-back instant.
    const EU_FALL_2025: i64 = 1_761_440_400;

    #[test]
    fn posix_rules_give_the_offsets_on_both_sides_of_each_change() {
        let z = Zone::from_posix("CET-1CEST,M3.5.0,M10.5.0/3", "t").unwrap();
        assert_eq!(z.offset_at(EU_SPRING_2025 - 1), 3600);
        assert_eq!(z.offset_at(EU_SPRING_2025), 7200);
        assert_eq!(z.offset_at(EU_FALL_2025 - 1), 7200);
        assert_eq!(z.offset_at(EU_FALL_2025), 3600);
        assert_eq!(
            z.next_change(EU_SPRING_2025 - 60, EU_SPRING_2025 + 60),
            Some(EU_SPRING_2025)
        );
        assert_eq!(z.next_change(EU_SPRING_2025, EU_SPRING_2025 + 60), None);
    }

    #[test]
    fn fixed_offsets_and_quoted_names() {
        let z = Zone::from_posix("<+0530>-5:30", "t").unwrap();
        assert_eq!(z.offset_at(0), 5 * 3600 + 1800);
        assert_eq!(Zone::from_posix("UTC0", "t").unwrap().offset_at(0), 0);
        assert_eq!(
            Zone::from_posix("EST5", "t").unwrap().offset_at(0),
            -5 * 3600
        );
        assert_eq!(Zone::utc().local_secs(42), 42);
        assert!(Zone::from_posix("Mars/Olympus", "t")
            .unwrap_err()
            .contains("not a POSIX TZ string"));
    }

    #[test]
    fn tzif_files_are_parsed_past_their_table() {
        // The repository's copy of tzdata's file (a machine may have no tzdata).
        let bytes = include_bytes!("../../tests/data/zoneinfo/Europe/Berlin");
        let z = Zone::from_tzif(bytes, "Europe/Berlin").unwrap();
        assert_eq!(z.offset_at(EU_SPRING_2025), 7200);
        assert_eq!(z.offset_at(EU_FALL_2025), 3600);
        // 2100-07-01: beyond any table, from the POSIX footer.
        assert_eq!(z.offset_at(4_118_083_200), 7200);
        assert!(Zone::from_tzif(b"TZif garbage", "x").is_err());
    }
}
