//! The state store: one typed, versioned record per file, in sled (the only module naming sled).
//!
//! A record is the single truth about a file between runs: its identity, the upload URL and
//! whether it completed. The server's offset, not ours, decides where to resume (invariant 3),
//! so the stored offset is for status display only.
//!
//! **Durable** means it survives a power cut. sled's `flush()` writes its log with
//! `sync_file_range`, which syncs neither the file's size and new blocks nor any directory
//! entry, so after it the store syncs sled's log file (`fsync`) and its directory itself.
//! Writes a checkpoint depends on ([`Store::put`], [`Store::put_failed`]) are durable before
//! they return (invariant 2: the URL is on disk before the first data byte);
//! [`Store::put_unsynced`] and removals ride along with the next durable write.
//!
//! A write or sync that fails **poisons** the store: after a failed `fsync` the kernel may
//! have dropped the dirty pages, so nothing this process wrote since the last good sync can be
//! trusted, and every later call fails until ferry restarts and reads the disk again.
//!
//! Damaged state never stops a device: a database sled cannot open, or one that opens without
//! the identity it was created with (truncated, replaced, emptied), is moved aside into
//! `damaged/` and a new one started; an unreadable record is moved aside inside the database.
//! Both are logged at error level and counted ([`Store::damage`]); the files they described
//! are uploaded again, which is the only safe thing left to do.
//!
//! Files: `record` (what a record holds and how it is read), `commit` (durability: sync, group
//! commit, poisoning), `damage` (moving damaged state aside), `holder` (who holds the lock);
//! this file the [`Store`] API.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use crate::durable;
use crate::error::{Error, Result};

mod commit;
mod damage;
mod holder;
mod key;
mod record;
#[cfg(test)]
mod tests;

use commit::{sync_tree, Commits, SyncHandles};
pub(crate) use damage::StateReset;
pub(crate) use key::FileKey;
use record::{decode, decode_failed, failed_key, key, FAILED_PREFIX, FILE_PREFIX};
pub(crate) use record::{FailedRecord, FileRecord, RecordState, RECORD_VERSION};

/// sled's page cache; its default (1 GiB) is absurd on a Pi.
const CACHE_CAPACITY_BYTES: u64 = 1024 * 1024;

/// The sled-backed store.
pub(crate) struct Store {
    db: sled::Db,
    dir: PathBuf,
    /// sled's log file and directory, synced after every flush; `None` for a temporary store.
    sync: Option<SyncHandles>,
    /// Why the store is unusable, after a failed write or sync.
    poisoned: Mutex<Option<String>>,
    /// The database moved aside at open, if it was damaged.
    reset: Option<StateReset>,
    /// Records moved aside because they could not be read.
    damaged_records: AtomicU64,
    commits: Commits,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// A store another process holds, a directory ferry may not write and a full disk give a
    /// clear error; a damaged database is moved aside and a new one started (see the module
    /// doc). Every directory entry on the way is synced before this returns.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        durable::create_dir_all(dir)
            .map_err(|e| state_err(dir, format!("cannot create it: {e}")))?;
        let db_dir = dir.join("db");
        let existed = db_dir.exists();
        if !existed {
            log::info!(
                "state directory {}: new state database (first start, or the state was deleted: files in the spool are uploaded from the start)",
                dir.display()
            );
        }
        let (db, reset) = damage::open_checked(dir, &db_dir, existed)?;
        let store = Self {
            sync: Some(SyncHandles::open(&db_dir).map_err(|e| state_err(dir, e))?),
            db,
            dir: dir.to_path_buf(),
            poisoned: Mutex::new(None),
            reset,
            damaged_records: AtomicU64::new(0),
            commits: Commits::default(),
        };
        store.adopt_identity()?;
        // sled created or replaced files (conf, db, snapshots, blobs/) that only a sync of each
        // and of every directory above makes durable; systemd's StateDirectory= too.
        sync_tree(&db_dir, dir).map_err(|e| state_err(dir, format!("cannot sync it: {e}")))?;
        Ok(store)
    }

    /// A store in a temporary directory that is removed when dropped (tests).
    #[cfg(test)]
    pub(crate) fn open_temporary() -> Result<Self> {
        let dir = std::env::temp_dir();
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|e| sled_err(&dir, e))?;
        Ok(Self {
            db,
            dir,
            sync: None,
            poisoned: Mutex::new(None),
            reset: None,
            damaged_records: AtomicU64::new(0),
            commits: Commits::default(),
        })
    }

    /// Makes every write so far durable, then leaves sled's files to the process's exit
    /// instead of running sled's own shutdown: that ends in an `fsync` whose failure panics
    /// (sled 0.34 `Log::drop` unwraps it), an abort in release builds. For the end of a
    /// command only: the process exits right after, which closes the files and the lock.
    pub(crate) fn close(self) -> Result<()> {
        let result = self.flush();
        std::mem::forget(self);
        result
    }

    /// Syncs run so far (tests count them: only the durable points of a file's life sync).
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.commits
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The record for `path`, if any. An unreadable record is moved aside and reads as none.
    pub(crate) fn get(&self, path: &FileKey) -> Result<Option<FileRecord>> {
        self.read_one(&key(path), decode)
    }

    /// Writes `record` and makes it durable before returning.
    pub(crate) fn put(&self, record: &FileRecord) -> Result<()> {
        self.put_unsynced(record)?;
        self.flush()
    }

    /// Writes `record` without syncing it: for what the server can tell again (the offset, the
    /// expiry). The next durable write takes it along.
    pub(crate) fn put_unsynced(&self, record: &FileRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.write(|db| db.insert(key(&record.path), value).map(|_| ()))
    }

    /// Makes every write so far durable (shared with other threads' syncs: group commit).
    pub(crate) fn sync(&self) -> Result<()> {
        self.flush()
    }

    /// Removes the record for `path`. Not synced (the next durable write takes it along): a
    /// removal lost in a cut only brings back a record that is looked at and dropped again.
    pub(crate) fn remove(&self, path: &FileKey) -> Result<()> {
        self.write(|db| db.remove(key(path)).map(|_| ()))
    }

    /// Removes the record for `path` and makes that durable before returning (a file the
    /// spool limits evicted: its upload must not come back as one to resume).
    pub(crate) fn remove_durably(&self, path: &FileKey) -> Result<()> {
        self.remove(path)?;
        self.flush()
    }

    /// All records, in key order; unreadable ones are moved aside and left out.
    pub(crate) fn records(&self) -> Result<Vec<FileRecord>> {
        self.read_all(FILE_PREFIX, decode)
    }

    /// Records a permanent failure of a file kept in place (durably).
    pub(crate) fn put_failed(&self, rec: &FailedRecord) -> Result<()> {
        let value = serde_json::to_vec(rec).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.write(|db| db.insert(failed_key(&rec.path), value).map(|_| ()))?;
        self.flush()
    }

    /// The failure record of `path`, if any (an unreadable one is moved aside).
    pub(crate) fn get_failed(&self, path: &FileKey) -> Result<Option<FailedRecord>> {
        self.read_one(&failed_key(path), decode_failed)
    }

    /// Forgets the failure of `path`.
    pub(crate) fn remove_failed(&self, path: &FileKey) -> Result<()> {
        self.write(|db| db.remove(failed_key(path)).map(|_| ()))
    }

    /// All failure records (unreadable ones are moved aside and left out).
    pub(crate) fn failed(&self) -> Result<Vec<FailedRecord>> {
        self.read_all(FAILED_PREFIX, decode_failed)
    }

    /// The value under `k`, decoded; an undecodable one is set aside and reads as none.
    fn read_one<T>(
        &self,
        k: &[u8],
        decode: fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        self.healthy()?;
        let Some(raw) = self.db.get(k).map_err(|e| sled_err(&self.dir, e))? else {
            return Ok(None);
        };
        match decode(&raw) {
            Ok(v) => Ok(Some(v)),
            Err(problem) => {
                self.set_aside(k, &problem)?;
                Ok(None)
            }
        }
    }

    /// Every value under `prefix`, decoded; undecodable ones are set aside and left out.
    fn read_all<T>(
        &self,
        prefix: &str,
        decode: fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        self.healthy()?;
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(prefix) {
            let (k, v) = kv.map_err(|e| sled_err(&self.dir, e))?;
            match decode(&v) {
                Ok(v) => out.push(v),
                Err(problem) => self.set_aside(&k, &problem)?,
            }
        }
        Ok(out)
    }
}

/// A file record's bytes read as [`Store::get`] reads them (for the fuzz targets).
#[cfg(fuzzing)]
pub(crate) fn decode_record(raw: &[u8]) -> std::result::Result<FileRecord, String> {
    decode(raw)
}

/// A failure record's bytes read as [`Store::get_failed`] reads them (for the fuzz targets).
#[cfg(fuzzing)]
pub(crate) fn decode_failed_record(raw: &[u8]) -> std::result::Result<FailedRecord, String> {
    decode_failed(raw)
}

/// sled's log segment, and the size of each of its log buffers in memory, which it writes
/// through (so they are resident). sled's default, 512 KiB, was about 400 KiB of a daemon's
/// peak RSS more. Values over a quarter of a segment go to files of their own (`blobs/`): a
/// record is well under 1 KiB, a tree node under 16 KiB.
const SEGMENT_BYTES: usize = 128 * 1024;

/// sled refuses a store with another segment size than the one it was created with (stores of
/// earlier versions have sled's default), so an existing store keeps its own.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .mode(sled::Mode::LowSpace)
        .segment_size(created_segment_size(path).unwrap_or(SEGMENT_BYTES))
        .flush_every_ms(None) // every write that matters is flushed explicitly
        .open()
}

/// The segment size of the store in `path`, from the `conf` file sled writes when it creates
/// one (`segment_size: N` is its first line; a CRC follows the text). `None` when there is
/// none: a new store.
fn created_segment_size(path: &Path) -> Option<usize> {
    let conf = std::fs::read(path.join("conf")).ok()?;
    String::from_utf8_lossy(&conf).lines().find_map(|line| {
        line.strip_prefix("segment_size:")
            .and_then(|n| n.trim().parse().ok())
    })
}

fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
}

/// The pid of the process that holds the store in `dir` open, if any and if it can be told
/// (Linux's `/proc/locks`): how `ferry status` knows a daemon runs on a state directory.
pub(crate) fn holder(dir: &Path) -> Option<u32> {
    holder::owner(&lock_file(dir))
}

/// The file sled locks while a process has the store open.
fn lock_file(dir: &Path) -> PathBuf {
    dir.join("db").join("db")
}

/// The problem of a state directory another process holds, naming that process if it can.
fn in_use(dir: &Path) -> String {
    let who = holder::describe(&lock_file(dir)).map_or(String::new(), |who| format!(" ({who})"));
    format!(
        "is in use by another ferry process{who}; one process per state directory: wait for it to end, stop it, or give this command its own --state-dir"
    )
}

fn state_err(dir: &Path, problem: String) -> Error {
    Error::State {
        dir: dir.to_path_buf(),
        problem,
    }
}

fn io_err(dir: &Path, what: &str, e: std::io::Error) -> Error {
    let problem = if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        format!("{what}: the disk is full: free space, then run ferry again (nothing was lost)")
    } else {
        format!("{what}: {e}")
    };
    state_err(dir, problem)
}

fn sled_err(dir: &Path, e: sled::Error) -> Error {
    let problem = match e {
        sled::Error::Io(io) if is_lock_error(&io) => in_use(dir),
        // sled sometimes wraps the OS error in a custom one: match the kind, not the errno.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28) =>
        {
            "the disk is full: free space, then run ferry again (nothing was lost)".to_string()
        }
        other => other.to_string(),
    };
    state_err(dir, problem)
}
