//! Telling operators what the daemon does: the status snapshot, metrics, and systemd status.
//!
//! Key idea: the snapshot is written at most about once a second while uploading (and every
//! 30 s when idle), not per file; per-file rates are smoothed between writes. The same
//! snapshot feeds `ferry status` and the Prometheus textfile. Positions and rates are those of
//! [`crate::progress`]: bytes the server has, averaged over its window.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::durable;
use crate::status::{self, FailedFile, FileStatus, Snapshot, Totals};
use crate::tus::url;

use super::schedule::{Blocked, FileState, FileView, Link, Stage};
use super::{unix, Main};

/// Status snapshots while uploading; and at least this often when idle.
const STATUS_BUSY: Duration = Duration::from_secs(1);
const STATUS_IDLE: Duration = Duration::from_secs(30);
/// How many permanent failures the status shows.
pub(super) const MAX_RECENT_FAILED: usize = 50;
/// How many queued files the status lists, the next to start first; `queued_unlisted` counts
/// the rest. The whole queue window (1,024) made `status.json` about 250 KB, rewritten every
/// second while uploading (replaced by rename, which ext4 writes out at once): 9 KB now.
const LISTED_QUEUED: usize = 32;

impl<'p, 'a> Main<'p, 'a> {
    pub(super) fn state_name(&self) -> &'static str {
        if self.stopping.is_some() {
            "stopping"
        } else if self.spool_missing {
            "waiting for the spool directory"
        } else if self.core.paused() {
            "paused"
        } else if self.core.gate().is_some() {
            "held"
        } else {
            "running"
        }
    }

    pub(super) fn announce_ready(&mut self) {
        if !self.ready_sent {
            self.ready_sent = true;
            self.parts
                .notifier
                .send(&format!("READY=1\nSTATUS={}", self.status_line()));
        }
    }

    fn status_line(&self) -> String {
        format!(
            "{}: {} queued, {} active, {} done, {} failed",
            self.state_name(),
            self.core.waiting(),
            self.uploads.len(),
            self.totals.files_done,
            self.totals.files_failed
        )
    }

    /// Asks for a status write as soon as the last one is a second old (not per file: a
    /// spool of small files would rewrite it hundreds of times a second).
    pub(super) fn status_soon(&mut self) {
        let soon = self.last_status_write + STATUS_BUSY;
        self.next_status = self.next_status.min(soon.max(self.parts.clock.now()));
    }

    pub(super) fn write_status(&mut self, state: &str) {
        let now = self.parts.clock.now();
        self.last_status_write = now;
        self.next_status = now
            + if self.uploads.is_empty() {
                STATUS_IDLE
            } else {
                STATUS_BUSY
            };
        let line = self.status_line();
        if line != self.last_status_line && self.ready_sent {
            self.parts.notifier.send(&format!("STATUS={line}"));
            self.last_status_line = line;
        }
        let snap = self.snapshot(state, now);
        let state_file = self.parts.state_dir.join(status::SNAPSHOT_FILE);
        let json = serde_json::to_vec_pretty(&snap).unwrap_or_default();
        if let Err(e) = durable::replace(&state_file, &json) {
            log::debug!("{}: cannot write: {e}", state_file.display());
        }
        if let Some(m) = &self.settings.metrics_file {
            if let Err(e) = durable::replace(m, status::render_metrics(&snap).as_bytes()) {
                log::warn!("{}: cannot write metrics: {e}", m.display());
            }
        }
    }

    fn state_damage(&self) -> status::StateDamage {
        let d = self.parts.store.damage();
        status::StateDamage {
            reset: d.reset.map(|r| match r.moved_to {
                Some(p) => format!("{}; kept in {}", r.problem, p.display()),
                None => r.problem,
            }),
            records: d.records,
            reuploaded: self.totals_reuploaded,
        }
    }

    fn snapshot(&mut self, state: &str, now: Instant) -> Snapshot {
        let mut files = Vec::new();
        let views = self.core.files(now, LISTED_QUEUED);
        let queued_shown = views
            .iter()
            .filter(|v| v.state == FileState::Queued)
            .count();
        for view in views {
            files.push(self.file_status(&view, now));
        }
        let mut settling: Vec<_> = self.settling.keys().collect();
        settling.sort();
        files.extend(settling.into_iter().map(|p| FileStatus {
            path: p.display().to_string(),
            state: "settling".into(),
            ..FileStatus::default()
        }));
        let mut failed: Vec<FailedFile> = self.recent_failed.iter().cloned().collect();
        if let Ok(kept) = self.parts.store.failed() {
            let shown: HashSet<String> = failed.iter().map(|f| f.path.clone()).collect();
            for f in kept
                .into_iter()
                .filter(|f| !shown.contains(f.path.as_str()))
                .take(MAX_RECENT_FAILED)
            {
                failed.push(FailedFile {
                    path: f.path.to_string(),
                    status: f.status,
                    message: f.message,
                    failed_unix: f.failed_unix,
                    moved_to: None,
                });
            }
        }
        let totals = Totals {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            retries: self.retries,
            ..self.totals.clone()
        };
        Snapshot {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_unix: unix(self.started),
            updated_unix: unix(self.parts.clock.wall()),
            state: state.to_string(),
            spool: self.settings.spool.dir.display().to_string(),
            endpoint: url::redact(&self.parts.upload.endpoint).to_string(),
            queued: self.core.waiting(),
            queued_unlisted: Some(self.core.waiting().saturating_sub(queued_shown as u64)),
            files,
            blocked: self.blocked(now),
            rate_limit: self.gate_rate(),
            policy_notes: self.gate_notes(),
            tls: self.parts.transport.tls_suite(),
            failed,
            state_damage: self.state_damage(),
            totals,
            spool_usage: self.spool_watch.usage(),
        }
    }
}

impl Main<'_, '_> {
    /// One started or queued file as the status shows it.
    fn file_status(&mut self, view: &FileView, now: Instant) -> FileStatus {
        let state = match (view.state, view.blocked) {
            (FileState::Stepping, _) => "uploading",
            (FileState::Finishing { stage, retry_at }, _) => {
                return self.finishing_status(view, stage, retry_at, now)
            }
            (_, Some(Blocked::Paused)) => "paused",
            (_, Some(Blocked::Link)) => "waiting for the link",
            (_, Some(Blocked::Endpoint | Blocked::Policy)) => "held",
            (FileState::Ready, None) => "waiting",
            (FileState::BackingOff { .. }, None) => "backing off",
            (FileState::Queued, None) => "queued",
        };
        let mut status = FileStatus {
            path: view.key.to_string(),
            state: state.into(),
            ..FileStatus::default()
        };
        let Some(u) = self.uploads.get_mut(&view.key) else {
            return status;
        };
        let (position, size) = u.progress.position_and_total();
        let rate = u.rate.update(position, now);
        status.size = size;
        status.position = position;
        status.confirmed = u.info.confirmed;
        status.bytes_per_sec = if state == "uploading" { rate } else { 0.0 };
        status.attempts = u.info.attempts;
        status.next_retry_unix = u.info.next_retry.map(unix);
        status.last_error = u.info.last_error.clone();
        status
    }

    /// A completed file whose hook or after-upload action is left.
    fn finishing_status(
        &self,
        view: &FileView,
        stage: Stage,
        retry_at: Option<Instant>,
        now: Instant,
    ) -> FileStatus {
        let state = match stage {
            Stage::Hook => "hook",
            Stage::Action => "after upload",
        };
        let wall = self.parts.clock.wall();
        FileStatus {
            path: view.key.to_string(),
            state: state.into(),
            attempts: self.core.finish_failures(&view.key),
            next_retry_unix: retry_at.map(|t| unix(wall + t.saturating_duration_since(now))),
            ..FileStatus::default()
        }
    }

    /// Why uploads do not go on, when the link or the endpoint stops them all.
    fn blocked(&self, now: Instant) -> Option<String> {
        if let Some(why) = self.core.gate() {
            return Some(why.to_string());
        }
        let in_secs = |t: Instant| t.saturating_duration_since(now).as_secs();
        if let Link::Down {
            probe_at,
            why,
            refused: true,
            ..
        } = self.core.link()
        {
            return Some(format!("{why}; trying again in {} s", in_secs(*probe_at)));
        }
        if let Link::Down { probe_at, why, .. } = self.core.link() {
            return Some(format!(
                "no answer from the server ({why}); trying again in {} s",
                in_secs(*probe_at)
            ));
        }
        self.core.hold().filter(|h| now < h.until).map(|h| {
            format!(
                "endpoint refuses new uploads: {} {}; retrying in {} s",
                h.status,
                h.message,
                in_secs(h.until)
            )
        })
    }
}
