//! Reading byte ranges of a file to upload, safely.
//!
//! A file is opened only if the path names a regular file (never a symlink, FIFO or device),
//! and the opened descriptor is checked to be that same file (so a path swapped for a symlink
//! between the check and the open is caught). Its identity (device, inode, size, mtime) is
//! compared again before every chunk: a file that changed is never silently mixed (invariant 4).
//!
//! One exception, which the daemon never uses: a symbolic link named on `ferry upload`'s command
//! line is the user's explicit choice (curl and rclone follow those too), so
//! [`follow_named_link`] resolves it to its target before the target is opened as above.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ratelimit::RateLimiter;
use crate::tus::checksum::{Algorithm, Hasher};

/// The message of the I/O error a body read returns when the upload is being interrupted.
pub(crate) const INTERRUPTED: &str = "upload interrupted by pause or shutdown";
/// The I/O error for a file that ends before its recorded size (the transport reports it as
/// a body failure by its kind and message).
pub(crate) fn shrank() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "file ended before its recorded size: it shrank while uploading",
    )
}

/// What a body reader reports to and obeys: progress counter, interruption, rate limit.
#[derive(Clone, Default)]
pub(crate) struct ReadControl {
    /// Bytes read are added here.
    pub counter: Arc<AtomicU64>,
    /// When set, the next read fails with [`INTERRUPTED`].
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Shared upload rate limit.
    pub limiter: Option<Arc<RateLimiter>>,
    /// Bytes read by every reader, for metrics.
    pub total: Option<Arc<AtomicU64>>,
}

impl std::fmt::Debug for ReadControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadControl")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Size of the read buffer for digests (the transport has its own for bodies).
const DIGEST_BUF_BYTES: usize = 64 * 1024;

/// What makes a file the same file: where it lives, its size and when it was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Identity {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanosecond part.
    pub mtime_nsec: i64,
}

impl Identity {
    fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_sec: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

/// Symbolic links followed before giving up (the kernel's own limit is 40).
const MAX_LINK_HOPS: usize = 40;

/// The file a path given on the command line names: itself, or, when it is a symbolic link,
/// the link's final target (relative targets taken from the link's directory; the directories
/// on the way are kept as written, so the file keeps the state key it has under that path).
/// Only for paths the user named explicitly: the daemon never follows links (invariant 6).
pub(crate) fn follow_named_link(path: &Path) -> Result<PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..MAX_LINK_HOPS {
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&at).map_err(|e| {
                    Error::source_file(path, format!("cannot read the symbolic link: {e}"))
                })?;
                at = at.parent().map_or(target.clone(), |dir| dir.join(&target));
            }
            // Not a link (or missing): `Source::open` says what is wrong with it.
            _ => return Ok(at),
        }
    }
    Err(Error::source_file(
        path,
        format!("is a symbolic link that leads through more than {MAX_LINK_HOPS} links"),
    ))
}

/// An open file to upload.
#[derive(Debug)]
pub(crate) struct Source {
    path: PathBuf,
    file: File,
    identity: Identity,
}

impl Source {
    /// Opens `path` if it is a regular file (symlinks are refused, not followed).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let err = |problem: String| Error::source_file(path, problem);
        let meta = std::fs::symlink_metadata(path).map_err(|e| err(describe(&e)))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            return Err(err(
                "is a symbolic link; ferry uploads only regular files and never follows links in a spool"
                    .into(),
            ));
        }
        if !kind.is_file() {
            return Err(err(
                "is not a regular file (a directory, FIFO, socket or device); skipped".into(),
            ));
        }
        let file = File::open(path).map_err(|e| err(describe(&e)))?;
        let opened = file.metadata().map_err(|e| err(describe(&e)))?;
        let identity = Identity::of(&opened);
        if (identity.dev, identity.ino) != (meta.dev(), meta.ino()) || !opened.is_file() {
            return Err(err("was replaced while being opened; try again".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            identity,
        })
    }

    /// The path as given.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The identity seen when the file was opened.
    pub(crate) fn identity(&self) -> Identity {
        self.identity
    }

    /// Size in bytes when opened.
    pub(crate) fn len(&self) -> u64 {
        self.identity.size
    }

    /// Checks that the file is unchanged: same size and mtime, and the path still names it.
    pub(crate) fn check_unchanged(&self) -> Result<()> {
        let now = self.file.metadata().map(|m| Identity::of(&m));
        let at_path = std::fs::symlink_metadata(&self.path).map(|m| Identity::of(&m));
        match (now, at_path) {
            (Ok(a), Ok(b)) if a == self.identity && b == self.identity => Ok(()),
            (Ok(a), _) if a.size != self.identity.size => Err(self.changed(format!(
                "changed size from {} to {} bytes while uploading",
                self.identity.size, a.size
            ))),
            (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.changed("vanished while uploading".into()))
            }
            _ => Err(self.changed("was modified or replaced while uploading".into())),
        }
    }

    fn changed(&self, problem: String) -> Error {
        Error::source_file(&self.path, problem)
    }

    /// A reader of `len` bytes from `offset`, under `control`.
    pub(crate) fn reader(
        &self,
        offset: u64,
        len: u64,
        control: ReadControl,
    ) -> Result<RangeReader> {
        let file = self
            .file
            .try_clone()
            .map_err(|e| self.changed(describe(&e)))?;
        Ok(RangeReader {
            file: Arc::new(file),
            pos: offset,
            remaining: len,
            control,
        })
    }

    /// The `Upload-Checksum` value for `len` bytes from `offset`.
    pub(crate) fn digest(&self, offset: u64, len: u64, algorithm: Algorithm) -> Result<String> {
        let mut hasher = Hasher::new(algorithm);
        let mut reader = self.reader(offset, len, ReadControl::default())?;
        let mut buf = vec![0u8; DIGEST_BUF_BYTES];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.changed(describe(&e)))?;
            if n == 0 {
                return Ok(hasher.header_value());
            }
            hasher.update(&buf[..n]);
        }
    }
}

/// Bytes of a file, not yet read: `len` bytes from `offset`.
#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

/// A request body that can stand for its bytes as spans of a file.
pub(crate) trait SpanSource: Read + Send {
    /// The next at most `max` bytes (at least one, while any are left) as a span, moving past
    /// them as a read would (counting them, pacing, obeying an interruption) without reading
    /// them; `Ok(None)` at the end. The sender must report a file that ends early.
    fn next_span(&mut self, max: usize) -> std::io::Result<Option<Span>>;
}

/// Reads a byte range with `pread`; an early end of file is an error, never a short body.
///
/// A body shorter than its `Content-Length` would leave the HTTP client waiting for bytes
/// that never come, so the shrinking file must surface here.
#[derive(Debug)]
pub(crate) struct RangeReader {
    file: Arc<File>,
    pos: u64,
    remaining: u64,
    control: ReadControl,
}

impl RangeReader {
    /// How many bytes (at most `max`) the next read may take, once an interruption is ruled
    /// out and the rate limit allows them; 0 at the end.
    fn next_len(&self, max: usize) -> std::io::Result<usize> {
        if self.remaining == 0 || max == 0 {
            return Ok(0);
        }
        if self
            .control
            .interrupt
            .as_ref()
            .is_some_and(|i| i.load(Ordering::Relaxed))
        {
            return Err(std::io::Error::other(INTERRUPTED));
        }
        let mut want = max.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if let Some(l) = &self.control.limiter {
            want = want.min(l.max_read());
            l.take(want);
        }
        Ok(want)
    }

    /// Moves past `n` bytes taken, counting them.
    fn advance(&mut self, n: usize) {
        self.pos += n as u64;
        self.remaining -= n as u64;
        self.control.counter.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(t) = &self.control.total {
            t.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.next_len(buf.len())?;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(shrank());
        }
        self.advance(n);
        Ok(n)
    }
}

impl SpanSource for RangeReader {
    fn next_span(&mut self, max: usize) -> std::io::Result<Option<Span>> {
        let want = self.next_len(max)?;
        if want == 0 {
            return Ok(None);
        }
        let span = Span {
            file: Arc::clone(&self.file),
            offset: self.pos,
            len: want,
        };
        self.advance(want);
        Ok(Some(span))
    }
}

/// A readable description of an I/O error on a source file.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".into(),
        std::io::ErrorKind::PermissionDenied => {
            "cannot be read: permission denied (give the ferry user read access)".into()
        }
        _ => format!("cannot be read: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-src-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_ranges_and_counts_bytes() {
        let d = temp_dir("range");
        let p = d.join("f.bin");
        std::fs::write(&p, b"0123456789").unwrap();
        let s = Source::open(&p).unwrap();
        let control = ReadControl::default();
        let mut out = String::new();
        s.reader(3, 4, control.clone())
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "3456");
        assert_eq!(control.counter.load(Ordering::Relaxed), 4);
        let stopped = ReadControl {
            interrupt: Some(Arc::new(AtomicBool::new(true))),
            ..ReadControl::default()
        };
        let err = s
            .reader(0, 4, stopped)
            .unwrap()
            .read(&mut [0; 4])
            .unwrap_err();
        assert_eq!(err.to_string(), INTERRUPTED);
        assert_eq!(
            s.digest(0, 5, Algorithm::Sha1).unwrap(),
            "sha1 EZBKTot39iQuLSiHBQI62tAKkxA=" // printf 01234 | sha1sum
        );
    }

    #[test]
    fn refuses_symlinks_fifos_and_directories() {
        let d = temp_dir("kinds");
        std::fs::write(d.join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let e = Source::open(&d.join("link")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = Source::open(&d).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = Source::open(&d.join("missing")).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn a_shrunk_file_is_an_error_not_a_short_body() {
        let d = temp_dir("shrink");
        let p = d.join("f.bin");
        std::fs::write(&p, vec![7u8; 1000]).unwrap();
        let s = Source::open(&p).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(10)
            .unwrap();
        let mut r = s.reader(0, 1000, ReadControl::default()).unwrap();
        let err = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(s
            .check_unchanged()
            .unwrap_err()
            .to_string()
            .contains("changed size"));
    }

    #[test]
    fn detects_modification_and_replacement() {
        let d = temp_dir("modify");
        let p = d.join("f.bin");
        std::fs::write(&p, b"abc").unwrap();
        let s = Source::open(&p).unwrap();
        assert!(s.check_unchanged().is_ok());
        std::fs::write(d.join("new"), b"xyz").unwrap();
        std::fs::rename(d.join("new"), &p).unwrap();
        assert!(s
            .check_unchanged()
            .unwrap_err()
            .to_string()
            .contains("modified or replaced"));
        let s = Source::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(s
            .check_unchanged()
            .unwrap_err()
            .to_string()
            .contains("vanished"));
        let s2 = {
            std::fs::write(&p, b"abc").unwrap();
            Source::open(&p).unwrap()
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"d")
            .unwrap();
        assert!(s2.check_unchanged().is_err());
    }
}
