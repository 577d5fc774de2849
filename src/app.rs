//! The commands, composed from the real parts: what `main` runs and what the demo calls.

use std::io::{IsTerminal, Write};

use std::sync::Arc;
use std::time::Duration;

use crate::cli::{Command, UploadArgs, USAGE};
use crate::clock::{random_seed, Clock, SystemClock};
use crate::config::Raw;
use crate::error::Result;
use crate::progress::{Progress, Reporter};
use crate::store::Store;
use crate::transport::http::UreqTransport;
use crate::upload::Uploader;

/// Runs a command line (without the program name); returns the exit code.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    match crate::cli::parse(args).and_then(dispatch) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Help => {
            print!("{USAGE}");
            Ok(0)
        }
        Command::Version => {
            println!("ferry {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Upload(args) => upload(*args),
    }
}

fn upload(args: UploadArgs) -> Result<i32> {
    let file = match &args.config {
        Some(path) => Raw::load(path)?,
        None => Raw::default(),
    };
    let config = file.merge(args.overrides.clone()).resolve()?;
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let uploader = Uploader::new(
        &transport,
        &store,
        clock.as_ref(),
        &config.upload,
        random_seed(),
    );
    if args.cancel {
        return cancel(&uploader, &args);
    }
    let progress = Arc::new(Progress::default());
    let reporter = Reporter::start(
        progress.clone(),
        clock.clone(),
        std::io::stderr().is_terminal(),
        Duration::from_secs(5),
    );
    let mut failed = 0;
    for path in &args.files {
        match uploader.upload(path, progress.clone()) {
            Ok(done) => {
                progress.finish();
                let note = if done.already {
                    " (already complete)"
                } else {
                    ""
                };
                log::info!("{}: complete, {} bytes{note}", path.display(), done.length);
                print_line(&format!("{}\t{}", path.display(), done.url));
            }
            Err(e) => {
                progress.finish();
                failed += 1;
                log::error!("{e}");
            }
        }
    }
    drop(reporter);
    if failed > 0 {
        log::error!("{failed} of {} files failed", args.files.len());
        return Ok(1);
    }
    Ok(0)
}

fn cancel(uploader: &Uploader, args: &UploadArgs) -> Result<i32> {
    let mut failed = 0;
    for path in &args.files {
        match uploader.cancel(path) {
            Ok(url) => log::info!(
                "{}: terminated {} and forgot it",
                path.display(),
                crate::tus::url::redact(&url)
            ),
            Err(e) => {
                failed += 1;
                log::error!("{e}");
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Writes a result line to stdout; a closed stdout (`| head`) is not worth a crash.
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// Logs go to stderr. Under journald without timestamps (it stamps lines itself) and with
/// `<N>` syslog priority prefixes (so `journalctl -p warning` works); on a
/// terminal each line first clears the live progress line so the two never interleave.
pub fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    let journald = crate::config::under_journald();
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
    b.init();
}
