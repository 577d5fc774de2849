//! The config file's keys as serde structs: every key optional, one doc line each, so that
//! command-line flags can fill or override them ([`Raw::merge`]). Nothing here checks a value:
//! that is [`super::resolve`]'s job. Sizes, durations and counts are read by [`super::values`]
//! (integers taken, wrong types refused in words).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::values;

/// The config file's keys; every field optional so that flags can fill or override them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Raw {
    /// Directory of the state store.
    pub state_dir: Option<PathBuf>,
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[upload]`.
    #[serde(default)]
    pub upload: RawUpload,
    /// `[retry]`.
    #[serde(default)]
    pub retry: RawRetry,
    /// `[spool]` (`ferry run`).
    #[serde(default)]
    pub spool: RawSpool,
    /// `[daemon]` (`ferry run`).
    #[serde(default)]
    pub daemon: RawDaemon,
    /// `[stream]` (target `cloudflare-stream`).
    #[serde(default)]
    pub stream: RawStream,
    /// `[hook]`: a command run once per completed upload.
    #[serde(default)]
    pub hook: RawHook,
    /// `[network]`: which interfaces uploads may use, and a condition command.
    #[serde(default)]
    pub network: RawNetwork,
    /// `[broker]` (`ferry broker`, the one-time upload URL service).
    #[serde(default)]
    pub broker: RawBroker,
    /// `[schedule]` (`ferry run`): upload windows.
    #[serde(default)]
    pub schedule: RawSchedule,
}

/// `[schedule]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSchedule {
    /// `[[schedule.window]]` entries; none: uploads may go at any time.
    #[serde(default)]
    pub window: Vec<RawWindow>,
    /// `wait` (default) or `trust`: what windows do while the clock is not synchronised.
    pub unsynced_clock: Option<String>,
}

/// One `[[schedule.window]]`. Unknown keys are collected, not refused by serde, so that the
/// error can name the window's index.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct RawWindow {
    /// `Mon-Fri`, `Sat,Sun`, `*` (default: every day).
    pub days: Option<String>,
    /// Opening, local time `HH:MM` or `HH:MM:SS`.
    pub from: Option<String>,
    /// Closing, local time; not after `from`: on the next day; equal to `from`: a whole day.
    pub to: Option<String>,
    /// Bytes per second for all uploads together while this window is open ("0" = none).
    #[serde(default, deserialize_with = "values::size")]
    pub rate_limit: Option<String>,
    /// Any other key (an error).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, values::Ignored>,
}

/// `[broker]` keys (`ferry broker`); checked by the broker itself.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBroker {
    /// Address to listen on (default 127.0.0.1:8787).
    pub listen: Option<String>,
    /// Path of the one-time URL endpoint (default /generate-tus-upload-request).
    pub path: Option<String>,
    /// Cloudflare API base (default `https://api.cloudflare.com/client/v4`).
    pub api_base: Option<String>,
    /// Cloudflare account id.
    pub account_id: Option<String>,
    /// File (or credential:NAME) holding the Stream API token.
    pub api_token_file: Option<String>,
    /// File with one `<device name> <sha256 hex of its token>` per line.
    pub device_tokens_file: Option<PathBuf>,
    /// maxDurationSeconds set on every video.
    #[serde(default, deserialize_with = "values::count")]
    pub max_duration_seconds: Option<u64>,
    /// Lifetime of a one-time URL in seconds (Stream: 120 to 21600).
    #[serde(default, deserialize_with = "values::count")]
    pub url_expiry_seconds: Option<u64>,
    /// Largest Upload-Length accepted.
    #[serde(default, deserialize_with = "values::size")]
    pub max_upload_length: Option<String>,
    /// Upload-Metadata keys passed on to Stream.
    pub allowed_metadata: Option<Vec<String>>,
    /// Browser origins allowed by CORS (none unless configured; "*" only if listed).
    pub allowed_origins: Option<Vec<String>>,
    /// One-time URLs per device per hour.
    #[serde(default, deserialize_with = "values::count")]
    pub urls_per_hour: Option<u32>,
    /// TLS certificate chain (PEM) to serve HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// How long Stream may take to answer before the device gets 504 (default "30s").
    #[serde(default, deserialize_with = "values::duration")]
    pub api_timeout: Option<String>,
    /// How long a client may take to send a request, and keep an idle connection (default "10s").
    #[serde(default, deserialize_with = "values::duration")]
    pub request_timeout: Option<String>,
    /// How long a client may take to send a request head, TLS handshake included (default "5s").
    #[serde(default, deserialize_with = "values::duration")]
    pub head_timeout: Option<String>,
    /// Connections served at once; more are refused (default sized to memory).
    #[serde(default, deserialize_with = "values::count")]
    pub max_connections: Option<usize>,
    /// Connections served at once for one client address (IPv6: one /64) (default 16).
    #[serde(default, deserialize_with = "values::count")]
    pub max_connections_per_peer: Option<usize>,
    /// Upload-Metadata set on every video whatever the device sends ("" for a key alone).
    pub forced_metadata: Option<BTreeMap<String, String>>,
}

/// `[spool]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpool {
    /// The spool directory.
    pub dir: Option<PathBuf>,
    /// Watch subdirectories too.
    pub recursive: Option<bool>,
    /// File name patterns never uploaded (replaces the defaults).
    pub ignore: Option<Vec<String>>,
    /// A file written to within this time is not picked up by a scan.
    #[serde(default, deserialize_with = "values::duration")]
    pub settle_time: Option<String>,
    /// `delete`, `keep` or `move:DIR`.
    pub after_upload: Option<String>,
    /// Where permanently failed files go (with a `.ferry-error.json` sidecar); unset: kept in place.
    pub failed_dir: Option<PathBuf>,
    /// Full rescan interval (events cover the rest).
    #[serde(default, deserialize_with = "values::duration")]
    pub rescan_interval: Option<String>,
    /// `oldest-first` (default) or `newest-first`.
    pub order: Option<String>,
    /// Patterns in order of priority, e.g. `["alarms/*", "*.jpg"]`.
    pub priority: Option<Vec<String>>,
    /// Waiting files may total at most this size, e.g. "20GiB".
    #[serde(default, deserialize_with = "values::size")]
    pub max_bytes: Option<String>,
    /// Free space to keep on the spool's file system: a size ("500MiB") or a percent ("10%").
    #[serde(default, deserialize_with = "values::size")]
    pub min_free: Option<String>,
    /// A waiting file may be at most this old (by mtime), e.g. "7d".
    #[serde(default, deserialize_with = "values::duration")]
    pub max_age: Option<String>,
    /// `keep` (default) or `delete-oldest`: what to do when a limit is exceeded.
    pub on_full: Option<String>,
}

/// `[daemon]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDaemon {
    /// Files uploaded at once.
    #[serde(default, deserialize_with = "values::count")]
    pub concurrency: Option<usize>,
    /// Upload rate limit in bytes per second ("0" = none), e.g. "250KB": the older name of
    /// `upload.rate_limit`, still read.
    #[serde(default, deserialize_with = "values::size")]
    pub rate_limit: Option<String>,
    /// Prometheus textfile to write metrics to.
    pub metrics_file: Option<PathBuf>,
}

/// `[server]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    /// tus creation endpoint.
    pub endpoint: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files.
    #[serde(default)]
    pub header_files: BTreeMap<String, String>,
    /// CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain.
    pub client_cert: Option<PathBuf>,
    /// Client private key.
    pub client_key: Option<PathBuf>,
    /// `auto` (default), `aes` or `chacha`: which TLS cipher suites are offered first.
    pub cipher_order: Option<String>,
    /// Connect timeout.
    #[serde(default, deserialize_with = "values::duration")]
    pub connect_timeout: Option<String>,
    /// Idle timeout.
    #[serde(default, deserialize_with = "values::duration")]
    pub idle_timeout: Option<String>,
    /// Limit for the answer once a request is sent.
    #[serde(default, deserialize_with = "values::duration")]
    pub response_timeout: Option<String>,
    /// Slowest average rate a request body may be sent at ("0" = no limit).
    #[serde(default, deserialize_with = "values::size")]
    pub min_send_rate: Option<String>,
    /// Send credentials to other origins.
    pub auth_cross_origin: Option<bool>,
    /// `tus` (default), `cloudflare-stream` or `url-broker`.
    pub target: Option<String>,
    /// Response headers to keep besides `stream-media-id`.
    pub capture_headers: Option<Vec<String>>,
}

/// `[hook]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHook {
    /// Program and arguments, e.g. `["/usr/local/bin/notify-upload", "--quiet"]` (no shell).
    pub command: Option<Vec<String>>,
    /// A run taking longer is killed and retried later (default 60 s).
    #[serde(default, deserialize_with = "values::duration")]
    pub timeout: Option<String>,
}

/// `[network]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    /// Send only while the route to the endpoint goes out through one of these.
    pub interfaces: Option<Vec<String>>,
    /// Bind every upload socket to this interface (SO_BINDTODEVICE).
    pub bind_interface: Option<String>,
    /// A command whose exit status says go (0) or wait: a program path, or program and args.
    #[serde(default, deserialize_with = "values::command")]
    pub condition: Option<Vec<String>>,
    /// The condition runs at most this often (default 60 s).
    #[serde(default, deserialize_with = "values::duration")]
    pub condition_interval: Option<String>,
    /// A condition run taking longer is killed and counts as "wait" (default 10 s).
    #[serde(default, deserialize_with = "values::duration")]
    pub condition_timeout: Option<String>,
}

/// `[stream]` keys (target `cloudflare-stream`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStream {
    /// Cloudflare account id.
    pub account_id: Option<String>,
    /// File (or `credential:NAME`) holding an API token with Stream Write permission.
    pub api_token_file: Option<String>,
    /// API base URL (default `https://api.cloudflare.com/client/v4`).
    pub api_base: Option<String>,
}

/// `[upload]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpload {
    /// Bytes per PATCH, e.g. "6MiB".
    #[serde(default, deserialize_with = "values::size")]
    pub chunk_size: Option<String>,
    /// Bytes per second for all uploads together, e.g. "2MiB/s" ("0" = none); `ferry upload`
    /// and `ferry run` both obey it.
    #[serde(default, deserialize_with = "values::size")]
    pub rate_limit: Option<String>,
    /// auto | off | sha1 | sha256.
    pub checksum: Option<String>,
    /// Use creation-with-upload for small files.
    pub creation_with_upload: Option<bool>,
    /// Send filename and filetype.
    pub default_metadata: Option<bool>,
    /// Extra metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `[retry]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// First backoff ceiling.
    #[serde(default, deserialize_with = "values::duration")]
    pub initial_delay: Option<String>,
    /// Backoff cap.
    #[serde(default, deserialize_with = "values::duration")]
    pub max_delay: Option<String>,
    /// 0 = unlimited.
    #[serde(default, deserialize_with = "values::count")]
    pub max_attempts: Option<u32>,
    /// "0s" = never.
    #[serde(default, deserialize_with = "values::duration")]
    pub give_up_after: Option<String>,
}

impl Raw {
    /// Lays `over` (command-line flags) on top of `self` (the file).
    pub(crate) fn merge(mut self, over: Raw) -> Raw {
        macro_rules! take {
            ($($f:ident).+) => { if over.$($f).+.is_some() { self.$($f).+ = over.$($f).+.clone(); } };
        }
        take!(state_dir);
        take!(server.endpoint);
        take!(server.ca_file);
        take!(server.client_cert);
        take!(server.client_key);
        take!(server.cipher_order);
        take!(server.connect_timeout);
        take!(server.idle_timeout);
        take!(server.response_timeout);
        take!(server.min_send_rate);
        take!(server.auth_cross_origin);
        take!(server.target);
        take!(server.capture_headers);
        take!(stream.account_id);
        take!(stream.api_token_file);
        take!(stream.api_base);
        take!(hook.command);
        take!(hook.timeout);
        take!(upload.chunk_size);
        take!(upload.rate_limit);
        take!(upload.checksum);
        take!(upload.creation_with_upload);
        take!(upload.default_metadata);
        take!(retry.initial_delay);
        take!(retry.max_delay);
        take!(retry.max_attempts);
        take!(retry.give_up_after);
        take!(spool.dir);
        take!(spool.recursive);
        take!(spool.ignore);
        take!(spool.settle_time);
        take!(spool.after_upload);
        take!(spool.failed_dir);
        take!(spool.rescan_interval);
        take!(spool.order);
        take!(spool.priority);
        take!(spool.max_bytes);
        take!(spool.min_free);
        take!(spool.max_age);
        take!(spool.on_full);
        take!(daemon.concurrency);
        take!(daemon.rate_limit);
        take!(daemon.metrics_file);
        take!(network.interfaces);
        take!(network.bind_interface);
        take!(network.condition);
        take!(network.condition_interval);
        take!(network.condition_timeout);
        if !over.schedule.window.is_empty() {
            self.schedule.window = over.schedule.window.clone();
        }
        take!(schedule.unsynced_clock);
        self.server.headers.extend(over.server.headers);
        self.server.header_files.extend(over.server.header_files);
        self.upload.metadata.extend(over.upload.metadata);
        self
    }
}
