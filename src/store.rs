//! The state store: one typed, versioned record per file, in sled (the only file naming sled).
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

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::durable;
use crate::error::{Error, Result};
use crate::source::Identity;

/// The record format written by this version.
pub const RECORD_VERSION: u32 = 1;

/// sled's page cache; its default (1 GiB) is absurd on a Pi.
const CACHE_CAPACITY_BYTES: u64 = 1024 * 1024;

const FILE_PREFIX: &str = "file/";
const FAILED_PREFIX: &str = "failed/";

/// A file that failed permanently and was kept in place (not retried until it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    /// Absolute path.
    pub path: String,
    /// Identity of the content that failed.
    pub identity: Identity,
    /// HTTP status, when the server refused.
    pub status: Option<u16>,
    /// Why.
    pub message: String,
    /// When, seconds since the epoch.
    pub failed_unix: u64,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordState {
    /// An upload exists on the server (URL known) and is not known to be complete.
    Uploading,
    /// The server confirmed offset == length.
    Complete,
}

/// Everything ferry remembers about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Absolute path of the file (the key).
    pub path: String,
    /// The file's identity when its upload was created.
    pub identity: Identity,
    /// The creation endpoint the upload belongs to.
    pub endpoint: String,
    /// The upload URL.
    pub upload_url: String,
    /// Last offset the server confirmed (for display; HEAD decides).
    pub offset: u64,
    /// `Upload-Expires`, seconds since the epoch.
    pub expires_unix: Option<u64>,
    /// When the upload was created, seconds since the epoch.
    pub created_unix: u64,
    /// Last change, seconds since the epoch.
    pub updated_unix: u64,
    /// Where the file stands.
    pub state: RecordState,
    /// Response headers kept (e.g. `stream-media-id`).
    #[serde(default)]
    pub captured: std::collections::BTreeMap<String, String>,
    /// The after-upload hook's runs (see `hook`).
    #[serde(default)]
    pub hook: crate::hook::HookState,
}

/// The sled-backed store.
pub struct Store {
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

/// The group commit's bookkeeping (see [`Store::flush`]).
#[derive(Default)]
struct Commits {
    state: Mutex<CommitState>,
    done: std::sync::Condvar,
    /// Syncs run so far.
    syncs: AtomicU64,
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
struct SyncHandles {
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

/// A damaged database that [`Store::open`] moved aside before starting a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReset {
    /// What was wrong with it.
    pub problem: String,
    /// Where it was moved (kept for inspection); `None` when it was missing.
    pub moved_to: Option<PathBuf>,
}

/// How damaged the state was: for `ferry status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Damage {
    /// The database moved aside at open, if any.
    pub reset: Option<StateReset>,
    /// Unreadable records moved aside since the start.
    pub records: u64,
}

/// The key under which a database keeps the identity it was created with, and the file in the
/// state directory that keeps a copy: a database that opens without it lost its contents.
const STORE_ID_KEY: &[u8] = b"meta/store-id";
const STORE_ID_FILE: &str = "store-id";
/// Where damaged databases are kept, and how many of them (an SD card is small).
const DAMAGED_DIR: &str = "damaged";
const KEEP_DAMAGED: usize = 3;
const DAMAGED_RECORD_PREFIX: &str = "damaged-record/";

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// A store another process holds, a directory ferry may not write and a full disk give a
    /// clear error; a damaged database is moved aside and a new one started (see the module
    /// doc). Every directory entry on the way is synced before this returns.
    pub fn open(dir: &Path) -> Result<Self> {
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
        let (db, reset) = match open_sled(&db_dir) {
            Ok(db) => match check_identity(dir, &db, existed) {
                Ok(()) => (db, None),
                Err(problem) if !existed => {
                    // Deleted: sled just made an empty one, nothing to keep.
                    log::error!(
                        "state directory {}: the state database {problem}; starting a new one: files whose uploads it recorded are uploaded again",
                        dir.display()
                    );
                    let reset = StateReset {
                        problem,
                        moved_to: None,
                    };
                    (db, Some(reset))
                }
                Err(problem) => {
                    drop(db);
                    let reset = move_aside(dir, &db_dir, problem)?;
                    (
                        open_sled(&db_dir).map_err(|e| sled_err(dir, e))?,
                        Some(reset),
                    )
                }
            },
            Err(e) if is_damage(&e) => {
                let reset = move_aside(dir, &db_dir, format!("sled cannot open it: {e}"))?;
                (
                    open_sled(&db_dir).map_err(|e| sled_err(dir, e))?,
                    Some(reset),
                )
            }
            Err(e) => return Err(sled_err(dir, e)),
        };
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
    pub fn open_temporary() -> Result<Self> {
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
    pub fn close(self) -> Result<()> {
        let result = self.flush();
        std::mem::forget(self);
        result
    }

    /// What damage was found and set aside since the store was opened.
    pub fn damage(&self) -> Damage {
        Damage {
            reset: self.reset.clone(),
            records: self.damaged_records.load(Ordering::Relaxed),
        }
    }

    /// Gives a new database its identity, in sled and in the state directory (both durable).
    fn adopt_identity(&self) -> Result<()> {
        let id = match self
            .db
            .get(STORE_ID_KEY)
            .map_err(|e| sled_err(&self.dir, e))?
        {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = format!("{:016x}", crate::clock::random_seed());
                self.write(|db| db.insert(STORE_ID_KEY, id.as_bytes()).map(|_| ()))?;
                self.flush()?;
                id
            }
        };
        let file = self.dir.join(STORE_ID_FILE);
        if std::fs::read_to_string(&file).ok().as_deref() != Some(id.as_str()) {
            durable::write_atomic(&file, id.as_bytes())
                .map_err(|e| io_err(&self.dir, &format!("cannot write {STORE_ID_FILE}"), e))?;
        }
        Ok(())
    }

    /// The record for `path`, if any. An unreadable record is moved aside and reads as none.
    pub fn get(&self, path: &str) -> Result<Option<FileRecord>> {
        self.read_one(&key(path), decode)
    }

    /// Writes `record` and makes it durable before returning.
    pub fn put(&self, record: &FileRecord) -> Result<()> {
        self.put_unsynced(record)?;
        self.flush()
    }

    /// Writes `record` without syncing it: for what the server can tell again (the offset, the
    /// expiry). The next durable write takes it along.
    pub fn put_unsynced(&self, record: &FileRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.write(|db| db.insert(key(&record.path), value).map(|_| ()))
    }

    /// Removes the record for `path`. Not synced (the next durable write takes it along): a
    /// removal lost in a cut only brings back a record that is looked at and dropped again.
    pub fn remove(&self, path: &str) -> Result<()> {
        self.write(|db| db.remove(key(path)).map(|_| ()))
    }

    /// All records, in key order; unreadable ones are moved aside and left out.
    pub fn records(&self) -> Result<Vec<FileRecord>> {
        self.read_all(FILE_PREFIX, decode)
    }

    /// Records a permanent failure of a file kept in place (durably).
    pub fn put_failed(&self, rec: &FailedRecord) -> Result<()> {
        let value = serde_json::to_vec(rec).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.write(|db| db.insert(failed_key(&rec.path), value).map(|_| ()))?;
        self.flush()
    }

    /// The failure record of `path`, if any (an unreadable one is moved aside).
    pub fn get_failed(&self, path: &str) -> Result<Option<FailedRecord>> {
        self.read_one(&failed_key(path), decode_failed)
    }

    /// Forgets the failure of `path`.
    pub fn remove_failed(&self, path: &str) -> Result<()> {
        self.write(|db| db.remove(failed_key(path)).map(|_| ()))
    }

    /// All failure records (unreadable ones are moved aside and left out).
    pub fn failed(&self) -> Result<Vec<FailedRecord>> {
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

    /// Moves an unreadable value out of the way (kept under its own prefix for inspection).
    fn set_aside(&self, k: &[u8], problem: &str) -> Result<()> {
        let name = String::from_utf8_lossy(k).into_owned();
        log::error!(
            "state directory {}: record {name} is damaged ({problem}); set aside, its file is uploaded again",
            self.dir.display()
        );
        let aside = [DAMAGED_RECORD_PREFIX.as_bytes(), k].concat();
        self.write(|db| {
            if let Some(v) = db.remove(k)? {
                db.insert(aside, v)?;
            }
            Ok(())
        })?;
        self.damaged_records.fetch_add(1, Ordering::Relaxed);
        self.flush()
    }

    /// Fails if an earlier write or sync failed (see the module doc).
    fn healthy(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            None => Ok(()),
            Some(why) => Err(state_err(
                &self.dir,
                format!("an earlier write failed ({why}); nothing written since the last good sync can be trusted: restart ferry"),
            )),
        }
    }

    /// Runs a sled write; a failure poisons the store.
    fn write(&self, f: impl FnOnce(&sled::Db) -> sled::Result<()>) -> Result<()> {
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
    fn flush(&self) -> Result<()> {
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

    fn poison(&self, e: Error) -> Error {
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
    fn open(db_dir: &Path) -> std::result::Result<Self, String> {
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

fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_CAPACITY_BYTES)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None) // every write that matters is flushed explicitly
        .open()
}

/// Whether an error opening sled means the database is damaged (as opposed to held by another
/// process, not permitted, or a disk that is full or read-only: moving aside cannot help those).
fn is_damage(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            !(is_lock_error(io)
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::ReadOnlyFilesystem
                )
                || io.raw_os_error() == Some(28))
        }
        _ => true,
    }
}

fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
}

/// Checks that a database that `existed` carries the identity the state directory remembers.
fn check_identity(dir: &Path, db: &sled::Db, existed: bool) -> std::result::Result<(), String> {
    let Ok(want) = std::fs::read_to_string(dir.join(STORE_ID_FILE)) else {
        return Ok(()); // a new state directory, or one from before identities
    };
    let have = db.get(STORE_ID_KEY).map_err(|e| e.to_string())?;
    match have {
        Some(id) if *id == *want.as_bytes() => Ok(()),
        Some(_) => Err("it is not the database this state directory was using".into()),
        None if existed => Err("it opened without its records (truncated or emptied)".into()),
        None => Err("it is missing".into()),
    }
}

/// Moves a damaged database into `damaged/` (keeping the newest few) and says so.
fn move_aside(dir: &Path, db_dir: &Path, problem: String) -> Result<StateReset> {
    let aside_dir = dir.join(DAMAGED_DIR);
    durable::create_dir_all(&aside_dir).map_err(|e| io_err(dir, "cannot create damaged/", e))?;
    let next = damaged_dbs(&aside_dir).last().map_or(1, |(n, _)| n + 1);
    let moved_to = aside_dir.join(format!("db.{next}"));
    durable::rename(db_dir, &moved_to)
        .map_err(|e| io_err(dir, "cannot move the damaged database aside", e))?;
    log::error!(
        "state directory {}: the state database is damaged ({problem}); kept in {}; starting a new one: files whose uploads it recorded are uploaded again",
        dir.display(),
        moved_to.display()
    );
    let excess = damaged_dbs(&aside_dir).len().saturating_sub(KEEP_DAMAGED);
    for (_, p) in damaged_dbs(&aside_dir).into_iter().take(excess) {
        if let Err(e) = std::fs::remove_dir_all(&p) {
            log::warn!(
                "{}: cannot remove an old damaged database: {e}",
                p.display()
            );
        }
    }
    Ok(StateReset {
        problem,
        moved_to: Some(moved_to),
    })
}

/// The databases kept in `damaged/`, oldest (lowest number) first.
fn damaged_dbs(aside_dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(aside_dir) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_prefix("db.")?.parse().ok()?, e.path()))
        })
        .collect();
    numbered.sort();
    numbered
}

/// Syncs sled's files and every directory from `db_dir` up to the state directory's parent.
fn sync_tree(db_dir: &Path, dir: &Path) -> std::io::Result<()> {
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

fn decode(raw: &[u8]) -> std::result::Result<FileRecord, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_slice(raw).map_err(|e| format!("unreadable record: {e}"))?;
    if v.version != RECORD_VERSION {
        return Err(format!(
            "record version {} is not {RECORD_VERSION}: written by another ferry version",
            v.version
        ));
    }
    serde_json::from_slice(raw).map_err(|e| format!("unreadable record: {e}"))
}

fn decode_failed(raw: &[u8]) -> std::result::Result<FailedRecord, String> {
    serde_json::from_slice(raw).map_err(|e| format!("unreadable failure record: {e}"))
}

fn key(path: &str) -> Vec<u8> {
    [FILE_PREFIX.as_bytes(), path.as_bytes()].concat()
}

fn failed_key(path: &str) -> Vec<u8> {
    [FAILED_PREFIX.as_bytes(), path.as_bytes()].concat()
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
        sled::Error::Io(io) if is_lock_error(&io) => {
            "is in use by another ferry process (one process per state directory)".to_string()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str) -> FileRecord {
        FileRecord {
            version: RECORD_VERSION,
            path: path.into(),
            identity: Identity {
                dev: 1,
                ino: 2,
                size: 3,
                mtime_sec: 4,
                mtime_nsec: 5,
            },
            endpoint: "http://h/files/".into(),
            upload_url: "http://h/files/1".into(),
            offset: 0,
            expires_unix: None,
            created_unix: 10,
            updated_unix: 10,
            state: RecordState::Uploading,
            captured: Default::default(),
            hook: Default::default(),
        }
    }

    #[test]
    fn put_get_remove_and_list() {
        let s = Store::open_temporary().unwrap();
        assert_eq!(s.get("/a").unwrap(), None);
        s.put(&record("/a")).unwrap();
        s.put(&FileRecord {
            state: RecordState::Complete,
            ..record("/b")
        })
        .unwrap();
        assert_eq!(s.get("/a").unwrap(), Some(record("/a")));
        assert_eq!(s.records().unwrap().len(), 2);
        s.remove("/a").unwrap();
        assert_eq!(s.get("/a").unwrap(), None);
        assert_eq!(s.records().unwrap()[0].state, RecordState::Complete);
    }

    #[test]
    fn survives_reopen_and_refuses_a_second_process_view() {
        let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.put(&record("/x")).unwrap();
            // sled's lock is per open file description, so a second open in this process
            // meets it exactly as a second ferry process would.
            let e = Store::open(&dir)
                .err()
                .expect("a second open must be refused");
            assert!(
                e.to_string().contains("in use by another ferry process"),
                "{e}"
            );
        }
        let s = reopen(&dir);
        assert_eq!(s.get("/x").unwrap(), Some(record("/x")));
        assert_eq!(s.damage(), Damage::default());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Opens the store in `dir` again. sled's I/O threads hold the file (and its lock) for a
    /// moment after the last handle is dropped; slow machines (qemu) see it. Only an
    /// in-process reopen meets this.
    fn reopen(dir: &Path) -> Store {
        use crate::clock::{Clock, SystemClock};
        let clock = SystemClock;
        let deadline = clock.now() + std::time::Duration::from_secs(20);
        loop {
            match Store::open(dir) {
                Ok(s) => break s,
                Err(e) if clock.now() < deadline => {
                    assert!(e.to_string().contains("in use"), "{e}");
                    let never = std::sync::atomic::AtomicBool::new(false);
                    clock.sleep(std::time::Duration::from_millis(20), &never);
                }
                Err(e) => panic!("the lock was not released: {e}"),
            }
        }
    }

    /// A state directory holding two records, closed.
    fn populated(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ferry-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        s.put(&record("/a")).unwrap();
        s.put(&record("/b")).unwrap();
        drop(s);
        dir
    }

    /// Opens a damaged state directory: it must open, say what happened, keep the damaged
    /// database, and work.
    fn assert_reset(dir: &Path, problem: &str) {
        let s = reopen(dir);
        let reset = s.damage().reset.expect("the damage must be reported");
        assert!(reset.problem.contains(problem), "{reset:?}");
        if problem == "missing" {
            assert_eq!(reset.moved_to, None);
        } else {
            assert_eq!(reset.moved_to, Some(dir.join("damaged/db.1")));
            assert!(dir.join("damaged/db.1/db").is_file(), "kept for inspection");
        }
        assert_eq!(s.records().unwrap(), []);
        s.put(&record("/c")).unwrap();
        drop(s);
        // The new database is whole: no second reset.
        let s = reopen(dir);
        assert_eq!(s.damage(), Damage::default());
        assert_eq!(s.get("/c").unwrap(), Some(record("/c")));
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_deleted_database_is_reported_not_silently_recreated() {
        let dir = populated("deleted");
        std::fs::remove_dir_all(dir.join("db")).unwrap();
        assert_reset(&dir, "missing");
    }

    #[test]
    fn a_truncated_database_is_moved_aside() {
        let dir = populated("truncated");
        std::fs::File::options()
            .write(true)
            .open(dir.join("db/db"))
            .unwrap()
            .set_len(0)
            .unwrap();
        assert_reset(&dir, "");
    }

    #[test]
    fn a_database_with_flipped_bytes_is_moved_aside() {
        let dir = populated("flipped");
        let path = dir.join("db/db");
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().take(4096).skip(8) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        assert_reset(&dir, "");
    }

    #[test]
    fn a_garbled_sled_conf_is_moved_aside_not_a_crash_loop() {
        let dir = populated("conf");
        std::fs::write(
            dir.join("db/conf"),
            b"this is not sled's configuration at all",
        )
        .unwrap();
        assert_reset(&dir, "");
    }

    #[test]
    fn a_database_from_another_state_directory_is_moved_aside() {
        let dir = populated("swapped");
        std::fs::write(dir.join(STORE_ID_FILE), b"0123456789abcdef").unwrap();
        assert_reset(&dir, "not the database");
    }

    #[test]
    fn a_damaged_record_is_set_aside_and_the_others_kept() {
        let s = Store::open_temporary().unwrap();
        s.put(&record("/a")).unwrap();
        s.db.insert(key("/b"), b"{\"version\":1,\"path\":".to_vec())
            .unwrap();
        s.db.insert(failed_key("/f"), b"garbage".to_vec()).unwrap();
        assert_eq!(s.records().unwrap(), [record("/a")]);
        assert_eq!(s.failed().unwrap(), []);
        assert_eq!(s.damage().records, 2);
        assert_eq!(s.records().unwrap(), [record("/a")]);
        assert_eq!(s.damage().records, 2, "set aside once, not at every look");
    }

    #[test]
    fn damaged_databases_kept_are_bounded() {
        let dir = populated("bounded");
        for _ in 0..5 {
            std::fs::write(dir.join("db/conf"), b"not sled's configuration, again").unwrap();
            let s = reopen(&dir);
            assert!(s.damage().reset.is_some());
        }
        let mut kept: Vec<_> = std::fs::read_dir(dir.join("damaged"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        assert_eq!(kept, ["db.3", "db.4", "db.5"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_writers_share_syncs_and_every_record_is_durable() {
        let dir = std::env::temp_dir().join(format!("ferry-store-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        let before = s.commits.syncs.load(Ordering::Relaxed);
        std::thread::scope(|scope| {
            for t in 0..8 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..40 {
                        s.put(&record(&format!("/t{t}/{i}"))).unwrap();
                    }
                });
            }
        });
        let syncs = s.commits.syncs.load(Ordering::Relaxed) - before;
        assert!(syncs <= 320, "at most one sync per put: {syncs}");
        eprintln!("320 puts from 8 threads: {syncs} syncs");
        drop(s);
        let s = reopen(&dir);
        assert_eq!(s.records().unwrap().len(), 320);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_poisoned_store_refuses_everything_until_reopened() {
        let s = Store::open_temporary().unwrap();
        s.put(&record("/a")).unwrap();
        let _ = s.poison(state_err(Path::new("/state"), "EIO".into()));
        for e in [
            s.get("/a").unwrap_err(),
            s.put(&record("/b")).unwrap_err(),
            s.records().unwrap_err(),
            s.remove("/a").unwrap_err(),
        ] {
            assert!(
                e.to_string().contains("an earlier write failed (EIO)"),
                "{e}"
            );
        }
    }

    #[test]
    fn failures_are_recorded_and_forgotten() {
        let s = Store::open_temporary().unwrap();
        let rec = FailedRecord {
            path: "/f".into(),
            identity: record("/f").identity,
            status: Some(415),
            message: "no".into(),
            failed_unix: 9,
        };
        s.put_failed(&rec).unwrap();
        assert_eq!(s.get_failed("/f").unwrap(), Some(rec.clone()));
        assert_eq!(s.failed().unwrap(), [rec]);
        s.remove_failed("/f").unwrap();
        assert_eq!(s.get_failed("/f").unwrap(), None);
    }

    #[test]
    fn sets_aside_records_of_another_version() {
        let s = Store::open_temporary().unwrap();
        s.db.insert(key("/v"), br#"{"version":99}"#.to_vec())
            .unwrap();
        assert_eq!(s.get("/v").unwrap(), None);
        assert_eq!(s.damage().records, 1);
        assert!(s.db.get(key("/v")).unwrap().is_none());
        assert!(s
            .db
            .get([DAMAGED_RECORD_PREFIX.as_bytes(), &key("/v")].concat())
            .unwrap()
            .is_some());
    }
}
