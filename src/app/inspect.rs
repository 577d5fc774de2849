//! The commands that look at or steer a running daemon through its state directory:
//! `ferry status`, `ferry pause`/`resume` and `ferry check-config` (its `--probe` is in
//! [`super::probe`]).

use std::io::ErrorKind;
use std::path::Path;

use super::{load, print_line};
use crate::cli::CommonArgs;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, Env};
use crate::error::{Error, Result};
use crate::status::ReadError;
use crate::transport::http::UreqTransport;

/// `ferry status`'s exit code when no daemon runs on the state directory, like
/// `systemctl is-active`'s: a script can tell "not running" from "cannot tell" (1, 2).
const NOT_RUNNING: i32 = 3;

pub(super) fn show_status(args: &CommonArgs, json: bool, env: &Env) -> Result<i32> {
    let dir = load(args)?.state_dir(env)?;
    let snap = match crate::status::read(&dir) {
        Ok(snap) => snap,
        Err(ReadError::Missing { source, .. }) if source.kind() == ErrorKind::NotFound => {
            log::warn!(
                "no ferry daemon has run on {} (it has no {}); is `ferry run` using this state directory?",
                dir.display(),
                crate::status::SNAPSHOT_FILE
            );
            return Ok(NOT_RUNNING);
        }
        Err(e) => {
            return Err(Error::State {
                dir,
                problem: format!("cannot read the daemon's status: {e}"),
            })
        }
    };
    let alive = is_running(&dir, snap.pid);
    if json {
        let mut value = serde_json::to_value(&snap).unwrap_or_default();
        value["running"] = serde_json::Value::Bool(alive);
        print_line(&value.to_string());
    } else {
        let now = SystemClock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", crate::status::render_text(&snap, alive, now));
    }
    Ok(if alive { 0 } else { NOT_RUNNING })
}

/// True when the daemon that wrote a status snapshot, process `pid`, still runs on `dir`: it
/// holds the state store open, or (when the lock cannot be told) `pid` is a ferry. The lock
/// also tells a ferry run by an emulator (qemu-user), whose process name is the emulator's.
fn is_running(dir: &Path, pid: u32) -> bool {
    crate::store::holder(dir) == Some(pid)
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ferry")
}

/// True when a daemon runs on `dir`: its status snapshot names a live ferry.
fn daemon_runs_on(dir: &Path) -> bool {
    crate::status::read(dir).is_ok_and(|snap| is_running(dir, snap.pid))
}

pub(super) fn set_paused(args: &CommonArgs, paused: bool, env: &Env) -> Result<i32> {
    let dir = load(args)?.state_dir(env)?;
    let marker = dir.join(crate::status::PAUSE_MARKER);
    let io = |e| Error::Io {
        context: marker.display().to_string(),
        source: e,
    };
    if paused {
        // Durable: a paused device stays paused after a power cut.
        crate::durable::create_dir_all(&dir).map_err(io)?;
        crate::durable::write_atomic(
            &marker,
            b"paused by `ferry pause`; `ferry resume` removes this file\n",
        )
        .map_err(io)?;
        print_line("paused: uploads stop within a second and stay paused across restarts (`ferry resume` resumes)");
    } else {
        crate::durable::remove_file(&marker).map_err(io)?;
        print_line("resumed");
    }
    if !daemon_runs_on(&dir) {
        let then = if paused { "paused" } else { "uploading" };
        log::warn!(
            "no ferry daemon is running on {}; it will start {then}",
            dir.display()
        );
    }
    Ok(0)
}

/// `ferry limit [RATE|off]`: writes, removes or shows the rate override in the state directory.
pub(super) fn limit(args: &CommonArgs, rate: Option<&str>, env: &Env) -> Result<i32> {
    use crate::ratelimit::{override_text, read_override, LIMIT_FILE};
    let dir = load(args)?.state_dir(env)?;
    let file = dir.join(LIMIT_FILE);
    let io = |e| Error::Io {
        context: file.display().to_string(),
        source: e,
    };
    let Some(rate) = rate else {
        let shown = match read_override(&dir).map_err(|e| Error::Io {
            context: e,
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })? {
            None => {
                "no override: the configured rates apply (`ferry status` shows the one in force)"
                    .to_string()
            }
            Some(None) => {
                "no limit (set by `ferry limit`; `ferry limit off` returns to the configured rates)"
                    .to_string()
            }
            Some(Some(r)) => format!(
                "{}/s (set by `ferry limit`; `ferry limit off` returns to the configured rates)",
                crate::progress::human_bytes(r)
            ),
        };
        print_line(&shown);
        return Ok(0);
    };
    if rate.trim().eq_ignore_ascii_case("off") {
        crate::durable::remove_file(&file).map_err(io)?;
        print_line("rate limit override removed: the configured rates apply");
    } else {
        let bytes = crate::config::parse_rate(rate).map_err(|e| {
            Error::usage(
                format!("ferry limit: {e}; `off` removes the override"),
                "ferry limit --help",
            )
        })?;
        // Durable: the limit holds after a power cut, as a pause does.
        crate::durable::create_dir_all(&dir).map_err(io)?;
        crate::durable::write_atomic(&file, override_text(bytes).as_bytes()).map_err(io)?;
        match bytes {
            Some(r) => print_line(&format!(
                "rate limit {}/s for all uploads, across restarts (`ferry limit off` removes it)",
                crate::progress::human_bytes(r)
            )),
            None => print_line("no rate limit, whatever the configuration says, across restarts (`ferry limit off` removes this)"),
        }
    }
    if !daemon_runs_on(&dir) {
        log::warn!(
            "no ferry daemon is running on {}; it will start with this",
            dir.display()
        );
    }
    Ok(0)
}

/// `ferry check-config [--probe]`: validates the configuration; with `probe`, also asks the
/// endpoint ([`super::probe`]).
pub(super) fn check_config(args: &CommonArgs, probe: bool, env: &Env) -> Result<i32> {
    let config = load(args)?.resolve(env)?;
    UreqTransport::new(&config.http)?;
    print_line(&format!(
        "endpoint    {}",
        crate::tus::url::redact(&config.upload.endpoint)
    ));
    print_line(&format!("state_dir   {}", config.state_dir.display()));
    show_spool(&config)?;
    print_line("configuration OK");
    if probe {
        return super::probe::probe(&config);
    }
    Ok(0)
}

fn show_spool(config: &Config) -> Result<()> {
    let Some(d) = &config.daemon else {
        print_line("spool       not set: `ferry upload` works, `ferry run` needs spool.dir");
        return Ok(());
    };
    if !d.spool.dir.is_dir() {
        return Err(Error::config(format!(
            "spool.dir {} is not a directory (ferry run would wait for it)",
            d.spool.dir.display()
        )));
    }
    print_line(&format!(
        "spool       {} (after upload: {}, failed: {})",
        d.spool.dir.display(),
        d.after_upload,
        d.failed_dir
            .as_ref()
            .map_or("kept in place".into(), |f| f.display().to_string())
    ));
    Ok(())
}
