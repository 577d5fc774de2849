//! The after-upload hook: a command run once per completed upload, with the facts in its
//! environment.
//!
//! Key idea: the hook runs **at least once** per upload. Before each run the attempt is
//! counted in the file's record (flushed), and success is recorded after it: a kill -9 between
//! completion and hook runs the hook at the next start; a kill -9 mid-hook runs it again, with
//! `FERRY_HOOK_ATTEMPT` telling it so. Exactly-once is impossible for a command that can die
//! half-way; a hook should therefore be idempotent, keyed on `FERRY_UPLOAD_URL` or
//! `FERRY_MEDIA_ID`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::clock::Clock;
use crate::command::Ended;
use crate::error::Error;
use crate::store::{FileKey, RecordState, Store};

/// Why a hook run did not succeed. Each failure is retried (with [`retry_delay`]); the text is
/// logged and kept in the file's record for `ferry status`.
#[derive(Debug)]
pub(crate) enum HookError {
    /// `hook.command` names no program.
    NoCommand,
    /// The program could not be started (not found, not executable).
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It exited with a failure status or was killed by a signal.
    Exit {
        /// The program.
        program: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Shutdown stopped it; it runs again at the next start.
    Stopped {
        /// The program.
        program: String,
    },
    /// It ran past `hook.timeout` and was killed.
    TimedOut {
        /// The program.
        program: String,
        /// `hook.timeout`.
        after: Duration,
    },
    /// Waiting for it failed.
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// No completed upload is recorded for the file: nothing to run the hook for.
    NotComplete,
    /// The state store could not count the run or record its success.
    State(Error),
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCommand => write!(f, "hook.command is empty"),
            Self::Spawn { program, source } => write!(f, "cannot start {program:?}: {source}"),
            Self::Exit { program, status } => write!(f, "{program:?} {status}"),
            Self::Stopped { program } => write!(
                f,
                "{program:?} was stopped by the shutdown; it runs again at the next start"
            ),
            Self::TimedOut { program, after } => write!(
                f,
                "{program:?} did not finish within {} s and was killed",
                after.as_secs()
            ),
            Self::Wait { program, source } => write!(f, "waiting for {program:?}: {source}"),
            Self::NotComplete => write!(f, "no completed upload is recorded for it"),
            Self::State(e) => write!(f, "{e}"),
        }
    }
}

/// How the hook is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookSettings {
    /// Program and arguments (no shell).
    pub argv: Vec<String>,
    /// A run taking longer is killed and counted as failed.
    pub timeout: Duration,
}

/// The facts a hook receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookInput {
    /// The spool file (still in place while the hook runs).
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its upload URL.
    pub upload_url: String,
    /// Kept response headers (e.g. `stream-media-id`).
    pub captured: BTreeMap<String, String>,
    /// Seconds from creating the upload to its completion.
    pub elapsed_secs: u64,
    /// This run's number (1 for the first).
    pub attempt: u32,
}

impl HookInput {
    /// The environment variables of a run.
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("FERRY_PATH".to_string(), self.path.display().to_string()),
            ("FERRY_SIZE".to_string(), self.size.to_string()),
            ("FERRY_UPLOAD_URL".to_string(), self.upload_url.clone()),
            (
                "FERRY_MEDIA_ID".to_string(),
                self.captured
                    .get(crate::stream::MEDIA_ID_HEADER)
                    .cloned()
                    .unwrap_or_default(),
            ),
            (
                "FERRY_ELAPSED_SECS".to_string(),
                self.elapsed_secs.to_string(),
            ),
            ("FERRY_HOOK_ATTEMPT".to_string(), self.attempt.to_string()),
        ];
        for (name, value) in &self.captured {
            let var: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.push((format!("FERRY_HEADER_{var}"), value.clone()));
        }
        env
    }
}

/// Runs the hook once; `Err` says why it failed (exit status, signal, time-out, not found,
/// or `stop` was set: shutdown kills a running hook, which then runs again at the next start).
pub(crate) fn run(
    settings: &HookSettings,
    input: &HookInput,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> Result<(), HookError> {
    let Some((program, args)) = settings.argv.split_first() else {
        return Err(HookError::NoCommand);
    };
    let program = program.clone();
    let mut child = match crate::command::command(&program)
        .args(args)
        .envs(input.env())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(source) => return Err(HookError::Spawn { program, source }),
    };
    match crate::command::wait(&mut child, settings.timeout, clock, stop) {
        Ok(Ended::Exited(status)) if status.success() => Ok(()),
        Ok(Ended::Exited(status)) => Err(HookError::Exit { program, status }),
        Ok(Ended::Stopped) => Err(HookError::Stopped { program }),
        Ok(Ended::TimedOut) => Err(HookError::TimedOut {
            program,
            after: settings.timeout,
        }),
        Err(source) => Err(HookError::Wait { program, source }),
    }
}

/// The delay before hook retry number `failures` (1-based): 5 s doubling, at most 10 min.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    crate::backoff::doubling(Duration::from_secs(5), failures, Duration::from_secs(600))
}

/// Runs the hook for the completed upload recorded under `key`, counting the attempt in the
/// record before the run and its success after it. `Ok(false)` when it had already succeeded.
pub(crate) fn run_recorded(
    store: &Store,
    key: &FileKey,
    settings: &HookSettings,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> Result<bool, HookError> {
    let mut rec = match store.get(key) {
        Ok(Some(r)) if r.state == RecordState::Complete => r,
        Ok(_) => return Err(HookError::NotComplete),
        Err(e) => return Err(HookError::State(e)),
    };
    if rec.hook.done {
        return Ok(false);
    }
    rec.hook.runs += 1;
    store.put(&rec).map_err(HookError::State)?;
    let input = HookInput {
        path: rec.path.path().to_path_buf(),
        size: rec.identity.size,
        upload_url: rec.upload_url.clone(),
        captured: rec.captured.clone(),
        elapsed_secs: rec.updated_unix.saturating_sub(rec.created_unix),
        attempt: rec.hook.runs,
    };
    let result = run(settings, &input, clock, stop);
    // Read again: while the hook ran, the file may have been rewritten and a new upload
    // started, whose record must not be overwritten by this (older) one.
    let mut now = match store.get(key) {
        Ok(Some(r)) if r.upload_url == rec.upload_url => r,
        Ok(_) => return result.map(|()| true),
        Err(e) => return Err(HookError::State(e)),
    };
    match &result {
        Ok(()) => {
            now.hook.done = true;
            now.hook.last_error = None;
        }
        Err(e) => now.hook.last_error = Some(e.to_string()),
    }
    store.put(&now).map_err(HookError::State)?;
    result.map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn input() -> HookInput {
        let mut captured = BTreeMap::new();
        captured.insert("stream-media-id".to_string(), "abc123".to_string());
        HookInput {
            path: "/spool/a.mp4".into(),
            size: 42,
            upload_url: "https://u/1".into(),
            captured,
            elapsed_secs: 7,
            attempt: 2,
        }
    }

    #[test]
    fn the_environment_carries_the_facts() {
        let env = input().env();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("FERRY_PATH"), Some("/spool/a.mp4"));
        assert_eq!(get("FERRY_SIZE"), Some("42"));
        assert_eq!(get("FERRY_MEDIA_ID"), Some("abc123"));
        assert_eq!(get("FERRY_HEADER_STREAM_MEDIA_ID"), Some("abc123"));
        assert_eq!(get("FERRY_HOOK_ATTEMPT"), Some("2"));
        assert_eq!(get("FERRY_ELAPSED_SECS"), Some("7"));
    }

    #[test]
    fn runs_report_success_failure_and_timeouts() {
        let ok = HookSettings {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "test \"$FERRY_MEDIA_ID\" = abc123".into(),
            ],
            timeout: Duration::from_secs(10),
        };
        let go = AtomicBool::new(false);
        run(&ok, &input(), &SystemClock, &go).unwrap();
        let fails = HookSettings {
            argv: vec!["sh".into(), "-c".into(), "exit 3".into()],
            timeout: Duration::from_secs(10),
        };
        let err = run(&fails, &input(), &SystemClock, &go).unwrap_err();
        assert!(matches!(err, HookError::Exit { .. }), "{err:?}");
        assert!(err.to_string().contains("exit status: 3"), "{err}");
        let slow = HookSettings {
            argv: vec!["sleep".into(), "5".into()],
            timeout: Duration::from_millis(200),
        };
        let err = run(&slow, &input(), &SystemClock, &go).unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err:?}");
        assert!(err.to_string().contains("killed"), "{err}");
        let missing = HookSettings {
            argv: vec!["/nonexistent/hook".into()],
            timeout: Duration::from_secs(1),
        };
        let err = run(&missing, &input(), &SystemClock, &go)
            .unwrap_err()
            .to_string();
        // Under qemu-user (the ARM test runs), glibc's vfork-style posix_spawn is emulated as a
        // plain fork, so a failed exec shows up as the child's exit status 127, not as an
        // error from spawn. Natively the spawn itself must fail.
        let emulated = !cfg!(target_arch = "x86_64") && err.contains("exit status: 127");
        assert!(err.contains("cannot start") || emulated, "{err}");
    }

    #[test]
    fn retry_delays_double_up_to_ten_minutes() {
        let got: Vec<u64> = (1..=10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(got, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    }
}
