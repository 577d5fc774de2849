//! Operator control of a running daemon: the pause marker, SIGHUP reload, SIGTERM/SIGINT stop.
//!
//! Key idea: pause and stop both set the workers' one interrupt flag, so uploads stop soon
//! and later resume from the server's offset; a stop also starts the deadline after which
//! the loop exits anyway. A reload swaps the daemon settings; those fixed when the threads
//! started (concurrency, rate limit) take effect only after a restart.

use std::sync::atomic::Ordering;

use crate::status::PAUSE_MARKER;

use super::{DaemonSettings, Main};

impl<'p, 'a> Main<'p, 'a> {
    pub(super) fn signal(&mut self, sig: i32) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        match sig {
            SIGTERM | SIGINT if self.stopping.is_none() => {
                log::info!("stopping: saving state and ending uploads");
                self.stopping = Some(self.parts.clock.now());
                self.interrupt.store(true, Ordering::Relaxed);
                if let Some((_, stop)) = &self.hooks {
                    stop.store(true, Ordering::Relaxed);
                }
                self.parts.notifier.send("STOPPING=1\nSTATUS=stopping");
                self.write_status("stopping");
            }
            SIGHUP => self.reload(),
            _ => {}
        }
    }

    fn reload(&mut self) {
        match (self.parts.reload)() {
            Ok(new) => {
                if new.concurrency != self.settings.concurrency
                    || new.rate_limit_bytes_per_sec != self.settings.rate_limit_bytes_per_sec
                {
                    log::warn!("reloaded; daemon.concurrency and daemon.rate_limit take effect after a restart");
                }
                let concurrency = self.settings.concurrency;
                self.settings = DaemonSettings { concurrency, ..new };
                self.rescan_every = self.settings.rescan_interval;
                self.force_scan = true;
                self.next_rescan = self.parts.clock.now();
                log::info!("configuration reloaded ([server], [upload] and [retry] changes need a restart)");
            }
            Err(e) => log::error!("reload refused, keeping the running configuration: {e}"),
        }
    }

    pub(super) fn check_pause(&mut self) {
        let paused = self.parts.state_dir.join(PAUSE_MARKER).exists();
        if paused != self.paused {
            self.paused = paused;
            log::info!(
                "{}",
                if paused {
                    "paused: uploads stop now and resume from where they are"
                } else {
                    "resumed"
                }
            );
            if self.stopping.is_none() {
                self.interrupt.store(paused, Ordering::Relaxed);
            }
            self.status_soon();
        }
    }
}
