//! An operator's command (the after-upload hook, the network condition) waited for with a
//! deadline.
//!
//! Key idea: the child is polled, never waited on blindly, so that a time-out or a stop
//! (shutdown, a policy dropped on reload) kills it at once; a killed child is always reaped, so
//! no zombie is left behind. The callers spawn the child themselves (each sets its own
//! environment and pipes) and turn [`Ended`] into their own words.

use std::ffi::OsStr;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clock::Clock;

/// How often a running child is looked at.
const POLL: Duration = Duration::from_millis(50);

/// How a child's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited (or a signal not of ours ended it).
    Exited(ExitStatus),
    /// It ran past the time-out and was killed (and reaped).
    TimedOut,
    /// `stop` was set while it ran: it was killed (and reaped).
    Stopped,
}

/// A command for `program`, with the environment ferry was started with, less the malloc
/// settings that ferry gives itself on glibc (`ferry_lazyzero::tune_glibc`): they suit ferry,
/// not the operator's programs.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    ferry_lazyzero::child_env(&mut command);
    command
}

/// Waits for `child` until it exits, `timeout` passes (measured on `clock`) or `stop` is set;
/// in the last two cases it is killed and reaped. `Err`: waiting itself failed (the child is
/// killed and reaped then too, as far as the system lets us).
pub(crate) fn wait(
    child: &mut Child,
    timeout: Duration,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> std::io::Result<Ended> {
    let started = clock.now();
    loop {
        let ended = match child.try_wait() {
            Ok(Some(status)) => return Ok(Ended::Exited(status)),
            Ok(None) if stop.load(Ordering::Relaxed) => Ended::Stopped,
            Ok(None) if clock.now().saturating_duration_since(started) >= timeout => {
                Ended::TimedOut
            }
            Ok(None) => {
                clock.sleep(POLL, stop);
                continue;
            }
            Err(e) => {
                kill(child);
                return Err(e);
            }
        };
        kill(child);
        return Ok(ended);
    }
}

/// Kills and reaps `child` (errors mean it is gone already).
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::process::Command;

    fn sh(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn exits_time_outs_and_stops_are_told_apart() {
        let go = AtomicBool::new(false);
        let long = Duration::from_secs(10);
        let ended = wait(&mut sh("exit 4"), long, &SystemClock, &go).unwrap();
        assert!(
            matches!(ended, Ended::Exited(s) if s.code() == Some(4)),
            "{ended:?}"
        );
        let mut slow = sh("sleep 5");
        let ended = wait(&mut slow, Duration::from_millis(100), &SystemClock, &go).unwrap();
        assert_eq!(ended, Ended::TimedOut);
        let proc = std::path::PathBuf::from(format!("/proc/{}", slow.id()));
        assert!(
            !proc.exists(),
            "reaped: no zombie left in the process table"
        );
        let stop = AtomicBool::new(true);
        let ended = wait(&mut sh("sleep 5"), long, &SystemClock, &stop).unwrap();
        assert_eq!(ended, Ended::Stopped);
    }
}
