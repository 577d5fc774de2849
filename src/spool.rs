//! The spool directory: which entries are files ready to upload, and walking the directory.
//!
//! Key idea: [`judge`] is pure (name, kind, size, mtime, now → verdict) so every rule is tested
//! without files; [`walk`] lists the directory with `lstat` semantics, never following a link,
//! and reports each entry to the caller. A file is ready when it is a regular file, its name is
//! not ignored (hidden files, `*.part`, `*.tmp` by default) and it has not been written to for
//! the settle time; a writer that closes or renames a file into the spool is reported at once
//! by the watcher instead (see `daemon`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::source::Identity;

/// What the spool rules are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpoolRules {
    /// The spool directory.
    pub dir: PathBuf,
    /// Descend into subdirectories (never through symlinks).
    pub recursive: bool,
    /// File name patterns (`*` and `?` wildcards) that are never uploaded.
    pub ignore: Vec<String>,
    /// A file written to within this time is still being written.
    pub settle: Duration,
    /// Directories inside the spool that are not part of it (done and failed directories).
    pub exclude: Vec<PathBuf>,
    /// Patterns in order of priority (`spool.priority`): a file matching an earlier one goes
    /// first. A pattern with a `/` matches the path below the spool directory, others the name.
    pub priority: Vec<String>,
    /// Newest files first within a priority class (`spool.order = "newest-first"`).
    pub newest_first: bool,
}

impl SpoolRules {
    /// The priority class of `path` (0 goes first): the index of the first `priority`
    /// pattern it matches, or one past the last for a file that matches none.
    pub(crate) fn priority_class(&self, path: &Path) -> u8 {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let below = path
            .strip_prefix(&self.dir)
            .ok()
            .and_then(Path::to_str)
            .unwrap_or(name);
        let class = self
            .priority
            .iter()
            .position(|p| glob(p, if p.contains('/') { below } else { name }))
            .unwrap_or(self.priority.len());
        u8::try_from(class).unwrap_or(u8::MAX)
    }
}

/// The default ignore patterns: hidden files and the usual partial-write names.
pub(crate) fn default_ignore() -> Vec<String> {
    [".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*~"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The kind of a directory entry, from `lstat` (a symlink is a symlink, not its target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

/// What to do with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Upload it.
    Ready,
    /// Look again after this long (still being written).
    NotYet(Duration),
    /// Silently skip it (an ignored name).
    Ignored,
    /// Refuse it, with a log line saying why.
    Refused(&'static str),
}

/// Judges one entry (pure).
pub(crate) fn judge(
    name: &str,
    kind: Kind,
    mtime: SystemTime,
    now: SystemTime,
    rules: &SpoolRules,
) -> Verdict {
    if rules.ignore.iter().any(|p| glob(p, name)) {
        return Verdict::Ignored;
    }
    match kind {
        Kind::Symlink => {
            return Verdict::Refused(
                "is a symbolic link; ferry never follows links out of the spool",
            )
        }
        Kind::Other => return Verdict::Refused("is not a regular file (FIFO, socket or device)"),
        Kind::Dir => return Verdict::Ignored,
        Kind::File => {}
    }
    let age = now.duration_since(mtime).unwrap_or(Duration::ZERO);
    if age >= rules.settle {
        Verdict::Ready
    } else {
        Verdict::NotYet(rules.settle - age)
    }
}

/// Shell-style match of `name` against `pattern` with `*` (any run) and `?` (one character).
pub(crate) fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// One entry found by [`walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Full path.
    pub path: PathBuf,
    /// Kind from `lstat`.
    pub kind: Kind,
    /// Identity from `lstat`.
    pub identity: Identity,
}

impl Entry {
    /// The entry's modification time.
    pub(crate) fn mtime(&self) -> SystemTime {
        mtime_of(&self.identity)
    }
}

/// The modification time recorded in an identity.
pub(crate) fn mtime_of(id: &Identity) -> SystemTime {
    let secs = u64::try_from(id.mtime_sec).unwrap_or(0);
    let nanos = u32::try_from(id.mtime_nsec).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Looks at one path with `lstat`; `None` when it does not exist.
pub(crate) fn stat(path: &Path) -> std::io::Result<Option<Entry>> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = m.file_type();
    let kind = if t.is_symlink() {
        Kind::Symlink
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else {
        Kind::Other // FIFO, socket, block or character device
    };
    let identity = Identity {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    };
    Ok(Some(Entry {
        path: path.to_path_buf(),
        kind,
        identity,
    }))
}

/// Lists the spool (and, when recursive, its subdirectories, never through links), calling
/// `visit` for every entry that is not a directory, until it answers `Break`. Unreadable
/// subdirectories are reported through `on_error` and skipped; an unreadable spool directory is
/// an error.
pub(crate) fn walk(
    rules: &SpoolRules,
    visit: &mut dyn FnMut(Entry) -> ControlFlow<()>,
    on_error: &mut dyn FnMut(&Path, std::io::Error),
) -> std::io::Result<()> {
    let mut dirs = vec![rules.dir.clone()];
    let mut first = true;
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if first => return Err(e),
            Err(e) => {
                on_error(&dir, e);
                continue;
            }
        };
        first = false;
        for entry in entries {
            let path = match entry {
                Ok(e) => e.path(),
                Err(e) => {
                    on_error(&dir, e);
                    continue;
                }
            };
            match stat(&path) {
                Ok(Some(e)) if e.kind == Kind::Dir => {
                    if rules.recursive && !rules.exclude.contains(&e.path) {
                        dirs.push(e.path);
                    }
                }
                Ok(Some(e)) => {
                    if visit(e).is_break() {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                Err(err) => on_error(&path, err),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SpoolRules {
        SpoolRules {
            dir: "/spool".into(),
            recursive: false,
            ignore: default_ignore(),
            settle: Duration::from_secs(5),
            exclude: vec![],
            priority: vec![],
            newest_first: false,
        }
    }

    #[test]
    fn priority_classes_follow_the_first_matching_pattern() {
        let r = SpoolRules {
            priority: vec!["alarms/*".into(), "*.jpg".into()],
            ..rules()
        };
        let class = |p: &str| r.priority_class(Path::new(p));
        assert_eq!(class("/spool/alarms/door.mp4"), 0);
        assert_eq!(
            class("/spool/alarms/door.jpg"),
            0,
            "the first match decides"
        );
        assert_eq!(
            class("/spool/cam/still.jpg"),
            1,
            "a name pattern matches in any directory"
        );
        assert_eq!(class("/spool/still.jpg"), 1);
        assert_eq!(class("/spool/video.mp4"), 2, "no match: after every class");
        assert_eq!(class("/spool/alarmsx/a.mp4"), 2);
        assert_eq!(rules().priority_class(Path::new("/spool/a")), 0);
    }

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("*.part", "video.mp4.part"));
        assert!(!glob("*.part", "video.mp4"));
        assert!(glob(".*", ".hidden"));
        assert!(!glob(".*", "visible"));
        assert!(glob("cam-??.mp4", "cam-01.mp4"));
        assert!(!glob("cam-??.mp4", "cam-1.mp4"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*~", "notes.txt~"));
    }

    #[test]
    fn judges_by_name_kind_and_age() {
        let r = rules();
        assert_eq!(
            judge("a.mp4", Kind::File, t(100), t(105), &r),
            Verdict::Ready
        );
        assert_eq!(
            judge("a.mp4", Kind::File, t(100), t(102), &r),
            Verdict::NotYet(Duration::from_secs(3))
        );
        assert_eq!(
            judge("a.mp4", Kind::File, t(110), t(100), &r),
            Verdict::NotYet(Duration::from_secs(5)),
            "mtime in the future"
        );
        assert_eq!(
            judge("a.mp4.part", Kind::File, t(0), t(100), &r),
            Verdict::Ignored
        );
        assert_eq!(
            judge(".a.mp4", Kind::File, t(0), t(100), &r),
            Verdict::Ignored
        );
        assert!(
            matches!(judge("l.mp4", Kind::Symlink, t(0), t(100), &r), Verdict::Refused(m) if m.contains("symbolic link"))
        );
        assert!(matches!(
            judge("f", Kind::Other, t(0), t(100), &r),
            Verdict::Refused(_)
        ));
        assert_eq!(judge("sub", Kind::Dir, t(0), t(100), &r), Verdict::Ignored);
    }

    #[test]
    fn walk_lists_files_without_following_links_and_recurses_on_request() {
        let d = std::env::temp_dir().join(format!("ferry-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::create_dir_all(d.join("done")).unwrap();
        std::fs::write(d.join("a"), b"1").unwrap();
        std::fs::write(d.join("sub/b"), b"22").unwrap();
        std::fs::write(d.join("done/c"), b"333").unwrap();
        std::os::unix::fs::symlink("/etc", d.join("link")).unwrap();
        let mut r = SpoolRules {
            dir: d.clone(),
            ..rules()
        };
        let list = |r: &SpoolRules| {
            let mut got = Vec::new();
            walk(
                r,
                &mut |e| {
                    got.push((e.path.strip_prefix(&d).unwrap().to_path_buf(), e.kind));
                    ControlFlow::Continue(())
                },
                &mut |_, _| {},
            )
            .unwrap();
            got.sort();
            got
        };
        assert_eq!(
            list(&r),
            vec![("a".into(), Kind::File), ("link".into(), Kind::Symlink)]
        );
        r.recursive = true;
        r.exclude = vec![d.join("done")];
        assert_eq!(
            list(&r),
            vec![
                ("a".into(), Kind::File),
                ("link".into(), Kind::Symlink),
                ("sub/b".into(), Kind::File)
            ]
        );
        // A visitor that answers Break ends the walk there.
        let mut seen = 0;
        let stop_at_first = &mut |_: Entry| {
            seen += 1;
            ControlFlow::Break(())
        };
        walk(&r, stop_at_first, &mut |_, _| {}).unwrap();
        assert_eq!(seen, 1);
        std::fs::remove_dir_all(&d).unwrap();
        assert!(
            walk(&r, &mut |_| ControlFlow::Continue(()), &mut |_, _| {}).is_err(),
            "a missing spool is an error"
        );
    }
}
