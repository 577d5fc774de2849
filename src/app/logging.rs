//! Log lines on stderr: journald's priority prefixes under systemd, timestamps and a live
//! progress line that never interleaves with them on a terminal; never the HTTP client's
//! trace dump, which holds the credentials.
//!
//! Key idea: `-q`/`-v` and `RUST_LOG` set ferry's own level; the libraries (sled, ureq,
//! rustls) stay at warn unless `RUST_LOG` names them, so `-v` or `RUST_LOG=debug` shows
//! ferry's reasoning, not a flood of storage internals.

use std::io::{IsTerminal, Write};

use crate::cli::Verbosity;
use crate::config::Env;

/// Logs at the default verbosity (or `RUST_LOG`), as every command does without `-q`/`-v`. A
/// second call changes nothing.
pub fn init_logging() {
    init(Verbosity::Normal, &Env::from_process());
}

/// Logs go to stderr, filtered by [`filter`]. Under journald without timestamps (it stamps
/// lines itself) and with `<N>` syslog priority prefixes (so `journalctl -p warning` works);
/// on a terminal each line first clears the live progress line so the two never interleave.
/// A second call changes nothing (the first logger stays).
pub(crate) fn init(verbosity: Verbosity, env: &Env) {
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter(verbosity, env.rust_log.as_deref()));
    let journald = env.journald;
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

/// The log filter (`env_logger` syntax): `RUST_LOG` when set, else the verbosity. A bare level
/// (`RUST_LOG=debug`) is ferry's; other crates stay at warn (or quieter, if that level is
/// quieter) unless a directive names them (`RUST_LOG=debug,sled=debug`).
fn filter(verbosity: Verbosity, rust_log: Option<&str>) -> String {
    let Some(rust_log) = rust_log.map(str::trim).filter(|r| !r.is_empty()) else {
        return match verbosity {
            Verbosity::Quiet => "error".into(),
            Verbosity::Normal => "warn,ferry=info".into(),
            Verbosity::Debug => "warn,ferry=debug".into(),
            Verbosity::Trace => "warn,ferry=trace".into(),
        };
    };
    let (directives, regex) = match rust_log.split_once('/') {
        Some((d, r)) => (d, Some(r)),
        None => (rust_log, None),
    };
    let mut others = log::LevelFilter::Warn;
    let mut out = Vec::new();
    for d in directives
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        match d.parse::<log::LevelFilter>() {
            Ok(level) => {
                others = others.min(level);
                out.push(format!("ferry={}", lower(level)));
            }
            Err(_) => out.push(d.to_string()),
        }
    }
    let mut filter = format!("{},{}", lower(others), out.join(","));
    if let Some(r) = regex {
        filter = format!("{filter}/{r}");
    }
    filter
}

fn lower(level: log::LevelFilter) -> String {
    level.as_str().to_ascii_lowercase()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_stay_at_warn_unless_named() {
        let f = |v, r: Option<&str>| filter(v, r);
        assert_eq!(f(Verbosity::Normal, None), "warn,ferry=info");
        assert_eq!(f(Verbosity::Quiet, None), "error");
        assert_eq!(f(Verbosity::Debug, None), "warn,ferry=debug");
        assert_eq!(f(Verbosity::Trace, None), "warn,ferry=trace");
        // RUST_LOG wins over -q/-v; its bare level is ferry's.
        assert_eq!(f(Verbosity::Quiet, Some("debug")), "warn,ferry=debug");
        assert_eq!(f(Verbosity::Normal, Some("info")), "warn,ferry=info");
        assert_eq!(
            f(Verbosity::Normal, Some("debug,sled=debug")),
            "warn,ferry=debug,sled=debug"
        );
        assert_eq!(
            f(Verbosity::Normal, Some("ureq=trace,rustls=trace,trace")),
            "warn,ureq=trace,rustls=trace,ferry=trace"
        );
        assert_eq!(
            f(Verbosity::Normal, Some("ferry::upload=trace")),
            "warn,ferry::upload=trace"
        );
        // A quieter bare level quiets the libraries too.
        assert_eq!(f(Verbosity::Normal, Some("error")), "error,ferry=error");
        assert_eq!(f(Verbosity::Normal, Some("off")), "off,ferry=off");
        assert_eq!(
            f(Verbosity::Normal, Some("info/upload")),
            "warn,ferry=info/upload"
        );
        assert_eq!(f(Verbosity::Debug, Some(" ")), "warn,ferry=debug");
    }
}
