//! `ferry broker`: the back-end that holds the Cloudflare Stream API token and hands devices
//! one-time tus upload URLs, so that the token never lives on a device.
//!
//! ```text
//!  device (ferry, tus-js-client)        ferry broker                         Cloudflare Stream
//!  POST /generate-tus-upload-request ──► auth (device token) ──► rate limit
//!   Authorization: Bearer <device>       Upload-Length check, metadata filter
//!   Upload-Length, Upload-Metadata        + maxDurationSeconds, expiry ──► POST …/stream?direct_user=true
//!                                                                          Bearer <API token>
//!  201 Location, Stream-Media-ID   ◄───────────────────────────────────── 201 Location (one-time URL)
//!  PATCH <one-time URL> ─────────────────────────────────────────────────► (no token needed)
//! ```
//!
//! Key idea: to a tus client the broker looks like a tus creation endpoint, so `endpoint =`
//! the broker is all a client needs; the answer's `Location` is on Stream's upload origin.
//!
//! Modules: [`args`] parses `ferry broker`'s flags; [`settings`] checks the `[broker]` keys;
//! [`http`] reads and writes HTTP/1.1 messages and [`server`] runs the listener (a thread per
//! connection, optional rustls, deadlines), within [`slots`] (limits in all and per client
//! address, sized by [`sizing`]), refusing through [`closer`] and logging floods through
//! [`tally`]; [`handler`] answers one request; [`devices`] checks device
//! tokens, [`limit`] rate-limits them, [`cors`] answers browsers, [`health`] answers
//! `GET /healthz` with the device tokens file's state; [`stream`] builds the
//! Stream request and reads its answer (pure). Stream is called through
//! [`crate::transport::Transport`], with a deadline on the whole exchange ([`call`]); nothing
//! here touches the agent loop.

pub(crate) mod args;
mod call;
mod closer;
pub(crate) mod cors;
pub(crate) mod devices;
pub(crate) mod handler;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod limit;
pub(crate) mod server;
pub(crate) mod settings;
mod sizing;
mod slots;
pub(crate) mod stream;
mod tally;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::config::Env;
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::transport::http::{HttpSettings, UreqTransport};

pub(crate) use args::BrokerArgs;

/// How long a stopping broker waits for requests in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `ferry broker` until SIGTERM or SIGINT; returns the exit code.
pub(crate) fn run(args: BrokerArgs, env: &Env) -> Result<i32> {
    // At trace level the HTTP client dumps the raw bytes it sends, Authorization included.
    if log::max_level() > log::LevelFilter::Debug {
        log::set_max_level(log::LevelFilter::Debug);
        log::warn!("log level capped at debug: trace output would show the Stream API token");
    }
    let raw = args.load()?;
    let settings = settings::Settings::resolve(&raw, env)?;
    let tls = tls::tls_config(&settings)?;
    let transport = UreqTransport::new(&HttpSettings {
        connect_timeout: settings.api_timeout,
        idle_timeout: settings.api_timeout,
        ..HttpSettings::default()
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let broker = Arc::new(handler::Broker::new(
        &settings,
        Box::new(transport),
        clock.clone(),
    )?);
    let listener = std::net::TcpListener::bind(settings.listen).map_err(|e| Error::Io {
        context: format!("broker.listen {}", settings.listen),
        source: e,
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let notifier = Notifier::new(env.notify_socket.clone());
    let server = server::Server::new(listener, broker.clone(), tls, clock.clone(), &settings);
    signals(
        broker.clone(),
        stop.clone(),
        server.wake_address(),
        notifier.clone(),
    )?;
    log::info!(
        "broker listening on {}://{}{} (Stream account {}, {} device tokens)",
        if settings.tls.is_some() {
            "https"
        } else {
            "http"
        },
        server.local_addr(),
        settings.path,
        settings.account_id,
        broker.device_count()
    );
    notifier.send("READY=1\nSTATUS=serving");
    server.serve(&stop);
    let waited = server.wait_idle(STOP_GRACE);
    log::info!(
        "broker stopped{}",
        if waited {
            ""
        } else {
            " (requests in flight were cut)"
        }
    );
    Ok(0)
}

/// SIGHUP re-reads the device tokens; SIGTERM and SIGINT stop accepting and end `run`.
fn signals(
    broker: Arc<handler::Broker>,
    stop: Arc<AtomicBool>,
    wake: std::net::SocketAddr,
    notifier: Notifier,
) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let io = |e| Error::Io {
        context: "cannot handle signals".into(),
        source: e,
    };
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]).map_err(io)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    broker.reload_devices();
                    continue;
                }
                log::info!("stopping (signal {sig})");
                notifier.send("STOPPING=1");
                stop.store(true, Ordering::SeqCst);
                // accept() blocks: a connection of our own wakes it to see `stop`.
                let _ = std::net::TcpStream::connect_timeout(&wake, Duration::from_secs(1));
                break;
            }
        })
        .map_err(io)?;
    Ok(())
}
