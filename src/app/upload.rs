//! `ferry upload FILE...`: each file to completion (or `--cancel`), one line per file on
//! stdout, a live progress line on a terminal.
//!
//! Key idea: every message about a file names it as the user wrote it. A symbolic link named
//! here is followed (the user's explicit choice; the daemon never follows links). Ctrl-C stops
//! the upload at its next read or wait, closes the state, says how to resume, and then ends
//! the process by that same signal, so the exit status is what it always was (130 in a shell).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{closed, print_line};
use crate::cli::{UploadArgs, Verbosity};
use crate::clock::{random_seed, Clock, SystemClock};
use crate::config::{self, Env, Raw};
use crate::error::{Error, Result};
use crate::hook::{HookError, HookSettings};
use crate::progress::{Progress, Reporter};
use crate::ratelimit::RateLimiter;
use crate::signals::Interrupt;
use crate::source::follow_named_link;
use crate::store::{FileKey, Store};
use crate::transport::http::UreqTransport;
use crate::upload::{Completed, Uploader};

pub(super) fn upload(args: UploadArgs, verbosity: Verbosity, env: &Env) -> Result<i32> {
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => Raw::default(),
    };
    let config = file.merge(args.overrides.clone()).resolve(env)?;
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    if args.cancel {
        let result = cancel(&args, &uploader(&config, &transport, &store, &SystemClock));
        return closed(store, result);
    }
    let interrupt = Interrupt::catch().map_err(|e| Error::Io {
        context: "cannot handle Ctrl-C".into(),
        source: e,
    })?;
    let parts = Parts {
        config: &config,
        transport: &transport,
        store: &store,
    };
    let result = upload_all(&args, verbosity, &parts, interrupt.flag());
    let result = closed(store, result);
    let Some(signal) = interrupt.received() else {
        return result;
    };
    match result {
        Ok(_) | Err(Error::Interrupted) => {}
        Err(e) => log::error!("{e}"),
    }
    log::warn!("interrupted: run the same command again to resume");
    Ok(Interrupt::end_process(signal))
}

/// What uploading a file takes besides the file.
struct Parts<'a> {
    config: &'a config::Config,
    transport: &'a UreqTransport,
    store: &'a Store,
}

fn uploader<'a>(
    config: &'a config::Config,
    transport: &'a UreqTransport,
    store: &'a Store,
    clock: &'a dyn Clock,
) -> Uploader<'a> {
    Uploader::new(transport, store, clock, &config.upload, random_seed())
}

fn upload_all(
    args: &UploadArgs,
    verbosity: Verbosity,
    parts: &Parts<'_>,
    interrupt: &Arc<AtomicBool>,
) -> Result<i32> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // upload.rate_limit / --rate-limit: the same limiter the daemon uses, for this one run.
    let limiter = parts
        .config
        .rate_limit
        .map(|r| Arc::new(RateLimiter::new(Some(r), clock.clone())));
    let uploader = uploader(parts.config, parts.transport, parts.store, clock.as_ref())
        .with_interrupt(interrupt.clone())
        .with_rate_limit(limiter);
    let progress = Arc::new(Progress::default());
    let reporter = Reporter::start(
        progress.clone(),
        clock.clone(),
        // -q: no live line (and the log lines that replace it off a terminal are info lines).
        verbosity > Verbosity::Quiet && std::io::stderr().is_terminal(),
        Duration::from_secs(5),
    );
    let mut failed = 0;
    for path in &args.files {
        let done = upload_one(&uploader, path, &progress, parts, clock.as_ref());
        progress.finish();
        match done {
            Ok(true) => {}
            Ok(false) => failed += 1,
            Err(e) => {
                drop(reporter);
                return Err(e);
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

/// Uploads `path` (or the target of a link named so): true when complete, false when it
/// failed (said here); an error when no further file should be tried.
fn upload_one(
    uploader: &Uploader<'_>,
    path: &Path,
    progress: &Arc<Progress>,
    parts: &Parts<'_>,
    clock: &dyn Clock,
) -> Result<bool> {
    let target = match follow_named_link(path) {
        Ok(target) => target,
        Err(e) => {
            log::error!("{}", naming(path, &e));
            return Ok(false);
        }
    };
    if target != path {
        log::info!(
            "{}: a symbolic link; uploading its target {}",
            path.display(),
            target.display()
        );
    }
    match uploader.upload(&target, progress.clone()) {
        Ok(done) => Ok(report(path, &done, parts, clock)),
        // The store can no longer make a URL durable: uploading on would risk sending data on
        // a URL a rerun does not know (a second upload of the same file).
        Err(e @ (Error::State { .. } | Error::Interrupted)) => Err(e),
        Err(e) => match parts.transport.endpoint_problem() {
            // The URL is wrong (https:// to a plain-HTTP port): every file would fail alike,
            // and only the configuration can mend it.
            Some(problem) => Err(Error::config(format!(
                "server.endpoint {}: {problem}",
                crate::tus::url::redact(&parts.config.upload.endpoint)
            ))),
            None => {
                log::error!("{}", naming(path, &e));
                Ok(false)
            }
        },
    }
}

/// Says that `path` is complete (stdout line, log line), then runs the hook; false when the
/// hook failed.
fn report(path: &Path, done: &Completed, parts: &Parts<'_>, clock: &dyn Clock) -> bool {
    let note = if done.already {
        " (already complete)"
    } else {
        ""
    };
    log::info!("{}: complete, {} bytes{note}", path.display(), done.length);
    match done.media_id() {
        Some(media) => print_line(&format!("{}\t{}\t{media}", path.display(), done.url)),
        None => print_line(&format!("{}\t{}", path.display(), done.url)),
    }
    let Some(hook) = &parts.config.hook else {
        return true;
    };
    match run_hook(parts.store, &done.path, hook, clock) {
        Ok(()) => true,
        Err(e) => {
            log::error!(
                "{}: hook failed: {e} (it runs again when this command is run again)",
                path.display()
            );
            false
        }
    }
}

/// `e` as a line that names `path`: the errors about a file name it already.
fn naming(path: &Path, e: &Error) -> String {
    match e {
        Error::Source { .. } | Error::GaveUp { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    }
}

/// Runs the hook of a completed file, up to three times with short pauses.
fn run_hook(
    store: &Store,
    path: &Path,
    hook: &HookSettings,
    clock: &dyn Clock,
) -> std::result::Result<(), HookError> {
    let key = FileKey::for_path(path).map_err(HookError::State)?;
    let never = std::sync::atomic::AtomicBool::new(false);
    let mut attempt = 1;
    loop {
        match crate::hook::run_recorded(store, &key, hook, clock, &never) {
            Ok(_) => return Ok(()),
            Err(e) if attempt == 3 => return Err(e),
            Err(_) => {}
        }
        clock.sleep(Duration::from_secs(attempt), &never);
        attempt += 1;
    }
}

fn cancel(args: &UploadArgs, uploader: &Uploader<'_>) -> Result<i32> {
    let mut failed = 0;
    for path in &args.files {
        let cancelled = follow_named_link(path).and_then(|t| uploader.cancel(&t, args.force));
        match cancelled {
            Ok(c) if c.complete => log::info!(
                "{}: the server already held all of it; its upload {} was terminated (--force) and forgotten",
                path.display(),
                crate::tus::url::redact(&c.url)
            ),
            Ok(c) => log::info!(
                "{}: terminated {} and forgot it",
                path.display(),
                crate::tus::url::redact(&c.url)
            ),
            Err(e) => {
                failed += 1;
                log::error!("{}", naming(path, &e));
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}
