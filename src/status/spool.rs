//! The spool's part of the status snapshot: files and bytes waiting, the oldest one's age,
//! free space, whether a limit is exceeded, and what eviction removed.
//!
//! Key idea: the daemon measures these at its spool-limit checks (from the scans' metadata and
//! one `statvfs`), not per status write; the age of the oldest file is stored as its mtime, so
//! `ferry status` and the metrics compute it against the snapshot's own time.

use serde::{Deserialize, Serialize};

use crate::progress::human_bytes;

/// The spool as last measured (absent from snapshots of older versions: all zero).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpoolUsage {
    /// Files waiting to be uploaded (not yet complete, not failed, not ignored).
    pub waiting_files: u64,
    /// Their bytes.
    pub waiting_bytes: u64,
    /// The oldest waiting file's mtime, seconds since the epoch.
    pub oldest_waiting_unix: Option<u64>,
    /// Bytes free for ferry on the spool's file system (`None`: not measured).
    pub free_bytes: Option<u64>,
    /// The limits exceeded now, in words, and what ferry does about it.
    pub over_limit: Option<String>,
    /// Files evicted (deleted before their upload) since start.
    pub evicted_files: u64,
    /// Their bytes.
    pub evicted_bytes: u64,
}

/// The spool lines of `ferry status`.
pub(super) fn render_text(u: &SpoolUsage, updated_unix: u64) -> String {
    let oldest = u.oldest_waiting_unix.map_or(String::new(), |t| {
        format!(", oldest {}", human_age(updated_unix.saturating_sub(t)))
    });
    let free = u
        .free_bytes
        .map_or(String::new(), |f| format!("; {} free", human_bytes(f)));
    let mut out = format!(
        "waiting {} files, {}{oldest}{free}\n",
        u.waiting_files,
        human_bytes(u.waiting_bytes)
    );
    if let Some(over) = &u.over_limit {
        out += &format!("over limit: {over}\n");
    }
    if u.evicted_files > 0 {
        out += &format!(
            "evicted {} files, {} (deleted before upload: spool.on_full = delete-oldest)\n",
            u.evicted_files,
            human_bytes(u.evicted_bytes)
        );
    }
    out
}

/// The spool metrics, in Prometheus text format.
pub(super) fn render_metrics(u: &SpoolUsage, updated_unix: u64) -> String {
    let oldest = u
        .oldest_waiting_unix
        .map_or(0, |t| updated_unix.saturating_sub(t));
    let metrics: [(&str, &str, &str, u64); 7] = [
        (
            "ferry_spool_waiting_files",
            "gauge",
            "Files in the spool waiting to be uploaded.",
            u.waiting_files,
        ),
        (
            "ferry_spool_waiting_bytes",
            "gauge",
            "Bytes of the files waiting to be uploaded.",
            u.waiting_bytes,
        ),
        (
            "ferry_spool_oldest_waiting_seconds",
            "gauge",
            "Age (by mtime) of the oldest file waiting to be uploaded; 0 when none waits.",
            oldest,
        ),
        (
            "ferry_spool_free_bytes",
            "gauge",
            "Bytes free for ferry on the spool's file system.",
            u.free_bytes.unwrap_or(0),
        ),
        (
            "ferry_spool_over_limit",
            "gauge",
            "1 while a spool limit (max_bytes, min_free, max_age) is exceeded.",
            u64::from(u.over_limit.is_some()),
        ),
        (
            "ferry_spool_evicted_files_total",
            "counter",
            "Files deleted before their upload by spool.on_full = delete-oldest since start.",
            u.evicted_files,
        ),
        (
            "ferry_spool_evicted_bytes_total",
            "counter",
            "Bytes of the files evicted since start.",
            u.evicted_bytes,
        ),
    ];
    let mut out = String::new();
    // Free space that could not be read is left out, not shown as 0.
    let known = metrics
        .into_iter()
        .filter(|(name, ..)| *name != "ferry_spool_free_bytes" || u.free_bytes.is_some());
    super::metric_lines(&mut out, known);
    out
}

/// `45 s`, `12 min`, `5 h 3 min`, `3 d 4 h`.
pub(crate) fn human_age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage() -> SpoolUsage {
        SpoolUsage {
            waiting_files: 3,
            waiting_bytes: 3 << 20,
            oldest_waiting_unix: Some(1000),
            free_bytes: Some(512 << 10),
            over_limit: Some("spool.min_free: 512.0 KiB free, below 1.0 MiB; files are kept (spool.on_full = keep)".into()),
            evicted_files: 2,
            evicted_bytes: 2048,
        }
    }

    #[test]
    fn text_says_what_waits_what_is_over_and_what_was_evicted() {
        let t = render_text(&usage(), 1000 + 7260);
        assert_eq!(
            t,
            "waiting 3 files, 3.0 MiB, oldest 2 h 1 min; 512.0 KiB free\n\
             over limit: spool.min_free: 512.0 KiB free, below 1.0 MiB; files are kept (spool.on_full = keep)\n\
             evicted 2 files, 2.0 KiB (deleted before upload: spool.on_full = delete-oldest)\n"
        );
        let t = render_text(&SpoolUsage::default(), 5);
        assert_eq!(t, "waiting 0 files, 0 B\n");
    }

    #[test]
    fn metrics_have_help_type_and_values() {
        let m = render_metrics(&usage(), 1060);
        for line in [
            "# TYPE ferry_spool_waiting_files gauge\nferry_spool_waiting_files 3\n",
            "ferry_spool_waiting_bytes 3145728\n",
            "ferry_spool_oldest_waiting_seconds 60\n",
            "ferry_spool_free_bytes 524288\n",
            "ferry_spool_over_limit 1\n",
            "# TYPE ferry_spool_evicted_files_total counter\nferry_spool_evicted_files_total 2\n",
            "ferry_spool_evicted_bytes_total 2048\n",
        ] {
            assert!(m.contains(line), "{line}\n{m}");
        }
        let m = render_metrics(&SpoolUsage::default(), 1060);
        assert!(m.contains("ferry_spool_oldest_waiting_seconds 0\n"), "{m}");
        assert!(
            !m.contains("ferry_spool_free_bytes"),
            "not measured: left out\n{m}"
        );
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(45), "45 s");
        assert_eq!(human_age(720), "12 min");
        assert_eq!(human_age(5 * 3600 + 180), "5 h 3 min");
        assert_eq!(human_age(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }
}
