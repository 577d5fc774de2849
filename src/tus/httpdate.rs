//! HTTP-date (RFC 9110 §5.6.7) parsing for `Upload-Expires` and `Retry-After`.
//!
//! Accepts the preferred IMF-fixdate and both obsolete forms (RFC 850 and asctime), as the
//! RFC requires of recipients. Pure arithmetic: no clock is read here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses an HTTP-date; `None` when it is not one.
pub fn parse(value: &str) -> Option<SystemTime> {
    let v = value.trim();
    let (_weekday, rest) = v.split_once([',', ' '])?;
    let fields: Vec<&str> = rest.split([' ', '-']).filter(|f| !f.is_empty()).collect();
    let (day, month, year, time) = if v.contains(',') {
        // IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT" or RFC 850 "Sunday, 06-Nov-94 08:49:37 GMT"
        match fields.as_slice() {
            [d, m, y, t, "GMT"] => (*d, *m, *y, *t),
            _ => return None,
        }
    } else {
        // asctime "Sun Nov  6 08:49:37 1994"
        match fields.as_slice() {
            [m, d, t, y] => (*d, *m, *y, *t),
            _ => return None,
        }
    };
    let day: u64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u64 + 1;
    let mut year: u64 = year.parse().ok()?;
    if year < 100 {
        // RFC 850 two-digit years: RFC 9110 says to read them as at most 50 years ahead.
        year += if year < 70 { 2000 } else { 1900 };
    }
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    // Four digits at most (RFC 9110's `year = 4DIGIT`): a longer year overflowed the
    // arithmetic below, a panic from one header of a server's answer.
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *s > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(UNIX_EPOCH + Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + s))
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats a time as an IMF-fixdate (used by tests and status output).
pub fn format(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        capitalize(MONTHS[(m - 1) as usize]),
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: u64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn parses_all_three_formats_of_rfc_9110() {
        let want = Some(at(784_111_777));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), want);
    }

    #[test]
    fn parses_the_spec_example_and_leap_days() {
        assert_eq!(
            parse("Wed, 25 Jun 2014 16:00:00 GMT"),
            Some(at(1_403_712_000))
        );
        assert_eq!(
            parse("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(at(1_709_164_800))
        );
    }

    #[test]
    fn rejects_garbage_and_out_of_range_fields() {
        for bad in [
            "",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "120",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    /// Found by the http_date fuzz target: an `Upload-Expires` or `Retry-After` with a long
    /// year overflowed (a multiplication, or the `SystemTime` addition), a panic in the upload.
    #[test]
    fn a_year_of_more_than_four_digits_is_not_a_date() {
        for bad in [
            "Sun, 06 Nov 300000000000 08:49:37 GMT",
            "Sun, 06 Nov 99999999999999999 08:49:37 GMT",
            "Sun, 06 Nov 18446744073709551615 08:49:37 GMT",
            "Sun Nov  6 08:49:37 300000000000",
            "Su% Nov  6 08:49:37 11911111111111919", // the fuzzer's own input, shortened
            "Sun, 06 Nov 10000 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            parse("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(at(253_402_300_799))
        );
    }

    #[test]
    fn format_round_trips() {
        for secs in [0, 784_111_777, 1_709_164_800, 4_102_444_800] {
            let s = format(at(secs));
            assert_eq!(parse(&s), Some(at(secs)), "{s}");
        }
        assert_eq!(format(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
