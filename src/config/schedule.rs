//! `[schedule]`: the `[[schedule.window]]` entries checked into [`ScheduleSettings`], with the
//! local time zone read once ([`super::zone`]).
//!
//! Key idea: every error names the window by its index and the key (`schedule.window[1].to =
//! "25:00": ...`) and says what is expected; no windows means no policy at all (`None`), and
//! then the zone is not even read.

use super::env::Env;
use super::file::{Raw, RawWindow};
use super::units::parse_size;
use crate::error::{Error, Result};
use crate::policy::schedule::{Days, ScheduleSettings, UnsyncedClock, Window, WEEKDAYS};

impl Raw {
    /// The upload windows, or `None` when there are none (uploads may go at any time).
    pub(crate) fn resolve_schedule(&self, env: &Env) -> Result<Option<ScheduleSettings>> {
        let unsynced_clock = match self.schedule.unsynced_clock.as_deref() {
            None | Some("wait") => UnsyncedClock::Wait,
            Some("trust") => UnsyncedClock::Trust,
            Some(other) => {
                return Err(Error::config(format!(
                    "schedule.unsynced_clock = {other:?}: use \"wait\" (hold uploads until the system clock is synchronised) or \"trust\" (believe the clock as it is)"
                )))
            }
        };
        if self.schedule.window.is_empty() {
            return Ok(None);
        }
        let windows = self
            .schedule
            .window
            .iter()
            .enumerate()
            .map(|(i, w)| window(i, w))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ScheduleSettings {
            windows,
            unsynced_clock,
            zone: super::zone::local_zone(env)?,
        }))
    }
}

/// One window, checked; errors name `schedule.window[i].key`.
fn window(i: usize, w: &RawWindow) -> Result<Window> {
    let key = |k: &str| format!("schedule.window[{i}].{k}");
    if let Some(k) = w.unknown.keys().next() {
        return Err(Error::config(format!(
            "schedule.window[{i}]: unknown key {k:?}; a window has days, from, to and rate_limit"
        )));
    }
    let days = match &w.days {
        None => Days::ALL,
        Some(text) => parse_days(text)
            .map_err(|e| Error::config(format!("{} = {text:?}: {e}", key("days"))))?,
    };
    let time = |k: &str, v: &Option<String>, end: bool| -> Result<u32> {
        let text = v.as_deref().ok_or_else(|| {
            Error::config(format!(
                "{} is not set: give a local time such as \"22:00\"",
                key(k)
            ))
        })?;
        parse_time(text, end).map_err(|e| Error::config(format!("{} = {text:?}: {e}", key(k))))
    };
    let rate_limit = match &w.rate_limit {
        None => None,
        Some(t) => {
            let n =
                parse_size(t).map_err(|e| Error::config(format!("{}: {e}", key("rate_limit"))))?;
            (n > 0).then_some(n)
        }
    };
    Ok(Window {
        days,
        from_secs: time("from", &w.from, false)?,
        to_secs: time("to", &w.to, true)?,
        rate_limit,
    })
}

/// `Mon-Fri`, `Sat,Sun`, `Fri-Mon` (wraps), `*`; names case-insensitive.
pub(crate) fn parse_days(text: &str) -> std::result::Result<Days, String> {
    const USE: &str =
        "use day names Mon Tue Wed Thu Fri Sat Sun, ranges like Mon-Fri, lists like Sat,Sun, or *";
    if text.trim().is_empty() {
        return Err(format!("no days given; {USE}"));
    }
    let mut bits = 0u8;
    for item in text.split(',').map(str::trim) {
        if item == "*" {
            bits |= Days::ALL.0;
            continue;
        }
        let (a, b) = item.split_once('-').unwrap_or((item, item));
        let day = |n: &str| {
            WEEKDAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(n.trim()))
                .ok_or_else(|| format!("{:?} is not a day; {USE}", n.trim()))
        };
        let (a, b) = (day(a)?, day(b)?);
        let mut d = a;
        loop {
            bits |= 1 << d;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(Days(bits))
}

/// `HH:MM` or `HH:MM:SS` as seconds after midnight; `24:00` only as an end (`end`).
pub(crate) fn parse_time(text: &str, end: bool) -> std::result::Result<u32, String> {
    let bad = || {
        format!(
            "not a local time like \"22:00\" or \"06:30:15\" (00:00 to 23:59:59{})",
            if end { ", or 24:00" } else { "" }
        )
    };
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let n: Vec<u32> = parts.iter().map(|p| p.parse().unwrap_or(99)).collect();
    let (h, m, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    if end && (h, m, s) == (24, 0, 0) {
        return Ok(0);
    }
    if h > 23 || m > 59 || s > 59 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60 + s)
}
