//! Operator control of a running daemon: the pause marker, SIGHUP reload, SIGTERM/SIGINT stop.
//!
//! Key idea: pause and stop both set the workers' one interrupt flag, so uploads stop soon
//! and later resume from the server's offset; a stop also starts the deadline after which
//! the loop exits anyway. A reload swaps the daemon settings; those fixed when the threads
//! started (concurrency, rate limit) take effect only after a restart.

use crate::status::PAUSE_MARKER;

use crate::error::Result;

use super::schedule::Input;
use super::{in_spool, DaemonSettings, Main};

impl<'p, 'a> Main<'p, 'a> {
    pub(super) fn signal(&mut self, sig: i32) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match sig {
            SIGTERM | SIGINT if self.stopping.is_none() => {
                log::info!("stopping: saving state and ending uploads");
                self.stopping = Some(self.parts.clock.now());
                self.tell(Input::Stop)?;
                if let Some((_, stop)) = &self.hooks {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                self.parts.notifier.send("STOPPING=1\nSTATUS=stopping");
                self.write_status("stopping");
            }
            SIGHUP => self.reload()?,
            _ => {}
        }
        Ok(())
    }

    fn reload(&mut self) -> Result<()> {
        match (self.parts.reload)() {
            Ok(new) => {
                if new.concurrency != self.settings.concurrency {
                    log::warn!("reloaded; daemon.concurrency takes effect after a restart");
                }
                // New rules for when to send: judged again at the next tick.
                self.gate
                    .replace((self.parts.policies)(&new), new.rate_limit_bytes_per_sec);
                let concurrency = self.settings.concurrency;
                let moved = new.spool != self.settings.spool;
                self.settings = DaemonSettings { concurrency, ..new };
                if moved {
                    // Files of the old spool (queued, or started) are no longer ours; the
                    // watcher follows the new rules.
                    let actions = self
                        .core
                        .retain(|k| in_spool(&self.settings.spool, k.path()));
                    for a in actions {
                        self.act(a)?;
                    }
                    self.settling
                        .retain(|p, _| in_spool(&self.settings.spool, p));
                    (self.parts.rewatch)(&self.settings.spool);
                }
                self.rescan_every = self.settings.rescan_interval;
                self.force_scan = true;
                self.next_rescan = self.parts.clock.now();
                log::info!("configuration reloaded ([server], [upload] and [retry] changes need a restart)");
            }
            Err(e) => log::error!("reload refused, keeping the running configuration: {e}"),
        }
        Ok(())
    }

    pub(super) fn check_pause(&mut self) -> Result<()> {
        let paused = self.parts.state_dir.join(PAUSE_MARKER).exists();
        if paused != self.core.paused() {
            log::info!(
                "{}",
                if paused {
                    "paused: uploads stop now and resume from where they are"
                } else {
                    "resumed"
                }
            );
            self.tell(Input::Pause(paused))?;
            self.status_soon();
        }
        Ok(())
    }
}
