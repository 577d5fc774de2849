//! Making the store's writes durable: sled's flush, then the syncs it leaves out, shared by
//! every thread that is waiting (group commit); a failed write or sync poisons the store.
//!
//! Key idea: sled's `flush()` writes its log with `sync_file_range`, which syncs neither the
//! file's size and new blocks nor any directory entry, so after it the store syncs sled's log
//! file (`fdatasync`) and, when their names changed, its directories. After a failed `fsync`
//! the kernel may have dropped the dirty pages, so nothing written since the last good sync can
//! be trusted: the store refuses every later call until ferry restarts and reads the disk again.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{io_err, sled_err, state_err, Store};
use crate::durable;
use crate::error::{Error, Result};

/// The group commit's bookkeeping (see [`Store::flush`]).
#[derive(Default)]
pub(super) struct Commits {
    state: Mutex<CommitState>,
    done: std::sync::Condvar,
    /// Syncs run so far.
    pub(super) syncs: AtomicU64,
}

#[derive(Default)]
struct CommitState {
    /// Writes made so far.
    writes: u64,
    /// Writes known durable.
    synced: u64,
    /// A sync is running.
    syncing: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Store::flush`] syncs after sled's flush.
pub(super) struct SyncHandles {
    /// sled's log file.
    log: File,
    /// sled's directory, and the names in it and in its `blobs/` when they were last synced:
    /// sled renames snapshots in the background and writes a value too large for its log
    /// (over 128 KiB: an index node of very long paths) to a new file in `blobs/` without
    /// syncing it. Only a sync makes those durable. Reading the names is far cheaper than a
    /// sync (which costs a disk cache flush even when nothing changed), so the directories
    /// (and new blob files) are synced only when the names changed.
    db_dir: PathBuf,
    synced_names: Mutex<Vec<PathBuf>>,
}

impl Store {
    /// Fails if an earlier write or sync failed (see the module doc).
    pub(super) fn healthy(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            None => Ok(()),
            Some(why) => Err(state_err(
                &self.dir,
                format!("an earlier write failed ({why}); nothing written since the last good sync can be trusted: restart ferry"),
            )),
        }
    }

    /// Runs a sled write; a failure poisons the store.
    pub(super) fn write(&self, f: impl FnOnce(&sled::Db) -> sled::Result<()>) -> Result<()> {
        self.healthy()?;
        f(&self.db).map_err(|e| self.poison(sled_err(&self.dir, e)))?;
        lock(&self.commits.state).writes += 1;
        Ok(())
    }

    /// Makes every write so far durable (see the module doc); a failure poisons the store.
    ///
    /// Group commit: a caller that finds a sync running waits for it to end, and then for
    /// the next one if that one started before its write. One sync then covers the writes
    /// of every upload thread (and the hook's) that arrived meanwhile.
    pub(super) fn flush(&self) -> Result<()> {
        let mut st = lock(&self.commits.state);
        let want = st.writes;
        loop {
            self.healthy()?;
            if st.synced >= want {
                return Ok(());
            }
            if !st.syncing {
                break;
            }
            st = self
                .commits
                .done
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        st.syncing = true;
        let covers = st.writes;
        drop(st);
        let result = self.sync_now();
        let mut st = lock(&self.commits.state);
        st.syncing = false;
        if result.is_ok() {
            st.synced = covers;
        }
        self.commits.done.notify_all();
        result
    }

    /// sled's flush, then a sync of its log file and directory.
    fn sync_now(&self) -> Result<()> {
        self.db
            .flush()
            .map_err(|e| self.poison(sled_err(&self.dir, e)))?;
        self.commits.syncs.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = &self.sync {
            h.sync()
                .map_err(|e| self.poison(io_err(&self.dir, "cannot sync the database", e)))?;
        }
        Ok(())
    }

    pub(super) fn poison(&self, e: Error) -> Error {
        let mut p = lock(&self.poisoned);
        if p.is_none() {
            *p = Some(match &e {
                Error::State { problem, .. } => problem.clone(),
                other => other.to_string(),
            });
        }
        e
    }
}

impl SyncHandles {
    /// After [`sync_tree`]: the directory's names as they are now are synced.
    pub(super) fn open(db_dir: &Path) -> std::result::Result<Self, String> {
        let log = db_dir.join("db");
        Ok(Self {
            log: File::open(&log).map_err(|e| format!("cannot open {}: {e}", log.display()))?,
            db_dir: db_dir.to_path_buf(),
            synced_names: Mutex::new(Vec::new()),
        })
    }

    /// `fdatasync` of the log: its data and what reading it needs (size, new blocks), which
    /// sled's `sync_file_range` leaves out; the directory when its names changed.
    fn sync(&self) -> std::io::Result<()> {
        self.log.sync_data()?;
        let blobs = self.db_dir.join("blobs");
        let mut names = names_in(&self.db_dir, Path::new(""))?;
        if blobs.is_dir() {
            names.extend(names_in(&blobs, Path::new("blobs"))?);
        }
        let mut synced = lock(&self.synced_names);
        if *synced == names {
            return Ok(());
        }
        for new_blob in names
            .iter()
            .filter(|n| n.parent() == Some(Path::new("blobs")) && !synced.contains(n))
        {
            File::open(self.db_dir.join(new_blob))?.sync_all()?;
        }
        if blobs.is_dir() {
            durable::sync_dir(&blobs)?;
        }
        durable::sync_dir(&self.db_dir)?;
        *synced = names;
        Ok(())
    }
}

/// The names in `dir`, sorted, each under `prefix`.
fn names_in(dir: &Path, prefix: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| prefix.join(e.file_name())))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// Syncs sled's files and every directory from `db_dir` up to the state directory's parent.
pub(super) fn sync_tree(db_dir: &Path, dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(db_dir)? {
        let entry = entry?;
        File::open(entry.path())?.sync_all()?;
    }
    durable::sync_dir(db_dir)?;
    durable::sync_dir(dir)?;
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => durable::sync_dir(p),
        _ => Ok(()),
    }
}
