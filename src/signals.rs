//! The signal thread: SIGTERM, SIGINT and SIGHUP delivered to the daemon as plain
//! [`Event`]s on its channel, or to `ferry upload` as an [`Interrupt`] flag, so no code of ours
//! runs in a signal handler.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::daemon::Event;

/// Starts the signal thread: SIGTERM, SIGINT and SIGHUP become [`Event::Signal`]; SIGTERM and
/// SIGINT also set `stop_requested` first, for work that cannot wait for the event.
pub(crate) fn forward(tx: Sender<Event>, stop_requested: Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGHUP {
                    stop_requested.store(true, Ordering::SeqCst);
                }
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}

/// `ferry upload`'s Ctrl-C: the first SIGINT or SIGTERM sets [`Interrupt::flag`], so the upload
/// stops at its next read or wait and the state is closed cleanly; a second one ends the
/// process at once, the default way.
pub(crate) struct Interrupt {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Starts the signal thread for SIGINT and SIGTERM.
    pub(crate) fn catch() -> std::io::Result<Self> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        let (f, s) = (flag.clone(), signal.clone());
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if s.swap(sig, Ordering::SeqCst) != 0 {
                        let _ = signal_hook::low_level::emulate_default_handler(sig);
                    }
                    f.store(true, Ordering::SeqCst);
                }
            })?;
        Ok(Self { flag, signal })
    }

    /// Set by the first signal.
    pub(crate) fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// The signal received, if any.
    pub(crate) fn received(&self) -> Option<i32> {
        Some(self.signal.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    /// Ends the process by `signal` the way it would have ended without this handler, so a
    /// shell or script sees the same status as before (130 for SIGINT); the code to exit with
    /// should that fail.
    pub(crate) fn end_process(signal: i32) -> i32 {
        let _ = signal_hook::low_level::emulate_default_handler(signal);
        128 + signal
    }
}
