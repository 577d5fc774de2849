//! Filesystem changes that survive a power cut: the only place that decides what is synced.
//!
//! A write, create, rename or unlink lives in the page cache until the kernel writes it back,
//! 5 to 30 s later; a power cut before that undoes it. Durable means the file's data and
//! metadata are synced (`fsync`) **and** the directory that names it is synced too: ext4
//! commits a new, renamed or removed directory entry only with its directory. So every change
//! here ends with an `fsync` of the directories it touched, target first, then source: after a
//! cut a moved file is in the target, or in both (never in neither), and the caller's
//! after-upload logic treats "in both" as "not moved yet".
//!
//! Every function returns the first error; an error means "not durable", never "maybe".

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Syncs a directory, so the entries created, renamed or removed in it are on disk.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents, syncing the parent of each one created; returns
/// whether anything was created. An existing `dir` costs one `stat`.
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<bool> {
    if dir.is_dir() {
        return Ok(false);
    }
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) => at = p,
            None => break,
        }
    }
    std::fs::create_dir_all(dir)?;
    // Outermost first: a child's entry is only reachable once its parent's is on disk.
    for d in missing.iter().rev() {
        sync_dir(parent_of(d))?;
        sync_dir(d)?;
    }
    Ok(!missing.is_empty())
}

/// Renames `from` to `to` and syncs the target directory, then the source directory.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let (target, source) = (parent_of(to), parent_of(from));
    sync_dir(target)?;
    if target != source {
        sync_dir(source)?;
    }
    Ok(())
}

/// Removes `path` (a missing file is no error) and syncs its directory.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    sync_dir(parent_of(path))
}

/// Replaces `path` with `contents` atomically: a temporary file, synced, renamed over it, and
/// the directory synced. Readers see the old or the new contents, never a mix, also after a cut.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    drop(f);
    rename(&tmp, path)
}

/// Replaces `path` atomically but without syncing: for files that are rewritten every few
/// seconds and lose nothing if a cut takes their last version (status snapshots, metrics).
pub(crate) fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-durable-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn creates_missing_directories_and_says_so() {
        let d = scratch("mkdir");
        let deep = d.join("a/b/c");
        assert!(create_dir_all(&deep).unwrap());
        assert!(deep.is_dir());
        assert!(!create_dir_all(&deep).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rename_across_directories_and_remove() {
        let d = scratch("rename");
        create_dir_all(&d.join("src")).unwrap();
        create_dir_all(&d.join("dst")).unwrap();
        std::fs::write(d.join("src/f"), b"x").unwrap();
        rename(&d.join("src/f"), &d.join("dst/f")).unwrap();
        assert_eq!(std::fs::read(d.join("dst/f")).unwrap(), b"x");
        assert!(!d.join("src/f").exists());
        remove_file(&d.join("dst/f")).unwrap();
        remove_file(&d.join("dst/f")).unwrap(); // already gone: no error
        assert!(!d.join("dst/f").exists());
        let e = rename(&d.join("src/nothing"), &d.join("dst/x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let d = scratch("atomic");
        create_dir_all(&d).unwrap();
        let f = d.join("state.json");
        write_atomic(&f, b"one").unwrap();
        write_atomic(&f, b"two").unwrap();
        replace(&f, b"three").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"three");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        // A directory that is not there: an error, not a silent success.
        assert!(write_atomic(&d.join("no/such/file"), b"x").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
