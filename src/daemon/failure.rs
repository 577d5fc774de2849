//! Files that cannot be uploaded: a changed or unreadable source, and permanent failures.
//!
//! Key idea: a source problem is not final: a file that changed waits to settle and an
//! unreadable one is tried again at the next scan. A permanent failure moves the file into
//! the failed directory with a JSON sidecar, or (without one, or when the move fails)
//! remembers it in place with its identity, so that only new content is tried again.

use std::path::{Path, PathBuf};

use crate::durable;
use crate::error::{Error, Result};
use crate::spool;
use crate::status::FailedFile;
use crate::store::FailedRecord;
use crate::store::FileKey;

use super::after_upload::move_into;
use super::forget::sync_parents;
use super::report::MAX_RECENT_FAILED;
use super::{unix, Main};

impl<'p, 'a> Main<'p, 'a> {
    /// The file vanished, changed or cannot be read.
    pub(super) fn source_failed(&mut self, path: &Path, key: &FileKey, e: Error) -> Result<()> {
        let store = self.parts.store;
        match spool::stat(path) {
            Ok(None) => {
                self.unqueue(key)?;
                // As in forget_vanished: the record goes only once the file's absence is on
                // disk, or a power cut that undid the deletion would bring the file back
                // without its upload URL (a second upload). A failed sync keeps the record
                // for the next scan to forget.
                if sync_parents(std::iter::once(key)) {
                    log::info!("{}: vanished; forgotten", path.display());
                    store.remove(key)?;
                }
                Ok(())
            }
            Ok(Some(entry)) if entry.kind == spool::Kind::File => {
                self.unqueue(key)?;
                if std::fs::File::open(path).is_ok() {
                    // It changed (again): let it settle, then it is queued as new content.
                    log::warn!("{e}; waiting for it to settle");
                    let due = self.parts.clock.now() + self.settings.spool.settle;
                    self.settling.insert(path.to_path_buf(), due);
                } else {
                    // Unreadable: an operator can fix permissions without touching the
                    // content, so this is no permanent failure; the next scan tries again.
                    log::warn!("{e}; tried again at the next scan");
                    self.force_scan = true;
                }
                Ok(())
            }
            Ok(Some(_)) => {
                // Replaced by a link, FIFO or directory: the next look refuses it.
                self.unqueue(key)?;
                Ok(())
            }
            Err(_) => self.fail(path, key, None, &e.to_string()),
        }
    }

    /// A permanent failure: move the file aside with a sidecar, or remember it in place.
    pub(super) fn fail(
        &mut self,
        path: &Path,
        key: &FileKey,
        status: Option<u16>,
        message: &str,
    ) -> Result<()> {
        log::error!("{message}");
        self.totals.files_failed += 1;
        let store = self.parts.store;
        let now = unix(self.parts.clock.wall());
        let mut moved_to = None;
        if let Some(dir) = &self.settings.failed_dir {
            let sidecar = serde_json::json!({ "path": key, "status": status, "message": message, "failed_unix": now });
            let write_sidecar = |dest: &Path| {
                durable::write_atomic(&sidecar_path(dest), sidecar.to_string().as_bytes())
            };
            match move_into(path, dir, &write_sidecar) {
                Ok(dest) => {
                    moved_to = Some(dest.display().to_string());
                    store.remove(key)?;
                }
                Err(e) => log::error!(
                    "{}: cannot move to {}: {e}; kept in place",
                    path.display(),
                    dir.display()
                ),
            }
        }
        if moved_to.is_none() {
            if let Ok(Some(entry)) = spool::stat(path) {
                let rec = FailedRecord {
                    path: key.clone(),
                    identity: entry.identity,
                    status,
                    message: message.to_string(),
                    failed_unix: now,
                };
                store.put_failed(&rec)?;
            }
        }
        self.unqueue(key)?;
        self.recent_failed.push_front(FailedFile {
            path: key.to_string(),
            status,
            message: message.to_string(),
            failed_unix: now,
            moved_to,
        });
        self.recent_failed.truncate(MAX_RECENT_FAILED);
        Ok(())
    }
}

fn sidecar_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".ferry-error.json");
    file.with_file_name(name)
}
