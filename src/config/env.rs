//! The process environment, read once at start into an [`Env`] value: the only place ferry
//! reads environment variables, so everything that depends on them is tested with a value.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What ferry takes from its environment (systemd's variables, mostly).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Env {
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`): the default state directory.
    pub state_directory: Option<PathBuf>,
    /// `$XDG_STATE_HOME`: the default state directory is `ferry` below it.
    pub xdg_state_home: Option<PathBuf>,
    /// `$HOME`: the default state directory is `.local/state/ferry` below it.
    pub home: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd's `LoadCredential=`): where `credential:NAME` is read.
    pub credentials_directory: Option<PathBuf>,
    /// `$NOTIFY_SOCKET`: the systemd notification socket under `Type=notify`.
    pub notify_socket: Option<OsString>,
    /// `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or this process: `WatchdogSec=`.
    pub watchdog: Option<Duration>,
    /// Stderr is the stream systemd connected to journald (`$JOURNAL_STREAM`).
    pub journald: bool,
    /// `$RUST_LOG`: the log filter, which wins over `-q`/`-v`.
    pub rust_log: Option<String>,
    /// `$TZ`: the local time zone for upload windows (else /etc/localtime).
    pub tz: Option<OsString>,
    /// `$TZDIR`: where zone names are looked up (else /usr/share/zoneinfo).
    pub tzdir: Option<PathBuf>,
}

impl Env {
    /// Reads this process's environment.
    pub(crate) fn from_process() -> Self {
        #[expect(
            clippy::disallowed_methods,
            reason = "the one reader of the environment"
        )]
        let var = |name: &str| std::env::var_os(name);
        Self {
            state_directory: var("STATE_DIRECTORY").map(PathBuf::from),
            xdg_state_home: var("XDG_STATE_HOME").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            credentials_directory: var("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            notify_socket: var("NOTIFY_SOCKET"),
            watchdog: watchdog(var("WATCHDOG_USEC"), var("WATCHDOG_PID")),
            journald: var("JOURNAL_STREAM").is_some_and(|v| is_stderr(&v)),
            rust_log: var("RUST_LOG").map(|v| v.to_string_lossy().into_owned()),
            tz: var("TZ"),
            tzdir: var("TZDIR").map(PathBuf::from),
        }
    }

    /// The default state directory: `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/ferry`, else
    /// `~/.local/state/ferry`.
    pub(crate) fn default_state_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.state_directory {
            return Some(d.clone());
        }
        if let Some(d) = &self.xdg_state_home {
            return Some(d.join("ferry"));
        }
        self.home.as_ref().map(|h| h.join(".local/state/ferry"))
    }
}

/// The systemd watchdog interval, when `WatchdogSec=` is set for this process.
fn watchdog(usec: Option<OsString>, pid: Option<OsString>) -> Option<Duration> {
    let pid_ok = pid.is_none_or(|p| {
        p.to_str()
            .is_some_and(|p| p.trim() == std::process::id().to_string())
    });
    let usec: u64 = usec?.to_str()?.trim().parse().ok()?;
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec))
}

/// True when `$JOURNAL_STREAM` (`dev:inode`) names our stderr, which journald stamps itself.
/// A child that inherited the variable but writes elsewhere is not under journald.
fn is_stderr(journal_stream: &OsString) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = journal_stream.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_falls_back_from_systemd_to_xdg_to_home() {
        let mut env = Env {
            home: Some("/home/u".into()),
            ..Env::default()
        };
        assert_eq!(
            env.default_state_dir(),
            Some("/home/u/.local/state/ferry".into())
        );
        env.xdg_state_home = Some("/x".into());
        assert_eq!(env.default_state_dir(), Some("/x/ferry".into()));
        env.state_directory = Some("/var/lib/ferry".into());
        assert_eq!(env.default_state_dir(), Some("/var/lib/ferry".into()));
        assert_eq!(Env::default().default_state_dir(), None);
    }

    #[test]
    fn watchdog_is_ours_only_when_the_pid_matches() {
        let me = std::process::id().to_string();
        let us = |v: &str| Some(OsString::from(v));
        assert_eq!(watchdog(us("2000000"), None), Some(Duration::from_secs(2)));
        assert_eq!(
            watchdog(us("2000000"), us(&me)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(watchdog(us("2000000"), us("1")), None);
        assert_eq!(watchdog(us("0"), None), None);
        assert_eq!(watchdog(us("soon"), None), None);
        assert_eq!(watchdog(None, None), None);
    }
}
