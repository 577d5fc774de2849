//! The window policy on injected wall times and zones: day specs, midnight and the week's end,
//! both DST changes, the closed text, the recheck instant, overlapping rates, the clock wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::policy::schedule::Days;

const EUROPE: &str = "CET-1CEST,M3.5.0,M10.5.0/3";

/// Some instant (only differences matter).
fn t0() -> Instant {
    use crate::clock::Clock;
    crate::clock::ManualClock::new(UNIX_EPOCH).now()
}

/// Unix seconds of a UTC date and time (proleptic Gregorian; days from civil, H. Hinnant).
fn utc(y: i64, m: i64, d: i64, hh: i64, mm: i64, ss: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

fn wall(unix: i64) -> SystemTime {
    let d = Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

fn hms(t: &str) -> u32 {
    let p: Vec<u32> = t.split(':').map(|x| x.parse().unwrap()).collect();
    p[0] * 3600 + p[1] * 60 + p.get(2).copied().unwrap_or(0)
}

fn win(days: u8, from: &str, to: &str, rate: Option<u64>) -> Window {
    Window {
        days: Days(days),
        from_secs: hms(from),
        to_secs: hms(to),
        rate_limit: rate,
    }
}

/// A trusting policy (the clock is believed) over `windows` in `zone`.
fn policy(zone: &str, windows: Vec<Window>) -> WindowPolicy {
    let settings = ScheduleSettings {
        windows,
        unsynced_clock: UnsyncedClock::Trust,
        zone: Zone::from_posix(zone, "test").unwrap(),
    };
    WindowPolicy::new(&settings, Box::new(|| panic!("trust never asks")))
}

/// Open at the Unix second `unix`?
fn open(p: &mut WindowPolicy, unix: i64) -> bool {
    p.check(t0(), wall(unix)).closed.is_none()
}

const MON: u8 = 1;
const FRI: u8 = 1 << 4;
const SAT: u8 = 1 << 5;
const SUN: u8 = 1 << 6;
const WEEKDAYS: u8 = 0x1f;

#[test]
fn weekdays_only_from_nine_to_five() {
    let mut p = policy("UTC0", vec![win(WEEKDAYS, "09:00", "17:00", None)]);
    // 2025-06-02 is a Monday.
    assert!(!open(&mut p, utc(2025, 6, 2, 8, 59, 59)));
    assert!(open(&mut p, utc(2025, 6, 2, 9, 0, 0)));
    assert!(open(&mut p, utc(2025, 6, 6, 16, 59, 59))); // Friday
    assert!(!open(&mut p, utc(2025, 6, 6, 17, 0, 0)));
    assert!(!open(&mut p, utc(2025, 6, 7, 12, 0, 0))); // Saturday
    assert!(!open(&mut p, utc(2025, 6, 8, 12, 0, 0))); // Sunday
}

#[test]
fn a_window_across_midnight_belongs_to_the_day_it_starts_on_even_at_the_weeks_end() {
    let mut p = policy("UTC0", vec![win(SUN, "23:00", "01:00", None)]);
    // 2025-06-08 is a Sunday, 06-09 the Monday after it.
    assert!(!open(&mut p, utc(2025, 6, 8, 22, 59, 59)));
    assert!(open(&mut p, utc(2025, 6, 8, 23, 30, 0)));
    assert!(open(&mut p, utc(2025, 6, 9, 0, 59, 59)));
    assert!(!open(&mut p, utc(2025, 6, 9, 1, 0, 0)));
    // Monday 23:30 and Sunday 00:30 (the tail of Saturday's, which is not listed) are closed.
    assert!(!open(&mut p, utc(2025, 6, 9, 23, 30, 0)));
    assert!(!open(&mut p, utc(2025, 6, 8, 0, 30, 0)));
    let v = p.check(t0(), wall(utc(2025, 6, 9, 1, 0, 0)));
    assert_eq!(
        v.closed.as_deref(),
        Some("outside upload window until Sun 23:00")
    );
}

#[test]
fn from_equal_to_is_a_whole_day_and_wrapping_day_ranges_work() {
    // Fri-Mon as a bit set: Fri, Sat, Sun, Mon.
    let mut p = policy(
        "UTC0",
        vec![win(FRI | SAT | SUN | MON, "00:00", "00:00", None)],
    );
    assert!(open(&mut p, utc(2025, 6, 6, 0, 0, 0))); // Fri
    assert!(open(&mut p, utc(2025, 6, 9, 23, 59, 59))); // Mon
    assert!(!open(&mut p, utc(2025, 6, 10, 0, 0, 0))); // Tue
    assert!(!open(&mut p, utc(2025, 6, 12, 23, 59, 59))); // Thu
    let mut all = policy("UTC0", vec![win(Days::ALL.0, "06:00", "06:00", None)]);
    for h in 0..24 {
        assert!(open(&mut all, utc(2025, 6, 11, h, 0, 0)), "{h}:00");
    }
}

#[test]
fn spring_forward_skips_a_window_inside_the_missing_hour() {
    // Europe, 2025-03-30: at 01:00 UTC the wall clock jumps from 02:00 to 03:00.
    let mut p = policy(EUROPE, vec![win(Days::ALL.0, "02:00", "03:00", None)]);
    assert!(open(&mut p, utc(2025, 3, 29, 1, 30, 0))); // the day before: 02:30 CET
    for minute in 0..(3 * 60) {
        let t = utc(2025, 3, 30, 0, 0, 0) + minute * 60;
        assert!(!open(&mut p, t), "open at {t}");
    }
    assert!(open(&mut p, utc(2025, 3, 31, 0, 30, 0))); // the day after: 02:30 CEST
}

#[test]
fn spring_forward_closes_a_window_at_the_jump() {
    // 01:30-02:30 local: opens 00:30 UTC, and the jump to 03:00 at 01:00 UTC ends it.
    let mut p = policy(EUROPE, vec![win(Days::ALL.0, "01:30", "02:30", None)]);
    let t0 = t0();
    let v = p.check(t0, wall(utc(2025, 3, 30, 0, 59, 45)));
    assert_eq!(v.closed, None);
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(15)));
    assert!(!open(&mut p, utc(2025, 3, 30, 1, 0, 0)));
}

#[test]
fn fall_back_keeps_a_window_in_the_repeated_hour_open_twice_as_long() {
    // Europe, 2025-10-26: at 01:00 UTC the wall clock goes back from 03:00 to 02:00.
    let mut p = policy(EUROPE, vec![win(Days::ALL.0, "02:00", "03:00", None)]);
    let t0 = t0();
    // 01:59:30 CEST: opens in 30 s, at 00:00 UTC.
    let v = p.check(t0, wall(utc(2025, 10, 25, 23, 59, 30)));
    assert!(v.closed.is_some());
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(30)));
    // 02:59:30 CEST: the clock goes back to 02:00, so nothing changes within the cap.
    let v = p.check(t0, wall(utc(2025, 10, 26, 0, 59, 30)));
    assert_eq!(v.closed, None);
    assert_eq!(v.recheck_at, Some(t0 + RECHECK_CAP));
    assert!(open(&mut p, utc(2025, 10, 26, 1, 30, 0))); // 02:30 CET, the second time
    let v = p.check(t0, wall(utc(2025, 10, 26, 1, 59, 30)));
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(30)));
    assert!(!open(&mut p, utc(2025, 10, 26, 2, 0, 0)));
}

#[test]
fn the_closed_text_names_the_next_opening_in_local_time() {
    let mut p = policy(EUROPE, vec![win(WEEKDAYS, "22:00", "06:00", None)]);
    // Saturday 2025-06-07 12:00 CEST (10:00 UTC): Friday's night window is over.
    let v = p.check(t0(), wall(utc(2025, 6, 7, 10, 0, 0)));
    assert_eq!(
        v.closed.as_deref(),
        Some("outside upload window until Mon 22:00")
    );
    assert_eq!(v.rate_limit, None);
    // Friday 06:00 CEST: closed until that evening.
    let v = p.check(t0(), wall(utc(2025, 6, 6, 4, 0, 0)));
    assert_eq!(
        v.closed.as_deref(),
        Some("outside upload window until Fri 22:00")
    );
    let mut p = policy("UTC0", vec![win(Days::ALL.0, "23:59:58", "00:01", None)]);
    let v = p.check(t0(), wall(utc(2025, 6, 7, 12, 0, 0)));
    assert_eq!(
        v.closed.as_deref(),
        Some("outside upload window until Sat 23:59:58")
    );
}

#[test]
fn the_recheck_is_the_next_edge_to_the_nanosecond_and_at_most_a_minute_away() {
    let mut p = policy("UTC0", vec![win(Days::ALL.0, "12:00", "13:00", None)]);
    let t0 = t0();
    let w = wall(utc(2025, 6, 7, 11, 59, 30)) + Duration::from_millis(250);
    let v = p.check(t0, w);
    assert!(v.closed.is_some());
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_millis(29_750)));
    let v = p.check(t0, wall(utc(2025, 6, 7, 12, 0, 0)));
    assert_eq!(v.closed, None);
    assert_eq!(v.recheck_at, Some(t0 + RECHECK_CAP));
    let v = p.check(t0, wall(utc(2025, 6, 7, 12, 59, 1)));
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(59)));
    // Adjacent windows: 13:00 is no change, so no early recheck.
    let mut p = policy(
        "UTC0",
        vec![
            win(Days::ALL.0, "12:00", "13:00", None),
            win(Days::ALL.0, "13:00", "14:00", None),
        ],
    );
    let v = p.check(t0, wall(utc(2025, 6, 7, 12, 59, 30)));
    assert_eq!(v.recheck_at, Some(t0 + RECHECK_CAP));
}

#[test]
fn overlapping_windows_give_the_highest_rate_and_no_limit_wins() {
    let mut p = policy(
        "UTC0",
        vec![
            win(Days::ALL.0, "00:00", "00:00", Some(1_000_000)),
            win(Days::ALL.0, "10:00", "12:00", Some(5_000_000)),
            win(Days::ALL.0, "20:00", "21:00", None),
        ],
    );
    let t0 = t0();
    let at = |p: &mut WindowPolicy, h, m, s| p.check(t0, wall(utc(2025, 6, 7, h, m, s)));
    assert_eq!(at(&mut p, 9, 0, 0).rate_limit, Some(1_000_000));
    assert_eq!(at(&mut p, 11, 0, 0).rate_limit, Some(5_000_000));
    assert_eq!(at(&mut p, 20, 30, 0).rate_limit, None);
    assert_eq!(at(&mut p, 20, 30, 0).closed, None);
    // A rate change is a change: recheck at 10:00.
    let v = at(&mut p, 9, 59, 50);
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(10)));
}

#[test]
fn an_unsynchronised_clock_holds_with_wait_and_is_believed_with_trust() {
    let synced = Arc::new(AtomicBool::new(false));
    let s = synced.clone();
    let mut settings = ScheduleSettings {
        windows: vec![win(Days::ALL.0, "00:00", "00:00", None)],
        unsynced_clock: UnsyncedClock::Wait,
        zone: Zone::utc(),
    };
    let mut p = WindowPolicy::new(&settings, Box::new(move || s.load(Ordering::SeqCst)));
    let t0 = t0();
    let v = p.check(t0, wall(utc(2025, 6, 7, 12, 0, 0)));
    assert_eq!(v.closed.as_deref(), Some(clocksync::WAITING));
    assert_eq!(v.recheck_at, Some(t0 + Duration::from_secs(10)));
    synced.store(true, Ordering::SeqCst);
    let v = p.check(t0, wall(utc(2025, 6, 7, 12, 0, 0)));
    assert_eq!(v.closed, None);
    settings.unsynced_clock = UnsyncedClock::Trust;
    let mut p = WindowPolicy::new(&settings, Box::new(|| false));
    assert!(open(&mut p, utc(2025, 6, 7, 12, 0, 0)));
}

#[test]
fn wall_times_before_1970_are_floored() {
    let w = UNIX_EPOCH - Duration::from_millis(1500);
    assert_eq!(unix_parts(w), (-2, Duration::from_millis(500)));
    assert_eq!(
        unix_parts(UNIX_EPOCH - Duration::from_secs(3)),
        (-3, Duration::ZERO)
    );
    let mut p = policy("UTC0", vec![win(Days::ALL.0, "23:00", "00:00", None)]);
    assert!(open(&mut p, -10)); // Wed 1969-12-31 23:59:50
}
