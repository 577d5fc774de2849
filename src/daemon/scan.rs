//! Finding ready files: full scans of the spool and single paths from inotify, into the queue.
//!
//! Key idea: every path goes through `spool::judge`; a file not yet settled waits in
//! `settling` with its due time, a ready one is offered to the queue window unless the store
//! says it is done (then only its after-upload action is left) or failed with the same
//! identity. A scan of an unchanged (non-recursive) spool is skipped while inotify works.

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use crate::error::Result;
use crate::spool::{self, Verdict};
use crate::store::FileKey;
use crate::store::RecordState;

use super::evict::Waiters;
use super::schedule::{Input, Rank};
use super::Main;

/// Full rescans when inotify is not available.
pub(super) const RESCAN_WITHOUT_WATCH: Duration = Duration::from_secs(2);
/// How many refused paths are remembered so each is logged once.
const MAX_REFUSED_REMEMBERED: usize = 10_000;

impl<'p, 'a> Main<'p, 'a> {
    /// Lists the whole spool: queues ready files, forgets records of files that are gone.
    pub(super) fn rescan(&mut self) -> Result<()> {
        self.next_rescan = self.parts.clock.now() + self.rescan_every;
        // With inotify working, a scan of an unchanged spool finds nothing new: skip it.
        let dir_mtime = std::fs::metadata(&self.settings.spool.dir)
            .and_then(|m| m.modified())
            .ok();
        let unchanged = dir_mtime.is_some() && dir_mtime == self.last_scan_dir_mtime;
        if !self.force_scan && self.watch_ok && !self.settings.spool.recursive && unchanged {
            return Ok(());
        }
        self.force_scan = false;
        self.last_scan_dir_mtime = dir_mtime;
        let began = self.parts.clock.now();
        self.last_scan_began = Some(began);
        self.tell(Input::BeginScan)?;
        let rules = self.settings.spool.clone();
        // A check follows every scan (soon, not more often than arrivals make one): when it is
        // due already, this walk collects for it, and the spool is walked once for both.
        self.spool_watch.scanned();
        let mut for_check = self
            .check_due_now()
            .then(|| Waiters::new(self.parts.clock.wall()));
        let mut first_error = None;
        let mut entries = 0u64;
        let walked = spool::walk(
            &rules,
            &mut |e| {
                entries += 1;
                if first_error.is_none() {
                    // The check sees the entry as the scan left it (settling, queued).
                    first_error = match for_check.as_mut() {
                        Some(c) => self
                            .consider_entry(e.clone(), false, true)
                            .and_then(|()| self.collect_waiting(c, &e))
                            .err(),
                        None => self.consider_entry(e, false, true).err(),
                    };
                }
                // A scan is never cut short: what it does not see, the scheduler forgets.
                ControlFlow::Continue(())
            },
            &mut |p, e| log::warn!("{}: cannot read: {e}", p.display()),
        );
        if let Some(e) = first_error {
            return Err(e);
        }
        log::debug!(
            "scan: {entries} entries walked in {} ms",
            self.parts
                .clock
                .now()
                .saturating_duration_since(began)
                .as_millis()
        );
        if let Err(e) = walked {
            self.last_scan_began = None; // it saw nothing
            if !self.spool_missing {
                log::error!(
                    "spool directory {}: {e}; waiting for it (create it or fix spool.dir)",
                    self.settings.spool.dir.display()
                );
            }
            self.spool_missing = true;
            self.next_rescan = self.parts.clock.now()
                + RESCAN_WITHOUT_WATCH
                    .max(Duration::from_secs(5))
                    .min(self.rescan_every);
            self.announce_ready();
            return Ok(());
        }
        if self.spool_missing {
            log::info!(
                "spool directory {} is there now",
                self.settings.spool.dir.display()
            );
            self.spool_missing = false;
        }
        self.forget_vanished()?;
        match for_check {
            Some(c) => self.check_walked(c.walked(began))?,
            None => self.check_spool_if_due()?,
        }
        self.announce_ready();
        Ok(())
    }

    /// Looks at one spool path; `written` when a writer just closed or renamed it.
    pub(super) fn consider(&mut self, path: &Path, written: bool) -> Result<()> {
        match spool::stat(path) {
            Ok(Some(e)) => self.consider_entry(e, written, false),
            Ok(None) => {
                self.settling.remove(path);
                match FileKey::for_path(path) {
                    Ok(key) => self.unqueue(&key),
                    _ => Ok(()),
                }
            }
            Err(e) => {
                log::warn!("{}: cannot look at it: {e}", path.display());
                Ok(())
            }
        }
    }

    /// What the spool's rules say of `entry` at `wall` (ignored, refused, not yet, ready).
    pub(super) fn verdict(&self, entry: &spool::Entry, wall: std::time::SystemTime) -> Verdict {
        let name = entry
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        spool::judge(&name, entry.kind, entry.mtime(), wall, &self.settings.spool)
    }

    fn consider_entry(&mut self, entry: spool::Entry, written: bool, by_scan: bool) -> Result<()> {
        let path = entry.path.clone();
        let path = path.as_path();
        if !self.in_spool(path) {
            // From a watcher of the spool before a reload moved it.
            return Ok(());
        }
        let Ok(key) = FileKey::for_path(path) else {
            return Ok(());
        };
        let verdict = self.verdict(&entry, self.parts.clock.wall());
        if matches!(verdict, Verdict::Ready | Verdict::NotYet(_)) {
            let ready = written || verdict == Verdict::Ready;
            self.spool_watch.saw(by_scan, ready);
        }
        match verdict {
            Verdict::Ignored => Ok(()),
            Verdict::Refused(why) => {
                if self.refused.len() < MAX_REFUSED_REMEMBERED
                    && self.refused.insert(path.to_path_buf())
                {
                    log::warn!("{}: {why}; not uploaded", path.display());
                }
                Ok(())
            }
            Verdict::NotYet(d) if !written => {
                self.settling
                    .insert(path.to_path_buf(), self.parts.clock.now() + d);
                Ok(())
            }
            Verdict::NotYet(_) | Verdict::Ready => self.ready(path, &key, entry.identity, by_scan),
        }
    }

    fn ready(
        &mut self,
        path: &Path,
        key: &FileKey,
        identity: crate::source::Identity,
        by_scan: bool,
    ) -> Result<()> {
        self.settling.remove(path);
        if self.core.is_started(key) {
            return Ok(());
        }
        let store = self.parts.store;
        let record = store.get(key)?;
        if let Some(rec) = &record {
            if rec.state == RecordState::Complete && rec.identity == identity {
                // Uploaded before a crash or restart: hook and action not yet done (or kept).
                return self.uploaded(key, rec.hook.done);
            }
        }
        if let Some(f) = store.get_failed(key)? {
            if f.identity == identity {
                return Ok(());
            }
            store.remove_failed(key)?;
        }
        // A record of the same content with its URL resumes; the upload itself decides,
        // from the record, whether the content is the same.
        let has_url =
            record.is_some_and(|r| r.state == RecordState::Uploading && r.identity == identity);
        let rules = &self.settings.spool;
        let rank = Rank::new(
            rules.priority_class(key.path()),
            spool::mtime_of(&identity),
            rules.newest_first,
        );
        // The status counts it within a second, also when nothing starts (paused, held),
        // not at the next idle write (30 s).
        self.status_soon();
        self.tell(Input::Ready {
            key: key.clone(),
            rank,
            has_url,
            by_scan,
        })
    }

    /// Takes `key` out of the queue, and stops its upload if one started (it is gone).
    pub(super) fn unqueue(&mut self, key: &FileKey) -> Result<()> {
        self.tell(Input::Gone(key.clone()))
    }
}
