//! Device authentication: `Authorization: Bearer <token>` against the device tokens file.
//!
//! The file holds one `<device name> <sha256 hex of the token>` per line (`#` comments and
//! blank lines allowed), so a leaked file gives no tokens away. A name may appear on several
//! lines (a new token beside the old one while devices are rotated). The file is re-read
//! when it changes (checked on each request, a `stat`) or on SIGHUP; a file that no longer
//! parses is logged and the previous set kept.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

/// A device: its name and the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Device {
    /// The name used in log lines and rate limits.
    pub name: String,
    /// SHA-256 of the token.
    pub token_sha256: [u8; 32],
}

/// Identifies a version of the file: modification time, size, inode.
type Stamp = (i64, i64, u64, u64);

/// The device tokens, re-read when their file changes.
pub(crate) struct Devices {
    path: PathBuf,
    loaded: RwLock<(Option<Stamp>, Vec<Device>)>,
}

impl Devices {
    /// Reads the file; its errors name the line.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let stamp = stamp(path);
        let devices = read(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            loaded: RwLock::new((stamp, devices)),
        })
    }

    /// Number of tokens known.
    pub(crate) fn count(&self) -> usize {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .len()
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
        for d in &loaded.1 {
            if constant_time_eq(&d.token_sha256, &hash) {
                found = Some(d);
            }
        }
        found.map(|d| d.name.clone())
    }

    /// Re-reads the file now (SIGHUP).
    pub(crate) fn reload(&self) {
        self.reload_from(stamp(&self.path));
    }

    fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        let known = self.loaded.read().unwrap_or_else(|e| e.into_inner()).0;
        if now != known {
            self.reload_from(now);
        }
    }

    fn reload_from(&self, stamp: Option<Stamp>) {
        let mut loaded = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        match read(&self.path) {
            Ok(devices) => {
                log::info!(
                    "device tokens re-read from {}: {} tokens",
                    self.path.display(),
                    devices.len()
                );
                *loaded = (stamp, devices);
            }
            Err(e) => {
                // Keep serving the devices we know; remember the stamp so the error is
                // logged once per change, not once per request.
                log::error!("{e}; keeping the {} tokens read before", loaded.1.len());
                loaded.0 = stamp;
            }
        }
    }
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.size(), m.ino()))
}

fn read(path: &Path) -> Result<Vec<Device>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read device tokens {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("device tokens {}: {e}", path.display()))
}

/// Parses the file's text; errors name the line (and never echo a hash).
pub(crate) fn parse(text: &str) -> Result<Vec<Device>, String> {
    let mut out: Vec<Device> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut fields = line.split_whitespace();
        let (Some(name), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!(
                "line {n}: expected `<device name> <sha256 hex of its token>`"
            ));
        };
        let token_sha256 = decode_hex(hex).ok_or_else(|| {
            format!("line {n}: the second field is not 64 hex digits (a SHA-256)")
        })?;
        if out.iter().any(|d| d.token_sha256 == token_sha256) {
            return Err(format!("line {n}: the same token hash is given twice"));
        }
        out.push(Device {
            name: name.to_string(),
            token_sha256,
        });
    }
    Ok(out)
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
mod tests {
    use super::*;

    fn hex(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn parses_names_hashes_comments_and_rotation() {
        let text = format!(
            "# devices\n\ncam-1 {}\ncam-1 {}\n  cam-2\t{}  \n",
            hex("a"),
            hex("b"),
            hex("c").to_uppercase()
        );
        let d = parse(&text).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].name, "cam-2");
        assert_eq!(d[2].token_sha256, <[u8; 32]>::from(Sha256::digest(b"c")));
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("cam-1\n").unwrap_err().starts_with("line 1:"));
        assert!(parse("\ncam-1 abc\n").unwrap_err().starts_with("line 2:"));
        let h = hex("a");
        assert!(parse(&format!("a {h}\nb {h}\n"))
            .unwrap_err()
            .contains("line 2: the same token hash"));
        assert!(parse(&format!("a {h} extra\n")).is_err());
        assert!(parse(&format!("a {}zz\n", &h[..62])).is_err());
    }

    #[test]
    fn authenticates_bearer_tokens_and_rereads_a_changed_file() {
        let dir = std::env::temp_dir().join(format!("ferry-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("devices");
        std::fs::write(&path, format!("cam-1 {}\n", hex("tok-1"))).unwrap();
        let devices = Devices::load(&path).unwrap();
        assert_eq!(
            devices.authenticate(Some("Bearer tok-1")).as_deref(),
            Some("cam-1")
        );
        assert_eq!(devices.authenticate(Some("Bearer tok-2")), None);
        assert_eq!(devices.authenticate(Some("Basic tok-1")), None);
        assert_eq!(devices.authenticate(Some("Bearer ")), None);
        assert_eq!(devices.authenticate(None), None);
        // A different size makes the change visible even within one mtime tick.
        std::fs::write(&path, format!("cam-22 {}\n", hex("tok-2"))).unwrap();
        assert_eq!(
            devices.authenticate(Some("Bearer tok-2")).as_deref(),
            Some("cam-22")
        );
        assert_eq!(devices.authenticate(Some("Bearer tok-1")), None);
        // A broken file keeps the previous set.
        std::fs::write(&path, "garbage\n").unwrap();
        assert_eq!(
            devices.authenticate(Some("Bearer tok-2")).as_deref(),
            Some("cam-22")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
