//! What follows a complete upload: the hook (if configured), then delete, move or keep.
//!
//! Key idea: the record says Complete before any of this runs, so every step can be redone
//! after a crash and none can cause a second upload. The core decides when each runs (the
//! hook first, each retried after a failure); this file carries them out.

use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{Error, Result};
use crate::hook;
use crate::spool;
use crate::store::{FileKey, RecordState};

use super::forget::FORGET_BATCH;
use super::schedule::{Input, AFTER_UPLOAD_RETRY};
use super::{AfterUpload, Main};

impl<'p, 'a> Main<'p, 'a> {
    /// A file whose upload completed before (found by a scan): the core runs what is left of
    /// its finish, the hook (unless `hook_done`) and the after-upload action. A kept file
    /// whose hook is done (or that has none) has nothing left.
    pub(super) fn uploaded(&mut self, key: &FileKey, hook_done: bool) -> Result<()> {
        if self.settings.after_upload == AfterUpload::Keep && (hook_done || self.hooks.is_none()) {
            return Ok(());
        }
        self.tell(Input::Complete {
            key: key.clone(),
            hook_done,
        })
    }

    /// Hands the hook of `key` to the hook thread (the core asked for it).
    pub(super) fn start_hook(&mut self, key: &FileKey) -> Result<()> {
        let sent = self
            .hooks
            .as_ref()
            .is_some_and(|(tx, _)| tx.send(key.clone()).is_ok());
        if !sent {
            // No hook thread (none configured, or it ended): nothing to wait for.
            return self.tell(Input::HookEnded {
                key: key.clone(),
                ok: true,
            });
        }
        Ok(())
    }

    pub(super) fn hook_finished(
        &mut self,
        key: &FileKey,
        result: std::result::Result<bool, hook::HookError>,
    ) -> Result<()> {
        let path = key.path().to_path_buf();
        let ok = match result {
            Err(hook::HookError::NotComplete) => {
                // Rewritten, and its new upload started, before this hook ran: the record
                // now belongs to the new content, whose own hook runs once it is uploaded.
                log::warn!(
                    "{}: rewritten before its hook ran; the hook runs for the new content once that is uploaded",
                    path.display()
                );
                true
            }
            Ok(ran) => {
                if ran {
                    log::info!("{}: hook done", path.display());
                }
                true
            }
            Err(e) => {
                let failures = self.core.finish_failures(key) + 1;
                log::warn!(
                    "{}: hook failed ({e}); trying again in {} s",
                    path.display(),
                    hook::retry_delay(failures).as_secs()
                );
                false
            }
        };
        self.tell(Input::HookEnded {
            key: key.clone(),
            ok,
        })
    }

    /// Carries out the after-upload action of `key` (the core asked for it) and reports back.
    pub(super) fn finish_upload(&mut self, key: &FileKey) -> Result<()> {
        // The worker wrote the completion without a sync (it went on to the next file): make
        // it durable before the file is deleted, moved or kept, so that a power cut can never
        // leave a file gone, or kept, with a record that does not say complete. A hook ran
        // before this one synced it already (and this costs nothing then).
        self.parts.store.sync()?;
        let path = key.path().to_path_buf();
        let ok = self.after_upload(&path, key);
        self.tell(Input::ActionEnded {
            key: key.clone(),
            ok,
        })
    }

    /// Deletes, moves or keeps a file the server holds completely (invariant 1 holds: the
    /// record says Complete only after the server confirmed offset == length). False when
    /// the action failed (the core tries it again soon).
    fn after_upload(&mut self, path: &Path, key: &FileKey) -> bool {
        let store = self.parts.store;
        if !self.in_spool(path) {
            // A reload moved the spool while this file was uploaded: it is no longer ours to
            // delete or move. Its Complete record keeps it from being uploaded again.
            log::warn!(
                "{}: uploaded, but no longer in the spool ({}); left where it is",
                path.display(),
                self.settings.spool.dir.display()
            );
            return true;
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
            return true;
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
            Ok(())
        });
        match result {
            Ok(()) => true,
            Err(e) => {
                // The record stays Complete: the action is tried again, never the upload.
                log::error!(
                    "{}: uploaded, but the after-upload action failed: {e}; tried again in {} s",
                    path.display(),
                    AFTER_UPLOAD_RETRY.as_secs()
                );
                false
            }
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
