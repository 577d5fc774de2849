//! The local time zone, as the C library finds it: `TZ` (a POSIX TZ string such as
//! `CET-1CEST,M3.5.0,M10.5.0/3`, a zone name such as `Europe/Berlin` or `:Europe/Berlin`
//! looked up under `TZDIR` or /usr/share/zoneinfo, or an absolute path), else /etc/localtime,
//! else UTC. `TZ=""` is UTC too.
//!
//! Key idea: only the reading happens here (files and the environment stay in `config`);
//! parsing is [`Zone`]'s. A zone that cannot be read or parsed is a config error naming `TZ`
//! or the file: windows judged in the wrong zone would send at the wrong hours.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::env::Env;
use crate::error::{Error, Result};
use crate::policy::zone::Zone;

/// The system's zone file when `TZ` is unset.
const LOCALTIME: &str = "/etc/localtime";
/// Where zone names are looked up when `TZDIR` is unset.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// The local time zone for upload windows.
pub(crate) fn local_zone(env: &Env) -> Result<Zone> {
    let dir = env.tzdir.clone().unwrap_or_else(|| PathBuf::from(ZONEINFO));
    match env.tz.as_deref() {
        None => localtime(Path::new(LOCALTIME)),
        Some(tz) => from_tz(tz, &dir),
    }
}

/// /etc/localtime, or UTC when there is none.
fn localtime(path: &Path) -> Result<Zone> {
    match std::fs::read(path) {
        Ok(bytes) => Zone::from_tzif(&bytes, &path.display().to_string()).map_err(|e| {
            Error::config(format!(
                "{}: {e} (upload windows need the local time zone; set TZ, e.g. TZ=Europe/Berlin)",
                path.display()
            ))
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Zone::utc()),
        Err(e) => Err(Error::config(format!(
            "cannot read {}: {e} (upload windows need the local time zone; set TZ, e.g. TZ=Europe/Berlin)",
            path.display()
        ))),
    }
}

/// The zone `TZ` names.
fn from_tz(tz: &OsStr, dir: &Path) -> Result<Zone> {
    let text = tz
        .to_str()
        .ok_or_else(|| Error::config(format!("TZ={tz:?} is not UTF-8")))?;
    if text.is_empty() {
        return Ok(Zone::utc());
    }
    let name = format!("TZ={text}");
    let (file_only, rest) = match text.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(path) = zone_file(rest, dir) {
        match std::fs::read(&path) {
            Ok(bytes) => {
                return Zone::from_tzif(&bytes, &name)
                    .map_err(|e| Error::config(format!("{name}: {}: {e}", path.display())))
            }
            Err(e) if file_only || e.kind() != ErrorKind::NotFound => {
                return Err(Error::config(format!(
                    "{name}: cannot read {}: {e}",
                    path.display()
                )))
            }
            Err(_) => {}
        }
    }
    Zone::from_posix(rest, &name).map_err(|e| {
        Error::config(format!(
            "{name}: not a zone under {} and {e}; use a name such as Europe/Berlin or a rule such as CET-1CEST,M3.5.0,M10.5.0/3",
            dir.display()
        ))
    })
}

/// The file a zone name stands for: an absolute path as it is, a name below `dir` if it
/// stays there (no `..`).
fn zone_file(name: &str, dir: &Path) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(p))
}
