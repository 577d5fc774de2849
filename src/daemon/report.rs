//! Telling operators what the daemon does: the status snapshot, metrics, and systemd status.
//!
//! Key idea: the snapshot is written at most about once a second while uploading (and every
//! 30 s when idle), not per file; per-file rates are smoothed between writes. The same
//! snapshot feeds `ferry status` and the Prometheus textfile.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::durable;
use crate::status::{self, ActiveFile, FailedFile, Snapshot, Totals};
use crate::tus::url;

use super::{unix, Main};

/// Status snapshots while uploading; and at least this often when idle.
const STATUS_BUSY: Duration = Duration::from_secs(1);
const STATUS_IDLE: Duration = Duration::from_secs(30);
/// How many permanent failures the status shows.
pub(super) const MAX_RECENT_FAILED: usize = 50;

impl<'p, 'a> Main<'p, 'a> {
    pub(super) fn state_name(&self) -> &'static str {
        if self.stopping.is_some() {
            "stopping"
        } else if self.spool_missing {
            "waiting for the spool directory"
        } else if self.paused {
            "paused"
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
            self.queue.waiting(),
            self.active.len(),
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
            + if self.active.is_empty() {
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
        let mut active = Vec::new();
        for (path, a) in &mut self.active {
            let (size, position) = a.progress.position_and_total();
            let dt = now.saturating_duration_since(a.rate.0).as_secs_f64();
            if dt >= 0.5 {
                let sample = position.saturating_sub(a.rate.1) as f64 / dt;
                a.rate = (
                    now,
                    position,
                    if a.rate.2 == 0.0 {
                        sample
                    } else {
                        0.7 * a.rate.2 + 0.3 * sample
                    },
                );
            }
            let info = a.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
            active.push(ActiveFile {
                path: path.to_string(),
                size,
                position,
                bytes_per_sec: a.rate.2,
                attempts: info.attempts,
                next_retry_unix: info.next_retry.map(unix),
                last_error: info.last_error,
            });
        }
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
            retries: self.retries.load(Ordering::Relaxed),
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
            queued: self.queue.waiting(),
            active,
            failed,
            state_damage: self.state_damage(),
            totals,
        }
    }
}
