//! Configuration: one [`Config`], built once per command from the TOML file, the command-line
//! flags and the environment. The only module that reads config files and the environment.
//!
//! The path: [`from_toml`] (or [`load`]) parses text into a [`Raw`] whose keys are all
//! optional ([`mod@file`]); flags are a second `Raw` laid over it with [`Raw::merge`];
//! [`Raw::resolve`] checks every value against an [`Env`] read once at start ([`mod@env`]) and
//! reads secret files ([`resolve`]). Sizes and durations are parsed by [`units`]. Defaults are
//! each settings type's `Default`, written once next to the type.
//!
//! ```toml
//! state_dir = "/var/lib/ferry"        # where upload state lives (default: $STATE_DIRECTORY, else ~/.local/state/ferry)
//!
//! [server]
//! endpoint = "https://tus.example.com/files/"   # tus creation endpoint (required)
//! headers = { "X-Device" = "cam-17" }           # extra request headers
//! header_files = { Authorization = "/etc/ferry/auth" }  # header value read from a file, or "credential:NAME"
//! ca_file = "/etc/ferry/ca.pem"                 # trust this CA instead of the public roots
//! client_cert = "/etc/ferry/client.pem"         # mutual TLS (with client_key)
//! client_key = "/etc/ferry/client.key"
//! cipher_order = "auto"                         # auto | aes | chacha: TLS suites offered first (auto: ChaCha20 without AES instructions)
//! connect_timeout = "15s"                       # resolve + TCP + TLS handshake
//! idle_timeout = "30s"                          # no byte moved for this long = stalled link
//! response_timeout = "60s"                      # the whole answer, once the request is sent
//! min_send_rate = "1KiB"                        # a body may take idle_timeout + its size at this rate/s
//! auth_cross_origin = false                     # send credentials to upload URLs on other origins
//! target = "tus"                                # tus | cloudflare-stream | url-broker
//! capture_headers = []                          # response headers to keep besides stream-media-id
//!
//! [stream]                                      # target = "cloudflare-stream"
//! account_id = "023e105f4ecef8ad9ca31a8372d0c353"
//! api_token_file = "credential:stream-token"    # API token with Stream Write
//! api_base = "https://api.cloudflare.com/client/v4"
//!
//! [hook]                                        # optional: run once per completed upload
//! command = ["/usr/local/bin/on-upload"]        # program + args, no shell; env FERRY_PATH, FERRY_SIZE,
//!                                               # FERRY_UPLOAD_URL, FERRY_MEDIA_ID, FERRY_ELAPSED_SECS, ...
//! timeout = "60s"                               # killed after this, retried with backoff
//!
//! [upload]
//! chunk_size = "6MiB"                           # bytes per PATCH (unset: from the link's rate)
//! rate_limit = "0"                              # bytes/s for all uploads together, e.g. "2MiB/s"; `ferry limit` overrides
//! checksum = "auto"                             # auto | off | sha1 | sha256
//! creation_with_upload = false                  # small files in the POST itself (see README)
//! default_metadata = true                       # send filename and filetype
//! metadata = { camera = "north-gate" }          # extra Upload-Metadata
//!
//! [retry]
//! initial_delay = "1s"                          # first backoff ceiling
//! max_delay = "2m"                              # backoff cap
//! max_attempts = 0                              # 0 = retry transient failures forever
//! give_up_after = "0s"                          # 0 = never give up for lack of progress
//!
//! [spool]                                       # ferry run
//! dir = "/var/spool/ferry"                      # the directory to empty (required for run)
//! recursive = false                             # watch subdirectories too
//! ignore = [".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*~"]  # never uploaded
//! settle_time = "5s"                            # unwritten for this long = complete (scans)
//! after_upload = "delete"                       # delete | keep | move:/var/spool/ferry-done
//! failed_dir = "/var/spool/ferry-failed"        # permanent failures go here; unset: kept in place
//! rescan_interval = "60s"                       # full rescan (events cover the rest)
//! order = "oldest-first"                        # oldest-first | newest-first (within a priority class)
//! priority = ["alarms/*", "*.jpg"]              # patterns, highest priority first; a match preempts at the next step
//! max_bytes = "20GiB"                           # waiting files may total at most this (unset: no limit)
//! min_free = "10%"                              # free space to keep: a size or a percent (unset: no limit)
//! max_age = "7d"                                # a waiting file may be at most this old (unset: no limit)
//! on_full = "keep"                              # keep | delete-oldest (evict the oldest waiting files)
//!
//! [daemon]
//! concurrency = 1                               # files uploaded at once
//! metrics_file = "/var/lib/node_exporter/ferry.prom"  # Prometheus textfile (optional)
//!
//! [network]                                     # ferry run (bind_interface: every command)
//! interfaces = ["wlan0", "eth0"]                # send only while the route to the endpoint uses one
//! bind_interface = "wlan0"                      # SO_BINDTODEVICE on every upload socket
//! condition = "/usr/local/bin/may-upload"       # exit 0 = go, else wait; or [program, args...]
//! condition_interval = "60s"                    # run at most this often
//! condition_timeout = "10s"                     # killed after this; counts as wait
//!
//! [schedule]                                    # ferry run: upload windows; none = upload at any time
//! unsynced_clock = "wait"                       # wait | trust: windows before NTP has set the clock
//! window = [{ days = "Mon-Fri", from = "22:00", to = "06:00", rate_limit = "2MiB" }]
//!   # uploads go while any window is open; also written as [[schedule.window]] tables.
//!   # days: Mon-Fri, Sat,Sun, Fri-Mon, * (default *); from/to: local time HH:MM[:SS] (TZ, else
//!   # /etc/localtime); to not after from: the next day; equal: 24 hours; rate_limit: bytes/s
//!   # while open (optional; among open windows the highest wins, none beats any)
//! ```

pub(crate) mod env;
pub(crate) mod file;
mod network;
pub(crate) mod resolve;
mod schedule;
#[cfg(test)]
mod tests;
pub(crate) mod units;
mod values;
mod zone;

use std::path::{Path, PathBuf};

pub(crate) use env::Env;
pub(crate) use file::Raw;
pub(crate) use units::parse_rate;
// What `ferry broker` resolves its own `[broker]` section with.
#[cfg(feature = "broker")]
pub(crate) use {
    file::RawBroker,
    resolve::read_secret,
    units::{parse_duration, parse_size},
};

use crate::daemon::DaemonSettings;
use crate::error::{Error, Result};
use crate::hook::HookSettings;
use crate::transport::http::HttpSettings;
use crate::upload::Settings;

/// Everything a command needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// Upload behaviour.
    pub upload: Settings,
    /// HTTP client.
    pub http: HttpSettings,
    /// The after-upload hook, if any.
    pub hook: Option<HookSettings>,
    /// `ferry run`'s spool and daemon settings; `None` when `spool.dir` is not set.
    pub daemon: Option<DaemonSettings>,
    /// Bytes per second for all uploads together (`upload.rate_limit`); `None`: no limit.
    pub rate_limit: Option<u64>,
}

impl Config {
    /// The daemon settings, or the error `ferry run` gives without `spool.dir`.
    pub(crate) fn daemon(&self) -> Result<&DaemonSettings> {
        self.daemon.as_ref().ok_or_else(resolve::no_spool_dir)
    }
}

/// Parses TOML text; errors name the key and line. `origin` names the text in errors.
pub(crate) fn from_toml(text: &str, origin: &str) -> Result<Raw> {
    toml::from_str(text).map_err(|e| Error::config(format!("{origin}: {e}")))
}

/// Reads and parses a config file.
pub(crate) fn load(path: &Path) -> Result<Raw> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read config file {}: {e}", path.display())))?;
    from_toml(&text, &path.display().to_string())
}
