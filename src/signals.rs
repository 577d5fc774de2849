//! The signal thread: SIGTERM, SIGINT and SIGHUP delivered to the daemon as plain
//! [`Event`]s on its channel, so no code runs in a signal handler.

use std::sync::mpsc::Sender;

use crate::daemon::Event;

/// Starts the signal thread: SIGTERM, SIGINT and SIGHUP become [`Event::Signal`].
pub(crate) fn forward(tx: Sender<Event>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })?;
    Ok(())
}
