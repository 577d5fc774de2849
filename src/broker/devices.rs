//! Device authentication: `Authorization: Bearer <token>` against the device tokens file.
//!
//! The file holds one `<device name> <sha256 hex of the token>` per line (`#` comments and
//! blank lines allowed), so a leaked file gives no tokens away. A name may appear on several
//! lines (a new token beside the old one while devices are rotated). The file is re-read
//! when it changes (checked with a `stat` on each request and each health check) or on SIGHUP.
//!
//! Key idea: the file as it is now is the only truth, so removing a line always revokes its
//! token. Each valid line is a device; a bad line (a typo, a half-written last line) is
//! skipped and reported by its number and what is wrong, never by its text, which may hold a
//! token; a file that cannot be read (deleted, no permission) means no devices at all. What
//! the last read found is logged once per read and kept for the health answer ([`Health`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// Problems kept per read: a file that is not a tokens file at all would give thousands.
const MAX_PROBLEMS_SHOWN: usize = 20;

/// A device: its name and the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    /// The name used in log lines and rate limits.
    pub name: String,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
}

/// What one read of the file's text found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Parsed {
    /// The devices of the valid lines, in file order.
    pub devices: Vec<Device>,
    /// One `line N: what is wrong` per skipped line (never the line's text).
    pub problems: Vec<String>,
}

/// The state of the device tokens file as last read, for the health answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// Tokens in use.
    pub devices: usize,
    /// False when the file could not be read (then `devices` is 0).
    pub readable: bool,
    /// What is wrong: why the file cannot be read, or `line N: …` per skipped line (at most
    /// [`MAX_PROBLEMS_SHOWN`], then how many more). Empty when the file is clean.
    pub problems: Vec<String>,
}

/// Identifies a version of the file: modification and change times, size, inode. The change
/// time makes a `chmod` that fixes (or breaks) permissions count as a change.
type Stamp = (i64, i64, i64, i64, u64, u64);

/// One read of the file: the devices and what was wrong.
struct Loaded {
    /// The file's stamp taken before it was read, so a write during the read is seen later.
    stamp: Option<Stamp>,
    devices: Vec<Device>,
    readable: bool,
    problems: Vec<String>,
}

impl Loaded {
    fn parsed(stamp: Option<Stamp>, bytes: &[u8]) -> Self {
        let parsed = parse(bytes);
        Self {
            stamp,
            devices: parsed.devices,
            readable: true,
            problems: shown(parsed.problems),
        }
    }

    fn unreadable(stamp: Option<Stamp>, e: &std::io::Error) -> Self {
        Self {
            stamp,
            devices: Vec::new(),
            readable: false,
            problems: vec![format!("the file cannot be read: {e}")],
        }
    }

    /// One line per read: info when clean, an error naming the file and the lines otherwise.
    fn log(&self, path: &Path) {
        let path = path.display();
        if !self.readable {
            log::error!(
                "device tokens file {path}: {}; every device is refused until it can be read",
                self.problems.join("; ")
            );
        } else if self.problems.is_empty() {
            log::info!(
                "device tokens read from {path}: {} tokens",
                self.devices.len()
            );
        } else {
            log::error!(
                "device tokens file {path}: skipped bad lines ({}); fix them, they are ignored \
                 until then; serving the {} tokens of the valid lines",
                self.problems.join("; "),
                self.devices.len()
            );
        }
    }
}

/// `problems`, cut to [`MAX_PROBLEMS_SHOWN`] plus a count of the rest.
fn shown(mut problems: Vec<String>) -> Vec<String> {
    if problems.len() > MAX_PROBLEMS_SHOWN {
        let more = problems.len() - MAX_PROBLEMS_SHOWN;
        problems.truncate(MAX_PROBLEMS_SHOWN);
        problems.push(format!("and {more} more bad lines"));
    }
    problems
}

/// The device tokens, re-read when their file changes.
pub(crate) struct Devices {
    path: PathBuf,
    loaded: RwLock<Loaded>,
}

impl Devices {
    /// Reads the file at start. A file that cannot be read is an error (naming the file), so
    /// a wrong path stops the broker at once; bad lines are logged and skipped.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let stamp = stamp(path);
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read device tokens {}: {e}", path.display()))?;
        let loaded = Loaded::parsed(stamp, &bytes);
        loaded.log(path);
        Ok(Self {
            path: path.to_path_buf(),
            loaded: RwLock::new(loaded),
        })
    }

    /// Number of tokens known.
    pub(crate) fn count(&self) -> usize {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .devices
            .len()
    }

    /// The file's state, re-read first if it changed (so a deleted file shows at once).
    pub(crate) fn health(&self) -> Health {
        self.reload_if_changed();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        Health {
            devices: loaded.devices.len(),
            readable: loaded.readable,
            problems: loaded.problems.clone(),
        }
    }

    /// The device whose token is in `authorization` (`Bearer <token>`), if any.
    pub(crate) fn authenticate(&self, authorization: Option<&str>) -> Option<String> {
        let token = authorization?.trim().strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.reload_if_changed();
        let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        // Every entry is compared, in constant time, so timing tells nothing about the set.
        let mut found: Option<&Device> = None;
        for d in &loaded.devices {
            if constant_time_eq(&d.token_sha256, &hash) {
                found = Some(d);
            }
        }
        found.map(|d| d.name.clone())
    }

    /// Re-reads the file now (SIGHUP), changed or not.
    pub(crate) fn reload(&self) {
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        *loaded = read(&self.path);
        loaded.log(&self.path);
    }

    fn reload_if_changed(&self) {
        let known = self.loaded.read().unwrap_or_else(|e| e.into_inner()).stamp;
        if stamp(&self.path) == known {
            return;
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        // Another request may have re-read it while this one waited for the lock: one
        // read and one log line per change, not one per request.
        if stamp(&self.path) != loaded.stamp {
            *loaded = read(&self.path);
            loaded.log(&self.path);
        }
    }
}

/// Reads the file as it is now; never fails: an unreadable file is a [`Loaded`] without devices.
fn read(path: &Path) -> Loaded {
    let stamp = stamp(path);
    match std::fs::read(path) {
        Ok(bytes) => Loaded::parsed(stamp, &bytes),
        Err(e) => Loaded::unreadable(stamp, &e),
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.size(),
        m.ino(),
    ))
}

/// Parses the file's bytes: the valid lines' devices, and a problem per bad line. Lines are
/// split on bytes, so a file cut inside a multi-byte character loses only that line.
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let Ok(line) = std::str::from_utf8(raw) else {
            out.problems.push(format!("line {n}: not UTF-8 text"));
            continue;
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(d) if out.devices.iter().any(|k| k.token_sha256 == d.token_sha256) => out
                .problems
                .push(format!("line {n}: the same token hash as an earlier line")),
            Ok(d) => out.devices.push(d),
            Err(what) => out.problems.push(format!("line {n}: {what}")),
        }
    }
    out
}

/// One non-blank, non-comment line; the error says what is wrong without echoing the line.
fn parse_line(line: &str) -> Result<Device, &'static str> {
    let mut fields = line.split_whitespace();
    let (Some(name), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err("expected `<device name> <sha256 hex of its token>`");
    };
    let token_sha256 =
        decode_hex(hex).ok_or("the second field is not 64 hex digits (a SHA-256)")?;
    Ok(Device {
        name: name.to_string(),
        token_sha256,
    })
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Equality whose time does not depend on where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
