//! What the daemon tells operators: a JSON snapshot in the state directory (read by
//! `ferry status`, since the state store admits one process) and Prometheus metrics for node_exporter's
//! textfile collector. Both are written atomically (temporary file, then rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::progress::human_bytes;

mod spool;
pub(crate) use spool::{human_age, SpoolUsage};

/// The snapshot file's name in the state directory.
pub(crate) const SNAPSHOT_FILE: &str = "status.json";

/// The file in the state directory whose presence pauses uploads (`ferry pause`); it
/// survives restarts, so a paused agent stays paused.
pub(crate) const PAUSE_MARKER: &str = "paused";

/// The daemon's state as last published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// Daemon process id.
    pub pid: u32,
    /// ferry version.
    pub version: String,
    /// Start time, seconds since the epoch.
    pub started_unix: u64,
    /// When this snapshot was written.
    pub updated_unix: u64,
    /// `running`, `paused`, `waiting for the spool directory`, `stopping` or `stopped`.
    pub state: String,
    /// The spool directory.
    pub spool: String,
    /// The endpoint (query removed).
    pub endpoint: String,
    /// Files waiting to start (those beyond the listed queue included).
    pub queued: u64,
    /// Of those, how many are not listed in `files` (beyond the queue's window). Absent in
    /// snapshots of older versions.
    #[serde(default)]
    pub queued_unlisted: Option<u64>,
    /// Every file the daemon knows (settling, queued, started, hook, after upload), each with its
    /// state. Named `active` in snapshots of older versions.
    #[serde(alias = "active")]
    pub files: Vec<FileStatus>,
    /// Why no upload goes on, when none can: the link gives no answer, or the endpoint
    /// refuses new uploads (with the time of the next try).
    #[serde(default)]
    pub blocked: Option<String>,
    /// The upload rate limit that applies now; absent: none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitStatus>,
    /// What field policies report while uploads may go (a condition command's output line),
    /// each as `name: text`.
    #[serde(default)]
    pub policy_notes: Vec<String>,
    /// The TLS version and cipher suite of the last handshake, e.g.
    /// `TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256`; absent before any (or over plain HTTP).
    #[serde(default)]
    pub tls: Option<String>,
    /// Recent permanent failures.
    pub failed: Vec<FailedFile>,
    /// Counters since start.
    pub totals: Totals,
    /// Damaged state found at start or since (absent from snapshots of older versions).
    #[serde(default)]
    pub state_damage: StateDamage,
    /// The spool: what waits, free space, limits, evictions (absent from older snapshots).
    #[serde(default)]
    pub spool_usage: SpoolUsage,
}

/// The upload rate limit in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RateLimitStatus {
    /// Bytes per second for all uploads together.
    pub bytes_per_sec: u64,
    /// What set it: `ferry limit`, `upload.rate_limit`, or a policy (`window`).
    pub by: String,
}

/// Damaged state that ferry set aside (see `store`): what an operator should look at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StateDamage {
    /// The state database was damaged at start: what was wrong and where it was moved.
    pub reset: Option<String>,
    /// Unreadable records set aside since start.
    pub records: u64,
    /// Files that were in the spool before a reset and were uploaded again from the start
    /// (their earlier upload, if any, is lost with the damaged record).
    pub reuploaded: u64,
}

/// A file the daemon knows, and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct FileStatus {
    /// Path.
    pub path: String,
    /// One of [`FILE_STATES`].
    #[serde(default)]
    pub state: String,
    /// Size in bytes (0 until its upload starts).
    pub size: u64,
    /// Bytes the server has: those it confirmed, and those of the chunk in flight that its
    /// side of the connection acknowledged; below `size` until the server confirmed the last.
    pub position: u64,
    /// Bytes the server confirmed it holds.
    #[serde(default)]
    pub confirmed: u64,
    /// The rate of `position`, averaged over the last several seconds.
    pub bytes_per_sec: f64,
    /// Failed attempts since the last progress.
    pub attempts: u32,
    /// When the next retry is due, seconds since the epoch.
    pub next_retry_unix: Option<u64>,
    /// The last transient error.
    pub last_error: Option<String>,
}

/// The states a listed file can be in, in the order the status shows them.
pub(crate) const FILE_STATES: [&str; 11] = [
    "uploading",
    "waiting",
    "backing off",
    "waiting for the link",
    "held",
    "paused",
    "queued",
    "settling",
    "hook",
    "after upload",
    "unknown",
];

impl Snapshot {
    /// How many listed files are in each state, in [`FILE_STATES`] order (zeros left out).
    pub(crate) fn counts(&self) -> Vec<(&'static str, u64)> {
        FILE_STATES
            .iter()
            .map(|st| {
                let n = self
                    .files
                    .iter()
                    .filter(|f| {
                        f.state == *st
                            || (*st == "unknown" && !FILE_STATES.contains(&f.state.as_str()))
                    })
                    .count();
                (*st, n as u64)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// A file that failed permanently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FailedFile {
    /// Where it was.
    pub path: String,
    /// HTTP status, when the server refused.
    pub status: Option<u16>,
    /// Why.
    pub message: String,
    /// When, seconds since the epoch.
    pub failed_unix: u64,
    /// Where it was moved, if it was.
    pub moved_to: Option<String>,
}

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Files uploaded completely.
    pub files_done: u64,
    /// Files failed permanently.
    pub files_failed: u64,
    /// Body bytes sent (resends included).
    pub bytes_sent: u64,
    /// Transient failures retried.
    pub retries: u64,
    /// Last completed upload, seconds since the epoch.
    pub last_success_unix: Option<u64>,
}

/// Why the snapshot cannot be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// No snapshot file (no `ferry run` on this state directory yet), or it cannot be read.
    Missing {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a snapshot this version understands.
    Unreadable {
        /// The snapshot file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { path, source } => write!(
                f,
                "{}: {source} (is `ferry run` using this state directory?)",
                path.display()
            ),
            Self::Unreadable { path, source } => {
                write!(f, "{}: unreadable: {source}", path.display())
            }
        }
    }
}

/// Reads the snapshot in `state_dir`.
pub(crate) fn read(state_dir: &Path) -> Result<Snapshot, ReadError> {
    let path = state_dir.join(SNAPSHOT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(source) => return Err(ReadError::Missing { path, source }),
    };
    serde_json::from_str(&text).map_err(|source| ReadError::Unreadable { path, source })
}

/// The snapshot for people.
pub(crate) fn render_text(s: &Snapshot, alive: bool, now_unix: u64) -> String {
    let mut out = String::new();
    let state = if alive {
        s.state.clone()
    } else {
        format!("not running (last state: {})", s.state)
    };
    out += &format!("ferry {}: {state}\n", s.version);
    out += &format!("spool {}  ->  {}\n", s.spool, s.endpoint);
    let t = &s.totals;
    let last = t.last_success_unix.map_or("never".into(), |u| {
        format!("{} s ago", now_unix.saturating_sub(u))
    });
    let listed_queued = s.files.iter().filter(|f| f.state == "queued").count() as u64;
    let counts: Vec<String> = s
        .counts()
        .iter()
        .map(|(st, n)| format!("{n} {st}"))
        .collect();
    let counts = if counts.is_empty() {
        "none".to_string()
    } else {
        counts.join(", ")
    };
    // A queued file is listed as paused, held or waiting for the link when that is why it
    // waits: only the daemon knows which listed files are queued ones.
    let beyond = s
        .queued_unlisted
        .unwrap_or(s.queued.saturating_sub(listed_queued));
    let beyond = if beyond > 0 {
        format!(" (+{beyond} more queued in the spool)")
    } else {
        String::new()
    };
    out += &format!(
        "files: {counts}{beyond}
"
    );
    out += &format!(
        "done {}, failed {}, sent {}, retries {}, last success {last}\n",
        t.files_done,
        t.files_failed,
        human_bytes(t.bytes_sent),
        t.retries
    );
    out += &spool::render_text(&s.spool_usage, s.updated_unix);
    if let Some(b) = &s.blocked {
        out += &format!("blocked: {b}\n");
    }
    if let Some(r) = &s.rate_limit {
        out += &format!(
            "rate limit: {}/s ({})\n",
            human_bytes(r.bytes_per_sec),
            r.by
        );
    }
    for n in &s.policy_notes {
        out += &format!("policy {n}\n");
    }
    if let Some(tls) = &s.tls {
        out += &format!("tls: {tls}\n");
    }
    for a in &s.files {
        out += &format!("  {:<12} {}", a.state, a.path);
        if a.size > 0 || a.position > 0 {
            let pct = a.confirmed as f64 * 100.0 / a.size.max(1) as f64;
            out += &format!(
                "  {} / {} confirmed ({pct:.1}%)",
                human_bytes(a.confirmed),
                human_bytes(a.size)
            );
            if a.state == "uploading" {
                out += &format!(
                    "  sending at {}  {}/s",
                    human_bytes(a.position),
                    human_bytes(a.bytes_per_sec as u64)
                );
            }
        }
        if a.attempts > 0 {
            out += &format!("  attempts {}", a.attempts);
        }
        if let Some(n) = a.next_retry_unix {
            out += &format!("  next retry in {} s", n.saturating_sub(now_unix));
        }
        if let Some(e) = &a.last_error {
            out += &format!("  last error: {e}");
        }
        out += "\n";
    }
    let d = &s.state_damage;
    if let Some(reset) = &d.reset {
        out += &format!(
            "state   DAMAGED at start: {reset}; {} files uploaded again since\n",
            d.reuploaded
        );
    }
    if d.records > 0 {
        out += &format!("state   {} damaged records set aside\n", d.records);
    }
    for f in &s.failed {
        let status = f.status.map_or(String::new(), |c| format!(" ({c})"));
        let moved = f
            .moved_to
            .as_ref()
            .map_or(String::new(), |m| format!(", moved to {m}"));
        out += &format!("  failed  {}{status}: {}{moved}\n", f.path, f.message);
    }
    out
}

/// The snapshot as Prometheus text exposition format.
pub(crate) fn render_metrics(s: &Snapshot) -> String {
    let t = &s.totals;
    let d = &s.state_damage;
    let metrics: [(&str, &str, &str, u64); 10] = [
        (
            "ferry_files_done_total",
            "counter",
            "Files uploaded completely since start.",
            t.files_done,
        ),
        (
            "ferry_files_failed_total",
            "counter",
            "Files failed permanently since start.",
            t.files_failed,
        ),
        (
            "ferry_bytes_sent_total",
            "counter",
            "Body bytes sent since start, resends included.",
            t.bytes_sent,
        ),
        (
            "ferry_retries_total",
            "counter",
            "Transient failures retried since start.",
            t.retries,
        ),
        (
            "ferry_queue_length",
            "gauge",
            "Files waiting to be uploaded.",
            s.queued,
        ),
        (
            "ferry_active_uploads",
            "gauge",
            "Files being uploaded.",
            s.files.iter().filter(|f| f.state == "uploading").count() as u64,
        ),
        (
            "ferry_last_success_timestamp_seconds",
            "gauge",
            "When the last upload completed.",
            t.last_success_unix.unwrap_or(0),
        ),
        (
            "ferry_state_reset",
            "gauge",
            "1 when the state database was damaged at start and replaced (see ferry status).",
            u64::from(d.reset.is_some()),
        ),
        (
            "ferry_state_damaged_records_total",
            "counter",
            "Unreadable state records set aside since start.",
            d.records,
        ),
        (
            "ferry_state_reuploaded_files_total",
            "counter",
            "Files uploaded again from the start because the state was damaged.",
            d.reuploaded,
        ),
    ];
    let mut out = String::new();
    metric_lines(&mut out, metrics);
    out += "# HELP ferry_files Files the daemon knows, by state.\n# TYPE ferry_files gauge\n";
    let counts = s.counts();
    for st in FILE_STATES {
        let n = counts.iter().find(|(c, _)| *c == st).map_or(0, |(_, n)| *n);
        out += &format!("ferry_files{{state=\"{st}\"}} {n}\n");
    }
    let paused = u8::from(s.state == "paused");
    out += &format!("# HELP ferry_paused 1 when uploads are paused.\n# TYPE ferry_paused gauge\nferry_paused {paused}\n");
    metric_lines(
        &mut out,
        [
            (
                "ferry_held",
                "gauge",
                "1 when a field policy (upload window, network interface, condition) holds uploads.",
                u64::from(s.state == "held"),
            ),
            (
                "ferry_rate_limit_bytes_per_second",
                "gauge",
                "The upload rate limit in force (0: none).",
                s.rate_limit.as_ref().map_or(0, |r| r.bytes_per_sec),
            ),
        ],
    );
    out += &spool::render_metrics(&s.spool_usage, s.updated_unix);
    out
}

/// One `# HELP`, `# TYPE` and value line per (name, type, help, value).
fn metric_lines<'m>(
    out: &mut String,
    metrics: impl IntoIterator<Item = (&'m str, &'m str, &'m str, u64)>,
) {
    for (name, kind, help, value) in metrics {
        *out += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            pid: 1,
            version: "0.1.0".into(),
            state: "running".into(),
            spool: "/spool".into(),
            endpoint: "http://h/files/".into(),
            queued: 3,
            files: vec![
                FileStatus {
                    path: "/spool/a.mp4".into(),
                    state: "backing off".into(),
                    size: 2048,
                    position: 1536,
                    confirmed: 1024,
                    attempts: 2,
                    next_retry_unix: Some(110),
                    last_error: Some("timed out".into()),
                    ..FileStatus::default()
                },
                FileStatus {
                    path: "/spool/c.mp4".into(),
                    state: "queued".into(),
                    ..FileStatus::default()
                },
            ],
            failed: vec![FailedFile {
                path: "/spool/b".into(),
                status: Some(415),
                message: "bad type".into(),
                failed_unix: 5,
                moved_to: Some("/failed/b".into()),
            }],
            totals: Totals {
                files_done: 7,
                bytes_sent: 4096,
                last_success_unix: Some(90),
                ..Totals::default()
            },
            ..Snapshot::default()
        }
    }

    #[test]
    fn queued_files_shown_as_waiting_for_the_link_are_not_counted_twice() {
        let file = |p: &str| FileStatus {
            path: p.into(),
            state: "waiting for the link".into(),
            ..FileStatus::default()
        };
        let s = Snapshot {
            queued: 2,
            queued_unlisted: Some(0),
            files: vec![file("/spool/a"), file("/spool/b")],
            ..Snapshot::default()
        };
        let t = render_text(&s, true, 100);
        assert!(t.contains("files: 2 waiting for the link\n"), "{t}");
    }

    #[test]
    fn text_shows_each_file_with_retry_and_error() {
        let mut s = snap();
        s.rate_limit = Some(RateLimitStatus {
            bytes_per_sec: 512 << 10,
            by: "ferry limit".into(),
        });
        s.policy_notes = vec!["condition: unmetered".into()];
        s.tls = Some("TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256".into());
        let t = render_text(&s, true, 100);
        assert!(
            t.contains("tls: TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256\n"),
            "{t}"
        );
        assert!(t.contains("rate limit: 512.0 KiB/s (ferry limit)\n"), "{t}");
        assert!(t.contains("policy condition: unmetered\n"), "{t}");
        assert!(
            t.contains("files: 1 backing off, 1 queued (+2 more queued in the spool)\n"),
            "{t}"
        );
        assert!(
            t.contains("done 7, failed 0, sent 4.0 KiB, retries 0, last success 10 s ago"),
            "{t}"
        );
        assert!(t.contains("  queued       /spool/c.mp4\n"), "{t}");
        assert!(
            t.contains("backing off  /spool/a.mp4  1.0 KiB / 2.0 KiB confirmed (50.0%)")
                && t.contains("next retry in 10 s")
                && t.contains("last error: timed out"),
            "{t}"
        );
        assert!(
            t.contains("failed  /spool/b (415): bad type, moved to /failed/b"),
            "{t}"
        );
        assert!(render_text(&snap(), false, 100).contains("not running"));
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = render_metrics(&snap());
        assert!(
            m.contains("# TYPE ferry_files_done_total counter\nferry_files_done_total 7\n"),
            "{m}"
        );
        assert!(
            m.contains("ferry_queue_length 3\n")
                && m.contains("ferry_paused 0\n")
                && m.contains("ferry_held 0\n")
                && m.contains("ferry_rate_limit_bytes_per_second 0\n"),
            "{m}"
        );
        assert!(
            m.contains("ferry_files{state=\"backing off\"} 1\n")
                && m.contains("ferry_files{state=\"uploading\"} 0\n"),
            "{m}"
        );
        assert!(
            m.lines().all(|l| l.starts_with('#')
                || l.rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<u64>().is_ok())),
            "{m}"
        );
    }

    #[test]
    fn snapshots_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("ferry-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::durable::replace(
            &dir.join(SNAPSHOT_FILE),
            &serde_json::to_vec(&snap()).unwrap(),
        )
        .unwrap();
        assert_eq!(read(&dir).unwrap(), snap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read(&dir).unwrap_err().to_string().contains("ferry run"));
    }

    /// The stored_record fuzz target's snapshot seed is one `ferry status` reads (a change of
    /// the format fails here until fuzz/corpus/stored_record/seed-status-snapshot follows).
    #[test]
    fn the_fuzz_seed_is_a_snapshot_ferry_status_reads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/stored_record/seed-status-snapshot");
        let s: Snapshot = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!((s.files.len(), s.failed.len(), s.queued), (2, 1, 3));
        assert!(render_text(&s, true, 1_779_271_260).contains("next retry in 30 s"));
    }
}
