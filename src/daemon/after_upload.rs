//! What follows a complete upload: the hook (if configured), then delete, move or keep.
//!
//! Key idea: the record says Complete before any of this runs, so every step can be redone
//! after a crash and none can cause a second upload. A failed hook is retried with a delay;
//! a failed action is retried by a forced scan soon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::durable;
use crate::error::Error;
use crate::hook;
use crate::spool;
use crate::store::{FileKey, RecordState};

use super::forget::FORGET_BATCH;
use super::{AfterUpload, Main};

/// How soon a failed after-upload action (delete, move) is tried again.
const AFTER_UPLOAD_RETRY: Duration = Duration::from_secs(10);

impl<'p, 'a> Main<'p, 'a> {
    /// The server holds the whole file: run the hook (if any, and not yet done), then the
    /// after-upload action.
    pub(super) fn uploaded(&mut self, path: &Path, key: &FileKey, hook_done: bool) {
        match &self.hooks {
            Some(_) if !hook_done => {
                if !self.hook_waiting.contains_key(key) {
                    self.start_hook(key);
                }
            }
            _ => {
                if !(hook_done && self.settings.after_upload == AfterUpload::Keep) {
                    self.after_upload(path, key);
                }
            }
        }
    }

    pub(super) fn start_hook(&mut self, key: &FileKey) {
        if let Some((tx, _)) = &self.hooks {
            if tx.send(key.clone()).is_ok() {
                let failures = self.hook_waiting.get(key).map_or(0, |w| w.1);
                self.hook_waiting.insert(key.clone(), (None, failures));
            }
        }
    }

    pub(super) fn hook_finished(
        &mut self,
        key: &FileKey,
        result: std::result::Result<bool, hook::HookError>,
    ) {
        let path = key.path().to_path_buf();
        match result {
            Ok(ran) => {
                if ran {
                    log::info!("{}: hook done", path.display());
                }
                self.hook_waiting.remove(key);
                // A new upload of the file (rewritten while this hook ran) may have completed
                // meanwhile; its hook did not start while this one ran: start it now.
                match self.parts.store.get(key) {
                    Ok(Some(rec)) if rec.state == RecordState::Complete && !rec.hook.done => {
                        self.start_hook(key)
                    }
                    _ => self.after_upload(&path, key),
                }
            }
            Err(e) => {
                let failures = self.hook_waiting.get(key).map_or(0, |w| w.1) + 1;
                let delay = hook::retry_delay(failures);
                log::warn!(
                    "{}: hook failed ({e}); trying again in {} s",
                    path.display(),
                    delay.as_secs()
                );
                self.hook_waiting.insert(
                    key.clone(),
                    (Some(self.parts.clock.now() + delay), failures),
                );
            }
        }
    }

    /// Deletes, moves or keeps a file the server holds completely (invariant 1 holds: the
    /// record says Complete only after the server confirmed offset == length).
    fn after_upload(&mut self, path: &Path, key: &FileKey) {
        let store = self.parts.store;
        if !self.in_spool(path) {
            // A reload moved the spool while this file was uploaded: it is no longer ours to
            // delete or move. Its Complete record keeps it from being uploaded again.
            log::warn!(
                "{}: uploaded, but no longer in the spool ({}); left where it is",
                path.display(),
                self.settings.spool.dir.display()
            );
            return;
        }
        if !matches!(self.settings.after_upload, AfterUpload::Keep)
            && !self.held_by_server(path, key)
        {
            // Rewritten after its upload completed: not what the server holds. Leave it; its
            // new upload (running, or queued by the scan: the identity no longer matches its
            // record) ends with its own after-upload action.
            log::warn!(
                "{}: changed after its upload completed; not touched: the new content is uploaded as a new upload",
                path.display()
            );
            self.force_scan = true;
            return;
        }
        let done = match &self.settings.after_upload {
            AfterUpload::Keep => Ok(()),
            // The Complete record stays until the directory is synced (`forget_deleted`): one
            // sync for a batch of deleted files.
            AfterUpload::Delete => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => {
                    self.deleted.push(key.clone());
                    Ok(())
                }
            },
            AfterUpload::Move(dir) => move_into(path, dir, &|_| Ok(())).map(|_| ()),
        };
        let result = done.map_err(Error::from_io(path)).and_then(|()| {
            // A move synced both directories: its record can go now.
            if matches!(self.settings.after_upload, AfterUpload::Move(_)) {
                store.remove(key)?;
            }
            if self.deleted.len() >= FORGET_BATCH {
                self.forget_deleted()?;
            }
            self.unqueue(key)
        });
        if let Err(e) = result {
            // The record stays Complete: a scan soon tries the action again, never the upload.
            // It must be forced: a failed delete or move leaves the spool unchanged, and a scan
            // of an unchanged spool is skipped.
            log::error!(
                "{}: uploaded, but the after-upload action failed: {e}; tried again in {} s",
                path.display(),
                AFTER_UPLOAD_RETRY.as_secs()
            );
            self.force_scan = true;
            let soon = self.parts.clock.now() + AFTER_UPLOAD_RETRY;
            self.next_rescan = self.next_rescan.min(soon);
        }
    }
}

/// Moves `path` into `dir` (created if needed) without overwriting; `before` runs with the
/// destination just before the rename (to put a sidecar there first). Returns the new path.
pub(super) fn move_into(
    path: &Path,
    dir: &Path,
    before: &dyn Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    durable::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut dest = dir.join(name);
    let mut n = 1;
    while dest.symlink_metadata().is_ok() {
        dest = dir.join(format!("{}.{n}", name.to_string_lossy()));
        n += 1;
    }
    before(&dest)?;
    // Target directory synced, then the source: after a cut the file is in the target, or
    // still in the spool with its Complete record (moved again), never in neither.
    durable::rename(path, &dest).map_err(|e| {
        if e.raw_os_error() == Some(18) {
            std::io::Error::other(format!(
                "{} is on another filesystem than the spool; choose a directory on the same one",
                dir.display()
            ))
        } else {
            e
        }
    })?;
    Ok(dest)
}

impl Main<'_, '_> {
    /// True when the file at `path` is the content of a completed upload (invariant 1): its
    /// record is Complete and names the file's identity now. A file rewritten after its upload
    /// completed fails this; so does one whose new upload has already started.
    fn held_by_server(&self, path: &Path, key: &FileKey) -> bool {
        let Ok(Some(rec)) = self.parts.store.get(key) else {
            return false;
        };
        match spool::stat(path) {
            Ok(Some(entry)) => rec.state == RecordState::Complete && entry.identity == rec.identity,
            // Gone already: nothing to delete or move (the action treats it so).
            Ok(None) => true,
            Err(_) => false,
        }
    }
}
