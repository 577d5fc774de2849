//! `ferry upload FILE...`: each file to completion (or `--cancel`), one line per file on
//! stdout, a live progress line on a terminal.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{closed, print_line};
use crate::cli::{UploadArgs, Verbosity};
use crate::clock::{random_seed, Clock, SystemClock};
use crate::config::{self, Env, Raw};
use crate::error::{Error, Result};
use crate::hook::{HookError, HookSettings};
use crate::progress::{Progress, Reporter};
use crate::store::{FileKey, Store};
use crate::transport::http::UreqTransport;
use crate::upload::Uploader;

pub(super) fn upload(args: UploadArgs, verbosity: Verbosity, env: &Env) -> Result<i32> {
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => Raw::default(),
    };
    let config = file.merge(args.overrides.clone()).resolve(env)?;
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    let result = upload_with(&args, verbosity, &config, &transport, &store);
    closed(store, result)
}

fn upload_with(
    args: &UploadArgs,
    verbosity: Verbosity,
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
        // -q: no live line (and the log lines that replace it off a terminal are info lines).
        verbosity > Verbosity::Quiet && std::io::stderr().is_terminal(),
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
                if let Some(problem) = transport.endpoint_problem() {
                    // The URL is wrong (https:// to a plain-HTTP port): every file would fail
                    // alike, and only the configuration can mend it.
                    drop(reporter);
                    return Err(Error::config(format!(
                        "server.endpoint {}: {problem}",
                        crate::tus::url::redact(&config.upload.endpoint)
                    )));
                }
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
