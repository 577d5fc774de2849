//! The commands, composed from the real parts: what `main` runs and what the demo calls.

use std::io::{IsTerminal, Write};

use std::sync::Arc;
use std::time::Duration;

use std::path::Path;

use crate::cli::{Command, CommonArgs, UploadArgs, DEFAULT_CONFIG, USAGE};
use crate::clock::{random_seed, Clock, SystemClock};
use crate::config;
use crate::config::Raw;
use crate::daemon::{DaemonSettings, Parts};
use crate::error::{Error, Result};
use crate::notify::Notifier;
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
        Command::Run(args) => run_daemon(&args),
        Command::Status(args, json) => show_status(&args, json),
        Command::Pause(args) => set_paused(&args, true),
        Command::Resume(args) => set_paused(&args, false),
        Command::CheckConfig(args) => check_config(&args),
        #[cfg(feature = "broker")]
        Command::Broker(args) => crate::broker::run(*args),
    }
}

/// The config file (given, or the default one when it exists) with the flags laid over it.
fn load(args: &CommonArgs) -> Result<Raw> {
    let file = match &args.config {
        Some(path) => Raw::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => Raw::load(Path::new(DEFAULT_CONFIG))?,
        None => Raw::default(),
    };
    Ok(file.merge(args.overrides.clone()))
}

fn run_daemon(args: &CommonArgs) -> Result<i32> {
    let raw = load(args)?;
    let config = raw.clone().resolve()?;
    let settings = raw.resolve_daemon(&config.state_dir)?;
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tx, rx) = std::sync::mpsc::channel();
    crate::watch::signals(tx.clone()).map_err(|e| Error::Io {
        context: "cannot handle signals".into(),
        source: e,
    })?;
    crate::watch::spool(
        settings.spool.clone(),
        config.state_dir.clone(),
        clock.clone(),
        tx.clone(),
    );
    let state_dir = config.state_dir.clone();
    let reload = move || -> Result<DaemonSettings> { load(args)?.resolve_daemon(&state_dir) };
    let parts = Parts {
        transport: &transport,
        store: &store,
        clock,
        upload: &config.upload,
        state_dir: &config.state_dir,
        notifier: Notifier::new(config::notify_socket()),
        watchdog: config::watchdog_interval(),
        reload: &reload,
        hook: config.hook.as_ref(),
    };
    let result = crate::daemon::run(parts, settings, rx, tx).map(|()| 0);
    closed(store, result)
}

fn show_status(args: &CommonArgs, json: bool) -> Result<i32> {
    let dir = load(args)?.state_dir()?;
    let snap = crate::status::read(&dir).map_err(Error::config)?;
    let alive = std::fs::read_to_string(format!("/proc/{}/comm", snap.pid))
        .is_ok_and(|c| c.trim() == "ferry");
    if json {
        let mut value = serde_json::to_value(&snap).unwrap_or_default();
        value["running"] = serde_json::Value::Bool(alive);
        print_line(&value.to_string());
    } else {
        let now = SystemClock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", crate::status::render_text(&snap, alive, now));
    }
    Ok(0)
}

fn set_paused(args: &CommonArgs, paused: bool) -> Result<i32> {
    let dir = load(args)?.state_dir()?;
    let marker = dir.join(crate::status::PAUSE_MARKER);
    let io = |e| Error::Io {
        context: marker.display().to_string(),
        source: e,
    };
    if paused {
        // Durable: a paused device stays paused after a power cut.
        crate::durable::create_dir_all(&dir).map_err(io)?;
        crate::durable::write_atomic(
            &marker,
            b"paused by `ferry pause`; `ferry resume` removes this file\n",
        )
        .map_err(io)?;
        print_line("paused: uploads stop within a second and stay paused across restarts (`ferry resume` resumes)");
    } else {
        crate::durable::remove_file(&marker).map_err(io)?;
        print_line("resumed");
    }
    Ok(0)
}

fn check_config(args: &CommonArgs) -> Result<i32> {
    let raw = load(args)?;
    let config = raw.clone().resolve()?;
    UreqTransport::new(&config.http)?;
    print_line(&format!(
        "endpoint    {}",
        crate::tus::url::redact(&config.upload.endpoint)
    ));
    print_line(&format!("state_dir   {}", config.state_dir.display()));
    if raw.spool.dir.is_none() {
        print_line("spool       not set: `ferry upload` works, `ferry run` needs spool.dir");
        return Ok(0);
    }
    let d = raw.resolve_daemon(&config.state_dir)?;
    if !d.spool.dir.is_dir() {
        return Err(Error::config(format!(
            "spool.dir {} is not a directory (ferry run would wait for it)",
            d.spool.dir.display()
        )));
    }
    print_line(&format!(
        "spool       {} (after upload: {:?}, failed: {})",
        d.spool.dir.display(),
        d.after_upload,
        d.failed_dir
            .as_ref()
            .map_or("kept in place".into(), |f| f.display().to_string())
    ));
    print_line("configuration OK");
    Ok(0)
}

fn upload(args: UploadArgs) -> Result<i32> {
    let file = match &args.config {
        Some(path) => Raw::load(path)?,
        None => Raw::default(),
    };
    let config = file.merge(args.overrides.clone()).resolve()?;
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    let result = upload_with(&args, &config, &transport, &store);
    closed(store, result)
}

/// Closes the store after a command (see [`Store::close`]): a failure to make the last writes
/// durable fails the command, unless it failed already.
fn closed(store: Store, result: Result<i32>) -> Result<i32> {
    let close = store.close();
    let code = result?;
    close?;
    Ok(code)
}

fn upload_with(
    args: &UploadArgs,
    config: &config::Config,
    transport: &UreqTransport,
    store: &Store,
) -> Result<i32> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let uploader = Uploader::new(
        transport,
        store,
        clock.as_ref(),
        &config.upload,
        random_seed(),
    );
    if args.cancel {
        return cancel(&uploader, args);
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
                match done.media_id() {
                    Some(media) => {
                        print_line(&format!("{}\t{}\t{media}", path.display(), done.url))
                    }
                    None => print_line(&format!("{}\t{}", path.display(), done.url)),
                }
                if let Some(hook) = &config.hook {
                    if let Err(e) = run_hook(store, path, hook, clock.as_ref()) {
                        failed += 1;
                        log::error!(
                            "{}: hook failed: {e} (it runs again when this command is run again)",
                            path.display()
                        );
                    }
                }
            }
            Err(e @ Error::State { .. }) => {
                // The store can no longer make a URL durable: uploading on would risk sending
                // data on a URL a rerun does not know (a second upload of the same file).
                progress.finish();
                drop(reporter);
                return Err(e);
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

/// Runs the hook of a completed file, up to three times with short pauses.
fn run_hook(
    store: &Store,
    path: &Path,
    hook: &crate::hook::HookSettings,
    clock: &dyn Clock,
) -> std::result::Result<(), String> {
    let key = crate::upload::record_key(path).map_err(|e| e.to_string())?;
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut last = String::new();
    for attempt in 1..=3u32 {
        match crate::hook::run_recorded(store, &key, hook, clock, &never) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        if attempt < 3 {
            clock.sleep(Duration::from_secs(u64::from(attempt)), &never);
        }
    }
    Err(last)
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
