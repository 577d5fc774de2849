//! The state store: one typed, versioned record per file, in sled (the only file naming sled).
//!
//! A record is the single truth about a file between runs: its identity, the upload URL and
//! whether it completed. Every write is flushed (fsync) before it returns, because only
//! `flush()` is durable in sled: the URL must be on disk before the first data byte is sent
//! (invariant 2). The server's offset, not ours, decides where to resume (invariant 3), so
//! the stored offset is for status display only.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// A store another process holds gives a clear error; a corrupt one is moved aside and a
    /// new one started (records are a cache of what the spool and the server can tell again).
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| state_err(dir, format!("cannot create it: {e}")))?;
        let db_dir = dir.join("db");
        match Self::config(&db_dir).open() {
            Ok(db) => Ok(Self {
                db,
                dir: dir.to_path_buf(),
            }),
            Err(sled::Error::Corruption { .. }) => {
                let aside = dir.join(format!("db.corrupt-{}", std::process::id()));
                log::error!(
                    "state database {} is corrupt; moved to {} and starting afresh (uploads in progress will start over)",
                    db_dir.display(),
                    aside.display()
                );
                std::fs::rename(&db_dir, &aside).map_err(|e| {
                    state_err(dir, format!("cannot move the corrupt database aside: {e}"))
                })?;
                let db = Self::config(&db_dir).open().map_err(|e| sled_err(dir, e))?;
                Ok(Self {
                    db,
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) => Err(sled_err(dir, e)),
        }
    }

    /// A store in a temporary directory that is removed when dropped (tests).
    pub fn open_temporary() -> Result<Self> {
        let dir = std::env::temp_dir();
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|e| sled_err(&dir, e))?;
        Ok(Self { db, dir })
    }

    fn config(path: &Path) -> sled::Config {
        sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None) // every write that matters is flushed explicitly
    }

    /// The record for `path`, if any.
    pub fn get(&self, path: &str) -> Result<Option<FileRecord>> {
        let raw = self.db.get(key(path)).map_err(|e| sled_err(&self.dir, e))?;
        raw.map(|v| self.decode(&v)).transpose()
    }

    /// Writes `record` and flushes it to disk before returning.
    pub fn put(&self, record: &FileRecord) -> Result<()> {
        let value = serde_json::to_vec(record).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.db
            .insert(key(&record.path), value)
            .map_err(|e| sled_err(&self.dir, e))?;
        self.flush()
    }

    /// Removes the record for `path`. Not flushed (the next put flushes it): a removal lost in
    /// a crash only brings back a record that is looked at and dropped again.
    pub fn remove(&self, path: &str) -> Result<()> {
        self.db
            .remove(key(path))
            .map_err(|e| sled_err(&self.dir, e))?;
        Ok(())
    }

    /// All records, in key order.
    pub fn records(&self) -> Result<Vec<FileRecord>> {
        self.db
            .scan_prefix(FILE_PREFIX)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| sled_err(&self.dir, e))?;
                self.decode(&v)
            })
            .collect()
    }

    /// Records a permanent failure of a file kept in place (durably).
    pub fn put_failed(&self, rec: &FailedRecord) -> Result<()> {
        let value = serde_json::to_vec(rec).map_err(|e| state_err(&self.dir, e.to_string()))?;
        self.db
            .insert(
                [FAILED_PREFIX.as_bytes(), rec.path.as_bytes()].concat(),
                value,
            )
            .map_err(|e| sled_err(&self.dir, e))?;
        self.flush()
    }

    /// The failure record of `path`, if any.
    pub fn get_failed(&self, path: &str) -> Result<Option<FailedRecord>> {
        let raw = self
            .db
            .get([FAILED_PREFIX.as_bytes(), path.as_bytes()].concat())
            .map_err(|e| sled_err(&self.dir, e))?;
        raw.map(|v| {
            serde_json::from_slice(&v)
                .map_err(|e| state_err(&self.dir, format!("unreadable failure record: {e}")))
        })
        .transpose()
    }

    /// Forgets the failure of `path`.
    pub fn remove_failed(&self, path: &str) -> Result<()> {
        self.db
            .remove([FAILED_PREFIX.as_bytes(), path.as_bytes()].concat())
            .map_err(|e| sled_err(&self.dir, e))?;
        Ok(())
    }

    /// All failure records.
    pub fn failed(&self) -> Result<Vec<FailedRecord>> {
        self.db
            .scan_prefix(FAILED_PREFIX)
            .map(|kv| {
                let (_, v) = kv.map_err(|e| sled_err(&self.dir, e))?;
                serde_json::from_slice(&v)
                    .map_err(|e| state_err(&self.dir, format!("unreadable failure record: {e}")))
            })
            .collect()
    }

    fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| sled_err(&self.dir, e))
    }

    fn decode(&self, raw: &[u8]) -> Result<FileRecord> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let v: Versioned = serde_json::from_slice(raw)
            .map_err(|e| state_err(&self.dir, format!("unreadable record: {e}")))?;
        if v.version != RECORD_VERSION {
            return Err(state_err(
                &self.dir,
                format!(
                    "record version {} is not {RECORD_VERSION}: written by another ferry version",
                    v.version
                ),
            ));
        }
        serde_json::from_slice(raw)
            .map_err(|e| state_err(&self.dir, format!("unreadable record: {e}")))
    }
}

fn key(path: &str) -> Vec<u8> {
    [FILE_PREFIX.as_bytes(), path.as_bytes()].concat()
}

fn state_err(dir: &Path, problem: String) -> Error {
    Error::State {
        dir: dir.to_path_buf(),
        problem,
    }
}

fn sled_err(dir: &Path, e: sled::Error) -> Error {
    let problem = match e {
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
        {
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
        // sled's I/O threads hold the file (and its lock) for a moment after the last handle
        // is dropped; slow machines (qemu) see it. Only an in-process reopen meets this.
        use crate::clock::{Clock, SystemClock};
        let clock = SystemClock;
        let deadline = clock.now() + std::time::Duration::from_secs(20);
        let s = loop {
            match Store::open(&dir) {
                Ok(s) => break s,
                Err(e) if clock.now() < deadline => {
                    assert!(e.to_string().contains("in use"), "{e}");
                    let never = std::sync::atomic::AtomicBool::new(false);
                    clock.sleep(std::time::Duration::from_millis(20), &never);
                }
                Err(e) => panic!("the lock was not released: {e}"),
            }
        };
        assert_eq!(s.get("/x").unwrap(), Some(record("/x")));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
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
    fn rejects_records_of_another_version() {
        let s = Store::open_temporary().unwrap();
        s.db.insert(key("/v"), br#"{"version":99}"#.to_vec())
            .unwrap();
        let e = s.get("/v").unwrap_err().to_string();
        assert!(e.contains("another ferry version"), "{e}");
    }
}
