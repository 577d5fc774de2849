//! Damaged state: a database that lost its identity or that sled cannot open is moved aside
//! into `damaged/`, an unreadable record is set aside inside the database, and both are counted.
//!
//! Key idea: damaged state never stops a device. A database carries an identity (a random id,
//! also kept in the state directory's `store-id` file); one that opens without it was truncated,
//! emptied or replaced. What is moved aside is kept for inspection (the newest few), logged at
//! error level and reported ([`Store::damage`]); the files it described are uploaded again,
//! which is the only safe thing left to do.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::{io_err, is_lock_error, open_sled, sled_err, Store};
use crate::durable;
use crate::error::Result;

/// A damaged database that [`Store::open`] moved aside before starting a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateReset {
    /// What was wrong with it.
    pub problem: String,
    /// Where it was moved (kept for inspection); `None` when it was missing.
    pub moved_to: Option<PathBuf>,
}

/// How damaged the state was: for `ferry status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The database moved aside at open, if any.
    pub reset: Option<StateReset>,
    /// Unreadable records moved aside since the start.
    pub records: u64,
}

/// The key under which a database keeps the identity it was created with, and the file in the
/// state directory that keeps a copy: a database that opens without it lost its contents.
const STORE_ID_KEY: &[u8] = b"meta/store-id";
pub(super) const STORE_ID_FILE: &str = "store-id";
/// Where damaged databases are kept, and how many of them (an SD card is small).
const DAMAGED_DIR: &str = "damaged";
const KEEP_DAMAGED: usize = 3;
pub(super) const DAMAGED_RECORD_PREFIX: &str = "damaged-record/";

/// Opens sled in `db_dir` of the state directory `dir` (`existed`: whether `db_dir` was there
/// before); a damaged database, or one without its identity, is moved aside and a new one opened.
pub(super) fn open_checked(
    dir: &Path,
    db_dir: &Path,
    existed: bool,
) -> Result<(sled::Db, Option<StateReset>)> {
    Ok(match open_sled(db_dir) {
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
                let reset = move_aside(dir, db_dir, problem)?;
                (
                    open_sled(db_dir).map_err(|e| sled_err(dir, e))?,
                    Some(reset),
                )
            }
        },
        Err(e) if is_damage(&e) => {
            let reset = move_aside(dir, db_dir, format!("sled cannot open it: {e}"))?;
            (
                open_sled(db_dir).map_err(|e| sled_err(dir, e))?,
                Some(reset),
            )
        }
        Err(e) => return Err(sled_err(dir, e)),
    })
}

impl Store {
    /// What damage was found and set aside since the store was opened.
    pub(crate) fn damage(&self) -> Damage {
        Damage {
            reset: self.reset.clone(),
            records: self.damaged_records.load(Ordering::Relaxed),
        }
    }

    /// Gives a new database its identity, in sled and in the state directory (both durable).
    pub(super) fn adopt_identity(&self) -> Result<()> {
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

    /// Moves an unreadable value out of the way (kept under its own prefix for inspection).
    pub(super) fn set_aside(&self, k: &[u8], problem: &str) -> Result<()> {
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
