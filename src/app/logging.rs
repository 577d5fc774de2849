//! Log lines on stderr: journald's priority prefixes under systemd, timestamps and a live
//! progress line that never interleaves with them on a terminal; never the HTTP client's
//! trace dump, which holds the credentials.

use std::io::{IsTerminal, Write};

use crate::config::Env;

/// Logs go to stderr. Under journald without timestamps (it stamps lines itself) and with
/// `<N>` syslog priority prefixes (so `journalctl -p warning` works); on a
/// terminal each line first clears the live progress line so the two never interleave.
pub fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let journald = Env::from_process().journald;
    let clear = if std::io::stderr().is_terminal() {
        "\r\x1b[2K"
    } else {
        ""
    };
    b.format(move |buf, rec| {
        if journald {
            let priority = match rec.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", rec.args())
        } else {
            writeln!(
                buf,
                "{clear}[{} {:<5}] {}",
                buf.timestamp_seconds(),
                rec.level(),
                rec.args()
            )
        }
    });
    let logger = b.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Capped(logger))).is_ok() {
        log::set_max_level(max);
    }
}

/// The logger with the HTTP client's trace output taken out, whatever `RUST_LOG` asks for:
/// ureq traces every request as a hex dump, credentials included (its debug lines redact
/// them), and "send us a trace" is a normal support request.
struct Capped(env_logger::Logger);

impl Capped {
    fn hides(m: &log::Metadata<'_>) -> bool {
        m.level() == log::Level::Trace && m.target().starts_with("ureq")
    }
}

impl log::Log for Capped {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        !Self::hides(m) && self.0.enabled(m)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !Self::hides(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}
