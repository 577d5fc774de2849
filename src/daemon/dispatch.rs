//! Handing queued files to idle workers, and taking what their jobs ended with.
//!
//! Key idea: the main thread owns `active`; a file is in it from dispatch until its
//! [`JobResult`] arrives. A result is routed by its cause: done (hook and after-upload
//! action), the source's fault, the link's fault (all uploads wait), the state store's
//! (the daemon ends), or a permanent failure of this file.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::spool;
use crate::store::FileKey;
use crate::tus::url;

use super::{unix, Active, Job, JobInfo, JobResult, Main};

/// After a TLS failure (a setting to fix, or the server's certificate), wait this long.
const LINK_TROUBLE_PAUSE: Duration = Duration::from_secs(60);

impl<'p, 'a> Main<'p, 'a> {
    /// Hands the oldest queued files to idle workers.
    pub(super) fn dispatch(&mut self) -> Result<()> {
        let now = self.parts.clock.now();
        if self.paused || self.stopping.is_some() || self.held_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        self.held_until = None;
        while self.active.len() < self.settings.concurrency {
            let Some(key) = self.queue.pop_oldest() else {
                if self.queue.needs_refill() && self.next_rescan > now {
                    self.next_rescan = now;
                    self.force_scan = true;
                }
                break;
            };
            if self.active.contains_key(&key) {
                continue;
            }
            let progress = Arc::new(Progress::default());
            let info = Arc::new(Mutex::new(JobInfo::default()));
            let job = Job {
                key: key.clone(),
                progress: progress.clone(),
                info: info.clone(),
            };
            if self.jobs.send(job).is_err() {
                return Err(Error::Internal("upload threads ended unexpectedly".into()));
            }
            self.active.insert(
                key,
                Active {
                    progress,
                    info,
                    rate: (now, 0, 0.0),
                },
            );
            self.status_soon();
        }
        Ok(())
    }

    /// Hands out no files for `pause`; then a scan finds the held-back ones again.
    fn hold_uploads(&mut self, pause: Duration) {
        let until = self.parts.clock.now() + pause;
        self.held_until = Some(until);
        self.force_scan = true;
        self.next_rescan = self.next_rescan.min(until);
    }

    pub(super) fn finished(&mut self, key: &FileKey, result: JobResult) -> Result<()> {
        self.active.remove(key);
        self.status_soon();
        let path = key.path().to_path_buf();
        match result {
            JobResult::Done(c) => {
                self.totals.files_done += 1;
                if !c.already
                    && self.parts.store.damage().reset.is_some()
                    && self.predates_start(&path)
                {
                    self.totals_reuploaded += 1;
                }
                self.totals.last_success_unix = Some(unix(self.parts.clock.wall()));
                let media = c
                    .media_id()
                    .map_or(String::new(), |m| format!(", media id {m}"));
                log::info!(
                    "{}: uploaded, {} bytes, {}{media}",
                    path.display(),
                    c.length,
                    url::redact(&c.url)
                );
                self.uploaded(&path, key, false);
            }
            JobResult::Interrupted => {}
            JobResult::Failed(Error::Interrupted) => {}
            JobResult::Failed(e @ Error::State { .. }) => return Err(e),
            JobResult::Failed(e @ Error::Source { .. }) => self.source_failed(&path, key, e)?,
            JobResult::Failed(e @ Error::Network { .. }) => {
                // TLS settings (or the server's certificate) are wrong: not this file's fault.
                // It stays in the spool; uploads wait, then try again.
                log::error!("{e}; uploads wait {} s", LINK_TROUBLE_PAUSE.as_secs());
                self.hold_uploads(LINK_TROUBLE_PAUSE);
            }
            JobResult::Failed(e) => {
                let status = match &e {
                    Error::Server { status, .. } => Some(*status),
                    _ => None,
                };
                self.fail(&path, key, status, &e.to_string())?;
            }
        }
        Ok(())
    }

    /// Whether the file at `path` was last written before this daemon started.
    fn predates_start(&self, path: &Path) -> bool {
        spool::stat(path)
            .ok()
            .flatten()
            .is_some_and(|e| spool::mtime_of(&e.identity) < self.started)
    }
}
