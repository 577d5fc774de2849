//! Sizes (`6MiB`, `5MB`, `262144`) and durations (`30s`, `500ms`, `2m`) as written in the
//! config file and on the command line.

use std::time::Duration;

/// Parses a size: `6291456`, `6MiB`, `6 MiB`, `6M` (binary), `5MB` (decimal).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let (n, unit) = split_number(text)
        .ok_or_else(|| format!("{text:?} is not a size like 6291456, 6MiB or 5MB"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a rate in bytes per second: a size with an optional `/s` (`2MiB/s`, `250KB`,
/// `500000`); `0`, `off` or `none` mean no limit (`None`).
pub(crate) fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    if ["off", "none", "unlimited"].contains(&t.to_ascii_lowercase().as_str()) {
        return Ok(None);
    }
    let size = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("/S"))
        .unwrap_or(t);
    let n = parse_size(size)
        .map_err(|_| format!("{text:?} is not a rate like 2MiB/s, 250KB/s or 0 (no limit)"))?;
    Ok((n > 0).then_some(n))
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, `1d`, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = split_number(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 30s, 500ms, 2m or 1h"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("{text:?}: unknown unit; use ms, s, m, h or d")),
    };
    Ok(d)
}

/// `" 6 MiB "` → `(6, "MiB")`; `None` when there is no leading number.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("6MiB"), Ok(6 << 20));
        assert_eq!(parse_size("6 MiB"), Ok(6 << 20));
        assert_eq!(parse_size("6M"), Ok(6 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert!(parse_size("6 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1 fortnight").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2MiB/s"), Ok(Some(2 << 20)));
        assert_eq!(parse_rate(" 250KB "), Ok(Some(250_000)));
        assert_eq!(parse_rate("512 KiB/s"), Ok(Some(512 << 10)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("off"), Ok(None));
        assert_eq!(parse_rate("0/s"), Ok(None));
        let e = parse_rate("fast").unwrap_err();
        assert!(e.contains("\"fast\" is not a rate like 2MiB/s"), "{e}");
        assert!(parse_rate("2MiB/h").is_err());
    }
}
