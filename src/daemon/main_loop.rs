//! The main thread's loop: wait for an event or for the next due time, then act on it.
//!
//! Key idea: nothing here sleeps for a fixed time. `next_due` is the earliest of every
//! deadline the daemon keeps (rescan, settling files, status, watchdog, stop deadline, held
//! uploads, hook retries); the loop waits on the event channel until then, and `tick` does
//! whatever is due. A state-store error ends the loop, after the uploads are stopped.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::status::PAUSE_MARKER;
use crate::tus::url;

use super::scan::RESCAN_WITHOUT_WATCH;
use super::schedule::Input;
use super::{Event, Main};

/// Steps still running this long after a stop have their connections shut down.
const STOP_DEADLINE: Duration = Duration::from_millis(4000);
/// After that, a step that still has not reported is stuck outside its connection (a name
/// lookup): the process exits without it (systemd's stop timeout is far longer).
const LAST_RESORT: Duration = Duration::from_secs(3);

impl<'p, 'a> Main<'p, 'a> {
    pub(super) fn run(&mut self, events: &Receiver<Event>) -> Result<()> {
        let paused = self.parts.state_dir.join(PAUSE_MARKER).exists();
        if paused {
            log::info!("uploads are paused (`ferry resume` resumes them)");
        }
        self.tell(Input::Pause(paused))?;
        self.check_limit_override();
        log::info!(
            "watching {} -> {} (after upload: {}, {} at once)",
            self.settings.spool.dir.display(),
            url::redact(&self.parts.upload.endpoint),
            self.settings.after_upload,
            self.settings.concurrency
        );
        loop {
            self.survive(|m| m.tick())?;
            if self.core.stopped() {
                break;
            }
            let late = self
                .stopping
                .map(|t| self.parts.clock.now().saturating_duration_since(t));
            if late.is_some_and(|l| l >= STOP_DEADLINE) && !self.cut_connections {
                // A worker may sit in a read for up to the idle timeout; waiting for it would
                // break the promise to stop within 5 s. Shutting the connections down ends
                // those reads at once; every checkpoint is already on disk.
                log::warn!(
                    "{} uploads did not stop in time; closing their connections (nothing is lost: they resume on the next start)",
                    self.core.stepping()
                );
                self.parts.transport.shut_down();
                self.cut_connections = true;
            }
            if late.is_some_and(|l| l >= STOP_DEADLINE + LAST_RESORT) {
                // Only a thread stuck outside any connection (a name lookup the system
                // resolver will not give up) gets here.
                log::warn!("{} uploads are stuck outside their connections; exiting anyway (nothing is lost)", self.core.stepping());
                self.write_status("stopped");
                self.parts.notifier.send("STATUS=stopped");
                std::process::exit(0);
            }
            let wait = self
                .next_due()
                .saturating_duration_since(self.parts.clock.now());
            match events.recv_timeout(wait) {
                Ok(ev) => self.survive(|m| m.handle(ev))?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while let Ok(ev) = events.try_recv() {
                self.survive(|m| m.handle(ev))?;
            }
        }
        self.write_status("stopped");
        self.parts.notifier.send("STATUS=stopped");
        log::info!("stopped");
        Ok(())
    }

    /// Runs `f`; an error ends the daemon. A state-store failure (a full disk, a failed
    /// sync) first stops the uploads in flight: a store that cannot make a record durable
    /// must not let data go out on a URL a restart would not know (a second upload).
    fn survive(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let result = f(self);
        if let Err(Error::State { .. }) = &result {
            log::error!("uploads stop: no data is sent while the state cannot be written; ferry exits (status 1) and its service manager starts it again");
            self.interrupt
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.write_status("stopped: the state store failed");
            self.parts
                .notifier
                .send("STATUS=stopped: the state store failed");
        }
        result
    }

    /// Everything that is due now: rescans, settled files, steps, status, watchdog.
    fn tick(&mut self) -> Result<()> {
        let now = self.parts.clock.now();
        if now >= self.next_rescan && self.stopping.is_none() {
            self.rescan()?;
        }
        let settled: Vec<PathBuf> = self
            .settling
            .iter()
            .filter(|(_, due)| **due <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in settled {
            self.settling.remove(&p);
            self.consider(&p, false)?;
        }
        if self.stopping.is_none() {
            self.check_gate()?;
        }
        self.check_spool_if_due()?;
        self.dispatch()?;
        if now >= self.next_status {
            let state = self.state_name();
            self.write_status(state);
        }
        if let (Some(due), Some(every)) = (self.next_watchdog, self.parts.watchdog) {
            if now >= due {
                self.parts.notifier.send("WATCHDOG=1");
                self.next_watchdog = Some(now + every / 2);
            }
        }
        Ok(())
    }

    fn next_due(&self) -> Instant {
        let mut due = self.next_rescan.min(self.next_status);
        if let Some(w) = self.next_watchdog {
            due = due.min(w);
        }
        if let Some(s) = self.settling.values().min() {
            due = due.min(*s);
        }
        if let Some(t) = self.stopping {
            let next = if self.cut_connections {
                STOP_DEADLINE + LAST_RESORT
            } else {
                STOP_DEADLINE
            };
            due = due.min(t + next);
        }
        if let Some(s) = self.core.next_due(self.parts.clock.now()) {
            due = due.min(s);
        }
        if let Some(g) = self.gate.next_due(self.parts.clock.now()) {
            due = due.min(g);
        }
        if let Some(s) = self.spool_check_due() {
            due = due.min(s);
        }
        due
    }

    fn handle(&mut self, ev: Event) -> Result<()> {
        match ev {
            Event::Written(path) => {
                if self.stopping.is_none() && self.in_spool(&path) {
                    self.consider(&path, true)?;
                }
            }
            Event::Created(path) => {
                if self.stopping.is_none() && self.in_spool(&path) {
                    self.consider(&path, false)?;
                }
            }
            Event::Rescan(since) => {
                // The watcher sends one as soon as its watch is in place, during the first
                // scan as a rule: a scan that began after `since` saw all it could have missed
                // (a second walk of a large spool would double the start-up, and a stop would
                // wait for it).
                if self.last_scan_began.is_none_or(|began| began < since) {
                    self.force_scan = true;
                    self.next_rescan = self.parts.clock.now();
                }
            }
            Event::WatchUnavailable => {
                self.watch_ok = false;
                self.rescan_every = self.rescan_every.min(RESCAN_WITHOUT_WATCH);
                self.next_rescan = self.parts.clock.now();
            }
            Event::Control => {
                self.check_pause()?;
                self.check_limit_override();
            }
            Event::Signal(sig) => self.signal(sig)?,
            Event::NetworkChanged => self.tell(Input::NetworkChanged)?,
            Event::Stepped(report) => self.stepped(*report)?,
            Event::HookFinished(key, result) => self.hook_finished(&key, result)?,
        }
        Ok(())
    }
}
