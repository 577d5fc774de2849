//! Dropping the records of files that left the spool (deleted by us, or vanished).
//!
//! Key idea: a record goes only when the file's absence is durable: its directory is synced
//! first (once per directory, for a batch of files), so a power cut that undoes a deletion
//! finds the record again instead of a file it would upload a second time.

use std::collections::HashSet;
use std::path::Path;

use crate::durable;
use crate::error::Result;
use crate::store::FileKey;
use crate::store::RecordState;

use super::Main;

/// After this many deletions their directory is synced and their records dropped.
pub(super) const FORGET_BATCH: usize = 64;

impl<'p, 'a> Main<'p, 'a> {
    /// Drops the Complete records of the files deleted since the last call, after one sync of
    /// their directories: a record goes only when the deletion it stands for is durable, so a
    /// cut that undoes a deletion finds the record and deletes the file again. Called at every
    /// scan and every [`FORGET_BATCH`] deletions, which bounds the records kept meanwhile.
    pub(super) fn forget_deleted(&mut self) -> Result<()> {
        if !sync_parents(self.deleted.iter()) {
            return Ok(());
        }
        for key in std::mem::take(&mut self.deleted) {
            self.parts.store.remove(&key)?;
        }
        Ok(())
    }

    /// Drops records of files that left the spool while not being uploaded. Their directories
    /// are synced first, as in [`Self::forget_deleted`]: a record goes only when the file's
    /// absence is durable.
    pub(super) fn forget_vanished(&mut self) -> Result<()> {
        self.forget_deleted()?;
        let vanished: Vec<_> = self
            .parts
            .store
            .records()?
            .into_iter()
            .filter(|rec| {
                !self.core.is_started(&rec.path)
                    && !self.core.is_finishing(&rec.path)
                    && rec.path.path().symlink_metadata().is_err()
            })
            .collect();
        if !sync_parents(vanished.iter().map(|rec| &rec.path)) {
            return Ok(());
        }
        for rec in vanished {
            if rec.state == RecordState::Uploading {
                log::info!(
                    "{}: vanished before its upload finished; forgotten",
                    rec.path
                );
            }
            self.parts.store.remove(&rec.path)?;
            self.unqueue(&rec.path)?;
        }
        Ok(())
    }
}

/// Syncs the directories holding `paths`, each once; false (and a warning) when one fails:
/// the records of files gone from them are then kept until the next scan.
pub(super) fn sync_parents<'k>(keys: impl Iterator<Item = &'k FileKey>) -> bool {
    let dirs: HashSet<&Path> = keys.filter_map(|k| k.path().parent()).collect();
    for dir in dirs {
        if let Err(e) = durable::sync_dir(dir) {
            log::warn!(
                "{}: cannot sync: {e}; the records of files gone from it are kept until the next scan",
                dir.display()
            );
            return false;
        }
    }
    true
}
