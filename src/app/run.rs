//! `ferry run`: the only place that builds the daemon's real parts (ureq transport, sled
//! store, system clock, signals, inotify, systemd notifier) and hands them to the daemon.

use std::sync::Arc;

use super::{closed, load};
use crate::cli::CommonArgs;
use crate::clock::{Clock, SystemClock};
use crate::config::Env;
use crate::daemon::{DaemonSettings, Parts};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::policy::window::WindowPolicy;
use crate::policy::{clocksync, Policy};
use crate::store::Store;
use crate::transport::http::UreqTransport;

/// Runs the spool daemon until SIGTERM/SIGINT; the exit code.
pub(super) fn run_daemon(args: &CommonArgs, env: &Env) -> Result<i32> {
    let config = load(args)?.resolve(env)?;
    let settings = config.daemon()?.clone();
    let transport = UreqTransport::new(&config.http)?;
    let store = Store::open(&config.state_dir)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (tx, rx) = std::sync::mpsc::channel();
    let stop_requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    crate::signals::forward(tx.clone(), stop_requested.clone()).map_err(|e| Error::Io {
        context: "cannot handle signals".into(),
        source: e,
    })?;
    let watcher = crate::watch::Watcher::new(config.state_dir.clone(), clock.clone(), tx.clone());
    watcher.watch(settings.spool.clone());
    crate::netwatch::spawn(tx.clone());
    let rewatch = |rules: &crate::spool::SpoolRules| watcher.watch(rules.clone());
    let state_dir = config.state_dir.clone();
    let reload = move || -> Result<DaemonSettings> { load(args)?.resolve_daemon(&state_dir, env) };
    // The field policies the settings ask for, with their real probes (none configured: none).
    let endpoint = config.upload.endpoint.clone();
    let policy_clock = clock.clone();
    let policies = move |settings: &DaemonSettings| -> Vec<Box<dyn Policy>> {
        let mut out = settings.network.policies(&endpoint, &policy_clock);
        if let Some(schedule) = &settings.schedule {
            out.push(Box::new(WindowPolicy::new(
                schedule,
                clocksync::system_probe(),
            )));
        }
        out
    };
    let parts = Parts {
        transport: &transport,
        store: &store,
        clock,
        upload: &config.upload,
        state_dir: &config.state_dir,
        notifier: Notifier::new(env.notify_socket.clone()),
        watchdog: env.watchdog,
        reload: &reload,
        rewatch: &rewatch,
        hook: config.hook.as_ref(),
        policies: &policies,
        stop_requested,
    };
    let result = crate::daemon::run(parts, settings, rx, tx).map(|()| 0);
    closed(store, result)
}
