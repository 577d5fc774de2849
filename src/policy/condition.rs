//! `network.condition`: an operator's command whose exit status says go (0) or wait (anything
//! else): a metered link, a battery level, a vehicle's ignition.
//!
//! Key idea: the command never runs in [`Policy::check`], which the gate calls before every
//! step; a thread of the policy's own runs it at most every `condition_interval` (stdin null,
//! the first 4 KiB of its output kept, killed and reaped after `condition_timeout`) and leaves
//! its answer for `check` to read. Until the first answer the policy is closed; a time-out, a
//! program that cannot start or dies of a signal also says wait (fail closed: the command
//! guards what may not be spent). The first output line is the reason shown in `ferry
//! status`, or its note while open. Dropping the policy (a reload builds new ones, shutdown)
//! stops the thread and kills a run in progress within a fraction of a second.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::network::ConditionSettings;
use super::{Policy, Verdict};
use crate::clock::Clock;
use crate::command::{self, Ended};

/// How much of the command's output is kept (the rest is read and dropped, so that a chatty
/// command is not killed by a closed pipe).
const MAX_OUTPUT: usize = 4096;
/// The longest first line shown, in characters.
const MAX_LINE: usize = 200;
/// How often the gate asks while an answer is due and not in yet.
const POLL: Duration = Duration::from_millis(250);

/// The last answer and when the next is due.
#[derive(Debug, Default)]
struct State {
    answer: Option<Answer>,
    /// When the next run starts (its answer comes a little later).
    next_run: Option<Instant>,
}

/// What one run said.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    /// `Some(why)`: wait.
    closed: Option<String>,
    /// The first output line of a run that said go.
    note: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

/// The condition policy. See the module docs.
#[derive(Debug)]
pub(crate) struct ConditionPolicy {
    program: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ConditionPolicy {
    /// Starts the thread that runs the command (the first run at once).
    pub(crate) fn start(settings: ConditionSettings, clock: Arc<dyn Clock>) -> Self {
        let program = settings.argv.first().cloned().unwrap_or_default();
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("condition".into())
            .spawn(move || run_until_stopped(&settings, &for_thread, &*clock));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                lock(&shared).answer = Some(Answer {
                    closed: Some(format!(
                        "condition {program} cannot run: no thread for it ({e})"
                    )),
                    note: None,
                });
                None
            }
        };
        Self {
            program,
            shared,
            thread,
        }
    }
}

impl Drop for ConditionPolicy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Bounded: the thread looks at `stop` at least every 100 ms (at once when unparked
        // from a sleep), a run every 50 ms.
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Policy for ConditionPolicy {
    fn name(&self) -> &'static str {
        "condition"
    }

    fn check(&mut self, now: Instant, _wall: SystemTime) -> Verdict {
        let state = lock(&self.shared);
        let recheck_at = Some(match state.next_run {
            Some(t) if t > now => t,
            _ => now + POLL,
        });
        match &state.answer {
            None => Verdict {
                closed: Some(format!(
                    "waiting for the first answer of condition {}",
                    self.program
                )),
                recheck_at,
                ..Verdict::default()
            },
            Some(a) => Verdict {
                closed: a.closed.clone(),
                note: a.note.clone(),
                recheck_at,
                ..Verdict::default()
            },
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// The thread: a run, its answer published, a wait until the next is due; until stopped.
fn run_until_stopped(settings: &ConditionSettings, shared: &Shared, clock: &dyn Clock) {
    while !shared.stop.load(Ordering::Relaxed) {
        let started = clock.now();
        let Some(answer) = run_once(settings, clock, &shared.stop) else {
            return;
        };
        let next_run = (started + settings.interval).max(clock.now());
        {
            let mut state = lock(shared);
            state.answer = Some(answer);
            state.next_run = Some(next_run);
        }
        clock.sleep(
            next_run.saturating_duration_since(clock.now()),
            &shared.stop,
        );
    }
}

/// Runs the command once; `None` when `stop` ended the run.
fn run_once(settings: &ConditionSettings, clock: &dyn Clock, stop: &AtomicBool) -> Option<Answer> {
    let (program, args) = settings.argv.split_first()?;
    let spawned = crate::command::command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Some(answer(program, Outcome::NoStart(e), "")),
    };
    let output = Arc::new(Output::default());
    if let Some(stdout) = child.stdout.take() {
        let out = output.clone();
        // Not joined: a child of the command may hold the pipe open after the command ended.
        let _ = std::thread::Builder::new()
            .name("condition-output".into())
            .spawn(move || out.read_from(stdout));
    } else {
        output.done.store(true, Ordering::Relaxed);
    }
    let outcome = match command::wait(&mut child, settings.timeout, clock, stop) {
        Ok(Ended::Stopped) => return None,
        Ok(Ended::Exited(status)) => Outcome::Exited(status),
        Ok(Ended::TimedOut) => Outcome::TimedOut(settings.timeout),
        Err(e) => Outcome::NoWait(e),
    };
    // The output is all there once the pipe closed, normally before the exit was noticed.
    clock.sleep(Duration::from_millis(200), &output.done);
    let text = output.first_line();
    Some(answer(program, outcome, &text))
}

/// The command's output, as far as it is kept.
#[derive(Debug, Default)]
struct Output {
    kept: Mutex<Vec<u8>>,
    /// The pipe is closed (or broke).
    done: AtomicBool,
}

impl Output {
    fn read_from(&self, mut pipe: impl Read) {
        let mut buf = [0u8; 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        self.done.store(true, Ordering::Relaxed);
    }

    fn first_line(&self) -> String {
        first_line(&self.kept.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The first line of `out`, trimmed, control characters made spaces, at most [`MAX_LINE`]
/// characters (cut ones end in `…`).
fn first_line(out: &[u8]) -> String {
    let line = out.split(|b| *b == b'\n').next().unwrap_or_default();
    let text: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.chars().count() > MAX_LINE {
        let cut: String = text.chars().take(MAX_LINE).collect();
        format!("{}…", cut.trim_end())
    } else {
        text.to_string()
    }
}

/// How a run ended, for [`answer`].
#[derive(Debug)]
enum Outcome {
    Exited(ExitStatus),
    TimedOut(Duration),
    NoStart(std::io::Error),
    NoWait(std::io::Error),
}

/// The answer of a run of `program` that ended so, with `line` its first output line.
fn answer(program: &str, outcome: Outcome, line: &str) -> Answer {
    let with_line = |head: String| {
        if line.is_empty() {
            head
        } else {
            format!("{head}: {line}")
        }
    };
    let closed = match outcome {
        Outcome::Exited(s) if s.success() => {
            return Answer {
                closed: None,
                note: (!line.is_empty()).then(|| line.to_string()),
            }
        }
        Outcome::Exited(s) => match (s.code(), s.signal()) {
            (Some(code), _) => with_line(format!("condition {program} says wait (exit {code})")),
            (None, Some(sig)) => with_line(format!(
                "condition {program} says wait (it was ended by signal {sig})"
            )),
            (None, None) => with_line(format!("condition {program} says wait ({s})")),
        },
        Outcome::TimedOut(after) => format!(
            "condition {program} gave no answer within {} s and was killed (network.condition_timeout)",
            after.as_secs_f64()
        ),
        Outcome::NoStart(e) => format!("condition {program} cannot start: {e}"),
        Outcome::NoWait(e) => format!("condition {program}: waiting for it failed: {e}"),
    };
    Answer {
        closed: Some(closed),
        note: None,
    }
}

#[cfg(test)]
mod tests;
